//! Storage failures: a full disk, or the database stopped. The collector
//! and the server refuse new work with 503 `storage-unavailable` and a
//! `Retry-After`, lose nothing they acknowledged, corrupt nothing, and take
//! work again by themselves once storage works. The data lives on a small
//! tmpfs the test mounts, or in a PostgreSQL of the test's own (root only:
//! skipped with a loud message elsewhere, a failure in CI).

use crate::site::{body, post_one};
use medledger_sim::{Device, Hospital, Options};
use medledger_storage::Db;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A tmpfs of a few MiB, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI: mounting a tmpfs for the full-disk tests failed (they need root)"
            );
            eprintln!("\n!!! SKIPPED: the full-disk tests need to mount a tmpfs (run as root)\n");
            return None;
        }
        Some(SmallDisk { _dir: dir, at })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.at.join(name)
    }

    /// Fills what is left with one file.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last bytes, a few at a time.
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .status();
    }
}

async fn sqlite_on(path: &Path) -> Db {
    Db::open_sqlite(path).await.unwrap()
}

async fn integrity(path: &Path) -> String {
    use medledger_storage::sqlx::{self, Row};
    let db = sqlite_on(path).await;
    sqlx::query("PRAGMA integrity_check")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<String, _>(0)
        .unwrap()
}

/// Posts readings until one is refused; returns the hashes acknowledged
/// and the refusal.
async fn post_until_refused(
    site: &Hospital,
    device: &mut Device,
) -> (Vec<String>, medledger_pki::https::Reply) {
    let mut conn = site.connect(device).await.unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..2000 {
        let reply = post_one(
            &mut conn,
            device.heart_rate(60.0 + f64::from(n % 40)),
            false,
        )
        .await;
        if reply.status != 202 {
            return (acknowledged, reply);
        }
        acknowledged.push(body(&reply)["hash"].as_str().unwrap().to_owned());
    }
    panic!("2000 readings accepted on a full disk");
}

/// Waits until the server has stored `n` readings (within 90 s: a
/// collector sends a batch again at most 60 s after the server stopped
/// answering for it).
async fn stored_at_server(site: &Hospital, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let metrics = site.server.metrics();
    loop {
        let stored = metrics.value(
            "medledger_server_readings_total",
            &[("outcome", "stored"), ("cause", "")],
        ) as usize;
        if stored >= n {
            assert_eq!(stored, n, "{}", metrics.render());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n}: {}\nthe collector: {}",
            stored,
            metrics.render(),
            site.collector.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused_for_storage(reply: &medledger_pki::https::Reply) {
    assert_eq!(reply.status, 503, "{}", body(reply));
    assert_eq!(
        body(reply)["type"],
        "urn:medledger:problem:storage-unavailable",
        "{}",
        body(reply)
    );
    assert!(reply.header("retry-after").is_some(), "no Retry-After");
    let detail = body(reply)["detail"].as_str().unwrap().to_owned();
    assert!(
        !detail.contains("SQLITE") && !detail.contains("(code:"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_collector_refuses_new_readings_then_takes_them_again() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let outbox = disk.path("collector.db");
    let site = Hospital::start(Options {
        forward_over_tls: true,
        collector_db: Some(sqlite_on(&outbox).await),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    disk.fill();
    let (before, refused) = post_until_refused(&site, &mut device).await;
    refused_for_storage(&refused);

    // Space again: readings are taken, and nothing acknowledged is lost.
    disk.free();
    let mut conn = site.connect(&device).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let reply = post_one(&mut conn, device.heart_rate(70.0), true).await;
        if reply.status == 202 {
            break reply;
        }
        refused_for_storage(&reply);
        assert!(Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body(&after)["status"], "committed", "{}", body(&after));
    stored_at_server(&site, before.len() + 1).await;
    assert_eq!(integrity(&outbox).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_server_holds_readings_at_the_collector_until_space_returns() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    // Warnings in the output of the tests (a failure prints its own):
    // they name each storage error of the server and the collector.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let store = disk.path("server.db");
    let site = Hospital::start(Options {
        forward_over_tls: true,
        server_db: Some(sqlite_on(&store).await),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    assert_eq!(
        post_one(&mut conn, device.heart_rate(70.0), true)
            .await
            .status,
        202
    );
    disk.fill();
    // The collector acknowledges (its outbox has room); the server cannot
    // store, answers 503 storage-unavailable, and the readings wait.
    let mut acknowledged = 1;
    let metrics = site.server.metrics();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.value("medledger_server_storage_failures_total", &[]) == 0.0 {
        let reply = post_one(&mut conn, device.heart_rate(71.0), false).await;
        assert_eq!(reply.status, 202, "{}", body(&reply));
        acknowledged += 1;
        assert!(
            Instant::now() < deadline,
            "the server never ran out of space"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The collector hears the 503 and keeps the batch.
    let collector = site.collector.metrics();
    while collector.value("medledger_collector_forward_failures_total", &[]) == 0.0 {
        assert!(Instant::now() < deadline, "{}", collector.render());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.free();
    tracing::warn!("the test: space is back");
    stored_at_server(&site, acknowledged).await;
    assert_eq!(integrity(&store).await, "ok");
}

/// A PostgreSQL cluster of the test's own (Debian's binaries, `initdb` as
/// the `postgres` user, on a free port), to stop mid-run and start again;
/// stopped on drop. The shared test PostgreSQL is never stopped.
struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn start() -> Option<OwnPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).max());
        let Some(bin) = bin.filter(|b| b.join("initdb").exists()) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI: no PostgreSQL binaries under /usr/lib/postgresql"
            );
            eprintln!("\n!!! SKIPPED: no PostgreSQL binaries under /usr/lib/postgresql\n");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owned = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        let init = owned
            && run_as_postgres(
                &bin.join("initdb"),
                &[
                    "-D",
                    &dir.path().join("data").to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                ],
            );
        if !init {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI: initdb as the postgres user failed (the test needs root)"
            );
            eprintln!("\n!!! SKIPPED: initdb as the postgres user failed (run as root)\n");
            return None;
        }
        let port = crate::ingest::free_port();
        let pg = OwnPostgres { dir, bin, port };
        pg.start_again();
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        assert!(
            run_as_postgres(&self.bin.join("pg_ctl"), &all),
            "pg_ctl {args:?}"
        );
    }

    fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-w", "start", "-o", &options]);
    }

    /// As a crash would: no checkpoint, connections cut.
    fn stop(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"],
        );
    }
}

fn run_as_postgres(program: &Path, args: &[&str]) -> bool {
    std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outbox_stopped_mid_run_refuses_readings_then_takes_them_again() {
    let Some(pg) = OwnPostgres::start() else {
        return;
    };
    let site = Hospital::start(Options {
        forward_over_tls: true,
        collector_db: Some(Db::connect(&pg.url()).await.unwrap()),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    let first = post_one(&mut conn, device.heart_rate(70.0), true).await;
    assert_eq!(body(&first)["status"], "committed", "{}", body(&first));

    pg.stop();
    let refused = post_one(&mut conn, device.heart_rate(71.0), false).await;
    refused_for_storage(&refused);

    // Started again: the collector takes readings by itself, and the one
    // acknowledged before the stop is stored once.
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let reply = post_one(&mut conn, device.heart_rate(72.0), true).await;
        if reply.status == 202 {
            break reply;
        }
        refused_for_storage(&reply);
        assert!(Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body(&after)["status"], "committed", "{}", body(&after));
    stored_at_server(&site, 2).await;
}
