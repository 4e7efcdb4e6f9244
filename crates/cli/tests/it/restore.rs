//! `medledger restore --config`: a server on PostgreSQL and S3 whose
//! database was brought back by hand (`pg_dump`, `pg_restore`) is
//! completed by medledger: erasures recorded on chain applied again,
//! every ledger checked against its anchors.

use crate::site::{Site, post_one};
use medledger_storage::{ObjectStoreBlobs, test_utils};
use std::process::Command;

/// Runs a PostgreSQL client program, which must succeed.
fn pg(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_by_hand_on_postgresql_and_s3_is_completed_by_restore() {
    let (Some((url, schema, db)), Some((blobs_url, aws)), Some(server_url)) = (
        test_utils::postgres_schema().await,
        test_utils::s3_url(),
        test_utils::postgres_url(),
    ) else {
        return;
    };
    let blobs = ObjectStoreBlobs::from_url_with_env(&blobs_url, aws.clone()).unwrap();
    let site = Site::start(medledger_sim::Options {
        server_db: Some(db),
        server_blobs: Some(blobs),
        ..medledger_sim::Options::default()
    })
    .await
    .unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut conn = site.connect(&device).await.unwrap();
    for value in [71.0, 72.0] {
        let reply = post_one(&mut conn, device.heart_rate(value), true).await;
        assert_eq!(reply.status, 202);
    }
    site.server.anchor_all().await.unwrap();

    // The backup: a dump of the server's database; the blobs stay in the
    // bucket (which versioning or a bucket copy keeps).
    let dump = site.dir.path().join("server.dump");
    let dump_path = dump.to_str().unwrap();
    pg(
        "pg_dump",
        &[
            "--format=custom",
            "--schema",
            &schema,
            "--file",
            dump_path,
            &server_url,
        ],
    );
    // After it, the patient is erased; then the database is lost and
    // restored from the dump, which still holds the patient.
    site.server.erase(&site.patient_ref.0).await.unwrap();
    let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
    pg("psql", &[&server_url, "-c", &drop_schema]);
    pg("pg_restore", &["--dbname", &server_url, dump_path]);

    // The server's own files and configuration, as an operator keeps them.
    let etc = site.dir.path().join("etc");
    site.write_server_files(&etc).unwrap();
    let rpc = crate::site::serve_rpc(&site).await;
    let config = etc.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\
             data = \"data\"\n\
             database = \"{url}\"\n\
             blobs = \"{blobs_url}\"\n\
             credentials = \"server\"\n\
             ca_root = \"{root}\"\n\
             crl = \"{crl}\"\n\
             kek_file = \"kek.hex\"\n\
             ledger_key = \"ledger.key\"\n\
             chain_rpc = \"{rpc}\"\n\
             registry = \"{registry}\"\n",
            root = site.ca.dir().join("root.crt").display(),
            crl = site.ca.dir().join("crl.pem").display(),
            registry = site.admin.addresses().registry,
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_medledger"))
            .args(["restore", "--config", config.to_str().unwrap()])
            .envs(aws)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("1 patient ledger(s) checked against the chain, 1 erased again")
            && said.contains("every ledger verified"),
        "{said}"
    );
}
