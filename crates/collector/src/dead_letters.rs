//! Dead letters: the batches a server refused with a 4xx (not a retryable
//! one), taken out of the outbox whole so that the readings behind them
//! move on, and held until an operator retries them
//! (`medledger collector dead-letters list|retry`).
//!
//!   outbox --4xx--> hold: rows move to collector_dead_* in one transaction
//!   held   --next batch that reaches the server--> `held` notices, one per
//!          patient, for the patients' alerts (`told`)
//!   held   --retry--> rows move back to the outbox, in their old places
//!
//! The server fills the sequence numbers a held reading left open once,
//! so a retried reading is stored even after later ones.

use medledger_protocol::Held;
use medledger_storage::Db;
use medledger_storage::sqlx::{self, Row};

/// Each table of the outbox, its dead letters' twin (which adds the
/// letter's number), and the columns they share: readings first.
const TWINS: [(&str, &str, &str); 3] = [
    (
        "collector_outbox",
        "collector_dead_outbox",
        "hash, batch, pos, patient, device_cert, cose, received_ms",
    ),
    (
        "collector_outbox_cards",
        "collector_dead_cards",
        "batch, patient, card_cert, sig",
    ),
    (
        "collector_refused",
        "collector_dead_refused",
        "hash, patient, device_cert, cose, problem, detail, at_ms",
    ),
];

/// A held batch, as `dead-letters list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its number.
    pub id: u64,
    /// The collector batches it holds (first, last).
    pub batches: (i64, i64),
    /// How many readings.
    pub readings: u64,
    /// The server's HTTP status.
    pub status: u16,
    /// The server's problem type.
    pub problem: String,
    /// The server's detail.
    pub detail: String,
    /// When it was refused (Unix ms).
    pub at_ms: u64,
    /// Whether the server has been told, for the patients' alerts.
    pub told: bool,
}

/// Why the server refused a batch.
#[derive(Debug, Clone)]
pub(crate) struct Poison {
    pub(crate) status: u16,
    pub(crate) problem: String,
    pub(crate) detail: String,
}

/// Whether a status means the batch itself is refused (not a passing
/// state of the server: timeouts, too early, too many requests).
pub(crate) fn is_poison(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 425 | 429)
}

/// Moves collector batches `first..=last` and the refused readings
/// `refused` from the outbox into a new dead letter; returns it.
pub(crate) async fn hold(
    db: &Db,
    (first, last): (i64, i64),
    refused: &[Vec<u8>],
    why: &Poison,
) -> Result<DeadLetter, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM collector_dead_letters")
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
    // Readings and card signatures by batch, refused readings by hash.
    let [readings, cards, refused_rows] = TWINS;
    let mut moved = 0;
    for (live, dead, columns) in [readings, cards] {
        let copied = sqlx::query(&format!(
            "INSERT INTO {dead} (letter, {columns}) SELECT $1, {columns} FROM {live} \
             WHERE batch >= $2 AND batch <= $3"
        ))
        .bind(id)
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if live == readings.0 {
            moved = copied;
        }
    }
    let (live, dead, columns) = refused_rows;
    for hash in refused {
        sqlx::query(&format!(
            "INSERT INTO {dead} (letter, {columns}) SELECT $1, {columns} FROM {live} \
             WHERE hash = $2"
        ))
        .bind(id)
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
    }
    crate::outbox::take_out(&mut tx, (first, last), refused).await?;
    let letter = DeadLetter {
        id: u64::try_from(id).unwrap_or(0),
        batches: (first, last),
        readings: moved,
        status: why.status,
        problem: why.problem.clone(),
        detail: why.detail.clone(),
        at_ms: medledger_protocol::now_ms(),
        told: false,
    };
    sqlx::query(
        "INSERT INTO collector_dead_letters \
         (id, first_batch, last_batch, readings, status, problem, detail, at_ms, told) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
    )
    .bind(id)
    .bind(first)
    .bind(last)
    .bind(i64::try_from(moved).unwrap_or(i64::MAX))
    .bind(i64::from(why.status))
    .bind(&why.problem)
    .bind(&why.detail)
    .bind(i64::try_from(letter.at_ms).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(letter)
}

/// Every dead letter, oldest first.
pub async fn list(db: &Db) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, first_batch, last_batch, readings, status, problem, detail, at_ms, told \
         FROM collector_dead_letters ORDER BY id",
    )
    .fetch_all(db.pool())
    .await?;
    let count = |r: &sqlx::any::AnyRow, name: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(r.try_get::<i64, _>(name)?).unwrap_or(0))
    };
    rows.iter()
        .map(|r| {
            Ok(DeadLetter {
                id: count(r, "id")?,
                batches: (r.try_get("first_batch")?, r.try_get("last_batch")?),
                readings: count(r, "readings")?,
                status: u16::try_from(count(r, "status")?).unwrap_or(0),
                problem: r.try_get("problem")?,
                detail: r.try_get("detail")?,
                at_ms: count(r, "at_ms")?,
                told: count(r, "told")? != 0,
            })
        })
        .collect()
}

/// Puts the readings of dead letter `id` (every one with `None`) back in
/// the outbox, in their old places, and forgets the letters; returns how
/// many readings went back. A running collector sends them within a
/// second or so.
pub async fn retry(db: &Db, id: Option<u64>) -> Result<u64, sqlx::Error> {
    let (lo, hi) = match id {
        Some(id) => {
            let id = i64::try_from(id).unwrap_or(i64::MAX);
            (id, id)
        }
        None => (i64::MIN, i64::MAX),
    };
    let mut tx = db.pool().begin().await?;
    let mut moved = 0;
    for (live, dead, columns) in TWINS {
        let copied = sqlx::query(&format!(
            "INSERT INTO {live} ({columns}) SELECT {columns} FROM {dead} \
             WHERE letter >= $1 AND letter <= $2"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if live == TWINS[0].0 {
            moved = copied;
        }
    }
    for (table, column) in [
        ("collector_dead_outbox", "letter"),
        ("collector_dead_cards", "letter"),
        ("collector_dead_refused", "letter"),
        ("collector_dead_letters", "id"),
    ] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE {column} >= $1 AND {column} <= $2"
        ))
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(moved)
}

/// The notices of the letters the server has not been told of yet: per
/// letter and patient, how many readings are held.
pub(crate) async fn untold(db: &Db) -> Result<Vec<Held>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT l.id AS letter, o.patient AS patient, COUNT(*) AS n, l.status AS status, \
         l.detail AS detail FROM collector_dead_letters l \
         JOIN collector_dead_outbox o ON o.letter = l.id WHERE l.told = 0 \
         GROUP BY l.id, o.patient, l.status, l.detail ORDER BY l.id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let patient: Vec<u8> = r.try_get("patient")?;
            Ok(Held {
                letter: u64::try_from(r.try_get::<i64, _>("letter")?).unwrap_or(0),
                patient: patient.as_slice().try_into().unwrap_or([0; 32]),
                readings: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(400),
                detail: r.try_get("detail")?,
            })
        })
        .collect()
}

/// Notes that the server was told of `letters`, in `tx`.
pub(crate) async fn told(
    tx: &mut sqlx::AnyConnection,
    letters: impl IntoIterator<Item = u64>,
) -> Result<(), sqlx::Error> {
    for id in letters {
        sqlx::query("UPDATE collector_dead_letters SET told = 1 WHERE id = $1")
            .bind(i64::try_from(id).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Readings held in dead letters.
pub(crate) async fn held_readings(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) AS n FROM collector_dead_outbox")
        .fetch_one(db.pool())
        .await?
        .try_get("n")
}
