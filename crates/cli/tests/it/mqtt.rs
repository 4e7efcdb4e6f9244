//! Devices over MQTT: a real Mosquitto (Debian's package) set up as
//! `medledger ca broker` sets it up, our devices, `mosquitto_pub` and
//! `mosquitto_sub`, and a device written with paho-mqtt from the
//! protocol document; the attacks of the HTTPS path, over MQTT.

use crate::site::Site;
use medledger_mqtt::mosquitto::Mosquitto;
use medledger_protocol::reading_hash;
use medledger_sim::mqtt::{Answer, MqttDevice};
use std::path::PathBuf;
use std::process::Command;

/// Mosquitto, or `None` after saying loudly that the test is skipped
/// (outside CI; in CI its absence fails the test).
fn mosquitto() -> Option<PathBuf> {
    let found = Mosquitto::program();
    if found.is_none() {
        let message = "mosquitto not found (on the PATH, in /usr/sbin or at MEDLEDGER_MOSQUITTO): \
                       the MQTT tests are skipped; `apt-get install mosquitto mosquitto-clients`";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
    }
    found
}

/// A hospital whose collector also takes readings from its own broker.
pub(crate) async fn site_with_broker() -> Option<Site> {
    let program = mosquitto()?;
    Some(
        Site::start(medledger_sim::Options {
            mosquitto: Some(program),
            ..medledger_sim::Options::default()
        })
        .await
        .unwrap(),
    )
}

fn problem(answer: &Answer) -> (u16, String) {
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{answer:?}"
    );
    (
        answer.status,
        answer.body["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("urn:medledger:problem:")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_mqtt_is_answered_after_the_outbox_commit_and_its_reading_stored() {
    let Some(site) = site_with_broker().await else {
        return;
    };
    let mut device = site.device(1).await.unwrap();
    let mut mqtt = site.connect_mqtt(&mut device).await.unwrap();
    let cose = device.heart_rate(72.0);
    let hash = reading_hash(&cose);
    let answer = mqtt.send(cose.clone()).await.unwrap();
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(answer.body["hash"], hex::encode(hash));
    assert_eq!(answer.body["status"], "accepted");

    // A batch: a CBOR array of readings, answered as `POST /v1/readings`
    // answers an array.
    let batch: Vec<Vec<u8>> = (0..3)
        .map(|i| device.heart_rate(70.0 + f64::from(i)))
        .collect();
    let mut e = medledger_protocol::cbor::Encoder::new();
    e.array(batch.len());
    for b in &batch {
        e.bytes(b);
    }
    let answer = mqtt.send(e.into_bytes()).await.unwrap();
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(answer.body["receipts"].as_array().unwrap().len(), 3);

    // Stored at the server, the very bytes the device signed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(stored) = site.server.reading(&hash).await.unwrap() {
            assert_eq!(stored, cose);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attack_over_mqtt_is_refused_with_its_cause() {
    let Some(site) = site_with_broker().await else {
        return;
    };
    let broker = site.broker.as_ref().unwrap().addr.clone();
    let root = site.ca.root_cert_der().unwrap();
    let mut device = site.device(1).await.unwrap();
    let mut mqtt = site.connect_mqtt(&mut device).await.unwrap();

    let first = device.heart_rate(70.0);
    assert_eq!(mqtt.send(first.clone()).await.unwrap().status, 202);
    // Replay: the same reading again.
    assert_eq!(
        problem(&mqtt.send(first).await.unwrap()),
        (409, "replay".into())
    );
    // False data: a heart rate no human has.
    assert_eq!(
        problem(&mqtt.send(device.heart_rate(400.0)).await.unwrap()),
        (422, "rule-violation".into())
    );
    // A flipped byte in the signature.
    let mut forged = device.heart_rate(71.0);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        problem(&mqtt.send(forged).await.unwrap()),
        (400, "bad-signature".into())
    );
    // A reading without its certificate: over MQTT nothing else says who
    // signed it.
    device.x5chain = false;
    assert_eq!(
        problem(&mqtt.send(device.heart_rate(72.0)).await.unwrap()),
        (400, "malformed".into())
    );
    device.x5chain = true;

    // Another device's topic: the broker's ACL refuses the publish.
    let mut other = site.device(2).await.unwrap();
    let other_topic = medledger_protocol::mqtt::readings_topic(&other.epc.to_hex());
    let err = mqtt
        .send_to(&other_topic, device.heart_rate(72.0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotAuthorized"), "{err}");
    // Another device's reading (captured, with its certificate) on one's
    // own topic: the certificate is not the topic's device.
    other.x5chain = true;
    assert_eq!(
        problem(&mqtt.send(other.heart_rate(72.0)).await.unwrap()),
        (403, "unknown-device".into())
    );

    // A device certificate from another CA: the broker refuses the
    // handshake.
    let foreign_ca = medledger_pki::Ca::init(&site.dir.path().join("foreign-ca"), "Other").unwrap();
    let mut foreign =
        medledger_sim::Device::issue(&foreign_ca, 1, "g", medledger_pki::KeyAlg::P256).unwrap();
    foreign.x5chain = true;
    assert!(
        MqttDevice::connect(&foreign, &root, &broker, "localhost")
            .await
            .is_err()
    );

    // Revoked: the collector refuses readings signed under the revoked
    // certificate at once (the connection to the broker is still open);
    // once the broker has the CRL, it refuses the handshake too.
    let mut revoked = site.device(3).await.unwrap();
    let mut revoked_mqtt = site.connect_mqtt(&mut revoked).await.unwrap();
    assert_eq!(
        revoked_mqtt
            .send(revoked.heart_rate(70.0))
            .await
            .unwrap()
            .status,
        202
    );
    let crls = site.ca.revoke(&revoked.issued.cert_der).unwrap();
    site.collector_auth.update_crls(crls).unwrap();
    assert_eq!(
        problem(&revoked_mqtt.send(revoked.heart_rate(70.0)).await.unwrap()),
        (401, "revoked".into())
    );
    let broker_dir = site.dir.path().join("broker");
    medledger_mqtt::mosquitto::write_crl(&site.ca, &broker_dir).unwrap();
    site.broker.as_ref().unwrap().reload().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while MqttDevice::connect(&revoked, &root, &broker, "localhost")
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker still lets a revoked device in"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // And the legitimate device still gets through.
    assert_eq!(
        mqtt.send(device.heart_rate(72.0)).await.unwrap().status,
        202
    );
    let m = site.collector.metrics();
    crate::site::rejected_once(
        m,
        &[
            "replay",
            "rule-violation",
            "bad-signature",
            "malformed",
            "unknown-device",
            "revoked",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_and_sub_send_a_reading_and_read_its_receipt() {
    let Some(site) = site_with_broker().await else {
        return;
    };
    let port = site.broker.as_ref().unwrap().port.to_string();
    let mut device = site.device(1).await.unwrap();
    device.x5chain = true;
    let dir = site.dir.path();
    device.issued.write(&dir.join("dev1")).unwrap();
    let reading = dir.join("reading.cose");
    let cose = device.heart_rate(72.0);
    std::fs::write(&reading, &cose).unwrap();
    let epc = device.epc.to_hex();
    let receipts = medledger_protocol::mqtt::receipts_topic(&epc);
    let tls = |c: &mut Command| {
        c.args(["-h", "localhost", "-p", &port, "-V", "mqttv5", "-q", "1"])
            .arg("--cafile")
            .arg(dir.join("broker/ca.pem"))
            .arg("--cert")
            .arg(dir.join("dev1.crt"))
            .arg("--key")
            .arg(dir.join("dev1.key"));
    };
    // mosquitto_sub subscribes with a session the broker keeps (-c, -x)
    // and exits once the broker acknowledged it (-E); the receipt then
    // waits in that session for the second mosquitto_sub.
    let sub = |c: &mut Command| {
        tls(c);
        c.args([
            "-i",
            &format!("{epc}-sub"),
            "-c",
            "-x",
            "60",
            "-t",
            &receipts,
        ]);
    };
    let mut subscribe = Command::new("mosquitto_sub");
    sub(&mut subscribe);
    assert!(subscribe.arg("-E").status().unwrap().success());
    let mut read = Command::new("mosquitto_sub");
    sub(&mut read);
    let read = read
        .args(["-C", "1", "-W", "30", "-F", "%C|%D|%P|%p"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut publish = Command::new("mosquitto_pub");
    tls(&mut publish);
    let status = publish
        .args([
            "-i",
            &epc,
            "-t",
            &medledger_protocol::mqtt::readings_topic(&epc),
        ])
        .arg("-f")
        .arg(&reading)
        .args(["-D", "publish", "response-topic", &receipts])
        .args(["-D", "publish", "correlation-data", "r-1"])
        .args(["-D", "publish", "content-type", "application/cose"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || read.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut parts = printed.trim_end().splitn(4, '|');
    let (content_type, correlation, properties, payload) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or_default(),
    );
    assert_eq!(content_type, "application/json", "{printed}");
    assert_eq!(correlation, "r-1", "{printed}");
    assert_eq!(properties, "status:202", "{printed}");
    let receipt: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(receipt["hash"], hex::encode(reading_hash(&cose)));
}

/// Python with paho-mqtt, cbor2 and cryptography (`pip install`, as
/// `.ci/run` does), or `None` after saying loudly that the test is skipped.
fn python_with_paho() -> Option<&'static str> {
    let found = Command::new("python3")
        .args(["-c", "import paho.mqtt, cbor2, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let message = "python3 with paho-mqtt, cbor2 and cryptography not found: the paho \
                       device test is skipped; `pip install paho-mqtt cbor2 cryptography`";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("\n!!! SKIPPED: {message}\n");
        return None;
    }
    Some("python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_mqtt_device_written_from_the_protocol_document_is_answered() {
    let Some(python) = python_with_paho() else {
        return;
    };
    let Some(site) = site_with_broker().await else {
        return;
    };
    let port = site.broker.as_ref().unwrap().port.to_string();
    let device = site.device(1).await.unwrap();
    let dir = site.dir.path().to_owned();
    device.issued.write(&dir.join("dev1")).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/mqtt_device/paho_device.py"
    );
    let run = |seq: &str, bpm: &str| {
        let out = Command::new(python)
            .arg(script)
            .args(["localhost", &port])
            .arg(dir.join("broker/ca.pem"))
            .arg(dir.join("dev1.crt"))
            .arg(dir.join("dev1.key"))
            .args([seq, bpm])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let accepted = tokio::task::block_in_place(|| run("1", "72"));
    assert_eq!(accepted["status"], 202, "{accepted}");
    assert_eq!(accepted["content_type"], "application/json");
    assert_eq!(accepted["correlation"], "paho-1");
    assert_eq!(accepted["body"]["status"], "accepted");
    // The same sequence number again, and a heart rate no human has.
    let replayed = tokio::task::block_in_place(|| run("1", "72"));
    assert_eq!(replayed["status"], 409, "{replayed}");
    assert_eq!(replayed["content_type"], "application/problem+json");
    assert_eq!(replayed["body"]["type"], "urn:medledger:problem:replay");
    let violated = tokio::task::block_in_place(|| run("2", "400"));
    assert_eq!(violated["status"], 422, "{violated}");
    assert_eq!(
        violated["body"]["type"],
        "urn:medledger:problem:rule-violation"
    );
}
