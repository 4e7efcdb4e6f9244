//! The in-process hospital: everything a hospital runs, in one process,
//! on real sockets, in a temporary directory.
//!
//! - `nodes`: starting it ([`Hospital::start`]): CA, chain,
//!   contracts, server, collector, broker; more collectors and servers;
//! - `people`: patients admitted with their cards, devices registered and
//!   assigned, staff and admins;
//! - `connect`: TLS connections to its nodes as a device, a patient, staff
//!   or a collector;
//! - `chain`: signers, providers and what an admin records on chain.
//!
//! ```text
//!  Hospital::start: CA -> embedded chain + contracts -> server, collector
//!                   (real sockets), one admitted patient with a card
//!  Hospital::device(n): a registered device assigned to the patient
//!  Hospital::connect(&device) --> crate::post_readings --> collector --> server
//! ```

mod chain;
mod connect;
mod nodes;
mod people;

pub use chain::{allow_kinds, provider, record_certificate, signer};
pub use nodes::{auth, in_process};

use alloy::primitives::B256;
use alloy::providers::DynProvider;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::Node;
use medledger_collector::{Cards, Collector, Limits};
use medledger_contracts::Contracts;
use medledger_mqtt::mosquitto::Mosquitto;
use medledger_pki::{Ca, ClientAuth, Credentials, Issued};
use medledger_server::Server;
use medledger_storage::{Db, ObjectStoreBlobs};
use nodes::ServerKeys;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The device group every simulated device belongs to.
pub const GROUP: &str = "icu-hr-monitor";

/// How to build the hospital.
#[derive(Debug, Clone)]
pub struct Options {
    /// The least time between two blocks.
    pub block_interval: Duration,
    /// The collector's limits.
    pub limits: Limits,
    /// How often the server anchors batch roots.
    pub anchor_interval: Duration,
    /// How often it anchors changed ledgers' checkpoints.
    pub checkpoint_interval: Duration,
    /// The server's database (migrated here); SQLite in the directory if
    /// `None`.
    pub server_db: Option<Db>,
    /// The collector's database, likewise.
    pub collector_db: Option<Db>,
    /// The server's blob store (an S3 bucket, say); a directory under the
    /// server's if `None`.
    pub server_blobs: Option<ObjectStoreBlobs>,
    /// Internal addresses the server's alert webhooks may reach (none by
    /// default; a test allows its own local receiver).
    pub webhook_allow: Vec<medledger_server::WebhookAllow>,
    /// The CA certificates (DER) webhook endpoints must chain to; `None`:
    /// the system's roots.
    pub webhook_ca: Option<Vec<Vec<u8>>>,
    /// Collectors forward to the server over mutual TLS, which verifies
    /// every reading again, as across machines; by default they hand
    /// their batches to the server's ingest in memory (one process, one
    /// verification).
    pub forward_over_tls: bool,
    /// The server shares `server_db` with others
    /// ([`Hospital::server_on_the_same_database`]), each patient ledger
    /// leased to one of them for this long after its last renewal;
    /// `None`: the server is alone on its database.
    pub lease_term: Option<Duration>,
    /// The Mosquitto program: with one, the hospital runs a broker (as
    /// `medledger ca broker` sets it up) and its collector takes readings
    /// from it too.
    pub mosquitto: Option<PathBuf>,
    /// A PKCS#11 token (a `pkcs11:` URI naming it, its module and PIN) on
    /// which the patients' cards keep their keys while the hospital runs.
    pub card_token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block_interval: Duration::from_millis(1),
            limits: Limits {
                handshake_timeout_ms: 1_000,
                header_timeout_ms: 1_000,
                ..Limits::default()
            },
            anchor_interval: Duration::from_millis(50),
            checkpoint_interval: Duration::from_millis(200),
            server_db: None,
            collector_db: None,
            server_blobs: None,
            webhook_allow: Vec::new(),
            webhook_ca: None,
            forward_over_tls: false,
            lease_term: None,
            mosquitto: None,
            card_token: None,
        }
    }
}

/// A hospital in one process: CA, chain, contracts, a server and a
/// collector on real sockets, and one admitted patient whose card is at
/// the collector. Everything lives in a temporary directory.
pub struct Hospital {
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA.
    pub ca: Ca,
    /// Its current CRLs (DER).
    pub crls: Vec<Vec<u8>>,
    /// The chain.
    pub node: Node,
    /// The contracts, as the admin.
    pub admin: Contracts<DynProvider>,
    /// The admin's chain key.
    pub admin_signer: PrivateKeySigner,
    /// The server.
    pub server: Server,
    /// The collector.
    pub collector: Collector,
    /// The collector's device verifier (hand it a new CRL to revoke).
    pub collector_auth: Arc<ClientAuth>,
    /// The collector's certificate.
    pub collector_issued: Issued,
    /// The cards at the collector (insert one to admit a patient there).
    pub cards: Cards,
    /// The admitted patient.
    pub patient_ref: B256,
    /// The patient's card certificate and key.
    pub card: Issued,
    /// The MQTT broker, if the options gave Mosquitto.
    pub broker: Option<Mosquitto>,
    /// The server's certificate and secrets, for a server restored from
    /// a backup of its data.
    server_issued: Issued,
    server_keys: ServerKeys,
    options: Options,
}

impl std::fmt::Debug for Hospital {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hospital")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// A member of staff (or an admin): certificate, account, and the
/// contracts as they see them.
pub struct Staff {
    /// Their certificate and keys.
    pub issued: Issued,
    /// Their chain account.
    pub address: alloy::primitives::Address,
    /// The contracts, signing as them.
    pub contracts: Contracts<DynProvider>,
}

impl std::fmt::Debug for Staff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staff")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Staff {
    /// Their TLS credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::from_issued(&self.issued)
    }
}

/// A collector with its certificate, device verifier and cards.
pub struct Ward {
    /// The collector.
    pub collector: Collector,
    /// Its device verifier (hand it a new CRL to revoke).
    pub auth: Arc<ClientAuth>,
    /// Its certificate.
    pub issued: Issued,
    /// The patients' cards at it.
    pub cards: Cards,
}

/// An admitted patient.
pub struct Patient {
    /// Their patientRef.
    pub patient_ref: B256,
    /// Their card: certificate, key and chain account.
    pub card: Issued,
}
