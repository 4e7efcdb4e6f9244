//! The server's configuration file (TOML).
//!
//! ```toml
//! listen = "0.0.0.0:9443"
//! # portal_listen = "0.0.0.0:443"                # the web portal (HTTPS, certificate optional)
//! data = "/var/lib/medledger/server"      # SQLite, blobs and keys live here
//! # database = "postgres://medledger@db/server"    # instead of SQLite
//! # blobs = "file:///srv/medledger/blobs"         # instead of DATA/blobs
//! credentials = "/etc/medledger/server"          # PREFIX.crt, PREFIX.key, PREFIX.eth.key
//! ca_root = "/etc/medledger/ca/root.crt"
//! crl = "/etc/medledger/ca/crl.pem"
//! kek_file = "/etc/medledger/kek.hex"            # or kek_env = "MEDLEDGER_KEK"
//! # previous_kek_files = ["/etc/medledger/kek.old.hex"]  # while a rotation re-wraps
//! # previous_kek_envs = ["MEDLEDGER_KEK_OLD"]
//! ledger_key = "/var/lib/medledger/server/ledger.key"   # created if absent
//! chain_rpc = "http://127.0.0.1:8545"
//! registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
//! anchor_interval_ms = 500
//! checkpoint_interval_ms = 10000
//! # Alert webhooks are HTTPS, checked against the system's CA roots or:
//! # webhook_ca = "/etc/medledger/webhook-ca.pem"     # PEM, one or more CERTIFICATE blocks
//! # and never reach an internal address (loopback, private, link-local,
//! # this host...) unless allowed: ADDR, ADDR:PORT ([IPv6]:PORT) or NET/PREFIX
//! # webhook_allow = ["10.1.2.7:8443", "10.1.3.0/24"]
//! # Several servers on one PostgreSQL database (crate::leases):
//! # advertise = "server-1.example:9443"   # where the other servers reach this one
//! # server_name = "server-1.example"      # the name they check on its certificate
//! # lease_ms = 10000                      # a dead server's patients move after this
//! # ledger_key_name = "medledger-server-0x…"  # the first server's: they share the ledger key
//! ```
//!
//! Relative paths are relative to the configuration file.

use crate::WebhookAllow;
use medledger_pki::files;
pub use medledger_pki::files::ConfigError;
use medledger_storage::{Kek, KeyError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where collectors connect.
    pub listen: String,
    /// Where the web portal is served (HTTPS; a client certificate
    /// optional, people may sign in with their chain key instead).
    #[serde(default)]
    pub portal_listen: Option<String>,
    /// Where monitoring reads `/metrics`, `/livez` and `/readyz` (plain
    /// HTTP on loopback, HTTPS elsewhere).
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The data directory.
    pub data: PathBuf,
    /// A database URL instead of `DATA/server.db`.
    #[serde(default)]
    pub database: Option<String>,
    /// A blob store URL (`file://`, `memory://`) instead of `DATA/blobs`.
    #[serde(default)]
    pub blobs: Option<String>,
    /// `PREFIX.crt`, `PREFIX.key` and `PREFIX.eth.key` of the server.
    pub credentials: PathBuf,
    /// The root CA certificate.
    pub ca_root: PathBuf,
    /// The issuing CA's CRL.
    pub crl: PathBuf,
    /// A file holding the key-encryption key (64 hex digits).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// An environment variable holding it instead.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// Files of previous KEKs: they unwrap data keys not yet re-wrapped
    /// under the current one (a rotation, docs/operations.md).
    #[serde(default)]
    pub previous_kek_files: Vec<PathBuf>,
    /// Environment variables holding previous KEKs.
    #[serde(default)]
    pub previous_kek_envs: Vec<String>,
    /// The ledger signing key (PKCS#8); created if absent.
    pub ledger_key: PathBuf,
    /// The ledger key's name in signed notes; by default
    /// `medledger-server-ACCOUNT`. Servers sharing a database share the
    /// ledger key and its name: the first server's.
    #[serde(default)]
    pub ledger_key_name: Option<String>,
    /// The chain's JSON-RPC URL.
    pub chain_rpc: String,
    /// The Registry's address.
    pub registry: String,
    /// How often batch roots are anchored.
    #[serde(default = "default_anchor_interval")]
    pub anchor_interval_ms: u64,
    /// How often changed ledgers get an anchored checkpoint.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// Internal addresses alert webhooks may reach all the same (a relay
    /// in the hospital's network): `ADDR`, `ADDR:PORT` or `NET/PREFIX`.
    /// Never the server's own listening ports.
    #[serde(default)]
    pub webhook_allow: Vec<WebhookAllow>,
    /// A PEM file of the CA certificates webhook endpoints must chain to,
    /// instead of the system's roots.
    #[serde(default)]
    pub webhook_ca: Option<PathBuf>,
    /// Where the other servers on the same database reach this one
    /// (`HOST:PORT` of `listen`); by default `listen` when it names an
    /// address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The name on this server's certificate the others check; by
    /// default the host of `advertise`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// How long a server's leases outlive its last renewal: its patients
    /// move to another server this long after it died.
    #[serde(default = "default_lease")]
    pub lease_ms: u64,
}

fn default_lease() -> u64 {
    10_000
}

fn default_anchor_interval() -> u64 {
    500
}

fn default_checkpoint_interval() -> u64 {
    10_000
}

impl ConfigFile {
    /// Reads and parses `path`; relative paths in it become relative to
    /// its directory.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let mut config: ConfigFile = files::read_toml(path)?;
        files::relative_to(
            path,
            [
                Some(&mut config.data),
                Some(&mut config.credentials),
                Some(&mut config.ca_root),
                Some(&mut config.crl),
                Some(&mut config.ledger_key),
                config.kek_file.as_mut(),
                config.webhook_ca.as_mut(),
            ]
            .into_iter()
            .flatten()
            .chain(config.previous_kek_files.iter_mut()),
        );
        if config.kek_file.is_none() && config.kek_env.is_none() {
            return Err(ConfigError::new(path, "set kek_file or kek_env"));
        }
        Ok(config)
    }

    /// The current KEK and the previous ones, read from their files and
    /// variables.
    pub fn keks(&self) -> Result<(Kek, Vec<Kek>), KeyError> {
        let from_file = |file: &PathBuf| {
            files::require_private(file).map_err(|e| KeyError::Kek(e.to_string()))?;
            Kek::from_file(file)
        };
        let current = match (&self.kek_file, &self.kek_env) {
            (Some(file), _) => from_file(file)?,
            (None, Some(var)) => Kek::from_env(var)?,
            (None, None) => return Err(KeyError::Kek("set kek_file or kek_env".to_owned())),
        };
        let mut previous = Vec::new();
        for file in &self.previous_kek_files {
            previous.push(from_file(file)?);
        }
        for var in &self.previous_kek_envs {
            previous.push(Kek::from_env(var)?);
        }
        Ok((current, previous))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
listen = "127.0.0.1:9443"
data = "data"
credentials = "server"
ca_root = "root.crt"
crl = "crl.pem"
kek_env = "MEDLEDGER_KEK"
ledger_key = "ledger.key"
chain_rpc = "http://127.0.0.1:8545"
registry = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
"#;

    #[test]
    fn the_webhook_keys_parse_and_a_bad_allow_entry_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");

        // Neither key: nothing allowed beyond public addresses, system roots.
        std::fs::write(&path, BASE).unwrap();
        let config = ConfigFile::load(&path).unwrap();
        assert!(config.webhook_allow.is_empty());
        assert_eq!(config.webhook_ca, None);

        std::fs::write(
            &path,
            format!(
                "{BASE}webhook_allow = [\"10.1.2.7:8443\", \"10.1.3.0/24\"]\n\
                 webhook_ca = \"relay-ca.pem\"\n"
            ),
        )
        .unwrap();
        let config = ConfigFile::load(&path).unwrap();
        let allowed: Vec<String> = config.webhook_allow.iter().map(|a| a.to_string()).collect();
        assert_eq!(allowed, ["10.1.2.7:8443", "10.1.3.0/24"]);
        assert_eq!(config.webhook_ca, Some(dir.path().join("relay-ca.pem")));

        std::fs::write(
            &path,
            format!("{BASE}webhook_allow = [\"relay.local:8443\"]\n"),
        )
        .unwrap();
        let refused = ConfigFile::load(&path).unwrap_err().to_string();
        assert!(
            refused.contains("relay.local:8443") && refused.contains("names are not accepted"),
            "{refused}"
        );
    }
}
