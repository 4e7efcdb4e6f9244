//! `medledger backup --data D --out B` and `medledger restore --from B
//! --data D2`, for the data directory of `medledger up`.
//!
//! A backup is consistent while the system runs: the databases are copied
//! by SQLite's own online backup (`VACUUM INTO`), the blobs after them
//! (they never change once written, so every blob a copied row names is
//! there), and the chain last, while its node commits no block (it only
//! grows, so it holds every anchor the databases name). When `medledger
//! up` runs on `D`, it takes the backup itself, asked over `D/control.sock`.
//!
//! A restore copies the backup into a new directory, then starts its chain
//! and server there (on free local ports), erases again every patient whose
//! erasure is recorded on chain (in the restored chain, and in a live one
//! given with `--erasures-from`), and verifies every patient ledger against
//! the checkpoints anchored for it.

use crate::roles;
use crate::rpc::Identity;
use crate::up::{UpArgs, UpState};
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_chain::{Node, NodeConfig};
use medledger_contracts::RegistryPermissions;
use medledger_storage::Db;
use medledger_storage::sqlx;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
        let to = out.join(dir).join(name);
        std::fs::create_dir_all(out.join(dir))?;
        sqlx::query("VACUUM INTO $1")
            .bind(to.display().to_string())
            .execute(db.pool())
            .await
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let blobs = d.join("server/blobs");
    if blobs.exists() {
        copy_tree(&blobs, &out.join("server/blobs"), &|rel| {
            rel.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })?;
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

/// Copies every file under `from` to the same place under `to`, but those
/// whose path relative to `from` `skip` says.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = from.join(&rel);
        std::fs::create_dir_all(to.join(&rel))?;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            if skip(&rel) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(rel);
            } else if kind.is_file() {
                std::fs::copy(entry.path(), to.join(&rel))
                    .with_context(|| format!("copying {}", entry.path().display()))?;
            }
        }
    }
    Ok(())
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

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory (of `medledger backup`).
    #[arg(long, required_unless_present = "config", requires = "data")]
    from: Option<PathBuf>,
    /// The data directory to create.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Instead: the configuration of a server whose database and blobs were
    /// restored by hand (`pg_restore`, a bucket copy); run it while that
    /// server is stopped.
    #[arg(long, conflicts_with_all = ["from", "data"])]
    config: Option<PathBuf>,
    /// A live chain's JSON-RPC URL whose recorded erasures are applied too
    /// (those after the backup was taken).
    #[arg(long)]
    erasures_from: Option<String>,
}

pub(crate) fn run_restore(args: RestoreArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match (&args.config, &args.from, &args.data) {
        (Some(config), _, _) => runtime.block_on(restore_server(config, args.erasures_from)),
        (None, Some(from), Some(data)) => runtime.block_on(restore(from, data, args.erasures_from)),
        _ => bail!("give --from and --data (a backup of `medledger up`), or --config"),
    }
}

/// Completes the restore of a server run from its own configuration: on
/// loopback ports of its own, it erases again every patient whose
/// erasure the chain records (and those of `erasures_from`), then checks
/// every patient ledger against the checkpoints anchored for it.
async fn restore_server(config: &Path, erasures_from: Option<String>) -> Result<()> {
    let mut config = medledger_server::ConfigFile::load(config)?;
    config.listen = "127.0.0.1:0".to_owned();
    config.portal_listen = None;
    config.metrics_listen = None;
    let started = crate::server::start(&config).await?;
    let identity = Identity::new(&config.ca_root, &config.credentials);
    let registry: alloy::primitives::Address = config
        .registry
        .parse()
        .with_context(|| format!("registry {:?} is not an address", config.registry))?;
    let (patients, erased_again) =
        reconcile(&started.server, registry, erasures_from, &identity).await?;
    println!(
        "restored the server of {}: {patients} patient ledger(s) checked against the chain, {erased_again} erased again",
        config.data.display()
    );
    println!("every ledger verified; start the server again");
    Ok(())
}

/// Erases again every patient whose erasure is recorded on the server's
/// chain or on `erasures_from`'s, then verifies every ledger against its
/// anchors; (patients, erased again), or which ledgers failed.
async fn reconcile(
    server: &medledger_server::Server,
    registry: alloy::primitives::Address,
    erasures_from: Option<String>,
    identity: &Identity,
) -> Result<(usize, usize)> {
    // Erasures recorded on chain: never undone by a restore.
    let mut live_erasures = Vec::new();
    if let Some(url) = &erasures_from {
        let live = roles::read_contracts(url, registry, Some(identity)).await?;
        live_erasures.extend(live.erasures().await?.iter().map(|a| a.patient.0));
    }
    let erased_again = server
        .erase_recorded(&live_erasures)
        .await
        .map_err(anyhow::Error::msg)?;
    let patients = server.patients().await.map_err(anyhow::Error::msg)?;
    let failures = server.verify_ledgers().await.map_err(anyhow::Error::msg)?;
    if !failures.is_empty() {
        for f in &failures {
            println!("  FAILED {f}");
        }
        bail!(
            "{} of {} ledger(s) do not verify",
            failures.len(),
            patients.len()
        );
    }
    Ok((patients.len(), erased_again))
}

fn free_local() -> Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Serves `node`'s JSON-RPC and starts the server of the data directory
/// `d` on it, on free local ports (the next `medledger up` writes its own
/// configuration again).
pub(crate) async fn start_server(
    d: &Path,
    node: &Node,
    state: &UpState,
) -> Result<crate::server::Started> {
    let rpc_addr = free_local()?;
    let up = UpArgs::local(d.to_path_buf(), rpc_addr, free_local()?, free_local()?);
    let listener = tokio::net::TcpListener::bind(rpc_addr).await?;
    let rpc = medledger_chain::rpc::Rpc::new(node.clone());
    tokio::spawn(medledger_chain::rpc::http::serve(rpc, listener));
    crate::up::write_configs(&up, state)?;
    let config = medledger_server::ConfigFile::load(&d.join("server.toml"))?;
    crate::server::start(&config).await
}

async fn restore(from: &Path, d: &Path, erasures_from: Option<String>) -> Result<()> {
    if !from.join("backup.toml").exists() {
        bail!(
            "{} is not a medledger backup (no backup.toml)",
            from.display()
        );
    }
    if d.exists() && std::fs::read_dir(d)?.next().is_some() {
        bail!("{} is not empty: restore into a new directory", d.display());
    }
    copy_tree(from, d, &|_| false)?;
    let state = UpState::load(d)?;
    let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
    let node = crate::up::start_node(&d.join("chain"), state.chain_id, vec![admin.address()])?;
    node.set_permissions(Arc::new(RegistryPermissions::new(state.registry)));
    let started = start_server(d, &node, &state).await?;
    let (patients, erased_again) = reconcile(
        &started.server,
        state.registry,
        erasures_from,
        &Identity::up_admin(d),
    )
    .await?;
    println!(
        "restored {} into {}: {patients} patient ledger(s) checked against the chain ({} block(s)), {erased_again} erased again",
        from.display(),
        d.display(),
        node.block_number(),
    );
    println!(
        "every ledger verified; start it with `medledger up --data {}`",
        d.display()
    );
    Ok(())
}
