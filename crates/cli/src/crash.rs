//! `medledger bench crash`: crash consistency under load.
//!
//! The chain, the server and the collector of a `medledger up` data
//! directory run as three processes of their own. Simulated devices send
//! readings on keep-alive connections and a doctor keeps asking for
//! access on chain, while one process after another is killed with
//! SIGKILL at a random moment and started again. Then the load stops, the
//! collector's outbox drains, everything stops, and the harness checks:
//! every reading acknowledged with 202 is stored, and in its patient's
//! ledger exactly once; every transaction whose receipt was seen is still
//! in the same block; every patient ledger verifies against its anchors.

use crate::apart::{self, ROLES, Roles, free_local};
use crate::roles;
use crate::up::UpState;
use alloy::primitives::B256;
use alloy::providers::Provider;
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_contracts::{Scope, StaffRole, send, short_text};
use medledger_patient_ledger::Field;
use medledger_pki::https::Connection;
use medledger_pki::{Ca, LeafRequest, Role};
use medledger_sim::signals::Vitals;
use medledger_sim::{Readings, Wait, post_readings};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(crate) struct CrashArgs {
    /// SIGKILLs, of the collector, the server and the chain in turn (in a
    /// random order each round).
    #[arg(long, default_value_t = 1000)]
    kills: usize,
    /// Which roles are killed (comma-separated): chain, server, collector.
    #[arg(long, value_delimiter = ',', default_values = ROLES)]
    roles: Vec<String>,
    /// Simulated devices, each on one keep-alive connection.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Each device sends a reading this often.
    #[arg(long, default_value_t = 20)]
    every_ms: u64,
    /// The longest run between a restart and the next kill (the kill comes
    /// at a random moment up to this).
    #[arg(long, default_value_t = 800)]
    max_gap_ms: u64,
    /// Random seed (default: from the clock); printed, to run again alike.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the data directory here (default: a temporary one).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the roles' output goes, under the data directory.
const LOGS: &str = "crash";

/// What a run found.
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    seed: u64,
    kills: BTreeMap<&'static str, u64>,
    seconds: f64,
    readings_sent: u64,
    readings_acknowledged: u64,
    /// Replies other than 202, by status, and failed requests.
    readings_not_acknowledged: BTreeMap<String, u64>,
    /// 503 replies to devices that had a reading acknowledged before (the
    /// collector decides those from the chain's last answers while the
    /// chain is down).
    unavailable_for_devices_seen: u64,
    readings_stored: u64,
    acknowledged_but_lost: u64,
    recorded_twice: u64,
    transactions_confirmed: u64,
    transactions_lost: u64,
    ledgers: u64,
    ledgers_failed: Vec<String>,
}

impl Outcome {
    fn sound(&self) -> bool {
        self.acknowledged_but_lost == 0
            && self.recorded_twice == 0
            && self.transactions_lost == 0
            && self.ledgers_failed.is_empty()
    }
}

/// splitmix64: enough randomness for kill times, and reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Initialises `d` with `medledger up` (stopped once it is set up), then
/// admits the simulated patient, makes the devices and registers a
/// doctor. Returns the roles (none running), the devices and the doctor's
/// contracts.
async fn prepare(
    d: &Path,
    args: &CrashArgs,
) -> Result<(
    Roles,
    crate::simulate::Simulated,
    medledger_contracts::Contracts<alloy::providers::DynProvider>,
)> {
    let addrs = [free_local()?, free_local()?, free_local()?];
    let mut up = apart::start_up(d, LOGS, addrs).await?;
    let roles = Roles::new(d, LOGS, addrs)?;
    let rpc = format!("http://{}", addrs[0]);
    let registry = roles.state.registry.to_string();
    let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
    let contracts = roles::contracts(&rpc, &registry, admin, None).await?;
    let simulated = crate::simulate::prepare(
        d,
        &contracts,
        args.devices,
        medledger_sim::signals::KINDS,
        medledger_pki::KeyAlg::P256,
    )
    .await?;
    let doctor = Ca::open(&d.join("ca"))?.issue(&LeafRequest::new(Role::Doctor))?;
    let signer = medledger_sim::signer(&doctor)?;
    send(contracts.registry().registerStaff(
        signer.address(),
        StaffRole::Doctor.code(),
        short_text("ward")?,
    ))
    .await?;
    send(
        contracts
            .registry()
            .assignCarer(simulated.patient_ref, signer.address()),
    )
    .await?;
    let doctor = roles::contracts(&rpc, &registry, signer, None).await?;
    up.kill()?;
    up.wait()?;
    Ok((roles, simulated, doctor))
}

/// What the load saw: acknowledged readings and confirmed transactions.
#[derive(Default)]
struct Seen {
    sent: u64,
    acknowledged: HashSet<[u8; 32]>,
    not_acknowledged: BTreeMap<String, u64>,
    unavailable_for_devices_seen: u64,
    /// Transaction hash -> block hash.
    confirmed: HashMap<B256, B256>,
}

type Shared = Arc<Mutex<Seen>>;

fn seen(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The devices and the doctor, until aborted.
fn start_load(
    tasks: &mut tokio::task::JoinSet<()>,
    d: &Path,
    simulated: crate::simulate::Simulated,
    doctor: medledger_contracts::Contracts<alloy::providers::DynProvider>,
    collector: SocketAddr,
    every: Duration,
    shared: &Shared,
) -> Result<()> {
    let root = Ca::open(&d.join("ca"))?.root_cert_der()?;
    for (n, (mut device, kind)) in simulated.devices.into_iter().enumerate() {
        let config =
            medledger_pki::client_config(Some(&device.credentials()), &root, &[Role::Collector])?;
        let shared = shared.clone();
        let addr = collector.to_string();
        tasks.spawn(async move {
            let mut vitals = Vitals::new(n as u64);
            let mut conn: Option<Connection> = None;
            let mut acknowledged_before = false;
            loop {
                tokio::time::sleep(every).await;
                if conn.is_none() {
                    conn = Connection::open(config.clone(), &addr, "localhost")
                        .await
                        .ok();
                }
                let Some(c) = &mut conn else { continue };
                let cose = device.reading(vitals.observe(&kind, medledger_protocol::now_ms()));
                let hash = medledger_protocol::reading_hash(&cose);
                let reply = post_readings(c, Readings::One(cose), Wait::Stored).await;
                let mut seen = seen(&shared);
                seen.sent += 1;
                match reply {
                    Ok(r) if r.status == 202 => {
                        seen.acknowledged.insert(hash);
                        acknowledged_before = true;
                    }
                    Ok(r) => {
                        if r.status == 503 && acknowledged_before {
                            seen.unavailable_for_devices_seen += 1;
                        }
                        *seen
                            .not_acknowledged
                            .entry(r.status.to_string())
                            .or_default() += 1
                    }
                    Err(_) => {
                        *seen
                            .not_acknowledged
                            .entry("connection lost".into())
                            .or_default() += 1;
                        conn = None;
                    }
                }
            }
        });
    }
    let shared = shared.clone();
    let patient = simulated.patient_ref;
    tasks.spawn(async move {
        let Ok(purpose) = medledger_contracts::purpose("HOPERAT") else {
            return;
        };
        let log = doctor.access_log();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let call = log.requestAccess(patient, Scope::ALL.0, purpose);
            if let Ok(Ok(receipt)) = tokio::time::timeout(Duration::from_secs(10), send(call)).await
                && let Some(block) = receipt.block_hash
            {
                seen(&shared)
                    .confirmed
                    .insert(receipt.transaction_hash, block);
            }
        }
    });
    Ok(())
}

pub(crate) async fn run(args: CrashArgs) -> Result<()> {
    let temp;
    let d = match &args.data {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |t| t.as_nanos() as u64)
    });
    let mut order: Vec<usize> = Vec::new();
    for role in &args.roles {
        let Some(i) = ROLES.iter().position(|r| r == role) else {
            bail!("--roles: {role:?} is not one of {}", ROLES.join(", "));
        };
        if !order.contains(&i) {
            order.push(i);
        }
    }
    println!(
        "medledger bench crash: {} SIGKILLs over {}, {} devices every {} ms, seed {seed}",
        args.kills,
        args.roles.join(", "),
        args.devices,
        args.every_ms
    );
    let (mut processes, simulated, doctor) = prepare(&d, &args).await?;
    processes.start_all().await?;
    let shared = Shared::default();
    let mut load = tokio::task::JoinSet::new();
    start_load(
        &mut load,
        &d,
        simulated,
        doctor,
        processes.addrs[2],
        Duration::from_millis(args.every_ms.max(1)),
        &shared,
    )?;

    let mut outcome = Outcome {
        seed,
        ..Outcome::default()
    };
    let mut random = Random(seed);
    let started = Instant::now();
    // Each role in turn, in a random order every round.
    for i in 0..args.kills {
        if i % order.len() == 0 {
            for j in (1..order.len()).rev() {
                order.swap(j, random.below(j as u64 + 1) as usize);
            }
        }
        tokio::time::sleep(Duration::from_millis(random.below(args.max_gap_ms))).await;
        let role = order[i % order.len()];
        processes.kill(role)?;
        *outcome.kills.entry(ROLES[role]).or_default() += 1;
        processes.start(role).await?;
        if (i + 1) % 50 == 0 || i + 1 == args.kills {
            let seen = seen(&shared);
            println!(
                "  [{:>6.1} s] {} kills; {} readings acknowledged, {} transactions confirmed",
                started.elapsed().as_secs_f64(),
                i + 1,
                seen.acknowledged.len(),
                seen.confirmed.len()
            );
        }
    }
    // A last stretch without kills, so that the end state is reached by
    // recovery, not by luck.
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.abort_all();
    while load.join_next().await.is_some() {}
    outcome.seconds = started.elapsed().as_secs_f64();
    apart::drain(&d.join("collector"), Duration::from_millis(200)).await?;
    processes.kill_all()?;

    let seen = std::mem::take(&mut *seen(&shared));
    outcome.readings_sent = seen.sent;
    outcome.readings_acknowledged = seen.acknowledged.len() as u64;
    outcome.readings_not_acknowledged = seen.not_acknowledged;
    outcome.unavailable_for_devices_seen = seen.unavailable_for_devices_seen;
    check(
        &d,
        &processes.state,
        &seen.acknowledged,
        &seen.confirmed,
        &mut outcome,
    )
    .await?;
    report(&outcome);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&outcome)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !outcome.sound() {
        bail!("crash consistency violated (data kept in {})", d.display());
    }
    Ok(())
}

/// The checks, on the stopped system: the chain and server run in this
/// process over the data directory.
async fn check(
    d: &Path,
    state: &UpState,
    acknowledged: &HashSet<[u8; 32]>,
    confirmed: &HashMap<B256, B256>,
    outcome: &mut Outcome,
) -> Result<()> {
    let admin = roles::load_signer(&d.join("people/admin.eth.key"))?;
    let node = crate::up::start_node(&d.join("chain"), state.chain_id, vec![admin.address()])?;
    node.set_permissions(Arc::new(medledger_chain::RegistryPermissions::new(
        state.registry,
    )));
    let provider = medledger_sim::provider(&node, &admin);
    for (tx, block) in confirmed {
        let receipt = provider.get_transaction_receipt(*tx).await?;
        if receipt.and_then(|r| r.block_hash) != Some(*block) {
            outcome.transactions_lost += 1;
        }
    }
    outcome.transactions_confirmed = confirmed.len() as u64;

    let started = crate::restore::start_server(d, &node, state).await?;
    let server = &started.server;
    let mut recorded: HashMap<Vec<u8>, u64> = HashMap::new();
    let patients = server.patients().await?;
    for patient in &patients {
        for stored in server.ledger().entries(patient).await? {
            let entry = server.ledger().history().open_entry(&stored)?;
            if let (true, Some(Field::Bytes(hash))) =
                (entry.kind == "DataRecorded", entry.body.get("reading"))
            {
                *recorded.entry(hash.clone()).or_default() += 1;
            }
        }
    }
    outcome.readings_stored = recorded.len() as u64;
    outcome.recorded_twice = recorded.values().filter(|n| **n > 1).count() as u64;
    outcome.acknowledged_but_lost = acknowledged
        .iter()
        .filter(|h| !recorded.contains_key(h.as_slice()))
        .count() as u64;
    outcome.ledgers = patients.len() as u64;
    outcome.ledgers_failed = server.verify_ledgers().await?;
    Ok(())
}

fn report(o: &Outcome) {
    let kills: Vec<String> = o.kills.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let refused: Vec<String> = o
        .readings_not_acknowledged
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "\n  kills                      {} ({}) in {:.0} s",
        o.kills.values().sum::<u64>(),
        kills.join(", "),
        o.seconds
    );
    println!("  readings sent              {}", o.readings_sent);
    println!("  acknowledged (202)         {}", o.readings_acknowledged);
    println!(
        "  not acknowledged           {}",
        if refused.is_empty() {
            "0".to_owned()
        } else {
            refused.join(", ")
        }
    );
    println!(
        "  503 to devices seen before {}",
        o.unavailable_for_devices_seen
    );
    println!("  stored (in a ledger)       {}", o.readings_stored);
    println!("  acknowledged but lost      {}", o.acknowledged_but_lost);
    println!("  recorded twice             {}", o.recorded_twice);
    println!(
        "  transactions confirmed     {} ({} lost)",
        o.transactions_confirmed, o.transactions_lost
    );
    println!(
        "  patient ledgers            {} ({} fail against their anchors)",
        o.ledgers,
        o.ledgers_failed.len()
    );
    for f in &o.ledgers_failed {
        println!("    FAILED {f}");
    }
}
