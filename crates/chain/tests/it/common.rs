//! A node on a temporary directory, reachable over HTTP and in-process.

use alloy::network::EthereumWallet;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::rpc::transport::InProcess;
use medledger_chain::rpc::{Rpc, http};
use medledger_chain::{Node, NodeConfig, Sealing};
use std::time::Duration;

alloy::sol!(
    #[sol(rpc)]
    Counter,
    "../../contracts/out/Counter.json"
);

pub struct TestChain {
    pub _dir: tempfile::TempDir,
    pub node: Node,
    pub url: String,
    pub signer: PrivateKeySigner,
}

pub fn config(dir: &std::path::Path, allow: Vec<alloy::primitives::Address>) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_owned(),
        chain_id: 31337,
        allow,
        sealing: Sealing::OnDemand {
            min_interval: Duration::from_millis(5),
        },
    }
}

/// Starts a node whose allowlist holds one fresh account, and serves it.
pub async fn start() -> TestChain {
    let dir = tempfile::tempdir().unwrap();
    let signer = PrivateKeySigner::random();
    let node = Node::start(&config(dir.path(), vec![signer.address()])).unwrap();
    let url = serve(&node).await;
    TestChain {
        _dir: dir,
        node,
        url,
        signer,
    }
}

/// Serves `node` over HTTP on a free loopback port.
pub async fn serve(node: &Node) -> String {
    // HTTP clients (reqwest, with rustls when the S3 client turns it on)
    // take the process's crypto provider: ring, as everywhere else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(Rpc::new(node.clone()), listener));
    url
}

impl TestChain {
    /// A provider over HTTP that signs with `signer`.
    pub fn http(&self, signer: &PrivateKeySigner) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    /// A provider through the in-process transport.
    pub fn in_process(&self, signer: &PrivateKeySigner) -> DynProvider {
        let client = RpcClient::new(InProcess::new(Rpc::new(self.node.clone())), true);
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_client(client)
            .erased()
    }
}
