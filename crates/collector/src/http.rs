//! `POST /v1/readings`: HTTPS in front of [`crate::intake`].
//!
//! Before the body is read: the declared length against the limit (413).
//! Then the media type (`application/cose`: one reading;
//! `application/cbor`: an array), and the readings go to the intake,
//! verified against the certificate of the TLS handshake.

use crate::State;
use crate::intake::{self, Answer, Sender};
use crate::pipeline::Presented;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State as AxState};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medledger_checks::Item;
use medledger_pki::https::{self, Peer};
use medledger_protocol::ProblemType;
use std::sync::Arc;

/// The device endpoint.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/readings", post(readings))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(https::not_found)
        .layer(axum::middleware::from_fn(https::problems_only))
        .with_state(state)
}

async fn readings(
    AxState(state): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, Answer> {
    let max_body_bytes = state.limits.max_body_bytes;
    let too_large = || {
        intake::count(&state, ProblemType::TooLarge, 1);
        Answer::refuse(
            ProblemType::TooLarge,
            format!("the body is larger than {max_body_bytes} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body_bytes) {
        return Err(too_large());
    }
    let epc = peer
        .identity
        .epc()
        .map(|e| *e.as_bytes())
        .ok_or_else(|| Answer::refuse(ProblemType::WrongRole, "only devices send readings"))?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let bytes = axum::body::to_bytes(body, max_body_bytes)
        .await
        .map_err(|_| too_large())?;
    let single = match media.as_str() {
        "application/cose" => true,
        "application/cbor" => false,
        other => {
            intake::count(&state, ProblemType::Malformed, 1);
            return Err(Answer::refuse(
                ProblemType::Malformed,
                format!(
                    "content type {other:?}: send application/cose (one reading) or application/cbor (an array)"
                ),
            ));
        }
    };
    let sender = Sender {
        epc,
        peer: peer.addr.to_string(),
        device: peer.identity.subject.clone(),
        fingerprint: peer.identity.fingerprint_hex(),
    };
    let envelopes = intake::envelopes(&state, &bytes, !single)?;
    intake::admit(&state, &sender, envelopes.len())?;
    intake::remember_cas(&state, &peer.chain);
    let presented = Arc::new(Presented {
        der: peer.chain.first().cloned().unwrap_or_default(),
        fingerprint: peer.identity.fingerprint,
    });
    let items = envelopes
        .into_iter()
        .map(|cose| Item::new(cose, presented.clone()))
        .collect();
    let wait_commit = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "wait=committed"));
    let identity = peer.identity.clone();
    Ok(intake::decide(
        &state,
        &sender,
        items,
        |_| Ok(identity.clone()),
        single,
        wait_commit,
    )
    .await)
}

/// An answer goes out as its status, media type and document, with
/// `Retry-After` when the device is to wait.
impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST),
            [(header::CONTENT_TYPE, self.content_type)],
            self.body,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}
