//! JSON-RPC over HTTP (POST /), as every Ethereum tool speaks it.

use super::{MAX_BODY_BYTES, Rpc, RpcError};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

/// The router: `POST /` answers JSON-RPC.
pub fn router(rpc: Rpc) -> Router {
    Router::new().route("/", post(handle)).with_state(rpc)
}

/// Serves JSON-RPC on `listener` until the task is dropped.
pub async fn serve(rpc: Rpc, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router(rpc)).await
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("JSON values serialize"),
    )
        .into_response()
}

async fn handle(State(rpc): State<Rpc>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        let e = RpcError::new(
            -32600,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        );
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({ "jsonrpc": "2.0", "id": null, "error": { "code": e.code, "message": e.message } }),
        );
    };
    // Store reads and EVM runs block: keep them off the async workers.
    match tokio::task::spawn_blocking(move || rpc.handle_body(&bytes)).await {
        Ok(Some(answer)) => json_response(StatusCode::OK, &answer),
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves JSON-RPC over mutual TLS with medledger certificates (HTTP/1.1
/// and HTTP/2): only members of the healthcare ecosystem read the chain.
/// Sending still needs a permitted account, as over plain HTTP.
pub async fn serve_tls(
    rpc: Rpc,
    listener: tokio::net::TcpListener,
    acceptor: medledger_pki::Acceptor,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;
    let app = router(rpc);
    let refusals = std::sync::Arc::new(medledger_pki::throttle::LogThrottle::new(
        "refused connections",
    ));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not die.
                tracing::warn!("medledger chain: accepting a TLS connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app, refusals) = (acceptor.clone(), app.clone(), refusals.clone());
        tokio::spawn(async move {
            // A refused handshake (no, foreign or revoked certificate, plain
            // HTTP) ends here, logged; the acceptor already told plain-HTTP
            // clients.
            let tls = match acceptor.accept(tcp).await {
                Ok((tls, _identity)) => tls,
                Err(rejection) => {
                    let certificate = medledger_pki::tls::refused_certificate(&rejection);
                    if refusals.admit() {
                        let cause = rejection.problem_type().name();
                        let fingerprint = certificate.map(hex::encode).unwrap_or_default();
                        tracing::warn!(%peer, cause, fingerprint, "medledger chain: refused a connection: {rejection}");
                    }
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(Body::new))
                },
            );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
