//! `medledger verify --bundle FILE` checks an exported patient ledger
//! offline; `medledger verify --proof FILE` one reading's proof (from the
//! server's `GET /v1/readings/{hash}/proof`).

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_patient_ledger::{bundle, reading_proof};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// A proof bundle exported from a patient's ledger (JSON).
    #[arg(long, required_unless_present = "proof", conflicts_with = "proof")]
    bundle: Option<PathBuf>,
    /// A reading's proof, as the server serves it (JSON).
    #[arg(long)]
    proof: Option<PathBuf>,
    /// The ledger key to trust (`name+keyid+key`); without it the bundle's
    /// own key is used, which proves integrity but not who signed.
    #[arg(long)]
    key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: VerifyArgs) -> Result<()> {
    let (path, proof) = match (&args.bundle, &args.proof) {
        (Some(path), _) => (path, false),
        (None, Some(path)) => (path, true),
        (None, None) => bail!("pass --bundle FILE or --proof FILE"),
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if proof {
        return verify_proof(&args, path, &text);
    }
    let report = match bundle::verify(&text, args.key.as_deref()) {
        Ok(report) => report,
        Err(e) => bail!("{} does not verify: {e}", path.display()),
    };
    let root = hex::encode(report.root);
    if args.json {
        let kinds: Vec<&str> = report.entries.iter().map(|e| e.kind.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({
                "verified": true,
                "patient": report.patient,
                "size": report.size,
                "root": root,
                "erased": report.erased,
                "trusted_key": args.key.is_some(),
                "kinds": kinds,
            })
        );
        return Ok(());
    }
    println!("bundle verified: {}", path.display());
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
    if args.key.is_none() {
        println!("  note         signed by the bundle's own key; pass --key to check who signed");
    }
    Ok(())
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

fn verify_proof(args: &VerifyArgs, path: &std::path::Path, text: &str) -> Result<()> {
    let report = match reading_proof::verify(text, args.key.as_deref()) {
        Ok(report) => report,
        Err(e) => bail!("{} does not verify: {e}", path.display()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
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
