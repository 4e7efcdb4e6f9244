//! `medledger up` keeps its state in a data directory across restarts;
//! `medledger sim` drives it with devices.

use crate::ingest::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `medledger up` and waits until it has printed its endpoints;
/// returns it with everything it printed.
fn up(data: &std::path::Path, ports: [u16; 3]) -> (Child, String) {
    // Any free port: the portal is not under test here.
    up_with(data, ports, &["--portal", "127.0.0.1:0"])
}

/// [`up`] with the portal at `portal`.
pub(crate) fn up_with_portal(
    data: &std::path::Path,
    ports: [u16; 3],
    portal: &str,
) -> (Child, String) {
    up_with(data, ports, &["--portal", portal])
}

/// [`up`] with more arguments.
fn up_with(data: &std::path::Path, ports: [u16; 3], more: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["up", "--data", data.to_str().unwrap()])
        .args(["--rpc", &format!("127.0.0.1:{}", ports[0])])
        .args(["--server", &format!("127.0.0.1:{}", ports[1])])
        .args(["--collector", &format!("127.0.0.1:{}", ports[2])])
        .args(more)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.contains("medledger sim --data") {
            break;
        }
    }
    // Keep draining, so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, out)
}

pub(crate) fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

#[test]
fn up_initialises_once_reuses_its_state_and_takes_simulated_devices() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let ports = [free_port(), free_port(), free_port()];
    let (child, first) = up(&data, ports);
    assert!(first.contains("(initialised)"), "{first}");
    let registry = registry_of(&first);
    assert!(sim(&data, ports[0], "3", "4") >= 10);

    // A backup while it runs; then the simulated patient is erased.
    let backup = dir.path().join("backup");
    let said = medledger(&[
        "backup",
        "--data",
        data.to_str().unwrap(),
        "--out",
        backup.to_str().unwrap(),
    ]);
    assert!(said.contains("backed up"), "{said}");
    let patient = alloy::primitives::keccak256("salt:sim-patient").to_string();
    let said = medledger(&[
        "erase",
        "--patient",
        &patient,
        "--yes",
        "--server",
        &format!("127.0.0.1:{}", ports[1]),
        "--cert",
        data.join("people/admin").to_str().unwrap(),
        "--ca-root",
        data.join("ca/root.crt").to_str().unwrap(),
    ]);
    assert!(said.contains("tombstone"), "{said}");

    // Restored from before the erasure, the patient is erased again (the
    // live chain recorded it), and every ledger verifies.
    let restored = dir.path().join("restored");
    let said = medledger(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
        "--erasures-from",
        &format!("http://127.0.0.1:{}", ports[0]),
    ]);
    assert!(said.contains("1 erased again"), "{said}");
    assert!(said.contains("every ledger verified"), "{said}");
    stop(child);

    // The second start reuses the CA, chain, contracts and keys.
    let (child, second) = up(&data, ports);
    assert!(second.contains("(reused)"), "{second}");
    assert!(second.contains(&registry), "{second}");
    let head: u64 = second
        .lines()
        .find_map(|l| l.split("head block ").nth(1))
        .and_then(|n| n.trim_end_matches(')').parse().ok())
        .unwrap();
    assert!(head > 15, "the chain did not keep its blocks: {second}");
    stop(child);

    // The data directory and the databases are their owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for db in ["server/server.db", "collector/collector.db"] {
        assert_eq!(mode(&data.join(db)), 0o600, "{db}");
    }
    // A server that cannot start (here: no chain) leaves no key behind.
    let config = std::fs::read_to_string(data.join("server.toml"))
        .unwrap()
        .replace("server/ledger.key", "server/other-ledger.key");
    std::fs::write(data.join("other-server.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["server", "--config"])
        .arg(data.join("other-server.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("finding the contracts"), "{said}");
    assert!(!data.join("server/other-ledger.key").exists());
}

/// Runs `medledger ARGS` and returns what it printed; fails the test if it
/// fails.
pub(crate) fn medledger(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// Streams `devices` simulated devices for `seconds`; returns how many
/// readings were accepted.
pub(crate) fn sim(data: &std::path::Path, rpc_port: u16, devices: &str, seconds: &str) -> u64 {
    let out = medledger(&[
        "sim",
        "--data",
        data.to_str().unwrap(),
        "--devices",
        devices,
        "--rate",
        "5",
        "--seconds",
        seconds,
        "--rpc",
        &format!("http://127.0.0.1:{rpc_port}"),
    ]);
    // Shown when a test fails.
    println!("medledger sim:\n{out}");
    out.lines()
        .rev()
        .find_map(|l| {
            l.split(", ")
                .find_map(|p| p.split_once("accepted ").map(|(_, n)| n.trim().to_owned()))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn registry_of(printed: &str) -> String {
    field(printed, "Registry")
}

#[test]
fn chain_recover_starts_a_new_chain_where_every_ledger_verifies_and_devices_keep_sending() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let d = data.to_str().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let rpc = format!("http://127.0.0.1:{}", ports[0]);
    let (child, first) = up(&data, ports);
    let old_registry = registry_of(&first);
    assert!(sim(&data, ports[0], "3", "3") >= 5);

    // The patient's consent and opt-out, on the chain to be retired.
    let patient = alloy::primitives::keccak256("salt:sim-patient").to_string();
    let key = data.join("sim/patient.eth.key");
    let as_patient = |args: &[&str]| {
        let mut all = vec!["consent", "--rpc", &rpc, "--registry", &old_registry];
        all.extend(["--key", key.to_str().unwrap()]);
        all.extend(args);
        medledger(&all)
    };
    as_patient(&["grant", "--patient", &patient, "--role", "nurse"]);
    as_patient(&["opt-out", "--patient", &patient, "on"]);
    // The server indexes the chain every few hundred milliseconds: wait
    // until the recovery copy holds the consent.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let consent_indexed = || {
        runtime.block_on(async {
            let db = medledger_storage::Db::open_sqlite(&data.join("server/server.db"))
                .await
                .unwrap();
            let events = medledger_server::indexer::events(&db, Some("OptOutChanged")).await;
            events.is_ok_and(|e| e.len() == 1)
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !consent_indexed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the opt-out was never indexed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop(child);

    let said = medledger(&["chain", "recover", "--data", d]);
    println!("{said}");
    assert!(said.contains("chain id 1338"), "a new chain id: {said}");
    assert!(said.contains("3 devices"), "{said}");
    assert!(said.contains("1 consents, 1 opt-outs"), "{said}");
    assert!(
        said.contains("every one of 1 patient ledger(s) verified"),
        "{said}"
    );
    let retired = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("chain.retired-")
        })
        .expect("the retired chain is kept");
    let genesis = |dir: &std::path::Path| std::fs::read(dir.join("genesis.json")).unwrap();
    assert_ne!(
        genesis(&retired),
        genesis(&data.join("chain")),
        "a new chain, with a new authority"
    );

    // The new chain: the same devices, patient and consent; readings flow
    // again.
    let (child, second) = up(&data, ports);
    let new_registry = registry_of(&second);
    let listed = medledger(&[
        "consent",
        "--rpc",
        &rpc,
        "--registry",
        &new_registry,
        "--key",
        key.to_str().unwrap(),
        "list",
        "--patient",
        &patient,
    ]);
    assert!(listed.contains("nurse"), "{listed}");
    assert!(
        sim(&data, ports[0], "3", "5") >= 5,
        "devices send on the new chain"
    );
    stop(child);
}

/// A recovery cut short after each of its steps in turn (the process
/// ended at once, as by a crash) is finished by running it again: every
/// ledger verifies on the new chain, which `up` then runs.
#[test]
fn chain_recover_cut_short_after_any_step_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let d = data.to_str().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let (child, _) = up(&data, ports);
    assert!(sim(&data, ports[0], "2", "2") >= 3);
    stop(child);

    for step in 1..=5 {
        let out = Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(["chain", "recover", "--data", d])
            .env("MEDLEDGER_TEST_RECOVER_CRASH_AFTER", step.to_string())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(86), "step {step}: {said}");
        assert!(
            said.contains(&format!("stopped after step {step}")),
            "{said}"
        );
        if step > 2 {
            assert!(
                said.contains(&format!(
                    "resuming the recovery cut short after step {}",
                    step - 1
                )),
                "{said}"
            );
        }
    }
    let said = medledger(&["chain", "recover", "--data", d]);
    assert!(
        said.contains("resuming the recovery cut short after step 5"),
        "{said}"
    );
    assert!(
        said.contains("every one of 1 patient ledger(s) verified"),
        "{said}"
    );
    assert!(!data.join("chain.recovery.json").exists());
    assert!(!data.join("chain.recovering").exists());
    let retired: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("chain.retired-")
        })
        .collect();
    assert_eq!(retired.len(), 1, "one retired chain");
    let (child, second) = up(&data, ports);
    assert!(
        second.contains("(chain id 1338,"),
        "one new chain id, however many runs: {second}"
    );
    assert!(
        sim(&data, ports[0], "2", "3") >= 3,
        "devices send on the new chain"
    );
    stop(child);
}

/// Opens every sealed blob of the server in `data` with only the KEK in
/// `data/server/kek.hex`; returns how many there are.
fn open_every_blob(data: &std::path::Path) -> usize {
    use medledger_storage::sqlx::{self, Row};
    use medledger_storage::{BlobStore, Db, Kek, LocalDir, Vault};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let db = Db::open_sqlite(&data.join("server/server.db"))
            .await
            .unwrap();
        let blobs = LocalDir::open(data.join("server/blobs")).await.unwrap();
        let vault = Vault::new(
            db.clone(),
            Kek::from_file(&data.join("server/kek.hex")).unwrap(),
        );
        let rows = sqlx::query("SELECT DISTINCT patient, blob, blob_sha256 FROM ingest_readings")
            .fetch_all(db.pool())
            .await
            .unwrap();
        for row in &rows {
            let patient: [u8; 32] = row.get::<Vec<u8>, _>(0).try_into().unwrap();
            let cid: medledger_storage::Cid = row.get::<String, _>(1).parse().unwrap();
            let digest: [u8; 32] = row.get::<Vec<u8>, _>(2).try_into().unwrap();
            let sealed = blobs.get(&cid).await.unwrap();
            vault.open(&patient, &digest, &sealed).await.unwrap();
        }
        db.close().await;
        rows.len()
    })
}

/// Waits until every data key of the server in `data` is under the KEK in
/// `data/server/kek.hex` alone.
fn wait_rewrapped(data: &std::path::Path) {
    use medledger_storage::{Db, Kek, Vault};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let done = runtime.block_on(async {
            let db = Db::open_sqlite(&data.join("server/server.db"))
                .await
                .unwrap();
            let kek = Kek::from_file(&data.join("server/kek.hex")).unwrap();
            let status = Vault::new(db.clone(), kek).check_keks().await;
            db.close().await;
            status.is_ok_and(|s| s.left() == 0)
        });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never re-wrapped its data keys"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn kek_id(path: &std::path::Path) -> String {
    medledger_storage::Kek::from_file(path)
        .unwrap()
        .id()
        .to_string()
}

#[test]
fn the_key_encryption_key_rotates_and_backups_of_before_and_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let d = data.to_str().unwrap();
    let (kek, previous) = (
        data.join("server/kek.hex"),
        data.join("server/kek.previous.hex"),
    );
    let ports = [free_port(), free_port(), free_port()];
    let (child, _) = up(&data, ports);
    assert!(sim(&data, ports[0], "2", "3") >= 5);
    let before = dir.path().join("before");
    medledger(&["backup", "--data", d, "--out", before.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["up", "rotate-kek", "--data", d])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is running"), "{said}");
    stop(child);
    let first = kek_id(&kek);

    // An interrupted rotation: the new KEK in place, the old one beside it.
    // `up` starts, and its server re-wraps in the background while devices
    // send.
    std::fs::copy(&kek, &previous).unwrap();
    let next = data.join("server/kek.next.hex");
    let said = medledger(&["server", "new-kek", "--out", next.to_str().unwrap()]);
    assert!(said.contains("(mode 0600)"), "{said}");
    std::fs::rename(&next, &kek).unwrap();
    let second = kek_id(&kek);
    let (child, _) = up(&data, ports);
    wait_rewrapped(&data);
    assert!(sim(&data, ports[0], "2", "2") >= 3);
    stop(child);
    // Finishing it removes the old KEK's file.
    let said = medledger(&["up", "rotate-kek", "--data", d]);
    assert!(
        said.contains(&format!("resuming the rotation away from {first}")),
        "{said}"
    );
    assert!(!previous.exists());

    // A whole rotation in one command.
    let said = medledger(&["up", "rotate-kek", "--data", d]);
    assert!(
        said.contains(&format!(
            "left under {second}; the old key-encryption key(s) can now be destroyed"
        )),
        "{said}"
    );
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("0 data key(s) re-wrapped")),
        "{said}"
    );
    assert!(!previous.exists());
    let third = kek_id(&kek);
    assert_ne!(second, third);
    assert!(
        open_every_blob(&data) >= 2,
        "every blob opens with the new KEK alone"
    );
    let config = data.join("server.toml");
    let said = medledger(&["server", "rewrap", "--config", config.to_str().unwrap()]);
    assert!(said.contains("0 data key(s) re-wrapped, 0 left"), "{said}");

    // A backup from before the rotations restores (it holds its KEK), and
    // so does one from after.
    let after = dir.path().join("after");
    medledger(&["backup", "--data", d, "--out", after.to_str().unwrap()]);
    for (backup, id) in [(&before, &first), (&after, &third)] {
        let restored = dir.path().join(format!("restored-{id}"));
        let said = medledger(&[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data",
            restored.to_str().unwrap(),
        ]);
        assert!(said.contains("every ledger verified"), "{said}");
        assert_eq!(&kek_id(&restored.join("server/kek.hex")), id);
        assert!(open_every_blob(&restored) >= 1);
    }
}

/// The line of `printed` that starts (after spaces) with `label`, its rest.
pub(crate) fn field(printed: &str, label: &str) -> String {
    printed
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in {printed}"))
        .trim()
        .to_owned()
}

#[test]
fn the_ledger_key_rotates_and_ledgers_verify_with_the_retired_key_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let d = data.to_str().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let (child, first) = up(&data, ports);
    let registry = registry_of(&first);
    let old_key = field(&first, "ledger key");
    assert!(sim(&data, ports[0], "2", "3") >= 5);

    // Not while the server runs with the key.
    let refused = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["server", "rotate-ledger-key", "--data", d])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is running"),
        "{refused:?}"
    );
    stop(child);

    let said = medledger(&["server", "rotate-ledger-key", "--data", d]);
    assert_eq!(field(&said, "retired key"), old_key, "{said}");
    let new_key = field(&said, "current key");
    assert_ne!(new_key, old_key);
    let key_file = data.join("server/ledger.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the new key is private");
    }
    assert!(!data.join("server/ledger.key.new").exists());

    // Restarted, the server signs with the new key, readings flow, and the
    // rotation is anchored on chain.
    let (child, second) = up(&data, ports);
    assert_eq!(field(&second, "ledger key"), new_key);
    assert!(sim(&data, ports[0], "2", "3") >= 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let anchored = || {
        runtime.block_on(async {
            let db = medledger_storage::Db::open_sqlite(&data.join("server/server.db"))
                .await
                .unwrap();
            medledger_storage::sqlx::query(
                "SELECT seq FROM ledger_key_rotations WHERE anchor_id IS NOT NULL",
            )
            .fetch_all(db.pool())
            .await
            .is_ok_and(|rows| rows.len() == 1)
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !anchored() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation was never anchored"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // An auditor who trusts only the retired key verifies the whole
    // ledger, before and after the rotation, against its anchors.
    let patient = alloy::primitives::keccak256("salt:sim-patient").to_string();
    let server = format!("127.0.0.1:{}", ports[1]);
    let rpc = format!("http://127.0.0.1:{}", ports[0]);
    let verify = |key: &str| {
        Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(["verify", "--patient", &patient, "--server", &server])
            .args(["--cert", data.join("people/admin").to_str().unwrap()])
            .args(["--ca-root", data.join("ca/root.crt").to_str().unwrap()])
            .args(["--rpc", &rpc, "--registry", &registry, "--key", key])
            .output()
            .unwrap()
    };
    for key in [&old_key, &new_key] {
        let out = verify(key);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("rotated 1 time(s)"), "{text}");
        // The history is the one the server anchored.
        assert!(
            text.contains("key history  1 rotation(s) matched on chain"),
            "{text}"
        );
    }
    use medledger_patient_ledger::NoteSigner;
    let stranger = NoteSigner::from_pkcs8("medledger-server", &NoteSigner::generate_pkcs8())
        .unwrap()
        .verifier_key();
    let out = verify(&stranger);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("not the trusted key"), "{text}");
    stop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_monitoring_for_its_server_and_its_collector() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("medledger");
    let ports = [free_port(), free_port(), free_port()];
    let metrics = free_port();
    let at = format!("127.0.0.1:{metrics}");
    let (child, printed) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || up_with(&data, ports, &["--portal", "127.0.0.1:0", "--metrics", &at])
    })
    .await
    .unwrap();
    assert!(
        printed.contains(&format!(
            "metrics      http://127.0.0.1:{metrics}/metrics (and /livez, /readyz)"
        )),
        "{printed}"
    );
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], metrics));
    let collector = std::net::SocketAddr::from(([127, 0, 0, 1], metrics + 1));
    let ready = |body: String| serde_json::from_str::<serde_json::Value>(&body).unwrap();
    assert_eq!(
        ready(crate::health::readyz_until(server, 200).await)["dependencies"],
        serde_json::json!({ "blob store": true, "chain": true, "database": true })
    );
    // Its server is in this process: nothing to reach.
    assert_eq!(
        ready(crate::health::readyz_until(collector, 200).await)["dependencies"],
        serde_json::json!({ "chain": true, "database": true })
    );
    stop(child);
}
