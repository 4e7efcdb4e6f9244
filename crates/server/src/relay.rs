//! Readings of patients whose ledger another server holds, sent on to it
//! over mutual TLS (`POST /v1/batches` with this server's certificate).
//! The holder takes them as verified: both servers share one database, one
//! KEK and one ledger key, so a server vouching for a reading adds no
//! trust that was not there.

use crate::ingest::Unavailable;
use crate::leases::Peer;
use medledger_pki::https::Connection;
use medledger_protocol::{CommitReply, ForwardBatch};
use std::collections::HashMap;
use std::sync::Arc;

/// Open connections to the other servers, reused.
#[derive(Default)]
pub(crate) struct Relay {
    idle: std::sync::Mutex<HashMap<Peer, Vec<Connection>>>,
}

impl Relay {
    /// Sends `batch` to `peer`; its answer, one result per reading.
    pub(crate) async fn send(
        &self,
        tls: Arc<rustls::ClientConfig>,
        peer: &Peer,
        batch: &ForwardBatch,
    ) -> Result<CommitReply, Unavailable> {
        let doing = format!("sending readings on to {}", peer.addr);
        let failed = |e: &dyn std::fmt::Display| Unavailable::now(doing.clone(), e.to_string());
        let idle = self
            .idle
            .lock()
            .expect("not poisoned")
            .get_mut(peer)
            .and_then(Vec::pop);
        let mut connection = match idle {
            Some(c) => c,
            None => Connection::open(tls, &peer.addr, &peer.server_name)
                .await
                .map_err(|e| failed(&e))?,
        };
        let reply = connection
            .request(
                "POST",
                "/v1/batches",
                &[("content-type", "application/cbor")],
                batch.to_cbor(),
            )
            .await
            .map_err(|e| failed(&e))?;
        if reply.status != 200 {
            return Err(failed(&format!(
                "answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )));
        }
        let answer: CommitReply = serde_json::from_slice(&reply.body).map_err(|e| failed(&e))?;
        if answer.results.len() != batch.readings.len() {
            return Err(failed(&format!(
                "answered for {} of {} readings",
                answer.results.len(),
                batch.readings.len()
            )));
        }
        self.idle
            .lock()
            .expect("not poisoned")
            .entry(peer.clone())
            .or_default()
            .push(connection);
        Ok(answer)
    }
}
