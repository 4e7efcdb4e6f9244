//! One SQL interface over SQLite and PostgreSQL.
//!
//! Queries are written once, in the SQL both accept, with `$1`, `$2`, ...
//! placeholders (SQLite reads them as numbered parameters). Blobs are
//! `BYTEA` (SQLite stores them as blobs whatever the declared type),
//! integers `BIGINT`, text `TEXT`.
//!
//! Migrations are numbered, embedded in the binary, and applied in order,
//! each in its own transaction together with its row in
//! `schema_migrations`. A database migrated by a newer medledger is
//! refused rather than used.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which database is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, a file.
    Sqlite,
    /// PostgreSQL, a server.
    Postgres,
}

/// Why a database could not be used. Each says its cause in its text
/// and has no `source()`: error chains print the cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The URL names no backend we support.
    #[error("unsupported database URL {0:?} (expected sqlite:PATH or postgres://...)")]
    UnsupportedUrl(String),
    /// The database could not be reached or refused a statement.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// A migration failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {error}")]
    Migration {
        /// Its number.
        version: i64,
        /// What it does.
        name: &'static str,
        /// Why.
        error: sqlx::Error,
    },
    /// The SQLite file could not be made or kept private.
    #[error("{}: {error}", path.display())]
    Io {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// PostgreSQL could not be reached or refused to let us in.
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect {
        /// `host:port/database`, without credentials.
        target: String,
        /// Why.
        reason: String,
    },
    /// The database was migrated by a newer medledger.
    #[error(
        "the database is at schema version {found}, newer than this medledger knows ({known}); upgrade medledger"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

impl From<sqlx::Error> for SqlError {
    fn from(e: sqlx::Error) -> SqlError {
        SqlError::Database(e)
    }
}

/// Creates the file at `path` if missing, and makes it its owner's alone
/// (0600) if it is not already.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    options.open(path)?;
    Ok(())
}

/// The result of database work.
pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// Whose database a migration's tables belong in: a server's database
/// holds no collector tables, and a collector's no server tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Ledgers, keys, ingest, the chain index, alerts, the portal.
    Server,
    /// The outbox and what the collector remembers of devices.
    Collector,
}

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    /// Applied in increasing order; never reused, whatever the part.
    pub version: i64,
    /// Whose database it belongs in.
    pub part: Part,
    /// What it does.
    pub name: &'static str,
    /// Statements separated by `;`, in SQL both backends accept.
    pub sql: &'static str,
}

/// Every migration, oldest first. Append only: a released migration is
/// never edited.
pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        part: Part::Server,
        name: "patient ledgers: entries and signed checkpoints",
        sql: "CREATE TABLE ledger_entries (
              patient BYTEA NOT NULL,
              idx BIGINT NOT NULL,
              entry BYTEA NOT NULL,
              PRIMARY KEY (patient, idx)
          );
          CREATE TABLE ledger_checkpoints (
              patient BYTEA NOT NULL,
              size BIGINT NOT NULL,
              note TEXT NOT NULL,
              PRIMARY KEY (patient, size)
          )",
    },
    Migration {
        version: 2,
        part: Part::Server,
        name: "wrapped data keys and erasure tombstones",
        sql: "CREATE TABLE data_keys (
              patient BYTEA NOT NULL,
              key_id BIGINT NOT NULL,
              nonce BYTEA NOT NULL,
              wrapped BYTEA NOT NULL,
              created_ms BIGINT NOT NULL,
              PRIMARY KEY (patient, key_id)
          );
          CREATE TABLE erased_patients (
              patient BYTEA PRIMARY KEY,
              erased_ms BIGINT NOT NULL
          )",
    },
    Migration {
        version: 3,
        part: Part::Collector,
        name: "collector: device sequence marks, certificates, the outbox",
        sql: "CREATE TABLE collector_device_seq (
              epc BYTEA PRIMARY KEY,
              seq BIGINT NOT NULL
          );
          CREATE TABLE collector_certs (
              fingerprint BYTEA PRIMARY KEY,
              der BYTEA NOT NULL
          );
          CREATE TABLE collector_outbox (
              hash BYTEA PRIMARY KEY,
              batch BIGINT NOT NULL,
              pos BIGINT NOT NULL,
              patient BYTEA NOT NULL,
              device_cert BYTEA NOT NULL,
              cose BYTEA NOT NULL,
              received_ms BIGINT NOT NULL
          );
          CREATE INDEX collector_outbox_batch ON collector_outbox (batch, pos);
          CREATE TABLE collector_outbox_cards (
              batch BIGINT NOT NULL,
              patient BYTEA NOT NULL,
              card_cert BYTEA NOT NULL,
              sig BYTEA NOT NULL,
              PRIMARY KEY (batch, patient)
          )",
    },
    Migration {
        version: 4,
        part: Part::Server,
        name: "server ingest: readings, device sequence marks, batches, anchors",
        sql: "CREATE TABLE ingest_device_seq (
              epc BYTEA PRIMARY KEY,
              seq BIGINT NOT NULL
          );
          CREATE TABLE ingest_readings (
              hash BYTEA PRIMARY KEY,
              patient BYTEA NOT NULL,
              idx BIGINT NOT NULL,
              blob TEXT NOT NULL,
              blob_sha256 BYTEA NOT NULL,
              pos BIGINT NOT NULL,
              epc BYTEA NOT NULL,
              seq BIGINT NOT NULL,
              ts_ms BIGINT NOT NULL,
              batch BYTEA NOT NULL,
              batch_pos BIGINT NOT NULL
          );
          CREATE INDEX ingest_readings_patient ON ingest_readings (patient, idx);
          CREATE INDEX ingest_readings_batch ON ingest_readings (batch, batch_pos);
          CREATE TABLE ingest_batches (
              root BYTEA PRIMARY KEY,
              count BIGINT NOT NULL,
              first BYTEA NOT NULL,
              last BYTEA NOT NULL,
              created_ms BIGINT NOT NULL,
              anchor_id BIGINT,
              anchor_tx BYTEA,
              anchor_block BIGINT
          );
          CREATE TABLE ledger_anchors (
              patient BYTEA NOT NULL,
              size BIGINT NOT NULL,
              note TEXT NOT NULL,
              anchor_id BIGINT,
              anchor_tx BYTEA,
              anchor_block BIGINT,
              PRIMARY KEY (patient, size)
          )",
    },
    Migration {
        version: 5,
        part: Part::Server,
        name: "chain indexer: events of our contracts and the cursor",
        sql: "CREATE TABLE chain_cursor (
              name TEXT PRIMARY KEY,
              block BIGINT NOT NULL
          );
          CREATE TABLE chain_events (
              block BIGINT NOT NULL,
              log_index BIGINT NOT NULL,
              tx BYTEA NOT NULL,
              address BYTEA NOT NULL,
              name TEXT NOT NULL,
              args TEXT NOT NULL,
              topics BYTEA NOT NULL,
              data BYTEA NOT NULL,
              PRIMARY KEY (block, log_index)
          );
          CREATE INDEX chain_events_name ON chain_events (name, block)",
    },
    Migration {
        version: 6,
        part: Part::Server,
        name: "patient alerts",
        sql: "CREATE TABLE alerts (
              id BIGINT PRIMARY KEY,
              patient BYTEA NOT NULL,
              created_ms BIGINT NOT NULL,
              kind TEXT NOT NULL,
              source TEXT NOT NULL UNIQUE,
              flagged BIGINT NOT NULL,
              why TEXT NOT NULL,
              body TEXT NOT NULL
          );
          CREATE INDEX alerts_patient ON alerts (patient, id)",
    },
    Migration {
        version: 7,
        part: Part::Collector,
        name: "collector: refused readings to report for the patients' alerts",
        sql: "CREATE TABLE collector_refused (
              hash BYTEA PRIMARY KEY,
              patient BYTEA NOT NULL,
              device_cert BYTEA NOT NULL,
              cose BYTEA NOT NULL,
              problem TEXT NOT NULL,
              detail TEXT NOT NULL,
              at_ms BIGINT NOT NULL
          )",
    },
    Migration {
        version: 8,
        part: Part::Server,
        name: "alert preferences, and who caused an alert",
        sql: "ALTER TABLE alerts ADD COLUMN actor TEXT NOT NULL DEFAULT '';
          CREATE INDEX alerts_actor ON alerts (patient, actor, kind, created_ms);
          CREATE TABLE alert_prefs (
              patient BYTEA PRIMARY KEY,
              mode TEXT NOT NULL,
              day_start BIGINT NOT NULL,
              day_end BIGINT NOT NULL,
              max_reads_per_hour BIGINT NOT NULL
          )",
    },
    Migration {
        version: 9,
        part: Part::Server,
        name: "alert webhooks",
        sql: "CREATE TABLE alert_webhooks (
              patient BYTEA PRIMARY KEY,
              url TEXT NOT NULL,
              secret TEXT NOT NULL,
              delivered BIGINT NOT NULL
          )",
    },
    Migration {
        version: 10,
        part: Part::Server,
        name: "annotation texts, sealed with the patient's key",
        sql: "CREATE TABLE annotations (
              id BIGINT PRIMARY KEY,
              patient BYTEA NOT NULL,
              reading BYTEA NOT NULL,
              author BYTEA NOT NULL,
              correction BIGINT NOT NULL,
              content_hash BYTEA NOT NULL,
              sealed BYTEA NOT NULL,
              created_ms BIGINT NOT NULL
          );
          CREATE INDEX annotations_patient ON annotations (patient, reading)",
    },
    Migration {
        version: 11,
        part: Part::Server,
        name: "retired chains: the events indexed from a chain replaced by `chain recover`",
        sql: "CREATE TABLE retired_chains (
              id BIGINT PRIMARY KEY,
              registry BYTEA NOT NULL,
              genesis BYTEA NOT NULL,
              trusted_block BIGINT NOT NULL,
              trusted_hash BYTEA NOT NULL,
              successor BYTEA NOT NULL,
              retired_ms BIGINT NOT NULL
          );
          CREATE TABLE retired_chain_events (
              chain BIGINT NOT NULL,
              block BIGINT NOT NULL,
              log_index BIGINT NOT NULL,
              tx BYTEA NOT NULL,
              address BYTEA NOT NULL,
              name TEXT NOT NULL,
              args TEXT NOT NULL,
              topics BYTEA NOT NULL,
              data BYTEA NOT NULL,
              PRIMARY KEY (chain, block, log_index)
          );
          CREATE TABLE retired_anchors (
              chain BIGINT NOT NULL,
              kind BIGINT NOT NULL,
              item BYTEA NOT NULL,
              size BIGINT NOT NULL,
              anchor_id BIGINT NOT NULL,
              anchor_tx BYTEA NOT NULL,
              anchor_block BIGINT NOT NULL,
              PRIMARY KEY (chain, kind, item, size)
          )",
    },
    Migration {
        version: 12,
        part: Part::Server,
        name: "key-encryption key rotation: which KEK wrapped each data key, and retired KEKs",
        // `kek` is the KEK id (`Kek::id`); NULL for keys wrapped before
        // this migration, whose KEK the vault finds by trying each one it
        // holds (AES-GCM authenticates: only the right one opens them).
        sql: "ALTER TABLE data_keys ADD COLUMN kek TEXT;
          CREATE INDEX data_keys_kek ON data_keys (kek);
          CREATE TABLE retired_keks (
              kek TEXT PRIMARY KEY,
              retired_ms BIGINT NOT NULL
          )",
    },
    Migration {
        version: 13,
        part: Part::Server,
        name: "ledger key rotations: statements signed by the old and the new key",
        sql: "CREATE TABLE ledger_key_rotations (
              seq BIGINT PRIMARY KEY,
              statement TEXT NOT NULL,
              hash BYTEA NOT NULL,
              new_key TEXT NOT NULL,
              created_ms BIGINT NOT NULL,
              anchor_id BIGINT,
              anchor_tx BYTEA,
              anchor_block BIGINT
          )",
    },
    Migration {
        version: 14,
        part: Part::Server,
        name: "signed portal requests taken (replays refused), the certificate that set each webhook",
        // A signed request is remembered until its time can no longer pass
        // the window; `certificate` is PEM, leaf first.
        sql: "CREATE TABLE signed_requests (
              signer BYTEA NOT NULL,
              nonce TEXT NOT NULL,
              expires_ms BIGINT NOT NULL,
              PRIMARY KEY (signer, nonce)
          );
          CREATE INDEX signed_requests_expiry ON signed_requests (expires_ms);
          ALTER TABLE alert_webhooks ADD COLUMN certificate TEXT",
    },
    Migration {
        version: 15,
        part: Part::Server,
        name: "portal sessions in SQL (outliving restarts, shared by servers) and the challenge key",
        // A session is found by the SHA-256 of its token, never the token.
        sql: "CREATE TABLE portal_sessions (
              token_sha256 BYTEA PRIMARY KEY,
              account BYTEA NOT NULL,
              role TEXT NOT NULL,
              certificate TEXT NOT NULL,
              expires_ms BIGINT NOT NULL
          );
          CREATE INDEX portal_sessions_account ON portal_sessions (account, expires_ms);
          CREATE TABLE portal_secrets (
              name TEXT PRIMARY KEY,
              secret BYTEA NOT NULL
          )",
    },
    Migration {
        version: 16,
        part: Part::Server,
        name: "several servers on one database: instances, a writer's lease per patient ledger, jobs one server runs, alert ids handed out in SQL",
        // A lease's term is its holder's `alive_until_ms`, which the holder
        // renews; `size` is the ledger's size, moved by its holder in the
        // transaction that appends (the fence). `writer` is the instance
        // that stored a batch (and anchors it).
        sql: "CREATE TABLE server_instances (
              instance TEXT PRIMARY KEY,
              account TEXT NOT NULL,
              addr TEXT NOT NULL,
              server_name TEXT NOT NULL,
              started_ms BIGINT NOT NULL,
              alive_until_ms BIGINT NOT NULL
          );
          CREATE TABLE ledger_leases (
              patient BYTEA PRIMARY KEY,
              holder TEXT NOT NULL,
              size BIGINT NOT NULL
          );
          INSERT INTO ledger_leases (patient, holder, size)
              SELECT patient, '', MAX(idx) + 1 FROM ledger_entries GROUP BY patient;
          CREATE INDEX ledger_leases_holder ON ledger_leases (holder);
          CREATE TABLE job_leases (
              name TEXT PRIMARY KEY,
              holder TEXT NOT NULL
          );
          CREATE TABLE alert_ids (
              one BIGINT PRIMARY KEY,
              last BIGINT NOT NULL
          );
          INSERT INTO alert_ids (one, last) SELECT 1, COALESCE(MAX(id), 0) FROM alerts;
          ALTER TABLE ingest_batches ADD COLUMN writer TEXT",
    },
    Migration {
        version: 17,
        part: Part::Collector,
        name: "collector: dead letters, the batches a server refused (4xx), held until retried",
        // The held rows keep the outbox's columns, and their collector
        // batch numbers, so that a retry puts them back where they were.
        // `told` is set once the server has been told for the patients'
        // alerts.
        sql: "CREATE TABLE collector_dead_letters (
              id BIGINT PRIMARY KEY,
              first_batch BIGINT NOT NULL,
              last_batch BIGINT NOT NULL,
              readings BIGINT NOT NULL,
              status BIGINT NOT NULL,
              problem TEXT NOT NULL,
              detail TEXT NOT NULL,
              at_ms BIGINT NOT NULL,
              told BIGINT NOT NULL
          );
          CREATE TABLE collector_dead_outbox (
              hash BYTEA PRIMARY KEY,
              letter BIGINT NOT NULL,
              batch BIGINT NOT NULL,
              pos BIGINT NOT NULL,
              patient BYTEA NOT NULL,
              device_cert BYTEA NOT NULL,
              cose BYTEA NOT NULL,
              received_ms BIGINT NOT NULL
          );
          CREATE INDEX collector_dead_outbox_letter ON collector_dead_outbox (letter);
          CREATE TABLE collector_dead_cards (
              letter BIGINT NOT NULL,
              batch BIGINT NOT NULL,
              patient BYTEA NOT NULL,
              card_cert BYTEA NOT NULL,
              sig BYTEA NOT NULL,
              PRIMARY KEY (batch, patient)
          );
          CREATE TABLE collector_dead_refused (
              hash BYTEA PRIMARY KEY,
              letter BIGINT NOT NULL,
              patient BYTEA NOT NULL,
              device_cert BYTEA NOT NULL,
              cose BYTEA NOT NULL,
              problem TEXT NOT NULL,
              detail TEXT NOT NULL,
              at_ms BIGINT NOT NULL
          )",
    },
    Migration {
        version: 18,
        part: Part::Server,
        name: "server ingest: the sequence numbers each device skipped, filled once by a late reading",
        sql: "CREATE TABLE ingest_device_holes (
              epc BYTEA NOT NULL,
              lo BIGINT NOT NULL,
              hi BIGINT NOT NULL,
              PRIMARY KEY (epc, lo)
          )",
    },
    Migration {
        version: 19,
        part: Part::Server,
        name: "break-glass justifications, sealed with the patient's key; the chain holds their SHA-256",
        sql: "CREATE TABLE justifications (
              request BIGINT PRIMARY KEY,
              patient BYTEA NOT NULL,
              author BYTEA NOT NULL,
              content_hash BYTEA NOT NULL,
              sealed BYTEA NOT NULL,
              created_ms BIGINT NOT NULL
          );
          CREATE INDEX justifications_patient ON justifications (patient)",
    },
    Migration {
        version: 20,
        part: Part::Server,
        name: "the directory of people's display names, off chain",
        sql: "CREATE TABLE people_names (
              account BYTEA PRIMARY KEY,
              name TEXT NOT NULL,
              role TEXT NOT NULL,
              by_admin BIGINT NOT NULL,
              updated_ms BIGINT NOT NULL
          )",
    },
];

/// How long a request waits for a connection of the pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool of connections to one database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// How long the first connection to PostgreSQL may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection to the PostgreSQL server of `url`, within
/// [`CONNECT_TIMEOUT`], or an error naming its host, port and database.
async fn reach_postgres(url: &str, options: &AnyConnectOptions) -> Result<()> {
    let target = url::Url::parse(url).map_or_else(
        |_| "the URL's server".to_owned(),
        |u| {
            format!(
                "{}:{}{}",
                u.host_str().unwrap_or("localhost"),
                u.port().unwrap_or(5432),
                u.path()
            )
        },
    );
    let failed = |reason: String| SqlError::Connect {
        target: target.clone(),
        reason,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        // PostgreSQL's own answer says what to do (no such database,
        // authentication failed...).
        Ok(Err(sqlx::Error::Database(e))) => Err(failed(e.to_string())),
        Ok(Err(e)) => Err(failed(format!(
            "{e}; is PostgreSQL running there and reachable from here?"
        ))),
        Err(_) => Err(failed(format!(
            "no answer within {CONNECT_TIMEOUT:?}; is PostgreSQL running there and reachable from here?"
        ))),
    }
}

impl Db {
    /// Opens (creating it if needed) the SQLite database at `path`, in WAL
    /// mode with full sync: a committed transaction survives power loss.
    /// The file is its owner's alone (0600), and so are the journal and
    /// WAL files SQLite makes beside it, which take its mode.
    pub async fn open_sqlite(path: &Path) -> Result<Db> {
        private_file(path).map_err(|error| SqlError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Db::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// The PostgreSQL `url` with `schema` as its search path: a schema of
    /// the database as a database of its own (a test's, a benchmark run's).
    pub fn url_in_schema(url: &str, schema: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{schema}")
    }

    /// Connects to `sqlite:PATH` or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(SqlError::UnsupportedUrl(url.to_owned()));
        };
        let options = AnyConnectOptions::from_str(url)?;
        if backend == Backend::Postgres {
            // Fail at once, naming the server, rather than after the
            // pool's whole acquire timeout with "pool timed out".
            reach_postgres(url, &options).await?;
        }
        let pool = AnyPoolOptions::new()
            // One writer at a time is all SQLite allows anyway.
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            // A database that went away (PostgreSQL stopped) fails the
            // request after this, answered 503 storage-unavailable, rather
            // than holding the device longer than its own timeout.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .after_release(move |conn, _| {
                Box::pin(async move {
                    // SQLite rolls a transaction back by itself on some
                    // errors (a full disk, an I/O error); sqlx's own
                    // ROLLBACK then fails and it goes on counting the
                    // transaction open, so the connection's next
                    // transaction would be a savepoint whose rollback
                    // keeps the write lock for good. Such a connection is
                    // closed rather than reused. The ping first runs a
                    // rollback queued by a dropped transaction.
                    if backend == Backend::Sqlite && conn.is_in_transaction() {
                        conn.ping().await?;
                        return Ok(!conn.is_in_transaction());
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db { pool, backend })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether the database answers a query now.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The newest migration applied (0 for an empty database).
    pub async fn schema_version(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        self.locked(&mut conn, async |db, conn| db.version_on(conn).await)
            .await
    }

    /// Applies every migration of `part` not yet applied, in order;
    /// returns their versions. Safe to run from several processes at
    /// once: PostgreSQL migrators queue on an advisory lock, SQLite ones
    /// on the file's. A database that holds a migration newer than any
    /// this binary knows is refused ([`SqlError::SchemaTooNew`]).
    pub async fn migrate_for(&self, part: Part) -> Result<Vec<i64>> {
        self.run_migrations(MIGRATIONS, Some(part)).await
    }

    /// Applies every migration of every part: one database with every
    /// table (tests, and tools that read any of them).
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        self.run_migrations(MIGRATIONS, None).await
    }

    /// [`Db::migrate`] with a given list (tests).
    #[doc(hidden)]
    pub async fn migrate_with(&self, migrations: &'static [Migration]) -> Result<Vec<i64>> {
        self.run_migrations(migrations, None).await
    }

    /// Applies the migrations of `migrations` of `part` (all with `None`)
    /// that the database does not hold yet, oldest first.
    async fn run_migrations(
        &self,
        migrations: &'static [Migration],
        part: Option<Part>,
    ) -> Result<Vec<i64>> {
        let mut conn = self.pool.acquire().await?;
        self.locked(&mut conn, async |db, conn| {
            let known = migrations.last().map_or(0, |m| m.version);
            let too_new = |found| SqlError::SchemaTooNew { found, known };
            let mut applied = Vec::new();
            for m in migrations
                .iter()
                .filter(|m| part.is_none_or(|p| m.part == p))
            {
                let held = db.applied_on(conn).await?;
                if let Some(&newest) = held.last()
                    && newest > known
                {
                    return Err(too_new(newest));
                }
                if held.binary_search(&m.version).is_ok() {
                    continue;
                }
                match db.apply(conn, m).await {
                    Ok(()) => applied.push(m.version),
                    // Another SQLite process applied it first.
                    Err(_) if db.applied_on(conn).await?.binary_search(&m.version).is_ok() => {}
                    Err(error) => {
                        return Err(SqlError::Migration {
                            version: m.version,
                            name: m.name,
                            error,
                        });
                    }
                }
            }
            match db.applied_on(conn).await?.last() {
                Some(&newest) if newest > known => Err(too_new(newest)),
                _ => Ok(applied),
            }
        })
        .await
    }

    /// Runs `f` holding the migration lock (PostgreSQL; SQLite serialises
    /// writers itself).
    async fn locked<T>(
        &self,
        conn: &mut AnyConnection,
        f: impl AsyncFnOnce(&Db, &mut AnyConnection) -> Result<T>,
    ) -> Result<T> {
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_lock(7231001)").await?;
        }
        let result = f(self, conn).await;
        if self.backend == Backend::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7231001)").await?;
        }
        result
    }

    /// The versions of every migration the database holds, ascending.
    async fn applied_on(&self, conn: &mut AnyConnection) -> Result<Vec<i64>> {
        self.version_on(conn).await?;
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<i64, _>("version")?))
            .collect()
    }

    async fn version_on(&self, conn: &mut AnyConnection) -> Result<i64> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version BIGINT PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_ms BIGINT NOT NULL
             )",
        )
        .await?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.try_get::<i64, _>("v")?)
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        m: &Migration,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut tx = conn.begin().await?;
        for statement in m.sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            tx.execute(statement).await?;
        }
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Closes every connection (after this, a reopen sees only what was
    /// committed).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Copies this SQLite database to the new file `to` as it is at one
    /// moment, by SQLite's own online backup (`VACUUM INTO`): the copy is
    /// consistent while others go on writing (WAL). SQLite only: a
    /// PostgreSQL database is backed up with its own tools (`pg_dump`).
    pub async fn vacuum_into(&self, to: &Path) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(SqlError::Database(sqlx::Error::Configuration(
                "VACUUM INTO copies a SQLite database; back PostgreSQL up with pg_dump".into(),
            )));
        }
        sqlx::query("VACUUM INTO $1")
            .bind(to.display().to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Now, Unix ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A value for [`insert_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    /// `BIGINT`.
    Int(i64),
    /// `BYTEA`.
    Bytes(Vec<u8>),
    /// `TEXT`.
    Text(String),
}

/// Parameters per statement in [`insert_many`]: SQLite's parameter lookup
/// (as sqlx binds) is quadratic in the parameters of one statement.
const PARAMS_PER_STATEMENT: usize = 200;

/// Inserts `rows` into `table` (`columns` in order, one [`SqlValue`] each) with
/// as many rows per statement as keep binding cheap. `suffix` follows each
/// statement (e.g. `ON CONFLICT DO NOTHING`).
pub async fn insert_many(
    conn: &mut sqlx::AnyConnection,
    table: &str,
    columns: &[&str],
    suffix: &str,
    rows: &[Vec<SqlValue>],
) -> std::result::Result<(), sqlx::Error> {
    let per = (PARAMS_PER_STATEMENT / columns.len().max(1)).max(1);
    for chunk in rows.chunks(per) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let params: Vec<String> = (1..=columns.len())
                    .map(|c| format!("${}", r * columns.len() + c))
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} {suffix}",
            columns.join(", "),
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for row in chunk {
            debug_assert_eq!(row.len(), columns.len());
            for value in row {
                query = match value {
                    SqlValue::Int(v) => query.bind(*v),
                    SqlValue::Bytes(v) => query.bind(v.as_slice()),
                    SqlValue::Text(v) => query.bind(v.as_str()),
                };
            }
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `$1, $2, ..., $n`: placeholders for an `IN (...)` list.
pub fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
