//! What staff and patients do: `medledger access` (ask for a patient's
//! data, signed on chain), `medledger records` (read it from the server)
//! and `medledger consent` (the patient's grants and opt-out).

use crate::admin::{Connection, outcome};
use alloy::primitives::{Address, B256};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use medledger_contracts::{AccessDecision, Grantee, Scope, StaffRole, text_of};
use medledger_patient_ledger::{NoteVerifier, leaf_hash, verify_inclusion};
use medledger_pki::https::Connection as Https;
use medledger_pki::{Credentials, Role, files};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct AccessArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: AccessCommand,
}

#[derive(Debug, Subcommand)]
enum AccessCommand {
    /// Ask for a patient's data for a purpose, signed with your chain key;
    /// prints the decision AccessLog recorded.
    Request {
        /// The patientRef (0x and 64 hex digits).
        #[arg(long)]
        patient: B256,
        /// `all`, or data types (LOINC codes or names) separated by commas.
        #[arg(long, default_value = "all")]
        scope: Scope,
        /// Why: an HL7 v3 PurposeOfUse code (TREAT, ETREAT, CAREMGT, COC,
        /// HRESCH, ...; any case). It is public on chain, so it is a code,
        /// never free text.
        #[arg(long)]
        purpose: String,
    },
    /// Emergency access (doctors only): always granted, flagged, reviewed.
    BreakGlass {
        /// The patientRef.
        #[arg(long, required_unless_present = "id")]
        patient: Option<B256>,
        /// The data types.
        #[arg(long, default_value = "all")]
        scope: Scope,
        /// Why, in words. It stays off chain (the chain holds its SHA-256):
        /// the server keeps it sealed for the patient and the admins who
        /// review the request.
        #[arg(long)]
        reason: String,
        /// Only give the server the reason of break-glass request ID,
        /// already on chain (when an earlier try could not reach it).
        #[arg(long, conflicts_with = "patient")]
        id: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn decision(d: &AccessDecision) -> Value {
    match &d.outcome {
        Ok(basis) => json!({
            "action": format!("access request {} granted", d.id),
            "request": d.id,
            "basis": basis.name(),
            "grant": d.grant_id,
            "expires_at": d.expires_at,
            "tx": d.tx,
            "next": format!("medledger records get --request {} ...", d.id),
        }),
        Err(reason) => json!({
            "action": format!("access request {} denied", d.id),
            "request": d.id,
            "reason": reason.name(),
            "tx": d.tx,
        }),
    }
}

pub(crate) fn run_access(args: AccessArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (c, _) = args.conn.contracts().await?;
        let d = match args.command {
            AccessCommand::Request {
                patient,
                scope,
                purpose,
            } => c.request_access(patient, scope, &purpose).await?,
            AccessCommand::BreakGlass {
                patient,
                scope,
                reason,
                id,
                server,
            } => {
                let (reason, server) = (&reason, &server);
                let justify = |id: u64| async move {
                    let body = json!({ "request": id, "text": reason });
                    async {
                        let mut conn = server.open().await?;
                        server
                            .call(&mut conn, "POST", "/v1/justifications", Some(&body))
                            .await
                    }
                    .await
                    .with_context(|| {
                        format!(
                            "request {id} is on chain, but the server did not take its reason; send it again with `medledger access break-glass --id {id} --reason ...`"
                        )
                    })
                };
                let Some(patient) = patient else {
                    let id = id.context("pass --patient, or --id of a request on chain")?;
                    let stored = justify(id).await?;
                    return args.conn.print(&stored);
                };
                let d = c.break_glass(patient, scope, reason).await?;
                if d.outcome.is_ok() {
                    justify(d.id).await?;
                }
                d
            }
        };
        args.conn.print(&decision(&d))
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecordsCommand {
    /// Read a patient's observations with a granted request of yours: a
    /// FHIR R4 Bundle, every Observation's ledger proof checked.
    Get(RecordsGet),
}

/// Where the server is and who you are to it.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The server's `host:port`.
    #[arg(long, env = "MEDLEDGER_SERVER")]
    server: Option<String>,
    /// The name on the server's certificate (default: localhost).
    #[arg(long, env = "MEDLEDGER_SERVER_NAME")]
    server_name: Option<String>,
    /// Your certificate and key: `PREFIX.crt`, `PREFIX.key`.
    #[arg(long, env = "MEDLEDGER_CERT")]
    cert: Option<PathBuf>,
    /// The root CA certificate.
    #[arg(long, env = "MEDLEDGER_CA_ROOT")]
    ca_root: Option<PathBuf>,
}

impl ServerArgs {
    /// Whether a server is named at all.
    pub(crate) fn given(&self) -> bool {
        self.server.is_some()
    }

    /// A mutual-TLS connection to the server.
    pub(crate) async fn open(&self) -> Result<Https> {
        let (Some(server), Some(cert), Some(ca_root)) = (&self.server, &self.cert, &self.ca_root)
        else {
            bail!(
                "this talks to the server: pass --server HOST:PORT, --cert PREFIX and --ca-root FILE (or set MEDLEDGER_SERVER, MEDLEDGER_CERT and MEDLEDGER_CA_ROOT)"
            );
        };
        let own = Credentials::load(cert).with_context(|| format!("loading {}", cert.display()))?;
        let root = files::read_first(ca_root, "CERTIFICATE")?;
        let tls = medledger_pki::client_config(Some(&own), &root, &[Role::Server])?;
        let name = self.server_name.as_deref().unwrap_or("localhost");
        Ok(Https::open(tls, server, name).await?)
    }

    /// `GET path` as JSON, or the server's refusal as an error.
    pub(crate) async fn get(&self, conn: &mut Https, path: &str) -> Result<Value> {
        self.call(conn, "GET", path, None).await
    }

    /// `METHOD path` with an optional JSON body; the answer as JSON, or
    /// the server's refusal as an error.
    pub(crate) async fn call(
        &self,
        conn: &mut Https,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let reply = match body {
            Some(body) => {
                conn.request(
                    method,
                    path,
                    &[("content-type", "application/json")],
                    body.to_string().into_bytes(),
                )
                .await?
            }
            None => conn.request(method, path, &[], Vec::new()).await?,
        };
        if reply.status != 200 {
            let problem: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            bail!(
                "the server refused ({}): {}",
                reply.status,
                problem["detail"].as_str().map_or_else(
                    || String::from_utf8_lossy(&reply.body).into_owned(),
                    str::to_owned
                )
            );
        }
        serde_json::from_slice(&reply.body).context("the server's answer")
    }
}

#[derive(Debug, Args)]
pub(crate) struct RecordsGet {
    /// The access request id (from `medledger access request`).
    #[arg(long)]
    request: u64,
    #[command(flatten)]
    server: ServerArgs,
    /// Write the Bundle here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run_records(command: RecordsCommand) -> Result<()> {
    let RecordsCommand::Get(args) = command;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut conn = args.server.open().await?;
        let bundle = args
            .server
            .get(&mut conn, &format!("/v1/records?request={}", args.request))
            .await?;
        let (observations, size) = check_proofs(&bundle)?;
        let text = serde_json::to_string_pretty(&bundle)?;
        match &args.out {
            Some(path) => {
                std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
            }
            None => println!("{text}"),
        }
        eprintln!(
            "{observations} observation(s); every ledger proof checked against a checkpoint of {size} entries"
        );
        Ok(())
    })
}

fn extension<'a>(list: &'a Value, url: &str) -> Result<&'a Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == url)
        .with_context(|| format!("no extension {url}"))
}

/// Checks every Observation's ledger proof against the Bundle's signed
/// checkpoint; returns how many and the checkpoint's size.
fn check_proofs(bundle: &Value) -> Result<(usize, u64)> {
    use medledger_server::records::{CHECKPOINT_EXTENSION, KEY_EXTENSION, PROOF_EXTENSION};
    let meta = &bundle["meta"]["extension"];
    let text = |v: &Value| v["valueString"].as_str().map(str::to_owned);
    let key = text(extension(meta, KEY_EXTENSION)?).context("no ledger key")?;
    let note = text(extension(meta, CHECKPOINT_EXTENSION)?).context("no checkpoint")?;
    let verifier = NoteVerifier::new(&key).map_err(|e| anyhow::anyhow!("the ledger key: {e}"))?;
    let checkpoint = verifier
        .verify(&note)
        .map_err(|e| anyhow::anyhow!("the checkpoint: {e}"))?;
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    for entry in &entries {
        let obs = &entry["resource"];
        let parts = &extension(&obs["extension"], PROOF_EXTENSION)?["extension"];
        let index = extension(parts, "index")?["valueUnsignedInt"]
            .as_u64()
            .context("no index")?;
        let stored = base64::engine::general_purpose::STANDARD
            .decode(
                extension(parts, "entry")?["valueBase64Binary"]
                    .as_str()
                    .context("no entry")?,
            )
            .context("the entry")?;
        let path = text(extension(parts, "path")?).unwrap_or_default();
        let path: Vec<[u8; 32]> = path
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .context("a proof hash")
            })
            .collect::<Result<_>>()?;
        verify_inclusion(
            &leaf_hash(&stored),
            index,
            checkpoint.size,
            &path,
            &checkpoint.root,
        )
        .map_err(|e| anyhow::anyhow!("observation {}: {e}", obs["id"]))?;
    }
    Ok((entries.len(), checkpoint.size))
}

#[derive(Debug, Args)]
pub(crate) struct ConsentArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: ConsentCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StaffRoleArg {
    Doctor,
    Nurse,
}

#[derive(Debug, Subcommand)]
enum ConsentCommand {
    /// Grant a staff member, or every doctor or nurse, access to your data.
    Grant {
        /// Your patientRef.
        #[arg(long)]
        patient: B256,
        /// The staff account.
        #[arg(long, conflicts_with = "role", required_unless_present = "role")]
        to: Option<Address>,
        /// Or every active staff member of this role.
        #[arg(long, value_enum)]
        role: Option<StaffRoleArg>,
        /// `all`, or data types separated by commas.
        #[arg(long, default_value = "all")]
        scope: Scope,
        /// For this purpose only: a PurposeOfUse code (TREAT, CAREMGT,
        /// HRESCH, ...), or `any` for every purpose.
        #[arg(long, default_value = "any")]
        purpose: String,
        /// Valid for this many days.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Revoke a grant: its next use is refused.
    Revoke {
        /// Your patientRef.
        #[arg(long)]
        patient: B256,
        /// The grant id.
        #[arg(long)]
        id: u64,
    },
    /// Your live grants.
    List {
        /// Your patientRef.
        #[arg(long)]
        patient: B256,
    },
    /// Refuse (`on`) or allow again (`off`) access by your assigned carers
    /// without a grant.
    OptOut {
        /// Your patientRef.
        #[arg(long)]
        patient: B256,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

pub(crate) fn run_consent(args: ConsentArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (c, _) = args.conn.contracts().await?;
        let out = match args.command {
            ConsentCommand::Grant {
                patient,
                to,
                role,
                scope,
                purpose,
                days,
            } => {
                let grantee = match (to, role) {
                    (Some(account), _) => Grantee::Account(account),
                    (None, Some(StaffRoleArg::Doctor)) => Grantee::Role(StaffRole::Doctor),
                    (None, Some(StaffRoleArg::Nurse)) => Grantee::Role(StaffRole::Nurse),
                    (None, None) => bail!("pass --to ACCOUNT or --role doctor|nurse"),
                };
                let purpose = if purpose == "any" {
                    ""
                } else {
                    purpose.as_str()
                };
                let expiry = medledger_protocol::now_ms() / 1000 + days * 86_400;
                let id = c
                    .grant_consent(patient, grantee, scope, purpose, expiry)
                    .await?;
                json!({ "action": format!("consent {id} granted"), "grant": id, "expiry": expiry })
            }
            ConsentCommand::Revoke { patient, id } => outcome(
                format!("consent {id} revoked"),
                &c.revoke_consent(patient, id).await?,
            ),
            ConsentCommand::OptOut { patient, state } => outcome(
                format!("opt-out {state}"),
                &c.set_opt_out(patient, state == "on").await?,
            ),
            ConsentCommand::List { patient } => {
                let consent = c.consent();
                let ids = consent.liveGrants(patient).call().await?;
                let mut grants = Vec::with_capacity(ids.len());
                for id in ids {
                    let g = consent.grantOf(id).call().await?;
                    grants.push(json!({
                        "id": id.to_string(),
                        "grantee": if g.grantee.is_zero() {
                            StaffRole::from_code(g.role).map_or("?", StaffRole::name).to_owned()
                        } else {
                            g.grantee.to_string()
                        },
                        "scope": Scope(g.scope).to_string(),
                        "purpose": text_of(g.purpose),
                        "expiry": g.expiry,
                    }));
                }
                let opted_out = consent.optedOut(patient).call().await?;
                json!({ "count": grants.len(), "grants": grants, "opted_out": opted_out })
            }
        };
        args.conn.print(&out)
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Your alerts after `--after` (all by default), oldest first.
    List(AlertsArgs),
    /// Your alerts as they come (after printing those after `--after`),
    /// until Ctrl-C.
    Watch(AlertsArgs),
    /// Show your alert preferences, or change them.
    Prefs(PrefsArgs),
    /// Show your webhook, set it (alerts POSTed to a URL, signed with a
    /// secret), or remove it.
    Webhook(WebhookArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WebhookArgs {
    /// Deliver your alerts to this `https://` URL (not an internal
    /// address, unless the server's admin allows it).
    #[arg(long, requires = "secret_file", conflicts_with = "remove")]
    url: Option<String>,
    /// A file holding the shared secret (at least 16 characters) the
    /// alerts are signed with (HMAC-SHA256).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Start after this alert id (default: with the next alert).
    #[arg(long)]
    after: Option<u64>,
    /// Remove the webhook.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PrefsArgs {
    /// `all` alerts, or only `unusual` ones (every alert is kept).
    #[arg(long, value_parser = ["all", "unusual"])]
    mode: Option<String>,
    /// Your usual hours for reads, UTC, e.g. `7-19`; `0-0`: any hour.
    #[arg(long)]
    hours: Option<String>,
    /// More reads than this by one person in an hour are unusual.
    #[arg(long)]
    max_reads_per_hour: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AlertsArgs {
    /// Only alerts with a larger id.
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

fn print_alert(alert: &Value, json: bool) {
    if json {
        println!("{alert}");
        return;
    }
    let flag = if alert["flagged"] == true { "!" } else { " " };
    println!(
        "{flag} #{:<5} {} {:<16} {}",
        alert["id"],
        medledger_protocol::fhir::instant(alert["created_ms"].as_u64().unwrap_or(0)),
        alert["kind"].as_str().unwrap_or("?"),
        alert["why"].as_str().unwrap_or("")
    );
}

pub(crate) fn run_alerts(command: AlertsCommand) -> Result<()> {
    let (args, watch) = match command {
        AlertsCommand::List(args) => (args, false),
        AlertsCommand::Watch(args) => (args, true),
        AlertsCommand::Prefs(args) => return preferences(args),
        AlertsCommand::Webhook(args) => return webhook(args),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut conn = args.server.open().await?;
        let mut after = args.after;
        loop {
            let page = args
                .server
                .get(&mut conn, &format!("/v1/alerts?after={after}"))
                .await?;
            let alerts = page["alerts"].as_array().cloned().unwrap_or_default();
            for alert in &alerts {
                print_alert(alert, args.json);
                after = alert["id"].as_u64().unwrap_or(after);
            }
            if !watch && alerts.len() < 1000 {
                return Ok(());
            }
            if alerts.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = crate::roles::shutdown() => return Ok(()),
                }
            }
        }
    })
}

fn preferences(args: PrefsArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut conn = args.server.open().await?;
        let mut prefs = args.server.get(&mut conn, "/v1/alerts/preferences").await?;
        let changed =
            args.mode.is_some() || args.hours.is_some() || args.max_reads_per_hour.is_some();
        if let Some(mode) = args.mode {
            prefs["mode"] = mode.into();
        }
        if let Some(hours) = &args.hours {
            let (start, end) = hours
                .split_once('-')
                .and_then(|(s, e)| {
                    Some((s.trim().parse::<u8>().ok()?, e.trim().parse::<u8>().ok()?))
                })
                .with_context(|| format!("--hours {hours:?}: expected START-END, e.g. 7-19"))?;
            prefs["day_start"] = start.into();
            prefs["day_end"] = end.into();
        }
        if let Some(n) = args.max_reads_per_hour {
            prefs["max_reads_per_hour"] = n.into();
        }
        if changed {
            prefs = args
                .server
                .call(&mut conn, "PUT", "/v1/alerts/preferences", Some(&prefs))
                .await?;
        }
        println!("{}", serde_json::to_string_pretty(&prefs)?);
        Ok(())
    })
}

fn webhook(args: WebhookArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut conn = args.server.open().await?;
        let path = "/v1/alerts/webhook";
        let answer = match (&args.url, args.remove) {
            (_, true) => args.server.call(&mut conn, "DELETE", path, None).await?,
            (Some(url), false) => {
                let file = args
                    .secret_file
                    .as_ref()
                    .context("--url needs --secret-file")?;
                let secret = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let mut hook = json!({ "url": url, "secret": secret.trim() });
                if let Some(after) = args.after {
                    hook["after"] = after.into();
                }
                args.server
                    .call(&mut conn, "PUT", path, Some(&hook))
                    .await?
            }
            (None, false) => args.server.get(&mut conn, path).await?,
        };
        println!("{}", serde_json::to_string_pretty(&answer)?);
        Ok(())
    })
}
