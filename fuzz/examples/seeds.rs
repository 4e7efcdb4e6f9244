//! Writes valid inputs for the fuzz targets to `fuzz/corpus/TARGET/`, made
//! by our own code: a signed reading, a device certificate, a CRL, a
//! signed checkpoint, JSON-RPC requests and MQTT packets.
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --example seeds

use medledger_patient_ledger::NoteSigner;
use medledger_pki::{Ca, Epc, KeyAlg, LeafRequest, Role};
use medledger_protocol::catalogue::data_type;
use medledger_protocol::{DeviceId, Observation, Reading, SigningKey};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("the seeds directory");
    std::fs::write(dir.join(name), bytes).expect("a seed");
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = Ca::init(dir.path(), "fuzz seeds").expect("a CA");
    for (name, alg) in [("p256", KeyAlg::P256), ("ed25519", KeyAlg::Ed25519)] {
        let epc = Epc::new(3, "0614141", "812345", 6789).expect("an EPC");
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(epc);
        request.group = Some("icu-hr-monitor".into());
        request.rule = Some("default".into());
        request.key_alg = alg;
        let issued = ca.issue(&request).expect("a device certificate");
        write(
            "certificate",
            &format!("device-{name}.der"),
            &issued.cert_der,
        );
        let key =
            SigningKey::from_pkcs8(alg.reading_algorithm(), &issued.key_pkcs8, &issued.cert_der)
                .expect("its key");
        let hr = data_type("8867-4").expect("heart rate");
        let reading = Reading {
            dev: DeviceId(*epc.as_bytes()),
            seq: 1,
            ts_ms: 1_790_000_000_000,
            obs: vec![Observation::scalar(hr, 72.0)],
            model: Some("fuzz".into()),
        };
        write("reading", &format!("{name}.cose"), &key.sign(&reading));
        write("reading", &format!("{name}.payload"), &reading.to_cbor());
    }
    let server = ca
        .issue(&LeafRequest::new(Role::Server))
        .expect("a server certificate");
    write("certificate", "server.der", &server.cert_der);
    let crls = ca.write_crl().expect("the CRLs");
    write("crl", "root.der", &crls[0]);
    write("crl", "empty.der", &crls[1]);

    let signer = NoteSigner::from_pkcs8("fuzz", &NoteSigner::generate_pkcs8()).expect("a key");
    let note = signer.sign_text("fuzz\n1\nbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbs=\n");
    write("checkpoint", "note.txt", note.as_bytes());
    write("checkpoint", "vkey.txt", signer.verifier_key().as_bytes());

    for (name, body) in [
        (
            "block-number",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}"#,
        ),
        (
            "batch",
            r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":"a","method":"eth_getBlockByNumber","params":["latest",true]}]"#,
        ),
        (
            "call",
            r#"{"jsonrpc":"2.0","id":2,"method":"eth_call","params":[{"to":"0x0000000000000000000000000000000000000001","data":"0x00"},"latest"]}"#,
        ),
        (
            "logs",
            r#"{"jsonrpc":"2.0","id":3,"method":"eth_getLogs","params":[{"fromBlock":"0x0","toBlock":"latest","topics":[null]}]}"#,
        ),
        (
            "raw",
            r#"{"jsonrpc":"2.0","id":4,"method":"eth_sendRawTransaction","params":["0x02f8"]}"#,
        ),
    ] {
        write("rpc", &format!("{name}.json"), body.as_bytes());
    }
    write(
        "transaction",
        "eip1559-prefix",
        &[0x02, 0xf8, 0x6c, 0x82, 0x05, 0x39],
    );
    write(
        "bundle",
        "empty.json",
        br#"{"format":"medledger-ledger-bundle/1","entries":[]}"#,
    );
    write("mqtt", "publish.bin", &mqtt_publish());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"fuzz");
    write(
        "portal",
        "challenge.txt",
        medledger_protocol::portal::challenge_message("portal.example:8444", "ab12cd34", 1_790_000_000_000, &key)
            .as_bytes(),
    );
    write("portal", "nonce.txt", b"0123456789abcdef-_");
    println!("seeds written to {}/corpus", env!("CARGO_MANIFEST_DIR"));
}

/// A collector's delivery as a broker sends it: a QoS 1 PUBLISH of a
/// reading with a response topic, correlation data and a user property.
fn mqtt_publish() -> Vec<u8> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
    let properties = PublishProperties {
        response_topic: Some("medledger/v1/receipts/00000000000000000000000a".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"1")),
        content_type: Some("application/cose".into()),
        user_properties: vec![("status".into(), "201".into())],
        ..Default::default()
    };
    let mut publish = Publish::new(
        "medledger/v1/readings/00000000000000000000000a",
        QoS::AtLeastOnce,
        vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x26],
        Some(properties),
    );
    publish.pkid = 7;
    let mut out = bytes::BytesMut::new();
    Packet::Publish(publish)
        .write(&mut out, None)
        .expect("a PUBLISH");
    out.to_vec()
}
