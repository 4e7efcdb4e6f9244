//! `medledger sim`: simulated devices streaming plausible vital signs of
//! their kind, each over its own mutual-TLS connection, until Ctrl-C or
//! `--seconds`. Two ways to give them:
//!
//! - `--data D`, for a system started by `medledger up --data D`: on first
//!   use it admits a simulated patient (their card goes into the
//!   collector's cards directory), and it issues, registers and assigns
//!   each device it has not made before (`D/sim/`).
//! - `--devices-dir DIR --collector HOST:PORT --ca-root root.crt`, for
//!   roles started apart: devices issued beforehand by the CA operator
//!   (`medledger ca issue --count`), registered and assigned by an admin;
//!   no CA key and no `up` layout needed.
//!
//! Devices send over HTTPS to the collector, or (`--transport mqtt
//! --broker HOST:PORT`) publish to an MQTT broker the collectors read.

use crate::roles;
use crate::rpc::Identity;
use crate::up::UpState;
use alloy::primitives::keccak256;
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_contracts::{send, short_text};
use medledger_pki::https::Connection;
use medledger_pki::{Ca, Details, Issued, KeyAlg, LeafRequest, Role};
use medledger_sim::mqtt::MqttDevice;
use medledger_sim::signals::{KINDS, Kind, Vitals};
use medledger_sim::{Device, Readings, Wait, post_readings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// The data directory of `medledger up`.
    #[arg(
        long,
        env = "MEDLEDGER_DATA",
        required_unless_present = "devices_dir",
        conflicts_with = "devices_dir"
    )]
    data: Option<PathBuf>,
    /// Devices issued beforehand: each PREFIX.crt with its PREFIX.key in
    /// this directory (`medledger ca issue --count N --out DIR`).
    #[arg(long, requires_all = ["collector", "ca_root"])]
    devices_dir: Option<PathBuf>,
    /// With `--devices-dir`: the collector devices send to, `host:port`.
    #[arg(long)]
    collector: Option<String>,
    /// With `--devices-dir`: the name on the collector's certificate
    /// (default: the host of `--collector`).
    #[arg(long)]
    collector_name: Option<String>,
    /// With `--devices-dir`: the medledger root certificate.
    #[arg(long)]
    ca_root: Option<PathBuf>,
    /// How many devices (default: 10 with `--data`, every one in
    /// `--devices-dir`).
    #[arg(long)]
    devices: Option<usize>,
    /// Readings per second, per device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Append the hash of each reading the collector accepted to this
    /// file, a line each: what was acknowledged, to check later that the
    /// server stored every one.
    #[arg(long)]
    receipts: Option<PathBuf>,
    /// How devices send: `https` to the collector, or `mqtt` to
    /// `--broker`.
    #[arg(long, value_enum, default_value = "https")]
    transport: Transport,
    /// With `--transport mqtt`: the broker, `host:port`.
    #[arg(long, required_if_eq("transport", "mqtt"))]
    broker: Option<String>,
    /// With `--transport mqtt`: the name on the broker's certificate
    /// (default: the host of `--broker`).
    #[arg(long)]
    broker_name: Option<String>,
    /// With `--data`: the chain's JSON-RPC URL.
    #[arg(long, env = "MEDLEDGER_RPC", default_value = "http://127.0.0.1:8545")]
    rpc: String,
}

/// How simulated devices send their readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// `POST /v1/readings` to the collector.
    Https,
    /// MQTT 5 to a broker, readings carrying their certificate chain.
    Mqtt,
}

/// EPC serials of simulated devices start here.
const FIRST_SERIAL: u64 = 900_000;

pub(crate) fn run(args: SimArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(simulate(args))
}

/// The simulated patient and devices of a `medledger up` data directory.
pub(crate) struct Simulated {
    /// The patient.
    pub(crate) patient_ref: alloy::primitives::B256,
    /// Their card.
    pub(crate) card: Issued,
    /// The devices, each with its kind, sequence numbers above any
    /// earlier run's.
    pub(crate) devices: Vec<(Device, medledger_sim::signals::Kind)>,
}

/// Admits the simulated patient (once; their card goes into the
/// collector's cards directory) and issues, registers and assigns the
/// first `count` simulated devices not made before (`D/sim/`), of
/// `kinds` in turn, with `key_alg` keys.
pub(crate) async fn prepare(
    d: &std::path::Path,
    contracts: &medledger_contracts::Contracts<alloy::providers::DynProvider>,
    count: usize,
    kinds: &[Kind],
    key_alg: KeyAlg,
) -> Result<Simulated> {
    let ca = Ca::open(&d.join("ca"))?;
    let sim = d.join("sim");
    std::fs::create_dir_all(sim.join("devices"))?;

    // The patient, admitted once; their card goes to the collector.
    let patient_ref = keccak256("salt:sim-patient");
    let card = sim.join("patient");
    if !medledger_pki::files::with_suffix(&card, ".crt").exists() {
        println!("medledger sim: admitting a simulated patient {patient_ref}");
        medledger_sim::allow_kinds(contracts, KINDS).await?;
        let issued = ca.issue(&LeafRequest::new(Role::Patient))?;
        let account = medledger_sim::signer(&issued)?.address();
        send(contracts.registry().admit(
            patient_ref,
            account,
            short_text("ward")?,
            short_text("floor-1")?,
            short_text("room-1")?,
            short_text("bed-1")?,
            vec![],
        ))
        .await?;
        medledger_sim::record_certificate(contracts, &issued).await?;
        issued.write(&d.join("collector/cards/sim-patient"))?;
        issued.write(&card)?;
        // The collector looks at its cards directory every 2 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let card = Issued::load(&card)?;

    // The devices, made once each.
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let prefix = sim.join(format!("devices/device-{i}"));
        let kind = kinds[i % kinds.len()];
        if !medledger_pki::files::with_suffix(&prefix, ".crt").exists() {
            let device = Device::issue(&ca, FIRST_SERIAL + i as u64, kind.group, key_alg)?;
            device
                .register(contracts, kind.group, Some(patient_ref))
                .await?;
            device.issued.write(&prefix)?;
        }
        // Sequence numbers above any earlier run's: milliseconds now.
        devices.push((Device::load(&prefix, medledger_protocol::now_ms())?, kind));
    }
    Ok(Simulated {
        patient_ref,
        card,
        devices,
    })
}

/// Devices ready to send, and where to.
struct Fleet {
    devices: Vec<(Device, Kind)>,
    /// The root CA certificate (DER), to verify the collector.
    root: Vec<u8>,
    /// `host:port`.
    collector: String,
    /// The name on its certificate.
    collector_name: String,
    /// Or the MQTT broker (`host:port`) and the name on its certificate.
    broker: Option<(String, String)>,
}

async fn simulate(args: SimArgs) -> Result<()> {
    let mut fleet = match (&args.devices_dir, &args.data) {
        (Some(dir), _) => from_dir(dir, &args)?,
        (None, Some(d)) => from_up(d, &args).await?,
        (None, None) => bail!("give --data (medledger up) or --devices-dir"),
    };
    if args.transport == Transport::Mqtt {
        let broker = args
            .broker
            .clone()
            .context("--transport mqtt needs --broker HOST:PORT")?;
        let name = match &args.broker_name {
            Some(name) => name.clone(),
            None => host_of(&broker).to_owned(),
        };
        println!("medledger sim: over MQTT to the broker {broker} ({name})");
        fleet.broker = Some((broker, name));
    }
    let receipts = match &args.receipts {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    stream(fleet, args.rate, args.seconds, receipts).await
}

/// The devices of a `medledger up` data directory, made, registered and
/// assigned to the simulated patient as needed.
async fn from_up(d: &Path, args: &SimArgs) -> Result<Fleet> {
    let state = UpState::load(d)?;
    let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
    let contracts = roles::contracts(
        &args.rpc,
        &state.registry.to_string(),
        admin,
        Some(&Identity::up_admin(d)),
    )
    .await?;
    let Simulated {
        patient_ref,
        card,
        devices,
    } = prepare(
        d,
        &contracts,
        args.devices.unwrap_or(10),
        KINDS,
        KeyAlg::P256,
    )
    .await?;
    println!(
        "medledger sim: {} devices of patient {patient_ref} (card account {}) send to {}, {} reading(s)/s each",
        devices.len(),
        medledger_sim::signer(&card)?.address(),
        state.collector,
        args.rate
    );
    Ok(Fleet {
        devices,
        root: Ca::open(&d.join("ca"))?.root_cert_der()?,
        collector: state.collector,
        collector_name: "localhost".to_owned(),
        broker: None,
    })
}

/// The devices issued into `dir`, each simulated as the kind its
/// certificate's group names.
fn from_dir(dir: &Path, args: &SimArgs) -> Result<Fleet> {
    let (Some(collector), Some(ca_root)) = (&args.collector, &args.ca_root) else {
        bail!("--devices-dir needs --collector and --ca-root");
    };
    let mut prefixes: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the devices directory {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|x| x == "crt"))
        .map(|path| path.with_extension(""))
        .collect();
    prefixes.sort();
    prefixes.truncate(args.devices.unwrap_or(usize::MAX));
    if prefixes.is_empty() {
        bail!(
            "no device certificates (*.crt) in {}: issue them with `medledger ca issue --role device --count N --epc FIRST --group GROUP --rule RULE --out {}`",
            dir.display(),
            dir.display()
        );
    }
    let seq = medledger_protocol::now_ms();
    let mut devices = Vec::with_capacity(prefixes.len());
    for prefix in &prefixes {
        let device = Device::load(prefix, seq)
            .with_context(|| format!("the device {}.crt and .key", prefix.display()))?;
        let identity = device.issued.identity()?;
        let Details::Device { group, .. } = &identity.details else {
            bail!("{}.crt is not a device certificate", prefix.display());
        };
        let Some(kind) = KINDS.iter().find(|k| k.group == group) else {
            let known: Vec<_> = KINDS.iter().map(|k| k.group).collect();
            bail!(
                "{}.crt has group {group}, which sim cannot simulate; issue devices of one of: {}",
                prefix.display(),
                known.join(", ")
            );
        };
        devices.push((device, *kind));
    }
    let root = medledger_pki::files::read_first(ca_root, "CERTIFICATE")?;
    let collector_name = match &args.collector_name {
        Some(name) => name.clone(),
        None => host_of(collector).to_owned(),
    };
    println!(
        "medledger sim: {} devices from {} send to {collector} ({collector_name}), {} reading(s)/s each",
        devices.len(),
        dir.display(),
        args.rate
    );
    Ok(Fleet {
        devices,
        root,
        collector: collector.clone(),
        collector_name,
        broker: None,
    })
}

/// The host of `host:port` (`[v6]:port` without its brackets).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Streams readings from every device of `fleet`, `rate` a second each,
/// printing what came back every 5 s, until Ctrl-C or `seconds`, and
/// appending each accepted reading's hash to `receipts`.
async fn stream(
    fleet: Fleet,
    rate: f64,
    seconds: Option<u64>,
    receipts: Option<std::fs::File>,
) -> Result<()> {
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let receipts = receipts.map(|file| Arc::new(Mutex::new(file)));
    let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (mut device, kind)) in fleet.devices.into_iter().enumerate() {
        let config = medledger_pki::client_config(
            Some(&device.credentials()),
            &fleet.root,
            &[Role::Collector],
        )?;
        let (addr, name) = (fleet.collector.clone(), fleet.collector_name.clone());
        let (root, broker) = (fleet.root.clone(), fleet.broker.clone());
        let (counts, receipts) = (counts.clone(), receipts.clone());
        device.x5chain = broker.is_some();
        tasks.spawn(async move {
            let mut vitals = Vitals::new(n as u64);
            let mut link = Link::None;
            loop {
                let cose = device.reading(vitals.observe(&kind, medledger_protocol::now_ms()));
                if matches!(link, Link::None) {
                    link = match &broker {
                        Some((broker, name)) => MqttDevice::connect(&device, &root, broker, name)
                            .await
                            .map_or(Link::None, Link::Mqtt),
                        None => Connection::open(config.clone(), &addr, &name)
                            .await
                            .map_or(Link::None, Link::Https),
                    };
                }
                let answer = match &mut link {
                    Link::Https(c) => post_readings(c, Readings::One(cose), Wait::Stored)
                        .await
                        .ok()
                        .map(|reply| (reply.status, reply.body)),
                    Link::Mqtt(m) => m.send(cose).await.ok().map(|answer| {
                        (
                            answer.status,
                            serde_json::to_vec(&answer.body).unwrap_or_default(),
                        )
                    }),
                    Link::None => {
                        bump(&counts, "cannot connect");
                        tokio::time::sleep(every).await;
                        continue;
                    }
                };
                let outcome = match answer {
                    Some((202, body)) => {
                        if let Some(file) = &receipts {
                            record_receipt(file, &body);
                        }
                        "accepted".to_owned()
                    }
                    Some((_, body)) => {
                        let body: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        body["type"]
                            .as_str()
                            .unwrap_or("refused")
                            .trim_start_matches("urn:medledger:problem:")
                            .to_owned()
                    }
                    None => {
                        link = Link::None;
                        "connection lost".to_owned()
                    }
                };
                bump(&counts, &outcome);
                tokio::time::sleep(every).await;
            }
        });
    }
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s));
    let report = |counts: &Mutex<BTreeMap<String, u64>>| {
        let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  [{:>6.1} s] {}",
            started.elapsed().as_secs_f64(),
            parts.join(", ")
        );
    };
    loop {
        let tick = tokio::time::sleep(Duration::from_secs(5).min(
            deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            }),
        ));
        tokio::select! {
            () = tick => {}
            () = roles::shutdown() => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        report(&counts);
    }
    tasks.abort_all();
    report(&counts);
    Ok(())
}

/// A device's way to its collector.
enum Link {
    None,
    Https(Connection),
    Mqtt(MqttDevice),
}

/// Counts one answer of kind `outcome`.
fn bump(counts: &Mutex<BTreeMap<String, u64>>, outcome: &str) {
    *counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(outcome.to_owned())
        .or_insert(0) += 1;
}

/// Appends the hash of the receipt `body` (JSON) to `file`, a line with one
/// write, so that concurrent devices' lines never interleave.
fn record_receipt(file: &Mutex<std::fs::File>, body: &[u8]) {
    use std::io::Write;
    let receipt: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(hash) = receipt["hash"].as_str() else {
        tracing::warn!(
            "a 202 without a receipt hash: {}",
            String::from_utf8_lossy(body)
        );
        return;
    };
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = file.write_all(format!("{hash}\n").as_bytes()) {
        tracing::error!("writing a receipt: {e}");
    }
}
