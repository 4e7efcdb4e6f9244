//! `medledger chain`: the embedded authority chain as its own process.

use alloy_primitives::Address;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medledger_chain::RegistryPermissions;
use medledger_chain::genesis::layout;
use medledger_chain::rpc::{Rpc, http};
use medledger_chain::{Node, NodeConfig, Sealing};
use medledger_pki::{Acceptor, ClientAuth, Credentials, Role, server_config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ChainArgs {
    #[command(subcommand)]
    command: Option<ChainCommand>,
    /// Data directory: authority key, genesis, block store.
    #[arg(long, required = true)]
    data: Option<PathBuf>,
    /// Where to serve JSON-RPC over plain HTTP: a loopback address (other
    /// machines use --rpc-tls).
    #[arg(long, default_value = "127.0.0.1:8545")]
    rpc: SocketAddr,
    /// An account allowed to send transactions (first start only); repeat.
    #[arg(long)]
    allow: Vec<Address>,
    /// The Registry contract (printed by `medledger admin deploy`): accounts
    /// it knows may send transactions too.
    #[arg(long, env = "MEDLEDGER_REGISTRY")]
    registry: Option<Address>,
    /// EIP-155 chain id.
    #[arg(long, default_value_t = 1337)]
    chain_id: u64,
    /// Seal a block every N ms, with or without transactions.
    #[arg(long, conflicts_with = "min_block_interval_ms")]
    block_time_ms: Option<u64>,
    /// Seal as soon as transactions wait, at most one block per N ms.
    #[arg(long, default_value_t = 50)]
    min_block_interval_ms: u64,
    /// Also serve JSON-RPC over HTTPS with mutual TLS here, for other
    /// machines (any medledger role may read; sending still needs a
    /// permitted account).
    #[arg(long, requires_all = ["tls_cert", "tls_root", "tls_crl"])]
    rpc_tls: Option<SocketAddr>,
    /// The node's certificate and key: PREFIX.crt and PREFIX.key (role
    /// server, with the name clients put in their https:// URL).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The medledger root CA certificate clients must chain to.
    #[arg(long)]
    tls_root: Option<PathBuf>,
    /// The issuing CA's CRL.
    #[arg(long)]
    tls_crl: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChainCommand {
    /// Retire a compromised chain of `medledger up` and start a new one
    /// from the server's copy of its events: contracts, registry, rules and
    /// consents restored, every patient ledger anchored again and verified.
    Recover(crate::recover::RecoverArgs),
    /// Rotate the chain's authority (sealing) key, with the node stopped: a
    /// new key, a handover block to it sealed by the old one, and the old
    /// key removed from the data directory. The chain and its contracts
    /// stay as they are.
    RotateAuthority(StoppedArgs),
    /// Check every block of a stopped node's chain from block 0 (parent
    /// links, seals across handovers, transactions and receipts roots, the
    /// head's state), whatever its signed checkpoint covers: after a
    /// restore, or when the store may have been changed.
    Verify(StoppedArgs),
}

/// A stopped node's chain.
#[derive(Debug, Args)]
pub(crate) struct StoppedArgs {
    /// The chain's data directory (`D/chain` for `medledger up`); stop its
    /// node first.
    #[arg(long)]
    data: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn rotate_authority(args: &StoppedArgs) -> Result<()> {
    let d = &args.data;
    if !d.join(layout::GENESIS).exists() && d.join("up.toml").exists() {
        anyhow::bail!(
            "{} is the data directory of `medledger up`: its chain is in {}",
            d.display(),
            d.join("chain").display()
        );
    }
    let rotation = medledger_chain::rotation::rotate(d)
        .with_context(|| format!("rotating the authority key of the chain in {}", d.display()))?;
    if args.json {
        let out = serde_json::json!({
            "retired": rotation.retired.to_string(),
            "authority": rotation.authority.to_string(),
            "handover_block": rotation.handover,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("medledger chain rotate-authority {}", d.display());
        println!("  retired      {}", rotation.retired);
        println!("  authority    {}", rotation.authority);
        println!("  handover     block {}", rotation.handover);
    }
    Ok(())
}

fn verify_chain(args: &StoppedArgs) -> Result<()> {
    let d = &args.data;
    let head = medledger_chain::verify_chain(d)
        .with_context(|| format!("verifying the chain in {}", d.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "verified": true, "head_block": head })
        );
    } else {
        println!(
            "medledger chain verify {}: blocks 0 to {head} and the state check out",
            d.display()
        );
    }
    Ok(())
}

pub(crate) fn run(args: ChainArgs) -> Result<()> {
    let data = match (args.command, &args.data) {
        (Some(ChainCommand::Recover(recover)), _) => return crate::recover::run(recover),
        (Some(ChainCommand::RotateAuthority(rotate)), _) => return rotate_authority(&rotate),
        (Some(ChainCommand::Verify(verify)), _) => return verify_chain(&verify),
        (None, Some(data)) => data.clone(),
        (None, None) => anyhow::bail!("--data is required"),
    };
    crate::rpc::loopback_only(args.rpc)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let sealing = match args.block_time_ms {
            Some(ms) => Sealing::Interval(Duration::from_millis(ms.max(1))),
            None => Sealing::OnDemand {
                min_interval: Duration::from_millis(args.min_block_interval_ms),
            },
        };
        let config = NodeConfig {
            data_dir: data.clone(),
            chain_id: args.chain_id,
            allow: args.allow,
            sealing,
        };
        medledger_pki::files::private_dir(&data)?;
        let node = Node::start(&config)
            .with_context(|| format!("starting the chain in {}", data.display()))?;
        if let Some(registry) = args.registry {
            node.set_permissions(Arc::new(RegistryPermissions::new(registry)));
        }
        let listener = tokio::net::TcpListener::bind(args.rpc)
            .await
            .with_context(|| format!("binding {}", args.rpc))?;
        // Before the lines that say it serves: a SIGTERM from then on stops it.
        let stopping = crate::roles::shutdown();
        let genesis = node.genesis();
        println!("medledger chain {}", data.display());
        println!("  chain id     {}", genesis.chain_id);
        println!("  authority    {}", node.authority());
        println!("  allowed      {}", genesis.allow.len());
        if let Some(registry) = args.registry {
            println!("  registry     {registry} (its accounts may send)");
        }
        println!("  head block   {}", node.block_number());
        println!("  JSON-RPC     http://{}", listener.local_addr()?);
        let rpc = Rpc::new(node);
        let tls = match (&args.rpc_tls, &args.tls_cert, &args.tls_root, &args.tls_crl) {
            (Some(addr), Some(cert), Some(root), Some(crl)) => {
                let own = Credentials::load(cert)?;
                let auth = ClientAuth::load(root, crl, &Role::ALL)?;
                let acceptor = Acceptor::new(server_config(&own, auth)?, Duration::from_secs(10));
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr}"))?;
                println!(
                    "  JSON-RPC     https://{} (mutual TLS)",
                    listener.local_addr()?
                );
                Some(http::serve_tls(rpc.clone(), listener, acceptor))
            }
            _ => None,
        };
        let tls = async move {
            match tls {
                Some(serving) => serving.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = http::serve(rpc, listener) => served.context("serving JSON-RPC")?,
            served = tls => served.context("serving JSON-RPC over TLS")?,
            () = stopping => println!("medledger chain: stopping"),
        }
        Ok(())
    })
}
