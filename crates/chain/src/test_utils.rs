//! Helpers for tests that run standard tools (anvil, cast) beside our node.
//!
//! The binaries come from npm (`cd contracts && npm ci`, which `.ci/run`
//! does); `MEDLEDGER_ANVIL` and `MEDLEDGER_CAST` override their paths.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tool's path, or `None` after saying loudly that the test is skipped
/// (outside CI; in CI a missing tool fails the test).
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os(format!("MEDLEDGER_{}", name.to_uppercase()))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../../contracts/node_modules/.bin/{name}"))
        });
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{name} not found at {}: run `cd contracts && npm ci` (or set MEDLEDGER_{})",
        path.display(),
        name.to_uppercase()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("\n!!! SKIPPED: {message}\n");
    None
}

/// anvil on a free loopback port, killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    /// Its JSON-RPC URL.
    pub url: String,
}

impl Anvil {
    /// Starts anvil at `bin` with `args` and waits until it accepts
    /// connections.
    pub fn start(bin: &Path, args: &[&OsStr]) -> Anvil {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let mut anvil = Anvil {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = anvil.child.try_wait() {
                panic!("anvil exited at start: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "anvil did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        anvil
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
