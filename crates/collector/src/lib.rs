//! The collector: the ingest gateway between devices and the server. It
//! takes readings over HTTPS and MQTT, checks them with the shared stages
//! of `medledger_checks`, commits each batch durably to its outbox, and
//! forwards the outbox to the server.
//!
//! - [`cards`]: patient cards that sign each batch per patient, their keys
//!   in files ([`SoftwareCard`]) or on PKCS#11 tokens ([`TokenCard`]),
//!   shared by every clone of [`Cards`] so that a card inserted while the
//!   collector runs is used at once;
//! - [`config`]: the TOML configuration;
//! - [`dead_letters`]: batches the server refused with a 4xx, held, told to
//!   the server for the patients' alerts, retried by an operator;
//! - `forward`: the outbox, oldest batch first, to the server over mutual
//!   TLS with up to three batches in flight, numbered in a stream, or to a
//!   server's ingest in this process ([`Upstream`]), with retries;
//! - `http`: `POST /v1/readings` for devices over mutual TLS;
//! - `intake`: what every transport does with a device's readings: the
//!   per-request limits, the device's rate, the shared `verify` and
//!   `window` stages, the pipeline, the answer;
//! - `mqtt`: the readings a broker delivers from the collectors' shared
//!   subscription ([`MqttSettings`]), each reading's `x5chain` verified as
//!   a handshake, answered on the device's response topic after the outbox
//!   commit;
//! - `outage`: the chain's last answers (bindings, rule verdicts read as
//!   ranges), for deciding through chain outages;
//! - `outbox`: batches taken out of the outbox, once the server answered
//!   for them or as dead letters;
//! - `pipeline`: batch decisions (the shared `bind`, `rules` and sequence
//!   stages, the patient's card) with one durable outbox commit per batch,
//!   shared by every request that arrived meanwhile (group commit).
//!
//! ```text
//!  device --mTLS POST /v1/readings--> http   \
//!  device --MQTT (x5chain)--> broker --> mqtt  > intake (limits, rate, COSE, window)
//!        --Submission--> pipeline (one batch at a time: Registry bindings,
//!                        card, rules, sequence; one durable outbox commit;
//!                        while the chain is down, bindings and verdicts
//!                        from what it last said: outage)
//!        <--202 receipts (after the commit; ?wait=committed: after the server)
//!  outbox --forward (mTLS POST /v1/batches, retries)--> server
//!         (or, where the server runs in this process, its ingest in
//!          memory: no TLS hop, no second verification)
//!  outbox --a batch the server refuses (4xx)--> dead letters, held until
//!         an operator retries them
//! ```
//!
//! No feature flags.

pub mod cards;
pub mod config;
pub mod dead_letters;
mod forward;
mod http;
mod intake;
mod mqtt;
mod outage;
mod outbox;
mod pipeline;

use alloy::providers::DynProvider;
pub use cards::{CardError, CardSigner, Cards, SoftwareCard, TokenCard, load_card};
pub use config::{ConfigError, ConfigFile, Limits};
use medledger_contracts::{ChainView, Contracts};
use medledger_pki::health::{self, Readiness};
use medledger_pki::https::{self, Connection, Tasks};
use medledger_pki::metrics::Metrics;
use medledger_pki::{ClientAuth, Credentials, Role};
use medledger_protocol::{CommitReply, ForwardBatch};
use medledger_storage::Db;
pub use mqtt::MqttSettings;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc, oneshot};

/// Where the collector forwards its batches.
#[derive(Clone)]
pub enum Upstream {
    /// Servers over mutual TLS (`POST /v1/batches`), which verify every
    /// reading again: a collector is not trusted across machines. The
    /// first is the one batches go to; after a batch fails there, the
    /// next in turn (servers sharing a database take any batch).
    Servers(Vec<ServerTarget>),
    /// The server's ingest in this same process (`medledger up`, the
    /// demo): batches go in memory, and nothing is verified twice.
    InProcess(Arc<dyn InProcessServer>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Servers(targets) => f.debug_tuple("Servers").field(targets).finish(),
            Upstream::InProcess(_) => f.write_str("InProcess"),
        }
    }
}

/// A server's ingest running in the collector's own process.
pub trait InProcessServer: Send + Sync {
    /// Commits a batch this collector verified, card-signed and made
    /// durable, as `POST /v1/batches` answers it: one result per reading,
    /// in order; idempotent by reading hash. An error leaves the batch in
    /// the outbox, to be sent again.
    fn commit(
        &self,
        batch: ForwardBatch,
    ) -> Pin<Box<dyn Future<Output = Result<CommitReply, ForwardError>> + Send + '_>>;
}

/// Why a batch could not be handed on now (it is sent again).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ForwardError(pub String);

/// A server reached over mutual TLS.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// `host:port`.
    pub addr: String,
    /// The name on the server's certificate.
    pub name: String,
}

/// Everything a collector runs with, resolved.
pub struct Settings {
    /// Where devices connect (port 0: any free port).
    pub listen: SocketAddr,
    /// Where monitoring reads `/metrics`, `/livez` and `/readyz`, if
    /// anywhere (plain HTTP on loopback, HTTPS elsewhere).
    pub metrics_listen: Option<SocketAddr>,
    /// The collector's certificate chain and key.
    pub credentials: Credentials,
    /// The root CA certificate (DER), to verify the server.
    pub root_der: Vec<u8>,
    /// Verifies devices (role `device` only).
    pub client_auth: Arc<ClientAuth>,
    /// The outbox database, migrated.
    pub db: Db,
    /// The contracts, read through any provider.
    pub contracts: Contracts<DynProvider>,
    /// The patient cards.
    pub cards: Cards,
    /// Where batches go.
    pub upstream: Upstream,
    /// Limits.
    pub limits: Limits,
    /// An MQTT broker to take readings from too, if any.
    pub mqtt: Option<MqttSettings>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Why the collector cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS setup failed.
    #[error("TLS: {0}")]
    Tls(#[from] medledger_pki::Error),
    /// The outbox database failed.
    #[error("outbox: {0}")]
    Db(#[from] medledger_storage::SqlError),
}

/// State shared by the endpoint, the pipeline and the forwarder.
pub(crate) struct State {
    pub(crate) limits: Limits,
    pub(crate) db: Db,
    pub(crate) view: ChainView<DynProvider>,
    /// What the chain last said, for deciding while it cannot be asked.
    pub(crate) last_known: outage::LastKnown,
    /// Logs the chain's outages, once when they start and every 30 s.
    pub(crate) chain_outage: Mutex<health::Outage>,
    pub(crate) cards: Cards,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) submit: mpsc::Sender<pipeline::Submission>,
    /// Receipts waiting for the server's answer, by reading hash: the
    /// ledger index, or why the server refused the reading.
    pub(crate) waiters: Mutex<HashMap<[u8; 32], Vec<oneshot::Sender<pipeline::Committed>>>>,
    /// Token buckets per device EPC.
    pub(crate) rates: Mutex<HashMap<[u8; 12], intake::Bucket>>,
    /// Wakes the forwarder after an outbox commit.
    pub(crate) outbox_changed: Notify,
    /// CA certificates seen in device chains (DER), for the server.
    pub(crate) cas: Mutex<Vec<Vec<u8>>>,
    /// The server's ingest, where it runs in this process: decided
    /// batches go to it straight away while the outbox is empty.
    pub(crate) in_process: Option<Arc<dyn InProcessServer>>,
    /// Moves on each time a decided batch cannot be committed (see
    /// `pipeline::commit_in_order`).
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// The log of rejected readings, rate-limited.
    pub(crate) rejections: medledger_pki::throttle::LogThrottle,
}

/// A running collector. Dropping it stops it.
pub struct Collector {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    _tasks: Tasks,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Binds the device endpoint and starts the pipeline and forwarder.
    pub async fn start(settings: Settings) -> Result<Collector, StartError> {
        let Settings {
            listen,
            metrics_listen,
            credentials,
            root_der,
            client_auth,
            db,
            contracts,
            cards,
            upstream,
            limits,
            mqtt,
        } = settings;
        let bind = |addr: SocketAddr| async move {
            https::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })
        };
        let (listener, addr) = bind(listen).await?;
        let tls = medledger_pki::server_config(&credentials, client_auth.clone())?;
        let forward_tls =
            medledger_pki::client_config(Some(&credentials), &root_der, &[Role::Server])?;
        let next_batch = pipeline::next_batch(&db).await?;
        let (submit, submissions) = mpsc::channel(4096);
        let metrics = Arc::new(Metrics::new());
        let state = Arc::new(State {
            limits: limits.clone(),
            db,
            view: ChainView::new(contracts),
            last_known: outage::LastKnown::new(
                std::time::Duration::from_millis(limits.chain_outage_max_age_ms),
                limits.chain_outage_devices,
            ),
            chain_outage: Mutex::new(health::Outage::new("medledger collector: asking the chain")),
            cards,
            metrics: metrics.clone(),
            submit,
            waiters: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            outbox_changed: Notify::new(),
            cas: Mutex::new(credentials.chain[1..].iter().map(|c| c.to_vec()).collect()),
            in_process: match &upstream {
                Upstream::InProcess(server) => Some(server.clone()),
                Upstream::Servers(_) => None,
            },
            epoch: std::sync::atomic::AtomicU64::new(0),
            rejections: medledger_pki::throttle::LogThrottle::new("rejected readings"),
        });
        let mut tasks = Tasks::default();
        tasks.spawn(pipeline::run(state.clone(), submissions, next_batch));
        tasks.spawn(forward::run(
            state.clone(),
            forward_tls.clone(),
            upstream.clone(),
        ));
        if let Some(mqtt) = mqtt {
            // The broker's certificate is a server's of our CA.
            tasks.spawn(mqtt::run(
                state.clone(),
                forward_tls.clone(),
                mqtt,
                client_auth.clone(),
            ));
        }
        let serve_limits = https::ServeLimits {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout(),
            max_connections_per_address: limits.max_connections_per_address,
            handshakes_per_address_per_s: limits.handshakes_per_address_per_s,
            handshake_burst_per_address: limits.handshake_burst_per_address,
        };
        let refused_metrics = metrics.clone();
        let client_auth_for_monitors = client_auth.clone();
        tasks.spawn(https::serve(
            listener,
            medledger_pki::Acceptor::new(tls, limits.handshake_timeout()),
            client_auth,
            http::router(state.clone()),
            serve_limits,
            https::refusals(
                refused_metrics,
                "medledger_collector_connections_refused_total",
                "medledger collector",
            ),
        ));
        let readiness = Arc::new(readiness(&state, &upstream, forward_tls.clone()));
        let metrics_addr = match metrics_listen {
            Some(at) => {
                let (listener, bound) = bind(at).await?;
                health::serve(
                    &mut tasks,
                    listener,
                    &credentials,
                    client_auth_for_monitors,
                    metrics.clone(),
                    readiness.clone(),
                )?;
                Some(bound)
            }
            None => None,
        };
        // Says at once, in the log, what does not answer: a server that
        // cannot be reached, or whose certificate is not `server_name`'s.
        tasks.spawn(async move {
            readiness.check().await;
        });
        Ok(Collector {
            addr,
            metrics_addr,
            metrics,
            _tasks: tasks,
        })
    }

    /// Where devices connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Where the collector's `/readyz` looks: the chain, the outbox database
/// and the server (its `/healthz`, over mutual TLS as batches go), unless
/// that runs in this process.
fn readiness(state: &State, upstream: &Upstream, tls: Arc<rustls::ClientConfig>) -> Readiness {
    let (contracts, db) = (state.view.contracts().clone(), state.db.clone());
    let readiness = Readiness::new("collector")
        .needs("chain", move || {
            let contracts = contracts.clone();
            async move { contracts.block_number().await.map(drop) }
        })
        .needs("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        });
    let Upstream::Servers(servers) = upstream.clone() else {
        return readiness;
    };
    // Ready while one of the servers answers.
    readiness.needs("server", move || {
        let (servers, tls) = (servers.clone(), tls.clone());
        async move {
            let mut failures = Vec::new();
            for server in &servers {
                match healthy(tls.clone(), server).await {
                    Ok(()) => return Ok(()),
                    Err(e) => failures.push(e),
                }
            }
            Err(failures.join("; "))
        }
    })
}

/// Whether `server` answers 200 to `GET /healthz`.
async fn healthy(tls: Arc<rustls::ClientConfig>, server: &ServerTarget) -> Result<(), String> {
    let mut connection = Connection::open(tls, &server.addr, &server.name)
        .await
        .map_err(|e| format!("{}: {e}", server.addr))?;
    let reply = connection
        .request("GET", "/healthz", &[], Vec::new())
        .await
        .map_err(|e| format!("{}: {e}", server.addr))?;
    match reply.status {
        200 => Ok(()),
        status => Err(format!("{} answered {status} to GET /healthz", server.addr)),
    }
}
