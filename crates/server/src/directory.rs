//! Display names: people shown as people. An off-chain directory (names
//! never go on chain) of each person's name: from the subject of their
//! certificate, the first time this server sees them with it (unless it is
//! the CA's default, their role and account), or as an admin sets it
//! (`PUT /v1/directory/{account}`), which a certificate never overrides.
//! A patient's name is erased with them. Staff and admins' names are shown
//! to every signed-in person, patients' only to admins and themselves.

use crate::State;
use crate::answer::{Refused, refused};
use crate::caller::Caller;
use alloy::primitives::Address;
use axum::extract::{Request, State as AxState};
use axum::middleware::Next;
use axum::response::Response;
use medledger_pki::Role;
use medledger_protocol::{ProblemType, now_ms};
use medledger_storage::Db;
use medledger_storage::sqlx::{self, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The longest name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 100;

/// The directory.
#[derive(Debug)]
pub(crate) struct Directory {
    db: Db,
    /// Accounts whose certificate name was taken in since this start.
    learned: Mutex<HashSet<Address>>,
}

/// A name people may be shown: 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters, not only spaces.
fn usable(name: &str) -> bool {
    let n = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&n)
        && !name.trim().is_empty()
        && !name.chars().any(char::is_control)
}

impl Directory {
    pub(crate) fn new(db: Db) -> Directory {
        Directory {
            db,
            learned: Mutex::new(HashSet::new()),
        }
    }

    /// Takes in the name on `caller`'s certificate, once per start, unless
    /// it is the CA's default or an admin named them.
    async fn learn(&self, caller: &Caller) -> Result<(), sqlx::Error> {
        let Some(account) = caller.account else {
            return Ok(());
        };
        let learned = || self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if learned().contains(&account) {
            return Ok(());
        }
        let subject = caller.certificate.identity.subject.trim();
        let default = subject.ends_with(&account.to_string()) || subject.is_empty();
        if default || !usable(subject) {
            learned().insert(account);
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO people_names (account, name, role, by_admin, updated_ms) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (account) DO UPDATE SET \
             name = excluded.name, role = excluded.role, updated_ms = excluded.updated_ms \
             WHERE people_names.by_admin = 0",
        )
        .bind(account.to_vec())
        .bind(subject)
        .bind(caller.role.name())
        .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
        .execute(self.db.pool())
        .await?;
        learned().insert(account);
        Ok(())
    }

    /// Names `account` (of `role`) as an admin says.
    pub(crate) async fn set(
        &self,
        account: Address,
        role: Role,
        name: &str,
    ) -> Result<(), Refused> {
        if !usable(name) {
            return Err(refused(
                ProblemType::Malformed,
                format!("a name is 1 to {MAX_NAME_CHARS} characters, without control characters"),
            ));
        }
        sqlx::query(
            "INSERT INTO people_names (account, name, role, by_admin, updated_ms) \
             VALUES ($1, $2, $3, 1, $4) ON CONFLICT (account) DO UPDATE SET \
             name = excluded.name, role = excluded.role, by_admin = 1, updated_ms = excluded.updated_ms",
        )
        .bind(account.to_vec())
        .bind(name.trim())
        .bind(role.name())
        .bind(i64::try_from(now_ms()).unwrap_or(i64::MAX))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Every name `caller` may see, by account (EIP-55, as accounts are
    /// shown everywhere): staff and admins', and patients' for an admin or
    /// (their own) the patient.
    pub(crate) async fn visible_to(
        &self,
        caller: &Caller,
    ) -> Result<BTreeMap<String, String>, sqlx::Error> {
        let rows = sqlx::query("SELECT account, name, role FROM people_names")
            .fetch_all(self.db.pool())
            .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let account = Address::from_slice(&row.try_get::<Vec<u8>, _>("account")?);
            let role: String = row.try_get("role")?;
            let shown = role != Role::Patient.name()
                || caller.role == Role::Admin
                || caller.account == Some(account);
            if shown {
                out.insert(account.to_string(), row.try_get("name")?);
            }
        }
        Ok(out)
    }

    /// Every name, by account, read once for a whole answer that names
    /// many people (for texts the patient concerned or an admin reads:
    /// FHIR); empty if the database cannot say now.
    pub(crate) async fn all(&self) -> HashMap<Address, String> {
        let rows = sqlx::query("SELECT account, name FROM people_names")
            .fetch_all(self.db.pool())
            .await
            .unwrap_or_default();
        rows.iter()
            .filter_map(|row| {
                let account = row.try_get::<Vec<u8>, _>("account").ok()?;
                let name = row.try_get::<String, _>("name").ok()?;
                (account.len() == 20).then(|| (Address::from_slice(&account), name))
            })
            .collect()
    }

    /// The name of `account`, if the directory has one (for texts the
    /// account's own patient or an admin reads: alerts).
    pub(crate) async fn name(&self, account: Address) -> Option<String> {
        sqlx::query("SELECT name FROM people_names WHERE account = $1")
            .bind(account.to_vec())
            .fetch_optional(self.db.pool())
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get("name").ok())
    }

    /// `Name (0xAccount)`, or the account alone.
    pub(crate) async fn person(&self, account: Address) -> String {
        match self.name(account).await {
            Some(name) => format!("{name} ({account})"),
            None => account.to_string(),
        }
    }

    /// Forgets `account`'s name (an erased patient's).
    pub(crate) async fn forget(&self, account: Address) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM people_names WHERE account = $1")
            .bind(account.to_vec())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

/// Middleware: the directory takes in the name on the certificate of
/// whoever calls (see [`Directory`]); a database that cannot take it now
/// does not hold the request up.
pub(crate) async fn learn(
    AxState(state): AxState<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(caller) = request.extensions().get::<Caller>()
        && let Err(e) = state.directory.learn(caller).await
    {
        tracing::warn!("medledger server: the directory could not take a name: {e}");
    }
    next.run(request).await
}
