//! `medledger erase --patient REF`: the right to be forgotten, asked by the
//! patient (their own certificate) or an admin. The server destroys the
//! patient's data keys, erases their ledger down to a signed tombstone and
//! deletes what names them; see `medledger_server::erase`.

use crate::access::ServerArgs;
use alloy::primitives::B256;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct EraseArgs {
    /// The patientRef.
    #[arg(long)]
    patient: B256,
    /// Say yes: this cannot be undone.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(args: EraseArgs) -> Result<()> {
    anyhow::ensure!(
        args.yes,
        "erasing patient {} destroys their data for good; pass --yes to go ahead",
        args.patient
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut conn = args.server.open().await?;
        let done = args
            .server
            .call(
                &mut conn,
                "DELETE",
                &format!("/v1/patients/{}", hex::encode(args.patient)),
                None,
            )
            .await?;
        println!("{}", serde_json::to_string_pretty(&done)?);
        Ok(())
    })
}
