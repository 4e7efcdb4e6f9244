//! One description of a Besu network (`network.toml`) and every file Besu
//! reads, written from it by `medledger besu config`: the genesis,
//! each node's `config.toml` and the permissions file. The description
//! names each node by its public key, from which its enode URL and, for a
//! validator, its account in the genesis `extraData` follow.
//!
//! ```text
//!  network.toml --Network::load--> Network --files--> genesis.json
//!                                                     permissions_config.toml
//!                                                     NODE/config.toml (one per node)
//! ```

use alloy::primitives::{Address, U256};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The example network's chain id: in no list of public networks
/// (ethereum-lists `chains`, checked 2026-12-06).
const CHAIN_ID: u64 = 6_284_171_939;

/// Where each node keeps its files (the paths its `config.toml` names).
const ETC: &str = "/etc/besu";

/// A Besu network for medledger, as an operator describes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    /// The chain id: one no public network uses.
    #[serde(default = "chain_id")]
    chain_id: u64,
    /// Seconds between blocks.
    #[serde(default = "block_period_s")]
    block_period_s: u64,
    /// Accounts that may send whatever the Registry says: the admin who
    /// deploys the contracts (before there is a Registry) and the account
    /// that funds the others.
    #[serde(default)]
    pub(crate) accounts: Vec<Address>,
    /// Starting balances, in ether, by account.
    #[serde(default)]
    balances: BTreeMap<Address, String>,
    /// The nodes, validators first in the order of the validator set.
    #[serde(rename = "node")]
    pub(crate) nodes: Vec<Node>,
}

/// One Besu node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Node {
    /// A name for people and for the directory its files go in.
    pub(crate) name: String,
    kind: Kind,
    /// The address other nodes reach it at.
    host: String,
    #[serde(default = "p2p_port")]
    p2p_port: u16,
    /// Its JSON-RPC over HTTP: on loopback for a validator, for medledger
    /// over mutual TLS on an RPC node.
    #[serde(default = "rpc_port")]
    rpc_port: u16,
    /// An RPC node's WebSocket listener on loopback, which serves only
    /// the `PERM` methods, for `medledger besu allowlist`.
    #[serde(default = "admin_port")]
    admin_port: u16,
    /// The node key's public half, 64 bytes in hex (`besu
    /// --data-path=/var/lib/besu public-key export`).
    public_key: String,
    /// An RPC node's names in the URLs medledger is given (its TLS
    /// certificate names them too).
    #[serde(default)]
    tls_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Validator,
    Rpc,
}

fn chain_id() -> u64 {
    CHAIN_ID
}
fn block_period_s() -> u64 {
    2
}
fn p2p_port() -> u16 {
    30303
}
fn rpc_port() -> u16 {
    8545
}
fn admin_port() -> u16 {
    8546
}

impl Network {
    /// Reads and checks `path`.
    pub(crate) fn load(path: &Path) -> Result<Network> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let network: Network =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        network
            .check()
            .with_context(|| format!("{} is not valid", path.display()))?;
        Ok(network)
    }

    fn check(&self) -> Result<()> {
        if !self.nodes.iter().any(|n| n.kind == Kind::Validator) {
            bail!("no [[node]] has kind = \"validator\"");
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for node in &self.nodes {
            if node.name.is_empty()
                || !node
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "node name {:?}: use letters, digits, - and _ (it names a directory)",
                    node.name
                );
            }
            if !names.insert(&node.name) {
                bail!("two nodes are named {:?}", node.name);
            }
            let account = node
                .account()
                .with_context(|| format!("node {:?}: public_key", node.name))?;
            if !keys.insert(account) {
                bail!("node {:?} has another node's public_key", node.name);
            }
        }
        for ether in self.balances.values() {
            parse_ether(ether)?;
        }
        Ok(())
    }

    fn validators(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.kind == Kind::Validator)
    }

    /// Every file, by its path under the output directory.
    pub(crate) fn files(&self) -> Result<BTreeMap<PathBuf, String>> {
        let validators = self
            .validators()
            .map(Node::account)
            .collect::<Result<Vec<_>>>()?;
        let allocs = self
            .balances
            .iter()
            .map(|(a, ether)| Ok((*a, parse_ether(ether)?)))
            .collect::<Result<Vec<_>>>()?;
        let genesis =
            super::genesis::genesis(self.chain_id, &validators, &allocs, self.block_period_s);
        let mut files = BTreeMap::new();
        files.insert(
            PathBuf::from("genesis.json"),
            serde_json::to_string_pretty(&genesis)? + "\n",
        );
        files.insert(
            PathBuf::from("permissions_config.toml"),
            self.permissions_file()?,
        );
        for node in &self.nodes {
            files.insert(
                Path::new(&node.name).join("config.toml"),
                self.node_file(node)?,
            );
        }
        Ok(files)
    }

    fn enodes(&self) -> Result<Vec<String>> {
        self.nodes.iter().map(Node::enode).collect()
    }

    /// Besu's permissions file: the description's own accounts (those of
    /// the Registry are added by `medledger besu allowlist`) and every
    /// node.
    fn permissions_file(&self) -> Result<String> {
        let mut out = String::from(
            "# Besu local permissioning, the same on every node, written by\n\
             # `medledger besu config` from network.toml. Besu rewrites\n\
             # accounts-allowlist itself when `medledger besu allowlist`\n\
             # changes it (perm_addAccountsToAllowlist), so that a restarted\n\
             # node starts from the list it had.\n",
        );
        out += &toml_list("accounts-allowlist", self.accounts.iter());
        out += &toml_list("nodes-allowlist", self.enodes()?.iter());
        Ok(out)
    }

    /// A node's `config.toml`: the options Besu reads from a file (its
    /// command-line options without `--`; not `profile`).
    fn node_file(&self, node: &Node) -> Result<String> {
        let own = node.enode()?;
        let bootnodes: Vec<String> = self
            .validators()
            .map(Node::enode)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|e| *e != own)
            .collect();
        let mut out = String::new();
        let kind = match node.kind {
            Kind::Validator => "a QBFT validator",
            Kind::Rpc => "an RPC node (a full node that does not validate)",
        };
        writeln!(
            out,
            "# Besu configuration of {}: {kind}\n\
             # of the medledger chain. Written by `medledger besu config` from\n\
             # network.toml: change that and write again, not this file. Besu\n\
             # reads a profile only from its command line (or BESU_PROFILE):\n\
             #\n\
             #   besu --profile=ENTERPRISE --config-file={ETC}/config.toml\n",
            node.name
        )?;
        writeln!(out, "data-path=\"/var/lib/besu\"")?;
        writeln!(out, "genesis-file=\"{ETC}/genesis.json\"")?;
        writeln!(out, "sync-mode=\"FULL\"")?;
        writeln!(out, "data-storage-format=\"FOREST\"")?;
        writeln!(out, "p2p-host=\"{}\"", node.host)?;
        writeln!(out, "p2p-port={}", node.p2p_port)?;
        out += &toml_list("bootnodes", bootnodes.iter());
        writeln!(
            out,
            "# Free gas: with zeroBaseFee in the genesis, a gas price of zero.\n\
             min-gas-price=0"
        )?;
        match node.kind {
            Kind::Validator => {
                writeln!(
                    out,
                    "# JSON-RPC on loopback only: for the operator, and PERM for\n\
                     # `medledger besu allowlist` on this machine."
                )?;
                writeln!(out, "rpc-http-enabled=true")?;
                writeln!(out, "rpc-http-host=\"127.0.0.1\"")?;
                writeln!(out, "rpc-http-port={}", node.rpc_port)?;
                writeln!(
                    out,
                    "rpc-http-api=[\"ETH\",\"NET\",\"WEB3\",\"QBFT\",\"PERM\"]"
                )?;
                writeln!(out, "host-allowlist=[\"localhost\",\"127.0.0.1\"]")?;
            }
            Kind::Rpc => {
                writeln!(
                    out,
                    "# JSON-RPC for medledger over HTTPS with client certificates: the\n\
                     # keystore holds a certificate of medledger's CA naming this host;\n\
                     # only the certificates in the known-clients file may connect."
                )?;
                writeln!(out, "rpc-http-enabled=true")?;
                writeln!(out, "rpc-http-host=\"0.0.0.0\"")?;
                writeln!(out, "rpc-http-port={}", node.rpc_port)?;
                writeln!(out, "rpc-http-tls-enabled=true")?;
                writeln!(
                    out,
                    "rpc-http-tls-keystore-file=\"{ETC}/tls/chain-rpc.p12\""
                )?;
                writeln!(
                    out,
                    "rpc-http-tls-keystore-password-file=\"{ETC}/tls/chain-rpc.pass\""
                )?;
                writeln!(out, "rpc-http-tls-client-auth-enabled=true")?;
                writeln!(
                    out,
                    "rpc-http-tls-known-clients-file=\"{ETC}/tls/known-clients.txt\""
                )?;
                writeln!(out, "rpc-http-api=[\"ETH\",\"NET\",\"WEB3\"]")?;
                let hosts: Vec<&String> = [&node.host].into_iter().chain(&node.tls_names).collect();
                let mut allowed = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
                allowed.extend(hosts.into_iter().cloned());
                out += &toml_list("host-allowlist", allowed.iter());
                writeln!(
                    out,
                    "# Revert reasons kept in the receipts of mined transactions.\n\
                     revert-reason-enabled=true\n\
                     # medledger asks eth_getLogs for at most 5000 blocks at a time,\n\
                     # Besu's default rpc-max-logs-range."
                )?;
                writeln!(
                    out,
                    "# PERM on a WebSocket listener on loopback only, for\n\
                     # `medledger besu allowlist` on this machine (Besu has one\n\
                     # HTTP listener, and this one faces the network)."
                )?;
                writeln!(out, "rpc-ws-enabled=true")?;
                writeln!(out, "rpc-ws-host=\"127.0.0.1\"")?;
                writeln!(out, "rpc-ws-port={}", node.admin_port)?;
                writeln!(out, "rpc-ws-api=[\"PERM\"]")?;
            }
        }
        writeln!(
            out,
            "# Who may send and who may connect: the same file on every node."
        )?;
        writeln!(out, "permissions-accounts-config-file-enabled=true")?;
        writeln!(
            out,
            "permissions-accounts-config-file=\"{ETC}/permissions_config.toml\""
        )?;
        writeln!(out, "permissions-nodes-config-file-enabled=true")?;
        writeln!(
            out,
            "permissions-nodes-config-file=\"{ETC}/permissions_config.toml\""
        )?;
        Ok(out)
    }
}

impl Node {
    /// The node key's public half, checked to be a point of secp256k1.
    fn public_key(&self) -> Result<[u8; 64]> {
        let text = self.public_key.trim_start_matches("0x");
        let bytes: [u8; 64] = hex::decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("expected 64 bytes in hex (128 digits), as `besu public-key export` writes")?;
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..].copy_from_slice(&bytes);
        alloy::signers::k256::PublicKey::from_sec1_bytes(&sec1)
            .ok()
            .context("not a point of secp256k1")?;
        Ok(bytes)
    }

    /// The account of the node key (a validator's, in `extraData`).
    pub(crate) fn account(&self) -> Result<Address> {
        Ok(Address::from_raw_public_key(&self.public_key()?))
    }

    fn enode(&self) -> Result<String> {
        Ok(format!(
            "enode://{}@{}:{}",
            hex::encode(self.public_key()?),
            self.host,
            self.p2p_port
        ))
    }

    /// Where `medledger besu allowlist` reaches its `PERM` methods,
    /// on the node's own machine.
    pub(crate) fn admin_url(&self) -> String {
        match self.kind {
            Kind::Validator => format!("http://127.0.0.1:{}", self.rpc_port),
            Kind::Rpc => format!("ws://127.0.0.1:{}", self.admin_port),
        }
    }
}

fn parse_ether(ether: &str) -> Result<U256> {
    alloy::primitives::utils::parse_ether(ether)
        .with_context(|| format!("balance {ether:?} is not an amount of ether"))
}

/// `key=[` one quoted item a line `]`.
fn toml_list<T: std::fmt::Display>(key: &str, items: impl IntoIterator<Item = T>) -> String {
    let mut out = format!("{key}=[\n");
    for item in items {
        out += &format!("  \"{item}\",\n");
    }
    out + "]\n"
}

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// The network's description (deploy/besu-qbft/network.toml).
    #[arg(long)]
    network: PathBuf,
    /// The directory to write into: genesis.json, permissions_config.toml
    /// and NODE/config.toml for each node.
    #[arg(long)]
    out: PathBuf,
}

/// `medledger besu config`.
pub(crate) fn run(args: &ConfigArgs) -> Result<()> {
    let network = Network::load(&args.network)?;
    for (path, text) in network.files()? {
        let path = args.out.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("  {}", path.display());
    }
    println!(
        "medledger besu config: {} nodes ({} validators), chain id {}",
        network.nodes.len(),
        network.validators().count(),
        network.chain_id
    );
    Ok(())
}
