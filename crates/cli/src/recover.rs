//! `medledger chain recover --data D`: chain recovery for
//! the data directory of `medledger up` (stopped). A compromised chain is
//! retired and a new one started from the recovery copy, the server's
//! index of the chain's events:
//!
//! ```text
//!  1. server index, blocks 0..=trusted --> Replica (registry, rules, consents)
//!  2. new chain in D/chain.recovering: new authority key, contracts
//!     deployed restoring, the replica written, Consent's restoring closed
//!  3. server SQL: the old events and anchors retired (one transaction)
//!  4. D/chain -> D/chain.retired-MS, D/chain.recovering -> D/chain, up.toml
//!  5. on the new chain: erasures recorded again (kind 4), every batch root
//!     and ledger checkpoint anchored again (kinds 2, 3), the retired
//!     chain's last trusted block recorded (kind 5)
//!  6. every patient ledger verified against the new chain's anchors
//! ```
//!
//! From step 2 on, `D/chain.recovery.json` records the last step done (and
//! what the later steps need of the retired chain's copy, which step 3
//! sets aside): a recovery cut short at any step is finished by running
//! the command again. One cut short before it starts again.

use crate::backup::control_socket;
use crate::restore::start_server;
use crate::roles;
use crate::up::{UpState, start_node};
use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_chain::RegistryPermissions;
use medledger_chain::genesis::layout;
use medledger_chain::store::Store;
use medledger_contracts::recover::{Replica, addresses_from_logs};
use medledger_contracts::{Contracts, RECOVERY_KIND};
use medledger_server::recover::{Retirement, indexed_head, indexed_logs, retire};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Args)]
pub(crate) struct RecoverArgs {
    /// The data directory of `medledger up`; stop it first.
    #[arg(long, env = "MEDLEDGER_DATA")]
    data: PathBuf,
    /// The retired chain's last trusted block: nothing after it is carried
    /// over (default: the last block the server indexed).
    #[arg(long)]
    trusted_block: Option<u64>,
    /// That block's hash, if the retired chain's store cannot be read.
    #[arg(long)]
    trusted_hash: Option<B256>,
}

pub(crate) fn run(args: RecoverArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(recover(args))
}

/// The hashes of the retired chain's block `number` and of its genesis,
/// from its store (if it can be read) or as given.
fn retired_hashes(chain: &Path, number: u64, given: Option<B256>) -> Result<(B256, B256)> {
    let read = || -> Result<(B256, B256)> {
        let store = Store::open(&chain.join(layout::STORE))?;
        let hash = |n: u64| -> Result<B256> {
            Ok(store
                .header(n)?
                .with_context(|| format!("the retired chain has no block {n}"))?
                .hash_slow())
        };
        Ok((hash(number)?, hash(0)?))
    };
    match (read(), given) {
        (Ok((hash, _)), Some(given)) if hash != given => {
            bail!("the retired chain's block {number} is {hash}, not the --trusted-hash {given}")
        }
        (Ok(hashes), _) => Ok(hashes),
        (Err(_), Some(given)) => Ok((given, B256::ZERO)),
        (Err(e), None) => Err(e.context(format!(
            "reading block {number} of the retired chain in {}; give its hash with --trusted-hash",
            chain.display()
        ))),
    }
}

/// What a recovery has done, in `D/chain.recovery.json`: written once the
/// new chain is ready (step 2) and before the server leaves the retired
/// chain (step 3, after which the server's index of the retired chain is
/// gone), updated after each later step, and removed at the end. A
/// recovery cut short resumes from it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// The last step done (2 to 5).
    done: u8,
    trusted: u64,
    trusted_hash: B256,
    genesis_hash: B256,
    old_registry: Address,
    registry: Address,
    chain_id: u64,
    /// The new chain's head once restored: alerts start after it.
    alerts_after: u64,
    /// The patients the retired chain recorded as erased.
    erasures: Vec<B256>,
    /// Where the retired chain's directory goes.
    retired_dir: PathBuf,
}

const JOURNAL: &str = "chain.recovery.json";

impl Journal {
    fn load(d: &Path) -> Result<Option<Journal>> {
        let path = d.join(JOURNAL);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(serde_json::from_slice(&text).with_context(|| {
            format!("{} is not a recovery journal", path.display())
        })?))
    }

    /// Records step `done`, durably.
    fn save(&mut self, d: &Path, done: u8) -> Result<()> {
        self.done = done;
        medledger_pki::files::write_public(&d.join(JOURNAL), &serde_json::to_vec_pretty(self)?)?;
        crash_point(done);
        Ok(())
    }
}

/// For the test that cuts a recovery short after each step:
/// `MEDLEDGER_TEST_RECOVER_CRASH_AFTER=N` ends the process at once after
/// step N, with no clean-up, as a crash would.
fn crash_point(step: u8) {
    let wanted = std::env::var("MEDLEDGER_TEST_RECOVER_CRASH_AFTER")
        .ok()
        .and_then(|s| s.parse::<u8>().ok());
    if wanted == Some(step) {
        eprintln!(
            "medledger chain recover: stopped after step {step} (MEDLEDGER_TEST_RECOVER_CRASH_AFTER)"
        );
        std::process::exit(86);
    }
}

async fn recover(args: RecoverArgs) -> Result<()> {
    let d = &args.data;
    if tokio::net::UnixStream::connect(control_socket(d))
        .await
        .is_ok()
    {
        bail!(
            "medledger up is running on {}: stop it before recovering its chain",
            d.display()
        );
    }
    let mut state = UpState::load(d)?;
    let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
    let server_signer = roles::load_signer(&d.join("server/server.eth.key"))?;
    let config = medledger_server::ConfigFile::load(&d.join("server.toml"))?;
    let db = roles::open_db(
        config.database.as_deref(),
        &config.data,
        medledger_storage::Part::Server,
    )
    .await?;
    let fresh = d.join("chain.recovering");

    let (node, mut journal) = match Journal::load(d)? {
        Some(journal) => {
            println!(
                "medledger chain recover: resuming the recovery cut short after step {} ({})",
                journal.done,
                d.join(JOURNAL).display()
            );
            // The new chain, in chain.recovering until step 4 moved it.
            let at = if fresh.exists() {
                fresh.clone()
            } else {
                d.join("chain")
            };
            let node = start_node(&at, journal.chain_id, vec![admin.address()])?;
            node.set_permissions(Arc::new(RegistryPermissions::new(journal.registry)));
            (node, journal)
        }
        None => new_chain(&args, &state, &admin, &db, &fresh).await?,
    };

    // 3. The server moves to the new chain (one transaction; done already
    // if the retired chains name the new Registry as successor).
    if journal.done < 3 {
        if retired_for(&db, journal.registry).await? {
            println!("  retired      the server had left the retired chain already");
        } else {
            let retired = retire(
                &db,
                &Retirement {
                    registry: journal.old_registry,
                    genesis: journal.genesis_hash,
                    trusted_block: journal.trusted,
                    trusted_hash: journal.trusted_hash,
                    successor: journal.registry,
                    alerts_after: journal.alerts_after,
                },
            )
            .await
            .context("moving the server to the new chain")?;
            println!(
                "  retired      retired chain {} in the server's retired_* tables: {} events, {} anchors",
                retired.chain, retired.events, retired.anchors
            );
        }
        journal.save(d, 3)?;
    }
    db.pool().close().await;

    // 4. The directories follow (each rename redone if it was not done).
    if journal.done < 4 {
        if fresh.exists() {
            // The retired chain's store may be gone (then --trusted-hash
            // named the block).
            if d.join("chain").exists() {
                std::fs::rename(d.join("chain"), &journal.retired_dir).with_context(|| {
                    format!(
                        "moving the retired chain to {}",
                        journal.retired_dir.display()
                    )
                })?;
            }
            std::fs::rename(&fresh, d.join("chain")).context("putting the new chain in place")?;
        }
        state.registry = journal.registry;
        state.chain_id = journal.chain_id;
        state.save(d)?;
        journal.save(d, 4)?;
    }
    println!("  retired      {}", journal.retired_dir.display());

    // 5. Anchors on the new chain.
    let started = start_server(d, &node, &state).await?;
    let server = &started.server;
    let new = Contracts::at(
        medledger_sim::provider(&node, &server_signer),
        journal.registry,
    )
    .await?;
    if journal.done < 5 {
        // Erasures the retired chain recorded, then every erased ledger's
        // record again on the new chain.
        let mut erased = 0;
        for patient in server.patients().await? {
            if server.ledger().is_erased(&patient).await? {
                server.erase(&patient).await?;
                erased += 1;
            }
        }
        let recorded: Vec<[u8; 32]> = journal.erasures.iter().map(|p| p.0).collect();
        erased += server.erase_recorded(&recorded).await?;
        let anchored = server.anchor_all().await?;
        let recovery = new
            .anchor_root(
                RECOVERY_KIND,
                journal.trusted_hash,
                journal.trusted + 1,
                B256::left_padding_from(journal.old_registry.as_slice()),
                journal.genesis_hash,
            )
            .await
            .context("recording the retired chain's last trusted block")?;
        println!(
            "  anchored     {anchored} batch roots and checkpoints again, {erased} erasures, the retired chain as anchor {recovery}"
        );
        journal.save(d, 5)?;
    }

    // 6. Every ledger against the new chain.
    let mut failures = server.verify_ledgers().await?;
    let patients = server.patients().await?;
    for patient in &patients {
        let erased = server.ledger().is_erased(patient).await?;
        if !erased
            && new
                .checkpoint_anchors(B256::from(*patient))
                .await?
                .is_empty()
        {
            failures.push(format!(
                "{}: no checkpoint anchored on the new chain",
                hex::encode(patient)
            ));
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            println!("  FAILED {f}");
        }
        bail!(
            "{} ledger(s) do not verify on the new chain",
            failures.len()
        );
    }
    std::fs::remove_file(d.join(JOURNAL)).context("removing the recovery journal")?;
    println!(
        "every one of {} patient ledger(s) verified against the new chain; start it with `medledger up --data {}`",
        patients.len(),
        d.display()
    );
    Ok(())
}

/// Whether a retired chain already names `successor` (step 3 committed).
async fn retired_for(db: &medledger_storage::Db, successor: Address) -> Result<bool> {
    use medledger_storage::sqlx::{self, Row};
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM retired_chains WHERE successor = $1")
        .bind(successor.to_vec())
        .fetch_one(db.pool())
        .await?
        .try_get("n")?;
    Ok(n > 0)
}

/// Steps 1 and 2: the recovery copy up to the last trusted block, and the
/// new chain beside the old one in `fresh`, its contracts restored; the
/// journal then records them.
async fn new_chain(
    args: &RecoverArgs,
    state: &UpState,
    admin: &crate::roles::ChainSigner,
    db: &medledger_storage::Db,
    fresh: &Path,
) -> Result<(medledger_chain::Node, Journal)> {
    let d = &args.data;
    // 1. The recovery copy, up to the last trusted block.
    let indexed = indexed_head(db)
        .await?
        .context("the server has indexed no block of the chain: there is nothing to recover")?;
    let trusted = args.trusted_block.unwrap_or(indexed);
    if trusted > indexed {
        bail!(
            "the server indexed the chain up to block {indexed} only: --trusted-block {trusted} is past it"
        );
    }
    let (trusted_hash, genesis_hash) =
        retired_hashes(&d.join("chain"), trusted, args.trusted_hash)?;
    let logs = indexed_logs(db, trusted).await?;
    let old = addresses_from_logs(state.registry, &logs)?;
    let mut replica = Replica::new(old);
    for log in &logs {
        replica.apply(log)?;
    }
    println!(
        "medledger chain recover: {} events of the Registry at {} up to block {trusted} ({trusted_hash})",
        replica.events(),
        state.registry
    );
    crash_point(1);

    // 2. The new chain, beside the old one until it is ready (one cut
    // short before the journal is started again).
    if fresh.exists() {
        std::fs::remove_dir_all(fresh)
            .with_context(|| format!("clearing an interrupted recovery: {}", fresh.display()))?;
    }
    // A new chain id: transactions signed for the retired chain (EIP-155)
    // cannot be replayed on the new one, whatever their nonce.
    let chain_id = state.chain_id + 1;
    let node = start_node(fresh, chain_id, vec![admin.address()])?;
    let new = Contracts::danger_deploy_restoring(medledger_sim::provider(&node, admin)).await?;
    let registry = new.addresses().registry;
    node.set_permissions(Arc::new(RegistryPermissions::new(registry)));
    let restored = replica.restore(&new, admin.address()).await?;
    println!(
        "  new chain    chain id {chain_id}, Registry {registry}, authority {} ({} transactions)",
        node.authority(),
        restored.transactions
    );
    println!(
        "  restored     {} admins, {} staff, {} nodes, {} devices, {} patients, {} rule bindings, {} consents, {} opt-outs",
        restored.admins,
        restored.staff,
        restored.nodes,
        restored.devices,
        restored.patients,
        restored.bindings,
        restored.grants,
        restored.opt_outs
    );
    for (id, at) in &restored.custom_rules {
        println!(
            "  NOT restored the rule {} (its own contract {at} on the retired chain): deploy it again and register it",
            medledger_contracts::text_of(*id)
        );
    }
    if restored.skipped_bindings > 0 {
        println!(
            "  NOT restored {} binding(s) to those rules: bind them again once registered",
            restored.skipped_bindings
        );
    }
    let mut journal = Journal {
        done: 0,
        trusted,
        trusted_hash,
        genesis_hash,
        old_registry: state.registry,
        registry,
        chain_id,
        alerts_after: node.block_number(),
        erasures: replica.erasures().into_iter().map(B256::from).collect(),
        retired_dir: d.join(format!("chain.retired-{}", medledger_protocol::now_ms())),
    };
    journal.save(d, 2)?;
    Ok((node, journal))
}
