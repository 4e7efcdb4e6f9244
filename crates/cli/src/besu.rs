//! Running medledger's chain on a Besu QBFT network instead of the
//! embedded node (deploy/besu-qbft/README.md):
//! - [`network`]: one description of the network (`network.toml`) and
//!   every file Besu reads, written from it (`medledger besu config`);
//! - [`genesis`]: the QBFT genesis, its validators named in `extraData`;
//! - [`allowlist`]: every node's account allowlist kept equal to the
//!   Registry's transacting accounts, and their balances funded
//!   (`medledger besu allowlist`).

mod allowlist;
mod genesis;
mod network;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum BesuCommand {
    /// Write every file of a Besu QBFT network from one description of it
    /// (network.toml): the genesis, its validators named in `extraData`;
    /// each node's config.toml; the permissions file.
    Config(network::ConfigArgs),
    /// Keep every node's account allowlist equal to the accounts the
    /// Registry lets transact and the network's own, through each node's
    /// PERM methods on loopback, and fund the accounts it adds from --key.
    Allowlist(allowlist::AllowlistArgs),
}

pub(crate) fn run(command: BesuCommand) -> Result<()> {
    match command {
        BesuCommand::Config(args) => network::run(&args),
        BesuCommand::Allowlist(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")?
            .block_on(allowlist::run(args)),
    }
}
