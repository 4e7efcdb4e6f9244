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
use medledger_patient_ledger::{Field, Ledger, LedgerError, NewEntry};
use medledger_pki::health::Outage;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlValue, insert_many};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
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
    /// Who caused it (an account), if a person did.
    pub(crate) actor: String,
}

/// A patient's alert preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Preferences {
    /// `all` alerts, or only `unusual` (flagged) ones. Every alert is kept
    /// either way; this chooses what is delivered.
    pub mode: String,
    /// Reads from this UTC hour...
    pub day_start: u8,
    /// ...until this one are usual; the same hour twice: any hour is.
    pub day_end: u8,
    /// More reads than this by one person in an hour are unusual.
    pub max_reads_per_hour: u64,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            mode: "all".into(),
            day_start: 0,
            day_end: 0,
            max_reads_per_hour: 10,
        }
    }
}

/// Why alert preferences are refused.
#[derive(Debug, thiserror::Error)]
pub enum BadPreferences {
    /// A mode other than `all` or `unusual`.
    #[error("mode {0:?}: expected all or unusual")]
    Mode(String),
    /// An hour beyond 23.
    #[error("day_start and day_end are hours, 0 to 23")]
    Hours,
}

impl Preferences {
    /// Checks the values.
    pub fn check(&self) -> Result<(), BadPreferences> {
        if self.mode != "all" && self.mode != "unusual" {
            return Err(BadPreferences::Mode(self.mode.clone()));
        }
        if self.day_start > 23 || self.day_end > 23 {
            return Err(BadPreferences::Hours);
        }
        Ok(())
    }

    /// Whether `hour` (UTC) is outside the usual hours.
    fn outside(&self, hour: u8) -> bool {
        match (self.day_start, self.day_end) {
            (s, e) if s == e => false,
            (s, e) if s < e => hour < s || hour >= e,
            (s, e) => hour < s && hour >= e,
        }
    }
}

/// The alert store.
pub(crate) struct Alerts {
    db: Db,
    /// The newest id, for live followers.
    newest: tokio::sync::watch::Sender<u64>,
}

impl Alerts {
    pub(crate) fn new(db: Db) -> Alerts {
        Alerts {
            db,
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
        let alerts = self.without_erased(alerts).await?;
        let mut tx = self.db.pool().begin().await?;
        insert(&mut tx, alerts, cursor).await?;
        tx.commit().await?;
        self.woken().await
    }

    /// Appends ledger entries and stores the alerts they cause (`alerts`
    /// is given each group's ledger indexes) in one transaction, with the
    /// chain-event cursor if `cursor` is given: a crash leaves all of it
    /// or none, so nothing is recorded twice or lost. Returns the indexes.
    pub(crate) async fn record(
        &self,
        ledger: &Ledger,
        entries: Vec<([u8; 32], Vec<NewEntry>)>,
        alerts: impl FnOnce(&[Vec<u64>]) -> Vec<NewAlert>,
        cursor: Option<u64>,
    ) -> Result<Vec<Vec<u64>>, LedgerError> {
        let mut tx = self.db.pool().begin().await?;
        let staged = ledger.stage(&mut tx, entries).await?;
        let alerts = self.without_erased(alerts(staged.indexes())).await?;
        insert(&mut tx, alerts, cursor).await?;
        tx.commit().await?;
        let indexes = staged.committed();
        self.woken().await?;
        Ok(indexes)
    }

    /// `alerts` but those of erased (forgotten) patients.
    async fn without_erased(&self, alerts: Vec<NewAlert>) -> Result<Vec<NewAlert>, sqlx::Error> {
        let mut erased = std::collections::HashMap::new();
        let mut kept = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let gone = match erased.get(&alert.patient) {
                Some(gone) => *gone,
                None => {
                    let gone =
                        sqlx::query("SELECT 1 AS one FROM erased_patients WHERE patient = $1")
                            .bind(alert.patient.to_vec())
                            .fetch_optional(self.db.pool())
                            .await?
                            .is_some();
                    erased.insert(alert.patient, gone);
                    gone
                }
            };
            if !gone {
                kept.push(alert);
            }
        }
        Ok(kept)
    }

    /// Wakes the followers after a commit.
    async fn woken(&self) -> Result<(), sqlx::Error> {
        self.newest.send_replace(self.last_id().await?);
        Ok(())
    }

    /// The patient's preferences (the defaults if never set).
    pub(crate) async fn preferences(&self, patient: &[u8; 32]) -> Result<Preferences, sqlx::Error> {
        let row = sqlx::query(
            "SELECT mode, day_start, day_end, max_reads_per_hour FROM alert_prefs WHERE patient = $1",
        )
        .bind(patient.to_vec())
        .fetch_optional(self.db.pool())
        .await?;
        Ok(match row {
            Some(r) => Preferences {
                mode: r.try_get("mode")?,
                day_start: u8::try_from(r.try_get::<i64, _>("day_start")?).unwrap_or(0),
                day_end: u8::try_from(r.try_get::<i64, _>("day_end")?).unwrap_or(0),
                max_reads_per_hour: u64::try_from(r.try_get::<i64, _>("max_reads_per_hour")?)
                    .unwrap_or(0),
            },
            None => Preferences::default(),
        })
    }

    /// Stores the patient's preferences.
    pub(crate) async fn set_preferences(
        &self,
        patient: &[u8; 32],
        prefs: &Preferences,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO alert_prefs (patient, mode, day_start, day_end, max_reads_per_hour) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (patient) DO UPDATE SET mode = excluded.mode, \
             day_start = excluded.day_start, day_end = excluded.day_end, \
             max_reads_per_hour = excluded.max_reads_per_hour",
        )
        .bind(patient.to_vec())
        .bind(prefs.mode.as_str())
        .bind(i64::from(prefs.day_start))
        .bind(i64::from(prefs.day_end))
        .bind(i64::try_from(prefs.max_reads_per_hour).unwrap_or(i64::MAX))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Why a read of the patient's records by `actor` now is unusual
    /// (empty: it is not): the first read by this person, outside the
    /// usual hours, by someone who is not an assigned carer, or more reads
    /// this hour than the patient allows.
    pub(crate) async fn unusual_read(
        &self,
        patient: &[u8; 32],
        actor: &str,
        assigned_carer: bool,
    ) -> Result<Vec<String>, sqlx::Error> {
        let prefs = self.preferences(patient).await?;
        let now = medledger_protocol::now_ms();
        let reads_since = |since: u64| {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM alerts WHERE patient = $1 AND actor = $2 \
                 AND kind = 'record-read' AND created_ms >= $3",
            )
            .bind(patient.to_vec())
            .bind(actor.to_owned())
            .bind(i64::try_from(since).unwrap_or(0))
            .fetch_one(self.db.pool())
        };
        let ever: i64 = reads_since(0).await?.try_get("n")?;
        let this_hour: i64 = reads_since(now.saturating_sub(3_600_000))
            .await?
            .try_get("n")?;
        let mut why = Vec::new();
        if ever == 0 {
            why.push("the first read by this person".to_owned());
        }
        let hour = u8::try_from(now / 3_600_000 % 24).unwrap_or(0);
        if prefs.outside(hour) {
            why.push(format!(
                "outside your usual hours ({:02}:00-{:02}:00 UTC)",
                prefs.day_start, prefs.day_end
            ));
        }
        if !assigned_carer {
            why.push("not one of your assigned carers".to_owned());
        }
        if u64::try_from(this_hour).unwrap_or(0) >= prefs.max_reads_per_hour {
            why.push(format!(
                "more than {} reads in an hour",
                prefs.max_reads_per_hour
            ));
        }
        Ok(why)
    }

    /// The patient's alerts after `after`, oldest first, at most `limit`:
    /// all, or only the flagged ones if the patient chose `unusual`.
    pub(crate) async fn list(
        &self,
        patient: &[u8; 32],
        after: u64,
        limit: u64,
    ) -> Result<Vec<Alert>, sqlx::Error> {
        let only_flagged = self.preferences(patient).await?.mode == "unusual";
        let rows = sqlx::query(
            "SELECT id, created_ms, kind, flagged, why, body FROM alerts \
             WHERE patient = $1 AND id > $2 AND flagged >= $4 ORDER BY id LIMIT $3",
        )
        .bind(patient.to_vec())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(i64::from(only_flagged))
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

    /// The newest alert id of all patients (0: none yet).
    pub(crate) async fn last_id(&self) -> Result<u64, sqlx::Error> {
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS id FROM alerts")
            .fetch_one(self.db.pool())
            .await?
            .try_get("id")?;
        Ok(u64::try_from(id).unwrap_or(0))
    }

    /// Follows the newest alert id: that of the alerts this server
    /// raises at once, those of others within a second
    /// ([`raised_elsewhere`]).
    pub(crate) fn follow(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// Inserts alerts with ids from `next` on, and moves the chain-event
/// cursor to `cursor` if given, in the caller's transaction.
async fn insert(
    tx: &mut sqlx::AnyConnection,
    alerts: Vec<NewAlert>,
    cursor: Option<u64>,
) -> Result<(), sqlx::Error> {
    // Ids come from one row, locked until the transaction ends: alerts
    // commit in the order of their ids, whichever server raised them, so
    // a follower reading after id N misses none. A write, never a read,
    // first: a SQLite transaction that reads first cannot become a writer
    // while another connection writes (SQLITE_BUSY_SNAPSHOT).
    let count = i64::try_from(alerts.len()).unwrap_or(i64::MAX);
    let next = if count == 0 {
        0
    } else {
        sqlx::query("UPDATE alert_ids SET last = last + $1 WHERE one = 1 RETURNING last")
            .bind(count)
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("last")?
            - count
            + 1
    };
    let now = i64::try_from(medledger_protocol::now_ms()).unwrap_or(i64::MAX);
    let rows: Vec<Vec<SqlValue>> = alerts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            vec![
                SqlValue::Int(next + i as i64),
                SqlValue::Bytes(a.patient.to_vec()),
                SqlValue::Int(now),
                SqlValue::Text(a.kind.to_owned()),
                SqlValue::Text(a.source),
                SqlValue::Int(i64::from(a.flagged)),
                SqlValue::Text(a.why),
                SqlValue::Text(a.body.to_string()),
                SqlValue::Text(a.actor),
            ]
        })
        .collect();
    insert_many(
        tx,
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
            "actor",
        ],
        "ON CONFLICT (source) DO NOTHING",
        &rows,
    )
    .await?;
    if let Some(block) = cursor {
        set_cursor(tx, block).await?;
    }
    Ok(())
}

/// Moves the alert task's chain-event cursor to `block` (done up to it),
/// in the caller's transaction.
pub(crate) async fn set_cursor(
    tx: &mut sqlx::AnyConnection,
    block: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chain_cursor (name, block) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET block = excluded.block",
    )
    .bind(ALERT_CURSOR)
    .bind(i64::try_from(block).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    Ok(())
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
                "{} used emergency access (request {}; an admin reviews it, and the justification the doctor gave is in the portal)",
                arg("requester"),
                arg("id")
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
    let actor = ["requester", "author"]
        .iter()
        .map(|k| arg(k))
        .find(|a| !a.is_empty())
        .unwrap_or_default();
    Some(NewAlert {
        patient,
        kind,
        source,
        flagged,
        why,
        body: json!({ "event": name, "args": args }),
        actor,
    })
}

/// Raises the alerts of newly indexed chain events, forever.
pub(crate) async fn follow_chain(state: Arc<State>, every: Duration) {
    let mut outage = Outage::new("medledger server: alerts from chain events");
    loop {
        match chain_step(&state).await {
            Ok(()) => outage.worked(),
            Err(e) => outage.failed(&e),
        }
        tokio::time::sleep(outage.pause(every)).await;
    }
}

async fn chain_step(state: &State) -> Result<(), LedgerError> {
    // One server of those sharing the database follows the chain.
    if !state.leases.job("chain-alerts").await? {
        return Ok(());
    }
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
        "SELECT block, log_index, tx, name, args, topics FROM chain_events \
         WHERE block > $1 AND block <= $2 ORDER BY block, log_index",
    )
    .bind(done)
    .bind(indexed)
    .fetch_all(state.db.pool())
    .await?;
    let mut alerts = Vec::new();
    let mut entries = Vec::new();
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
        let block = r.try_get::<i64, _>("block")?;
        let log_index = r.try_get::<i64, _>("log_index")?;
        let source = format!("event:{block}:{log_index}");
        alerts.extend(from_event(&name, &args, patient, source));
        if let Some(kind) = ledger_kind(&name)
            && !state.ledger.is_erased(&patient).await?
        {
            let mut body: BTreeMap<String, Field> = args
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Field::Text(v.as_str().unwrap_or("").to_owned())))
                .collect();
            body.insert("event".into(), Field::Text(name));
            body.insert("tx".into(), Field::Bytes(r.try_get("tx")?));
            body.insert(
                "block".into(),
                Field::Uint(u64::try_from(block).unwrap_or(0)),
            );
            entries.push((
                patient,
                vec![NewEntry {
                    kind,
                    ts_ms: medledger_protocol::now_ms(),
                    body,
                }],
            ));
        }
    }
    // The entries commit with the cursor: their ledgers' leases are taken.
    state
        .leases
        .take(
            entries
                .iter()
                .map(|(patient, _)| *patient)
                .collect::<Vec<_>>(),
            true,
        )
        .await?;
    state
        .alerts
        .record(
            &state.ledger,
            entries,
            |_| alerts,
            u64::try_from(indexed).ok(),
        )
        .await
        .map(drop)
}

/// The patient-ledger entry kind an indexed event appends, if any.
fn ledger_kind(event: &str) -> Option<&'static str> {
    match event {
        "ConsentGranted" | "ConsentRevoked" | "OptOutChanged" => Some("ConsentChanged"),
        "Annotated" => Some("Annotation"),
        _ => None,
    }
}

/// Wakes this server's followers for the alerts other servers on the same
/// database raise.
pub(crate) async fn raised_elsewhere(state: Arc<State>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = state.alerts.woken().await {
            tracing::debug!("medledger server: the newest alert: {e}");
        }
    }
}
