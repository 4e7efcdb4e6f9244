//! Patient alerts: every access decision, read, consent change, annotation
//! and refused reading that concerns a patient, stored in SQL with an
//! increasing id, so that a patient who was offline reads them all later
//! (`GET /v1/alerts?after=N`) or follows them live (`GET
//! /v1/alerts/stream`, server-sent events that resume from `Last-Event-ID`).
//!
//! Each alert has a `source` that names what caused it (an on-chain event,
//! a ledger entry, a reading); it is unique, so a cause retried or seen
//! twice alerts once. Chain events become alerts by their own task, which
//! follows the indexer from a cursor of its own.

use crate::State;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlValue, insert_many};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// An alert as a patient reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Increasing per server; resume after it.
    pub id: u64,
    /// When it was raised, Unix ms.
    pub created_ms: u64,
    /// What happened: `access-granted`, `access-denied`, `break-glass`,
    /// `record-read`, `record-refused`, `consent-changed`, `annotation`,
    /// `reading-rejected`, `sequence-gap`.
    pub kind: String,
    /// Whether it is unusual (always shown, whatever the preferences).
    pub flagged: bool,
    /// What happened, for a person.
    pub why: String,
    /// The details.
    pub body: Value,
}

/// An alert to raise.
#[derive(Debug, Clone)]
pub(crate) struct NewAlert {
    pub(crate) patient: [u8; 32],
    pub(crate) kind: &'static str,
    /// Unique per cause.
    pub(crate) source: String,
    pub(crate) flagged: bool,
    pub(crate) why: String,
    pub(crate) body: Value,
}

/// The alert store.
pub(crate) struct Alerts {
    db: Db,
    /// Ids are assigned one writer at a time.
    lock: tokio::sync::Mutex<()>,
    /// The newest id, for live followers.
    newest: tokio::sync::watch::Sender<u64>,
}

impl Alerts {
    pub(crate) fn new(db: Db) -> Alerts {
        Alerts {
            db,
            lock: tokio::sync::Mutex::new(()),
            newest: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Stores alerts (those whose source is already stored are dropped),
    /// then wakes the followers. With `cursor`, also moves the chain-event
    /// cursor, in the same transaction.
    pub(crate) async fn raise(
        &self,
        alerts: Vec<NewAlert>,
        cursor: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        if alerts.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let _one_writer = self.lock.lock().await;
        // Read before the transaction, which then only writes: a SQLite
        // transaction that reads first cannot become a writer while another
        // connection writes (SQLITE_BUSY_SNAPSHOT). The lock makes this
        // the only writer of ids.
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM alerts")
            .fetch_one(self.db.pool())
            .await?
            .try_get("id")?;
        let mut tx = self.db.pool().begin().await?;
        let now = i64::try_from(medledger_protocol::now_ms()).unwrap_or(i64::MAX);
        let rows: Vec<Vec<SqlValue>> = alerts
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                vec![
                    SqlValue::Int(next + 1 + i as i64),
                    SqlValue::Bytes(a.patient.to_vec()),
                    SqlValue::Int(now),
                    SqlValue::Text(a.kind.to_owned()),
                    SqlValue::Text(a.source),
                    SqlValue::Int(i64::from(a.flagged)),
                    SqlValue::Text(a.why),
                    SqlValue::Text(a.body.to_string()),
                ]
            })
            .collect();
        insert_many(
            &mut tx,
            "alerts",
            &[
                "id",
                "patient",
                "created_ms",
                "kind",
                "source",
                "flagged",
                "why",
                "body",
            ],
            "ON CONFLICT (source) DO NOTHING",
            &rows,
        )
        .await?;
        if let Some(block) = cursor {
            sqlx::query(
                "INSERT INTO chain_cursor (name, block) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET block = excluded.block",
            )
            .bind(ALERT_CURSOR)
            .bind(i64::try_from(block).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let newest: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM alerts")
            .fetch_one(self.db.pool())
            .await?
            .try_get("id")?;
        self.newest.send_replace(u64::try_from(newest).unwrap_or(0));
        Ok(())
    }

    /// The patient's alerts after `after`, oldest first, at most `limit`.
    pub(crate) async fn list(
        &self,
        patient: &[u8; 32],
        after: u64,
        limit: u64,
    ) -> Result<Vec<Alert>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, created_ms, kind, flagged, why, body FROM alerts \
             WHERE patient = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(patient.to_vec())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                let body: String = r.try_get("body")?;
                Ok(Alert {
                    id: u64::try_from(r.try_get::<i64, _>("id")?).unwrap_or(0),
                    created_ms: u64::try_from(r.try_get::<i64, _>("created_ms")?).unwrap_or(0),
                    kind: r.try_get("kind")?,
                    flagged: r.try_get::<i64, _>("flagged")? != 0,
                    why: r.try_get("why")?,
                    body: serde_json::from_str(&body).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Follows the newest alert id.
    pub(crate) fn follow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// The chain-event cursor of the alert task in `chain_cursor`.
const ALERT_CURSOR: &str = "alerts";

/// Which topic holds the patientRef, by event name.
fn patient_topic(name: &str) -> Option<usize> {
    match name {
        "AccessGranted" | "AccessDenied" | "BreakGlass" | "Annotated" | "ConsentGranted"
        | "ConsentRevoked" => Some(2),
        "OptOutChanged" => Some(1),
        _ => None,
    }
}

/// The alert an indexed event raises, if any.
fn from_event(name: &str, args: &Value, patient: [u8; 32], source: String) -> Option<NewAlert> {
    let arg = |k: &str| args[k].as_str().unwrap_or("").trim_matches('"').to_owned();
    let (kind, flagged, why) = match name {
        "AccessGranted" => (
            "access-granted",
            false,
            format!(
                "{} was granted access (request {}, purpose {})",
                arg("requester"),
                arg("id"),
                arg("purpose")
            ),
        ),
        "AccessDenied" => (
            "access-denied",
            true,
            format!(
                "{} asked for access and was denied (request {})",
                arg("requester"),
                arg("id")
            ),
        ),
        "BreakGlass" => (
            "break-glass",
            true,
            format!(
                "{} used emergency access (request {}, reason {})",
                arg("requester"),
                arg("id"),
                arg("reason")
            ),
        ),
        "ConsentGranted" => (
            "consent-changed",
            false,
            format!("consent {} granted", arg("id")),
        ),
        "ConsentRevoked" => (
            "consent-changed",
            false,
            format!("consent {} revoked", arg("id")),
        ),
        "OptOutChanged" => (
            "consent-changed",
            false,
            format!("opt-out set to {}", arg("optedOut")),
        ),
        "Annotated" => (
            "annotation",
            false,
            format!("{} annotated your record", arg("author")),
        ),
        _ => return None,
    };
    Some(NewAlert {
        patient,
        kind,
        source,
        flagged,
        why,
        body: json!({ "event": name, "args": args }),
    })
}

/// Raises the alerts of newly indexed chain events, forever.
pub(crate) async fn follow_chain(state: Arc<State>, every: Duration) {
    loop {
        if let Err(e) = chain_step(&state).await {
            eprintln!("medledger server: alerts from chain events: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

async fn chain_step(state: &State) -> Result<(), sqlx::Error> {
    let cursor = |name: &'static str| async move {
        let row = sqlx::query("SELECT block FROM chain_cursor WHERE name = $1")
            .bind(name)
            .fetch_optional(state.db.pool())
            .await?;
        Ok::<_, sqlx::Error>(match row {
            Some(r) => Some(r.try_get::<i64, _>("block")?),
            None => None,
        })
    };
    let Some(indexed) = cursor("events").await? else {
        return Ok(());
    };
    let done = cursor(ALERT_CURSOR).await?.unwrap_or(-1);
    if done >= indexed {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT block, log_index, name, args, topics FROM chain_events \
         WHERE block > $1 AND block <= $2 ORDER BY block, log_index",
    )
    .bind(done)
    .bind(indexed)
    .fetch_all(state.db.pool())
    .await?;
    let mut alerts = Vec::new();
    for r in rows {
        let name: String = r.try_get("name")?;
        let Some(topic) = patient_topic(&name) else {
            continue;
        };
        let topics: Vec<u8> = r.try_get("topics")?;
        let Some(patient) = topics
            .get(topic * 32..topic * 32 + 32)
            .and_then(|t| <[u8; 32]>::try_from(t).ok())
        else {
            continue;
        };
        let args: String = r.try_get("args")?;
        let args: Value = serde_json::from_str(&args).unwrap_or_default();
        let source = format!(
            "event:{}:{}",
            r.try_get::<i64, _>("block")?,
            r.try_get::<i64, _>("log_index")?
        );
        alerts.extend(from_event(&name, &args, patient, source));
    }
    state
        .alerts
        .raise(alerts, u64::try_from(indexed).ok())
        .await
}
