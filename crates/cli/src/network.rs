//! The hospital network of `deploy/network/run.sh`, run by `medledger bench
//! ingest --mode network`: the script (built into this binary, so the bench
//! runs what operators run) sets a directory up and starts the chain, the
//! servers and the collectors in processes of their own, each from its
//! TOML file, and says where they listen in `DIR/network.env`.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `deploy/network/run.sh`.
const SCRIPT: &str = include_str!("../../../deploy/network/run.sh");

/// A running network (its roles stopped with SIGTERM when dropped).
pub(crate) struct Network {
    dir: PathBuf,
    script: Child,
    env: BTreeMap<String, String>,
}

impl Network {
    /// The script's command on `dir` with `settings` (environment
    /// variables, as its header lists), its output in `DIR/run.out`.
    fn command(dir: &Path, settings: &[(&str, String)]) -> Result<Command> {
        let script = dir.join("run.sh");
        if !script.exists() {
            std::fs::write(&script, SCRIPT)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut c = Command::new(script);
        c.arg(dir)
            .env("MEDLEDGER", std::env::current_exe()?)
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("run.out"))?,
            )
            .stderr(std::fs::File::create(dir.join("run.err"))?);
        Ok(c)
    }

    /// Sets `dir` up (certificates, contracts, registrations, files)
    /// without starting the roles.
    pub(crate) fn set_up(dir: &Path, settings: &[(&str, String)]) -> Result<()> {
        let mut settings = settings.to_vec();
        settings.push(("SETUP_ONLY", "1".to_owned()));
        let status = Self::command(dir, &settings)?.status()?;
        if !status.success() {
            bail!("setting up the network failed ({status}): {}", said(dir));
        }
        Ok(())
    }

    /// Starts the network set up in `dir`; returns once every role is
    /// ready.
    pub(crate) fn start(dir: &Path) -> Result<Network> {
        let script = Self::command(dir, &[])?.spawn()?;
        let mut network = Network {
            dir: dir.to_path_buf(),
            script,
            env: BTreeMap::new(),
        };
        let started = Instant::now();
        let env_file = dir.join("network.env");
        while !env_file.exists() {
            if let Some(status) = network.script.try_wait()? {
                bail!(
                    "the network stopped ({status}) before it was up: {}",
                    said(dir)
                );
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("the network was not up within 300 s: {}", said(dir));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        network.env = std::fs::read_to_string(&env_file)?
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(network)
    }

    /// A value of `DIR/network.env`.
    pub(crate) fn get(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}/network.env has no {key}", self.dir.display()))
    }

    /// The process id of a role.
    pub(crate) fn pid(&self, role: &str) -> Result<u32> {
        let path = self.dir.join(format!("run/{role}.pid"));
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no process id", path.display()))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.script);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.script.wait();
    }
}

/// Where to look when the script failed.
fn said(dir: &Path) -> String {
    let err = std::fs::read_to_string(dir.join("run.err")).unwrap_or_default();
    format!(
        "{}; the roles' output is in {}",
        err.trim(),
        dir.join("log").display()
    )
}

/// What `bench ingest --mode network` sends, and to what.
pub(crate) struct Load {
    /// The servers' PostgreSQL database (each run gets a schema of its
    /// own in it).
    pub(crate) database: String,
    pub(crate) servers: usize,
    pub(crate) collectors: usize,
    /// Devices in all, spread over the collectors' wards.
    pub(crate) devices: usize,
    /// Readings per request, and requests per device.
    pub(crate) batch: usize,
    pub(crate) rounds: usize,
    /// SIGKILL server 2 once half the readings were acknowledged.
    pub(crate) kill: bool,
    pub(crate) lease_ms: u64,
}

/// One run's figures.
struct Run {
    servers: usize,
    readings: u64,
    acknowledged: Duration,
    stored: Duration,
    /// CPU of the servers, of the collectors, of the chain.
    cpu: [Duration; 3],
    /// From the SIGKILL until the last of the dead server's patients had a
    /// batch written by another server.
    takeover_ms: Option<i64>,
}

/// `medledger bench ingest --mode network`: the network with one server,
/// then with `load.servers`, the same collectors, devices and readings;
/// CPU per reading of each, and whether a dead server's patient was
/// taken over without losing a reading.
pub(crate) async fn bench(load: &Load, json: Option<&Path>) -> Result<()> {
    let mut verification = None;
    let mut runs = Vec::new();
    let mut counts = vec![1];
    if load.servers != 1 {
        counts.push(load.servers);
    }
    for (k, servers) in counts.into_iter().enumerate() {
        eprintln!(
            "medledger bench ingest --mode network: {servers} server(s), {} collector(s)",
            load.collectors
        );
        runs.push(run_once(load, servers, k, &mut verification).await?);
    }
    let unit = verification.unwrap_or_default().as_secs_f64() * 1e6;
    let per = |t: Duration, r: &Run| t.as_secs_f64() * 1e6 / r.readings.max(1) as f64;
    println!(
        "\nNetwork: {} collector(s), {} devices x {} requests of {} readings (pulse oximeters), PostgreSQL, each role a process",
        load.collectors, load.devices, load.rounds, load.batch
    );
    println!("  one P-256 verification, timed in this run: {unit:.1} µs\n");
    println!(
        "| servers | readings | acknowledged/s | stored/s | servers' CPU per reading, µs (verifications) | collectors' | chain's | taken over after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &runs {
        let [servers, collectors, chain] = r.cpu;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} ({:.2}) | {:.1} | {:.1} | {} |",
            r.servers,
            r.readings,
            r.readings as f64 / r.acknowledged.as_secs_f64(),
            r.readings as f64 / r.stored.as_secs_f64(),
            per(servers, r),
            per(servers, r) / unit,
            per(collectors, r),
            per(chain, r),
            r.takeover_ms.map_or("-".to_owned(), |ms| format!(
                "{ms} ms (lease {} ms)",
                load.lease_ms
            )),
        );
    }
    if let [one, many] = runs.as_slice() {
        println!(
            "\n  servers' CPU per reading, {} servers against one: {:.2}x",
            many.servers,
            per(many.cpu[0], many) / per(one.cpu[0], one)
        );
    }
    if let Some(path) = json {
        let json: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "servers": r.servers,
                    "collectors": load.collectors,
                    "readings": r.readings,
                    "acknowledged_per_s": r.readings as f64 / r.acknowledged.as_secs_f64(),
                    "stored_per_s": r.readings as f64 / r.stored.as_secs_f64(),
                    "p256_verification_us": unit,
                    "servers_cpu_per_reading_us": per(r.cpu[0], r),
                    "collectors_cpu_per_reading_us": per(r.cpu[1], r),
                    "chain_cpu_per_reading_us": per(r.cpu[2], r),
                    "takeover_ms": r.takeover_ms,
                    "lease_ms": load.lease_ms,
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Makes (`create`) or drops schema `name` of the database at `url`.
async fn schema(url: &str, name: &str, create: bool) -> Result<()> {
    let db = medledger_storage::Db::connect(url)
        .await
        .context("opening --database")?;
    let drop = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
    medledger_storage::sqlx::query(&drop)
        .execute(db.pool())
        .await?;
    if create {
        medledger_storage::sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(db.pool())
            .await?;
    }
    db.close().await;
    Ok(())
}

/// The server `bench` SIGKILLed.
struct Killed {
    pid: u32,
    /// Its CPU time just before.
    cpu_used: Duration,
    at_ms: i64,
    instance: String,
    /// The patients whose leases it held.
    held: Vec<Vec<u8>>,
}

/// One network with `servers` servers, loaded and checked.
async fn run_once(
    load: &Load,
    servers: usize,
    k: usize,
    verification: &mut Option<Duration>,
) -> Result<Run> {
    use medledger_storage::sqlx::{self, Row};
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let name = format!("medledger_bench_{}_{k}", std::process::id());
    schema(&load.database, &name, true).await?;
    let url = medledger_storage::Db::url_in_schema(&load.database, &name);
    let per_ward = load.devices.div_ceil(load.collectors.max(1)).max(1);
    let base = 20_000 + (std::process::id() % 60) * 200 + k as u32 * 100;
    Network::set_up(
        dir,
        &[
            ("DATABASE", url.clone()),
            ("SERVERS", servers.to_string()),
            ("COLLECTORS", load.collectors.to_string()),
            ("DEVICES", per_ward.to_string()),
            ("LEASE_MS", load.lease_ms.to_string()),
            ("BASE_PORT", base.to_string()),
        ],
    )?;
    // The per-device rate limit is not what is measured here.
    for i in 1..=load.collectors {
        let config = dir.join(format!("collector-{i}/collector.toml"));
        crate::apart::unlimit_collector(&config, load.batch)?;
    }
    let network = Network::start(dir)?;

    // Every reading signed before the clock starts.
    let root = medledger_pki::files::read_first(&dir.join("ca/root.crt"), "CERTIFICATE")?;
    let kind = medledger_sim::signals::KINDS[0];
    let mut prepared = Vec::new();
    for i in 1..=load.collectors {
        for n in 0..per_ward {
            let prefix = dir.join(format!("devices/ward-{i}/device-{}", i * 1000 + n));
            let mut device = medledger_sim::Device::load(&prefix, medledger_protocol::now_ms())?;
            if verification.is_none() {
                *verification = Some(medledger_sim::load::p256_verification(&mut device)?);
            }
            let bodies = crate::apart::signed_bodies(
                &mut device,
                &kind,
                (i * 1000 + n) as u64,
                load.rounds,
                load.batch,
            );
            let config = medledger_pki::client_config(
                Some(&device.credentials()),
                &root,
                &[medledger_pki::Role::Collector],
            )?;
            let conn = medledger_pki::https::Connection::open(
                config,
                network.get(&format!("COLLECTOR_{i}"))?,
                "localhost",
            )
            .await
            .context("connecting a device")?;
            prepared.push((conn, bodies));
        }
    }
    let readings = (prepared.len() * load.batch * load.rounds) as u64;

    let roles: Vec<(usize, u32)> = (1..=servers)
        .map(|i| Ok((0, network.pid(&format!("server-{i}"))?)))
        .chain((1..=load.collectors).map(|i| Ok((1, network.pid(&format!("collector-{i}"))?))))
        .chain([Ok((2, network.pid("chain")?))])
        .collect::<Result<_>>()?;
    let cpu = |pid: u32| crate::apart::cpu_of(pid).unwrap_or_default();
    let before: Vec<Duration> = roles.iter().map(|(_, pid)| cpu(*pid)).collect();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let sending = tokio::spawn(medledger_sim::load::send_all(
        prepared,
        load.batch as u64,
        done.clone(),
    ));
    let db = medledger_storage::Db::connect(&url).await?;
    // The dead server: its CPU, read just before it dies, when it died,
    // its instance and the patients it held then.
    let mut killed: Option<Killed> = None;
    if load.kill && servers > 1 {
        let instance: String = sqlx::query("SELECT instance FROM server_instances WHERE addr = $1")
            .bind(network.get("SERVER_2")?)
            .fetch_one(db.pool())
            .await?
            .try_get(0)?;
        // Once half the readings were acknowledged and server 2 holds a
        // patient (it has written some of its readings).
        let mut held = Vec::new();
        while !sending.is_finished() {
            if done.load(Ordering::Relaxed) >= readings / 2 {
                held = sqlx::query("SELECT patient FROM ledger_leases WHERE holder = $1")
                    .bind(&instance)
                    .fetch_all(db.pool())
                    .await?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<Vec<Vec<u8>>, _>>()?;
                if !held.is_empty() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = network.pid("server-2")?;
        let cpu_used = cpu(pid);
        let raw = rustix::process::Pid::from_raw(pid as i32).context("server 2's pid")?;
        rustix::process::kill_process(raw, rustix::process::Signal::KILL)?;
        killed = Some(Killed {
            pid,
            cpu_used,
            at_ms: medledger_protocol::now_ms() as i64,
            instance,
            held,
        });
    }
    sending.await??;
    let acknowledged = start.elapsed();
    for i in 1..=load.collectors {
        crate::apart::drain(
            &dir.join(format!("collector-{i}/data")),
            Duration::from_millis(2),
        )
        .await?;
    }
    let stored = start.elapsed();
    let mut used = [Duration::ZERO; 3];
    for ((role, pid), b) in roles.iter().zip(&before) {
        let now = match &killed {
            Some(dead) if dead.pid == *pid => dead.cpu_used,
            _ => cpu(*pid),
        };
        used[*role] += now.saturating_sub(*b);
    }

    // Checked after the run, in the servers' database.
    let stored_rows: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ingest_readings")
        .fetch_one(db.pool())
        .await?
        .try_get("n")?;
    if u64::try_from(stored_rows).unwrap_or(0) != readings {
        bail!(
            "{readings} readings were acknowledged but the servers stored {stored_rows}; the roles' output is in {}",
            dir.join("log").display()
        );
    }
    // Each patient's batches in the order they were written: the writer
    // changes only when a server dies (once, for its patients).
    let rows = sqlx::query(
        "SELECT DISTINCT r.patient, b.writer, b.created_ms FROM ingest_batches b \
         JOIN ingest_readings r ON r.batch = b.root ORDER BY r.patient, b.created_ms",
    )
    .fetch_all(db.pool())
    .await?;
    let mut last: BTreeMap<Vec<u8>, (String, usize)> = BTreeMap::new();
    for row in &rows {
        let (patient, writer): (Vec<u8>, String) = (row.try_get(0)?, row.try_get(1)?);
        let entry = last.entry(patient).or_insert((writer.clone(), 0));
        if entry.0 != writer {
            *entry = (writer, entry.1 + 1);
        }
    }
    let allowed = usize::from(killed.is_some());
    if let Some((patient, (_, changes))) = last.iter().find(|(_, (_, c))| *c > allowed) {
        bail!(
            "patient 0x{} changed writers {changes} times (at most {allowed} expected)",
            hex::encode(patient)
        );
    }
    // The last of the dead server's patients to get a new writer.
    let mut takeover_ms = None;
    for patient in killed.iter().flat_map(|dead| &dead.held) {
        let dead = killed.as_ref().expect("a patient of the dead server");
        let first: Option<i64> = sqlx::query(
            "SELECT MIN(b.created_ms) FROM ingest_batches b JOIN ingest_readings r ON r.batch = b.root \
             WHERE r.patient = $1 AND b.writer <> $2 AND b.created_ms >= $3",
        )
        .bind(patient)
        .bind(&dead.instance)
        .bind(dead.at_ms)
        .fetch_one(db.pool())
        .await?
        .try_get(0)?;
        if let Some(ms) = first {
            takeover_ms = takeover_ms.max(Some(ms - dead.at_ms));
        }
    }
    db.close().await;
    drop(network);
    schema(&load.database, &name, false).await?;
    Ok(Run {
        servers,
        readings,
        acknowledged,
        stored,
        cpu: used,
        takeover_ms,
    })
}
