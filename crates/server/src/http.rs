//! The server's endpoints: `POST /v1/batches` for collectors; for people,
//! proofs, records, ledgers, audit trails, alerts (their stream,
//! preferences and webhooks), annotations, break-glass justifications,
//! the directory of names, and erasure.

use crate::State;
use crate::answer::{
    Refused, bounded, fhir_response, json_response, number_param, problem, problem_retry_after,
    query_param, refused, unavailable,
};
use crate::caller::Caller;
use crate::ingest::{self, Unavailable};
use crate::subjects::{admin_of, patient_of, patient_ref, subject_of};
use alloy::primitives::Address;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use medledger_patient_ledger::reading_proof::{self, AnchorRef, BatchPart, LedgerPart};
use medledger_patient_ledger::{ReadingProof, Tree, leaf_hash};
use medledger_pki::Role;
use medledger_pki::https::{self, Peer};
use medledger_protocol::{ForwardBatch, ProblemType};
use medledger_storage::sqlx::{self, Row};
use std::sync::Arc;

/// `Registry.NodeKind.Collector`.
const COLLECTOR: u8 = 1;
/// `Registry.NodeKind.Server`.
const SERVER: u8 = 2;

/// The largest forwarded batch.
const MAX_BATCH_BYTES: usize = 64 << 20;

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/batches", post(batches))
        .merge(people())
        .nest(crate::fhir_api::BASE_PATH, crate::fhir_api::router())
        .route("/healthz", get(|| async { "ok" }))
        .fallback(https::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::directory::learn,
        ))
        .layer(axum::middleware::from_fn(crate::caller::from_certificate))
        .layer(axum::middleware::from_fn(https::problems_only))
        .with_state(state)
}

/// The endpoints for people, on the API port and on the portal: each
/// handler reads the request's [`Caller`], however it was identified.
pub(crate) fn people() -> Router<Arc<State>> {
    Router::new()
        .route("/v1/readings/{hash}/proof", get(proof))
        .route("/v1/records", get(records))
        .route("/v1/ledger", get(ledger))
        .route("/v1/annotations", post(annotations))
        .route("/v1/justifications", get(justification).post(justify))
        .route("/v1/directory", get(directory))
        .route("/v1/directory/{account}", axum::routing::put(name_person))
        .route("/v1/patients/{patient}", axum::routing::delete(erase))
        .route("/v1/audit", get(audit))
        .route("/v1/alerts", get(alerts))
        .route("/v1/alerts/stream", get(alert_stream))
        .route(
            "/v1/alerts/preferences",
            get(preferences).put(set_preferences),
        )
        .route(
            "/v1/alerts/webhook",
            get(webhook).put(set_webhook).delete(remove_webhook),
        )
}

/// How long a client is asked to wait when storage fails.
pub(crate) const STORAGE_RETRY_S: u64 = 5;

async fn batches(
    AxState(state): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    body: Body,
) -> Response {
    // A collector, or another server sending on the readings of patients
    // whose ledger this one holds.
    let (kind, source, what) = match peer.identity.role {
        Role::Collector => (COLLECTOR, ingest::Source::Peer, "collector"),
        Role::Server => (SERVER, ingest::Source::Server, "server"),
        _ => {
            return problem(
                ProblemType::WrongRole,
                "only collectors (and servers) forward batches",
            );
        }
    };
    // A certificate is not enough: the Registry must list the account as
    // an active node of that kind.
    let Some(account) = peer.identity.address() else {
        return problem(ProblemType::WrongRole, "the certificate names no account");
    };
    match state.view.contracts().registry().node(account).call().await {
        Ok(node) if node.active && node.kind == kind => {}
        Ok(_) => {
            return problem(
                ProblemType::Forbidden,
                format!("{account} is not an active {what} in the Registry"),
            );
        }
        Err(e) => {
            return unavailable(format!("the chain cannot be asked: {e}")).into();
        }
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BATCH_BYTES).await else {
        return problem(
            ProblemType::TooLarge,
            format!("a batch is at most {MAX_BATCH_BYTES} bytes"),
        );
    };
    let mut batch = match ForwardBatch::from_cbor(&bytes) {
        Ok(b) => b,
        Err(e) => return problem(ProblemType::Malformed, e.to_string()),
    };
    state.portal.saw(
        format!("node:{}", account.to_string().to_lowercase()),
        medledger_protocol::now_ms(),
    );
    let order = batch.order;
    let held = std::mem::take(&mut batch.held);
    let turn = async {
        match order {
            Some(order) => state
                .turns
                .wait(account, order)
                .await
                .map_err(|e| Unavailable::Now(e.to_string())),
            None => Ok(()),
        }
    };
    let committed = ingest::commit(&state, batch, source, turn).await;
    if let Some(order) = order {
        state.turns.finished(account, order, committed.is_ok());
    }
    if committed.is_ok() {
        crate::held::alert(&state, account, held).await;
    }
    match committed {
        Ok(reply) => json_response(&reply),
        Err(e) => {
            tracing::warn!(
                "medledger server: a batch from {what} {account} was not committed: {e}"
            );
            match e {
                Unavailable::Storage(_) => problem_retry_after(
                    ProblemType::StorageUnavailable,
                    "the server cannot store readings now (its storage is full or failing); send the batch again later",
                    STORAGE_RETRY_S,
                ),
                Unavailable::Now(_) => problem_retry_after(
                    ProblemType::Unavailable,
                    "the server cannot decide the batch now (the chain, the server holding a patient's ledger, or the batch it follows); send it again",
                    1,
                ),
            }
        }
    }
}

/// `GET /v1/records?request=ID`.
async fn records(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Response {
    let id = match number_param(&uri, "request") {
        Ok(id) => id,
        Err(refusal) => return refusal.into(),
    };
    let Some(id) = id else {
        return problem(
            ProblemType::Malformed,
            "name the access request: /v1/records?request=ID",
        );
    };
    match crate::records::serve(&state, &caller, id, &Default::default()).await {
        Ok(page) => fhir_response(&page.bundle),
        Err(r) => problem(r.kind, r.detail),
    }
}

/// `POST /v1/justifications`: the text of a break-glass justification,
/// from the doctor who broke the glass (see [`crate::justifications`]).
async fn justify(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Text {
        request: u64,
        text: String,
    }
    let limit = crate::justifications::MAX_TEXT_BYTES * 2 + 1024;
    let shape = r#"{"request": ID, "text": "..."}"#;
    let text: Text = match json_body(body, limit, "a justification", shape).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    match crate::justifications::store(&state, &caller, text.request, &text.text).await {
        Ok(answer) => json_response(&answer),
        Err(r) => r.into(),
    }
}

/// A JSON body of at most `limit` bytes, as `T`: `what` names the body in
/// a refusal, `shape` shows what is expected.
async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
    what: &str,
    shape: &str,
) -> Result<T, Response> {
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(problem(
            ProblemType::TooLarge,
            format!("{what} is at most {limit} bytes of JSON"),
        ));
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| problem(ProblemType::Malformed, format!("expected {shape}: {e}")))
}

/// `GET /v1/justifications?request=ID`: a break-glass justification, for
/// an admin or the patient.
async fn justification(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Response {
    let id = match number_param(&uri, "request") {
        Ok(Some(id)) => id,
        Ok(None) => {
            return problem(
                ProblemType::Malformed,
                "name the request: /v1/justifications?request=ID",
            );
        }
        Err(refusal) => return refusal.into(),
    };
    match crate::justifications::text(&state, &caller, id).await {
        Ok(Some(found)) => json_response(&found),
        Ok(None) => problem(
            ProblemType::NotFound,
            format!("no justification of request {id} was given to this server"),
        ),
        Err(r) => r.into(),
    }
}

/// `DELETE /v1/patients/{patientRef}`: erase (forget) the patient, asked
/// by the patient (their own certificate) or an admin.
async fn erase(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(patient): Path<String>,
) -> Response {
    let Some(named) = patient_ref(&patient) else {
        return problem(
            ProblemType::Malformed,
            "name the patient: /v1/patients/<patientRef, 64 hex digits>",
        );
    };
    let allowed = match subject_of(&state, &caller, Some(named)).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    if allowed != named {
        return problem(
            ProblemType::Forbidden,
            "a patient may erase only themselves",
        );
    }
    match crate::erase::erase(&state, &named).await {
        Ok(done) => json_response(&done),
        Err(e) => problem(ProblemType::Unavailable, e),
    }
}

/// `POST /v1/annotations` with `{"annotation": ID, "text": "..."}`: the
/// text of the caller's on-chain annotation.
async fn annotations(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Text {
        annotation: u64,
        text: String,
    }
    let limit = crate::annotations::MAX_TEXT_BYTES * 2 + 1024;
    let shape = r#"{"annotation": ID, "text": "..."}"#;
    let text: Text = match json_body(body, limit, "an annotation", shape).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    match crate::annotations::store(&state, &caller, text.annotation, &text.text).await {
        Ok(answer) => json_response(&answer),
        Err(r) => problem(r.kind, r.detail),
    }
}

/// The patientRef named by `?patient=`: `None` if absent, a 400 if it is
/// not 64 hex digits.
fn patient_param(uri: &axum::http::Uri) -> Result<Option<[u8; 32]>, Refused> {
    query_param(uri, "patient")
        .map(|v| {
            patient_ref(v).ok_or_else(|| {
                refused(
                    ProblemType::Malformed,
                    "?patient= takes a patientRef: 64 hex digits",
                )
            })
        })
        .transpose()
}

/// `GET /v1/directory`: the names the caller may see, by account.
async fn directory(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    match state.directory.visible_to(&caller).await {
        Ok(names) => json_response(&serde_json::json!({ "names": names })),
        Err(e) => unavailable(e).into(),
    }
}

/// `PUT /v1/directory/{account}` with `{"name": "...", "role": "doctor"}`:
/// an admin names a person.
async fn name_person(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(account): Path<String>,
    body: Body,
) -> Response {
    if let Err(refused) = admin_of(&state, &caller).await {
        return refused;
    }
    let Ok(account) = account.parse::<Address>() else {
        return problem(
            ProblemType::Malformed,
            format!(
                "`{}` is not an account (0x and 40 hex digits)",
                bounded(&account)
            ),
        );
    };
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
        role: String,
    }
    let shape = r#"{"name": "...", "role": "doctor|nurse|admin|patient"}"#;
    let named: Named = match json_body(body, 4096, "a name", shape).await {
        Ok(n) => n,
        Err(refused) => return refused,
    };
    let role = match named.role.as_str() {
        "doctor" => Role::Doctor,
        "nurse" => Role::Nurse,
        "admin" => Role::Admin,
        "patient" => Role::Patient,
        other => {
            return problem(
                ProblemType::Malformed,
                format!(
                    "role `{}`: expected doctor, nurse, admin or patient",
                    bounded(other)
                ),
            );
        }
    };
    match state.directory.set(account, role, &named.name).await {
        Ok(()) => {
            json_response(&serde_json::json!({ "account": account, "name": named.name.trim() }))
        }
        Err(r) => r.into(),
    }
}

/// [`subject_of`] with the patient named by `?patient=`.
async fn subject_named(
    state: &State,
    caller: &Caller,
    uri: &axum::http::Uri,
) -> Result<[u8; 32], Response> {
    let named = patient_param(uri).map_err(Response::from)?;
    subject_of(state, caller, named).await
}

/// `GET /v1/ledger[?patient=HEX]`: the patient's ledger as a proof bundle
/// (`medledger-ledger-bundle/1`), for the patient or an admin.
async fn ledger(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Response {
    let patient = match subject_named(&state, &caller, &uri).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    match state.ledger.export(&patient).await {
        Ok(bundle) => json_response(&bundle),
        Err(e) => unavailable(e).into(),
    }
}

/// `GET /v1/audit[?patient=HEX]`: the patient's record reads as a FHIR
/// Bundle of AuditEvents, for the patient or an admin.
async fn audit(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Response {
    let patient = match subject_named(&state, &caller, &uri).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    match crate::records::audit_events(&state, &patient).await {
        Ok(bundle) => fhir_response(&bundle),
        Err(r) => problem(r.kind, r.detail),
    }
}

/// `GET /v1/alerts?after=N&limit=M`: the patient's alerts after `N`.
async fn alerts(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let (after, limit) = match (number_param(&uri, "after"), number_param(&uri, "limit")) {
        (Ok(after), Ok(limit)) => (after.unwrap_or(0), limit.unwrap_or(1000).min(1000)),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal.into(),
    };
    match state.alerts.list(&patient, after, limit).await {
        Ok(list) => json_response(&serde_json::json!({ "alerts": list })),
        Err(e) => unavailable(e).into(),
    }
}

/// `GET /v1/alerts/preferences`: the patient's alert preferences.
async fn preferences(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    match state.alerts.preferences(&patient).await {
        Ok(prefs) => json_response(&prefs),
        Err(e) => unavailable(e).into(),
    }
}

/// `PUT /v1/alerts/preferences`: replaces them (JSON, as `GET` gives).
async fn set_preferences(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return problem(ProblemType::TooLarge, "preferences are at most 64 KiB");
    };
    let prefs: crate::alerts::Preferences = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return problem(ProblemType::Malformed, format!("preferences: {e}")),
    };
    if let Err(e) = prefs.check() {
        return problem(ProblemType::Malformed, format!("preferences: {e}"));
    }
    match state.alerts.set_preferences(&patient, &prefs).await {
        Ok(()) => json_response(&prefs),
        Err(e) => unavailable(e).into(),
    }
}

/// `GET /v1/alerts/webhook`: `{"url": ...}` or `{"url": null}`.
async fn webhook(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    match crate::webhook::url(&state, &patient).await {
        Ok(url) => json_response(&serde_json::json!({ "url": url })),
        Err(e) => unavailable(e).into(),
    }
}

/// `PUT /v1/alerts/webhook`: `{"url", "secret", "after"}`: deliver the
/// alerts after `after` (default: from now on) to `url`, signed with
/// `secret` (at least 16 characters). `url` must be `https://` and resolve
/// only to addresses the server may reach (`webhook::guard`); a refusal is
/// 400 `malformed` saying why. The URL is stored as parsed.
async fn set_webhook(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    #[derive(serde::Deserialize)]
    struct Hook {
        url: String,
        secret: String,
        after: Option<u64>,
    }
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return problem(ProblemType::TooLarge, "a webhook is at most 64 KiB");
    };
    let hook: Hook = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(e) => return problem(ProblemType::Malformed, format!("webhook: {e}")),
    };
    if hook.secret.len() < 16 {
        return problem(
            ProblemType::Malformed,
            "the webhook secret must be at least 16 characters",
        );
    }
    let url = match state.webhooks.check(&hook.url).await {
        Ok(target) => target.endpoint().url.clone(),
        Err(refused) => return problem(ProblemType::Malformed, refused.to_string()),
    };
    let after = match hook.after {
        Some(a) => a,
        None => match state.alerts.last_id().await {
            Ok(id) => id,
            Err(e) => return unavailable(e).into(),
        },
    };
    let new = crate::webhook::NewHook {
        url: url.as_str(),
        secret: &hook.secret,
        set_by: &caller.certificate,
    };
    match crate::webhook::set(&state, &patient, Some(new), after).await {
        Ok(()) => json_response(&serde_json::json!({ "url": url.as_str(), "after": after })),
        Err(e) => unavailable(e).into(),
    }
}

/// `DELETE /v1/alerts/webhook`.
async fn remove_webhook(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    match crate::webhook::set(&state, &patient, None, 0).await {
        Ok(()) => json_response(&serde_json::json!({ "url": null })),
        Err(e) => unavailable(e).into(),
    }
}

/// `GET /v1/alerts/stream`: server-sent events, one per alert, from the
/// one after `Last-Event-ID` (or `?after=N`), then live, until the
/// caller's certificate is revoked.
async fn alert_stream(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let patient = match patient_of(&state, &caller).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let after = match headers.get("last-event-id") {
        Some(v) => match v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            Some(id) => id,
            None => {
                return problem(
                    ProblemType::Malformed,
                    "Last-Event-ID takes the id of an alert: a whole number",
                );
            }
        },
        None => match number_param(&uri, "after") {
            Ok(after) => after.unwrap_or(0),
            Err(refusal) => return refusal.into(),
        },
    };
    let newest = state.alerts.follow();
    let revoked = caller
        .certificate
        .clone()
        .revoked(state.client_auth.clone());
    let stream = futures_util::stream::unfold(
        (state, after, newest),
        move |(state, mut after, mut newest)| async move {
            loop {
                match state.alerts.list(&patient, after, 100).await {
                    Ok(list) if !list.is_empty() => {
                        let mut frames = String::new();
                        for alert in &list {
                            after = alert.id;
                            let data = serde_json::to_string(alert).unwrap_or_default();
                            frames.push_str(&format!(
                                "id: {}\nevent: alert\ndata: {data}\n\n",
                                alert.id
                            ));
                        }
                        return Some((
                            Ok::<_, std::convert::Infallible>(frames),
                            (state, after, newest),
                        ));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
                // Nothing new: wait, with a comment now and then so that
                // proxies keep the connection.
                if tokio::time::timeout(std::time::Duration::from_secs(15), newest.changed())
                    .await
                    .is_err()
                {
                    return Some((Ok(": keep-alive\n\n".to_owned()), (state, after, newest)));
                }
            }
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(futures_util::StreamExt::take_until(stream, revoked)),
    )
        .into_response()
}

/// What a proof lookup needs from the reading index.
struct Indexed {
    patient: [u8; 32],
    index: u64,
    batch: Vec<u8>,
    batch_pos: u64,
}

async fn proof(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(hash): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let Ok(hash) = <[u8; 32]>::try_from(hex::decode(&hash).unwrap_or_default().as_slice()) else {
        return problem(ProblemType::Malformed, "a reading hash is 64 hex digits");
    };
    let request = match number_param(&uri, "request") {
        Ok(request) => request,
        Err(refusal) => return refusal.into(),
    };
    if let Err(refusal) = may_see(&state, &caller, &hash, request).await {
        return refusal;
    }
    match build_proof(&state, &hash).await {
        Ok(Some(p)) => json_response(&p),
        Ok(None) => problem(ProblemType::NotFound, "no reading with this hash is stored"),
        Err(e) => problem(ProblemType::Unavailable, e),
    }
}

/// Whether `caller` may see the proof of reading `hash`: its patient, or a
/// doctor or nurse with a usable access request (`request`) for them.
async fn may_see(
    state: &State,
    caller: &Caller,
    hash: &[u8; 32],
    request: Option<u64>,
) -> Result<(), Response> {
    let row = sqlx::query("SELECT patient FROM ingest_readings WHERE hash = $1")
        .bind(hash.to_vec())
        .fetch_optional(state.db.pool())
        .await
        .map_err(|e| Response::from(unavailable(e)))?;
    let Some(row) = row else {
        return Err(problem(
            ProblemType::NotFound,
            "no reading with this hash is stored",
        ));
    };
    let patient: Vec<u8> = row
        .try_get("patient")
        .map_err(|e| Response::from(unavailable(e)))?;
    let refused = || {
        problem(
            ProblemType::Forbidden,
            "a reading's proof is for its patient, or for staff with a usable access request for them (?request=ID)",
        )
    };
    match caller.role {
        Role::Patient => match patient_of(state, caller).await {
            Ok(own) if own.as_slice() == patient.as_slice() => Ok(()),
            _ => Err(refused()),
        },
        Role::Doctor | Role::Nurse => {
            let (Some(id), Some(me)) = (request, caller.account) else {
                return Err(refused());
            };
            let contracts = state.view.contracts();
            let of = contracts
                .access_log()
                .requestOf(alloy::primitives::U256::from(id))
                .call()
                .await;
            let usable = contracts.request_usable(id, me).await.unwrap_or(false);
            match of {
                Ok(r)
                    if usable
                        && r.requester == me
                        && r.patientRef.as_slice() == patient.as_slice() =>
                {
                    Ok(())
                }
                _ => Err(refused()),
            }
        }
        _ => Err(refused()),
    }
}

fn hexes(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn anchor_ref(id: Option<i64>, tx: Option<Vec<u8>>, block: Option<i64>) -> Option<AnchorRef> {
    match (id, tx, block) {
        (Some(id), Some(tx), Some(block)) => Some(AnchorRef {
            id: u64::try_from(id).ok()?,
            tx: format!("0x{}", hex::encode(tx)),
            block: u64::try_from(block).ok()?,
        }),
        _ => None,
    }
}

async fn build_proof(state: &State, hash: &[u8; 32]) -> Result<Option<ReadingProof>, String> {
    let e = |e: sqlx::Error| e.to_string();
    let row =
        sqlx::query("SELECT patient, idx, batch, batch_pos FROM ingest_readings WHERE hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(state.db.pool())
            .await
            .map_err(e)?;
    let Some(row) = row else { return Ok(None) };
    let at = Indexed {
        patient: row
            .try_get::<Vec<u8>, _>("patient")
            .map_err(e)?
            .as_slice()
            .try_into()
            .map_err(|_| "bad patientRef")?,
        index: u64::try_from(row.try_get::<i64, _>("idx").map_err(e)?).unwrap_or(0),
        batch: row.try_get("batch").map_err(e)?,
        batch_pos: u64::try_from(row.try_get::<i64, _>("batch_pos").map_err(e)?).unwrap_or(0),
    };

    // The ledger: the newest anchored checkpoint that covers the entry,
    // else a fresh one.
    let anchored = sqlx::query(
        "SELECT note, anchor_id, anchor_tx, anchor_block FROM ledger_anchors \
         WHERE patient = $1 AND size > $2 AND anchor_id IS NOT NULL ORDER BY size DESC LIMIT 1",
    )
    .bind(at.patient.to_vec())
    .bind(i64::try_from(at.index).unwrap_or(i64::MAX))
    .fetch_optional(state.db.pool())
    .await
    .map_err(e)?;
    let (note, checkpoint_anchor) = match anchored {
        Some(r) => (
            r.try_get::<String, _>("note").map_err(e)?,
            anchor_ref(
                r.try_get("anchor_id").map_err(e)?,
                r.try_get("anchor_tx").map_err(e)?,
                r.try_get("anchor_block").map_err(e)?,
            ),
        ),
        None => (
            state
                .ledger
                .checkpoint(&at.patient)
                .await
                .map_err(|e| e.to_string())?,
            None,
        ),
    };
    // Anchored before a rotation, it is signed by a retired key.
    let cp = state
        .ledger
        .history()
        .verify_checkpoint(&note)
        .map_err(|e| e.to_string())?;
    let entry = state
        .ledger
        .entry(&at.patient, at.index)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the ledger entry is missing")?;
    let inclusion = state
        .ledger
        .inclusion(&at.patient, at.index, cp.size)
        .await
        .map_err(|e| e.to_string())?;

    // The batch: every reading hash of it, in order.
    let members =
        sqlx::query("SELECT hash FROM ingest_readings WHERE batch = $1 ORDER BY batch_pos")
            .bind(at.batch.clone())
            .fetch_all(state.db.pool())
            .await
            .map_err(e)?;
    let mut tree = Tree::new();
    for m in &members {
        let h: Vec<u8> = m.try_get("hash").map_err(e)?;
        tree.push(leaf_hash(&h));
    }
    let batch_proof = tree
        .inclusion(at.batch_pos, tree.size())
        .map_err(|e| e.to_string())?;
    let batch_row = sqlx::query(
        "SELECT anchor_id, anchor_tx, anchor_block FROM ingest_batches WHERE root = $1",
    )
    .bind(at.batch.clone())
    .fetch_optional(state.db.pool())
    .await
    .map_err(e)?;
    let batch_anchor = match batch_row {
        Some(r) => anchor_ref(
            r.try_get("anchor_id").map_err(e)?,
            r.try_get("anchor_tx").map_err(e)?,
            r.try_get("anchor_block").map_err(e)?,
        ),
        None => None,
    };
    Ok(Some(ReadingProof {
        format: reading_proof::FORMAT.to_owned(),
        reading: hex::encode(hash),
        patient: hex::encode(at.patient),
        ledger: LedgerPart {
            index: at.index,
            entry: base64::engine::general_purpose::STANDARD.encode(&entry),
            size: cp.size,
            proof: hexes(&inclusion),
            checkpoint: note,
            verifier_key: state.ledger.verifier_key(),
            key_history: state.ledger.history().statements().to_vec(),
            anchor: checkpoint_anchor,
        },
        batch: BatchPart {
            root: hex::encode(&at.batch),
            index: at.batch_pos,
            count: tree.size(),
            proof: hexes(&batch_proof),
            anchor: batch_anchor,
        },
    }))
}
