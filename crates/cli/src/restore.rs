//! `medledger restore --from B --data D2`: a backup of `medledger up`
//! ([`crate::backup`]) brought back to life.
//!
//! A restore copies the backup into a new directory, then starts its chain
//! and server there (on free local ports), erases again every patient whose
//! erasure is recorded on chain (in the restored chain, and in a live one
//! given with `--erasures-from`), and verifies every patient ledger against
//! the checkpoints anchored for it.

use crate::backup::copy_tree;
use crate::roles;
use crate::rpc::Identity;
use crate::up::{UpArgs, UpState};
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_chain::Node;
use medledger_chain::RegistryPermissions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let erased_again = server.erase_recorded(&live_erasures).await?;
    let patients = server.patients().await?;
    let failures = server.verify_ledgers().await?;
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
