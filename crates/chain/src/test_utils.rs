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

/// Extends the stopped chain in `dir` by `blocks` empty blocks sealed by
/// its authority, many to a write transaction: a long chain for
/// benchmarks of a start, made in minutes where a node would take days.
/// Returns the new head block number.
pub fn extend_with_empty_blocks(dir: &Path, blocks: u64) -> crate::Result<u64> {
    use crate::genesis::{Genesis, layout};
    use crate::store::{BlockData, Store};
    use alloy_consensus::proofs::{calculate_receipt_root, calculate_transaction_root};
    use alloy_consensus::{Header, ReceiptEnvelope, TxEnvelope};

    let genesis = Genesis::load(dir)?;
    let key = crate::rotation::read_key(&dir.join(layout::AUTHORITY_KEY))?;
    let store = Store::open(&dir.join(layout::STORE))?;
    let head = store.head()?.ok_or_else(|| crate::ChainError::Store {
        what: "no genesis block: start a node on the directory first".into(),
    })?;
    let mut parent = store
        .header(head)?
        .ok_or_else(|| crate::ChainError::Store {
            what: format!("block {head} is missing"),
        })?;
    let transactions_root = calculate_transaction_root::<TxEnvelope>(&[]);
    let receipts_root = calculate_receipt_root::<ReceiptEnvelope>(&[]);
    let mut batch = Vec::new();
    for _ in 0..blocks {
        let parent_hash = parent.hash_slow();
        let mut header = Header {
            parent_hash,
            beneficiary: key.address(),
            state_root: parent.state_root,
            transactions_root,
            receipts_root,
            number: parent.number + 1,
            gas_limit: genesis.gas_limit,
            timestamp: parent.timestamp,
            mix_hash: parent_hash,
            nonce: crate::authority::ORDINARY_NONCE,
            base_fee_per_gas: Some(0),
            ..Header::default()
        };
        crate::seal::seal(&mut header, key.signing_key());
        batch.push(BlockData {
            hash: header.hash_slow(),
            header: header.clone(),
            txs: Vec::new(),
            tx_hashes: Vec::new(),
            receipts: Vec::new(),
        });
        parent = header;
        if batch.len() == 10_000 {
            store.commit_empty_blocks(&batch)?;
            batch.clear();
        }
    }
    store.commit_empty_blocks(&batch)?;
    Ok(parent.number)
}
