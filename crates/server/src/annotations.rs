//! Annotation texts. A doctor or nurse annotates a reading on chain
//! (`AccessLog.annotate`: the reading's hash and the SHA-256 of the text,
//! under a request usable by them), then gives the text to the server with
//! `POST /v1/annotations`. The server keeps it only if the on-chain
//! annotation is theirs, the text hashes to its `contentHash` and the
//! reading is the patient's; it is sealed with the patient's key (so an
//! erasure removes it with the readings) and served as a `note` on the
//! reading's Observations.

use crate::State;
use crate::answer::{Refused, refused};
use crate::caller::Caller;
use crate::failure::{Doing, Failure};
use crate::offchain_text::{self, Blank, Record};
use medledger_pki::Role;
use medledger_protocol::{ProblemType, fhir, now_ms};
use medledger_storage::sqlx::{self, Row};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The longest annotation text, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The extension URL of a note's kind (`annotation` or `correction`).
pub const KIND_EXTENSION: &str = "urn:medledger:fhir:annotation-kind";

/// What an annotation's text is called in a refusal.
pub(crate) const TEXT: &str = "an annotation's text";

/// Stores the text of annotation `id` for its author `caller`.
pub(crate) async fn store(
    state: &State,
    caller: &Caller,
    id: u64,
    text: &str,
) -> Result<Value, Refused> {
    let author = offchain_text::author(
        caller,
        &[Role::Doctor, Role::Nurse],
        "only doctors and nurses annotate",
    )?;
    offchain_text::check_length(text, TEXT, MAX_TEXT_BYTES, Blank::Taken)?;
    let contracts = state.view.contracts();
    let logs = crate::indexer::logs(
        &state.db,
        contracts,
        "Annotated",
        &contracts.annotation_filter(id),
    )
    .await?;
    let event = medledger_contracts::annotation_from(&logs)?.ok_or_else(|| {
        refused(
            ProblemType::NotFound,
            format!("no annotation {id} on chain"),
        )
    })?;
    let record = Record {
        name: format!("annotation {id}"),
        hash_name: "contentHash",
        author: event.author,
        hash: event.contentHash.0,
        patient: event.patientRef.0,
    };
    offchain_text::check(&record, author, text)?;
    let stored = sqlx::query("SELECT 1 FROM ingest_readings WHERE hash = $1 AND patient = $2")
        .bind(event.readingRef.to_vec())
        .bind(record.patient.to_vec())
        .fetch_optional(state.db.pool())
        .await?;
    if stored.is_none() {
        return Err(refused(
            ProblemType::NotFound,
            format!(
                "annotation {id} names reading {}, which is not one of the patient's here",
                event.readingRef
            ),
        ));
    }
    let sealed = state.vault.seal(&record.patient, text.as_bytes()).await?;
    sqlx::query(
        "INSERT INTO annotations (id, patient, reading, author, correction, content_hash, \
         sealed, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(i64::try_from(id).unwrap_or(i64::MAX))
    .bind(record.patient.to_vec())
    .bind(event.readingRef.to_vec())
    .bind(author.to_vec())
    .bind(i64::from(event.kind == CORRECTION))
    .bind(record.hash.to_vec())
    .bind(sealed)
    .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
    .execute(state.db.pool())
    .await?;
    Ok(json!({
        "annotation": id,
        "reading": hex::encode(event.readingRef),
        "stored": true,
    }))
}

/// `AccessLog.AnnotationKind.Correction`.
const CORRECTION: u8 = 2;

/// The patient's annotations as FHIR `Annotation`s, by reading hash.
pub(crate) async fn notes(
    state: &State,
    patient: &[u8; 32],
) -> Result<HashMap<[u8; 32], Vec<Value>>, Failure> {
    let doing = "reading annotations";
    let rows = sqlx::query(
        "SELECT id, reading, author, correction, content_hash, sealed, created_ms FROM annotations \
         WHERE patient = $1 ORDER BY id",
    )
    .bind(patient.to_vec())
    .fetch_all(state.db.pool())
    .await
    .doing(doing)?;
    let mut notes: HashMap<[u8; 32], Vec<Value>> = HashMap::new();
    if rows.is_empty() {
        return Ok(notes);
    }
    // Their authors' names, read once.
    let names = state.directory.all().await;
    for row in rows {
        let reading: [u8; 32] = row
            .try_get::<Vec<u8>, _>("reading")
            .doing(doing)?
            .try_into()
            .map_err(|_| Failure::new(doing, "a stored reading hash is not 32 bytes"))?;
        let sealed: Vec<u8> = row.try_get("sealed").doing(doing)?;
        let id: i64 = row.try_get("id").doing(doing)?;
        let content_hash: [u8; 32] = row
            .try_get::<Vec<u8>, _>("content_hash")
            .doing(doing)?
            .try_into()
            .map_err(|_| Failure::new(doing, "a stored content hash is not 32 bytes"))?;
        let text = offchain_text::open(state, patient, &content_hash, &sealed, || {
            format!("annotation {id}")
        })
        .await?;
        let author: Vec<u8> = row.try_get("author").doing(doing)?;
        let correction = row.try_get::<i64, _>("correction").doing(doing)? != 0;
        let created = u64::try_from(row.try_get::<i64, _>("created_ms").doing(doing)?).unwrap_or(0);
        let mut by = json!({ "identifier": {
            "system": fhir::ACCOUNT_SYSTEM,
            "value": format!("0x{}", hex::encode(&author)),
        } });
        if author.len() == 20
            && let Some(name) = names.get(&alloy::primitives::Address::from_slice(&author))
        {
            by["display"] = json!(name);
        }
        notes.entry(reading).or_default().push(json!({
            "authorReference": by,
            "time": fhir::instant(created),
            "text": text,
            "extension": [
                { "url": KIND_EXTENSION, "valueCode": if correction { "correction" } else { "annotation" } },
                { "url": "urn:medledger:fhir:annotation-id", "valueUnsignedInt": id },
            ],
        }));
    }
    Ok(notes)
}
