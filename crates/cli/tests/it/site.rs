//! A small hospital in one test process: a CA, the embedded chain with
//! the contracts, a server and a collector on real sockets, one admitted
//! patient with a card at the collector, and devices.

use alloy::primitives::{B256, keccak256};
use alloy::providers::DynProvider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::{Node, NodeConfig, Sealing};
use medledger_collector::{Cards, Collector, ServerTarget, SoftwareCard};
use medledger_contracts::{
    Contracts, RegistryPermissions, code_key, epc_bytes, send, short_text, signing_provider,
};
use medledger_patient_ledger::NoteSigner;
use medledger_pki::https::{Connection, Reply};
use medledger_pki::{Ca, ClientAuth, Credentials, Epc, Issued, LeafRequest, Location, Role};
use medledger_protocol::catalogue::data_type;
use medledger_protocol::{Algorithm, DeviceId, Observation, Reading, SigningKey};
use medledger_server::Server;
use medledger_storage::{Db, Kek, LocalDir};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const GROUP: &str = "icu-hr-monitor";

pub struct Site {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub crl: Vec<u8>,
    pub node: Node,
    pub admin: Contracts<DynProvider>,
    pub server: Server,
    pub collector: Collector,
    /// The collector's device verifier (to hand it a new CRL).
    pub collector_auth: Arc<ClientAuth>,
    pub collector_issued: Issued,
    pub patient_ref: B256,
    pub card: Issued,
}

/// A device: its certificate, key and sequence counter.
pub struct Device {
    pub issued: Issued,
    pub epc: Epc,
    pub key: SigningKey,
    pub seq: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn text(s: &str) -> B256 {
    short_text(s).unwrap()
}

fn signer(issued: &Issued) -> PrivateKeySigner {
    PrivateKeySigner::from_signing_key(issued.account.as_ref().unwrap().signing_key().clone())
}

pub fn provider(node: &Node, signer: &PrivateKeySigner) -> DynProvider {
    signing_provider(
        signer.clone(),
        RpcClient::new(InProcess::new(Rpc::new(node.clone())), true),
    )
}

impl Device {
    /// A signed heart-rate reading with the next sequence number.
    pub fn heart_rate(&mut self, bpm: f64) -> Vec<u8> {
        self.seq += 1;
        self.key.sign(&Reading {
            dev: DeviceId(*self.epc.as_bytes()),
            seq: self.seq,
            ts_ms: now_ms(),
            obs: vec![Observation::scalar(data_type("8867-4").unwrap(), bpm)],
            model: None,
        })
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::from_issued(&self.issued)
    }
}

impl Site {
    pub async fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), "Test Hospital").unwrap();
        let admin = PrivateKeySigner::random();
        let node = Node::start(&NodeConfig {
            data_dir: dir.path().join("chain"),
            chain_id: 31337,
            allow: vec![admin.address()],
            sealing: Sealing::OnDemand {
                min_interval: Duration::from_millis(1),
            },
        })
        .unwrap();
        let contracts = Contracts::deploy(provider(&node, &admin)).await.unwrap();
        node.set_permissions(Arc::new(RegistryPermissions::new(
            contracts.addresses().registry,
        )));
        let registry = contracts.registry();

        let server_issued = ca.issue(&LeafRequest::new(Role::Server)).unwrap();
        let mut request = LeafRequest::new(Role::Collector);
        request.location = Some("cardiology/204/B".parse::<Location>().unwrap());
        let collector_issued = ca.issue(&request).unwrap();
        let card = ca.issue(&LeafRequest::new(Role::Patient)).unwrap();
        for (issued, kind, place) in [
            (&server_issued, 2u8, "server"),
            (&collector_issued, 1u8, "cardiology/204"),
        ] {
            send(registry.registerNode(signer(issued).address(), kind, text(place)))
                .await
                .unwrap();
        }
        let patient_ref = keccak256("salt:p1");
        send(registry.admit(
            patient_ref,
            signer(&card).address(),
            text("cardiology"),
            text("floor-2"),
            text("room-204"),
            text("bed-B"),
            vec![],
        ))
        .await
        .unwrap();
        send(contracts.allowed_types().setAllowed(
            text(GROUP),
            vec![code_key("8867-4"), code_key("59408-5")],
            true,
        ))
        .await
        .unwrap();

        let root = ca.root_cert_der().unwrap();
        let crl = ca.write_crl().unwrap();

        let server = start_server(
            dir.path(),
            "server",
            "127.0.0.1:0",
            &root,
            &crl,
            &server_issued,
            contracts.with_provider(provider(&node, &signer(&server_issued))),
        )
        .await;
        let collector_db = Db::open_sqlite(&dir.path().join("collector.db"))
            .await
            .unwrap();
        collector_db.migrate().await.unwrap();
        let collector_auth = auth(&root, &crl, &[Role::Device]);
        let mut cards = Cards::new();
        cards.insert(Arc::new(
            SoftwareCard::new(&Credentials::from_issued(&card)).unwrap(),
        ));
        let collector = Collector::start(medledger_collector::Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            credentials: Credentials::from_issued(&collector_issued),
            root_der: root.clone(),
            client_auth: collector_auth.clone(),
            db: collector_db,
            contracts: contracts.with_provider(provider(&node, &signer(&collector_issued))),
            cards,
            server: ServerTarget {
                addr: server.addr().to_string(),
                name: "localhost".into(),
            },
            limits: medledger_collector::Limits {
                handshake_timeout_ms: 1_000,
                header_timeout_ms: 1_000,
                ..medledger_collector::Limits::default()
            },
        })
        .await
        .unwrap();
        Site {
            dir,
            ca,
            crl,
            node,
            admin: contracts,
            server,
            collector,
            collector_auth,
            collector_issued,
            patient_ref,
            card,
        }
    }

    /// A device certificate with EPC serial `serial` (not registered).
    pub fn issue_device(&self, serial: u64) -> Device {
        let epc = Epc::new(3, "0614141", "812345", serial).unwrap();
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(epc);
        request.group = Some(GROUP.into());
        request.rule = Some("default".into());
        let issued = self.ca.issue(&request).unwrap();
        let key =
            SigningKey::from_pkcs8(Algorithm::Es256, &issued.key_pkcs8, &issued.cert_der).unwrap();
        Device {
            issued,
            epc,
            key,
            seq: 0,
        }
    }

    /// A device registered and assigned to the patient.
    pub async fn device(&self, serial: u64) -> Device {
        let device = self.registered_device(serial).await;
        send(
            self.admin
                .registry()
                .assignDevice(epc_bytes(&device.epc), self.patient_ref),
        )
        .await
        .unwrap();
        device
    }

    /// A device registered but not assigned to anyone.
    pub async fn registered_device(&self, serial: u64) -> Device {
        let device = self.issue_device(serial);
        let registry = self.admin.registry();
        send(registry.registerDevice(
            epc_bytes(&device.epc),
            text(GROUP),
            text("default"),
            B256::from(medledger_protocol::kid_of(&device.issued.cert_der)),
        ))
        .await
        .unwrap();
        device
    }

    pub fn client_config(&self, own: &Credentials, server_role: Role) -> Arc<rustls::ClientConfig> {
        medledger_pki::client_config(Some(own), &self.ca.root_cert_der().unwrap(), &[server_role])
            .unwrap()
    }

    /// A connection to the collector as `device`.
    pub async fn connect(&self, device: &Device) -> Connection {
        Connection::open(
            self.client_config(&device.credentials(), Role::Collector),
            &self.collector.addr().to_string(),
            "localhost",
        )
        .await
        .unwrap()
    }

    /// A connection to the server as the collector (or a sinkhole holding
    /// its key).
    pub async fn connect_server(&self) -> Connection {
        Connection::open(
            self.client_config(
                &Credentials::from_issued(&self.collector_issued),
                Role::Server,
            ),
            &self.server.addr().to_string(),
            "localhost",
        )
        .await
        .unwrap()
    }
}

/// Posts one COSE reading (`wait`: until the server committed it).
pub async fn post_one(conn: &mut Connection, cose: Vec<u8>, wait: bool) -> Reply {
    let path = if wait {
        "/v1/readings?wait=committed"
    } else {
        "/v1/readings"
    };
    conn.request("POST", path, &[("content-type", "application/cose")], cose)
        .await
        .unwrap()
}

/// The JSON body of a reply.
pub fn body(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&reply.body)))
}

pub fn auth(root: &[u8], crl: &[u8], roles: &[Role]) -> Arc<ClientAuth> {
    ClientAuth::new(root, vec![crl.to_vec()], roles).unwrap()
}

/// A server with its own database and blobs under `dir/name`.
pub async fn start_server(
    dir: &std::path::Path,
    name: &str,
    listen: &str,
    root: &[u8],
    crl: &[u8],
    issued: &Issued,
    contracts: Contracts<DynProvider>,
) -> Server {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::open_sqlite(&dir.join("server.db")).await.unwrap();
    db.migrate().await.unwrap();
    Server::start(medledger_server::Settings {
        listen: listen.parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        credentials: Credentials::from_issued(issued),
        client_auth: auth(
            root,
            crl,
            &[Role::Collector, Role::Admin, Role::Doctor, Role::Nurse],
        ),
        device_auth: auth(root, crl, &[Role::Device]),
        card_auth: auth(root, crl, &[Role::Patient]),
        db,
        blobs: Arc::new(LocalDir::open(dir.join("blobs")).await.unwrap()),
        kek: Kek::from_hex(&Kek::generate_hex()).unwrap(),
        ledger_key: NoteSigner::from_pkcs8("medledger-test", &NoteSigner::generate_pkcs8())
            .unwrap(),
        contracts,
        anchor_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(200),
    })
    .await
    .unwrap()
}

impl Site {
    /// Another server, registered as a node, listening on `listen`.
    pub async fn extra_server(&self, name: &str, listen: &str) -> Server {
        let issued = self.ca.issue(&LeafRequest::new(Role::Server)).unwrap();
        send(
            self.admin
                .registry()
                .registerNode(signer(&issued).address(), 2, text(name)),
        )
        .await
        .unwrap();
        start_server(
            self.dir.path(),
            name,
            listen,
            &self.ca.root_cert_der().unwrap(),
            &self.crl,
            &issued,
            self.admin
                .with_provider(provider(&self.node, &signer(&issued))),
        )
        .await
    }
}
