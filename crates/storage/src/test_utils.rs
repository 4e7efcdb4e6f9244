//! Test helpers for crates whose tests need a database: a fresh one of
//! each backend available. The PostgreSQL URL comes from
//! `MEDLEDGER_TEST_POSTGRES`; without it the PostgreSQL half is skipped
//! loudly, and fails when `CI=true`.

use crate::sql::Db;
use sqlx::Row;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh database of each backend available; each test gets its own
/// (a new SQLite file; a new PostgreSQL schema).
pub async fn databases() -> Vec<(Db, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = Db::open_sqlite(&dir.path().join("medledger.db"))
        .await
        .expect("the test database works");
    let mut all = vec![(sqlite, Some(dir))];
    if let Some(db) = postgres().await {
        all.push((db, None));
    }
    all
}

/// A connection to a fresh schema of the test PostgreSQL, or `None` after
/// saying loudly why not.
pub async fn postgres() -> Option<Db> {
    let Ok(url) = std::env::var("MEDLEDGER_TEST_POSTGRES") else {
        let message = "MEDLEDGER_TEST_POSTGRES is not set: the PostgreSQL half of the SQL tests is skipped \
                       (e.g. MEDLEDGER_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let schema = format!("medledger_test_{pid}_{}", N.fetch_add(1, Ordering::Relaxed));
    let admin = Db::connect(&url).await.expect("the test database works");
    // Schemas of earlier runs go (this process's own stay while it runs).
    let old = sqlx::query(
        "SELECT CAST(schema_name AS TEXT) FROM information_schema.schemata \
         WHERE schema_name LIKE 'medledger_test_%' AND schema_name NOT LIKE $1",
    )
    .bind(format!("medledger_test_{pid}_%"))
    .fetch_all(admin.pool())
    .await
    .expect("the test database works");
    for row in old {
        let name: String = row.get(0);
        let drop = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
        let _ = sqlx::query(&drop).execute(admin.pool()).await;
    }
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(admin.pool())
        .await
        .expect("the test database works");
    admin.close().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(
        Db::connect(&format!("{url}{sep}options=-c%20search_path%3D{schema}"))
            .await
            .expect("the test database works"),
    )
}
