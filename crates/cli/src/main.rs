//! `medledger`: one command for every medledger role, and the tools around
//! them (CA, admin, patients and staff, backup, recovery, benchmarks, the
//! demo). Every command logs through `tracing` to stderr (or `--log-file`),
//! as text or `--log-format json`, at the level `RUST_LOG` sets.
//!
//! ```text
//! medledger ca init|issue|show|revoke|crl      the certificate authority
//! medledger ca rotate|retire                   a new issuing CA; retire the old one
//! medledger ca broker                          a Mosquitto broker's files from the CA
//! medledger chain --data D --rpc ADDR          the embedded authority chain
//! medledger chain recover --data D             retire a compromised chain, start anew
//! medledger chain rotate-authority --data D    a new sealing key, same chain
//! medledger chain verify --data D              every block from 0 (node stopped)
//! medledger besu config|allowlist              the chain on a Besu QBFT network
//! medledger up --data D                        chain, server and collector in one process
//! medledger up rotate-kek --data D             rotate the KEK of `medledger up`
//! medledger backup --data D | restore --from B a consistent copy of D, and its restore
//! medledger admin deploy|staff|device|...      Registry and rules, as an admin
//! medledger collector --config FILE            the ingest gateway
//! medledger collector ... dead-letters         batches the server refused: list, retry
//! medledger server --config FILE               the application server
//! medledger server new-kek|rewrap              rotate the key-encryption key
//! medledger server rotate-ledger-key           a new ledger signing key
//! medledger access request|break-glass         ask for a patient's data, on chain
//! medledger records get --request ID           read it, FHIR, every proof checked
//! medledger annotate                           annotate a reading: on chain, then the text
//! medledger consent grant|revoke|list|opt-out  a patient's consent, on chain
//! medledger alerts list|watch|prefs|webhook    a patient's alerts
//! medledger erase --patient REF                the right to be forgotten
//! medledger directory list|set                 people's display names (off chain)
//! medledger review list|close                  the break-glass review queue (admins)
//! medledger audit --patient REF                a patient's access and consent history
//! medledger patient ref --salt-file F --id ID  a patient's patientRef
//! medledger sim --data D | --devices-dir DIR   simulated devices streaming vital signs
//! medledger demo                               a small hospital through every scenario
//! medledger bench ingest|access|flood|crash    load, floods and SIGKILLs
//! medledger verify --bundle FILE               a patient ledger, offline
//! medledger verify --patient REF | --proof F   one from the server; one reading's proof
//! ```
//!
//! Modules (all private), one per command or shared piece:
//!
//! - `access`: `access`, `records`, `consent` and `alerts`: what staff and
//!   patients do;
//! - `admin`: `admin`: every Registry and RuleManager action;
//! - `annotate`: `annotate`: on chain, then the text to the server;
//! - `apart`: the roles of an `up` directory as processes of their own
//!   (`bench crash`, `bench ingest --mode up|split`);
//! - `audit`: `review` and `audit`;
//! - `backup`: `backup`: a consistent copy of an `up` directory while it runs;
//! - `bench`: `bench`: ingest, access, flood and crash;
//! - `besu`: `besu config` and `besu allowlist`;
//! - `broker`: `ca broker`;
//! - `ca`: `ca`;
//! - `chain`: `chain`: the node as its own process, and its tools;
//! - `collector`: `collector`, and its dead letters;
//! - `crash`: `bench crash`: crash consistency under load;
//! - `demo`: `demo`;
//! - `directory`: `directory`;
//! - `doc_commands` (tests only): every `medledger` command the README and
//!   `docs/*.md` show is accepted by the argument parser;
//! - `erase`: `erase`;
//! - `kek`: `server new-kek|rewrap` and `up rotate-kek`: KEK rotation;
//! - `ledger_key`: `server rotate-ledger-key`;
//! - `network`: `bench ingest --mode network`: the network of
//!   `deploy/network/run.sh`, built into the binary;
//! - `patient`: `patient ref`;
//! - `recover`: `chain recover`, resumable step by step;
//! - `restore`: `restore`: a backup brought back, erasures applied again,
//!   every ledger verified;
//! - `roles`: what the long-running roles share: keys, the chain
//!   connection, a CRL re-read when it changes, Ctrl-C;
//! - `rpc`: the chain's JSON-RPC as the roles reach it: plain HTTP on this
//!   machine, HTTPS with mutual TLS to any other;
//! - `server`: `server`;
//! - `simulate`: `sim`;
//! - `up`: `up`: initialised on first start, reused after;
//! - `verify`: `verify`.
//!
//! ```text
//!  ring as the process's rustls provider --> Cli::parse (clap)
//!      --> init_log (tracing; exit 2 if the log file cannot open)
//!      --> the command's module: run(args)
//!      --> Ok: exit 0 | Err: "error: ..." (the whole chain) on stderr, exit 1
//! ```

mod access;
mod admin;
mod annotate;
mod apart;
mod audit;
mod backup;
mod bench;
mod besu;
mod broker;
mod ca;
mod chain;
mod collector;
mod crash;
mod demo;
mod directory;
#[cfg(test)]
mod doc_commands;
mod erase;
mod kek;
mod ledger_key;
mod network;
mod patient;
mod recover;
mod restore;
mod roles;
mod rpc;
mod server;
mod simulate;
mod up;
mod verify;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// medledger secures medical IoT data with a blockchain.
#[derive(Debug, Parser)]
#[command(name = "medledger", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the log is written to stderr: `text` (one line per event) or
    /// `json` (one object per line). The level: `RUST_LOG`, e.g. `warn`
    /// or `info,medledger_chain=warn` (default `info`).
    #[arg(
        long,
        global = true,
        env = "MEDLEDGER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Append the log to this file (created mode 0600) instead of writing
    /// it to stderr; rotate it with logrotate's `copytruncate`.
    #[arg(long, global = true, env = "MEDLEDGER_LOG_FILE")]
    log_file: Option<PathBuf>,
}

/// The log's format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Sends the log (`tracing`) to stderr, or appends it to `file`, in
/// `format`, filtered by `RUST_LOG`.
fn init_log(format: LogFormat, file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => spec.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("medledger: RUST_LOG={spec:?} is not a log filter ({e}); logging at info");
            Targets::new().with_default(tracing::Level::INFO)
        }),
        Err(_) => Targets::new().with_default(tracing::Level::INFO),
    };
    let text = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false);
    let layer = match (format, file) {
        (LogFormat::Text, None) => text.with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, None) => text.json().with_writer(std::io::stderr).boxed(),
        (format, Some(path)) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!(
                        "--log-file {}: cannot open it for appending",
                        path.display()
                    )
                })?;
            let writer = std::sync::Mutex::new(file);
            match format {
                LogFormat::Text => text.with_writer(writer).boxed(),
                LogFormat::Json => text.json().with_writer(writer).boxed(),
            }
        }
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    Ok(())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the certificate authority: create it, issue, show, revoke, CRL.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Run the embedded authority chain (an EVM node) with JSON-RPC.
    Chain(chain::ChainArgs),
    /// Change the Registry and the rules as an admin, on any chain.
    Admin(admin::AdminArgs),
    /// Run the chain on Besu: write a QBFT network's files from one
    /// description, keep its nodes' allowlists equal to the Registry.
    #[command(subcommand)]
    Besu(besu::BesuCommand),
    /// Run a collector: the mTLS gateway devices send readings to.
    Collector(collector::CollectorArgs),
    /// Run the application server: stores, records and anchors readings.
    Server(server::ServerArgs),
    /// Ask for a patient's data (staff), signed on chain.
    Access(access::AccessArgs),
    /// Read a patient's records from the server with a granted request.
    #[command(subcommand)]
    Records(access::RecordsCommand),
    /// Grant, revoke and list consent, or opt out (patients), on chain.
    Consent(access::ConsentArgs),
    /// Read your alerts as a patient, or follow them.
    #[command(subcommand)]
    Alerts(access::AlertsCommand),
    /// Annotate or correct a reading you read (staff), signed on chain.
    Annotate(annotate::AnnotateArgs),
    /// Erase (forget) a patient, as the patient or an admin.
    Erase(erase::EraseArgs),
    /// People's display names, kept off chain by the server.
    #[command(subcommand)]
    Directory(directory::DirectoryCommand),
    /// A patient's reference (patientRef) from the hospital's salt.
    #[command(subcommand)]
    Patient(patient::PatientCommand),
    /// The break-glass review queue, as an admin.
    Review(audit::ReviewArgs),
    /// A patient's access and consent history, from the chain.
    Audit(audit::AuditArgs),
    /// Run the chain, a server and a collector in one process, with their
    /// state in a data directory (initialised on first start).
    Up(up::UpCommandLine),
    /// Back up the data directory of `medledger up`, even while it runs.
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory and verify it.
    Restore(restore::RestoreArgs),
    /// Simulated devices for `medledger up`: they stream vital signs.
    Sim(simulate::SimArgs),
    /// Run a small hospital in this process through every scenario and
    /// attack, and report what happened.
    Demo(demo::DemoArgs),
    /// Measure the system under load (in this process).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Verify an exported patient ledger (a proof bundle) offline.
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    // HTTP clients (reqwest, with rustls when the S3 client turns it on)
    // take the process's crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Err(e) = init_log(cli.log_format, cli.log_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Ca(cmd) => ca::run(cmd),
        Command::Chain(args) => chain::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Besu(cmd) => besu::run(cmd),
        Command::Collector(args) => collector::run(args),
        Command::Server(args) => server::run(args),
        Command::Access(args) => access::run_access(args),
        Command::Records(cmd) => access::run_records(cmd),
        Command::Consent(args) => access::run_consent(args),
        Command::Alerts(cmd) => access::run_alerts(cmd),
        Command::Annotate(args) => annotate::run(args),
        Command::Directory(command) => directory::run(command),
        Command::Erase(args) => erase::run(args),
        Command::Patient(cmd) => patient::run(cmd),
        Command::Review(args) => audit::run_review(args),
        Command::Audit(args) => audit::run_audit(args),
        Command::Up(args) => up::run(args),
        Command::Backup(args) => backup::run_backup(args),
        Command::Restore(args) => restore::run_restore(args),
        Command::Sim(args) => simulate::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Verify(args) => verify::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
