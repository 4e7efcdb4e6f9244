//! The roles of a `medledger up` data directory as processes of their own,
//! as `bench crash` and `bench ingest --mode up|split` run them: the
//! directory initialised by `medledger up`, then the chain, the server and
//! the collector each started from the configuration `up` wrote (or `up`
//! itself, all three in one process), their output in `D/<logs>/`. Apart,
//! the server and the collector reach the chain as on separate machines:
//! over HTTPS with mutual TLS, the chain showing a certificate of its own.

use crate::roles;
use crate::up::UpState;
use anyhow::{Context, Result, bail};
use medledger_pki::{Ca, LeafRequest, Role, files};
use medledger_storage::sqlx::{self, Row};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The chain's certificate (PREFIX), in the data directory.
const CHAIN_NODE: &str = "chain/node";

/// The three processes, in the order they start.
pub(crate) const ROLES: [&str; 3] = ["chain", "server", "collector"];

/// A free port on 127.0.0.1.
pub(crate) fn free_local() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Whether something accepts connections at `addr`.
pub(crate) fn listening(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until `child` listens at `addr`; fails if it exits first or
/// takes longer than `limit`.
async fn until_listening(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    while !listening(addr) {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the {what} exited ({status}) instead of starting; see {}",
                log.display()
            );
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            bail!("the {what} did not listen within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `medledger up` on `d` with the chain's JSON-RPC, the server and the
/// collector at `addrs` (in [`ROLES`] order), initialising `d` on its
/// first start; returned once the collector listens.
pub(crate) async fn start_up(d: &Path, logs: &str, addrs: [SocketAddr; 3]) -> Result<Child> {
    let exe = std::env::current_exe().context("finding the medledger executable")?;
    std::fs::create_dir_all(d.join(logs))?;
    let log = d.join(format!("{logs}/up.err"));
    let mut up = Command::new(&exe)
        .args(["up", "--data"])
        .arg(d)
        .args(["--rpc", &addrs[0].to_string()])
        .args(["--server", &addrs[1].to_string()])
        .args(["--collector", &addrs[2].to_string()])
        // Any free port: the portal is not under test here.
        .args(["--portal", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting medledger up")?;
    until_listening(
        &mut up,
        addrs[2],
        "medledger up",
        &log,
        Duration::from_secs(180),
    )
    .await?;
    Ok(up)
}

/// The role processes of one data directory that `medledger up`
/// initialised.
pub(crate) struct Roles {
    exe: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    /// What `up` decided on its first start.
    pub(crate) state: UpState,
    /// The chain's JSON-RPC, the server's and the collector's addresses.
    pub(crate) addrs: [SocketAddr; 3],
    /// The chain's JSON-RPC over mutual TLS.
    chain_tls: SocketAddr,
    children: [Option<Child>; 3],
}

impl Roles {
    /// The roles of `d` (none running), listening at `addrs`, logging to
    /// `D/<logs>/<role>.{out,err}`.
    pub(crate) fn new(d: &Path, logs: &str, addrs: [SocketAddr; 3]) -> Result<Roles> {
        std::fs::create_dir_all(d.join(logs))?;
        let node = d.join(CHAIN_NODE);
        if !files::with_suffix(&node, ".crt").exists() {
            Ca::open(&d.join("ca"))?
                .issue(&LeafRequest::new(Role::Server))?
                .write(&node)?;
        }
        let chain_tls = free_local()?;
        for role in ["server", "collector"] {
            let path = d.join(format!("{role}.toml"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let text: String = text
                .lines()
                .map(|line| match line.starts_with("chain_rpc") {
                    true => format!("chain_rpc = \"https://{chain_tls}\"\n"),
                    false => format!("{line}\n"),
                })
                .collect();
            std::fs::write(&path, text)?;
        }
        Ok(Roles {
            chain_tls,
            exe: std::env::current_exe().context("finding the medledger executable")?,
            data: d.to_path_buf(),
            logs: d.join(logs),
            state: UpState::load(d)?,
            addrs,
            children: [None, None, None],
        })
    }

    fn command(&self, role: usize) -> Result<Command> {
        let mut c = Command::new(&self.exe);
        match ROLES[role] {
            "chain" => {
                c.args(["chain", "--data"]).arg(self.data.join("chain"));
                c.args(["--rpc", &self.addrs[0].to_string()]);
                c.args(["--registry", &self.state.registry.to_string()]);
                c.args(["--chain-id", &self.state.chain_id.to_string()]);
                c.args(["--min-block-interval-ms", "5"]);
                c.args(["--rpc-tls", &self.chain_tls.to_string()]);
                c.arg("--tls-cert").arg(self.data.join(CHAIN_NODE));
                c.arg("--tls-root").arg(self.data.join("ca/root.crt"));
                c.arg("--tls-crl").arg(self.data.join("ca/crl.pem"));
            }
            name => {
                c.args([name, "--config"])
                    .arg(self.data.join(format!("{name}.toml")));
            }
        }
        let log = |name: &str| -> Result<std::fs::File> {
            let path = self.log(role, name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        };
        c.stdin(Stdio::null())
            .stdout(log("out")?)
            .stderr(log("err")?);
        Ok(c)
    }

    fn log(&self, role: usize, name: &str) -> PathBuf {
        self.logs.join(format!("{}.{name}", ROLES[role]))
    }

    /// Starts `role` and waits until it listens.
    pub(crate) async fn start(&mut self, role: usize) -> Result<()> {
        let mut child = self
            .command(role)?
            .spawn()
            .with_context(|| format!("starting the {}", ROLES[role]))?;
        until_listening(
            &mut child,
            self.addrs[role],
            ROLES[role],
            &self.log(role, "err"),
            Duration::from_secs(120),
        )
        .await?;
        self.children[role] = Some(child);
        Ok(())
    }

    /// Starts every role, in order.
    pub(crate) async fn start_all(&mut self) -> Result<()> {
        for role in 0..ROLES.len() {
            self.start(role).await?;
        }
        Ok(())
    }

    /// The running process of `role`.
    pub(crate) fn child(&self, role: usize) -> Option<&Child> {
        self.children[role].as_ref()
    }

    /// SIGKILLs `role` and reaps it.
    pub(crate) fn kill(&mut self, role: usize) -> Result<()> {
        if let Some(mut child) = self.children[role].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGKILLs every role, the last started first.
    pub(crate) fn kill_all(&mut self) -> Result<()> {
        for role in (0..ROLES.len()).rev() {
            self.kill(role)?;
        }
        Ok(())
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let _ = self.kill_all();
    }
}

/// Waits until the outbox of the collector whose data directory is
/// `collector` is empty: everything it acknowledged has reached a server.
pub(crate) async fn drain(collector: &Path, poll: Duration) -> Result<()> {
    let db = roles::open_db(None, collector, medledger_storage::Part::Collector).await?;
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM collector_outbox")
            .fetch_one(db.pool())
            .await?
            .try_get("n")?;
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{left} reading(s) still in the collector's outbox after 300 s");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The CPU time (user and system, every thread) process `pid` has used,
/// from `/proc/<pid>/stat`.
pub(crate) fn cpu_of(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state (field 3 of proc(5)) ... utime (14), stime (15).
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path} has no field {i}"))
    };
    let per_s = rustix::param::clock_ticks_per_second();
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(total as f64 / per_s as f64))
}

/// Lifts the per-device rate limit (not what a benchmark measures) in the
/// collector configuration at `path`, and lets requests carry `batch`
/// readings.
pub(crate) fn unlimit_collector(path: &Path, batch: usize) -> Result<()> {
    use std::io::Write;
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(
        config,
        "\n[limits]\ndevice_rate_per_s = 1e9\ndevice_burst = 1e9\nmax_readings_per_request = {}\nmax_body_bytes = {}",
        batch.max(1),
        batch.max(1) * 4096
    )?;
    Ok(())
}

/// `rounds` request bodies of `batch` readings of `kind` each, signed by
/// `device` now (device `n` of the run, for its vital signs).
pub(crate) fn signed_bodies(
    device: &mut medledger_sim::Device,
    kind: &medledger_sim::signals::Kind,
    n: u64,
    rounds: usize,
    batch: usize,
) -> Vec<Vec<u8>> {
    let mut vitals = medledger_sim::signals::Vitals::new(n);
    (0..rounds)
        .map(|_| {
            let readings: Vec<Vec<u8>> = (0..batch)
                .map(|_| device.reading(vitals.observe(kind, medledger_protocol::now_ms())))
                .collect();
            medledger_sim::load::cbor_array(&readings)
        })
        .collect()
}
