//! `medledger bench ingest` (the seed experiment and a sustained run) and
//! `medledger bench access` (request to decrypted data), against a
//! hospital in this process (`medledger_sim`).

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

/// The seed prototype's times for 10, 100 and 1000 simultaneous requests.
const SEED: &[(usize, f64)] = &[(10, 5.72), (100, 10.81), (1000, 30.25)];

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Readings from devices through collector and server to the chain.
    Ingest(IngestArgs),
    /// Staff access: the request on chain, then the decrypted records.
    Access(AccessArgs),
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

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
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
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn run(command: BenchCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match command {
        BenchCommand::Ingest(args) => runtime.block_on(ingest(args)),
        BenchCommand::Access(args) => runtime.block_on(access(args)),
    }
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

/// Draws a progress bar on stderr until `done` reaches `total`.
fn progress(label: &'static str, done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
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

async fn ingest(args: IngestArgs) -> Result<()> {
    let key_alg = match args.alg {
        Alg::P256 => KeyAlg::P256,
        Alg::Ed25519 => KeyAlg::Ed25519,
    };
    let mut options = Options::default();
    // The per-device rate limit is not what is measured here.
    options.limits.device_rate_per_s = 1e9;
    options.limits.device_burst = 1e9;
    options.limits.max_readings_per_request = args.batch.max(1);
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
    println!();
    println!("Where the server's time went (seconds, all batches):");
    for line in hospital.server.metrics().render().lines() {
        if let Some(rest) = line.strip_prefix("medledger_server_stage_seconds_sum") {
            println!("  {rest}");
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
