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
use alloy::primitives::U256;
use medledger_pki::Role;
use medledger_protocol::{ProblemType, now_ms, reading_hash};
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
    let Some(author) = caller.account else {
        return Err(refused(
            ProblemType::WrongRole,
            "the certificate names no account",
        ));
    };
    if caller.role != Role::Doctor {
        return Err(refused(
            ProblemType::WrongRole,
            "only doctors break the glass",
        ));
    }
    if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
        return Err(refused(
            ProblemType::Malformed,
            format!("a justification is 1 to {MAX_TEXT_BYTES} bytes"),
        ));
    }
    let request = state
        .view
        .contracts()
        .access_log()
        .requestOf(U256::from(id))
        .call()
        .await
        .map_err(unavailable)?;
    if request.emergencyReason.is_zero() {
        return Err(refused(
            ProblemType::NotFound,
            format!("request {id} is not a break-glass request"),
        ));
    }
    if request.requester != author {
        return Err(refused(
            ProblemType::Forbidden,
            format!("request {id} is {}'s, not {author}'s", request.requester),
        ));
    }
    let digest = reading_hash(text.as_bytes());
    if digest != request.emergencyReason.0 {
        return Err(refused(
            ProblemType::Malformed,
            format!(
                "the text hashes to {}, not to request {id}'s justification hash {}",
                hex::encode(digest),
                request.emergencyReason
            ),
        ));
    }
    let patient = request.patientRef.0;
    let sealed = state
        .vault
        .seal(&patient, text.as_bytes())
        .await
        .map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO justifications (request, patient, author, content_hash, sealed, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request) DO NOTHING",
    )
    .bind(i64::try_from(id).unwrap_or(i64::MAX))
    .bind(patient.to_vec())
    .bind(author.to_vec())
    .bind(digest.to_vec())
    .bind(sealed)
    .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
    .execute(state.db.pool())
    .await
    .map_err(unavailable)?;
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
    .await
    .map_err(unavailable)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let get = |e: sqlx::Error| unavailable(e);
    let patient: [u8; 32] = row
        .try_get::<Vec<u8>, _>("patient")
        .map_err(get)?
        .try_into()
        .map_err(|_| unavailable("bad patient"))?;
    // The patient's own, or any patient's for an admin.
    crate::subjects::subject_of(state, caller, Some(patient))
        .await
        .map_err(|_| {
            refused(
                ProblemType::Forbidden,
                format!("only an admin or the patient reads the justification of request {id}"),
            )
        })
        .and_then(|subject| {
            if subject == patient {
                Ok(())
            } else {
                Err(refused(
                    ProblemType::Forbidden,
                    format!("request {id} is another patient's"),
                ))
            }
        })?;
    let content_hash: [u8; 32] = row
        .try_get::<Vec<u8>, _>("content_hash")
        .map_err(get)?
        .try_into()
        .map_err(|_| unavailable("bad content hash"))?;
    let sealed: Vec<u8> = row.try_get("sealed").map_err(get)?;
    let plain = state
        .vault
        .open(&patient, &content_hash, &sealed)
        .await
        .map_err(unavailable)?;
    let author: Vec<u8> = row.try_get("author").map_err(get)?;
    Ok(Some(json!({
        "request": id,
        "text": String::from_utf8_lossy(&plain),
        "author": alloy::primitives::Address::from_slice(&author).to_string(),
        "sha256": hex::encode(content_hash),
        "created_ms": row.try_get::<i64, _>("created_ms").map_err(get)?,
    })))
}
