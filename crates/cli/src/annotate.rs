//! `medledger annotate`: a doctor or nurse annotates (or corrects) a
//! reading: on chain, `AccessLog.annotate` with the reading's hash and the
//! text's SHA-256, signed with their key; then the text itself to the
//! server, which keeps it sealed with the patient's key.

use crate::access::ServerArgs;
use crate::admin::Connection;
use alloy::primitives::B256;
use anyhow::{Context, Result};
use clap::Args;
use medledger_protocol::reading_hash;
use serde_json::json;

#[derive(Debug, Args)]
pub(crate) struct AnnotateArgs {
    /// The access request you read the reading with (still usable).
    #[arg(long, required_unless_present = "id")]
    request: Option<u64>,
    /// The reading's hash (hex, the part of its Observation identifier
    /// before `#`).
    #[arg(long, required_unless_present = "id")]
    reading: Option<B256>,
    /// The text. It stays off chain; the chain holds its SHA-256.
    #[arg(long)]
    text: String,
    /// A correction of the reading rather than an annotation.
    #[arg(long)]
    correction: bool,
    /// Only give the server the text of annotation ID, already on chain
    /// (when an earlier try could not reach the server).
    #[arg(long, conflicts_with_all = ["request", "reading", "correction"])]
    id: Option<u64>,
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: AnnotateArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let id = match (args.id, args.request, args.reading) {
            (Some(id), _, _) => id,
            (None, Some(request), Some(reading)) => {
                let (contracts, _) = args.conn.contracts().await?;
                let content = B256::from(reading_hash(args.text.as_bytes()));
                contracts
                    .annotate(request, reading, args.correction, content)
                    .await?
            }
            _ => anyhow::bail!("pass --request and --reading, or --id"),
        };
        let body = json!({ "annotation": id, "text": args.text });
        let stored = async {
            let mut conn = args.server.open().await?;
            args.server
                .call(&mut conn, "POST", "/v1/annotations", Some(&body))
                .await
        }
        .await
        .with_context(|| {
            format!(
                "annotation {id} is on chain, but the server did not take its text; send it again with `medledger annotate --id {id} --text ...`"
            )
        })?;
        args.conn.print(&stored)
    })
}
