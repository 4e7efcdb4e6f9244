//! The read side of stored readings: a reading by its hash, opened from
//! its patient's sealed blob and checked against the hash, and how many
//! readings sit in anchored batches. Ingest writes what this reads; the
//! read paths (records, proofs, the operator's tools) read through here.

use crate::State;
use crate::failure::{Doing, Failure};
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::reading_hash;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Cid, placeholders};

/// A stored reading's COSE bytes, from its sealed blob.
pub(crate) async fn reading(state: &State, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, Failure> {
    let doing = "reading a stored reading";
    let row =
        sqlx::query("SELECT patient, blob, blob_sha256, pos FROM ingest_readings WHERE hash = $1")
            .bind(hash.to_vec())
            .fetch_optional(state.db.pool())
            .await
            .doing(doing)?;
    let Some(row) = row else { return Ok(None) };
    let patient: Vec<u8> = row.try_get("patient").doing(doing)?;
    let blob: String = row.try_get("blob").doing(doing)?;
    let digest: Vec<u8> = row.try_get("blob_sha256").doing(doing)?;
    let pos: i64 = row.try_get("pos").doing(doing)?;
    let patient: [u8; 32] = patient
        .as_slice()
        .try_into()
        .map_err(|_| Failure::new(doing, "a stored patientRef is not 32 bytes"))?;
    let digest: [u8; 32] = digest
        .as_slice()
        .try_into()
        .map_err(|_| Failure::new(doing, "a stored blob digest is not 32 bytes"))?;
    let items = open_blob(state, &patient, &blob, &digest).await?;
    reading_at(&items, &blob, pos, hash).map(Some)
}

/// The readings (COSE bytes) in a patient's sealed blob, decrypted.
pub(crate) async fn open_blob(
    state: &State,
    patient: &[u8; 32],
    blob: &str,
    digest: &[u8; 32],
) -> Result<Vec<Value>, Failure> {
    let doing = || format!("opening blob {blob}");
    let cid: Cid = blob.parse().map_err(|e| Failure::new(doing(), e))?;
    let sealed = state
        .blobs
        .get(&cid)
        .await
        .map_err(|e| Failure::new(doing(), e))?;
    let plaintext = state
        .vault
        .open(patient, digest, &sealed)
        .await
        .map_err(|e| Failure::new(doing(), e))?;
    match cbor::decode(&plaintext) {
        Ok(Value::Array(items)) => Ok(items),
        _ => Err(Failure::new(doing(), "not an array of readings")),
    }
}

/// The reading at `pos` of an opened blob, which must hash to `hash`.
pub(crate) fn reading_at(
    items: &[Value],
    blob: &str,
    pos: i64,
    hash: &[u8; 32],
) -> Result<Vec<u8>, Failure> {
    let doing = || format!("reading position {pos} of blob {blob}");
    let Some(Value::Bytes(cose)) = usize::try_from(pos).ok().and_then(|p| items.get(p)) else {
        return Err(Failure::new(doing(), "the blob has no reading there"));
    };
    if reading_hash(cose) != *hash {
        return Err(Failure::new(
            doing(),
            "the blob holds another reading there",
        ));
    }
    Ok(cose.clone())
}

/// How many of `hashes` are stored in an anchored batch.
pub(crate) async fn anchored_count(state: &State, hashes: &[[u8; 32]]) -> Result<usize, Failure> {
    let doing = "counting anchored readings";
    let mut n = 0;
    for chunk in hashes.chunks(256) {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM ingest_readings r JOIN ingest_batches b ON r.batch = b.root \
             WHERE b.anchor_id IS NOT NULL AND r.hash IN ({})",
            placeholders(chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for h in chunk {
            query = query.bind(h.to_vec());
        }
        let row = query.fetch_one(state.db.pool()).await.doing(doing)?;
        n += usize::try_from(row.try_get::<i64, _>("n").doing(doing)?).unwrap_or(0);
    }
    Ok(n)
}
