//! Rotating the server's key-encryption key (docs/operations.md):
//!
//! ```text
//! medledger server new-kek --out FILE        a new KEK (0600)
//!   kek_file = FILE, the old one in previous_kek_files; restart the server
//! medledger server rewrap --config F         every data key under the new KEK;
//!                                            the old one retired, to destroy
//! medledger up rotate-kek --data D           all of it for `medledger up` (stopped)
//! ```

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medledger_pki::files;
use medledger_server::ConfigFile;
use medledger_storage::{Kek, KekStatus, Rewrapped, Vault};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Subcommand)]
pub(crate) enum KekCommand {
    /// Write a new key-encryption key (64 hex digits, mode 0600) to a new
    /// file, to rotate to.
    NewKek {
        /// The file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap every data key still under a previous key-encryption key
    /// with the current one, then retire the previous ones. Safe while the
    /// servers run, once every one of them runs with the new KEK.
    Rewrap(RewrapArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RewrapArgs {
    /// The server's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Data keys re-wrapped per transaction.
    #[arg(long, default_value_t = medledger_server::rewrap::BATCH)]
    batch: usize,
}

pub(crate) fn run(command: KekCommand) -> Result<()> {
    match command {
        KekCommand::NewKek { out } => {
            let hex = Kek::generate_hex();
            let id = Kek::from_hex(&hex)?.id();
            files::write_secret(&out, format!("{hex}\n").as_bytes())
                .context("a new key-encryption key goes to a new file")?;
            println!(
                "wrote key-encryption key {id} to {} (mode 0600)",
                out.display()
            );
            println!(
                "next: set kek_file to it, move the old kek_file to previous_kek_files, restart every server, then `medledger server rewrap --config FILE`"
            );
            Ok(())
        }
        KekCommand::Rewrap(args) => {
            let config = ConfigFile::load(&args.config)?;
            let (kek, previous) = config.keks()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let db = crate::roles::open_db(
                    config.database.as_deref(),
                    &config.data,
                    medledger_storage::Part::Server,
                )
                .await?;
                let done = rewrap(Vault::with_previous(db, kek, previous), args.batch).await?;
                println!("{}", medledger_server::rewrap::summary(&done));
                Ok(())
            })
        }
    }
}

/// Checks `vault`'s KEKs against the data keys, says what is where, and
/// re-wraps every data key not under the current KEK.
pub(crate) async fn rewrap(vault: Vault, batch: usize) -> Result<Rewrapped> {
    let status = vault.check_keks().await?;
    println!("{}", describe(&status));
    let mut last = Instant::now();
    let done = vault
        .rewrap_all(batch, |p| {
            if last.elapsed() >= Duration::from_secs(2) {
                last = Instant::now();
                println!("  {} re-wrapped, {} left", p.rewrapped, p.left);
            }
        })
        .await?;
    Ok(done)
}

fn describe(status: &KekStatus) -> String {
    let mut out = format!(
        "{} data key(s) under the current key-encryption key {}",
        status.under_current, status.current
    );
    for (id, n) in &status.under_previous {
        out.push_str(&format!(", {n} under previous {id}"));
    }
    if status.unrecorded > 0 {
        out.push_str(&format!(
            ", {} wrapped before KEK ids were recorded",
            status.unrecorded
        ));
    }
    out
}

/// Writes `contents` to `path` (mode 0600) atomically and durably: a
/// temporary file, synced, renamed over it.
pub(crate) fn replace_secret(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("hex.tmp");
    let _ = std::fs::remove_file(&tmp);
    files::write_secret(&tmp, contents)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
