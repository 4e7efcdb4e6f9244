//! The load generators behind `medledger bench`.
//!
//! Every reading is signed, and every client configuration built, before
//! the clock starts: the figures measure the system, not the generator.
//!
//! - [`burst`]: the published prototype's experiment (`bench ingest`):
//!   N devices each open a new mTLS
//!   connection and send one reading at the same moment; how long until
//!   all are acknowledged durably, and until all are anchored on chain;
//! - [`sustained`]: devices on keep-alive connections send batches as
//!   fast as they are acknowledged, for a while; readings per second;
//! - [`access`]: an assigned nurse's request, then the read (`bench access`);
//! - [`flood`], [`hold`], [`attack`]: legitimate devices measured while
//!   another process floods the collector (`bench flood`, `bench hold`).

/// Readings as a batch request body (where `medledger bench` finds it).
pub use crate::device::cbor_array;
use crate::device::{Readings, Wait, post_readings};
use crate::{Device, Hospital};
use anyhow::{Context, Result, bail};
use medledger_pki::Role;
use medledger_pki::https::Connection;
use medledger_protocol::reading_hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a burst measured.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// Devices, one reading each.
    pub devices: usize,
    /// Until every 202 had arrived.
    pub acknowledged: Duration,
    /// Until every reading's batch root was anchored on chain.
    pub anchored: Duration,
}

/// N devices, a new connection each, one reading each, all at once.
pub async fn burst(hospital: &Hospital, devices: &mut [Device]) -> Result<Burst> {
    let addr = hospital.collector.addr().to_string();
    let mut prepared = Vec::with_capacity(devices.len());
    for device in devices.iter_mut() {
        let config = hospital.client_config(&device.credentials(), Role::Collector)?;
        prepared.push((config, device.heart_rate(72.0)));
    }
    let hashes: Vec<[u8; 32]> = prepared.iter().map(|(_, r)| reading_hash(r)).collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (config, reading) in prepared {
        let addr = addr.clone();
        tasks.spawn(async move {
            let mut conn = Connection::open(config, &addr, "localhost").await?;
            let reply = post_readings(&mut conn, Readings::One(reading), Wait::Stored).await?;
            anyhow::Ok(reply)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let reply = done??;
        if reply.status != 202 {
            bail!(
                "a reading was refused: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    let acknowledged = start.elapsed();
    let deadline = start + Duration::from_secs(120);
    loop {
        let anchored = hospital.server.anchored_count(&hashes).await?;
        if anchored == hashes.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{anchored} of {} readings anchored after 120 s",
                hashes.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Burst {
        devices: devices.len(),
        acknowledged,
        anchored: start.elapsed(),
    })
}

/// What a sustained run measured.
#[derive(Debug, Clone, Copy)]
pub struct Sustained {
    /// Devices sending.
    pub devices: usize,
    /// Readings per request.
    pub batch: usize,
    /// Readings acknowledged.
    pub readings: u64,
    /// Until the last was acknowledged by the collector.
    pub elapsed: Duration,
    /// Until the last was stored by the server.
    pub stored: Duration,
    /// CPU time (user and system) this whole process used meanwhile:
    /// collector, server, chain and the load generator's TLS.
    pub cpu: Duration,
}

impl Sustained {
    /// Acknowledged readings per second.
    pub fn rate(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }

    /// Readings per second through collector and server.
    pub fn stored_rate(&self) -> f64 {
        self.readings as f64 / self.stored.as_secs_f64()
    }

    /// CPU time per reading stored.
    pub fn cpu_per_reading(&self) -> Duration {
        self.cpu
            .checked_div(u32::try_from(self.readings).unwrap_or(u32::MAX).max(1))
            .unwrap_or_default()
    }
}

/// The CPU time (user and system, every thread) this process has used.
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// The time of one ECDSA P-256 verification of a signed reading here and
/// now (the unit the ingest path's CPU is measured in): the median of
/// several rounds' means, so that a moment of noise on a shared machine
/// does not move it.
pub fn p256_verification(device: &mut Device) -> Result<Duration> {
    const ROUNDS: usize = 9;
    const PER_ROUND: u32 = 300;
    let key = device.key.verifying_key();
    let signed = medledger_protocol::SignedReading::decode(&device.heart_rate(72.0))?;
    signed.verify(&key)?;
    let mut means = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            std::hint::black_box(signed.verify(std::hint::black_box(&key))?);
        }
        means.push(start.elapsed() / PER_ROUND);
    }
    means.sort_unstable();
    Ok(means[ROUNDS / 2])
}

/// Each device sends `rounds` requests of `batch` readings on its own
/// keep-alive connection, each after the previous was acknowledged.
/// `progress` counts acknowledged readings as they come.
pub async fn sustained(
    hospital: &Hospital,
    devices: &mut [Device],
    batch: usize,
    rounds: usize,
    progress: Arc<AtomicU64>,
) -> Result<Sustained> {
    let addr = hospital.collector.addr().to_string();
    let mut prepared = Vec::with_capacity(devices.len());
    for device in devices.iter_mut() {
        let config = hospital.client_config(&device.credentials(), Role::Collector)?;
        let bodies: Vec<Vec<u8>> = (0..rounds)
            .map(|_| {
                let readings: Vec<Vec<u8>> = (0..batch).map(|_| device.heart_rate(72.0)).collect();
                cbor_array(&readings)
            })
            .collect();
        let conn = Connection::open(config, &addr, "localhost")
            .await
            .context("connecting a device")?;
        prepared.push((conn, bodies));
    }
    let stored_before = stored(hospital);
    let cpu_before = cpu_time();
    let start = Instant::now();
    send_all(prepared, batch as u64, progress).await?;
    let elapsed = start.elapsed();
    let readings = (devices.len() * batch * rounds) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored(hospital) - stored_before < readings as f64 {
        if Instant::now() > deadline {
            bail!("the server had not stored every reading after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Sustained {
        devices: devices.len(),
        batch,
        readings,
        elapsed,
        stored: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu_before),
    })
}

/// Sends each connection's bodies (CBOR arrays of `per_body` readings)
/// one after another, each once the previous was acknowledged (202), all
/// connections at once; returns when every body was. `progress` counts
/// acknowledged readings.
pub async fn send_all(
    prepared: Vec<(Connection, Vec<Vec<u8>>)>,
    per_body: u64,
    progress: Arc<AtomicU64>,
) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, bodies) in prepared {
        let progress = progress.clone();
        tasks.spawn(async move {
            for body in bodies {
                let reply = post_readings(&mut conn, Readings::Batch(body), Wait::Stored).await?;
                if reply.status != 202 {
                    bail!(
                        "a batch was refused: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
                progress.fetch_add(per_body, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Readings the server has stored so far.
fn stored(hospital: &Hospital) -> f64 {
    hospital.server.metrics().value(
        "medledger_server_readings_total",
        &[("outcome", "stored"), ("cause", "")],
    )
}

/// What [`access`] measured: one duration per access, sorted.
#[derive(Debug, Clone)]
pub struct Access {
    /// Readings the patient had.
    pub readings: usize,
    /// From sending `AccessLog.requestAccess` to its mined decision.
    pub decided: Vec<Duration>,
    /// From the decision to the decrypted FHIR Bundle in hand.
    pub served: Vec<Duration>,
    /// The whole access: request to decrypted data.
    pub total: Vec<Duration>,
}

/// The `q` quantile (0 to 1) of sorted durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An assigned nurse asks for access `n` times and reads the patient's
/// records each time, on one keep-alive connection; the patient first gets
/// `readings` heart rates. `done` counts accesses.
pub async fn access(
    hospital: &Hospital,
    readings: usize,
    n: usize,
    done: Arc<AtomicU64>,
) -> Result<Access> {
    let mut device = hospital.device(1_000_000).await?;
    let mut conn = hospital.connect(&device).await?;
    for start in (0..readings).step_by(100) {
        let batch: Vec<Vec<u8>> = (start..readings.min(start + 100))
            .map(|i| device.heart_rate(60.0 + (i % 40) as f64))
            .collect();
        let reply = post_readings(&mut conn, Readings::batch(&batch), Wait::Committed).await?;
        if reply.status != 202 {
            bail!(
                "the collector answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    let nurse = hospital.staff(Role::Nurse, true).await?;
    let mut server = hospital.to_server(&nurse.credentials()).await?;
    let scope = medledger_contracts::Scope::ALL;
    let mut result = Access {
        readings,
        decided: Vec::with_capacity(n),
        served: Vec::with_capacity(n),
        total: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let start = Instant::now();
        let decision = nurse
            .contracts
            .request_access(hospital.patient_ref, scope, "TREAT")
            .await?;
        if !decision.granted() {
            bail!("the assigned nurse was denied: {decision:?}");
        }
        let decided = start.elapsed();
        let reply = server
            .request(
                "GET",
                &format!("/v1/records?request={}", decision.id),
                &[],
                vec![],
            )
            .await?;
        let bundle: serde_json::Value =
            serde_json::from_slice(&reply.body).context("the records answer")?;
        let observations = bundle["entry"].as_array().map_or(0, Vec::len);
        if reply.status != 200 || observations != readings {
            bail!(
                "the read answered {} with {observations} observations, not {readings}",
                reply.status
            );
        }
        let total = start.elapsed();
        result.decided.push(decided);
        result.served.push(total - decided);
        result.total.push(total);
        done.fetch_add(1, Ordering::Relaxed);
    }
    for list in [&mut result.decided, &mut result.served, &mut result.total] {
        list.sort_unstable();
    }
    Ok(result)
}

/// One legitimate device's requests in each phase of [`flood`].
#[derive(Debug, Default)]
struct Phases {
    before: Vec<Duration>,
    during: Vec<Duration>,
    failed_before: u64,
    failed_during: u64,
}

/// What [`flood`] measured.
#[derive(Debug, Clone)]
pub struct Flood {
    /// Legitimate devices sending throughout.
    pub devices: usize,
    /// Latency of each legitimate request before the flood, and during it.
    pub before: Vec<Duration>,
    /// See `before`.
    pub during: Vec<Duration>,
    /// Legitimate requests that failed or were refused before the flood,
    /// and during it.
    pub failed_before: u64,
    /// See `failed_before`.
    pub failed_during: u64,
    /// What the flood did.
    pub held: Held,
    /// Resident memory of this whole process (chain, server, collector and
    /// the legitimate devices), before and at its highest during the flood, in KiB.
    pub rss_before_kib: u64,
    /// See `rss_before_kib`.
    pub rss_peak_kib: u64,
    /// Whether a fresh legitimate connection got a 202 after the flood.
    pub up_after: bool,
}

/// This process's resident memory in KiB (Linux), or 0.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What [`hold`] did against a collector.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Held {
    /// Connections open at once, at most.
    pub peak: u64,
    /// Idle connections the collector closed (and the flooder reopened).
    pub idle_closed: u64,
    /// Slowloris connections the collector closed.
    pub slowloris_closed: u64,
    /// Handshakes with a certificate from another CA, refused...
    pub handshakes_refused: u64,
    /// ...and accepted (must be 0).
    pub handshakes_accepted: u64,
    /// Oversized bodies answered 413.
    pub oversized_refused: u64,
}

/// The loopback address floods come from, so that the collector's
/// per-address limits tell them from the legitimate devices (127.0.0.1).
pub const FLOOD_FROM: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// How long a flooder waits before reopening a connection the collector
/// closed at once.
const REFUSED_PAUSE: Duration = Duration::from_millis(100);

/// The TLS clients of [`hold`]'s attacks besides holding connections.
#[derive(Debug, Clone)]
pub struct Attackers {
    /// Presents a certificate from another CA: each handshake is refused.
    pub foreign: Arc<rustls::ClientConfig>,
    /// A registered device that posts 2 MiB bodies.
    pub device: Arc<rustls::ClientConfig>,
}

/// Holds `idle` idle TCP connections and `slow` slowloris connections (a
/// TLS record trickled a byte every 200 ms) to `addr` for `time`, from
/// [`FLOOD_FROM`], reopening each one the collector closes. Fills in the
/// connection counts of [`Held`].
pub async fn hold(addr: &str, idle: usize, slow: usize, time: Duration) -> Held {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = || Arc::new(AtomicU64::new(0));
    let (open, peak, idle_closed, slow_closed) = (counter(), counter(), counter(), counter());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..idle + slow {
        let slow = i >= idle;
        let (addr, stop, open, peak) = (addr.to_owned(), stop.clone(), open.clone(), peak.clone());
        let closed = if slow {
            slow_closed.clone()
        } else {
            idle_closed.clone()
        };
        tasks.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = medledger_pki::https::connect_from(&addr, Some(FLOOD_FROM)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let opened = Instant::now();
                let now = open.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                if slow {
                    for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01].iter().cycle() {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                } else {
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf).await;
                }
                open.fetch_sub(1, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
                // Closed at once (refused at accept): the flooder comes
                // back 100 ms later rather than spinning.
                if opened.elapsed() < REFUSED_PAUSE {
                    tokio::time::sleep(REFUSED_PAUSE).await;
                }
            }
        });
    }
    run_for(time, &stop, tasks).await;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Held {
        peak: get(&peak),
        idle_closed: get(&idle_closed),
        slowloris_closed: get(&slow_closed),
        ..Held::default()
    }
}

/// For `time`, 4 loops make handshakes with `addr` as `attackers.foreign`
/// and 2 loops post 2 MiB bodies as `attackers.device`, from
/// [`FLOOD_FROM`]. Fills in the handshake and body counts of [`Held`].
pub async fn attack(addr: &str, attackers: &Attackers, time: Duration) -> Held {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = || Arc::new(AtomicU64::new(0));
    let (refused, accepted, oversized) = (counter(), counter(), counter());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, stop, foreign) = (addr.to_owned(), stop.clone(), attackers.foreign.clone());
        let (refused, accepted) = (refused.clone(), accepted.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match Connection::open_from(foreign.clone(), &addr, "localhost", Some(FLOOD_FROM))
                    .await
                {
                    Ok(mut conn) => {
                        // TLS 1.3 may report the refusal on first use.
                        match conn.request("GET", "/v1/readings", &[], vec![]).await {
                            Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let huge = vec![0u8; 2 * 1024 * 1024];
    for _ in 0..2 {
        let (addr, stop, device, oversized, huge) = (
            addr.to_owned(),
            stop.clone(),
            attackers.device.clone(),
            oversized.clone(),
            huge.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) =
                    Connection::open_from(device.clone(), &addr, "localhost", Some(FLOOD_FROM))
                        .await
                else {
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    // Oversized on purpose: written by hand, not with
                    // `post_readings`.
                    match conn
                        .request(
                            "POST",
                            "/v1/readings",
                            &[("content-type", "application/cbor")],
                            huge.clone(),
                        )
                        .await
                    {
                        Ok(r) if r.status == 413 => {
                            oversized.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
            }
        });
    }
    run_for(time, &stop, tasks).await;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Held {
        handshakes_refused: get(&refused),
        handshakes_accepted: get(&accepted),
        oversized_refused: get(&oversized),
        ..Held::default()
    }
}

/// Lets `tasks` run for `time`, then tells them to stop and waits until
/// they have.
async fn run_for(
    time: Duration,
    stop: &std::sync::atomic::AtomicBool,
    mut tasks: tokio::task::JoinSet<()>,
) {
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Legitimate devices send one reading each every `every` on their own
/// keep-alive connection for `seconds`, then again for `seconds` while
/// `held` floods the collector ([`hold`], in another process: both ends of
/// a connection in one process count twice against its open files, and
/// the attacker's own work is not the collector's).
pub async fn flood(
    hospital: &Hospital,
    legit: &mut [Device],
    held: impl std::future::Future<Output = Result<Held>>,
    seconds: u64,
    every: Duration,
) -> Result<Flood> {
    if legit.is_empty() {
        bail!("a flood needs at least one legitimate device");
    }
    let addr = hospital.collector.addr().to_string();
    let per_phase = (seconds as u128 * 1000 / every.as_millis().max(1)) as usize;
    let mut senders = Vec::with_capacity(legit.len());
    for device in legit.iter_mut() {
        let config = hospital.client_config(&device.credentials(), Role::Collector)?;
        let readings: Vec<Vec<u8>> = (0..2 * per_phase)
            .map(|_| device.heart_rate(72.0))
            .collect();
        senders.push((config, readings));
    }
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut legit_tasks = tokio::task::JoinSet::new();
    for (config, readings) in senders {
        let (addr, flooding) = (addr.clone(), flooding.clone());
        legit_tasks.spawn(async move {
            let mut conn = Connection::open(config.clone(), &addr, "localhost").await?;
            let mut r = Phases::default();
            let mut next = Instant::now();
            for reading in readings {
                tokio::time::sleep_until(next.into()).await;
                next += every;
                let in_flood = flooding.load(Ordering::Relaxed);
                let start = Instant::now();
                let reply = post_readings(&mut conn, Readings::One(reading), Wait::Stored).await;
                let took = start.elapsed();
                let acknowledged = reply.as_ref().is_ok_and(|r| r.status == 202);
                let (times, failed) = if in_flood {
                    (&mut r.during, &mut r.failed_during)
                } else {
                    (&mut r.before, &mut r.failed_before)
                };
                if acknowledged {
                    times.push(took);
                } else {
                    *failed += 1;
                    if reply.is_err() {
                        conn = Connection::open(config.clone(), &addr, "localhost").await?;
                    }
                }
            }
            anyhow::Ok(r)
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let rss_before_kib = rss_kib();
    flooding.store(true, Ordering::Relaxed);

    let mut rss_peak_kib = rss_before_kib;
    let mut legit_results = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut held = std::pin::pin!(held);
    let mut connections = None;
    while legit_results.len() < legit.len() || connections.is_none() {
        tokio::select! {
            _ = ticker.tick() => rss_peak_kib = rss_peak_kib.max(rss_kib()),
            done = legit_tasks.join_next(), if legit_results.len() < legit.len() => match done {
                Some(r) => legit_results.push(r??),
                None => break,
            },
            h = &mut held, if connections.is_none() => connections = Some(h?),
        }
    }
    let held = connections.unwrap_or_default();

    let mut fresh = Connection::open(
        hospital.client_config(&legit[0].credentials(), Role::Collector)?,
        &addr,
        "localhost",
    )
    .await?;
    let up_after = post_readings(
        &mut fresh,
        Readings::One(legit[0].heart_rate(72.0)),
        Wait::Stored,
    )
    .await
    .is_ok_and(|r| r.status == 202);
    let (mut before, mut during, mut failed_before, mut failed_during) =
        (Vec::new(), Vec::new(), 0, 0);
    for r in legit_results {
        before.extend(r.before);
        during.extend(r.during);
        failed_before += r.failed_before;
        failed_during += r.failed_during;
    }
    before.sort();
    during.sort();
    Ok(Flood {
        devices: legit.len(),
        before,
        during,
        failed_before,
        failed_during,
        held,
        rss_before_kib,
        rss_peak_kib,
        up_after,
    })
}
