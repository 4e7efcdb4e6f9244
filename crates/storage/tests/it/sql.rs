//! The SQL layer, the same suite on both backends.

use medledger_storage::test_utils::databases;
use medledger_storage::{Backend, Db, MIGRATIONS, Migration, Part, SqlError};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_in_order() {
    for (db, _dir) in databases().await {
        let name = format!("{:?}", db.backend());
        assert_eq!(db.schema_version().await.unwrap(), 0, "{name}");
        let applied = db.migrate().await.unwrap();
        let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(applied, all, "{name}");
        assert_eq!(db.schema_version().await.unwrap(), *all.last().unwrap());
        // Again: nothing to do.
        assert!(db.migrate().await.unwrap().is_empty(), "{name}");
    }
}

/// Whether `table` exists in `db`.
async fn has_table(db: &Db, table: &str) -> bool {
    // Both backends answer a query on a missing table with an error.
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_database_holds_no_collector_tables_nor_a_collector_database_server_ones() {
    for (server, _dir) in databases().await {
        let name = format!("{:?}", server.backend());
        let applied = server.migrate_for(Part::Server).await.unwrap();
        let of = |part| -> Vec<i64> {
            MIGRATIONS
                .iter()
                .filter(|m| m.part == part)
                .map(|m| m.version)
                .collect()
        };
        assert_eq!(applied, of(Part::Server), "{name}");
        assert!(has_table(&server, "ledger_entries").await, "{name}");
        assert!(!has_table(&server, "collector_outbox").await, "{name}");
        assert!(server.migrate_for(Part::Server).await.unwrap().is_empty());

        // A database that holds every table, as earlier versions made
        // them, takes either part's migrations with nothing to do.
        assert_eq!(
            server.migrate().await.unwrap(),
            of(Part::Collector),
            "{name}"
        );
        assert!(
            server
                .migrate_for(Part::Collector)
                .await
                .unwrap()
                .is_empty()
        );
    }
    for (collector, _dir) in databases().await {
        let name = format!("{:?}", collector.backend());
        collector.migrate_for(Part::Collector).await.unwrap();
        assert!(has_table(&collector, "collector_outbox").await, "{name}");
        assert!(!has_table(&collector, "ledger_entries").await, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrators_apply_each_migration_once() {
    for (db, _dir) in databases().await {
        // A second pool on the same database, as another process would have.
        let other = db.clone();
        let (a, b) = tokio::join!(db.migrate(), other.migrate());
        let (mut a, b) = (a.unwrap(), b.unwrap());
        a.extend(b);
        a.sort();
        let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(a, all, "{:?}", db.backend());
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, all.len() as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_leaves_nothing_behind() {
    static BROKEN: &[Migration] = &[
        Migration {
            version: 1,
            part: medledger_storage::Part::Server,
            name: "good",
            sql: "CREATE TABLE good (a BIGINT)",
        },
        Migration {
            version: 2,
            part: medledger_storage::Part::Server,
            name: "half good",
            sql: "CREATE TABLE half (a BIGINT); CREATE TABLE half (a BIGINT)",
        },
    ];
    for (db, _dir) in databases().await {
        let err = db.migrate_with(BROKEN).await.unwrap_err();
        assert!(
            matches!(
                err,
                SqlError::Migration {
                    version: 2,
                    name: "half good",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("migration 2 (half good) failed"),
            "{err}"
        );
        assert_eq!(db.schema_version().await.unwrap(), 1);
        // The first statement of the failed migration was rolled back too.
        sqlx::query("CREATE TABLE half (a BIGINT)")
            .execute(db.pool())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_database_is_refused() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
        )
        .bind(999_i64)
        .bind("from the future")
        .bind(0_i64)
        .execute(db.pool())
        .await
        .unwrap();
        let err = db.migrate().await.unwrap_err();
        assert!(
            matches!(err, SqlError::SchemaTooNew { found: 999, .. }),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_queries_run_on_both() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let patient = vec![0xab_u8; 32];
        for idx in 0..3_i64 {
            sqlx::query("INSERT INTO ledger_entries (patient, idx, entry) VALUES ($1, $2, $3)")
                .bind(&patient)
                .bind(idx)
                .bind(vec![idx as u8, 0, 255])
                .execute(db.pool())
                .await
                .unwrap();
        }
        // A duplicate key is refused.
        let dup =
            sqlx::query("INSERT INTO ledger_entries (patient, idx, entry) VALUES ($1, $2, $3)")
                .bind(&patient)
                .bind(1_i64)
                .bind(vec![9_u8])
                .execute(db.pool())
                .await;
        assert!(dup.is_err());
        let rows = sqlx::query(
            "SELECT idx, entry FROM ledger_entries WHERE patient = $1 AND idx >= $2 ORDER BY idx",
        )
        .bind(&patient)
        .bind(1_i64)
        .fetch_all(db.pool())
        .await
        .unwrap();
        let got: Vec<(i64, Vec<u8>)> = rows
            .iter()
            .map(|r| (r.get("idx"), r.get("entry")))
            .collect();
        assert_eq!(got, [(1, vec![1, 0, 255]), (2, vec![2, 0, 255])]);
        // A rolled-back transaction leaves nothing.
        let mut tx = db.pool().begin().await.unwrap();
        sqlx::query("INSERT INTO ledger_checkpoints (patient, size, note) VALUES ($1, $2, $3)")
            .bind(&patient)
            .bind(3_i64)
            .bind("note")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ledger_checkpoints")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get("n");
        assert_eq!(n, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_a_durable_wal_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("medledger.db");
    let db = Db::open_sqlite(&path).await.unwrap();
    assert_eq!(db.backend(), Backend::Sqlite);
    db.migrate().await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query("PRAGMA synchronous")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, 2, "synchronous = FULL");
    sqlx::query("INSERT INTO ledger_checkpoints (patient, size, note) VALUES ($1, $2, $3)")
        .bind(vec![1_u8; 32])
        .bind(1_i64)
        .bind("n")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    let again = Db::open_sqlite(&path).await.unwrap();
    assert!(again.migrate().await.unwrap().is_empty());
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM ledger_checkpoints")
        .fetch_one(again.pool())
        .await
        .unwrap()
        .get("n");
    assert_eq!(n, 1);
    assert!(matches!(
        Db::connect("mysql://x").await,
        Err(SqlError::UnsupportedUrl(_))
    ));
}

/// `VACUUM INTO` copies a SQLite database as it is at one moment, into a
/// file that opens as a database of its own; PostgreSQL is refused,
/// naming `pg_dump`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_is_copied_whole_and_postgresql_is_sent_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("live.db")).await.unwrap();
    db.migrate().await.unwrap();
    for size in 1..=3_i64 {
        sqlx::query("INSERT INTO ledger_checkpoints (patient, size, note) VALUES ($1, $2, $3)")
            .bind(vec![7_u8; 32])
            .bind(size)
            .bind(format!("note {size}"))
            .execute(db.pool())
            .await
            .unwrap();
    }
    let copy = dir.path().join("copy.db");
    db.vacuum_into(&copy).await.unwrap();
    // Written after the copy: not in it.
    sqlx::query("DELETE FROM ledger_checkpoints")
        .execute(db.pool())
        .await
        .unwrap();
    let copied = Db::open_sqlite(&copy).await.unwrap();
    assert!(copied.migrate().await.unwrap().is_empty(), "fully migrated");
    let notes: Vec<String> = sqlx::query("SELECT note FROM ledger_checkpoints ORDER BY size")
        .fetch_all(copied.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("note"))
        .collect();
    assert_eq!(notes, ["note 1", "note 2", "note 3"]);
    // An existing file is not overwritten.
    assert!(db.vacuum_into(&copy).await.is_err());

    for (db, _dir) in databases().await {
        if db.backend() == Backend::Postgres {
            let refused = db.vacuum_into(&dir.path().join("pg.db")).await.unwrap_err();
            assert!(refused.to_string().contains("pg_dump"), "{refused}");
        }
    }
}

/// SQLite rolls a whole transaction back by itself when its disk fills
/// (here its page limit); the connection that ran it goes back to the pool
/// out of any transaction, and every connection writes and rolls back as
/// before, none holding the write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sqlite_rolled_back_by_itself_leaves_no_connection_holding_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("full.db")).await.unwrap();
    sqlx::query("CREATE TABLE t (b BLOB)")
        .execute(db.pool())
        .await
        .unwrap();
    let pages: i64 = sqlx::query("PRAGMA page_count")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    {
        let mut tx = db.pool().begin().await.unwrap();
        sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 2))
            .execute(&mut *tx)
            .await
            .unwrap();
        let full = sqlx::query("INSERT INTO t VALUES (zeroblob(1000000))")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(full.to_string().contains("full"), "{full}");
    }
    let held: Vec<_> = futures_util::future::try_join_all((0..4).map(|_| db.pool().acquire()))
        .await
        .unwrap();
    for conn in &held {
        assert!(!sqlx::Connection::is_in_transaction(&**conn));
    }
    drop(held);
    for _ in 0..8 {
        let mut tx = db.pool().begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (x'01')")
            .execute(&mut *tx)
            .await
            .unwrap();
        drop(tx);
        sqlx::query("INSERT INTO t VALUES (x'02')")
            .execute(db.pool())
            .await
            .unwrap();
    }
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM t")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_is_verified_and_nothing_else_is_accepted() {
    let Some(url) = medledger_storage::test_utils::postgres_tls_url() else {
        return;
    };
    let db = Db::connect(&url).await.unwrap();
    let ssl: bool = sqlx::query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the connection is not encrypted");
    db.close().await;

    // The server's certificate names `localhost`, not 127.0.0.1.
    let by_address = url.replacen("@localhost:", "@127.0.0.1:", 1);
    let err = Db::connect(&by_address).await.unwrap_err().to_string();
    assert!(err.contains("not valid for name"), "{err}");
    // Without the database's CA (system roots only) it is not trusted.
    let without_ca = url.split("&sslrootcert=").next().unwrap().to_owned();
    let err = Db::connect(&without_ca).await.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // And the server takes no connection without TLS.
    let plain = url.replacen("sslmode=verify-full", "sslmode=disable", 1);
    let err = Db::connect(&plain).await.unwrap_err().to_string();
    assert!(err.contains("no encryption"), "{err}");
}

#[tokio::test]
async fn a_postgresql_that_cannot_be_reached_or_entered_is_named_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Db::connect(&format!("postgres://postgres@127.0.0.1:{port}/test"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}/test: "
        )) && err.ends_with("is PostgreSQL running there and reachable from here?"),
        "{err}"
    );

    // A database that does not exist: PostgreSQL's own answer, once.
    let Some(url) = medledger_storage::test_utils::postgres_url() else {
        return;
    };
    let (server, _) = url.rsplit_once('/').unwrap();
    let err = Db::connect(&format!("{server}/no_such_database"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/no_such_database: ")
            && err.matches("does not exist").count() == 1
            && !err.contains("reachable"),
        "{err}"
    );
}
