//! Simulation: a hospital in one process, and devices that talk to it
//! over the wire.
//!
//! ```text
//!  Hospital::start: CA -> embedded chain + contracts -> server, collector
//!                   (real sockets), one admitted patient with a card
//!  Hospital::device(n): a registered device assigned to the patient
//!  Device::heart_rate: a signed reading, as the device would send it
//! ```
//!
//! Tests, `medledger bench` ([`load`]) and (later) `medledger demo` build
//! on it.

pub mod demo;
pub mod load;
pub mod mqtt;
pub mod signals;

use crate::mqtt::MqttDevice;
use alloy::network::TxSigner;
use alloy::primitives::{B256, Signature, keccak256};
use alloy::providers::DynProvider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result};
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, RegistryPermissions, Sealing};
use medledger_collector::{
    CardSigner, Cards, Collector, ForwardError, InProcessServer, Limits, MqttSettings,
    ServerTarget, SoftwareCard, TokenCard, Upstream,
};
use medledger_contracts::{
    Contracts, StaffRole, code_key, epc_bytes, send, short_text, signing_provider,
};
use medledger_mqtt::mosquitto::{self, BrokerSpec, Mosquitto};
use medledger_patient_ledger::NoteSigner;
use medledger_pki::https::Connection;
use medledger_pki::token::TokenKey;
use medledger_pki::{
    Ca, ClientAuth, Credentials, Epc, Issued, KeyAlg, LeafRequest, Location, Role,
};
use medledger_protocol::catalogue::data_type;
pub use medledger_protocol::now_ms;
use medledger_protocol::{DeviceId, Observation, Reading, SigningKey};
use medledger_server::Server;
use medledger_storage::{Db, Kek, LocalDir, ObjectStoreBlobs, Part};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The device group every simulated device belongs to.
pub const GROUP: &str = "icu-hr-monitor";

fn text(s: &str) -> Result<B256> {
    Ok(short_text(s)?)
}

/// The chain signer of a certificate holder.
pub fn signer(issued: &Issued) -> Result<PrivateKeySigner> {
    let account = issued
        .account
        .as_ref()
        .context("the certificate holds no chain account")?;
    Ok(PrivateKeySigner::from_signing_key(
        account.signing_key().clone(),
    ))
}

/// Records in the Registry the certificate of a person (admin, staff,
/// patient): their identity is that certificate and its account together.
pub async fn record_certificate<P: alloy::providers::Provider + Clone>(
    contracts: &Contracts<P>,
    issued: &Issued,
) -> Result<()> {
    let id = issued.identity()?;
    let account = id
        .address()
        .context("the certificate holds no chain account")?;
    send(
        contracts
            .registry()
            .setCertificate(account, B256::from(id.fingerprint)),
    )
    .await?;
    Ok(())
}

/// The card of the patient certificate `card`: its key in memory, or put
/// on the PKCS#11 token `token` (a `pkcs11:` URI naming the token) for the
/// hospital's life.
fn card_signer(card: &Issued, token: Option<&str>) -> Result<Arc<dyn CardSigner>> {
    let Some(token) = token else {
        return Ok(Arc::new(
            SoftwareCard::new(&Credentials::from_issued(card)).map_err(anyhow::Error::msg)?,
        ));
    };
    let object = format!(
        "card-{}",
        hex::encode(&medledger_protocol::kid_of(&card.cert_der)[..8])
    );
    let key = TokenKey::import_p256(token, &object, &card.key_pkcs8)?;
    Ok(Arc::new(
        TokenCard::new(card.cert_der.clone(), key).map_err(anyhow::Error::msg)?,
    ))
}

/// A provider on `node`, in process, signing as `signer`.
pub fn provider<S>(node: &Node, signer: &S) -> DynProvider
where
    S: TxSigner<Signature> + Clone + Send + Sync + 'static,
{
    signing_provider(
        signer.clone(),
        RpcClient::new(InProcess::new(Rpc::new(node.clone())), true),
    )
}

/// Verifies peers of `roles` against `root` and `crls`.
pub fn auth(root: &[u8], crls: &[Vec<u8>], roles: &[Role]) -> Result<Arc<ClientAuth>> {
    Ok(ClientAuth::new(root, crls.to_vec(), roles)?)
}

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

/// Where a collector in the server's own process forwards: the server's
/// ingest, in memory.
pub fn in_process(server: &Server) -> Upstream {
    Upstream::InProcess(Arc::new(ServerInProcess(server.ingest())))
}

/// A server's ingest as a collector's in-process upstream.
struct ServerInProcess(medledger_server::Ingest);

impl InProcessServer for ServerInProcess {
    fn commit(
        &self,
        batch: medledger_protocol::ForwardBatch,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<medledger_protocol::CommitReply, ForwardError>>
                + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            self.0
                .commit_from_this_process(batch)
                .await
                .map_err(|e| ForwardError(e.to_string()))
        })
    }
}

/// `db`, or else the SQLite file `path`; migrated for `part`.
async fn database(db: Option<Db>, path: &Path, part: Part) -> Result<Db> {
    let db = match db {
        Some(db) => db,
        None => Db::open_sqlite(path).await?,
    };
    db.migrate_for(part).await?;
    Ok(db)
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

/// A device: its certificate, key and sequence counter.
pub struct Device {
    /// Its certificate and key.
    pub issued: Issued,
    /// Its EPC.
    pub epc: Epc,
    /// Its reading key.
    pub key: SigningKey,
    /// The last sequence number used.
    pub seq: u64,
    /// Whether its readings carry its certificate chain in the COSE
    /// `x5chain` header, as readings sent over MQTT must.
    pub x5chain: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("epc", &self.epc.to_tag_uri())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A signed heart-rate reading with the next sequence number.
    pub fn heart_rate(&mut self, bpm: f64) -> Vec<u8> {
        self.heart_rate_at(bpm, now_ms())
    }

    /// A signed heart-rate reading taken at `ts_ms`.
    pub fn heart_rate_at(&mut self, bpm: f64, ts_ms: u64) -> Vec<u8> {
        self.reading_at(
            data_type("8867-4")
                .map(|t| vec![Observation::scalar(t, bpm)])
                .unwrap_or_default(),
            ts_ms,
        )
    }

    /// A new device of `group` with EPC serial `serial`, its certificate
    /// issued by `ca` (rule `default`), not registered.
    pub fn issue(ca: &Ca, serial: u64, group: &str, key_alg: KeyAlg) -> Result<Device> {
        let epc = Epc::new(3, "0614141", "812345", serial)?;
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(epc);
        request.group = Some(group.into());
        request.rule = Some("default".into());
        request.key_alg = key_alg;
        let issued = ca.issue(&request)?;
        let key = SigningKey::from_pkcs8(
            key_alg.reading_algorithm(),
            &issued.key_pkcs8,
            &issued.cert_der,
        )?;
        Ok(Device {
            issued,
            epc,
            key,
            seq: 0,
            x5chain: false,
        })
    }

    /// Registers the device in `group` (as an admin), and assigns it to
    /// `patient` if given.
    pub async fn register<P: alloy::providers::Provider + Clone>(
        &self,
        admin: &Contracts<P>,
        group: &str,
        patient: Option<B256>,
    ) -> Result<()> {
        let registry = admin.registry();
        send(registry.registerDevice(
            epc_bytes(&self.epc),
            text(group)?,
            text("default")?,
            B256::from(medledger_protocol::kid_of(&self.issued.cert_der)),
        ))
        .await?;
        if let Some(patient) = patient {
            send(registry.assignDevice(epc_bytes(&self.epc), patient)).await?;
        }
        Ok(())
    }

    /// A device from its certificate and key (`PREFIX.crt`, `PREFIX.key`;
    /// P-256 or Ed25519, as the certificate says), its sequence counter set
    /// to `seq`.
    pub fn load(prefix: &Path, seq: u64) -> Result<Device> {
        let issued = Issued::load(prefix)?;
        let identity = issued.identity()?;
        let epc = *identity.epc().context("the certificate holds no EPC")?;
        let key = SigningKey::from_pkcs8(
            identity.key.algorithm(),
            &issued.key_pkcs8,
            &issued.cert_der,
        )?;
        Ok(Device {
            issued,
            epc,
            key,
            seq,
            x5chain: false,
        })
    }

    /// A signed reading of `obs`, now, with the next sequence number.
    pub fn reading(&mut self, obs: Vec<Observation>) -> Vec<u8> {
        self.reading_at(obs, now_ms())
    }

    /// A signed reading of `obs` taken at `ts_ms`, with the next sequence
    /// number.
    pub fn reading_at(&mut self, obs: Vec<Observation>, ts_ms: u64) -> Vec<u8> {
        self.seq += 1;
        let reading = Reading {
            dev: DeviceId(*self.epc.as_bytes()),
            seq: self.seq,
            ts_ms,
            obs,
            model: None,
        };
        if !self.x5chain {
            return self.key.sign(&reading);
        }
        let chain: Vec<Vec<u8>> = std::iter::once(&self.issued.cert_der)
            .chain(&self.issued.chain)
            .cloned()
            .collect();
        self.key.sign_with_chain(&reading, &chain)
    }

    /// Its TLS credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::from_issued(&self.issued)
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

/// A server's secrets: its key-encryption key and ledger signing key.
#[derive(Clone)]
struct ServerKeys {
    kek_hex: String,
    ledger_pkcs8: Vec<u8>,
    /// The ledger key's name; `None`: named after the server's account, as
    /// `medledger server` names it. Servers sharing a database share it.
    ledger_name: Option<String>,
}

impl ServerKeys {
    fn generate() -> ServerKeys {
        ServerKeys {
            kek_hex: Kek::generate_hex(),
            ledger_pkcs8: NoteSigner::generate_pkcs8(),
            ledger_name: None,
        }
    }
}

/// A server with its own database and blobs under `dir`.
#[allow(clippy::too_many_arguments)]
async fn start_server(
    dir: &Path,
    listen: &str,
    root: &[u8],
    crls: &[Vec<u8>],
    issued: &Issued,
    contracts: Contracts<DynProvider>,
    options: &Options,
    db: Option<Db>,
    keys: &ServerKeys,
) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let db = database(db, &dir.join("server.db"), Part::Server).await?;
    Ok(Server::start(medledger_server::Settings {
        listen: listen.parse()?,
        // The web portal on any free port (`medledger demo --keep` shows it).
        portal_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        // Monitoring on any free loopback port.
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        credentials: Credentials::from_issued(issued),
        client_auth: auth(
            root,
            crls,
            &[
                Role::Collector,
                Role::Server,
                Role::Admin,
                Role::Doctor,
                Role::Nurse,
                Role::Patient,
            ],
        )?,
        device_auth: auth(root, crls, &[Role::Device])?,
        card_auth: auth(root, crls, &[Role::Patient])?,
        db,
        blobs: match &options.server_blobs {
            Some(blobs) => Arc::new(blobs.clone()),
            None => Arc::new(LocalDir::open(dir.join("blobs")).await?),
        },
        kek: Kek::from_hex(&keys.kek_hex)?,
        previous_keks: Vec::new(),
        // Named as `medledger server` names it, so that one can take over
        // this server's database.
        ledger_key: NoteSigner::from_pkcs8(
            &keys
                .ledger_name
                .clone()
                .unwrap_or(format!("medledger-server-{}", signer(issued)?.address())),
            &keys.ledger_pkcs8,
        )
        .map_err(|e| anyhow::anyhow!("the ledger key: {e}"))?,
        contracts,
        anchor_interval: options.anchor_interval,
        checkpoint_interval: options.checkpoint_interval,
        webhook_allow: options.webhook_allow.clone(),
        webhook_ca: options.webhook_ca.clone(),
        peering: match options.lease_term {
            Some(term) => Some(medledger_server::Peering {
                // The address `listen` binds.
                at: medledger_server::leases::Peer {
                    addr: String::new(),
                    server_name: "localhost".into(),
                },
                tls: medledger_pki::client_config(
                    Some(&Credentials::from_issued(issued)),
                    root,
                    &[Role::Server],
                )?,
                term,
            }),
            None => None,
        },
    })
    .await?)
}

/// Lets each kind's group send its data types (the `allowed-types`
/// rule), signing as an admin.
pub async fn allow_kinds<P: alloy::providers::Provider + Clone>(
    admin: &Contracts<P>,
    kinds: &[signals::Kind],
) -> Result<()> {
    for kind in kinds {
        send(admin.allowed_types().setAllowed(
            text(kind.group)?,
            kind.codes.iter().map(|c| code_key(c)).collect(),
            true,
        ))
        .await?;
    }
    Ok(())
}

/// What a new collector is started against.
struct Place<'a> {
    ca: &'a Ca,
    node: &'a Node,
    admin: &'a Contracts<DynProvider>,
    crls: &'a [Vec<u8>],
    server: &'a Server,
    options: &'a Options,
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

/// Writes a broker's files into `dir` for the collector `collector`, as
/// `medledger ca broker` does, and starts Mosquitto on a free port.
fn start_broker(
    program: &Path,
    ca: &Ca,
    collector: &Issued,
    dir: &Path,
) -> Result<(Mosquitto, MqttSettings)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let spec = BrokerSpec {
        name: "localhost".into(),
        listen: "127.0.0.1".into(),
        port,
        // Mosquitto changes user only when started as root: then stay
        // root, who can read the files.
        run_as: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        collectors: vec![collector.identity()?.subject],
    };
    let conf = mosquitto::write(ca, dir, &spec)?;
    let broker = Mosquitto::start(program, &conf, port, &dir.join("mosquitto.log"))?;
    let settings = MqttSettings {
        broker: broker.addr.clone(),
        server_name: "localhost".into(),
        subscription: medledger_protocol::mqtt::SHARED_SUBSCRIPTION.into(),
        client_id: "medledger-collector-sim".into(),
    };
    Ok((broker, settings))
}

/// Starts a collector with `issued` (already registered on chain).
/// A collector forwarding to `upstream`, or as the options say.
async fn launch_collector(
    place: &Place<'_>,
    issued: Issued,
    cards: Cards,
    db: Option<Db>,
    db_path: &Path,
    upstream: Option<Upstream>,
    mqtt: Option<MqttSettings>,
) -> Result<Ward> {
    let root = place.ca.root_cert_der()?;
    let db = database(db, db_path, Part::Collector).await?;
    let auth = auth(&root, place.crls, &[Role::Device])?;
    let collector = Collector::start(medledger_collector::Settings {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        credentials: Credentials::from_issued(&issued),
        root_der: root,
        client_auth: auth.clone(),
        db,
        contracts: place
            .admin
            .with_provider(provider(place.node, &signer(&issued)?)),
        cards: cards.clone(),
        upstream: match upstream {
            Some(upstream) => upstream,
            None if place.options.forward_over_tls => Upstream::Servers(vec![ServerTarget {
                addr: place.server.addr().to_string(),
                name: "localhost".into(),
            }]),
            None => in_process(place.server),
        },
        limits: place.options.limits.clone(),
        mqtt,
    })
    .await?;
    Ok(Ward {
        collector,
        auth,
        issued,
        cards,
    })
}

impl Hospital {
    /// Builds and starts everything.
    pub async fn start(options: Options) -> Result<Hospital> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::init(&dir.path().join("ca"), "Simulated Hospital")?;
        let admin = PrivateKeySigner::random();
        let node = Node::start(&NodeConfig {
            data_dir: dir.path().join("chain"),
            chain_id: 31337,
            allow: vec![admin.address()],
            sealing: Sealing::OnDemand {
                min_interval: options.block_interval,
            },
        })?;
        let contracts = Contracts::deploy(provider(&node, &admin)).await?;
        node.set_permissions(Arc::new(RegistryPermissions::new(
            contracts.addresses().registry,
        )));
        let registry = contracts.registry();

        let server_issued = ca.issue(&LeafRequest::new(Role::Server))?;
        let mut request = LeafRequest::new(Role::Collector);
        request.location = Some("cardiology/204/B".parse::<Location>()?);
        let collector_issued = ca.issue(&request)?;
        let card = ca.issue(&LeafRequest::new(Role::Patient))?;
        for (issued, kind, place) in [
            (&server_issued, 2u8, "server"),
            (&collector_issued, 1u8, "cardiology/204"),
        ] {
            send(registry.registerNode(signer(issued)?.address(), kind, text(place)?)).await?;
        }
        let patient_ref = keccak256("salt:p1");
        send(registry.admit(
            patient_ref,
            signer(&card)?.address(),
            text("cardiology")?,
            text("floor-2")?,
            text("room-204")?,
            text("bed-B")?,
            vec![],
        ))
        .await?;
        record_certificate(&contracts, &card).await?;
        send(contracts.allowed_types().setAllowed(
            text(GROUP)?,
            vec![code_key("8867-4"), code_key("59408-5")],
            true,
        ))
        .await?;

        let root = ca.root_cert_der()?;
        let crls = ca.write_crl()?;
        let server_keys = ServerKeys::generate();
        let server = start_server(
            &dir.path().join("server"),
            "127.0.0.1:0",
            &root,
            &crls,
            &server_issued,
            contracts.with_provider(provider(&node, &signer(&server_issued)?)),
            &options,
            options.server_db.clone(),
            &server_keys,
        )
        .await?;
        let cards = Cards::new();
        cards.insert(card_signer(&card, options.card_token.as_deref())?);
        let (broker, mqtt) = match &options.mosquitto {
            Some(program) => {
                let (broker, settings) =
                    start_broker(program, &ca, &collector_issued, &dir.path().join("broker"))?;
                (Some(broker), Some(settings))
            }
            None => (None, None),
        };
        let ward = launch_collector(
            &Place {
                ca: &ca,
                node: &node,
                admin: &contracts,
                crls: &crls,
                server: &server,
                options: &options,
            },
            collector_issued,
            cards,
            options.collector_db.clone(),
            &dir.path().join("collector.db"),
            None,
            mqtt,
        )
        .await?;
        Ok(Hospital {
            dir,
            ca,
            crls,
            node,
            admin: contracts,
            admin_signer: admin,
            server,
            collector: ward.collector,
            collector_auth: ward.auth,
            collector_issued: ward.issued,
            cards: ward.cards,
            patient_ref,
            card,
            broker,
            server_issued,
            server_keys,
            options,
        })
    }

    /// The hospital's server again, with its certificate and keys, on the
    /// database and blobs under `dir` (a backup of `DIR/server`) and on
    /// the chain `node` (a backup of this one), on a new port.
    pub async fn restored_server(&self, dir: &Path, node: &Node) -> Result<Server> {
        start_server(
            dir,
            "127.0.0.1:0",
            &self.ca.root_cert_der()?,
            &self.crls,
            &self.server_issued,
            self.admin
                .with_provider(provider(node, &signer(&self.server_issued)?)),
            &self.options,
            None,
            &self.server_keys,
        )
        .await
    }

    /// Writes the server's certificate and secrets as `medledger server`
    /// reads them: `DIR/server.crt`, `.key`, `.eth.key`, `DIR/kek.hex` and
    /// `DIR/ledger.key`, each private.
    pub fn write_server_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        self.server_issued.write(&dir.join("server"))?;
        medledger_pki::files::write_secret(
            &dir.join("kek.hex"),
            self.server_keys.kek_hex.as_bytes(),
        )?;
        medledger_pki::files::write_secret(
            &dir.join("ledger.key"),
            medledger_pki::files::to_pem("PRIVATE KEY", &self.server_keys.ledger_pkcs8).as_bytes(),
        )?;
        Ok(())
    }

    fn place(&self) -> Place<'_> {
        Place {
            ca: &self.ca,
            node: &self.node,
            admin: &self.admin,
            crls: &self.crls,
            server: &self.server,
            options: &self.options,
        }
    }

    /// Another collector, at `location` (`department/room/bed`),
    /// registered on chain, with no cards yet.
    pub async fn add_collector(&self, location: &str) -> Result<Ward> {
        self.add_collector_forwarding_to(location, None).await
    }

    /// Another collector, as [`Hospital::add_collector`], forwarding to
    /// `upstream` (`None`: as the options say).
    pub async fn add_collector_forwarding_to(
        &self,
        location: &str,
        upstream: Option<Upstream>,
    ) -> Result<Ward> {
        let mut request = LeafRequest::new(Role::Collector);
        request.location = Some(location.parse::<Location>()?);
        let issued = self.ca.issue(&request)?;
        send(
            self.admin.registry().registerNode(
                signer(&issued)?.address(),
                1,
                text(
                    location
                        .split('/')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                        .as_str(),
                )?,
            ),
        )
        .await?;
        let name = format!("collector-{}.db", hex::encode(&keccak256(location)[..4]));
        launch_collector(
            &self.place(),
            issued,
            Cards::new(),
            None,
            &self.dir.path().join(name),
            upstream,
            None,
        )
        .await
    }

    /// Admits patient `id` (their patientRef is keccak256 of a salt and
    /// `id`) to `department`, room and bed, with a card of their own,
    /// which goes into `cards` (the collector at their bedside).
    pub async fn admit(
        &self,
        id: &str,
        department: &str,
        room: &str,
        bed: &str,
        cards: &Cards,
    ) -> Result<Patient> {
        let card = self.ca.issue(&LeafRequest::new(Role::Patient))?;
        let patient_ref = keccak256(format!("salt:{id}"));
        send(self.admin.registry().admit(
            patient_ref,
            signer(&card)?.address(),
            text(department)?,
            text("floor-1")?,
            text(room)?,
            text(bed)?,
            vec![],
        ))
        .await?;
        record_certificate(&self.admin, &card).await?;
        cards.insert(card_signer(&card, self.options.card_token.as_deref())?);
        Ok(Patient { patient_ref, card })
    }

    /// A device certificate with EPC serial `serial`, not registered.
    pub fn issue_device(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        self.issue_device_in(serial, GROUP, key_alg)
    }

    /// A device certificate of `group` with EPC serial `serial`.
    pub fn issue_device_in(&self, serial: u64, group: &str, key_alg: KeyAlg) -> Result<Device> {
        Device::issue(&self.ca, serial, group, key_alg)
    }

    /// A device registered but assigned to no one.
    pub async fn registered_device(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        let device = self.issue_device(serial, key_alg)?;
        device.register(&self.admin, GROUP, None).await?;
        Ok(device)
    }

    /// A P-256 device of `kind` (its group allowed its data types first,
    /// see [`Hospital::allow_kinds`]) registered and assigned to `patient`.
    pub async fn device_of(
        &self,
        serial: u64,
        kind: &signals::Kind,
        patient: B256,
    ) -> Result<Device> {
        let device = self.issue_device_in(serial, kind.group, KeyAlg::P256)?;
        device
            .register(&self.admin, kind.group, Some(patient))
            .await?;
        Ok(device)
    }

    /// Lets each kind's group send its data types (the `allowed-types`
    /// rule).
    pub async fn allow_kinds(&self, kinds: &[signals::Kind]) -> Result<()> {
        allow_kinds(&self.admin, kinds).await
    }

    /// A P-256 device registered and assigned to the patient.
    pub async fn device(&self, serial: u64) -> Result<Device> {
        self.device_with(serial, KeyAlg::P256).await
    }

    /// A device of `key_alg`, registered and assigned to the patient.
    pub async fn device_with(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        let device = self.issue_device(serial, key_alg)?;
        device
            .register(&self.admin, GROUP, Some(self.patient_ref))
            .await?;
        Ok(device)
    }

    /// A staff member (`Role::Doctor` or `Role::Nurse`) of cardiology with a
    /// certificate and a chain account, registered in the Registry and,
    /// with `carer`, assigned to the patient.
    pub async fn staff(&self, role: Role, carer: bool) -> Result<Staff> {
        let patients: &[B256] = if carer { &[self.patient_ref] } else { &[] };
        self.staff_for(role, "cardiology", patients).await
    }

    /// A staff member (`Role::Doctor` or `Role::Nurse`) of `department`,
    /// registered in the Registry and assigned to care for `patients`.
    pub async fn staff_for(
        &self,
        role: Role,
        department: &str,
        patients: &[B256],
    ) -> Result<Staff> {
        self.staff_named(role, department, None, patients).await
    }

    /// [`Hospital::staff_for`], with `name` as their certificate's subject
    /// (else the CA's default, their role and account).
    pub async fn staff_named(
        &self,
        role: Role,
        department: &str,
        name: Option<&str>,
        patients: &[B256],
    ) -> Result<Staff> {
        let issued = self.ca.issue(&LeafRequest {
            common_name: name.map(str::to_owned),
            ..LeafRequest::new(role)
        })?;
        let signer = signer(&issued)?;
        let code = match role {
            Role::Doctor => StaffRole::Doctor,
            _ => StaffRole::Nurse,
        };
        let registry = self.admin.registry();
        send(registry.registerStaff(signer.address(), code.code(), text(department)?)).await?;
        record_certificate(&self.admin, &issued).await?;
        for patient in patients {
            send(registry.assignCarer(*patient, signer.address())).await?;
        }
        Ok(Staff {
            contracts: self.admin.with_provider(provider(&self.node, &signer)),
            address: signer.address(),
            issued,
        })
    }

    /// An admin with a certificate of their own, added to the Registry's
    /// admins by the first one.
    pub async fn admin_person(&self) -> Result<Staff> {
        let issued = self.ca.issue(&LeafRequest::new(Role::Admin))?;
        let signer = signer(&issued)?;
        send(self.admin.registry().addAdmin(signer.address())).await?;
        record_certificate(&self.admin, &issued).await?;
        Ok(Staff {
            contracts: self.admin.with_provider(provider(&self.node, &signer)),
            address: signer.address(),
            issued,
        })
    }

    /// The contracts, signing as the patient (with the card's account).
    pub fn patient_contracts(&self) -> Result<Contracts<DynProvider>> {
        Ok(self
            .admin
            .with_provider(provider(&self.node, &signer(&self.card)?)))
    }

    /// A client configuration presenting `own` to a server of `role`.
    pub fn client_config(
        &self,
        own: &Credentials,
        server_role: Role,
    ) -> Result<Arc<rustls::ClientConfig>> {
        Ok(medledger_pki::client_config(
            Some(own),
            &self.ca.root_cert_der()?,
            &[server_role],
        )?)
    }

    /// A connection presenting `own` to the `server_role` node at `addr`.
    pub async fn open(
        &self,
        own: &Credentials,
        server_role: Role,
        addr: &str,
    ) -> Result<Connection> {
        Ok(Connection::open(self.client_config(own, server_role)?, addr, "localhost").await?)
    }

    /// A connection to the collector as `device`.
    pub async fn connect(&self, device: &Device) -> Result<Connection> {
        self.open(
            &device.credentials(),
            Role::Collector,
            &self.collector.addr().to_string(),
        )
        .await
    }

    /// `device` connected to the broker (the options gave Mosquitto), its
    /// readings carrying their certificate chain from now on.
    pub async fn connect_mqtt(&self, device: &mut Device) -> Result<MqttDevice> {
        let broker = self
            .broker
            .as_ref()
            .context("this hospital runs no MQTT broker: give Options::mosquitto")?;
        device.x5chain = true;
        MqttDevice::connect(device, &self.ca.root_cert_der()?, &broker.addr, "localhost").await
    }

    /// A connection to the server holding the collector's key (as the
    /// collector, or a sinkhole that stole it).
    pub async fn connect_server(&self) -> Result<Connection> {
        self.open(
            &Credentials::from_issued(&self.collector_issued),
            Role::Server,
            &self.server.addr().to_string(),
        )
        .await
    }

    /// A connection to the server as the patient (their card's
    /// certificate).
    pub async fn connect_patient(&self) -> Result<Connection> {
        self.open(
            &Credentials::from_issued(&self.card),
            Role::Server,
            &self.server.addr().to_string(),
        )
        .await
    }

    /// Another server of the hospital on the server's own database
    /// (`server_db`, with `lease_term` set), registered as a node, with
    /// the same KEK and ledger key: it writes the ledgers whose lease it
    /// holds and sends the others' readings on to their holder.
    pub async fn server_on_the_same_database(&self, name: &str) -> Result<Server> {
        let db = self
            .options
            .server_db
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the hospital's server has no shared database"))?;
        let issued = self.ca.issue(&LeafRequest::new(Role::Server))?;
        send(
            self.admin
                .registry()
                .registerNode(signer(&issued)?.address(), 2, text(name)?),
        )
        .await?;
        let keys = ServerKeys {
            ledger_name: Some(format!(
                "medledger-server-{}",
                signer(&self.server_issued)?.address()
            )),
            ..self.server_keys.clone()
        };
        start_server(
            &self.dir.path().join(name),
            "127.0.0.1:0",
            &self.ca.root_cert_der()?,
            &self.crls,
            &issued,
            self.admin
                .with_provider(provider(&self.node, &signer(&issued)?)),
            &self.options,
            Some(db),
            &keys,
        )
        .await
    }

    /// Another server, registered as a node, listening on `listen`, with
    /// its own database and blobs under `DIR/name`.
    pub async fn extra_server(&self, name: &str, listen: &str) -> Result<Server> {
        let issued = self.ca.issue(&LeafRequest::new(Role::Server))?;
        send(
            self.admin
                .registry()
                .registerNode(signer(&issued)?.address(), 2, text(name)?),
        )
        .await?;
        start_server(
            &self.dir.path().join(name),
            listen,
            &self.ca.root_cert_der()?,
            &self.crls,
            &issued,
            self.admin
                .with_provider(provider(&self.node, &signer(&issued)?)),
            &self.options,
            None,
            &ServerKeys::generate(),
        )
        .await
    }
}
