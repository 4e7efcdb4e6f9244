//! `medledger besu allowlist`: keeps every Besu node's account
//! allowlist equal to the accounts the Registry lets transact
//! (`Registry.canTransact`) and the network's own (`accounts` in
//! network.toml), and gives each account the Registry adds the small
//! balance Besu requires of a sender, from a funding account.
//!
//! Besu dropped on-chain permissioning in 25.6.0: its local allowlist is
//! checked when a transaction is submitted, passed on and put in a block,
//! so it must be the same on every node. A node's list is read and changed
//! with its `PERM` methods on its loopback admin listener
//! ([`super::network::Node::admin_url`]): run this on each node's machine
//! (`--node NAME`), or on one that reaches every admin listener. Besu
//! writes each change into its permissions file itself, so a restarted
//! node starts from the list it had; one that was down is set right at
//! the next pass.
//!
//! ```text
//!  Registry events (from block 0, LOG_RANGE blocks at a time, then from the cursor)
//!    --> the accounts they name --canTransact--> allowed
//!  allowed + network accounts --> each node: perm_getAccountsAllowlist,
//!                                 perm_addAccountsToAllowlist (missing),
//!                                 perm_removeAccountsFromAllowlist (others)
//!  newly allowed --balance below --fund-below--> a transfer from --key
//! ```

use super::network::{Network, Node};
use crate::admin::Connection;
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::sol_types::SolEventInterface;
use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use medledger_contracts::Contracts;
use medledger_contracts::bindings::Registry::RegistryEvents;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Args)]
pub(crate) struct AllowlistArgs {
    #[command(flatten)]
    conn: Connection,
    /// The network's description (deploy/besu-qbft/network.toml).
    #[arg(long)]
    network: PathBuf,
    /// Only this node (its admin listener is on this machine); repeat.
    /// Every node of the description by default.
    #[arg(long = "node")]
    only: Vec<String>,
    /// Keep following the Registry instead of making one pass.
    #[arg(long)]
    follow: bool,
    /// With --follow, the time between passes.
    #[arg(long, default_value_t = 2000)]
    interval_ms: u64,
    /// With --key (the funding account, itself in the network's
    /// `accounts`): give each account the Registry adds whose balance is
    /// below this many ether...
    #[arg(long, default_value = "0.001")]
    fund_below: String,
    /// ...enough to reach this many.
    #[arg(long, default_value = "0.01")]
    fund_to: String,
}

/// `medledger besu allowlist`.
pub(crate) async fn run(args: AllowlistArgs) -> Result<()> {
    let network = Network::load(&args.network)?;
    let nodes: Vec<&Node> = if args.only.is_empty() {
        network.nodes.iter().collect()
    } else {
        args.only
            .iter()
            .map(|name| {
                network
                    .nodes
                    .iter()
                    .find(|n| n.name == *name)
                    .with_context(|| {
                        format!("--node {name}: no such node in {}", args.network.display())
                    })
            })
            .collect::<Result<_>>()?
    };
    let funding = match args.conn.can_sign() {
        true => Some(Funding {
            below: ether(&args.fund_below, "--fund-below")?,
            to: ether(&args.fund_to, "--fund-to")?,
        }),
        false => None,
    };
    let contracts = args.conn.reader().await?;
    let mut registry = Registry::default();
    loop {
        let pass = pass(
            &contracts,
            &network,
            &nodes,
            &mut registry,
            funding.as_ref(),
        )
        .await;
        match (pass, args.follow) {
            (Ok(()), false) => return Ok(()),
            (Err(e), false) => return Err(e),
            (Ok(()), true) => {}
            (Err(e), true) => eprintln!("medledger besu allowlist: {e:#} (trying again)"),
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
}

/// Balances in wei.
struct Funding {
    below: U256,
    to: U256,
}

fn ether(text: &str, flag: &str) -> Result<U256> {
    alloy::primitives::utils::parse_ether(text)
        .with_context(|| format!("{flag} {text:?} is not an amount of ether"))
}

/// One pass: what the Registry says now, onto every node, then funding.
/// A node that cannot be reached does not stop the others.
async fn pass(
    contracts: &Contracts<DynProvider>,
    network: &Network,
    nodes: &[&Node],
    registry: &mut Registry,
    funding: Option<&Funding>,
) -> Result<()> {
    registry.follow(contracts).await?;
    let wanted: BTreeSet<Address> = registry
        .allowed
        .iter()
        .chain(&network.accounts)
        .copied()
        .collect();
    let mut failed = Vec::new();
    for node in nodes {
        match set_allowlist(node, &wanted).await {
            Ok((add, remove)) => {
                for a in add {
                    println!("{}: allowed {a}", node.name);
                }
                for a in remove {
                    println!("{}: no longer allowed {a}", node.name);
                }
            }
            Err(e) => failed.push(format!("{}: {e:#}", node.name)),
        }
    }
    if let Some(funding) = funding {
        while let Some(account) = registry.unfunded.pop_first() {
            let balance = contracts.provider().get_balance(account).await?;
            if balance >= funding.below {
                continue;
            }
            let gift = funding.to.saturating_sub(balance);
            let tx = TransactionRequest::default()
                .with_to(account)
                .with_value(gift);
            let sent = async {
                let receipt = contracts
                    .provider()
                    .send_transaction(tx)
                    .await?
                    .get_receipt()
                    .await?;
                anyhow::ensure!(receipt.status(), "the transfer failed");
                Ok(())
            };
            if let Err(e) = sent.await {
                // Checked again at the next pass.
                registry.unfunded.insert(account);
                return Err(e.context(format!("funding {account}")));
            }
            println!(
                "funded {account} with {} ether",
                alloy::primitives::utils::format_ether(gift)
            );
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The accounts the Registry lets transact, as far as its events have
/// been read.
#[derive(Default)]
struct Registry {
    /// The next block to read.
    cursor: u64,
    /// A patient's account, by patientRef (a discharge names only the ref).
    patients: HashMap<B256, Address>,
    allowed: BTreeSet<Address>,
    /// Allowed since the last pass, their balance not yet looked at.
    unfunded: BTreeSet<Address>,
}

impl Registry {
    /// Reads the Registry's events up to the head and asks `canTransact`
    /// of every account they name.
    async fn follow(&mut self, contracts: &Contracts<DynProvider>) -> Result<()> {
        let head = contracts.block_number().await?;
        if head < self.cursor {
            return Ok(());
        }
        let filter = Filter::new().address(contracts.addresses().registry);
        let logs = medledger_contracts::logs::logs_between(
            contracts.provider(),
            &filter,
            self.cursor,
            Some(head),
        )
        .await?;
        let mut named = BTreeSet::new();
        for log in &logs {
            let Ok(event) = RegistryEvents::decode_log(&log.inner) else {
                continue;
            };
            use RegistryEvents as E;
            match event.data {
                E::AdminAdded(e) => named.insert(e.account),
                E::AdminRemoved(e) => named.insert(e.account),
                E::StaffRegistered(e) => named.insert(e.account),
                E::StaffDeactivated(e) => named.insert(e.account),
                E::NodeRegistered(e) => named.insert(e.account),
                E::NodeDeactivated(e) => named.insert(e.account),
                E::CertificateRecorded(e) => named.insert(e.account),
                E::AccountRevoked(e) => named.insert(e.account),
                E::PatientAdmitted(e) => {
                    self.patients.insert(e.patientRef, e.account);
                    named.insert(e.account)
                }
                E::PatientDischarged(e) => match self.patients.get(&e.patientRef) {
                    Some(account) => named.insert(*account),
                    None => false,
                },
                _ => false,
            };
        }
        for account in named {
            let can = contracts
                .registry()
                .canTransact(account)
                .call()
                .await
                .with_context(|| format!("Registry.canTransact({account})"))?;
            if can && self.allowed.insert(account) {
                self.unfunded.insert(account);
            } else if !can {
                self.allowed.remove(&account);
                self.unfunded.remove(&account);
            }
        }
        self.cursor = head + 1;
        Ok(())
    }
}

/// Makes `node`'s allowlist `wanted`: what was added and what removed.
async fn set_allowlist(
    node: &Node,
    wanted: &BTreeSet<Address>,
) -> Result<(Vec<Address>, Vec<Address>)> {
    let url = node.admin_url();
    let mut admin = Admin::connect(&url)
        .await
        .with_context(|| format!("its admin listener {url}"))?;
    let listed = admin.call("perm_getAccountsAllowlist", json!([])).await?;
    let listed: Vec<String> = serde_json::from_value(listed)
        .context("perm_getAccountsAllowlist did not answer a list of accounts")?;
    let have = listed
        .iter()
        .map(|a| {
            a.parse::<Address>()
                .with_context(|| format!("its allowlist holds {a:?}, not an account"))
        })
        .collect::<Result<BTreeSet<Address>>>()?;
    let add: Vec<Address> = wanted.difference(&have).copied().collect();
    let remove: Vec<Address> = have.difference(wanted).copied().collect();
    // Besu refuses an empty list.
    if !add.is_empty() {
        admin
            .call("perm_addAccountsToAllowlist", json!([lower(&add)]))
            .await?;
    }
    if !remove.is_empty() {
        admin
            .call("perm_removeAccountsFromAllowlist", json!([lower(&remove)]))
            .await?;
    }
    Ok((add, remove))
}

fn lower(accounts: &[Address]) -> Vec<String> {
    accounts.iter().map(|a| format!("{a:#x}")).collect()
}

/// A node's admin listener: JSON-RPC over HTTP (a validator's) or
/// WebSocket (an RPC node's), on loopback.
enum Admin {
    Http(RpcClient),
    Ws(
        Box<
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        >,
    ),
}

impl Admin {
    async fn connect(url: &str) -> Result<Admin> {
        if url.starts_with("ws://") {
            let (ws, _) = tokio_tungstenite::connect_async(url).await?;
            Ok(Admin::Ws(Box::new(ws)))
        } else {
            Ok(Admin::Http(crate::rpc::client(url, None)?))
        }
    }

    /// The result of `method`, or the node's error by its message.
    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let refused = |message: &str| anyhow::anyhow!("{method}: the node answered {message:?}");
        match self {
            Admin::Http(client) => client
                .request::<_, Value>(method.to_owned(), params)
                .await
                .map_err(|e| match e.as_error_resp() {
                    Some(resp) => refused(&resp.message),
                    None => anyhow::Error::new(e).context(method.to_owned()),
                }),
            Admin::Ws(ws) => {
                let request =
                    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
                ws.send(Message::text(request.to_string())).await?;
                while let Some(message) = ws.next().await {
                    let Message::Text(text) = message? else {
                        continue;
                    };
                    let answer: Value = serde_json::from_str(&text)
                        .with_context(|| format!("{method}: the node answered {text:?}"))?;
                    if let Some(message) = answer["error"]["message"].as_str() {
                        return Err(refused(message));
                    }
                    return Ok(answer["result"].clone());
                }
                bail!("{method}: the node closed the connection")
            }
        }
    }
}
