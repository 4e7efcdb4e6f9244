//! `medledger bench ingest` (the published prototype's burst experiment
//! and a sustained run), `medledger bench access` (request to decrypted
//! data) and `medledger bench flood` (legitimate devices under a flood
//! from a `bench hold` process), against a hospital in this process
//! (`medledger_sim`); `medledger bench crash` is [`crate::crash`].

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use medledger_pki::KeyAlg;
use medledger_sim::load::{self, Burst, Sustained};
use medledger_sim::{Hospital, Options};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The published prototype's times for 10, 100 and 1000 simultaneous
/// requests, which medledger started from.
const SEED: &[(usize, f64)] = &[(10, 5.72), (100, 10.81), (1000, 30.25)];

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Readings from devices through collector and server to the chain.
    Ingest(IngestArgs),
    /// Staff access: the request on chain, then the decrypted records.
    Access(AccessArgs),
    /// Floods against a collector while legitimate devices keep sending.
    Flood(FloodArgs),
    /// SIGKILLs of chain, server and collector under load; then checks
    /// that nothing acknowledged or confirmed was lost.
    Crash(crate::crash::CrashArgs),
    /// Idle and slowloris connections for `bench flood`, from another
    /// process (its own open-file limit).
    #[command(hide = true)]
    Hold(HoldArgs),
}

#[derive(Debug, Args)]
pub(crate) struct HoldArgs {
    #[arg(long)]
    addr: String,
    #[arg(long)]
    idle: usize,
    #[arg(long)]
    slow: usize,
    #[arg(long)]
    seconds: u64,
    /// A directory with `root.der` (the CA to trust), `device.crt`/`.key`
    /// (a registered device) and `foreign.crt`/`.key` (another CA's).
    #[arg(long)]
    attackers: PathBuf,
    /// This process's nice value: the attacker stands for other machines,
    /// whose CPU is not the collector's.
    #[arg(long, default_value_t = 0)]
    nice: i32,
}

#[derive(Debug, Args)]
pub(crate) struct FloodArgs {
    /// Idle connections the flood holds open (reopened when closed).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Legitimate devices, each on one keep-alive connection.
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Seconds without the flood, then as many with it.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Each legitimate device sends a reading this often.
    #[arg(long, default_value_t = 50)]
    every_ms: u64,
    /// The nice value of the attacking process. An attacker works from
    /// other machines: at 19 its own CPU (connects, TLS clients) takes
    /// what the hospital leaves of this machine's cores rather than half
    /// of them; 0 shares them equally.
    #[arg(long, default_value_t = 19)]
    attacker_nice: i32,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct AccessArgs {
    /// Accesses to measure, one after another.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Heart-rate readings the patient has (each access reads them all).
    #[arg(long, default_value_t = 100)]
    readings: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Alg {
    /// ECDSA P-256 (ES256), the default for devices.
    P256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

/// Where `bench ingest` runs the collector and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// In this process, beside the load generator: the bursts, then a
    /// sustained run.
    InProcess,
    /// `medledger up` in a process of its own (chain, server and collector
    /// together, batches handed over in memory): a sustained run.
    Up,
    /// The chain, the server and the collector in three processes of
    /// their own, forwarding over mutual TLS, as deployed: a sustained run.
    Split,
    /// The network of `deploy/network/run.sh` on PostgreSQL (`--database`):
    /// the chain over mutual TLS, one server and then `--servers`, and
    /// `--collectors`, each a process of its own; a sustained run of
    /// pulse oximeters with each.
    Network,
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Where the collector and the server run.
    #[arg(long, value_enum, default_value_t = Mode::InProcess)]
    mode: Mode,
    /// Burst sizes: devices that each open a new connection and send one
    /// reading at the same moment.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    devices: Vec<usize>,
    /// Devices in the sustained run, each on one keep-alive connection.
    #[arg(long, default_value_t = 40)]
    sustained_devices: usize,
    /// Readings per request in the sustained run.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests per device in the sustained run.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The devices' key type.
    #[arg(long, value_enum, default_value_t = Alg::P256)]
    alg: Alg,
    /// In process: the collector forwards to the server over mutual TLS
    /// and the server verifies every reading again, as between machines
    /// (by default the collector hands its batches to the server in
    /// memory, as `medledger up` does).
    #[arg(long)]
    over_tls: bool,
    /// Up and split: the devices' kind (`medledger sim`'s groups, e.g.
    /// `thermometer`: one observation per reading; `ecg-patch`: a strip),
    /// or `all` for a mixed ward.
    #[arg(long, default_value = "thermometer")]
    kind: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Network: the servers in the second run (the first has one).
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Network: the collectors, each with a ward of its own.
    #[arg(long, default_value_t = 3)]
    collectors: usize,
    /// Network: the servers' PostgreSQL database (each run makes a
    /// schema of its own there).
    #[arg(
        long,
        env = "MEDLEDGER_BENCH_DATABASE",
        required_if_eq("mode", "network")
    )]
    database: Option<String>,
    /// Network: SIGKILL server 2 once half the readings were acknowledged,
    /// and report when its patient was taken over.
    #[arg(long)]
    kill_server: bool,
    /// Network: the servers' lease_ms.
    #[arg(long, default_value_t = 3000)]
    lease_ms: u64,
}

pub(crate) fn run(command: BenchCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match command {
        BenchCommand::Ingest(args) => runtime.block_on(ingest(args)),
        BenchCommand::Access(args) => runtime.block_on(access(args)),
        BenchCommand::Flood(args) => runtime.block_on(flood(args)),
        BenchCommand::Crash(args) => runtime.block_on(crate::crash::run(args)),
        BenchCommand::Hold(args) => hold(args),
    }
}

/// `bench hold`: the attacker of `bench flood`. The connections are held
/// on one runtime and the TLS attacks run on another, so that neither
/// starves the other of this process's threads.
fn hold(args: HoldArgs) -> Result<()> {
    raise_open_files(args.idle as u64 + args.slow as u64 + 1_024);
    rustix::process::setpriority_process(None, args.nice)
        .context("setting the attacker's nice value")?;
    let dir = &args.attackers;
    let root = std::fs::read(dir.join("root.der"))
        .with_context(|| format!("reading {}", dir.join("root.der").display()))?;
    let client = |name: &str| -> Result<_> {
        let own = medledger_pki::Credentials::load(&dir.join(name))?;
        Ok(medledger_pki::client_config(
            Some(&own),
            &root,
            &[medledger_pki::Role::Collector],
        )?)
    };
    let attackers = load::Attackers {
        foreign: client("foreign")?,
        device: client("device")?,
    };
    let time = Duration::from_secs(args.seconds);
    let runtime = || tokio::runtime::Runtime::new().context("starting the async runtime");
    let (held, attacked) = std::thread::scope(|scope| {
        let attacked = scope.spawn(|| -> Result<load::Held> {
            Ok(runtime()?.block_on(load::attack(&args.addr, &attackers, time)))
        });
        let held = runtime()?.block_on(load::hold(&args.addr, args.idle, args.slow, time));
        let attacked = attacked
            .join()
            .map_err(|_| anyhow::anyhow!("the attack thread panicked"))??;
        anyhow::Ok((held, attacked))
    })?;
    let held = load::Held {
        handshakes_refused: attacked.handshakes_refused,
        handshakes_accepted: attacked.handshakes_accepted,
        oversized_refused: attacked.oversized_refused,
        ..held
    };
    println!("{}", serde_json::to_string(&held)?);
    Ok(())
}

async fn access(args: AccessArgs) -> Result<()> {
    let mut options = Options::default();
    options.limits.device_rate_per_s = 1e9;
    options.limits.device_burst = 1e9;
    eprintln!("medledger bench access: starting a hospital in this process");
    let hospital = Hospital::start(options).await?;
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress("request, then read", done.clone(), args.requests as u64);
    let a = load::access(&hospital, args.readings, args.requests, done).await?;
    bar.await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let row = |label: &str, list: &[Duration]| {
        println!(
            "| {label} | {:.2} ms | {:.2} ms |",
            ms(load::quantile(list, 0.5)),
            ms(load::quantile(list, 0.99))
        );
    };
    println!();
    println!(
        "{} accesses by an assigned nurse, each reading {} observations, on the embedded chain:",
        a.total.len(),
        a.readings
    );
    println!("| step | p50 | p99 |");
    println!("|---|---:|---:|");
    row("requestAccess mined and decided", &a.decided);
    row("records read, decrypted, FHIR Bundle in hand", &a.served);
    row("request to decrypted data", &a.total);
    if let Some(path) = &args.json {
        let q = |list: &[Duration]| {
            serde_json::json!({
                "p50_ms": ms(load::quantile(list, 0.5)),
                "p99_ms": ms(load::quantile(list, 0.99)),
            })
        };
        let json = serde_json::json!({
            "requests": a.total.len(),
            "readings": a.readings,
            "decided": q(&a.decided),
            "served": q(&a.served),
            "total": q(&a.total),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Raises this process's open-file limit to its hard limit, or beyond it
/// where the process may (root); returns the limit in force.
fn raise_open_files(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    for limit in [wanted.max(hard), hard] {
        let to = Rlimit {
            current: Some(limit),
            maximum: Some(limit.max(hard)),
        };
        if setrlimit(Resource::Nofile, to).is_ok() {
            return limit;
        }
    }
    now.current.unwrap_or(0)
}

async fn flood(args: FloodArgs) -> Result<()> {
    // The collector's ends of the idle connections live here; their other
    // ends in a `bench hold` process.
    let limit = raise_open_files(args.idle as u64 + 4_096);
    if limit < args.idle as u64 + 1_024 {
        anyhow::bail!(
            "{} idle connections need {} open files in this process; the limit is {limit}",
            args.idle,
            args.idle + 1_024
        );
    }
    let mut options = Options::default();
    options.limits.device_rate_per_s = 1e9;
    options.limits.device_burst = 1e9;
    eprintln!("medledger bench flood: starting a hospital in this process");
    let hospital = Hospital::start(options).await?;
    let mut legit = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        legit.push(hospital.device(300_000 + i as u64).await?);
    }
    // The attacker's credentials, for the `bench hold` process: a
    // registered device, and a device of another CA.
    let attackers = tempfile::tempdir()?;
    hospital
        .device(399_999)
        .await?
        .issued
        .write(&attackers.path().join("device"))?;
    let foreign = medledger_pki::Ca::init(&attackers.path().join("other-ca"), "Not our CA")?;
    let mut request = medledger_pki::LeafRequest::new(medledger_pki::Role::Device);
    request.epc = Some(medledger_pki::Epc::new(3, "0614141", "812345", 399_998)?);
    request.group = Some("icu-hr-monitor".into());
    request.rule = Some("default".into());
    foreign
        .issue(&request)?
        .write(&attackers.path().join("foreign"))?;
    std::fs::write(
        attackers.path().join("root.der"),
        hospital.ca.root_cert_der()?,
    )?;
    eprintln!(
        "  {} devices send every {} ms for {} s, then {} s more under the flood ({} idle connections)",
        args.devices, args.every_ms, args.seconds, args.seconds, args.idle
    );
    let addr = hospital.collector.addr().to_string();
    let (idle, seconds, nice) = (args.idle, args.seconds, args.attacker_nice);
    let dir = attackers.path().to_owned();
    let held = async move {
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe()?)
                .args(["bench", "hold", "--addr", &addr])
                .args(["--idle", &idle.to_string(), "--slow", "200"])
                .args(["--seconds", &seconds.to_string()])
                .args(["--nice", &nice.to_string()])
                .arg("--attackers")
                .arg(&dir)
                .output()
        })
        .await??;
        if !out.status.success() {
            anyhow::bail!(
                "the connection holder failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice::<load::Held>(&out.stdout)?)
    };
    let f = load::flood(
        &hospital,
        &mut legit,
        held,
        args.seconds,
        Duration::from_millis(args.every_ms),
    )
    .await?;
    let refused_at_accept: f64 = ["address-at-capacity", "handshake-rate"]
        .iter()
        .map(|cause| {
            hospital.collector.metrics().value(
                "medledger_collector_connections_refused_total",
                &[("cause", cause)],
            )
        })
        .sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let q = |list: &[Duration], p: f64| ms(load::quantile(list, p));
    let p99_ratio = q(&f.during, 0.99) / q(&f.before, 0.99);
    println!();
    println!(
        "Legitimate devices ({}), one reading per request on keep-alive connections:",
        f.devices
    );
    println!("| phase | requests | p50 | p99 | max | failed |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |phase: &str, list: &[Duration], failed: u64| {
        println!(
            "| {phase} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {failed} |",
            list.len(),
            q(list, 0.5),
            q(list, 0.99),
            list.last().map_or(0.0, |d| ms(*d))
        );
    };
    row("before the flood", &f.before, f.failed_before);
    row("during the flood", &f.during, f.failed_during);
    println!("  p99 during / before: {p99_ratio:.2}");
    println!();
    println!("The flood, for {} s:", args.seconds);
    println!(
        "  connections held open at once (idle + slowloris): {} at most; idle ones closed by the collector and reopened: {}",
        f.held.peak, f.held.idle_closed
    );
    println!(
        "  slowloris connections closed: {}",
        f.held.slowloris_closed
    );
    println!(
        "  connections refused at accept by the per-address limits (the address then shut out in the kernel for 1 s): {refused_at_accept}"
    );
    println!(
        "  handshakes with a foreign CA's certificate: {} refused, {} accepted",
        f.held.handshakes_refused, f.held.handshakes_accepted
    );
    println!("  2 MiB bodies answered 413: {}", f.held.oversized_refused);
    println!(
        "  resident memory of the process: {:.0} MiB before, {:.0} MiB at most",
        f.rss_before_kib as f64 / 1024.0,
        f.rss_peak_kib as f64 / 1024.0
    );
    println!(
        "  a new legitimate connection afterwards: {}",
        if f.up_after {
            "202, the collector is up"
        } else {
            "FAILED"
        }
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "devices": f.devices,
            "idle": args.idle,
            "seconds": args.seconds,
            "before": { "requests": f.before.len(), "p50_ms": q(&f.before, 0.5), "p99_ms": q(&f.before, 0.99) },
            "failed_before": f.failed_before,
            "during": { "requests": f.during.len(), "p50_ms": q(&f.during, 0.5), "p99_ms": q(&f.during, 0.99), "failed": f.failed_during },
            "p99_during_over_before": p99_ratio,
            "refused_at_accept": refused_at_accept,
            "connections_peak": f.held.peak,
            "idle_closed": f.held.idle_closed,
            "slowloris_closed": f.held.slowloris_closed,
            "handshakes_refused": f.held.handshakes_refused,
            "handshakes_accepted": f.held.handshakes_accepted,
            "oversized_refused": f.held.oversized_refused,
            "rss_before_kib": f.rss_before_kib,
            "rss_peak_kib": f.rss_peak_kib,
            "up_after": f.up_after,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !f.up_after || f.held.handshakes_accepted > 0 {
        anyhow::bail!("the collector did not hold");
    }
    Ok(())
}

/// Draws a progress bar on stderr until `done` reaches `total`, if stderr
/// is a terminal.
fn progress(label: &'static str, done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    use std::io::IsTerminal;
    let shown = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        loop {
            if !shown {
                return;
            }
            let n = done.load(Ordering::Relaxed).min(total);
            let filled = (n * 30).checked_div(total).unwrap_or(30) as usize;
            eprint!(
                "\r  {label:<28} [{}{}] {n}/{total}",
                "#".repeat(filled),
                "-".repeat(30 - filled)
            );
            let _ = std::io::stderr().flush();
            if n >= total {
                eprintln!();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

impl Alg {
    fn key_alg(self) -> KeyAlg {
        match self {
            Alg::P256 => KeyAlg::P256,
            Alg::Ed25519 => KeyAlg::Ed25519,
        }
    }
}

async fn ingest(args: IngestArgs) -> Result<()> {
    if args.mode == Mode::Network {
        let load = crate::network::Load {
            database: args.database.context("--mode network needs --database")?,
            servers: args.servers,
            collectors: args.collectors,
            devices: args.sustained_devices,
            batch: args.batch,
            rounds: args.rounds,
            kill: args.kill_server,
            lease_ms: args.lease_ms,
        };
        return crate::network::bench(&load, args.json.as_deref()).await;
    }
    if args.mode != Mode::InProcess {
        return ingest_apart(args).await;
    }
    let key_alg = args.alg.key_alg();
    let mut options = Options::default();
    // The per-device rate limit is not what is measured here.
    options.limits.device_rate_per_s = 1e9;
    options.limits.device_burst = 1e9;
    options.limits.max_readings_per_request = args.batch.max(1);
    options.forward_over_tls = args.over_tls;
    eprintln!("medledger bench ingest: starting a hospital in this process");
    let hospital = Hospital::start(options).await?;
    let burst_max = args.devices.iter().copied().max().unwrap_or(0);
    let total = burst_max + args.sustained_devices;
    let registered = Arc::new(AtomicU64::new(0));
    let bar = progress("registering devices", registered.clone(), total as u64);
    let mut devices = Vec::with_capacity(total);
    for serial in 1..=total as u64 {
        devices.push(hospital.device_with(serial, key_alg).await?);
        registered.fetch_add(1, Ordering::Relaxed);
    }
    bar.await?;

    let mut bursts: Vec<Burst> = Vec::new();
    for &n in &args.devices {
        eprint!("  burst of {n:<5} devices ...");
        let b = load::burst(&hospital, &mut devices[..n]).await?;
        eprintln!(
            " acknowledged {:.3} s, anchored {:.3} s",
            b.acknowledged.as_secs_f64(),
            b.anchored.as_secs_f64()
        );
        bursts.push(b);
    }

    let verification =
        load::p256_verification(&mut hospital.issue_device(u64::MAX >> 40, KeyAlg::P256)?)?;
    let sustained_total = (args.sustained_devices * args.batch * args.rounds) as u64;
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress("sustained (keep-alive)", done.clone(), sustained_total);
    let s = load::sustained(
        &hospital,
        &mut devices[burst_max..],
        args.batch,
        args.rounds,
        done,
    )
    .await?;
    bar.await?;

    print_table(&bursts, &s, args.alg);
    let forwarding = if args.over_tls {
        "collector and server in one process, forwarding over mutual TLS, every reading verified by both"
    } else {
        "collector and server in one process, batches handed over in memory, every reading verified once"
    };
    let ratio = s.cpu_per_reading().as_secs_f64() / verification.as_secs_f64();
    println!(
        "  CPU per reading: {:.1} µs (user+system of this whole process: {forwarding}; the load generator's TLS included)",
        s.cpu_per_reading().as_secs_f64() * 1e6
    );
    println!(
        "  one P-256 verification, timed in this run: {:.1} µs; CPU per reading = {ratio:.2} verifications",
        verification.as_secs_f64() * 1e6
    );
    println!();
    println!("Where the server's time went (all batches):");
    println!("| stage | seconds |");
    println!("|---|---:|");
    for line in hospital.server.metrics().render().lines() {
        let Some(rest) = line.strip_prefix("medledger_server_stage_seconds_sum{stage=\"") else {
            continue;
        };
        if let Some((stage, seconds)) = rest.split_once("\"} ") {
            let seconds: f64 = seconds.parse().unwrap_or(f64::NAN);
            println!("| {stage} | {seconds:.3} |");
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "alg": format!("{:?}", args.alg),
            "bursts": bursts.iter().map(|b| serde_json::json!({
                "devices": b.devices,
                "acknowledged_s": b.acknowledged.as_secs_f64(),
                "anchored_s": b.anchored.as_secs_f64(),
                "seed_s": SEED.iter().find(|(n, _)| *n == b.devices).map(|(_, t)| *t),
            })).collect::<Vec<_>>(),
            "sustained": {
                "devices": s.devices,
                "batch": s.batch,
                "readings": s.readings,
                "seconds": s.elapsed.as_secs_f64(),
                "acknowledged_per_s": s.rate(),
                "stored_s": s.stored.as_secs_f64(),
                "stored_per_s": s.stored_rate(),
                "over_tls": args.over_tls,
                "cpu_per_reading_us": s.cpu_per_reading().as_secs_f64() * 1e6,
                "p256_verification_us": verification.as_secs_f64() * 1e6,
                "cpu_per_reading_in_verifications": ratio,
            },
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_table(bursts: &[Burst], s: &Sustained, alg: Alg) {
    println!();
    println!("Simultaneous devices, each on a new mTLS connection, one {alg:?} reading each:");
    println!("| devices | acknowledged (durable) | anchored on chain | seed prototype |");
    println!("|---:|---:|---:|---:|");
    for b in bursts {
        let seed = SEED
            .iter()
            .find(|(n, _)| *n == b.devices)
            .map_or("-".to_owned(), |(_, t)| format!("{t:.2} s"));
        println!(
            "| {} | {:.3} s | {:.3} s | {seed} |",
            b.devices,
            b.acknowledged.as_secs_f64(),
            b.anchored.as_secs_f64()
        );
    }
    println!();
    println!(
        "Sustained: {} devices on keep-alive connections, {} readings per request, {} readings:",
        s.devices, s.batch, s.readings
    );
    println!(
        "  acknowledged by the collector in {:.2} s = {:.0} readings/s",
        s.elapsed.as_secs_f64(),
        s.rate()
    );
    println!(
        "  stored by the server in {:.2} s = {:.0} readings/s (through collector and server)",
        s.stored.as_secs_f64(),
        s.stored_rate()
    );
}

/// Where `bench ingest --mode up|split` keeps the roles' output.
const LOGS: &str = "bench";

/// `bench ingest --mode up|split`: a sustained run against a `medledger
/// up` directory whose roles run in processes of their own, the load
/// generator (this process) beside them; CPU read per process.
async fn ingest_apart(args: IngestArgs) -> Result<()> {
    use crate::apart::{self, ROLES, Roles, cpu_of, free_local};
    use medledger_storage::sqlx::Row;
    let temp = tempfile::tempdir()?;
    let d = temp.path();
    let addrs = [free_local()?, free_local()?, free_local()?];
    eprintln!("medledger bench ingest: initialising a `medledger up` directory");
    let mut up = apart::start_up(d, LOGS, addrs).await?;
    let mut roles = Roles::new(d, LOGS, addrs)?;
    let rpc = format!("http://{}", addrs[0]);
    let admin = crate::roles::load_signer(&d.join("people/admin.eth.key"))?;
    let contracts =
        crate::roles::contracts(&rpc, &roles.state.registry.to_string(), admin, None).await?;
    eprintln!(
        "  registering {} devices and their patient",
        args.sustained_devices
    );
    let kinds: Vec<medledger_sim::signals::Kind> = medledger_sim::signals::KINDS
        .iter()
        .filter(|k| args.kind == "all" || k.group == args.kind)
        .copied()
        .collect();
    if kinds.is_empty() {
        anyhow::bail!(
            "--kind {}: not a device kind; one of all, {}",
            args.kind,
            medledger_sim::signals::KINDS
                .iter()
                .map(|k| k.group)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let simulated = crate::simulate::prepare(
        d,
        &contracts,
        args.sustained_devices,
        &kinds,
        args.alg.key_alg(),
    )
    .await?;
    up.kill()?;
    up.wait()?;
    // The per-device rate limit is not what is measured here.
    apart::unlimit_collector(&d.join("collector.toml"), args.batch)?;
    let processes: Vec<(&str, u32)> = match args.mode {
        Mode::Up => {
            up = apart::start_up(d, LOGS, addrs).await?;
            vec![("up (chain, server, collector)", up.id())]
        }
        _ => {
            roles.start_all().await?;
            (0..ROLES.len())
                .filter_map(|r| Some((ROLES[r], roles.child(r)?.id())))
                .collect()
        }
    };

    // Every reading signed before the clock starts.
    let root = medledger_pki::Ca::open(&d.join("ca"))?.root_cert_der()?;
    let verification = load::p256_verification(&mut medledger_sim::Device::issue(
        &medledger_pki::Ca::open(&d.join("ca"))?,
        u64::MAX >> 40,
        "bench",
        KeyAlg::P256,
    )?)?;
    let mut prepared = Vec::with_capacity(simulated.devices.len());
    for (n, (mut device, kind)) in simulated.devices.into_iter().enumerate() {
        let bodies = apart::signed_bodies(&mut device, &kind, n as u64, args.rounds, args.batch);
        let config = medledger_pki::client_config(
            Some(&device.credentials()),
            &root,
            &[medledger_pki::Role::Collector],
        )?;
        let conn =
            medledger_pki::https::Connection::open(config, &addrs[2].to_string(), "localhost")
                .await
                .context("connecting a device")?;
        prepared.push((conn, bodies));
    }
    let readings = (prepared.len() * args.batch * args.rounds) as u64;

    let cpu = |pid: u32| cpu_of(pid).unwrap_or_default();
    let before: Vec<Duration> = processes.iter().map(|(_, pid)| cpu(*pid)).collect();
    let generator_before = load::cpu_time();
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress("sustained (keep-alive)", done.clone(), readings);
    let start = std::time::Instant::now();
    load::send_all(prepared, args.batch as u64, done).await?;
    let acknowledged = start.elapsed();
    bar.await?;
    apart::drain(&d.join("collector"), Duration::from_millis(2)).await?;
    let stored = start.elapsed();
    let used: Vec<Duration> = processes
        .iter()
        .zip(&before)
        .map(|((_, pid), b)| cpu(*pid).saturating_sub(*b))
        .collect();
    let generator = load::cpu_time().saturating_sub(generator_before);
    roles.kill_all()?;
    if args.mode == Mode::Up {
        up.kill()?;
        up.wait()?;
    }
    // Every reading acknowledged is stored: counted in the server's index.
    let db =
        crate::roles::open_db(None, &d.join("server"), medledger_storage::Part::Server).await?;
    let stored_rows: i64 =
        medledger_storage::sqlx::query("SELECT COUNT(*) AS n FROM ingest_readings")
            .fetch_one(db.pool())
            .await?
            .try_get("n")?;
    if u64::try_from(stored_rows).unwrap_or(0) != readings {
        anyhow::bail!(
            "{readings} readings were acknowledged but the server stored {stored_rows}; the roles' output is in {}",
            d.join(LOGS).display()
        );
    }

    let per_reading = |t: Duration| t.as_secs_f64() * 1e6 / readings.max(1) as f64;
    let unit = verification.as_secs_f64() * 1e6;
    let total: Duration = used.iter().sum();
    println!(
        "\nSustained, {:?} devices of kind {}, mode {:?}: {} devices x {} requests of {} readings, keep-alive",
        args.alg, args.kind, args.mode, args.sustained_devices, args.rounds, args.batch
    );
    println!(
        "  {readings} readings acknowledged in {:.2} s ({:.0}/s), stored (the collector's outbox empty) in {:.2} s ({:.0}/s)",
        acknowledged.as_secs_f64(),
        readings as f64 / acknowledged.as_secs_f64(),
        stored.as_secs_f64(),
        readings as f64 / stored.as_secs_f64()
    );
    println!("  one P-256 verification, timed in this run: {unit:.1} µs");
    println!();
    println!("| process | CPU s | CPU per reading, µs | in P-256 verifications |");
    println!("|---|---:|---:|---:|");
    for ((name, _), t) in processes.iter().zip(&used) {
        println!(
            "| {name} | {:.2} | {:.1} | {:.2} |",
            t.as_secs_f64(),
            per_reading(*t),
            per_reading(*t) / unit
        );
    }
    println!(
        "| **medledger, all processes** | {:.2} | {:.1} | **{:.2}** |",
        total.as_secs_f64(),
        per_reading(total),
        per_reading(total) / unit
    );
    println!(
        "| load generator (this process: devices' TLS, outbox polling) | {:.2} | {:.1} | {:.2} |",
        generator.as_secs_f64(),
        per_reading(generator),
        per_reading(generator) / unit
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "alg": format!("{:?}", args.alg),
            "mode": format!("{:?}", args.mode),
            "kind": args.kind,
            "readings": readings,
            "stored": stored_rows,
            "acknowledged_per_s": readings as f64 / acknowledged.as_secs_f64(),
            "stored_per_s": readings as f64 / stored.as_secs_f64(),
            "p256_verification_us": unit,
            "processes": processes.iter().zip(&used).map(|((name, _), t)| serde_json::json!({
                "process": name,
                "cpu_s": t.as_secs_f64(),
                "cpu_per_reading_us": per_reading(*t),
            })).collect::<Vec<_>>(),
            "cpu_per_reading_us": per_reading(total),
            "cpu_per_reading_in_verifications": per_reading(total) / unit,
            "load_generator_cpu_per_reading_us": per_reading(generator),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
