//! The hospital network of `deploy/network/run.sh`, run as an operator
//! runs it: the chain (embedded over mutual TLS, or anvil), three servers
//! on one PostgreSQL database over TLS with their blobs in S3, three
//! collectors. Simulated devices (`medledger sim`) stream to every
//! collector while one server is SIGKILLed: its patient is taken over by
//! another server, nothing acknowledged is lost or stored twice, and every
//! patient's ledger verifies against its anchors on chain.

use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, test_utils};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a dead server's patients wait before another server takes
/// them, in the network under test.
const LEASE_MS: u64 = 3000;

/// The network's script, running (stopped with SIGTERM when dropped).
struct Network {
    script: Child,
    dir: tempfile::TempDir,
    /// `DIR/network.env`: where each role listens, the patients.
    env: BTreeMap<String, String>,
}

impl Network {
    /// Runs the script with `settings` and waits until every role is ready.
    fn start(settings: &[(String, String)]) -> Network {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/network/run.sh");
        // Ports of this network's own, below Linux's ephemeral range.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 60) * 2 + N.fetch_add(1, Ordering::Relaxed) % 2;
        let base = 20_000 + n * 100;
        let child = Command::new(script)
            .arg(dir.path())
            .env("MEDLEDGER", env!("CARGO_BIN_EXE_medledger"))
            .env("LEASE_MS", LEASE_MS.to_string())
            .env("BASE_PORT", base.to_string())
            .envs(settings.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("run.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("run.err")).unwrap())
            .spawn()
            .unwrap();
        let mut network = Network {
            script: child,
            dir,
            env: BTreeMap::new(),
        };
        let started = Instant::now();
        let env_file = network.path("network.env");
        while !env_file.exists() {
            if let Some(status) = network.script.try_wait().unwrap() {
                panic!(
                    "run.sh exited ({status}) before the network was up:\n{}",
                    network.said()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the network was not up within 300 s:\n{}",
                network.said()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        network.env = std::fs::read_to_string(&env_file)
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        network
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("network.env has no {key}: {:?}", self.env))
    }

    /// What the script and the roles wrote, for a failure's message.
    fn said(&self) -> String {
        let mut all = String::new();
        for name in ["run.out", "run.err"] {
            all += &std::fs::read_to_string(self.path(name)).unwrap_or_default();
        }
        for entry in std::fs::read_dir(self.path("log")).into_iter().flatten() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            all += &format!("\n--- {} (end)\n", path.display());
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }

    /// The process id of a role the script started.
    fn pid(&self, role: &str) -> i32 {
        std::fs::read_to_string(self.path(&format!("run/{role}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// `medledger sim` from ward `i`'s devices to its collector, for
    /// `seconds`, recording what was acknowledged in `receipts-i`.
    fn stream(&self, i: usize, seconds: u64) -> Child {
        Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(["sim", "--devices-dir"])
            .arg(self.path(&format!("devices/ward-{i}")))
            .args(["--collector", self.get(&format!("COLLECTOR_{i}"))])
            .args(["--collector-name", "localhost", "--ca-root"])
            .arg(self.path("ca/root.crt"))
            .args(["--rate", "4", "--seconds", &seconds.to_string()])
            .arg("--receipts")
            .arg(self.path(&format!("receipts-{i}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The hashes of the readings ward `i`'s collector acknowledged.
    fn acknowledged(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.path(&format!("receipts-{i}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until collector `i` has handed everything it acknowledged to
    /// a server.
    async fn drained(&self, i: usize) {
        let path = self.path(&format!("collector-{i}/data/collector.db"));
        let db = Db::connect(&format!("sqlite:{}?mode=ro", path.display()))
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM collector_outbox")
                .fetch_one(db.pool())
                .await
                .unwrap()
                .get("n");
            if left == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "collector-{i} still holds {left} reading(s) after 120 s:\n{}",
                self.said()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `medledger verify --patient` of ward `i`'s patient, as the admin,
    /// through `server`, against the chain: its output.
    fn verify(&self, i: usize, server: usize) -> String {
        let admin = self.path("admin1");
        let out = Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(["verify", "--patient", self.get(&format!("PATIENT_{i}"))])
            .args(["--registry", self.get("REGISTRY")])
            .args(["--rpc", self.get("CHAIN_RPC")])
            .args(["--key", self.get("LEDGER_KEY")])
            .args(["--server", self.get(&format!("SERVER_{server}"))])
            .args(["--server-name", "localhost", "--cert"])
            .arg(&admin)
            .arg("--ca-root")
            .arg(self.path("ca/root.crt"))
            .arg("--tls-root")
            .arg(self.path("ca/root.crt"))
            .arg("--tls-cert")
            .arg(&admin)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "verify of ward {i}: {said}");
        said
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.script);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.script.wait();
    }
}

/// The network's database: a fresh schema of the test PostgreSQL over TLS.
/// Its blob store: a fresh prefix of the test S3 bucket.
async fn network_settings() -> Option<(Db, Vec<(String, String)>)> {
    let (url, _, db) = test_utils::postgres_tls_schema().await?;
    let (blobs, aws) = test_utils::s3_url()?;
    let mut settings = vec![("DATABASE".to_owned(), url), ("BLOBS".to_owned(), blobs)];
    settings.extend(aws);
    Some((db, settings))
}

/// One network at a time: each is eight processes on this machine's cores,
/// and their ports (from `BASE_PORT`, below the ephemeral range) must not
/// meet another's. `bench ingest --mode network` takes it too.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A patientRef (`0x` and 64 hex digits) as stored.
fn patient_ref(text: &str) -> Vec<u8> {
    hex::decode(text.trim_start_matches("0x")).unwrap()
}

/// The instance (in `server_instances`) of the server listening at `addr`.
async fn instance(db: &Db, addr: &str) -> String {
    sqlx::query("SELECT instance FROM server_instances WHERE addr = $1")
        .bind(addr)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get("instance")
}

/// Streams to every ward, SIGKILLs server 2 a third of the way through,
/// and checks what the network stored.
async fn kill_a_server_mid_stream(network: &Network, db: &Db) {
    const WARDS: usize = 3;
    let seconds = 4 * LEASE_MS / 1000;
    let mut sims: Vec<Child> = (1..=WARDS).map(|i| network.stream(i, seconds)).collect();
    tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
    let dead = instance(db, network.get("SERVER_2")).await;
    let pid = rustix::process::Pid::from_raw(network.pid("server-2")).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    for sim in &mut sims {
        assert!(sim.wait().unwrap().success(), "{}", network.said());
    }
    for i in 1..=WARDS {
        network.drained(i).await;
    }

    let stored: BTreeMap<String, (Vec<u8>, i64)> =
        sqlx::query("SELECT hash, patient, idx FROM ingest_readings")
            .fetch_all(db.pool())
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let hash: Vec<u8> = r.get("hash");
                (hex::encode(&hash), (r.get("patient"), r.get("idx")))
            })
            .collect();
    for i in 1..=WARDS {
        let acked = network.acknowledged(i);
        assert!(!acked.is_empty(), "ward {i}: nothing acknowledged");
        let unique: BTreeSet<&String> = acked.iter().collect();
        assert_eq!(unique.len(), acked.len(), "ward {i}: a receipt twice");
        let patient = patient_ref(network.get(&format!("PATIENT_{i}")));
        for hash in &acked {
            let Some((of, _)) = stored.get(hash) else {
                panic!("ward {i}: acknowledged reading {hash} was not stored");
            };
            assert_eq!(*of, patient, "ward {i}: {hash} stored for another patient");
        }
        // Each stored reading has a ledger entry of its own.
        let indices: BTreeSet<i64> = stored
            .values()
            .filter(|(of, _)| *of == patient)
            .map(|(_, idx)| *idx)
            .collect();
        let of_patient = stored.values().filter(|(of, _)| *of == patient).count();
        assert_eq!(
            indices.len(),
            of_patient,
            "ward {i}: two readings at one entry"
        );
        // The dead server's patient (ward 2's) is held by a live one now.
        let holder: String = sqlx::query("SELECT holder FROM ledger_leases WHERE patient = $1")
            .bind(&patient)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("holder");
        assert_ne!(
            holder, dead,
            "ward {i}'s patient is still the dead server's"
        );
        // Read through a live server (1 and 3 are), checked against the
        // checkpoints anchored on chain, whichever server anchored them.
        let said = network.verify(i, if i == 1 { 1 } else { 3 });
        assert!(
            said.contains(": verified") && !said.contains("own key"),
            "{said}"
        );
    }
    // Server 2 wrote ward 2's first readings; another server the rest.
    let writers: BTreeSet<String> = sqlx::query(
        "SELECT DISTINCT b.writer FROM ingest_batches b JOIN ingest_readings r ON r.batch = b.root \
         WHERE r.patient = $1",
    )
    .bind(patient_ref(network.get("PATIENT_2")))
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("writer"))
    .collect();
    assert!(writers.contains(&dead) && writers.len() == 2, "{writers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_network_on_the_embedded_chain_loses_nothing_when_a_server_dies() {
    let Some((db, settings)) = network_settings().await else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let network = Network::start(&settings);
    kill_a_server_mid_stream(&network, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_network_on_anvil_loses_nothing_when_a_server_dies() {
    let (Some(anvil), Some(cast)) = (
        medledger_chain::test_utils::tool("anvil"),
        medledger_chain::test_utils::tool("cast"),
    ) else {
        return;
    };
    let Some((db, mut settings)) = network_settings().await else {
        return;
    };
    settings.extend([
        ("CHAIN".to_owned(), "anvil".to_owned()),
        ("ANVIL".to_owned(), anvil.display().to_string()),
        ("CAST".to_owned(), cast.display().to_string()),
    ]);
    let _alone = ONE_AT_A_TIME.lock().await;
    let network = Network::start(&settings);
    kill_a_server_mid_stream(&network, &db).await;
}
