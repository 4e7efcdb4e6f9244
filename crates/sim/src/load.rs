//! The load generator behind `medledger bench ingest`.
//!
//! Every reading is signed, and every client configuration built, before
//! the clock starts: the figures measure the system, not the generator.
//!
//! - [`burst`]: the seed experiment: N devices each open a new mTLS
//!   connection and send one reading at the same moment; how long until
//!   all are acknowledged durably, and until all are anchored on chain;
//! - [`sustained`]: devices on keep-alive connections send batches as
//!   fast as they are acknowledged, for a while; readings per second.

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
            let reply = conn
                .request(
                    "POST",
                    "/v1/readings",
                    &[("content-type", "application/cose")],
                    reading,
                )
                .await?;
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
        let anchored = hospital
            .server
            .anchored_count(&hashes)
            .await
            .map_err(anyhow::Error::msg)?;
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
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, bodies) in prepared {
        let progress = progress.clone();
        tasks.spawn(async move {
            for body in bodies {
                let reply = conn
                    .request(
                        "POST",
                        "/v1/readings",
                        &[("content-type", "application/cbor")],
                        body,
                    )
                    .await?;
                if reply.status != 202 {
                    bail!(
                        "a batch was refused: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
                progress.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
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
    })
}

/// Readings the server has stored so far.
fn stored(hospital: &Hospital) -> f64 {
    hospital.server.metrics().value(
        "medledger_server_readings_total",
        &[("outcome", "stored"), ("cause", "")],
    )
}

/// Readings as a batch request body: a CBOR array of COSE_Sign1 bytes.
pub(crate) fn cbor_array(readings: &[Vec<u8>]) -> Vec<u8> {
    medledger_protocol::cbor::encode_with(|e| {
        e.array(readings.len());
        for r in readings {
            e.bytes(r);
        }
    })
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
        let reply = conn
            .request(
                "POST",
                "/v1/readings?wait=committed",
                &[("content-type", "application/cbor")],
                cbor_array(&batch),
            )
            .await?;
        if reply.status != 202 {
            bail!(
                "the collector answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    let nurse = hospital.staff(Role::Nurse, true).await?;
    let mut server = hospital
        .open(
            &nurse.credentials(),
            Role::Server,
            &hospital.server.addr().to_string(),
        )
        .await?;
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
            .request_access(hospital.patient_ref, scope, "treatment")
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
