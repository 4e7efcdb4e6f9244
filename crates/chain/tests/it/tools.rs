//! Standard tools against our node, and our client code against anvil:
//! neither side is tied to the other.
//!
//! The binaries come from npm (`cd contracts && npm ci`, which `.ci/run`
//! does); `MEDLEDGER_ANVIL` and `MEDLEDGER_CAST` override their paths.

use crate::common::{config, serve};
use alloy::network::EthereumWallet;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::Node;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// anvil's first development key.
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The tool's path, or `None` after saying loudly that the test is skipped
/// (outside CI; in CI a missing tool fails the test).
fn tool(name: &str) -> Option<PathBuf> {
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

fn cast(cast: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(cast).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "cast {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_sends_and_reads_blocks_and_receipts() {
    let Some(cast_bin) = tool("cast") else { return };
    let dev: PrivateKeySigner = DEV_KEY.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&config(dir.path(), vec![dev.address()])).unwrap();
    let url = serve(&node).await;
    let sent = tokio::task::spawn_blocking({
        let (cast_bin, url) = (cast_bin.clone(), url.clone());
        move || {
            cast(
                &cast_bin,
                &[
                    "send",
                    "--json",
                    "--private-key",
                    DEV_KEY,
                    "--rpc-url",
                    &url,
                    "0x0000000000000000000000000000000000000042",
                ],
            )
        }
    })
    .await
    .unwrap();
    let sent: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(sent["status"], "0x1");
    let hash = sent["transactionHash"].as_str().unwrap().to_owned();
    let (receipt, block) = tokio::task::spawn_blocking(move || {
        (
            cast(&cast_bin, &["receipt", "--json", "--rpc-url", &url, &hash]),
            cast(&cast_bin, &["block", "1", "--json", "--rpc-url", &url]),
        )
    })
    .await
    .unwrap();
    let receipt: Value = serde_json::from_str(&receipt).unwrap();
    let block: Value = serde_json::from_str(&block).unwrap();
    assert_eq!(receipt["blockNumber"], "0x1");
    assert_eq!(
        receipt["from"].as_str().unwrap().to_lowercase(),
        dev.address().to_string().to_lowercase()
    );
    assert_eq!(block["hash"], receipt["blockHash"]);
    assert_eq!(block["transactions"][0], sent["transactionHash"]);
    let header = node.store().header(1).unwrap().unwrap();
    assert_eq!(
        block["hash"].as_str().unwrap(),
        header.hash_slow().to_string()
    );
}

/// anvil on a free port, stopped when dropped.
struct Anvil(Child);

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_code_runs_against_anvil() {
    let Some(anvil_bin) = tool("anvil") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _anvil = Anvil(
        Command::new(anvil_bin)
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dev: PrivateKeySigner = DEV_KEY.parse().unwrap();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(dev.clone()))
        .connect_http(format!("http://127.0.0.1:{port}").parse().unwrap())
        .erased();
    // Wait for anvil to answer.
    let started = tokio::time::Instant::now();
    while provider.get_chain_id().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "anvil did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::contract::exercise(provider, dev.address()).await;
}
