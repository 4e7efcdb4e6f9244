//! The application server: commits what collectors forward, keeps every
//! patient's ledger and sealed readings, anchors them on chain, and serves
//! people their data, alerts and proofs (HTTPS over mutual TLS, FHIR R4,
//! and a web portal).
//!
//! - [`alerts`]: patient alerts with preferences, inbox and server-sent
//!   events, and the `ConsentChanged` and `Annotation` ledger entries of
//!   chain events, committed with their alerts and the alert cursor;
//! - `anchor`: anchoring batch roots (kind 2), changed ledger checkpoints
//!   (kind 3) and ledger key rotations (kind 6), one `anchorMany` a round;
//! - [`annotations`]: annotation texts checked against their on-chain
//!   `Annotated` event, sealed with the patient's key, served as
//!   Observation notes;
//! - `answer`: what every endpoint answers with: refusals as problem+json,
//!   JSON and FHIR answers, query parameters;
//! - `caller`: who asks: a `Caller` from the client certificate or a portal
//!   session, with the certificate behind it, re-checked against the CRLs;
//! - [`config`]: the TOML configuration;
//! - `directory`: people's display names, off chain, from their
//!   certificates or an admin, shown in alerts, FHIR and the portal;
//! - [`erase`]: the right to be forgotten: data keys shredded first, the
//!   ledger reduced to a signed tombstone, the rest deleted or unlinked,
//!   the erasure recorded on chain (kind 4); idempotent;
//! - [`failure`]: a failure of the server's own ([`Failure`]): what it was
//!   doing and why, logged, never sent to a client;
//! - [`fhir_api`]: the same reads as a FHIR R4 REST read API at `/fhir/r4/`;
//! - `heard`: when each device and node was last heard of, noted by
//!   ingest and `POST /v1/batches`, shown by the portal;
//! - `held`: readings a collector holds as dead letters: an alert to each
//!   patient concerned and a line for the operators;
//! - `http`: the endpoints: `POST /v1/batches` for collectors; proofs,
//!   records, ledgers, audit trails, alerts and erasures for people;
//! - [`indexer`]: every event of our contracts copied into SQL, in chain
//!   order, from a persisted cursor;
//! - `ingest`: the ingest commit, which reads as its stages; for a
//!   collector in this process, [`Ingest`] only binds, sequences and
//!   stores;
//! - [`justifications`]: break-glass justifications checked against the
//!   request's hash, sealed with the patient's key;
//! - [`leases`]: several servers on one database: a lease per patient
//!   ledger held in SQL, renewed while the server lives, fenced in the
//!   appending transaction; jobs only one server runs;
//! - `offchain_text`: the off-chain text of an on-chain record (an
//!   annotation, a justification): checked against the record's author
//!   and hash, sealed with the patient's key;
//! - `portal`: the web portal on its own HTTPS port: the embedded page,
//!   sign-in with a chain key, signed off-chain requests, relayed
//!   transactions, the JSON the pages read;
//! - [`records`]: staff reads as FHIR on usable AccessLog requests, an
//!   `AccessEvent` per attempt committed with its alert, and those entries
//!   as FHIR AuditEvents;
//! - [`recover`]: chain recovery, the server's part: its indexed events up
//!   to a block, and the move to a new chain in one transaction;
//! - `relay`: readings of patients another server holds, sent on to it;
//! - `stored`: the read side of stored readings: one by its hash, opened
//!   from its sealed blob, and how many sit in anchored batches;
//! - [`rewrap`]: the background rewrap of data keys under a previous KEK;
//! - `subjects`: whom a request is about: the patient's own, the one an
//!   admin names, the admin;
//! - `turns`: a collector's batches in flight committed in the order it
//!   sent them;
//! - `webhook`: HMAC-signed HTTPS alert webhooks that never reach an
//!   internal address or the server itself unless an admin allows it
//!   ([`WebhookAllow`]), checked when set and before each delivery.
//!
//! ```text
//!  collector --mTLS POST /v1/batches--> ingest: re-verify every reading
//!      (device certificate + CRL, COSE signature); then, in the order the
//!      collector sent its batches (turns): Registry binding, card
//!      signature per patient, rules, sequence --> seal one blob per
//!      patient --> blob store; DataRecorded entries + reading index +
//!      marks + batch root in one SQL transaction --> CommitReply
//!  anchor task: batch roots (kind 2), changed patient-ledger checkpoints
//!      (kind 3), ledger key rotations (kind 6) --> Anchor.anchorMany
//!  indexer: eth_getLogs after the cursor --> chain_events + cursor
//!      --> alerts task: ledger entries + alerts --> inbox, SSE, webhook
//!  staff GET /v1/records or /fhir/r4/Observation: AccessLog.usable -->
//!      FHIR Bundle + ledger proofs + notes; AccessEvent + alert
//!  GET /v1/readings/{hash}/proof: ledger inclusion + checkpoint, batch
//!      inclusion + anchoring transaction
//! ```
//!
//! No feature flags.

pub mod alerts;
mod anchor;
pub mod annotations;
mod answer;
mod caller;
pub mod config;
mod directory;
pub mod erase;
pub mod failure;
pub mod fhir_api;
mod heard;
mod held;
mod http;
pub mod indexer;
mod ingest;
pub mod justifications;
pub mod leases;
mod offchain_text;
mod portal;
pub mod records;
pub mod recover;
mod relay;
pub mod rewrap;
mod stored;
mod subjects;
mod turns;
mod webhook;

use alloy::providers::DynProvider;
pub use config::{ConfigError, ConfigFile};
use failure::Doing;
pub use failure::Failure;
pub use ingest::Unavailable;
use medledger_contracts::{ChainView, Contracts};
use medledger_patient_ledger::{Ledger, LedgerError, NoteSigner};
use medledger_pki::health::{self, Readiness};
use medledger_pki::https::{self, Tasks};
use medledger_pki::metrics::Metrics;
use medledger_pki::{ClientAuth, Credentials, Role};
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{BlobError, BlobStore, Cid, Db, Kek, Vault};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
pub use webhook::{WebhookAllow, WebhookAllowError};

/// The roles whose certificates the API port takes: collectors, other
/// servers and people; not devices, which talk to collectors.
pub const CLIENT_ROLES: [Role; 6] = [
    Role::Collector,
    Role::Server,
    Role::Admin,
    Role::Doctor,
    Role::Nurse,
    Role::Patient,
];

/// How often the indexer looks for new blocks once it has caught up.
const INDEX_INTERVAL: Duration = Duration::from_millis(100);

/// Everything a server runs with, resolved.
pub struct Settings {
    /// Where collectors (and later staff) connect.
    pub listen: SocketAddr,
    /// Where the web portal is served, if anywhere.
    pub portal_listen: Option<SocketAddr>,
    /// Where monitoring reads `/metrics`, `/livez` and `/readyz`, if
    /// anywhere (plain HTTP on loopback, HTTPS elsewhere).
    pub metrics_listen: Option<SocketAddr>,
    /// The server's certificate chain and key.
    pub credentials: Credentials,
    /// Verifies peers on the listening port: [`CLIENT_ROLES`].
    pub client_auth: Arc<ClientAuth>,
    /// Verifies forwarded device certificates (role `device`).
    pub device_auth: Arc<ClientAuth>,
    /// Verifies patient card certificates (role `patient`).
    pub card_auth: Arc<ClientAuth>,
    /// The database, migrated.
    pub db: Db,
    /// Where sealed readings go.
    pub blobs: Arc<dyn BlobStore>,
    /// Wraps the patients' data keys.
    pub kek: Kek,
    /// Unwrap data keys not yet re-wrapped under `kek` (a rotation); the
    /// server re-wraps them in the background.
    pub previous_keks: Vec<Kek>,
    /// Signs ledger entries and checkpoints.
    pub ledger_key: NoteSigner,
    /// The contracts, through a provider that signs as the server's
    /// registered node account (for anchoring).
    pub contracts: Contracts<DynProvider>,
    /// How often batch roots are anchored.
    pub anchor_interval: Duration,
    /// How often changed patient ledgers get an anchored checkpoint.
    pub checkpoint_interval: Duration,
    /// Addresses alert webhooks may reach although they are internal
    /// (loopback, private, link-local, this host's own...): `webhook_allow`.
    /// Empty unless an admin allows a relay; the server's own listening
    /// ports stay refused whatever it says.
    pub webhook_allow: Vec<WebhookAllow>,
    /// The CA certificates (DER) webhook endpoints must chain to
    /// (`webhook_ca`); `None`: the system's roots.
    pub webhook_ca: Option<Vec<Vec<u8>>>,
    /// How this server shares its database with other servers; `None`:
    /// it is alone on it (SQLite).
    pub peering: Option<Peering>,
}

/// A server among others on one database (PostgreSQL).
pub struct Peering {
    /// Where the others reach this server (an empty `addr`: the address
    /// `listen` bound).
    pub at: leases::Peer,
    /// Presents this server's certificate to the server it forwards
    /// readings to, and checks that one's (role `server`).
    pub tls: Arc<rustls::ClientConfig>,
    /// How long a lease outlives its holder's last renewal.
    pub term: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Why the server cannot start.
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
    /// The key-encryption keys cannot open every data key.
    #[error(transparent)]
    Keys(#[from] medledger_storage::KeyError),
    /// The ledger key is not the current key of the stored key history.
    #[error("the ledger key: {0}")]
    LedgerKey(#[source] LedgerError),
    /// The database cannot be read or written.
    #[error("the database: {0}")]
    Db(#[source] sqlx::Error),
    /// A webhook CA certificate (`webhook_ca`) is not usable.
    #[error("webhook_ca: {0}")]
    WebhookCa(#[source] rustls::Error),
}

/// State shared by the endpoints and the anchor task.
pub(crate) struct State {
    pub(crate) db: Db,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) vault: Vault,
    pub(crate) ledger: Ledger,
    pub(crate) view: ChainView<DynProvider>,
    /// Verifies people's (and collectors') certificates: the connection's
    /// on the API port, the one a portal key session was opened with.
    pub(crate) client_auth: Arc<ClientAuth>,
    pub(crate) device_auth: Arc<ClientAuth>,
    pub(crate) card_auth: Arc<ClientAuth>,
    pub(crate) metrics: Arc<Metrics>,
    /// One batch commits at a time (sequence marks, ledger order).
    pub(crate) ingest_lock: tokio::sync::Mutex<()>,
    /// The order in which collectors' batches in flight commit.
    pub(crate) turns: turns::Turns,
    /// Wakes the anchor task after a commit.
    pub(crate) committed: tokio::sync::Notify,
    /// One anchoring round at a time (the task's or `Server::anchor_all`).
    pub(crate) anchoring: tokio::sync::Mutex<()>,
    /// The patients' alerts.
    pub(crate) alerts: alerts::Alerts,
    /// The web portal's sessions and what it remembers.
    pub(crate) portal: portal::Portal,
    /// When each device and node was last heard of.
    pub(crate) heard: heard::Heard,
    /// Where alert webhooks may go, and how they are reached.
    pub(crate) webhooks: webhook::Webhooks,
    /// Which patient ledgers this server writes, which jobs it runs.
    pub(crate) leases: Arc<leases::Leases>,
    /// Reaches the other servers (readings of patients they hold).
    pub(crate) peer_tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) relay: relay::Relay,
    /// People's display names, off chain.
    pub(crate) directory: directory::Directory,
}

/// The server's ingest, handed to a collector running in the same process
/// (`medledger up`, the demo): batches come in memory, without a TLS hop
/// and without a second verification, since no trust boundary lies
/// between. A collector on another machine forwards over mutual TLS
/// instead, and everything is verified again there.
#[derive(Clone)]
pub struct Ingest(Arc<State>);

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").finish_non_exhaustive()
    }
}

impl Ingest {
    /// Commits a batch the collector of this process verified, card-signed
    /// and made durable in its outbox, as `POST /v1/batches` would without
    /// verifying certificates, signatures, cards and rules again; one
    /// result per reading, in order. Idempotent by reading hash.
    pub async fn commit_from_this_process(
        &self,
        batch: medledger_protocol::ForwardBatch,
    ) -> Result<medledger_protocol::CommitReply, Unavailable> {
        ingest::commit(
            &self.0,
            batch,
            ingest::Source::SameProcess,
            std::future::ready(Ok(())),
        )
        .await
    }
}

/// A running server. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    portal_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    state: Arc<State>,
    /// Every verifier, for [`Server::update_crls`].
    auths: [Arc<ClientAuth>; 3],
    _tasks: Tasks,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the endpoint and starts the anchor task.
    pub async fn start(settings: Settings) -> Result<Server, StartError> {
        let Settings {
            listen,
            portal_listen,
            metrics_listen,
            credentials,
            client_auth,
            device_auth,
            card_auth,
            db,
            blobs,
            kek,
            previous_keks,
            ledger_key,
            contracts,
            anchor_interval,
            checkpoint_interval,
            webhook_allow,
            webhook_ca,
            peering,
        } = settings;
        let vault = Vault::with_previous(db.clone(), kek, previous_keks);
        let keks = vault.check_keks().await?;
        let bind = |addr: SocketAddr| async move {
            https::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })
        };
        let (listener, addr) = bind(listen).await?;
        let portal = match portal_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        let metrics_listener = match metrics_listen {
            Some(at) => Some(bind(at).await?),
            None => None,
        };
        // Webhooks never reach these, whatever `webhook_allow` says.
        let listeners = [
            Some(addr),
            portal.as_ref().map(|(_, bound)| *bound),
            metrics_listener.as_ref().map(|(_, bound)| *bound),
        ]
        .into_iter()
        .flatten()
        .collect();
        let webhooks = webhook::Webhooks::new(webhook_allow, webhook_ca.as_deref(), listeners)
            .map_err(StartError::WebhookCa)?;
        let auths = [client_auth.clone(), device_auth.clone(), card_auth.clone()];
        let tls = medledger_pki::server_config(&credentials, client_auth.clone())?;
        let metrics = Arc::new(Metrics::new());
        let account = credentials
            .identity()
            .ok()
            .and_then(|id| id.address())
            .map(|a| a.to_string())
            .unwrap_or_default();
        let leases = Arc::new(
            leases::Leases::register(
                db.clone(),
                &account,
                peering
                    .as_ref()
                    .map(|p| leases::Peer {
                        addr: if p.at.addr.is_empty() {
                            addr.to_string()
                        } else {
                            p.at.addr.clone()
                        },
                        server_name: p.at.server_name.clone(),
                    })
                    .as_ref(),
                peering.as_ref().map_or(leases::DEFAULT_TERM, |p| p.term),
            )
            .await
            .map_err(StartError::Db)?,
        );
        let ledger = Ledger::open(db.clone(), ledger_key)
            .await
            .map_err(StartError::LedgerKey)?
            .with_writer(leases.me());
        let portal_state = portal::Portal::open(&db).await.map_err(StartError::Db)?;
        let state = Arc::new(State {
            directory: directory::Directory::new(db.clone()),
            vault,
            alerts: alerts::Alerts::new(db.clone()),
            ledger,
            db,
            blobs,
            view: ChainView::new(contracts),
            client_auth: client_auth.clone(),
            device_auth,
            card_auth,
            metrics: metrics.clone(),
            ingest_lock: tokio::sync::Mutex::new(()),
            turns: turns::Turns::default(),
            committed: tokio::sync::Notify::new(),
            anchoring: tokio::sync::Mutex::new(()),
            portal: portal_state,
            heard: heard::Heard::default(),
            webhooks,
            leases: leases.clone(),
            peer_tls: peering.map(|p| p.tls),
            relay: relay::Relay::default(),
        });
        let mut tasks = Tasks::default();
        tasks.spawn(leases.renew());
        if state.peer_tls.is_some() {
            tasks.spawn(alerts::raised_elsewhere(state.clone()));
        }
        tasks.spawn(
            indexer::Indexer::new(state.db.clone(), state.view.contracts().clone())
                .run(INDEX_INTERVAL),
        );
        tasks.spawn(alerts::follow_chain(state.clone(), INDEX_INTERVAL));
        if keks.left() > 0 || !state.vault.previous_keks().is_empty() {
            tasks.spawn(rewrap::run(state.clone(), keks));
        }
        tasks.spawn(webhook::run(state.clone(), Duration::from_secs(1)));
        tasks.spawn(anchor::run(
            state.clone(),
            anchor_interval,
            checkpoint_interval,
        ));
        let serve = |listener, acceptor, app, refused_total: &'static str| {
            https::serve(
                listener,
                acceptor,
                client_auth.clone(),
                app,
                https::ServeLimits::default(),
                https::refusals(metrics.clone(), refused_total, "medledger server"),
            )
        };
        tasks.spawn(serve(
            listener,
            medledger_pki::Acceptor::new(tls, Duration::from_secs(5)),
            http::router(state.clone()),
            "medledger_server_connections_refused_total",
        ));
        let portal_addr = match portal {
            Some((listener, bound)) => {
                let tls = medledger_pki::server_config_optional_client(
                    &credentials,
                    client_auth.clone(),
                )?;
                tasks.spawn(serve(
                    listener,
                    medledger_pki::Acceptor::optional(tls, Duration::from_secs(10)),
                    portal::router(state.clone()),
                    "medledger_server_portal_connections_refused_total",
                ));
                Some(bound)
            }
            None => None,
        };
        let readiness = Arc::new(readiness(&state));
        let metrics_addr = match metrics_listener {
            Some((listener, bound)) => {
                health::serve(
                    &mut tasks,
                    listener,
                    &credentials,
                    client_auth.clone(),
                    metrics,
                    readiness.clone(),
                )?;
                Some(bound)
            }
            None => None,
        };
        // Says at once, in the log, what does not answer.
        tasks.spawn(async move {
            readiness.check().await;
        });
        Ok(Server {
            addr,
            portal_addr,
            metrics_addr,
            state,
            auths,
            _tasks: tasks,
        })
    }

    /// Replaces the CRLs (DER) of every verifier: peers, forwarded device
    /// certificates and patient cards.
    pub fn update_crls(&self, crls: &[Vec<u8>]) -> Result<(), medledger_pki::Error> {
        for auth in &self.auths {
            auth.update_crls(crls.to_vec())?;
        }
        Ok(())
    }

    /// The server is stopping (SIGTERM): its leases end now, so that the
    /// other servers on its database take its patients at once rather
    /// than after a lease term.
    pub async fn stop(&self) {
        if let Err(e) = self.state.leases.release().await {
            tracing::warn!("medledger server: giving up its leases: {e}");
        }
    }

    /// Where collectors connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the web portal is served, if configured.
    pub fn portal_addr(&self) -> Option<SocketAddr> {
        self.portal_addr
    }

    /// Where `/metrics` is served, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's ingest, for a collector in this same process.
    pub fn ingest(&self) -> Ingest {
        Ingest(self.state.clone())
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The patient ledgers.
    pub fn ledger(&self) -> &Ledger {
        &self.state.ledger
    }

    /// The indexed chain events named `name` (all with `None`), in chain
    /// order.
    pub async fn events(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<indexer::IndexedEvent>, indexer::IndexError> {
        indexer::events(&self.state.db, name).await
    }

    /// The vault of data keys.
    pub fn vault(&self) -> &Vault {
        &self.state.vault
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.state.blobs
    }

    /// How many of `hashes` are stored in a batch whose root is anchored.
    pub async fn anchored_count(&self, hashes: &[[u8; 32]]) -> Result<usize, Failure> {
        stored::anchored_count(&self.state, hashes).await
    }

    /// A stored reading by its hash: the COSE_Sign1 bytes, decrypted from
    /// its blob and checked against the hash.
    pub async fn reading(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, Failure> {
        stored::reading(&self.state, hash).await
    }

    /// Erases (forgets) a patient, as `DELETE /v1/patients/{ref}` does.
    pub async fn erase(&self, patient: &[u8; 32]) -> Result<erase::Erasure, Failure> {
        erase::erase(&self.state, patient).await
    }

    /// Anchors every batch root and every grown ledger's checkpoint not
    /// yet anchored, now, in as many transactions as it takes; returns how
    /// many roots.
    pub async fn anchor_all(&self) -> Result<usize, Failure> {
        anchor::all(&self.state).await
    }

    /// Erases again every patient here whose erasure the chain records
    /// (`Anchor` kind 4, by a server the Registry knows), and every patient
    /// in `also` (say, erasures a newer chain records), unless already
    /// erased: a restored backup never brings back a forgotten patient.
    /// Returns how many.
    pub async fn erase_recorded(&self, also: &[[u8; 32]]) -> Result<usize, Failure> {
        let contracts = self.state.view.contracts();
        let recorded = contracts
            .erasures()
            .await
            .doing("reading the erasures on chain")?;
        let mut erased: Vec<[u8; 32]> = also.to_vec();
        erased.extend(self.by_servers(recorded).await?.iter().map(|a| a.patient.0));
        erased.sort_unstable();
        erased.dedup();
        let here = self.patients().await?;
        let mut n = 0;
        for patient in erased.iter().filter(|p| here.contains(p)) {
            if !self
                .state
                .ledger
                .is_erased(patient)
                .await
                .doing("asking whether a patient is erased")?
            {
                self.erase(patient).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The anchors recorded by a node the Registry lists as a server:
    /// chains deployed before kind 4 was the servers' alone let any node
    /// record an erasure.
    async fn by_servers(
        &self,
        anchors: Vec<medledger_contracts::CheckpointAnchor>,
    ) -> Result<Vec<medledger_contracts::CheckpointAnchor>, Failure> {
        let registry = self.state.view.contracts().registry();
        let mut servers = std::collections::BTreeMap::new();
        let mut out = Vec::with_capacity(anchors.len());
        for a in anchors {
            let by_server = match servers.get(&a.by) {
                Some(known) => *known,
                None => {
                    let node = registry
                        .node(a.by)
                        .call()
                        .await
                        .map_err(|e| Failure::new(format!("reading the node {}", a.by), e))?;
                    *servers.entry(a.by).or_insert(node.kind == 2)
                }
            };
            if by_server {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Checks every patient ledger here against the checkpoints anchored
    /// for it on chain (kind 3, servers' only); returns what failed, one
    /// line each.
    pub async fn verify_ledgers(&self) -> Result<Vec<String>, Failure> {
        let ledger = &self.state.ledger;
        let key = ledger.verifier_key();
        let contracts = self.state.view.contracts();
        let mut failures = Vec::new();
        for patient in &self.patients().await? {
            let name = hex::encode(patient);
            let bundle = ledger
                .export(patient)
                .await
                .map_err(|e| Failure::new(format!("exporting the ledger of {name}"), e))?;
            let bundle = serde_json::to_string(&bundle)
                .map_err(|e| Failure::new(format!("writing the ledger of {name}"), e))?;
            let report = match medledger_patient_ledger::bundle::verify(&bundle, Some(&key)) {
                Ok(report) => report,
                Err(e) => {
                    failures.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let anchors = contracts
                .checkpoint_anchors(alloy::primitives::B256::from(*patient))
                .await
                .map_err(|e| Failure::new(format!("reading the anchors of {name}"), e))?;
            for a in &anchors {
                if let Err(why) = report.check_extends(a.size, &a.root.0) {
                    failures.push(format!("{name}: anchor {}: {why}", a.id));
                }
            }
        }
        Ok(failures)
    }

    /// Every patient with a ledger here, erased or not.
    pub async fn patients(&self) -> Result<Vec<[u8; 32]>, Failure> {
        let rows = sqlx::query(
            "SELECT DISTINCT patient FROM ledger_entries UNION SELECT DISTINCT patient FROM ledger_checkpoints",
        )
        .fetch_all(self.state.db.pool())
        .await
        .doing("listing the patients")?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<Vec<u8>, _>("patient").ok())
            .filter_map(|p| <[u8; 32]>::try_from(p).ok())
            .collect())
    }
}

/// Where the server's `/readyz` looks: the chain, the database and the
/// blob store (an absent blob is an answer).
fn readiness(state: &State) -> Readiness {
    let (contracts, db, blobs) = (
        state.view.contracts().clone(),
        state.db.clone(),
        state.blobs.clone(),
    );
    Readiness::new("server")
        .needs("chain", move || {
            let contracts = contracts.clone();
            async move { contracts.block_number().await.map(drop) }
        })
        .needs("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        })
        .needs("blob store", move || {
            let blobs = blobs.clone();
            async move {
                match blobs.get(&Cid::of(b"medledger readiness")).await {
                    Ok(_) | Err(BlobError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
}
