//! `medledger chain` as a process: `kill -9` at any moment loses no block
//! whose receipt was returned, and the node resumes.

use alloy::consensus::{SignableTransaction, TxEnvelope, TxLegacy};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Chain {
    child: Child,
    pub(crate) url: String,
    /// The mutual-TLS listener's URL, with `--rpc-tls`.
    pub(crate) tls_url: String,
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `medledger chain` and reads the RPC address it prints.
fn start(dir: &Path, allow: Address) -> Chain {
    start_with(dir, allow, &[])
}

/// [`start`] with more arguments.
pub(crate) fn start_with(dir: &Path, allow: Address, extra: &[&str]) -> Chain {
    // HTTP clients (reqwest, with rustls when the S3 client turns it on)
    // take the process's crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let child = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args([
            "chain",
            "--data",
            dir.to_str().unwrap(),
            "--rpc",
            "127.0.0.1:0",
        ])
        .args([
            "--chain-id",
            "1337",
            "--min-block-interval-ms",
            "2",
            "--allow",
            &allow.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Owned by `Chain` from here on, so that it is killed and reaped on
    // every path.
    let mut chain = Chain {
        child,
        url: String::new(),
        tls_url: String::new(),
    };
    let tls = extra.contains(&"--rpc-tls");
    let stdout = BufReader::new(chain.child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(url) = line.trim().strip_prefix("JSON-RPC") {
            let url = url.trim().trim_end_matches("(mutual TLS)").trim();
            if url.starts_with("https://") {
                chain.tls_url = url.to_owned();
            } else {
                chain.url = url.to_owned();
            }
            if !tls || !chain.tls_url.is_empty() {
                return chain;
            }
        }
    }
    panic!("medledger chain exited before serving");
}

fn transfer(signer: &PrivateKeySigner, nonce: u64) -> Bytes {
    let mut tx = TxLegacy {
        chain_id: Some(1337),
        nonce,
        gas_price: 0,
        gas_limit: 21_000,
        to: TxKind::Call(Address::repeat_byte(0x42)),
        value: U256::ZERO,
        input: Bytes::new(),
    };
    let sig = signer.sign_transaction_sync(&mut tx).unwrap();
    TxEnvelope::from(tx.into_signed(sig)).encoded_2718().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_block_whose_receipt_was_returned() {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    // (tx hash, block number, block hash) of every receipt returned.
    let mut confirmed: Vec<(B256, u64, B256)> = Vec::new();
    let mut nonce = 0u64;
    for round in 0..4u64 {
        let chain = start(dir.path(), signer.address());
        let provider = ProviderBuilder::new().connect_http(chain.url.parse().unwrap());
        // Everything confirmed before is still there, in the same block.
        for (hash, number, block) in &confirmed {
            let receipt = provider.get_transaction_receipt(*hash).await.unwrap();
            let receipt =
                receipt.unwrap_or_else(|| panic!("round {round}: receipt of {hash} lost"));
            assert_eq!(
                (receipt.block_number, receipt.block_hash),
                (Some(*number), Some(*block))
            );
        }
        nonce = provider
            .get_transaction_count(signer.address())
            .await
            .unwrap()
            .max(nonce);
        // Send and confirm some, then kill while more are in flight.
        for i in 0..12u64 {
            let hash = match provider
                .send_raw_transaction(&transfer(&signer, nonce))
                .await
            {
                Ok(pending) => *pending.tx_hash(),
                Err(e) => panic!("round {round}: {e}"),
            };
            nonce += 1;
            if i >= 8 {
                continue; // in flight when killed
            }
            let receipt = loop {
                if let Some(r) = provider.get_transaction_receipt(hash).await.unwrap() {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            confirmed.push((
                hash,
                receipt.block_number.unwrap(),
                receipt.block_hash.unwrap(),
            ));
        }
        // SIGKILL: no chance to flush anything.
        drop(chain);
        // Unconfirmed transactions may or may not have made it; the next
        // round asks the node for the nonce to use.
        nonce = 0;
    }
    assert!(confirmed.len() >= 32);
}

/// Runs `medledger chain rotate-authority` on `dir`.
fn rotate_authority(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["chain", "rotate-authority", "--data", dir.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_authority_refuses_a_running_node_then_hands_over_to_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    let chain = start(dir.path(), signer.address());
    let provider = ProviderBuilder::new().connect_http(chain.url.parse().unwrap());
    let first = provider
        .send_raw_transaction(&transfer(&signer, 0))
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let old = provider
        .get_block_by_number(1.into())
        .await
        .unwrap()
        .unwrap()
        .header
        .beneficiary;

    // While the node runs: refused, nothing written.
    let refused = rotate_authority(dir.path(), &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains("stop it first"), "{stderr}");
    assert!(!dir.path().join("authority.next.key").exists());
    drop(chain);

    let done = rotate_authority(dir.path(), &["--json"]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(out["retired"], old.to_string());
    assert_eq!(out["handover_block"], 2);
    let new: Address = out["authority"].as_str().unwrap().parse().unwrap();
    assert_ne!(new, old);

    // The chain goes on: the old block is there, the next one is the new key's.
    let chain = start(dir.path(), signer.address());
    let provider = ProviderBuilder::new().connect_http(chain.url.parse().unwrap());
    let kept = provider
        .get_transaction_receipt(first.transaction_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.block_hash, first.block_hash);
    let handover = provider
        .get_block_by_number(2.into())
        .await
        .unwrap()
        .unwrap()
        .header;
    assert_eq!(handover.beneficiary, new);
    assert_eq!(handover.nonce, alloy::primitives::B64::new([0xff; 8]));
    let next = provider
        .send_raw_transaction(&transfer(&signer, 1))
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(next.block_number, Some(3));
    let sealed = provider
        .get_block_by_number(3.into())
        .await
        .unwrap()
        .unwrap()
        .header;
    assert_eq!(sealed.beneficiary, new);
}

#[test]
fn sigterm_stops_the_chain_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["chain", "--data", dir.path().to_str().unwrap()])
        .args(["--rpc", "127.0.0.1:0", "--allow"])
        .arg(Address::repeat_byte(0x11).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map(Result::unwrap)
        .any(|l| l.contains("JSON-RPC"));
    assert!(serving, "medledger chain exited before serving");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        rest.last().map(String::as_str),
        Some("medledger chain: stopping"),
        "{rest:?}"
    );
}

#[test]
fn log_file_takes_the_log_in_json_away_from_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let medledger = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    medledger(&["ca", "init", "--dir", &at("ca"), "--org", "Log"]);
    medledger(&[
        "ca",
        "issue",
        "--ca",
        &at("ca"),
        "--role",
        "server",
        "--out",
        &at("node"),
    ]);
    let port = crate::ingest::free_port();
    let log = at("chain.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["--log-file", &log, "--log-format", "json"])
        .args(["chain", "--data", &at("chain"), "--rpc", "127.0.0.1:0"])
        .args([
            "--rpc-tls",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &at("node"),
        ])
        .args([
            "--tls-root",
            &at("ca/root.crt"),
            "--tls-crl",
            &at("ca/crl.pem"),
        ])
        .arg("--allow")
        .arg(Address::repeat_byte(0x11).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Not TLS: the chain logs the refused handshake.
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            std::io::Write::write_all(&mut tcp, b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let _ = std::io::Read::read(&mut tcp, &mut [0; 64]);
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the chain exited");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut logged = String::new();
    while !logged.contains("refused a connection") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{logged}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        logged = std::fs::read_to_string(&log).unwrap_or_default();
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let line = logged.lines().find(|l| l.contains("refused")).unwrap();
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(event["level"], "WARN", "{event}");
    assert_eq!(event["fields"]["cause"], "tls-required", "{event}");
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{out:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
