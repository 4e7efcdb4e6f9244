//! A Mosquitto broker for medledger's devices: its files, written from
//! the CA, and (for tests and the demo) the broker run as a child process.
//!
//! ```text
//!  DIR/mosquitto.conf  listener with client certificates from our CA,
//!                      our CRL, the certificate's name as the username
//!  DIR/acl             devices: write medledger/v1/readings/{their name},
//!                      read medledger/v1/receipts/{their name}[/...];
//!                      each collector: read every readings topic, write
//!                      every receipts topic
//!  DIR/ca.pem          the root and the issuing CAs
//!  DIR/crl.pem         the CRLs (written again by `write_crl` after a
//!                      revocation; Mosquitto reads it again on SIGHUP)
//!  DIR/broker.crt/.key the broker's certificate (role server)
//!  DIR/data/           Mosquitto's persistence (sessions, queued messages)
//! ```

use medledger_pki::ca::layout;
use medledger_pki::{Ca, Identity, LeafRequest, Role, files};
use medledger_protocol::mqtt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the broker's files could not be written, or it did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The CA or a file failed.
    #[error(transparent)]
    Pki(#[from] medledger_pki::Error),
    /// A `--collector` certificate is not a collector's.
    #[error("{path} is a {role} certificate, not a collector's")]
    NotACollector {
        /// The certificate.
        path: PathBuf,
        /// Its role.
        role: Role,
    },
    /// The certificate could not be read.
    #[error("{path}: {source}")]
    Certificate {
        /// The certificate.
        path: PathBuf,
        /// Why.
        #[source]
        source: medledger_pki::IdentityError,
    },
    /// Mosquitto could not be started or did not listen.
    #[error("mosquitto: {0}")]
    Start(String),
}

/// What to write.
#[derive(Debug, Clone)]
pub struct BrokerSpec {
    /// The name devices and collectors reach the broker by (on its
    /// certificate with `localhost` and 127.0.0.1).
    pub name: String,
    /// The address it listens on.
    pub listen: String,
    /// The port (MQTT over TLS: 8883).
    pub port: u16,
    /// The user Mosquitto runs as when started as root.
    pub run_as: String,
    /// The collectors' certificates' names (their usernames).
    pub collectors: Vec<String>,
}

/// The name (username at the broker) of each collector certificate.
pub fn collector_names(paths: &[PathBuf]) -> Result<Vec<String>, BrokerError> {
    paths
        .iter()
        .map(|path| {
            let der = files::read_first(path, "CERTIFICATE")?;
            let id = Identity::from_peer_certificate(&der).map_err(|source| {
                BrokerError::Certificate {
                    path: path.clone(),
                    source,
                }
            })?;
            if id.role != Role::Collector {
                return Err(BrokerError::NotACollector {
                    path: path.clone(),
                    role: id.role,
                });
            }
            Ok(id.subject)
        })
        .collect()
}

/// Writes the broker's files into `dir` (made 0700; an existing broker
/// key is kept), with absolute paths in `mosquitto.conf`.
pub fn write(ca: &Ca, dir: &Path, spec: &BrokerSpec) -> Result<PathBuf, BrokerError> {
    files::private_dir(dir)?;
    let dir = std::path::absolute(dir).map_err(|error| medledger_pki::Error::Io {
        path: dir.to_owned(),
        error,
    })?;
    files::private_dir(&dir.join("data"))?;
    let prefix = dir.join("broker");
    if !files::with_suffix(&prefix, ".key").exists() {
        let mut request = LeafRequest::new(Role::Server);
        request.common_name = Some(spec.name.clone());
        request.subject_alt_names = vec![spec.name.clone()];
        let mut issued = ca.issue(&request)?;
        // The broker signs no transactions.
        issued.account = None;
        issued.write(&prefix)?;
    }
    let bundle: String = std::iter::once(ca.root_cert_der()?)
        .chain(ca.issuing_certs_der())
        .map(|der| files::to_pem("CERTIFICATE", &der))
        .collect();
    files::write_public(&dir.join("ca.pem"), bundle.as_bytes())?;
    write_crl(ca, &dir)?;
    files::write_public(&dir.join("acl"), acl(&spec.collectors).as_bytes())?;
    let conf = dir.join("mosquitto.conf");
    files::write_public(&conf, config(&dir, spec).as_bytes())?;
    Ok(conf)
}

/// Copies the CA's current CRL to the broker's directory.
pub fn write_crl(ca: &Ca, dir: &Path) -> Result<(), BrokerError> {
    let path = ca.dir().join(layout::CRL);
    let crl = std::fs::read(&path).map_err(|error| medledger_pki::Error::Io { path, error })?;
    files::write_public(&dir.join("crl.pem"), &crl)?;
    Ok(())
}

/// The ACL: a device's name (its EPC, 24 hex digits) is its username.
fn acl(collectors: &[String]) -> String {
    let readings = mqtt::READINGS_PREFIX;
    let receipts = mqtt::RECEIPTS_PREFIX;
    let mut acl = format!(
        "# medledger: written by `medledger ca broker`.\n\
         # Devices (the username is the certificate's name, the EPC): each\n\
         # publishes its own readings and reads its own receipts.\n\
         pattern write {readings}%u\n\
         pattern read {receipts}%u\n\
         pattern read {receipts}%u/#\n"
    );
    for collector in collectors {
        acl.push_str(&format!(
            "\n# A collector: reads every device's readings (shared subscription),\n\
             # answers on every receipts topic.\n\
             user {collector}\n\
             topic read {readings}+\n\
             topic write {receipts}#\n"
        ));
    }
    acl
}

fn config(dir: &Path, spec: &BrokerSpec) -> String {
    let at = |f: &str| dir.join(f).display().to_string();
    format!(
        "# medledger: written by `medledger ca broker`.\n\
         user {user}\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         # Collectors take up to 1000 readings at once; a session keeps\n\
         # what its client has not acknowledged.\n\
         max_inflight_messages 1000\n\
         max_queued_messages 100000\n\
         persistence true\n\
         persistence_location {data}/\n\
         \n\
         listener {port} {listen}\n\
         cafile {ca}\n\
         certfile {crt}\n\
         keyfile {key}\n\
         crlfile {crl}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         tls_version tlsv1.2\n",
        user = spec.run_as,
        port = spec.port,
        listen = spec.listen,
        acl = at("acl"),
        data = at("data"),
        ca = at("ca.pem"),
        crt = at("broker.crt"),
        key = at("broker.key"),
        crl = at("crl.pem"),
    )
}

/// Mosquitto run as a child process (tests, the demo); stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub addr: String,
    /// Its port.
    pub port: u16,
}

impl Mosquitto {
    /// The Mosquitto program: `MEDLEDGER_MOSQUITTO`, else `mosquitto` on
    /// the PATH or in /usr/sbin (Debian's package), if there is one.
    pub fn program() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("MEDLEDGER_MOSQUITTO") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("mosquitto"))
            .find(|p| p.is_file())
    }

    /// Starts `program` with `conf` and waits until it listens on
    /// 127.0.0.1:`port`; its log goes to `log`.
    pub fn start(
        program: &Path,
        conf: &Path,
        port: u16,
        log: &Path,
    ) -> Result<Mosquitto, BrokerError> {
        let out = std::fs::File::create(log).map_err(|e| BrokerError::Start(e.to_string()))?;
        let err = out
            .try_clone()
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        let child = Command::new(program)
            .arg("-c")
            .arg(conf)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| BrokerError::Start(format!("{}: {e}", program.display())))?;
        let mut broker = Mosquitto {
            child,
            addr: format!("127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&broker.addr).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                return Err(BrokerError::Start(format!("exited ({status}): {said}")));
            }
            if Instant::now() > deadline {
                return Err(BrokerError::Start(format!(
                    "not listening on {} after 10 s",
                    broker.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// Asks it to read its CRL (and certificates) again: SIGHUP.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        if status.success() {
            Ok(())
        } else {
            Err(BrokerError::Start(format!("kill -HUP: {status}")))
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
