//! Several servers on one database: who writes which patient's ledger,
//! and which server runs the jobs only one may run.
//!
//! ```text
//!  server_instances   one row per running server: where the others reach
//!                     it, and `alive_until_ms`, renewed every term/3
//!  ledger_leases      patient -> holder (an instance) and ledger size
//!  job_leases         job name -> holder
//! ```
//!
//! A lease lasts while its holder renews its `alive_until_ms`; once that
//! lapses (the server died or lost the database), another server takes
//! it over. Correctness does not hang on clocks: the ledger moves the
//! lease row in the very transaction that appends (the fence, see
//! [`medledger_patient_ledger::Ledger::with_writer`]), so a server that
//! lost a lease it believed it held writes nothing. A server that does not
//! hold a patient's lease forwards readings to the holder; a person's
//! request there (a read, an erasure) takes the lease over, since the
//! entry must commit with the answer.
//!
//! A server alone on its database (SQLite) takes every lease at start:
//! the database is its own.

use medledger_pki::health::Outage;
use medledger_protocol::now_ms;
use medledger_storage::Db;
use medledger_storage::sqlx::{self, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a lease outlives its holder's last renewal, by default.
pub const DEFAULT_TERM: Duration = Duration::from_secs(10);

/// Where another server is reached, to forward readings to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// host:port.
    pub addr: String,
    /// The name its certificate carries.
    pub server_name: String,
}

/// Who holds a patient's lease, as far as this server can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// This server: it may append.
    Me,
    /// Another live server.
    Other(Peer),
}

/// This server's leases.
pub(crate) struct Leases {
    db: Db,
    /// This running server: its account and a random suffix, new at each
    /// start.
    me: String,
    term: Duration,
    /// Patients this server took; the fence checks they still are.
    held: std::sync::Mutex<HashSet<[u8; 32]>>,
    /// Set once the server stops: it renews nothing more.
    stopped: AtomicBool,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

impl Leases {
    /// Registers this server as `account`, reachable at `peer` (`None`:
    /// alone on its database, so every other instance is taken for dead).
    pub(crate) async fn register(
        db: Db,
        account: &str,
        peer: Option<&Peer>,
        term: Duration,
    ) -> Result<Leases, sqlx::Error> {
        let mut suffix = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix)
            .expect("the system's random numbers");
        let me = format!("{account}/{}", hex::encode(suffix));
        let (addr, server_name) = peer
            .map(|p| (p.addr.as_str(), p.server_name.as_str()))
            .unwrap_or(("", ""));
        sqlx::query(
            "INSERT INTO server_instances \
             (instance, account, addr, server_name, started_ms, alive_until_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(me.as_str())
        .bind(account)
        .bind(addr)
        .bind(server_name)
        .bind(now())
        .bind(now().saturating_add(ms(term)))
        .execute(db.pool())
        .await?;
        // Servers dead for a day are forgotten: what they held is free.
        sqlx::query("DELETE FROM server_instances WHERE alive_until_ms < $1")
            .bind(now().saturating_sub(86_400_000))
            .execute(db.pool())
            .await?;
        if peer.is_none() {
            sqlx::query("UPDATE server_instances SET alive_until_ms = 0 WHERE instance <> $1")
                .bind(me.as_str())
                .execute(db.pool())
                .await?;
        }
        Ok(Leases {
            db,
            me,
            term,
            held: std::sync::Mutex::new(HashSet::new()),
            stopped: AtomicBool::new(false),
        })
    }

    /// This running server's name in the lease tables.
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// Renews this server's leases every third of their term, until the
    /// server stops.
    pub(crate) async fn renew(self: Arc<Self>) {
        let mut outage = Outage::new("medledger server: renewing its leases".to_owned());
        loop {
            tokio::time::sleep(self.term / 3).await;
            match self.renew_once().await {
                Ok(()) => outage.worked(),
                Err(e) => outage.failed(&e),
            }
        }
    }

    /// Moves this server's term on. Renewed after it lapsed, the server
    /// asks again for every lease it held: others may have taken them.
    async fn renew_once(&self) -> Result<(), sqlx::Error> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let now = now();
        let renewed = sqlx::query(
            "UPDATE server_instances SET alive_until_ms = $1 \
             WHERE instance = $2 AND alive_until_ms > $3",
        )
        .bind(now.saturating_add(ms(self.term)))
        .bind(self.me.as_str())
        .bind(now)
        .execute(self.db.pool())
        .await?;
        if renewed.rows_affected() == 0 {
            tracing::warn!(
                "medledger server: its leases lapsed before it renewed them; the others may have taken its patients"
            );
            self.lost();
            sqlx::query("UPDATE server_instances SET alive_until_ms = $1 WHERE instance = $2")
                .bind(now.saturating_add(ms(self.term)))
                .bind(self.me.as_str())
                .execute(self.db.pool())
                .await?;
        }
        Ok(())
    }

    /// Who holds each of `patients`' leases, taking those that are free or
    /// whose holder lapsed; with `over`, taking them whoever holds them.
    pub(crate) async fn take(
        &self,
        patients: impl IntoIterator<Item = [u8; 32]>,
        over: bool,
    ) -> Result<HashMap<[u8; 32], Holder>, sqlx::Error> {
        let mut holders = HashMap::new();
        for patient in patients {
            if holders.contains_key(&patient) {
                continue;
            }
            if !over && self.held.lock().expect("not poisoned").contains(&patient) {
                holders.insert(patient, Holder::Me);
                continue;
            }
            let holder = self.take_one(&patient, over).await?;
            if holder == Holder::Me {
                self.held.lock().expect("not poisoned").insert(patient);
            }
            holders.insert(patient, holder);
        }
        Ok(holders)
    }

    async fn take_one(&self, patient: &[u8; 32], over: bool) -> Result<Holder, sqlx::Error> {
        sqlx::query(
            "INSERT INTO ledger_leases (patient, holder, size) VALUES ($1, $2, \
             (SELECT COUNT(*) FROM ledger_entries WHERE patient = $3)) \
             ON CONFLICT (patient) DO NOTHING",
        )
        .bind(patient.to_vec())
        .bind(self.me.as_str())
        .bind(patient.to_vec())
        .execute(self.db.pool())
        .await?;
        sqlx::query(
            "UPDATE ledger_leases SET holder = $1 WHERE patient = $2 AND holder <> $3 \
             AND ($4 = 1 OR NOT EXISTS (SELECT 1 FROM server_instances s \
                  WHERE s.instance = ledger_leases.holder AND s.alive_until_ms > $5))",
        )
        .bind(self.me.as_str())
        .bind(patient.to_vec())
        .bind(self.me.as_str())
        .bind(i64::from(over))
        .bind(now())
        .execute(self.db.pool())
        .await?;
        let row = sqlx::query(
            "SELECT l.holder AS holder, s.addr AS addr, s.server_name AS server_name \
             FROM ledger_leases l LEFT JOIN server_instances s ON s.instance = l.holder \
             WHERE l.patient = $1",
        )
        .bind(patient.to_vec())
        .fetch_one(self.db.pool())
        .await?;
        let holder: String = row.try_get("holder")?;
        Ok(if holder == self.me {
            Holder::Me
        } else {
            Holder::Other(Peer {
                addr: row
                    .try_get::<Option<String>, _>("addr")?
                    .unwrap_or_default(),
                server_name: row
                    .try_get::<Option<String>, _>("server_name")?
                    .unwrap_or_default(),
            })
        })
    }

    /// This server stops: its term ends now, so that the other servers take
    /// its patients with their next readings instead of after a term.
    pub(crate) async fn release(&self) -> Result<(), sqlx::Error> {
        self.stopped.store(true, Ordering::SeqCst);
        self.lost();
        sqlx::query("UPDATE server_instances SET alive_until_ms = 0 WHERE instance = $1")
            .bind(self.me.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// How long until the leases of `patients` lapse if their holders
    /// renew no more; `None` if a holder's term ends more than one term
    /// from now (its clock is ahead of this server's: waiting would not
    /// tell whether it died).
    pub(crate) async fn lapse_wait(
        &self,
        patients: &[[u8; 32]],
    ) -> Result<Option<Duration>, sqlx::Error> {
        let mut latest = 0;
        for patient in patients {
            let until: Option<i64> = sqlx::query(
                "SELECT s.alive_until_ms FROM ledger_leases l \
                 JOIN server_instances s ON s.instance = l.holder WHERE l.patient = $1",
            )
            .bind(patient.to_vec())
            .fetch_optional(self.db.pool())
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
            latest = latest.max(until.unwrap_or(0));
        }
        let wait = Duration::from_millis(u64::try_from(latest - now()).unwrap_or(0));
        Ok((wait <= self.term).then_some(wait))
    }

    /// A lease this server believed it held was taken over: ask again
    /// next time.
    pub(crate) fn lost(&self) {
        self.held.lock().expect("not poisoned").clear();
    }

    /// Whether this server runs job `name` (taking it if free or if its
    /// holder lapsed).
    pub(crate) async fn job(&self, name: &str) -> Result<bool, sqlx::Error> {
        sqlx::query(
            "INSERT INTO job_leases (name, holder) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(self.me.as_str())
        .execute(self.db.pool())
        .await?;
        sqlx::query(
            "UPDATE job_leases SET holder = $1 WHERE name = $2 AND holder <> $3 \
             AND NOT EXISTS (SELECT 1 FROM server_instances s \
                 WHERE s.instance = job_leases.holder AND s.alive_until_ms > $4)",
        )
        .bind(self.me.as_str())
        .bind(name)
        .bind(self.me.as_str())
        .bind(now())
        .execute(self.db.pool())
        .await?;
        let row = sqlx::query("SELECT holder FROM job_leases WHERE name = $1")
            .bind(name)
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<String, _>("holder")? == self.me)
    }
}
