//! `medledger backup --data D --out B`, for the data directory of
//! `medledger up` (restored by [`crate::restore`]).
//!
//! A backup is consistent while the system runs: the databases are copied
//! by SQLite's own online backup (`VACUUM INTO`), the blobs after them
//! (they never change once written, so every blob a copied row names is
//! there), and the chain last, while its node commits no block (it only
//! grows, so it holds every anchor the databases name). When `medledger
//! up` runs on `D`, it takes the backup itself, asked over `D/control.sock`.
//! The copying itself ([`Db::vacuum_into`], [`LocalDir::copy_blobs`],
//! [`copy_tree`]) is medledger-storage's, shared with `medledger demo`.

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_chain::{Node, NodeConfig};
use medledger_storage::{Db, LocalDir};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Copies a directory tree (here, and for [`crate::restore`]).
pub(crate) use medledger_storage::blob::copy_tree;

/// The control socket of a running `medledger up`.
pub(crate) fn control_socket(data: &Path) -> PathBuf {
    data.join("control.sock")
}

/// The SQLite databases in a data directory: (directory, file), copied in
/// this order: a reading the server commits while the collector's outbox
/// is copied is then in the server's copy, or still in the outbox's (the
/// server takes a reading it has once).
const DATABASES: &[(&str, &str)] = &[("collector", "collector.db"), ("server", "server.db")];

/// Copies `d` to `out` (which must not exist); `node` is the chain when it
/// runs in this process. Returns the chain's head block in the copy.
pub(crate) async fn snapshot(d: &Path, out: &Path, node: Option<&Node>) -> Result<u64> {
    if out.exists() {
        bail!(
            "{} exists already: a backup goes to a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    copy_tree(d, out, &|rel| {
        rel.starts_with("chain")
            || rel.starts_with("server/blobs")
            || rel == Path::new("control.sock")
            || DATABASES.iter().any(|(dir, db)| {
                rel.starts_with(dir)
                    && rel
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(db))
            })
    })?;
    for (dir, name) in DATABASES {
        let from = d.join(dir).join(name);
        if !from.exists() {
            continue;
        }
        let db = Db::open_sqlite(&from).await?;
        std::fs::create_dir_all(out.join(dir))?;
        db.vacuum_into(&out.join(dir).join(name))
            .await
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let blobs = d.join("server/blobs");
    if blobs.exists() {
        LocalDir::copy_blobs(&blobs, &out.join("server/blobs"))?;
    }
    let head = match node {
        Some(node) => node.backup(&out.join("chain"))?,
        None => {
            copy_tree(&d.join("chain"), &out.join("chain"), &|_| false)?;
            let node = Node::start(&NodeConfig::new(out.join("chain")))?;
            node.block_number()
        }
    };
    std::fs::write(
        out.join("backup.toml"),
        format!(
            "# Written by `medledger backup`.\ntaken_ms = {}\nhead_block = {head}\n",
            medledger_protocol::now_ms()
        ),
    )?;
    Ok(head)
}

/// Answers `backup PATH` on the control socket of `medledger up`, forever.
pub(crate) async fn serve_control(data: PathBuf, node: Node) -> Result<()> {
    let path = control_socket(&data);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding {}", path.display()))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (data, node) = (data.clone(), node.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match line.trim().strip_prefix("backup ") {
                Some(out) => match snapshot(&data, Path::new(out), Some(&node)).await {
                    Ok(head) => format!("ok {head}\n"),
                    Err(e) => format!("error {e:#}\n"),
                },
                None => "error unknown command\n".to_owned(),
            };
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The data directory of `medledger up`.
    #[arg(long, env = "MEDLEDGER_DATA")]
    data: PathBuf,
    /// The backup directory to create.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run_backup(args: BackupArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let out = std::path::absolute(&args.out)?;
        let socket = control_socket(&args.data);
        let head = match tokio::net::UnixStream::connect(&socket).await {
            // `medledger up` runs: it takes the backup.
            Ok(mut stream) => {
                stream
                    .write_all(format!("backup {}\n", out.display()).as_bytes())
                    .await?;
                let mut answer = String::new();
                BufReader::new(stream).read_line(&mut answer).await?;
                match answer.trim().split_once(' ') {
                    Some(("ok", head)) => head.parse::<u64>().unwrap_or(0),
                    _ => bail!(
                        "medledger up: {}",
                        answer.trim().trim_start_matches("error ")
                    ),
                }
            }
            Err(_) => snapshot(&args.data, &out, None).await?,
        };
        println!(
            "backed up {} to {} (chain head block {head})",
            args.data.display(),
            out.display()
        );
        Ok(())
    })
}
