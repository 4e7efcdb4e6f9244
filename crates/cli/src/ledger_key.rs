//! `medledger server rotate-ledger-key --config FILE | --data D`: retires
//! the server's ledger signing key for a new one, with the server stopped.
//!
//! ```text
//!  1. new key  --> ledger.key.new (0600, synced)
//!  2. rotation statement, signed by the old and the new key
//!               --> ledger_key_rotations (committed)
//!  3. ledger.key.new --> ledger.key (rename: the old key is gone from disk)
//! ```
//!
//! A rotation cut short between 2 and 3 is finished by running the command
//! again (the server refuses to start with the retired key meanwhile); cut
//! short before 2, the half-written new key is discarded. The server
//! anchors the statement on chain (kind 6) on its next start.

use crate::backup::control_socket;
use crate::roles;
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_patient_ledger::{Ledger, NoteSigner};
use medledger_pki::{Credentials, Role, files};
use medledger_server::ConfigFile;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// The server's configuration file.
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    config: Option<PathBuf>,
    /// The data directory of `medledger up` (its server's configuration is
    /// `D/server.toml`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: RotateArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(rotate(args))
}

/// `path` with `.new` appended: where the new key waits for the statement.
fn pending_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// Renames `from` over `to` and syncs the directory, so the old key at
/// `to` is gone for good once this returns.
fn replace(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

async fn rotate(args: RotateArgs) -> Result<()> {
    let config_path = match (&args.config, &args.data) {
        (Some(config), _) => config.clone(),
        (None, Some(d)) => {
            if tokio::net::UnixStream::connect(control_socket(d))
                .await
                .is_ok()
            {
                bail!(
                    "medledger up is running on {}: stop it before rotating its ledger key",
                    d.display()
                );
            }
            let config = d.join("server.toml");
            if !config.exists() {
                bail!(
                    "{} does not exist: is {} the data directory of `medledger up`?",
                    config.display(),
                    d.display()
                );
            }
            config
        }
        (None, None) => bail!("pass --config FILE or --data D"),
    };
    let config = ConfigFile::load(&config_path)?;
    let path = &config.ledger_key;
    if !path.exists() {
        bail!(
            "{} does not exist: the server creates its ledger key on first start; there is none to rotate",
            path.display()
        );
    }
    let credentials = Credentials::load(&config.credentials)
        .with_context(|| format!("loading {}", config.credentials.display()))?;
    let identity = credentials.identity()?;
    identity.require_role(&[Role::Server])?;
    let name = key_name(&config, &identity);
    let load = |p: &Path| -> Result<NoteSigner> {
        let pkcs8 = files::read_first(p, "PRIVATE KEY")?;
        NoteSigner::from_pkcs8(&name, &pkcs8)
            .map_err(|e| anyhow::anyhow!("the ledger key {}: {e}", p.display()))
    };
    let db = roles::open_db(
        config.database.as_deref(),
        &config.data,
        medledger_storage::Part::Server,
    )
    .await?;
    let pending = pending_path(path);
    if pending.exists() {
        // An earlier rotation stopped short: finish it if its statement
        // is recorded, else start over.
        let new = load(&pending)?;
        let new_key = new.verifier_key();
        if Ledger::open(db.clone(), new).await.is_ok() {
            replace(&pending, path)?;
            report(&args, None, &new_key, None, path, true);
            return Ok(());
        }
        std::fs::remove_file(&pending)
            .with_context(|| format!("removing {}", pending.display()))?;
    }
    let old = load(path)?;
    let old_key = old.verifier_key();
    let ledger = Ledger::open(db, old)
        .await
        .with_context(|| format!("{} is not the current ledger key", path.display()))?;
    let pkcs8 = NoteSigner::generate_pkcs8();
    files::write_secret(&pending, files::to_pem("PRIVATE KEY", &pkcs8).as_bytes())?;
    let new = load(&pending)?;
    let new_key = new.verifier_key();
    let (ledger, statement) = ledger
        .rotate(new, medledger_protocol::now_ms())
        .await
        .context("recording the rotation")?;
    replace(&pending, path)?;
    let keys = ledger.history().keys().len();
    report(
        &args,
        Some(&old_key),
        &new_key,
        Some((&statement, keys)),
        path,
        false,
    );
    Ok(())
}

fn report(
    args: &RotateArgs,
    old: Option<&str>,
    new: &str,
    statement: Option<(&str, usize)>,
    path: &Path,
    finished_earlier: bool,
) {
    if args.json {
        println!(
            "{}",
            json!({
                "old_key": old,
                "new_key": new,
                "statement": statement.map(|s| s.0),
                "key_file": path,
                "finished_interrupted": finished_earlier,
            })
        );
        return;
    }
    if finished_earlier {
        println!("medledger server: finished an interrupted ledger key rotation");
    } else {
        println!("medledger server: ledger key rotated");
    }
    if let Some(old) = old {
        println!("  retired key  {old}");
    }
    println!("  current key  {new}");
    println!("  key file     {} (the old key is removed)", path.display());
    if let Some((_, keys)) = statement {
        println!(
            "  history      {keys} keys; the statement is anchored on chain when the server next starts"
        );
    }
    println!(
        "  note         auditors who trusted the retired key verify new bundles with it still"
    );
}

/// The ledger key's name: `ledger_key_name`, which servers sharing a
/// database share, or else (a note key name has no spaces) the server's
/// account.
pub(crate) fn key_name(config: &ConfigFile, identity: &medledger_pki::Identity) -> String {
    if let Some(name) = &config.ledger_key_name {
        return name.clone();
    }
    match identity.address() {
        Some(address) => format!("medledger-server-{address}"),
        None => "medledger-server".to_owned(),
    }
}
