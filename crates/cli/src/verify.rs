//! `medledger verify --bundle FILE`: checks an exported patient ledger
//! offline.

use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_patient_ledger::bundle;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// A proof bundle exported from a patient's ledger (JSON).
    #[arg(long)]
    bundle: PathBuf,
    /// The ledger key to trust (`name+keyid+key`); without it the bundle's
    /// own key is used, which proves integrity but not who signed.
    #[arg(long)]
    key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: VerifyArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let report = match bundle::verify(&text, args.key.as_deref()) {
        Ok(report) => report,
        Err(e) => bail!("{} does not verify: {e}", args.bundle.display()),
    };
    let root: String = report.root.iter().map(|b| format!("{b:02x}")).collect();
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
    println!("bundle verified: {}", args.bundle.display());
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
