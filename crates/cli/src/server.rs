//! `medledger server --config FILE`: the application server;
//! `medledger server rotate-ledger-key` ([`crate::ledger_key`]).

use crate::roles;
use anyhow::{Context, Result};
use clap::Args;
use medledger_patient_ledger::NoteSigner;
use medledger_pki::{Role, files};
use medledger_server::leases::Peer;
use medledger_server::{ConfigFile, Peering, Server, Settings};
use medledger_storage::{Backend, BlobStore, LocalDir, ObjectStoreBlobs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ServerArgs {
    /// Key rotation (docs/operations.md).
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// The configuration file (TOML; see docs/operations.md).
    #[arg(long, env = "MEDLEDGER_SERVER_CONFIG", required = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum ServerCommand {
    #[command(flatten)]
    Kek(crate::kek::KekCommand),
    /// Retire the ledger signing key for a new one (server stopped).
    RotateLedgerKey(crate::ledger_key::RotateArgs),
}

/// The ledger signing key at `path`, created on first start.
pub(crate) fn ledger_key(path: &Path, name: &str) -> Result<NoteSigner> {
    if !path.exists() {
        files::write_secret(
            path,
            files::to_pem("PRIVATE KEY", &NoteSigner::generate_pkcs8()).as_bytes(),
        )?;
        println!(
            "medledger server: created the ledger key {}",
            path.display()
        );
    }
    let pkcs8 = files::read_private(path, "PRIVATE KEY")?;
    NoteSigner::from_pkcs8(name, &pkcs8)
        .map_err(|e| anyhow::anyhow!("the ledger key {}: {e}", path.display()))
}

pub(crate) fn run(args: ServerArgs) -> Result<()> {
    if let Some(command) = args.command {
        return match command {
            ServerCommand::Kek(command) => crate::kek::run(command),
            ServerCommand::RotateLedgerKey(args) => crate::ledger_key::run(args),
        };
    }
    let config = ConfigFile::load(&args.config.context("pass --config FILE")?)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = start(&config).await?;
        println!("medledger server {}", server.subject);
        print_endpoints(&server.server);
        roles::shutdown().await;
        println!("medledger server: stopping");
        server.server.stop().await;
        Ok(())
    })
}

/// A started server and the subject of its certificate.
pub(crate) struct Started {
    pub(crate) server: Server,
    pub(crate) subject: String,
}

/// Prints where the server serves.
pub(crate) fn print_endpoints(server: &Server) {
    println!("  collectors   https://{}/v1/batches", server.addr());
    println!(
        "  proofs       https://{}/v1/readings/HASH/proof",
        server.addr()
    );
    if let Some(p) = server.portal_addr() {
        println!("  portal       https://{p}/ (sign in with a client certificate or a chain key)");
    }
    if let Some(m) = server.metrics_addr() {
        println!(
            "  metrics      {}/metrics (and /livez, /readyz)",
            medledger_pki::health::base_url(m)
        );
    }
    println!("  ledger key   {}", server.ledger().verifier_key());
}

/// How a server on PostgreSQL is reached by the others on the same
/// database, and reaches them.
fn peering(config: &ConfigFile, credentials: &medledger_pki::Credentials) -> Result<Peering> {
    let addr = match &config.advertise {
        Some(addr) => addr.clone(),
        None if roles::socket(&config.listen, "listen")?
            .ip()
            .is_unspecified() =>
        {
            anyhow::bail!(
                "listen = {:?} does not say where the other servers on this database reach this one: \
                 set advertise = \"HOST:PORT\"",
                config.listen
            )
        }
        None => config.listen.clone(),
    };
    let server_name = match &config.server_name {
        Some(name) => name.clone(),
        None => addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let root = files::read_first(&config.ca_root, "CERTIFICATE")?;
    Ok(Peering {
        at: Peer { addr, server_name },
        tls: medledger_pki::client_config(Some(credentials), &root, &[Role::Server])?,
        term: Duration::from_millis(config.lease_ms),
    })
}

/// Starts a server as `config` says, re-reading the CRL as it changes.
pub(crate) async fn start(config: &ConfigFile) -> Result<Started> {
    let db = roles::open_db(
        config.database.as_deref(),
        &config.data,
        medledger_storage::Part::Server,
    )
    .await?;
    let blobs: Arc<dyn BlobStore> = match &config.blobs {
        Some(url) => Arc::new(ObjectStoreBlobs::from_url(url)?),
        None => Arc::new(LocalDir::open(config.data.join("blobs")).await?),
    };
    let (kek, previous_keks) = config.keks()?;
    let roles::NodeStart {
        credentials,
        identity,
        contracts,
    } = roles::node_start(
        Role::Server,
        &config.credentials,
        &config.chain_rpc,
        &config.registry,
        &config.ca_root,
    )
    .await?;
    // Made only once the rest of the configuration holds: a start that
    // fails leaves no key behind.
    let ledger_key = ledger_key(
        &config.ledger_key,
        &crate::ledger_key::key_name(config, &identity),
    )?;
    let auth = |roles: &[Role]| roles::client_auth(&config.ca_root, &config.crl, roles);
    let peering = match db.backend() {
        Backend::Postgres => Some(peering(config, &credentials)?),
        Backend::Sqlite => None,
    };
    let client_auth = auth(&medledger_server::CLIENT_ROLES)?;
    let device_auth = auth(&[Role::Device])?;
    let card_auth = auth(&[Role::Patient])?;
    let server = Server::start(Settings {
        listen: roles::socket(&config.listen, "listen")?,
        portal_listen: config
            .portal_listen
            .as_deref()
            .map(|p| roles::socket(p, "portal_listen"))
            .transpose()?,
        metrics_listen: config
            .metrics_listen
            .as_deref()
            .map(|m| roles::socket(m, "metrics_listen"))
            .transpose()?,
        credentials,
        client_auth: client_auth.clone(),
        device_auth: device_auth.clone(),
        card_auth: card_auth.clone(),
        db,
        blobs,
        kek,
        previous_keks,
        ledger_key,
        contracts,
        anchor_interval: Duration::from_millis(config.anchor_interval_ms),
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms),
        webhook_allow: config.webhook_allow.clone(),
        webhook_ca: config
            .webhook_ca
            .as_deref()
            .map(|ca| {
                files::read_der_blocks(ca, "CERTIFICATE")
                    .with_context(|| format!("webhook_ca {}", ca.display()))
            })
            .transpose()?,
        peering,
    })
    .await?;
    roles::watch_crl(
        config.crl.clone(),
        vec![client_auth, device_auth, card_auth],
    );
    Ok(Started {
        server,
        subject: identity.subject,
    })
}
