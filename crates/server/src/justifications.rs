//! Break-glass justifications. A doctor breaks the glass on chain with only
//! the SHA-256 of their justification (`AccessLog.breakGlass`: free text
//! on chain would be public forever), then gives the text to the server
//! with `POST /v1/justifications`. The server keeps it only if the request
//! is that doctor's break-glass request and the text hashes to its
//! `emergencyReason`; it is sealed with the patient's key (an erasure
//! removes it), and read back by the admins who review the request and by
//! the patient (`GET /v1/justifications?request=ID`).

use crate::State;
use crate::answer::{Refused, refused, unavailable};
use crate::caller::Caller;
use crate::offchain_text::{self, Blank, Record};
use alloy::primitives::U256;
use medledger_pki::Role;
use medledger_protocol::{ProblemType, now_ms};
use medledger_storage::sqlx::{self, Row};
use serde_json::{Value, json};

/// The longest justification, in bytes.
pub const MAX_TEXT_BYTES: usize = 4 * 1024;

/// Stores the justification of break-glass request `id` for its requester
/// `caller`.
pub(crate) async fn store(
    state: &State,
    caller: &Caller,
    id: u64,
    text: &str,
) -> Result<Value, Refused> {
    let author = offchain_text::author(caller, &[Role::Doctor], "only doctors break the glass")?;
    offchain_text::check_length(text, "a justification", MAX_TEXT_BYTES, Blank::Refused)?;
    let access_log = state.view.contracts().access_log();
    let count = access_log.requestCount().call().await?;
    if id == 0 || U256::from(id) > count {
        return Err(refused(
            ProblemType::NotFound,
            format!("no access request {id}"),
        ));
    }
    let request = access_log.requestOf(U256::from(id)).call().await?;
    if request.emergencyReason.is_zero() {
        return Err(refused(
            ProblemType::NotFound,
            format!("request {id} is not a break-glass request"),
        ));
    }
    let record = Record {
        name: format!("request {id}"),
        hash_name: "justification hash",
        author: request.requester,
        hash: request.emergencyReason.0,
        patient: request.patientRef.0,
    };
    offchain_text::check(&record, author, text)?;
    let sealed = state.vault.seal(&record.patient, text.as_bytes()).await?;
    sqlx::query(
        "INSERT INTO justifications (request, patient, author, content_hash, sealed, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request) DO NOTHING",
    )
    .bind(i64::try_from(id).unwrap_or(i64::MAX))
    .bind(record.patient.to_vec())
    .bind(author.to_vec())
    .bind(record.hash.to_vec())
    .bind(sealed)
    .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
    .execute(state.db.pool())
    .await?;
    Ok(json!({ "request": id, "stored": true }))
}

/// The justification of request `id`, opened, for an admin active in the
/// Registry or the request's patient; `None` if none was given.
pub(crate) async fn text(
    state: &State,
    caller: &Caller,
    id: u64,
) -> Result<Option<Value>, Refused> {
    let row = sqlx::query(
        "SELECT patient, author, content_hash, sealed, created_ms FROM justifications WHERE request = $1",
    )
    .bind(i64::try_from(id).unwrap_or(i64::MAX))
    .fetch_optional(state.db.pool())
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let patient: [u8; 32] = row
        .try_get::<Vec<u8>, _>("patient")?
        .try_into()
        .map_err(|_| unavailable("a stored patientRef is not 32 bytes"))?;
    // The patient's own, or any patient's for an admin.
    let subject = crate::subjects::subject_of(state, caller, Some(patient))
        .await
        .map_err(|r| match r.kind {
            ProblemType::Unavailable => r,
            _ => refused(
                ProblemType::Forbidden,
                format!("only an admin or the patient reads the justification of request {id}"),
            ),
        })?;
    if subject != patient {
        return Err(refused(
            ProblemType::Forbidden,
            format!("request {id} is another patient's"),
        ));
    }
    let content_hash: [u8; 32] = row
        .try_get::<Vec<u8>, _>("content_hash")?
        .try_into()
        .map_err(|_| unavailable("a stored content hash is not 32 bytes"))?;
    let sealed: Vec<u8> = row.try_get("sealed")?;
    let text = offchain_text::open(state, &patient, &content_hash, &sealed, || {
        format!("the justification of request {id}")
    })
    .await?;
    let author: Vec<u8> = row.try_get("author")?;
    Ok(Some(json!({
        "request": id,
        "text": text,
        "author": alloy::primitives::Address::from_slice(&author).to_string(),
        "sha256": hex::encode(content_hash),
        "created_ms": row.try_get::<i64, _>("created_ms")?,
    })))
}
