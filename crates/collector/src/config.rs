//! The collector's configuration file (TOML).
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! metrics_listen = "127.0.0.1:9101"
//! data = "/var/lib/medledger/collector"   # the outbox database lives here
//! # database = "postgres://medledger@db/collector"   # instead of SQLite
//! credentials = "/etc/medledger/collector1"    # PREFIX.crt, PREFIX.key, PREFIX.eth.key
//! ca_root = "/etc/medledger/ca/root.crt"
//! crl = "/etc/medledger/ca/crl.pem"
//! cards = "/etc/medledger/cards"               # patient cards: NAME.crt + NAME.key
//! chain_rpc = "http://127.0.0.1:8545"
//! registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
//! server = "server.example:9443"
//! server_name = "server.example"
//! # Other servers on the same database, tried in turn when a batch fails:
//! # failover = [{ server = "server-2.example:9443", server_name = "server-2.example" }]
//!
//! # Readings from an MQTT broker too (see `medledger ca broker`):
//! # [mqtt]
//! # broker = "broker.example:8883"
//! # broker_name = "broker.example"
//!
//! [limits]
//! max_connections = 20000
//! max_connections_per_address = 2048
//! handshakes_per_address_per_s = 200
//! handshake_burst_per_address = 2048
//! handshake_timeout_ms = 5000
//! header_timeout_ms = 5000
//! max_body_bytes = 1048576
//! max_readings_per_request = 1000
//! device_rate_per_s = 50
//! device_burst = 200
//! timestamp_past_ms = 300000
//! timestamp_future_ms = 30000
//! chain_outage_max_age_ms = 900000
//! chain_outage_devices = 100000
//! ```
//!
//! Relative paths are relative to the configuration file.

use medledger_pki::files;
pub use medledger_pki::files::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where devices connect.
    pub listen: String,
    /// Where monitoring reads `/metrics`, `/livez` and `/readyz` (plain
    /// HTTP on loopback, HTTPS elsewhere).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The data directory (the SQLite outbox, unless `database` is set).
    pub data: PathBuf,
    /// A database URL (`sqlite:PATH` or `postgres://...`) for the outbox.
    #[serde(default)]
    pub database: Option<String>,
    /// The collector's certificate and key: `PREFIX.crt`, `PREFIX.key`.
    pub credentials: PathBuf,
    /// The root CA certificate.
    pub ca_root: PathBuf,
    /// The issuing CA's CRL; re-read when it changes.
    pub crl: PathBuf,
    /// A directory of patient cards (`NAME.crt` and `NAME.key`).
    pub cards: PathBuf,
    /// The chain's JSON-RPC URL.
    pub chain_rpc: String,
    /// The Registry's address.
    pub registry: String,
    /// The server's `host:port`.
    pub server: String,
    /// The name the server's certificate carries.
    pub server_name: String,
    /// Other servers sharing the server's database, tried in turn after a
    /// batch fails.
    #[serde(default)]
    pub failover: Vec<Failover>,
    /// An MQTT broker to take readings from too.
    #[serde(default)]
    pub mqtt: Option<Mqtt>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
}

/// The `[mqtt]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// The broker's `host:port`.
    pub broker: String,
    /// The name on the broker's certificate.
    pub broker_name: String,
    /// The topic filter; by default the collectors' shared subscription
    /// to every device's readings.
    #[serde(default = "shared_subscription")]
    pub subscription: String,
}

fn shared_subscription() -> String {
    medledger_protocol::mqtt::SHARED_SUBSCRIPTION.to_owned()
}

/// Another server to forward to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// Its `host:port`.
    pub server: String,
    /// The name its certificate carries.
    pub server_name: String,
}

/// What one device or connection may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections one IP address may hold open at once.
    pub max_connections_per_address: usize,
    /// New connections one IP address may open per second, sustained.
    pub handshakes_per_address_per_s: f64,
    /// New connections one IP address may open at once.
    pub handshake_burst_per_address: f64,
    /// TLS handshake deadline.
    pub handshake_timeout_ms: u64,
    /// Deadline for an HTTP/1.1 request's headers.
    pub header_timeout_ms: u64,
    /// Largest request body; larger ones get 413 before the body is read.
    pub max_body_bytes: usize,
    /// Most readings in one request.
    pub max_readings_per_request: usize,
    /// Readings per second a device may send, sustained.
    pub device_rate_per_s: f64,
    /// Readings a device may send in a burst.
    pub device_burst: f64,
    /// How old a reading's timestamp may be.
    pub timestamp_past_ms: u64,
    /// How far ahead a reading's timestamp may be (clock skew).
    pub timestamp_future_ms: u64,
    /// While the chain cannot be asked, readings of a device the chain
    /// answered for within this long are decided from its last answers.
    pub chain_outage_max_age_ms: u64,
    /// The most devices whose last answers are kept.
    pub chain_outage_devices: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_connections_per_address: 2_048,
            handshakes_per_address_per_s: 200.0,
            handshake_burst_per_address: 2_048.0,
            handshake_timeout_ms: 5_000,
            header_timeout_ms: 5_000,
            max_body_bytes: 1 << 20,
            max_readings_per_request: 1_000,
            device_rate_per_s: 50.0,
            device_burst: 200.0,
            timestamp_past_ms: 5 * 60 * 1000,
            timestamp_future_ms: 30 * 1000,
            chain_outage_max_age_ms: 15 * 60 * 1000,
            chain_outage_devices: 100_000,
        }
    }
}

impl Limits {
    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The header deadline.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// The timestamp window.
    pub fn window(&self) -> medledger_checks::Window {
        medledger_checks::Window {
            past_ms: self.timestamp_past_ms,
            future_ms: self.timestamp_future_ms,
        }
    }
}

impl ConfigFile {
    /// Reads and parses `path`; relative paths in it become relative to
    /// its directory.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let mut config: ConfigFile = files::read_toml(path)?;
        files::relative_to(
            path,
            [
                &mut config.data,
                &mut config.credentials,
                &mut config.ca_root,
                &mut config.crl,
                &mut config.cards,
            ],
        );
        Ok(config)
    }
}
