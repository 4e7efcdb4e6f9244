//! `medledger sim --data D --devices N`: simulated devices for a system
//! started by `medledger up --data D`. On first use it admits a simulated
//! patient (their card goes into the collector's cards directory), and it
//! issues, registers and assigns each device it has not made before
//! (`D/sim/`); then every device streams plausible vital signs of its kind
//! over its own mutual-TLS connection until Ctrl-C or `--seconds`.

use crate::roles;
use crate::rpc::Identity;
use crate::up::UpState;
use alloy::primitives::keccak256;
use anyhow::{Context, Result};
use clap::Args;
use medledger_contracts::{send, short_text};
use medledger_pki::https::Connection;
use medledger_pki::{Ca, Issued, KeyAlg, LeafRequest, Role};
use medledger_sim::Device;
use medledger_sim::signals::{KINDS, Kind, Vitals};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// The data directory of `medledger up`.
    #[arg(long, env = "MEDLEDGER_DATA")]
    data: PathBuf,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Readings per second, per device.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// The chain's JSON-RPC URL.
    #[arg(long, env = "MEDLEDGER_RPC", default_value = "http://127.0.0.1:8545")]
    rpc: String,
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

async fn simulate(args: SimArgs) -> Result<()> {
    let d = &args.data;
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
    } = prepare(d, &contracts, args.devices, KINDS, KeyAlg::P256).await?;
    println!(
        "medledger sim: {} devices of patient {patient_ref} (card account {}) send to {}, {} reading(s)/s each",
        devices.len(),
        medledger_sim::signer(&card)?.address(),
        state.collector,
        args.rate
    );

    let root = Ca::open(&d.join("ca"))?.root_cert_der()?;
    let counts: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let every = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, (mut device, kind)) in devices.into_iter().enumerate() {
        let config =
            medledger_pki::client_config(Some(&device.credentials()), &root, &[Role::Collector])?;
        let addr = state.collector.clone();
        let counts = counts.clone();
        tasks.spawn(async move {
            let mut vitals = Vitals::new(n as u64);
            let mut conn: Option<Connection> = None;
            loop {
                let cose = device.reading(vitals.observe(&kind, medledger_protocol::now_ms()));
                if conn.is_none() {
                    conn = Connection::open(config.clone(), &addr, "localhost")
                        .await
                        .ok();
                }
                let outcome = match &mut conn {
                    Some(c) => match c
                        .request(
                            "POST",
                            "/v1/readings",
                            &[("content-type", "application/cose")],
                            cose,
                        )
                        .await
                    {
                        Ok(reply) if reply.status == 202 => "accepted".to_owned(),
                        Ok(reply) => {
                            let body: serde_json::Value =
                                serde_json::from_slice(&reply.body).unwrap_or_default();
                            body["type"]
                                .as_str()
                                .unwrap_or("refused")
                                .trim_start_matches("urn:medledger:problem:")
                                .to_owned()
                        }
                        Err(_) => {
                            conn = None;
                            "connection lost".to_owned()
                        }
                    },
                    None => "cannot connect".to_owned(),
                };
                *counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(outcome)
                    .or_insert(0) += 1;
                tokio::time::sleep(every).await;
            }
        });
    }
    let started = Instant::now();
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
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
        let tick = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            () = tick => report(&counts),
            () = roles::shutdown() => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    tasks.abort_all();
    report(&counts);
    Ok(())
}
