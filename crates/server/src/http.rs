//! The server's endpoints: `POST /v1/batches` for collectors; for people,
//! proofs, records, ledgers, audit trails, alerts (their stream,
//! preferences and webhooks), annotations, break-glass justifications,
//! the directory of names, and erasure.

use crate::State;
use crate::answer::{
    Refused, bounded, fhir_response, json_response, number_param, query_param, refused,
};
use crate::caller::Caller;
use crate::failure::{Doing, Failure};
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
) -> Result<Response, Refused> {
    // A collector, or another server sending on the readings of patients
    // whose ledger this one holds.
    let (kind, source, what) = match peer.identity.role {
        Role::Collector => (COLLECTOR, ingest::Source::Peer, "collector"),
        Role::Server => (SERVER, ingest::Source::Server, "server"),
        _ => {
            return Err(refused(
                ProblemType::WrongRole,
                "only collectors (and servers) forward batches",
            ));
        }
    };
    // A certificate is not enough: the Registry must list the account as
    // an active node of that kind.
    let account = peer
        .identity
        .address()
        .ok_or_else(|| refused(ProblemType::WrongRole, "the certificate names no account"))?;
    let node = state
        .view
        .contracts()
        .registry()
        .node(account)
        .call()
        .await
        .doing("asking the Registry for a node")?;
    if !(node.active && node.kind == kind) {
        return Err(refused(
            ProblemType::Forbidden,
            format!("{account} is not an active {what} in the Registry"),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BATCH_BYTES)
        .await
        .map_err(|_| {
            refused(
                ProblemType::TooLarge,
                format!("a batch is at most {MAX_BATCH_BYTES} bytes"),
            )
        })?;
    let mut batch = ForwardBatch::from_cbor(&bytes)
        .map_err(|e| refused(ProblemType::Malformed, e.to_string()))?;
    state.heard.node(account, medledger_protocol::now_ms());
    let order = batch.order;
    let held = std::mem::take(&mut batch.held);
    let turn = async {
        match order {
            Some(order) => state
                .turns
                .wait(account, order)
                .await
                .map_err(|e| Unavailable::now("waiting for the batch this one follows", e)),
            None => Ok(()),
        }
    };
    let committed = ingest::commit(&state, batch, source, turn).await;
    if let Some(order) = order {
        state.turns.finished(account, order, committed.is_ok());
    }
    let reply = committed.map_err(|e| {
        tracing::warn!("medledger server: a batch from {what} {account} was not committed: {e}");
        match e {
            Unavailable::Storage(_) => refused(
                ProblemType::StorageUnavailable,
                "the server cannot store readings now (its storage is full or failing); send the batch again later",
            )
            .retry_after(STORAGE_RETRY_S),
            Unavailable::Now(_) => refused(
                ProblemType::Unavailable,
                "the server cannot decide the batch now (the chain, the server holding a patient's ledger, or the batch it follows); send it again",
            )
            .retry_after(1),
        }
    })?;
    crate::held::alert(&state, account, held).await;
    Ok(json_response(&reply))
}

/// `GET /v1/records?request=ID`.
async fn records(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let id = number_param(&uri, "request")?.ok_or_else(|| {
        refused(
            ProblemType::Malformed,
            "name the access request: /v1/records?request=ID",
        )
    })?;
    let page = crate::records::serve(&state, &caller, id, &Default::default()).await?;
    Ok(fhir_response(&page.bundle))
}

/// `POST /v1/justifications` with `{"request": ID, "text": "..."}`: the
/// text of a break-glass justification, from the doctor who broke the
/// glass (see [`crate::justifications`]).
async fn justify(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Refused> {
    let max = crate::justifications::MAX_TEXT_BYTES;
    let (id, text) = text_body(body, "request", "a justification", max).await?;
    let answer = crate::justifications::store(&state, &caller, id, &text).await?;
    Ok(json_response(&answer))
}

/// The body of an off-chain text, `{"<key>": ID, "text": "..."}` (`what`
/// names it in a refusal): the record's id and the text, of at most `max`
/// bytes (JSON escapes may double it).
async fn text_body(
    body: Body,
    key: &str,
    what: &str,
    max: usize,
) -> Result<(u64, String), Refused> {
    let shape = format!(r#"{{"{key}": ID, "text": "..."}}"#);
    let fields: serde_json::Map<String, serde_json::Value> =
        json_body(body, max * 2 + 1024, what, &shape).await?;
    let id = fields.get(key).and_then(serde_json::Value::as_u64);
    let text = fields.get("text").and_then(serde_json::Value::as_str);
    match (id, text) {
        (Some(id), Some(text)) => Ok((id, text.to_owned())),
        _ => Err(refused(ProblemType::Malformed, format!("expected {shape}"))),
    }
}

/// A JSON body of at most `limit` bytes, as `T`: `what` names the body in
/// a refusal, `shape` shows what is expected.
async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
    what: &str,
    shape: &str,
) -> Result<T, Refused> {
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Err(refused(
            ProblemType::TooLarge,
            format!("{what} is at most {limit} bytes of JSON"),
        ));
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| refused(ProblemType::Malformed, format!("expected {shape}: {e}")))
}

/// `GET /v1/justifications?request=ID`: a break-glass justification, for
/// an admin or the patient.
async fn justification(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let id = number_param(&uri, "request")?.ok_or_else(|| {
        refused(
            ProblemType::Malformed,
            "name the request: /v1/justifications?request=ID",
        )
    })?;
    let found = crate::justifications::text(&state, &caller, id)
        .await?
        .ok_or_else(|| {
            refused(
                ProblemType::NotFound,
                format!("no justification of request {id} was given to this server"),
            )
        })?;
    Ok(json_response(&found))
}

/// `DELETE /v1/patients/{patientRef}`: erase (forget) the patient, asked
/// by the patient (their own certificate) or an admin.
async fn erase(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(patient): Path<String>,
) -> Result<Response, Refused> {
    let named = patient_ref(&patient).ok_or_else(|| {
        refused(
            ProblemType::Malformed,
            "name the patient: /v1/patients/<patientRef, 64 hex digits>",
        )
    })?;
    if subject_of(&state, &caller, Some(named)).await? != named {
        return Err(refused(
            ProblemType::Forbidden,
            "a patient may erase only themselves",
        ));
    }
    let done = crate::erase::erase(&state, &named).await?;
    Ok(json_response(&done))
}

/// `POST /v1/annotations` with `{"annotation": ID, "text": "..."}`: the
/// text of the caller's on-chain annotation.
async fn annotations(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Refused> {
    let max = crate::annotations::MAX_TEXT_BYTES;
    let (id, text) = text_body(body, "annotation", "an annotation", max).await?;
    let answer = crate::annotations::store(&state, &caller, id, &text).await?;
    Ok(json_response(&answer))
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
) -> Result<Response, Refused> {
    let names = state
        .directory
        .visible_to(&caller)
        .await
        .doing("reading the directory")?;
    Ok(json_response(&serde_json::json!({ "names": names })))
}

/// `PUT /v1/directory/{account}` with `{"name": "...", "role": "doctor"}`:
/// an admin names a person.
async fn name_person(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    Path(account): Path<String>,
    body: Body,
) -> Result<Response, Refused> {
    admin_of(&state, &caller).await?;
    let account = account.parse::<Address>().map_err(|_| {
        refused(
            ProblemType::Malformed,
            format!(
                "`{}` is not an account (0x and 40 hex digits)",
                bounded(&account)
            ),
        )
    })?;
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
        role: String,
    }
    let shape = r#"{"name": "...", "role": "doctor|nurse|admin|patient"}"#;
    let named: Named = json_body(body, 4096, "a name", shape).await?;
    let role = match named.role.as_str() {
        "doctor" => Role::Doctor,
        "nurse" => Role::Nurse,
        "admin" => Role::Admin,
        "patient" => Role::Patient,
        other => {
            return Err(refused(
                ProblemType::Malformed,
                format!(
                    "role `{}`: expected doctor, nurse, admin or patient",
                    bounded(other)
                ),
            ));
        }
    };
    state.directory.set(account, role, &named.name).await?;
    Ok(json_response(
        &serde_json::json!({ "account": account, "name": named.name.trim() }),
    ))
}

/// [`subject_of`] with the patient named by `?patient=`.
async fn subject_named(
    state: &State,
    caller: &Caller,
    uri: &axum::http::Uri,
) -> Result<[u8; 32], Refused> {
    subject_of(state, caller, patient_param(uri)?).await
}

/// `GET /v1/ledger[?patient=HEX]`: the patient's ledger as a proof bundle
/// (`medledger-ledger-bundle/1`), for the patient or an admin.
async fn ledger(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let patient = subject_named(&state, &caller, &uri).await?;
    let bundle = state
        .ledger
        .export(&patient)
        .await
        .doing("exporting a ledger")?;
    Ok(json_response(&bundle))
}

/// `GET /v1/audit[?patient=HEX]`: the patient's record reads as a FHIR
/// Bundle of AuditEvents, for the patient or an admin.
async fn audit(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let patient = subject_named(&state, &caller, &uri).await?;
    let bundle = crate::records::audit_events(&state, &patient).await?;
    Ok(fhir_response(&bundle))
}

/// `GET /v1/alerts?after=N&limit=M`: the patient's alerts after `N`.
async fn alerts(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let after = number_param(&uri, "after")?.unwrap_or(0);
    let limit = number_param(&uri, "limit")?.unwrap_or(1000).min(1000);
    let list = state
        .alerts
        .list(&patient, after, limit)
        .await
        .doing("listing alerts")?;
    Ok(json_response(&serde_json::json!({ "alerts": list })))
}

/// `GET /v1/alerts/preferences`: the patient's alert preferences.
async fn preferences(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let prefs = state
        .alerts
        .preferences(&patient)
        .await
        .doing("reading alert preferences")?;
    Ok(json_response(&prefs))
}

/// `PUT /v1/alerts/preferences`: replaces them (JSON, as `GET` gives).
async fn set_preferences(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return Err(refused(
            ProblemType::TooLarge,
            "preferences are at most 64 KiB",
        ));
    };
    let prefs: crate::alerts::Preferences = serde_json::from_slice(&bytes)
        .map_err(|e| refused(ProblemType::Malformed, format!("preferences: {e}")))?;
    prefs
        .check()
        .map_err(|e| refused(ProblemType::Malformed, format!("preferences: {e}")))?;
    state
        .alerts
        .set_preferences(&patient, &prefs)
        .await
        .doing("storing alert preferences")?;
    Ok(json_response(&prefs))
}

/// `GET /v1/alerts/webhook`: `{"url": ...}` or `{"url": null}`.
async fn webhook(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let url = crate::webhook::url(&state, &patient)
        .await
        .doing("reading a webhook")?;
    Ok(json_response(&serde_json::json!({ "url": url })))
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
) -> Result<Response, Refused> {
    #[derive(serde::Deserialize)]
    struct Hook {
        url: String,
        secret: String,
        after: Option<u64>,
    }
    let patient = patient_of(&state, &caller).await?;
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return Err(refused(
            ProblemType::TooLarge,
            "a webhook is at most 64 KiB",
        ));
    };
    let hook: Hook = serde_json::from_slice(&bytes)
        .map_err(|e| refused(ProblemType::Malformed, format!("webhook: {e}")))?;
    if hook.secret.len() < 16 {
        return Err(refused(
            ProblemType::Malformed,
            "the webhook secret must be at least 16 characters",
        ));
    }
    let target = state
        .webhooks
        .check(&hook.url)
        .await
        .map_err(|unreachable| refused(ProblemType::Malformed, unreachable.to_string()))?;
    let url = target.endpoint().url.clone();
    let after = match hook.after {
        Some(a) => a,
        None => state
            .alerts
            .last_id()
            .await
            .doing("reading the last alert")?,
    };
    let new = crate::webhook::NewHook {
        url: url.as_str(),
        secret: &hook.secret,
        set_by: &caller.certificate,
    };
    crate::webhook::set(&state, &patient, Some(new), after)
        .await
        .doing("storing a webhook")?;
    Ok(json_response(
        &serde_json::json!({ "url": url.as_str(), "after": after }),
    ))
}

/// `DELETE /v1/alerts/webhook`.
async fn remove_webhook(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    crate::webhook::set(&state, &patient, None, 0)
        .await
        .doing("removing a webhook")?;
    Ok(json_response(&serde_json::json!({ "url": null })))
}

/// `GET /v1/alerts/stream`: server-sent events, one per alert, from the
/// one after `Last-Event-ID` (or `?after=N`), then live, until the
/// caller's certificate is revoked.
async fn alert_stream(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                refused(
                    ProblemType::Malformed,
                    "Last-Event-ID takes the id of an alert: a whole number",
                )
            })?,
        None => number_param(&uri, "after")?.unwrap_or(0),
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
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(futures_util::StreamExt::take_until(stream, revoked)),
    )
        .into_response())
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
) -> Result<Response, Refused> {
    let hash = <[u8; 32]>::try_from(hex::decode(&hash).unwrap_or_default().as_slice())
        .map_err(|_| refused(ProblemType::Malformed, "a reading hash is 64 hex digits"))?;
    let request = number_param(&uri, "request")?;
    may_see(&state, &caller, &hash, request).await?;
    let proof = build_proof(&state, &hash)
        .await?
        .ok_or_else(|| refused(ProblemType::NotFound, NO_SUCH_READING))?;
    Ok(json_response(&proof))
}

/// What a proof of an unknown reading answers.
const NO_SUCH_READING: &str = "no reading with this hash is stored";

/// Whether `caller` may see the proof of reading `hash`: its patient, or a
/// doctor or nurse with a usable access request (`request`) for them.
async fn may_see(
    state: &State,
    caller: &Caller,
    hash: &[u8; 32],
    request: Option<u64>,
) -> Result<(), Refused> {
    let doing = "finding a reading's patient";
    let row = sqlx::query("SELECT patient FROM ingest_readings WHERE hash = $1")
        .bind(hash.to_vec())
        .fetch_optional(state.db.pool())
        .await
        .doing(doing)?
        .ok_or_else(|| refused(ProblemType::NotFound, NO_SUCH_READING))?;
    let patient: Vec<u8> = row.try_get("patient").doing(doing)?;
    let forbidden = || {
        refused(
            ProblemType::Forbidden,
            "a reading's proof is for its patient, or for staff with a usable access request for them (?request=ID)",
        )
    };
    match caller.role {
        Role::Patient => match patient_of(state, caller).await {
            Ok(own) if own.as_slice() == patient.as_slice() => Ok(()),
            _ => Err(forbidden()),
        },
        Role::Doctor | Role::Nurse => {
            let (Some(id), Some(me)) = (request, caller.account) else {
                return Err(forbidden());
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
                _ => Err(forbidden()),
            }
        }
        _ => Err(forbidden()),
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

async fn build_proof(state: &State, hash: &[u8; 32]) -> Result<Option<ReadingProof>, Failure> {
    let doing = "reading the index for a proof";
    let row =
        sqlx::query("SELECT patient, idx, batch, batch_pos FROM ingest_readings WHERE hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(state.db.pool())
            .await
            .doing(doing)?;
    let Some(row) = row else { return Ok(None) };
    let at = Indexed {
        patient: row
            .try_get::<Vec<u8>, _>("patient")
            .doing(doing)?
            .as_slice()
            .try_into()
            .map_err(|_| {
                Failure::new("proving a reading", "a stored patientRef is not 32 bytes")
            })?,
        index: u64::try_from(row.try_get::<i64, _>("idx").doing(doing)?).unwrap_or(0),
        batch: row.try_get("batch").doing(doing)?,
        batch_pos: u64::try_from(row.try_get::<i64, _>("batch_pos").doing(doing)?).unwrap_or(0),
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
    .doing(doing)?;
    let (note, checkpoint_anchor) = match anchored {
        Some(r) => (
            r.try_get::<String, _>("note").doing(doing)?,
            anchor_ref(
                r.try_get("anchor_id").doing(doing)?,
                r.try_get("anchor_tx").doing(doing)?,
                r.try_get("anchor_block").doing(doing)?,
            ),
        ),
        None => (
            state
                .ledger
                .checkpoint(&at.patient)
                .await
                .doing("checkpointing a ledger")?,
            None,
        ),
    };
    // Anchored before a rotation, it is signed by a retired key.
    let cp = state
        .ledger
        .history()
        .verify_checkpoint(&note)
        .doing("checking a checkpoint")?;
    let entry = state
        .ledger
        .entry(&at.patient, at.index)
        .await
        .doing("reading a ledger entry")?
        .ok_or_else(|| Failure::new("reading a ledger entry", "the entry is missing"))?;
    let inclusion = state
        .ledger
        .inclusion(&at.patient, at.index, cp.size)
        .await
        .doing("proving a ledger entry")?;

    // The batch: every reading hash of it, in order.
    let members =
        sqlx::query("SELECT hash FROM ingest_readings WHERE batch = $1 ORDER BY batch_pos")
            .bind(at.batch.clone())
            .fetch_all(state.db.pool())
            .await
            .doing(doing)?;
    let mut tree = Tree::new();
    for m in &members {
        let h: Vec<u8> = m.try_get("hash").doing(doing)?;
        tree.push(leaf_hash(&h));
    }
    let batch_proof = tree
        .inclusion(at.batch_pos, tree.size())
        .doing("proving a batch member")?;
    let batch_row = sqlx::query(
        "SELECT anchor_id, anchor_tx, anchor_block FROM ingest_batches WHERE root = $1",
    )
    .bind(at.batch.clone())
    .fetch_optional(state.db.pool())
    .await
    .doing(doing)?;
    let batch_anchor = match batch_row {
        Some(r) => anchor_ref(
            r.try_get("anchor_id").doing(doing)?,
            r.try_get("anchor_tx").doing(doing)?,
            r.try_get("anchor_block").doing(doing)?,
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
