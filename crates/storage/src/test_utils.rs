//! Test helpers for crates whose tests need a database: a fresh one of
//! each backend available. The PostgreSQL URLs come from
//! `MEDLEDGER_TEST_POSTGRES` and `MEDLEDGER_TEST_POSTGRES_TLS` (TLS only,
//! `sslmode=verify-full`); without one, its tests are skipped loudly, and
//! fail when `CI=true`. Likewise an S3 bucket from `MEDLEDGER_TEST_S3`.

use crate::ObjectStoreBlobs;
use crate::sql::Db;
use sqlx::Row;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh database of each backend available; each test gets its own
/// (a new SQLite file; a new schema of the test PostgreSQL, and of the
/// one over TLS).
pub async fn databases() -> Vec<(Db, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let sqlite = Db::open_sqlite(&dir.path().join("medledger.db"))
        .await
        .expect("the test database works");
    let mut all = vec![(sqlite, Some(dir))];
    for db in [postgres().await, postgres_tls().await]
        .into_iter()
        .flatten()
    {
        all.push((db, None));
    }
    all
}

/// A connection to a fresh schema of the test PostgreSQL, or `None` after
/// saying loudly why not.
pub async fn postgres() -> Option<Db> {
    Some(fresh_schema(&postgres_url()?).await.2)
}

/// A fresh schema of the test PostgreSQL: the URL that reaches it (for
/// another process), its name, and a connection; or `None` after saying
/// loudly why not.
pub async fn postgres_schema() -> Option<(String, String, Db)> {
    Some(fresh_schema(&postgres_url()?).await)
}

/// The URL of the test PostgreSQL, or `None` after saying loudly why not.
pub fn postgres_url() -> Option<String> {
    from_env(TEST_POSTGRES, "postgres://postgres@127.0.0.1:5432/test")
}

/// A connection to a fresh schema of the test PostgreSQL that takes TLS
/// connections only, verified (`sslmode=verify-full`), or `None` after
/// saying loudly why not.
pub async fn postgres_tls() -> Option<Db> {
    Some(fresh_schema(&postgres_tls_url()?).await.2)
}

/// A fresh schema of the test PostgreSQL over TLS: the URL that reaches it
/// (for another process), its name, and a connection; or `None` after
/// saying loudly why not.
pub async fn postgres_tls_schema() -> Option<(String, String, Db)> {
    Some(fresh_schema(&postgres_tls_url()?).await)
}

/// The URL of the test PostgreSQL over TLS (`.ci/postgres-tls` starts one
/// and prints it), or `None` after saying loudly why not.
pub fn postgres_tls_url() -> Option<String> {
    from_env(
        TEST_POSTGRES_TLS,
        "postgres://postgres@localhost:5433/postgres?sslmode=verify-full&sslrootcert=CA.crt, as `.ci/postgres-tls` prints",
    )
}

const TEST_POSTGRES: &str = "MEDLEDGER_TEST_POSTGRES";
const TEST_POSTGRES_TLS: &str = "MEDLEDGER_TEST_POSTGRES_TLS";

/// The value of the environment variable `var`, or `None` after saying
/// loudly why not (and failing under `CI=true`).
fn from_env(var: &str, example: &str) -> Option<String> {
    let Ok(url) = std::env::var(var) else {
        let message = format!(
            "{var} is not set: the tests on that PostgreSQL are skipped (e.g. {var}={example})"
        );
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    };
    Some(url)
}

/// A connection to a fresh schema of the PostgreSQL at `url`.
async fn fresh_schema(url: &str) -> (String, String, Db) {
    static N: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let schema = format!("medledger_test_{pid}_{}", N.fetch_add(1, Ordering::Relaxed));
    let admin = Db::connect(url).await.expect("the test database works");
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
    let url = Db::url_in_schema(url, &schema);
    let db = Db::connect(&url).await.expect("the test database works");
    (url, schema, db)
}

/// A fresh prefix of the test S3 bucket (`MEDLEDGER_TEST_S3`, which
/// `.ci/s3` starts), or `None` after saying loudly why not.
pub fn s3() -> Option<ObjectStoreBlobs> {
    let (url, env) = s3_url()?;
    Some(ObjectStoreBlobs::from_url_with_env(&url, env).expect("the test S3 bucket opens"))
}

/// A fresh `s3://BUCKET/PREFIX` URL of the test S3 bucket and the
/// `AWS_*` variables that reach it (for another process too), or `None`
/// after saying loudly why not.
pub fn s3_url() -> Option<(String, Vec<(String, String)>)> {
    let url = from_env(
        "MEDLEDGER_TEST_S3",
        "http://127.0.0.1:5055/medledger-test, as `.ci/s3` prints",
    )?;
    let (endpoint, bucket) = url
        .rsplit_once('/')
        .expect("MEDLEDGER_TEST_S3 is ENDPOINT/BUCKET");
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "run-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let env = [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    Some((format!("s3://{bucket}/{prefix}"), env))
}
