//! What the portal's pages read: chain records, consents, vitals, ledger
//! entries, requests, and the admin's overview.

use super::events::{arg, events_of, indexed, text_or};
use crate::State;
use crate::answer::{Refused, refused};
use crate::answer::{fhir_response, json_response, number_param, query_param};
use crate::caller::Caller;
use crate::failure::Doing;
use crate::indexer::IndexedEvent;
use crate::subjects::patient_of;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use axum::extract::{Extension, Path, State as AxState};
use axum::http::Uri;
use axum::response::Response;
use medledger_contracts::{Basis, Scope, text_of};
use medledger_pki::Role;
use medledger_protocol::ProblemType;
use medledger_protocol::catalogue::CATALOGUE;
use medledger_storage::sqlx::{self, Row};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Shared = AxState<Arc<State>>;

/// Readings a vitals page shows at most (the newest).
const VITALS_READINGS: u64 = 2_000;
/// Events a page lists at most.
const MAX_EVENTS: usize = 500;
/// The newest events of the asked names `events` looks through for those
/// the caller may see.
const SCANNED_EVENTS: u64 = 20_000;
/// Event names one `events` request may ask for.
const MAX_NAMES: usize = 16;
/// Anchors the overview lists.
const RECENT_ANCHORS: u64 = 20;
/// Rule changes the overview lists.
const RECENT_RULE_CHANGES: u64 = 50;
/// Blocks the overview lists.
const RECENT_BLOCKS: u64 = 10;

fn only(caller: &Caller, roles: &[Role], what: &str) -> Result<(), Refused> {
    if roles.contains(&caller.role) {
        Ok(())
    } else {
        Err(refused(
            ProblemType::WrongRole,
            format!("{what} is for {}", names_of(roles)),
        ))
    }
}

/// The caller, if it is an admin the Registry still lists, or a staff
/// member still active: a session keeps the role it signed in with, the
/// chain decides whether it still holds.
async fn still(state: &State, caller: &Caller) -> Result<(), Refused> {
    let registry = state.view.contracts().registry();
    let Some(account) = caller.account else {
        return Err(refused(
            ProblemType::WrongRole,
            "the caller has no chain account",
        ));
    };
    let holds = match caller.role {
        Role::Admin => registry.isAdmin(account).call().await,
        Role::Doctor | Role::Nurse => registry.isActiveStaff(account).call().await,
        _ => Ok(true),
    };
    if !holds.doing("asking the Registry whether a role still holds")? {
        return Err(refused(
            ProblemType::Forbidden,
            format!(
                "the Registry no longer lists {account} as a {}",
                caller.role
            ),
        ));
    }
    Ok(())
}

fn names_of(roles: &[Role]) -> String {
    let names: Vec<String> = roles.iter().map(|r| format!("{r}s")).collect();
    names.join(" and ")
}

/// When block `number` was sealed, Unix ms (blocks never change: cached).
async fn block_time(state: &State, number: u64) -> Option<u64> {
    if let Some(t) = state.portal.block_time(number) {
        return Some(t);
    }
    let block = state
        .view
        .contracts()
        .provider()
        .get_block_by_number(number.into())
        .await
        .ok()??;
    let ms = block.header.timestamp * 1000;
    state.portal.remember_block_time(number, ms);
    Some(ms)
}

/// An indexed event as the pages read it.
async fn event_json(state: &State, e: &IndexedEvent) -> Value {
    json!({
        "block": e.block,
        "tx": B256::from(e.tx).to_string(),
        "event": e.name,
        "contract": e.address.to_string(),
        "args": readable(&e.args),
        "time_ms": block_time(state, e.block).await,
    })
}

/// Event arguments with short texts unquoted.
fn readable(args: &Value) -> Value {
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), json!(text_or(v.as_str().unwrap_or("")))))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn same_account(shown: &str, account: Option<Address>) -> bool {
    account.is_some_and(|a| shown.eq_ignore_ascii_case(&a.to_string()))
}

/// `GET /portal/v1/catalogue`: the data types, with adult reference
/// ranges for charts.
pub(super) async fn catalogue() -> Response {
    let types: Vec<Value> = CATALOGUE
        .iter()
        .map(|t| {
            json!({
                "code": t.code,
                "name": t.name,
                "display": t.display,
                "unit": t.unit(),
                "waveform": t.waveform,
                "reference": t.reference.map(|(lo, hi)| [lo, hi]),
            })
        })
        .collect();
    json_response(&types)
}

/// `GET /portal/v1/events?names=A,B&limit=N`: indexed events a caller may
/// see: a patient those naming them, staff those naming them, an admin
/// every one.
pub(super) async fn events(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, Refused> {
    let names: Vec<&str> = query_param(&uri, "names")
        .unwrap_or("")
        .split(',')
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() || names.len() > MAX_NAMES {
        return Err(refused(
            ProblemType::Malformed,
            format!("name 1 to {MAX_NAMES} events: ?names=AccessGranted,AccessDenied"),
        ));
    }
    still(&state, &caller).await?;
    let limit = usize::try_from(number_param(&uri, "limit")?.unwrap_or(100))
        .unwrap_or(MAX_EVENTS)
        .min(MAX_EVENTS);
    let own_patient = match caller.role {
        Role::Patient => Some(B256::from(patient_of(&state, &caller).await?).to_string()),
        _ => None,
    };
    // The newest events only: a page lists at most MAX_EVENTS of them.
    let all = indexed(&state, &names, true, Some(SCANNED_EVENTS))
        .await
        .doing("reading indexed events")?;
    let visible = all.iter().filter(|e| match caller.role {
        Role::Admin => true,
        Role::Patient => own_patient
            .as_deref()
            .is_some_and(|p| arg(e, "patientRef").eq_ignore_ascii_case(p)),
        _ => ["requester", "grantee", "carer", "account", "author"]
            .iter()
            .any(|k| same_account(arg(e, k), caller.account)),
    });
    let mut out = Vec::new();
    for e in visible.take(limit) {
        out.push(event_json(&state, e).await);
    }
    Ok(json_response(&json!({ "events": out })))
}

/// `GET /portal/v1/tx/{hash}`: a transaction of the chain, its receipt
/// and decoded events.
pub(super) async fn transaction(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(hash): Path<String>,
) -> Result<Response, Refused> {
    let hash = hash.parse::<B256>().map_err(|_| {
        refused(
            ProblemType::Malformed,
            "a transaction hash is 0x and 64 hex digits",
        )
    })?;
    let receipt = state
        .view
        .contracts()
        .provider()
        .get_transaction_receipt(hash)
        .await
        .doing("asking the chain for a receipt")?
        .ok_or_else(|| refused(ProblemType::NotFound, format!("no transaction {hash}")))?;
    // An admin sees any transaction; others their own, and a patient
    // those that name them.
    let events = events_of(&receipt);
    let own_patient = match caller.role {
        Role::Patient => patient_of(&state, &caller)
            .await
            .ok()
            .map(|p| B256::from(p).to_string()),
        _ => None,
    };
    let visible = match caller.role {
        Role::Admin => still(&state, &caller).await.is_ok(),
        _ => {
            caller.account == Some(receipt.from)
                || own_patient.is_some_and(|p| {
                    events.iter().any(|e| {
                        e["patientRef"]
                            .as_str()
                            .is_some_and(|r| r.eq_ignore_ascii_case(&p))
                    })
                })
        }
    };
    if !visible {
        return Err(refused(
            ProblemType::Forbidden,
            "a transaction is shown to its sender, the patient it names, and admins",
        ));
    }
    let block = receipt.block_number.unwrap_or(0);
    Ok(json_response(&json!({
        "tx": hash.to_string(),
        "block": block,
        "from": receipt.from.to_string(),
        "to": receipt.to.map(|a| a.to_string()),
        "status": if receipt.status() { "ok" } else { "reverted" },
        "events": events,
        "time_ms": block_time(&state, block).await,
    })))
}

/// `GET /portal/v1/consents`: the patient's live grants and opt-out.
pub(super) async fn consents(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let patient = B256::from(patient_of(&state, &caller).await?);
    let consent = state.view.contracts().consent();
    let doing = "reading consents on chain";
    let ids = consent.liveGrants(patient).call().await.doing(doing)?;
    let opted_out = consent.optedOut(patient).call().await.doing(doing)?;
    let mut grants = Vec::new();
    for id in ids {
        let g = consent.grantOf(id).call().await.doing(doing)?;
        let role = medledger_contracts::StaffRole::from_code(g.role).map(|r| r.name());
        grants.push(json!({
            "id": id.to_string(),
            "grantee": (!g.grantee.is_zero()).then(|| g.grantee.to_string()),
            "role": role,
            "scope": Scope(g.scope).to_string().split(',').collect::<Vec<_>>(),
            "purpose": text_of(g.purpose),
            "granted_at": g.grantedAt,
            "expiry": g.expiry,
            "revoked": g.revoked,
        }));
    }
    Ok(json_response(
        &json!({ "opted_out": opted_out, "grants": grants }),
    ))
}

/// `GET /portal/v1/vitals`: the patient's own newest observations, as
/// `/v1/records` gives them to staff.
pub(super) async fn vitals(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let all = crate::records::Selection::default();
    let page = crate::records::bundle(&state, &patient, Scope::ALL, VITALS_READINGS, &all).await?;
    Ok(fhir_response(&page.bundle))
}

/// `GET /portal/v1/ledger/{index}`: one entry of the patient's own ledger
/// with its inclusion proof in the newest checkpoint, and the anchor of
/// the newest anchored checkpoint that covers it.
pub(super) async fn ledger_entry(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(index): Path<u64>,
) -> Result<Response, Refused> {
    let patient = patient_of(&state, &caller).await?;
    let doing = "reading a ledger entry";
    let stored = state
        .ledger
        .entry(&patient, index)
        .await
        .doing(doing)?
        .ok_or_else(|| refused(ProblemType::NotFound, format!("no ledger entry {index}")))?;
    let entry = state.ledger.history().open_entry(&stored).doing(doing)?;
    let note = state.ledger.checkpoint(&patient).await.doing(doing)?;
    let size = state
        .ledger
        .history()
        .verify_checkpoint(&note)
        .doing(doing)?
        .size;
    let proof = state
        .ledger
        .inclusion(&patient, index, size)
        .await
        .doing(doing)?;
    let anchor = sqlx::query(
        "SELECT anchor_tx, anchor_block, size FROM ledger_anchors \
         WHERE patient = $1 AND size > $2 AND anchor_id IS NOT NULL ORDER BY size DESC LIMIT 1",
    )
    .bind(patient.to_vec())
    .bind(i64::try_from(index).unwrap_or(i64::MAX))
    .fetch_optional(state.db.pool())
    .await
    .doing(doing)?;
    let anchor = match anchor {
        Some(r) => {
            let tx: Vec<u8> = r.try_get("anchor_tx").unwrap_or_default();
            json!({
                "tx": format!("0x{}", hex::encode(tx)),
                "block": r.try_get::<i64, _>("anchor_block").unwrap_or(0),
                "size": r.try_get::<i64, _>("size").unwrap_or(0),
            })
        }
        None => Value::Null,
    };
    let body: BTreeMap<String, Value> = entry
        .body
        .iter()
        .map(|(k, v)| (k.clone(), field_json(v)))
        .collect();
    Ok(json_response(&json!({
        "index": index,
        "entry": { "kind": entry.kind, "ts_ms": entry.ts_ms, "body": body },
        "checkpoint": note,
        "size": size,
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        "anchor": anchor,
    })))
}

fn field_json(field: &medledger_patient_ledger::Field) -> Value {
    use medledger_patient_ledger::Field;
    match field {
        Field::Uint(n) => json!(n),
        Field::Text(t) => json!(t),
        Field::Bytes(b) => json!(format!("0x{}", hex::encode(b))),
    }
}

/// `GET /portal/v1/requests`: the caller's own access requests.
pub(super) async fn requests(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    only(&caller, &[Role::Doctor, Role::Nurse], "a request list")?;
    still(&state, &caller).await?;
    let decided = indexed(&state, &["AccessGranted", "AccessDenied"], true, None)
        .await
        .doing("reading access decisions")?;
    let access_log = state.view.contracts().access_log();
    let mut out = Vec::new();
    for e in decided
        .iter()
        .filter(|e| same_account(arg(e, "requester"), caller.account))
        .take(MAX_EVENTS)
    {
        let Ok(id) = arg(e, "id").parse::<U256>() else {
            continue;
        };
        let r = access_log
            .requestOf(id)
            .call()
            .await
            .doing("reading an access request")?;
        let granted = e.name == "AccessGranted";
        out.push(json!({
            "id": id.to_string(),
            "patient": r.patientRef.to_string(),
            "scope": Scope(r.scope).to_string().split(',').collect::<Vec<_>>(),
            "purpose": text_of(r.purpose),
            "decision": if granted { "granted" } else { "denied" },
            "basis": granted.then(|| Basis::from_code(r.basis).name()),
            "reason": (!granted).then(|| text_or(arg(e, "reason"))),
            "break_glass": !r.emergencyReason.is_zero(),
            "expires_at": r.expiresAt,
            "tx": B256::from(e.tx).to_string(),
            "block": e.block,
        }));
    }
    Ok(json_response(&json!({ "requests": out })))
}

/// `GET /portal/v1/reviews`: break-glass accesses waiting for review.
pub(super) async fn reviews(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    only(&caller, &[Role::Admin], "the review queue")?;
    still(&state, &caller).await?;
    let access_log = state.view.contracts().access_log();
    let ids = access_log
        .pendingReviews(U256::ZERO, U256::from(MAX_EVENTS))
        .call()
        .await
        .doing("reading the review queue")?;
    let glass = indexed(&state, &["BreakGlass"], true, None)
        .await
        .doing("reading break-glass events")?;
    let tx_of: HashMap<&str, &IndexedEvent> = glass.iter().map(|e| (arg(e, "id"), e)).collect();
    let mut out = Vec::new();
    for id in ids {
        let r = access_log
            .requestOf(id)
            .call()
            .await
            .doing("reading an access request")?;
        // The justification is off chain, sealed for the patient and the
        // reviewers; the chain holds its SHA-256.
        let justification = crate::justifications::text(&state, &caller, id.to())
            .await?
            .map(|j| j["text"].clone());
        let id = id.to_string();
        out.push(json!({
            "id": id,
            "patient": r.patientRef.to_string(),
            "requester": r.requester.to_string(),
            "reason": justification,
            "justification_sha256": r.emergencyReason.to_string(),
            "time_ms": r.time * 1000,
            "tx": tx_of.get(id.as_str()).map(|e| B256::from(e.tx).to_string()),
        }));
    }
    Ok(json_response(&json!({ "reviews": out })))
}

/// `GET /portal/v1/overview`: the chain, its anchors, and what the
/// Registry holds, with when devices and collectors were last heard of.
pub(super) async fn overview(
    AxState(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Refused> {
    only(&caller, &[Role::Admin], "the overview")?;
    still(&state, &caller).await?;
    let provider = state.view.contracts().provider();
    let doing = "reading the overview";
    let height = provider.get_block_number().await.doing(doing)?;
    let chain_id = provider.get_chain_id().await.doing(doing)?;
    let mut blocks = Vec::new();
    for number in (height.saturating_sub(RECENT_BLOCKS - 1)..=height).rev() {
        if let Ok(Some(b)) = provider.get_block_by_number(number.into()).await {
            blocks.push(json!({
                "number": number,
                "hash": b.header.hash.to_string(),
                "time_ms": b.header.timestamp * 1000,
                "transactions": b.transactions.len(),
            }));
        }
    }
    let anchors = indexed(&state, &["Anchored"], true, Some(RECENT_ANCHORS))
        .await
        .doing(doing)?;
    let mut anchor_list = Vec::new();
    for e in &anchors {
        let mut v = event_json(&state, e).await;
        v["kind"] = json!(arg(e, "kind"));
        anchor_list.push(v);
    }
    let registry = indexed(&state, REGISTRY_EVENTS, false, None)
        .await
        .doing(doing)?;
    let rules = indexed(&state, RULE_EVENTS, true, Some(RECENT_RULE_CHANGES))
        .await
        .doing(doing)?;
    let mut rule_list = Vec::new();
    for e in &rules {
        rule_list.push(event_json(&state, e).await);
    }
    let directory = Directory::replay(&registry, &state.heard);
    Ok(json_response(&json!({
        "chain": { "chain_id": chain_id, "height": height, "blocks": blocks },
        "anchors": anchor_list,
        "devices": directory.devices.into_values().collect::<Vec<_>>(),
        "patients": directory.patients.into_values().collect::<Vec<_>>(),
        "staff": directory.staff.into_values().collect::<Vec<_>>(),
        "collectors": directory.nodes.into_values().collect::<Vec<_>>(),
        "rules": rule_list,
    })))
}

const REGISTRY_EVENTS: &[&str] = &[
    "StaffRegistered",
    "StaffDeactivated",
    "NodeRegistered",
    "NodeDeactivated",
    "DeviceRegistered",
    "DeviceDeactivated",
    "DeviceAssigned",
    "DeviceReleased",
    "PatientAdmitted",
    "PatientTransferred",
    "PatientDischarged",
    "CarerAssigned",
    "CarerReleased",
];

const RULE_EVENTS: &[&str] = &["RuleChanged", "TypesAllowed", "RangeSet", "RangeCleared"];

/// What the Registry holds now, replayed from its events.
#[derive(Default)]
struct Directory {
    devices: BTreeMap<String, Value>,
    patients: BTreeMap<String, Value>,
    staff: BTreeMap<String, Value>,
    nodes: BTreeMap<String, Value>,
}

impl Directory {
    fn replay(events: &[IndexedEvent], heard: &crate::heard::Heard) -> Directory {
        let mut d = Directory::default();
        for e in events {
            let a = |k: &str| text_or(arg(e, k));
            match e.name.as_str() {
                "StaffRegistered" => {
                    let role = a("role")
                        .parse::<u8>()
                        .ok()
                        .and_then(medledger_contracts::StaffRole::from_code)
                        .map_or("unknown", |r| r.name());
                    d.staff.insert(
                        a("account"),
                        json!({ "account": a("account"), "role": role,
                                "department": a("department"), "active": true }),
                    );
                }
                "StaffDeactivated" => set(&mut d.staff, &a("account"), "active", json!(false)),
                "NodeRegistered" => {
                    let kind = if a("kind") == "1" {
                        "collector"
                    } else {
                        "server"
                    };
                    d.nodes.insert(
                        a("account"),
                        json!({ "account": a("account"), "kind": kind, "location": a("location"),
                                "active": true,
                                "last_seen_ms": heard.node_ms(&a("account")) }),
                    );
                }
                "NodeDeactivated" => set(&mut d.nodes, &a("account"), "active", json!(false)),
                "DeviceRegistered" => {
                    let epc = a("epc");
                    // People read a device by its EPC pure identity URI.
                    let urn = medledger_pki::Epc::from_hex(epc.trim_start_matches("0x"))
                        .ok()
                        .map(|e| e.to_pure_uri());
                    d.devices.insert(
                        epc.clone(),
                        json!({ "epc": epc, "urn": urn, "group": a("group"), "rule": a("ruleId"),
                                "active": true, "patient": null,
                                "last_seen_ms": heard.device_ms(&epc) }),
                    );
                }
                "DeviceDeactivated" => set(&mut d.devices, &a("epc"), "active", json!(false)),
                "DeviceAssigned" => {
                    set(&mut d.devices, &a("epc"), "patient", json!(a("patientRef")))
                }
                "DeviceReleased" => set(&mut d.devices, &a("epc"), "patient", Value::Null),
                "PatientAdmitted" => {
                    d.patients.insert(
                        a("patientRef"),
                        json!({ "patient": a("patientRef"), "department": a("department"),
                                "room": a("room"), "bed": a("bed"), "admitted": true,
                                "carers": [] }),
                    );
                }
                "PatientTransferred" => {
                    for k in ["department", "room", "bed"] {
                        set(&mut d.patients, &a("patientRef"), k, json!(a(k)));
                    }
                }
                "PatientDischarged" => {
                    set(&mut d.patients, &a("patientRef"), "admitted", json!(false));
                    set(&mut d.patients, &a("patientRef"), "carers", json!([]));
                }
                "CarerAssigned" => {
                    if let Some(Value::Array(c)) = d
                        .patients
                        .get_mut(&a("patientRef"))
                        .and_then(|p| p.get_mut("carers"))
                        && !c.iter().any(|x| x == &json!(a("carer")))
                    {
                        c.push(json!(a("carer")));
                    }
                }
                "CarerReleased" => {
                    if let Some(Value::Array(c)) = d
                        .patients
                        .get_mut(&a("patientRef"))
                        .and_then(|p| p.get_mut("carers"))
                    {
                        c.retain(|x| x != &json!(a("carer")));
                    }
                }
                _ => {}
            }
        }
        d
    }
}

fn set(map: &mut BTreeMap<String, Value>, key: &str, field: &str, value: Value) {
    if let Some(entry) = map.get_mut(key) {
        entry[field] = value;
    }
}
