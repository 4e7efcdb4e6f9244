//! JSON-RPC over mutual TLS: readable by holders of medledger certificates
//! only.

use crate::common::config;
use alloy::signers::local::PrivateKeySigner;
use medledger_chain::Node;
use medledger_chain::rpc::{Rpc, http};
use medledger_pki::ca::layout;
use medledger_pki::{
    Acceptor, Ca, ClientAuth, Credentials, LeafRequest, Role, client_config, files, server_config,
};
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// POSTs one JSON-RPC request over TLS with `creds` (or none).
async fn post(
    addr: std::net::SocketAddr,
    root: &[u8],
    creds: Option<&Credentials>,
    body: &str,
) -> Result<Value, String> {
    let config = client_config(creds, root, &[Role::Server]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST / HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    tls.read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (_, json) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no body in {response:?}"))?;
    serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_the_chain_over_mutual_tls_and_strangers_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "medledger test").unwrap();
    let own = Credentials::from_issued(&ca.issue(&LeafRequest::new(Role::Server)).unwrap());
    let patient = Credentials::from_issued(&ca.issue(&LeafRequest::new(Role::Patient)).unwrap());
    let root = ca.root_cert_der().unwrap();
    let crl = files::read_der_blocks(&ca.dir().join(layout::CRL), "X509 CRL").unwrap();
    let auth = ClientAuth::new(&root, crl, &Role::ALL).unwrap();
    let acceptor = Acceptor::new(server_config(&own, auth).unwrap(), Duration::from_secs(5));

    let node = Node::start(&config(
        &dir.path().join("chain"),
        vec![PrivateKeySigner::random().address()],
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve_tls(Rpc::new(node), listener, acceptor));

    let body = r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}"#;
    let answer = post(addr, &root, Some(&patient), body).await.unwrap();
    assert_eq!(answer["result"], "0x7a69");
    assert_eq!(answer["id"], 7);

    // No certificate: the handshake fails, nothing is answered.
    assert!(post(addr, &root, None, body).await.is_err());
    // A certificate of another CA: the same.
    let other = Ca::init(&dir.path().join("other"), "medledger test").unwrap();
    let stranger = Credentials::from_issued(&other.issue(&LeafRequest::new(Role::Doctor)).unwrap());
    assert!(post(addr, &root, Some(&stranger), body).await.is_err());
}
