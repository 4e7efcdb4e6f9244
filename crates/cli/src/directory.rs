//! `medledger directory list|set`: people's display names, kept off chain
//! by the server. Names come from the subject of each person's certificate
//! when the server first sees it; an admin sets or corrects them here.

use crate::access::ServerArgs;
use alloy::primitives::Address;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum DirectoryCommand {
    /// The names you may see, by account.
    List(ListArgs),
    /// Name a person (admins): shown in the portal, alerts, audit trails
    /// and FHIR, never put on chain.
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// The person's chain account.
    #[arg(long)]
    account: Address,
    /// Their name as people should see it.
    #[arg(long)]
    name: String,
    /// Their role: doctor, nurse, admin or patient (a patient's name is
    /// shown only to admins and to them).
    #[arg(long)]
    role: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub(crate) fn run(command: DirectoryCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let answer = match command {
            DirectoryCommand::List(args) => {
                let mut conn = args.server.open().await?;
                args.server.get(&mut conn, "/v1/directory").await?
            }
            DirectoryCommand::Set(args) => {
                let mut conn = args.server.open().await?;
                let body = json!({ "name": args.name, "role": args.role });
                let path = format!("/v1/directory/{}", args.account);
                args.server
                    .call(&mut conn, "PUT", &path, Some(&body))
                    .await?
            }
        };
        println!("{}", serde_json::to_string_pretty(&answer)?);
        Ok(())
    })
}
