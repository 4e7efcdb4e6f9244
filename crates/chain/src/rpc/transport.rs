//! An in-process alloy transport: the rest of medledger talks to the
//! embedded node through the same alloy `Provider` it would use over HTTP,
//! without a socket.

use super::Rpc;
use alloy_json_rpc::{RequestPacket, ResponsePacket};
use alloy_transport::{TransportError, TransportErrorKind, TransportFut};
use std::task::{Context, Poll};

/// A transport that hands requests to the node's JSON-RPC service.
#[derive(Debug, Clone)]
pub struct InProcess {
    rpc: Rpc,
}

impl InProcess {
    /// A transport to `rpc`.
    pub fn new(rpc: Rpc) -> Self {
        InProcess { rpc }
    }
}

impl tower::Service<RequestPacket> for InProcess {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        let rpc = self.rpc.clone();
        Box::pin(async move {
            let body = serde_json::to_vec(&request).map_err(TransportErrorKind::custom)?;
            let answer = tokio::task::spawn_blocking(move || rpc.handle_body(&body))
                .await
                .map_err(TransportErrorKind::custom)?
                .unwrap_or(serde_json::Value::Null);
            let text = answer.to_string();
            serde_json::from_str(&text).map_err(|e| TransportError::deser_err(e, text))
        })
    }
}
