//! Patient cards on PKCS#11 tokens (SoftHSM2): the collector signs each
//! patient's readings on the token, the key never in a file.

use crate::ingest::{collector_config, free_port, spawn_collector};
use crate::site::post_one;
use medledger_pki::softhsm::softhsm;
use medledger_protocol::reading_hash;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_signs_with_the_patient_card_on_a_token_and_refuses_a_token_key_not_the_cards()
{
    let Some(hsm) = softhsm() else {
        return;
    };
    let site = crate::site::start().await;
    let mut device = site.device(1).await.unwrap();
    let rpc_url = crate::site::serve_rpc(&site).await;
    let server_port = free_port();
    let config = collector_config(&site, &rpc_url, server_port, "");
    let key_file = config.with_file_name("cards/p1.key");

    // The card's key goes onto the token; its file then holds only the
    // key's URI.
    let token = hsm.token("cards");
    let uri = token.import("card-p1", &site.card.key_pkcs8);
    std::fs::write(&key_file, format!("{uri}\n")).unwrap();
    let server = site
        .extra_server("server-2", &format!("127.0.0.1:{server_port}"))
        .await
        .unwrap();
    let (mut child, addr) = spawn_collector(&config);
    let cose = device.heart_rate(72.0);
    let hash = reading_hash(&cose);
    let mut conn = site
        .open(&device.credentials(), medledger_pki::Role::Collector, &addr)
        .await
        .unwrap();
    assert_eq!(post_one(&mut conn, cose.clone(), false).await.status, 202);
    // The server takes the batch only with a card signature that
    // verifies against the card's certificate.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.reading(&hash).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the reading never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A token key that is not the card's: the collector will not start,
    // and says why.
    let other = site
        .ca
        .issue(&medledger_pki::LeafRequest::new(
            medledger_pki::Role::Patient,
        ))
        .unwrap();
    let wrong = token.import("someone-else", &other.key_pkcs8);
    std::fs::write(&key_file, &wrong).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(["collector", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("is not the key of the certificate of"),
        "{said}"
    );
    assert!(said.contains("p1"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_consents_from_the_command_line_with_the_chain_key_on_a_token() {
    let Some(hsm) = softhsm() else {
        return;
    };
    let site = crate::site::start().await;
    let rpc_url = crate::site::serve_rpc(&site).await;
    let token = hsm.token("chain");
    let account = site.card.account.as_ref().unwrap();
    let uri = token.import(
        "patient-chain",
        &medledger_pki::softhsm::secp256k1_pkcs8(account.signing_key()),
    );
    let registry = site.admin.addresses().registry.to_string();
    let patient = site.patient_ref.to_string();
    let consent = |args: &[&str], key: &str| {
        let mut all = vec!["consent"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--rpc",
            &rpc_url,
            "--registry",
            &registry,
            "--key",
            key,
            "--json",
        ]);
        crate::site::medledger(&all)
    };
    // The URI itself as --key: the transaction is signed on the token.
    let (ok, out, err) = consent(
        &[
            "grant",
            "--patient",
            &patient,
            "--role",
            "doctor",
            "--scope",
            "heart-rate",
            "--purpose",
            "CAREMGT",
            "--days",
            "1",
        ],
        &uri,
    );
    assert!(ok, "{err}");
    let grant: serde_json::Value = serde_json::from_str(&out).unwrap();
    // A key file holding the URI does the same.
    let file = site.dir.path().join("patient.eth.key");
    medledger_pki::files::write_secret(&file, format!("{uri}\n").as_bytes()).unwrap();
    let (ok, out, err) = consent(
        &["list", "--patient", &patient],
        &file.display().to_string(),
    );
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(
        list["grants"][0]["id"],
        grant["grant"].to_string(),
        "{list} {grant}"
    );
    // A P-256 key is no chain key, and the command says so.
    let p256 = token.import("card", &site.card.key_pkcs8);
    let (ok, _, err) = consent(&["list", "--patient", &patient], &p256);
    assert!(!ok);
    assert!(err.contains("is not a secp256k1 key"), "{err}");
}
