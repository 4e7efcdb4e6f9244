//! The simulated hospital (`medledger_sim`) as the ingest tests use it.

use medledger_pki::https::{Connection, Reply};
pub use medledger_sim::{GROUP, Hospital as Site, now_ms};

/// A hospital with the default options.
pub async fn start() -> Site {
    Site::start(medledger_sim::Options::default())
        .await
        .unwrap()
}

/// Posts one COSE reading (`wait`: until the server committed it).
pub async fn post_one(conn: &mut Connection, cose: Vec<u8>, wait: bool) -> Reply {
    let path = if wait {
        "/v1/readings?wait=committed"
    } else {
        "/v1/readings"
    };
    conn.request("POST", path, &[("content-type", "application/cose")], cose)
        .await
        .unwrap()
}

/// The JSON body of a reply.
pub fn body(reply: &Reply) -> serde_json::Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&reply.body)))
}

/// `GET path`, which must answer 200; its JSON body.
pub async fn get_ok(conn: &mut Connection, path: &str) -> serde_json::Value {
    let reply = conn.request("GET", path, &[], vec![]).await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    body(&reply)
}

/// Serves the hospital's chain over JSON-RPC on HTTP, for `medledger`
/// processes; returns its URL.
pub async fn serve_rpc(site: &Site) -> String {
    let rpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", rpc.local_addr().unwrap());
    tokio::spawn(medledger_chain::rpc::http::serve(
        medledger_chain::rpc::Rpc::new(site.node.clone()),
        rpc,
    ));
    url
}
