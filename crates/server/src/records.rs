//! `GET /v1/records?request=ID`: a patient's observations for a staff
//! member holding a granted access request.
//!
//! The peer must be a doctor or nurse whose certificate's account is the
//! request's requester, and `AccessLog.usable(id, requester)` must hold now
//! (granted, unexpired, its basis still valid: a revoked consent or a
//! released carer ends it at once). The answer is a FHIR R4 Bundle of the
//! patient's vital-signs Observations within the request's scope, each
//! with its ledger inclusion proof; every attempt, served or refused, is an
//! `AccessEvent` in the patient's ledger.

use crate::State;
use crate::alerts::NewAlert;
use crate::answer::{Refused, refused, unavailable};
use crate::caller::Caller;
use crate::stored::{open_blob, reading_at};
use alloy::primitives::{Address, U256};
use base64::Engine;
use medledger_contracts::{Basis, Scope, text_of};
use medledger_patient_ledger::{Field, NewEntry};
use medledger_pki::{Epc, Role};
use medledger_protocol::catalogue::data_type;
use medledger_protocol::{ProblemType, SignedReading, cbor, fhir, now_ms};
use medledger_storage::sqlx::{self, Row};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// The extension URL of an Observation's ledger proof.
pub const PROOF_EXTENSION: &str = "urn:medledger:fhir:ledger-proof";
/// The extension URL of the Bundle's checkpoint (in `Bundle.meta`).
pub const CHECKPOINT_EXTENSION: &str = "urn:medledger:fhir:ledger-checkpoint";
/// The extension URL of the ledger key (in `Bundle.meta`).
pub const KEY_EXTENSION: &str = "urn:medledger:fhir:ledger-key";

/// Which of a request's observations a read serves: all of them, or those
/// a FHIR search or read selects, one page at a time.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// The patient the reader names: refused if the request is another's.
    pub(crate) patient: Option<[u8; 32]>,
    /// LOINC codes, any of which the Observation's `code` holds (none: any).
    pub(crate) codes: Vec<String>,
    /// `effectiveDateTime` at or after, Unix ms.
    pub(crate) from_ms: Option<u64>,
    /// `effectiveDateTime` before, Unix ms.
    pub(crate) before_ms: Option<u64>,
    /// One Observation by id.
    pub(crate) id: Option<String>,
    /// The page: how many matches to skip, and at most how many to serve.
    pub(crate) offset: usize,
    pub(crate) count: Option<usize>,
}

impl Selection {
    fn admits(&self, observation: &Value, effective_ms: u64) -> bool {
        let code_held = |code: &String| {
            observation["code"]["coding"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["code"] == code.as_str()))
        };
        (self.codes.is_empty() || self.codes.iter().any(code_held))
            && self.from_ms.is_none_or(|t| effective_ms >= t)
            && self.before_ms.is_none_or(|t| effective_ms < t)
            && self
                .id
                .as_ref()
                .is_none_or(|id| observation["id"] == id.as_str())
    }
}

/// Observations served, in a `collection` Bundle.
#[derive(Debug)]
pub(crate) struct Page {
    /// The Bundle: the page's Observations, each with its ledger proof.
    pub(crate) bundle: Value,
    /// How many Observations it holds.
    pub(crate) served: u64,
    /// How many the selection matched, on every page.
    pub(crate) total: u64,
}

/// Serves request `id` to `caller`, or says why not; records the attempt.
pub(crate) async fn serve(
    state: &State,
    caller: &Caller,
    id: u64,
    selection: &Selection,
) -> Result<Page, Refused> {
    let access_log = state.view.contracts().access_log();
    let count = access_log.requestCount().call().await?;
    if id == 0 || U256::from(id) > count {
        return Err(refused(
            ProblemType::NotFound,
            format!("no access request {id}"),
        ));
    }
    let request = access_log.requestOf(U256::from(id)).call().await?;
    let patient = request.patientRef.0;
    if state.ledger.is_erased(&patient).await? {
        return Err(refused(
            ProblemType::NotFound,
            format!("the patient of request {id} was erased (forgotten)"),
        ));
    }
    let requester = caller.account;
    let outcome = match check(state, caller, id, &request, requester).await {
        Ok(()) if selection.patient.is_some_and(|p| p != patient) => Err(refused(
            ProblemType::Forbidden,
            format!("request {id} is for another patient"),
        )),
        checked => checked,
    };
    let served = match &outcome {
        Ok(()) => bundle(state, &patient, Scope(request.scope), u64::MAX, selection)
            .await
            .map(Some),
        Err(_) => Ok(None),
    };
    let (reason, count) = match (&outcome, &served) {
        (Err(r), _) => (r.detail.clone(), 0),
        (Ok(()), Ok(page)) => (String::new(), page.as_ref().map_or(0, |p| p.served)),
        (Ok(()), Err(e)) => (e.detail.clone(), 0),
    };
    // The attempt goes into the patient's ledger whatever came of it.
    let event = NewEntry {
        kind: "AccessEvent",
        ts_ms: now_ms(),
        body: BTreeMap::from([
            ("request".to_owned(), Field::Uint(id)),
            (
                "requester".to_owned(),
                Field::Bytes(requester.map_or_else(Vec::new, |a| a.to_vec())),
            ),
            (
                "outcome".to_owned(),
                Field::Text(
                    if reason.is_empty() {
                        "served"
                    } else {
                        "refused"
                    }
                    .into(),
                ),
            ),
            ("reason".to_owned(), Field::Text(reason)),
            ("observations".to_owned(), Field::Uint(count)),
            ("purpose".to_owned(), Field::Text(text_of(request.purpose))),
            (
                "basis".to_owned(),
                Field::Text(Basis::from_code(request.basis).name()),
            ),
        ]),
    };
    let who = requester.map_or_else(|| caller.name.clone(), |a| a.to_string());
    // The patient reads who it was as a person, by name where known.
    let person = match requester {
        Some(a) => state.directory.person(a).await,
        None => who.clone(),
    };
    let alert = match &outcome {
        Ok(()) => {
            let carer = match requester {
                Some(r) => state
                    .view
                    .contracts()
                    .registry()
                    .isAssignedCarer(request.patientRef, r)
                    .call()
                    .await
                    .unwrap_or(false),
                None => false,
            };
            let unusual = state.alerts.unusual_read(&patient, &who, carer).await?;
            let mut why = format!("{person} read {count} observation(s) with request {id}");
            if !unusual.is_empty() {
                why.push_str(&format!("; unusual: {}", unusual.join(", ")));
            }
            NewAlert {
                patient,
                kind: "record-read",
                source: String::new(),
                flagged: !unusual.is_empty(),
                why,
                body: json!({
                    "request": id, "requester": who, "observations": count, "unusual": unusual,
                }),
                actor: who.clone(),
            }
        }
        Err(r) => NewAlert {
            patient,
            kind: "record-refused",
            source: String::new(),
            flagged: true,
            why: format!(
                "{person} tried to read with request {id} and was refused: {}",
                r.detail
            ),
            body: json!({ "request": id, "requester": who, "reason": r.detail }),
            actor: who.clone(),
        },
    };
    // The attempt and its alert commit together, here: the lease of the
    // patient's ledger comes to this server.
    state.leases.take([patient], true).await?;
    state
        .alerts
        .record(
            &state.ledger,
            vec![(patient, vec![event])],
            |indexes| {
                let index = indexes[0][0];
                vec![NewAlert {
                    source: format!("access-event:{}:{index}", hex::encode(patient)),
                    ..alert
                }]
            },
            None,
        )
        .await?;
    state.metrics.add(
        "medledger_server_record_requests_total",
        "Record requests by outcome.",
        &[(
            "outcome",
            if outcome.is_ok() { "served" } else { "refused" },
        )],
        1,
    );
    outcome?;
    served.and_then(|page| page.ok_or_else(|| refused(ProblemType::Unavailable, "nothing served")))
}

async fn check(
    state: &State,
    caller: &Caller,
    id: u64,
    request: &medledger_contracts::bindings::access_log::AccessLog::Request,
    requester: Option<Address>,
) -> Result<(), Refused> {
    if !matches!(caller.role, Role::Doctor | Role::Nurse) {
        return Err(refused(
            ProblemType::WrongRole,
            "only doctors and nurses read records",
        ));
    }
    let Some(requester) = requester else {
        return Err(refused(
            ProblemType::WrongRole,
            "the certificate names no account",
        ));
    };
    if request.requester != requester {
        return Err(refused(
            ProblemType::Forbidden,
            format!(
                "request {id} was made by {}, not by {requester}",
                request.requester
            ),
        ));
    }
    let usable = state.view.contracts().request_usable(id, requester).await?;
    if !usable {
        let now = now_ms() / 1000;
        let why = if request.decision != GRANTED {
            format!("request {id} was denied")
        } else if request.expiresAt <= now {
            format!("request {id} expired")
        } else {
            format!(
                "request {id} no longer holds: the consent or care assignment it relied on ended, or the patient opted out"
            )
        };
        return Err(refused(ProblemType::Forbidden, why));
    }
    Ok(())
}

/// `AccessLog.Decision.Granted`.
const GRANTED: u8 = 1;

/// The patient's observations within `scope` from their `newest` readings
/// (in ledger order) that `selection` selects, its page of them with their
/// ledger proofs. Each sealed blob is opened once, however many of its
/// readings are read.
pub(crate) async fn bundle(
    state: &State,
    patient: &[u8; 32],
    scope: Scope,
    newest: u64,
    selection: &Selection,
) -> Result<Page, Refused> {
    let mut rows = sqlx::query(
        "SELECT r.hash AS hash, r.idx AS idx, r.blob AS blob, r.blob_sha256 AS digest, \
         r.pos AS pos, e.entry AS entry FROM ingest_readings r JOIN ledger_entries e \
         ON e.patient = r.patient AND e.idx = r.idx WHERE r.patient = $1 \
         ORDER BY r.idx DESC LIMIT $2",
    )
    .bind(patient.to_vec())
    .bind(i64::try_from(newest).unwrap_or(i64::MAX))
    .fetch_all(state.db.pool())
    .await?;
    rows.reverse();
    let in_scope = |code: &str| data_type(code).is_some_and(|t| scope.contains(t));
    let notes = crate::annotations::notes(state, patient).await?;
    let mut blobs: HashMap<String, Vec<cbor::Value>> = HashMap::new();
    let mut kept = Vec::new();
    for row in rows {
        let hash: [u8; 32] = row
            .try_get::<Vec<u8>, _>("hash")?
            .try_into()
            .map_err(|_| unavailable("bad reading hash"))?;
        let blob: String = row.try_get("blob")?;
        if !blobs.contains_key(&blob) {
            let digest: [u8; 32] = row
                .try_get::<Vec<u8>, _>("digest")?
                .try_into()
                .map_err(|_| unavailable("bad blob digest"))?;
            let items = open_blob(state, patient, &blob, &digest).await?;
            blobs.insert(blob.clone(), items);
        }
        let cose = reading_at(&blobs[&blob], &blob, row.try_get("pos")?, &hash)?;
        // Stored readings were verified at ingest; only the payload is
        // needed here.
        let reading = SignedReading::decode(&cose)
            .ok()
            .and_then(|s| s.reading_unverified().ok())
            .ok_or_else(|| {
                unavailable(format!(
                    "stored reading {} does not decode",
                    hex::encode(hash)
                ))
            })?;
        let urn = Epc::from_bytes(reading.dev.0).ok().map(|e| e.to_pure_uri());
        let mut observations =
            fhir::observations(&reading, &hash, patient, urn.as_deref(), in_scope);
        observations.retain(|o| selection.admits(o, reading.ts_ms));
        if observations.is_empty() {
            continue;
        }
        if let Some(notes) = notes.get(&hash) {
            for observation in &mut observations {
                observation["note"] = json!(notes);
            }
        }
        let index = u64::try_from(row.try_get::<i64, _>("idx")?).unwrap_or(0);
        let entry: Vec<u8> = row.try_get("entry")?;
        kept.extend(observations.into_iter().map(|o| (index, entry.clone(), o)));
    }
    let total = kept.len() as u64;
    let kept: Vec<_> = kept
        .into_iter()
        .skip(selection.offset)
        .take(selection.count.unwrap_or(usize::MAX))
        .collect();
    let indexes: Vec<u64> = kept.iter().map(|(i, _, _)| *i).collect();
    let (note, paths) = state.ledger.proofs(patient, &indexes).await?;
    let mut resources = Vec::new();
    for ((index, entry, mut observation), path) in kept.into_iter().zip(paths) {
        let proof = json!({
            "url": PROOF_EXTENSION,
            "extension": [
                { "url": "index", "valueUnsignedInt": index },
                { "url": "entry", "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode(&entry) },
                { "url": "path", "valueString": path.iter().map(hex::encode).collect::<Vec<_>>().join(",") },
            ],
        });
        observation["extension"] = json!([proof]);
        resources.push(observation);
    }
    let served = resources.len() as u64;
    let mut bundle = fhir::bundle(resources, now_ms());
    bundle["meta"] = json!({
        "extension": [
            { "url": CHECKPOINT_EXTENSION, "valueString": note },
            { "url": KEY_EXTENSION, "valueString": state.ledger.verifier_key() },
        ],
    });
    Ok(Page {
        bundle,
        served,
        total,
    })
}

/// The patient's record reads, served and refused, as a FHIR `collection`
/// Bundle of AuditEvents: one per `AccessEvent` entry in their ledger, each
/// entry's form checked (entries are proven by `GET /v1/ledger`).
pub(crate) async fn audit_events(state: &State, patient: &[u8; 32]) -> Result<Value, Refused> {
    // Every entry that is not a reading's (those are in ingest_readings).
    let rows = sqlx::query(
        "SELECT e.entry AS entry FROM ledger_entries e WHERE e.patient = $1 AND NOT EXISTS \
         (SELECT 1 FROM ingest_readings r WHERE r.patient = e.patient AND r.idx = e.idx) \
         ORDER BY e.idx",
    )
    .bind(patient.to_vec())
    .fetch_all(state.db.pool())
    .await?;
    let mut events = Vec::new();
    let names = state.directory.all().await;
    for row in rows {
        let stored: Vec<u8> = row.try_get("entry")?;
        let entry = state.ledger.history().open_entry(&stored)?;
        if entry.kind != "AccessEvent" {
            continue;
        }
        let text = |k: &str| match entry.body.get(k) {
            Some(Field::Text(t)) => t.clone(),
            _ => String::new(),
        };
        let account = match entry.body.get("requester") {
            Some(Field::Bytes(b)) if b.len() == 20 => Some(Address::from_slice(b)),
            _ => None,
        };
        let requester =
            account.map_or_else(|| "an unnamed certificate".to_owned(), |a| a.to_string());
        let requester_name = account.and_then(|a| names.get(&a));
        let served = text("outcome") == "served";
        let observations = match entry.body.get("observations") {
            Some(Field::Uint(n)) => *n,
            _ => 0,
        };
        let detail = if served {
            format!("{observations} observation(s) served")
        } else {
            text("reason")
        };
        events.push(fhir::audit_event(&fhir::RecordAccess {
            patient_ref: patient,
            ledger_index: entry.index,
            recorded_ms: entry.ts_ms,
            requester: &requester,
            requester_name: requester_name.map(String::as_str),
            request: match entry.body.get("request") {
                Some(Field::Uint(n)) => *n,
                _ => 0,
            },
            purpose: &text("purpose"),
            emergency: text("basis") == Basis::Emergency.name(),
            served,
            detail: &detail,
        }));
    }
    Ok(fhir::bundle(events, now_ms()))
}
