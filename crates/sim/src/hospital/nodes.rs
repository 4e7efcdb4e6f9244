//! Starting the hospital's nodes: the chain and contracts, its server
//! (again, from a backup, or another on the same database), collectors
//! and the MQTT broker.

use super::chain::{provider, record_certificate, signer, text};
use super::people::card_signer;
use super::{GROUP, Hospital, Options, Ward};
use alloy::primitives::keccak256;
use alloy::providers::DynProvider;
use alloy::signers::local::PrivateKeySigner;
use anyhow::Result;
use medledger_chain::{Node, NodeConfig, RegistryPermissions, Sealing};
use medledger_collector::{
    Cards, Collector, ForwardError, InProcessServer, MqttSettings, ServerTarget, Upstream,
};
use medledger_contracts::{Contracts, code_key, send};
use medledger_mqtt::mosquitto::{self, BrokerSpec, Mosquitto};
use medledger_patient_ledger::NoteSigner;
use medledger_pki::{Ca, ClientAuth, Credentials, Issued, LeafRequest, Location, Role};
use medledger_server::Server;
use medledger_storage::{Db, Kek, LocalDir, Part};
use std::path::Path;
use std::sync::Arc;

/// Verifies peers of `roles` against `root` and `crls`.
pub fn auth(root: &[u8], crls: &[Vec<u8>], roles: &[Role]) -> Result<Arc<ClientAuth>> {
    Ok(ClientAuth::new(root, crls.to_vec(), roles)?)
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

/// A server's secrets: its key-encryption key and ledger signing key.
#[derive(Clone)]
pub(super) struct ServerKeys {
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
        client_auth: auth(root, crls, &medledger_server::CLIENT_ROLES)?,
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

/// What a new collector is started against.
struct Place<'a> {
    ca: &'a Ca,
    node: &'a Node,
    admin: &'a Contracts<DynProvider>,
    crls: &'a [Vec<u8>],
    server: &'a Server,
    options: &'a Options,
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
        let issued = self.server_node(name).await?;
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

    /// A server's certificate, issued and registered in the Registry as
    /// a server node named `name`.
    async fn server_node(&self, name: &str) -> Result<Issued> {
        let issued = self.ca.issue(&LeafRequest::new(Role::Server))?;
        send(
            self.admin
                .registry()
                .registerNode(signer(&issued)?.address(), 2, text(name)?),
        )
        .await?;
        Ok(issued)
    }

    /// Another server, registered as a node, listening on `listen`, with
    /// its own database and blobs under `DIR/name`.
    pub async fn extra_server(&self, name: &str, listen: &str) -> Result<Server> {
        let issued = self.server_node(name).await?;
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
