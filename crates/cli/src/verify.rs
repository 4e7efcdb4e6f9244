//! `medledger verify --bundle FILE` checks an exported patient ledger
//! offline; `medledger verify --patient REF` fetches one from the server;
//! with `--registry`, either is also checked against every checkpoint
//! anchored for it on chain. `medledger verify --proof FILE` checks one
//! reading's proof (from the server's `GET /v1/readings/{hash}/proof`).

use crate::access::ServerArgs;
use crate::rpc::TlsArgs;
use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_contracts::CheckpointAnchor;
use medledger_patient_ledger::{Report, bundle, reading_proof};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// A proof bundle exported from a patient's ledger (JSON).
    #[arg(
        long,
        required_unless_present_any = ["proof", "patient"],
        conflicts_with_all = ["proof", "patient"]
    )]
    bundle: Option<PathBuf>,
    /// A reading's proof, as the server serves it (JSON).
    #[arg(long, conflicts_with = "patient")]
    proof: Option<PathBuf>,
    /// A patient's ledger (their patientRef), fetched from the server with
    /// the patient's own certificate or an admin's, and checked against
    /// every checkpoint anchored for it on chain.
    #[arg(long, requires = "registry")]
    patient: Option<B256>,
    #[command(flatten)]
    server: ServerArgs,
    /// The chain's JSON-RPC URL.
    #[arg(long, env = "MEDLEDGER_RPC", default_value = "http://127.0.0.1:8545")]
    rpc: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// The Registry's address: with it, a ledger is also checked against
    /// every checkpoint anchored for it on chain.
    #[arg(long, env = "MEDLEDGER_REGISTRY")]
    registry: Option<Address>,
    /// The ledger key to trust (`name+keyid+key`), current or retired: the
    /// bundle's key history must hold it. Without it the bundle's own key
    /// is used, which proves integrity but not who signed.
    #[arg(long)]
    key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: VerifyArgs) -> Result<()> {
    if let Some(path) = &args.proof {
        return verify_proof(&args, path, &read(path)?);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(verify_ledger(args))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Verifies a patient's ledger, from a file or from the server, and with
/// `--registry` against its anchored checkpoints.
async fn verify_ledger(args: VerifyArgs) -> Result<()> {
    let (text, source) = match (&args.bundle, args.patient) {
        (Some(path), _) => (read(path)?, format!("bundle {}", path.display())),
        (None, Some(patient)) => {
            let server = &args.server;
            let mut conn = server.open().await?;
            let bundle = server
                .get(
                    &mut conn,
                    &format!("/v1/ledger?patient={}", hex::encode(patient)),
                )
                .await?;
            (
                bundle.to_string(),
                format!("patient {patient}'s ledger from the server"),
            )
        }
        (None, None) => bail!("pass --bundle FILE, --proof FILE or --patient REF"),
    };
    let report = match bundle::verify(&text, args.key.as_deref()) {
        Ok(report) => report,
        Err(e) => bail!("{source} does not verify: {e}"),
    };
    if let Some(patient) = args.patient
        && report.patient != hex::encode(patient)
    {
        bail!(
            "the server sent patient {}'s ledger, not {patient}'s (a patient's certificate reads only its own)",
            report.patient
        );
    }
    let (anchors, rotations) = match args.registry {
        Some(registry) => {
            let contracts =
                crate::roles::read_contracts(&args.rpc, registry, args.tls.identity(None).as_ref())
                    .await?;
            let patient: B256 = report.patient.parse().context("the bundle's patientRef")?;
            let anchors = check_anchors(&report, contracts.checkpoint_anchors(patient).await?)?;
            let history: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::from_value(v["key_history"].clone()).ok())
                .unwrap_or_default();
            let by_servers =
                servers_only(&contracts, contracts.ledger_key_rotations().await?).await?;
            (
                Some(anchors),
                Some(check_key_history(&history, &by_servers)?),
            )
        }
        None => (None, None),
    };
    let root = hex::encode(report.root);
    if args.json {
        let kinds: Vec<&str> = report.entries.iter().map(|e| e.kind.as_str()).collect();
        println!(
            "{}",
            json!({
                "verified": true,
                "patient": report.patient,
                "size": report.size,
                "root": root,
                "erased": report.erased,
                "trusted_key": args.key.is_some(),
                "keys": report.keys,
                "kinds": kinds,
                "anchors": anchors,
                "key_rotations": rotations,
            })
        );
        return Ok(());
    }
    println!("{source}: verified");
    println!("  patient      {}", report.patient);
    if report.erased {
        println!(
            "  erased       yes: a tombstone of {} entries, none held",
            report.size
        );
    } else {
        println!(
            "  entries      {} (every signature and inclusion proof checked)",
            report.size
        );
    }
    println!("  root         {root}");
    if let [.., current] = report.keys.as_slice()
        && report.keys.len() > 1
    {
        println!(
            "  ledger keys  {} (rotated {} time(s); each key checked against its retirement)",
            current,
            report.keys.len() - 1
        );
    }
    if let Some(anchors) = &anchors {
        print_anchors(&report, anchors);
    }
    if let Some(rotations) = &rotations {
        print_key_history(rotations);
    }
    if args.key.is_none() {
        println!("  note         signed by the bundle's own key; pass --key to check who signed");
    }
    Ok(())
}

/// An anchored checkpoint and what the ledger says of it.
#[derive(Debug, serde::Serialize)]
struct AnchorCheck {
    #[serde(flatten)]
    anchor: CheckpointAnchor,
    /// The ledger's first `size` entries hash to the anchored root; false:
    /// the bundle cannot tell (an erased ledger's earlier checkpoints).
    checked: bool,
}

/// Checks that the ledger extends every anchored checkpoint: its first
/// `size` entries hash to each anchored root, and no anchor covers more
/// entries than it holds.
fn check_anchors(report: &Report, anchors: Vec<CheckpointAnchor>) -> Result<Vec<AnchorCheck>> {
    anchors
        .into_iter()
        .map(|anchor| {
            let place = format!(
                "the checkpoint anchored as Anchor.record({}) in transaction {} (block {})",
                anchor.id, anchor.tx, anchor.block
            );
            let checked = report
                .check_extends(anchor.size, &anchor.root.0)
                .map_err(|why| anyhow::anyhow!("{place}: {why}"))?;
            Ok(AnchorCheck { anchor, checked })
        })
        .collect()
}

/// The bundle's ledger key history against the rotations servers
/// anchored (kind 6).
#[derive(Debug, serde::Serialize)]
struct KeyHistoryCheck {
    /// Rotations in the bundle, each anchored with its statement's hash.
    anchored: usize,
    /// Rotations in the bundle not on chain yet (the server anchors them
    /// within its anchor interval).
    unanchored: usize,
    /// Rotations on chain after the bundle's last (a bundle exported
    /// before them).
    later: usize,
}

/// Keeps the anchors whose `by` the Registry lists as a server (kind 6 is
/// open to every active node).
async fn servers_only<P: alloy::providers::Provider + Clone>(
    contracts: &medledger_contracts::Contracts<P>,
    anchors: Vec<CheckpointAnchor>,
) -> Result<Vec<CheckpointAnchor>> {
    /// `Registry.NodeKind.Server`.
    const SERVER: u8 = 2;
    let mut kept = Vec::new();
    for anchor in anchors {
        if contracts.registry().node(anchor.by).call().await?.kind == SERVER {
            kept.push(anchor);
        }
    }
    Ok(kept)
}

/// Checks each rotation statement of the bundle (place `i` from 1)
/// against the servers' kind-6 anchors: where one anchors place `i`, its
/// root must be the statement's SHA-256, else the bundle's history is not
/// the one the server recorded (a forked key history, signed with a
/// stolen retired key, say).
fn check_key_history(
    statements: &[String],
    anchors: &[CheckpointAnchor],
) -> Result<KeyHistoryCheck> {
    let mut check = KeyHistoryCheck {
        anchored: 0,
        unanchored: 0,
        later: 0,
    };
    for (i, statement) in statements.iter().enumerate() {
        let place = i as u64 + 1;
        let hash = B256::from(medledger_protocol::reading_hash(statement.as_bytes()));
        let at_place: Vec<&CheckpointAnchor> = anchors.iter().filter(|a| a.size == place).collect();
        if at_place.iter().any(|a| a.root == hash) {
            check.anchored += 1;
        } else if let Some(other) = at_place.first() {
            bail!(
                "rotation {place} of the bundle's ledger key history is not the one anchored as Anchor.record({}) in transaction {} (block {}): a forked key history",
                other.id,
                other.tx,
                other.block
            );
        } else {
            check.unanchored += 1;
        }
    }
    check.later = anchors
        .iter()
        .filter(|a| a.size > statements.len() as u64)
        .map(|a| a.size)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(check)
}

fn print_key_history(check: &KeyHistoryCheck) {
    if check.anchored + check.unanchored + check.later == 0 {
        return;
    }
    println!(
        "  key history  {} rotation(s) matched on chain (kind 6)",
        check.anchored
    );
    if check.unanchored > 0 {
        println!(
            "               {} not on chain yet: trust a newer key once its rotation is anchored",
            check.unanchored
        );
    }
    if check.later > 0 {
        println!(
            "               {} later rotation(s) on chain: this bundle was exported before them",
            check.later
        );
    }
}

fn print_anchors(report: &Report, anchors: &[AnchorCheck]) {
    let Some(latest) = anchors.iter().map(|a| a.anchor.size).max() else {
        println!("  anchors      none yet: no checkpoint of this ledger is on chain");
        return;
    };
    let checked = anchors.iter().filter(|a| a.checked).count();
    println!(
        "  anchors      {} on chain, {checked} matched by the ledger's entries",
        anchors.len()
    );
    for a in anchors {
        println!(
            "               {} entries  root {}  Anchor.record({})  tx {}  block {}{}",
            a.anchor.size,
            a.anchor.root,
            a.anchor.id,
            a.anchor.tx,
            a.anchor.block,
            if a.checked {
                ""
            } else {
                "  (erased: not checkable)"
            }
        );
    }
    if report.size > latest {
        println!(
            "  unanchored   {} entries after the latest anchor (anchored at the next checkpoint)",
            report.size - latest
        );
    }
}

fn anchor_text(anchor: Option<&reading_proof::AnchorRef>) -> String {
    match anchor {
        Some(a) => format!(
            "Anchor.record({}) in transaction {} (block {})",
            a.id, a.tx, a.block
        ),
        None => "not anchored yet".to_owned(),
    }
}

fn verify_proof(args: &VerifyArgs, path: &Path, text: &str) -> Result<()> {
    let report = match reading_proof::verify(text, args.key.as_deref()) {
        Ok(report) => report,
        Err(e) => bail!("{} does not verify: {e}", path.display()),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "verified": true,
                "reading": report.reading,
                "patient": report.patient,
                "index": report.index,
                "size": report.size,
                "root": hex::encode(report.root),
                "batch_root": hex::encode(report.batch_root),
                "checkpoint_anchor": report.checkpoint_anchor,
                "batch_anchor": report.batch_anchor,
                "trusted_key": args.key.is_some(),
            })
        );
        return Ok(());
    }
    println!("reading proof verified: {}", path.display());
    println!("  reading      {}", report.reading);
    println!("  patient      {}", report.patient);
    println!(
        "  ledger       entry {} of a checkpoint of {} entries, root {}",
        report.index,
        report.size,
        hex::encode(report.root)
    );
    println!("  batch root   {}", hex::encode(report.batch_root));
    println!(
        "  on chain     batch: {}",
        anchor_text(report.batch_anchor.as_ref())
    );
    println!(
        "               checkpoint: {}",
        anchor_text(report.checkpoint_anchor.as_ref())
    );
    println!(
        "  note         look the anchors up on the chain: their root must equal the roots above"
    );
    if args.key.is_none() {
        println!("  note         signed by the proof's own key; pass --key to check who signed");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use medledger_patient_ledger::{Tree, leaf_hash};

    fn anchor(size: u64, root: [u8; 32]) -> CheckpointAnchor {
        CheckpointAnchor {
            patient: B256::ZERO,
            id: size,
            by: Address::ZERO,
            size,
            root: B256::from(root),
            note_hash: B256::ZERO,
            tx: B256::ZERO,
            block: 1,
        }
    }

    #[test]
    fn a_ledger_must_extend_every_anchored_checkpoint() {
        let leaves: Vec<[u8; 32]> = (0u8..3).map(|i| leaf_hash(&[i])).collect();
        let mut tree = Tree::new();
        for leaf in &leaves {
            tree.push(*leaf);
        }
        let report = Report {
            patient: "00".repeat(32),
            size: 3,
            root: tree.root(3).unwrap(),
            entries: Vec::new(),
            erased: false,
            leaves,
            keys: Vec::new(),
        };
        let checks = check_anchors(
            &report,
            vec![anchor(2, tree.root(2).unwrap()), anchor(3, report.root)],
        )
        .unwrap();
        assert!(checks.iter().all(|c| c.checked));

        let altered = check_anchors(&report, vec![anchor(2, [9; 32])]).unwrap_err();
        assert!(altered.to_string().contains("was altered"), "{altered}");
        let rolled_back = check_anchors(&report, vec![anchor(4, [9; 32])]).unwrap_err();
        assert!(
            rolled_back.to_string().contains("rolled back"),
            "{rolled_back}"
        );

        // Erased: only the tombstone's own size can be checked.
        let erased = Report {
            erased: true,
            leaves: Vec::new(),
            ..report.clone()
        };
        let checks = check_anchors(
            &erased,
            vec![anchor(2, tree.root(2).unwrap()), anchor(3, erased.root)],
        )
        .unwrap();
        assert_eq!(
            checks.iter().map(|c| c.checked).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn a_key_history_must_be_the_one_the_server_anchored() {
        let statements = vec!["first rotation".to_owned(), "second rotation".to_owned()];
        let hash = |s: &str| medledger_protocol::reading_hash(s.as_bytes());
        let anchored = |place: u64, statement: &str| anchor(place, hash(statement));

        let both = check_key_history(
            &statements,
            &[
                anchored(1, "first rotation"),
                anchored(2, "second rotation"),
            ],
        )
        .unwrap();
        assert_eq!((both.anchored, both.unanchored, both.later), (2, 0, 0));

        // The second not anchored yet; a third after the bundle was made.
        let partial = check_key_history(
            &statements,
            &[anchored(1, "first rotation"), anchored(3, "third rotation")],
        )
        .unwrap();
        assert_eq!(
            (partial.anchored, partial.unanchored, partial.later),
            (1, 1, 1)
        );

        // Another statement where the server anchored the second: a fork.
        let forked = check_key_history(
            &statements,
            &[
                anchored(1, "first rotation"),
                anchored(2, "the server's second"),
            ],
        )
        .unwrap_err();
        assert!(
            forked.to_string().contains("forked key history"),
            "{forked}"
        );
    }
}
