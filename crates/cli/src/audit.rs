//! `medledger review list|close` (admins: the break-glass review queue) and
//! `medledger audit --patient REF` (anyone who reads the chain: a patient's
//! access and consent history, with the transaction of each event; with
//! `--fhir FILE`, the server's AuditEvents of every read of their data).

use crate::access::ServerArgs;
use crate::admin::{Connection, outcome};
use alloy::primitives::{B256, U256};
use alloy::rpc::types::Filter;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use medledger_contracts::{decode_event, send, short_text};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct ReviewArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ReviewCommand,
}

#[derive(Debug, Subcommand)]
enum ReviewCommand {
    /// Break-glass requests waiting for review, oldest first, each with
    /// its justification from the server (given --server, --cert of an
    /// admin and --ca-root).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Close a review with an outcome code (not your own request).
    Close {
        /// The request id.
        #[arg(long)]
        id: u64,
        /// The outcome, a short code such as `justified` or `referred`.
        #[arg(long)]
        outcome: String,
    },
}

pub(crate) fn run_review(args: ReviewArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (c, _) = args.conn.contracts().await?;
        let log = c.access_log();
        let out = match args.command {
            ReviewCommand::List { server } => {
                let ids = log
                    .pendingReviews(U256::ZERO, U256::from(1000))
                    .call()
                    .await?;
                // The justifications are off chain, sealed at the server.
                let mut conn = if server.given() {
                    Some(server.open().await?)
                } else {
                    None
                };
                let mut pending = Vec::with_capacity(ids.len());
                for id in ids {
                    let r = log.requestOf(id).call().await?;
                    let text = match &mut conn {
                        Some(conn) => server
                            .get(conn, &format!("/v1/justifications?request={id}"))
                            .await
                            .map(|j| j["text"].clone())
                            .unwrap_or_else(|e| json!(format!("(not read: {e})"))),
                        None => json!("(pass --server to read it)"),
                    };
                    pending.push(json!({
                        "request": id.to_string(),
                        "requester": r.requester,
                        "patient": r.patientRef,
                        "justification": text,
                        "justification_sha256": r.emergencyReason,
                        "time": r.time,
                    }));
                }
                json!({ "count": pending.len(), "pending": pending })
            }
            ReviewCommand::Close { id, outcome: code } => outcome(
                format!("review of request {id} closed: {code}"),
                &send(log.closeReview(U256::from(id), short_text(&code)?)).await?,
            ),
        };
        args.conn.print(&out)
    })
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    conn: Connection,
    /// The patientRef.
    #[arg(long)]
    patient: B256,
    /// Also write the server's record of every read of the patient's data
    /// (from their ledger) as a FHIR Bundle of AuditEvents to this file;
    /// needs the patient's or an admin's certificate.
    #[arg(long)]
    fhir: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Events of AccessLog and Consent that name the patient, and where.
pub(crate) fn run_audit(args: AuditArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let c = args.conn.reader().await?;
        let a = c.addresses();
        let provider = c.provider();
        // The patientRef is the second indexed topic of the access and
        // consent events, the first of OptOutChanged.
        let mut logs = Vec::new();
        for filter in [
            Filter::new()
                .address(vec![a.access_log, a.consent])
                .topic2(args.patient),
            Filter::new().address(a.consent).topic1(args.patient),
        ] {
            logs.extend(
                medledger_contracts::logs::logs_between(&provider, &filter, 0, None).await?,
            );
        }
        logs.sort_by_key(|l| (l.block_number, l.log_index));
        logs.dedup_by_key(|l| (l.block_number, l.log_index));
        let events: Vec<Value> = logs
            .iter()
            .filter_map(|log| {
                let e = decode_event(&log.inner)?;
                let args: serde_json::Map<String, Value> =
                    e.args.into_iter().map(|(k, v)| (k, json!(v))).collect();
                Some(json!({
                    "block": log.block_number,
                    "tx": log.transaction_hash,
                    "event": e.name,
                    "args": args,
                }))
            })
            .collect();
        if let Some(path) = &args.fhir {
            let mut conn = args.server.open().await?;
            let bundle = args
                .server
                .get(
                    &mut conn,
                    &format!("/v1/audit?patient={}", hex::encode(args.patient)),
                )
                .await?;
            std::fs::write(path, serde_json::to_string_pretty(&bundle)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} AuditEvent(s) written to {}",
                bundle["entry"].as_array().map_or(0, Vec::len),
                path.display()
            );
        }
        if args.conn.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "events": events }))?
            );
            return Ok(());
        }
        println!("access and consent history of {}", args.patient);
        for e in &events {
            let args: Vec<String> = e["args"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "patientRef")
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                .collect();
            println!(
                "  block {:<6} {:<15} {}  tx {}",
                e["block"],
                e["event"].as_str().unwrap_or("?"),
                args.join(", "),
                e["tx"].as_str().unwrap_or("?")
            );
        }
        println!("  {} event(s)", events.len());
        Ok(())
    })
}
