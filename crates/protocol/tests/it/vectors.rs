//! The committed test vectors (and their copy in docs/protocol.md) still
//! verify and decode, and our encoder still produces them byte for byte.
//! Regenerate with `cargo run -p medledger-pki --example protocol_vectors`.

use medledger_protocol::catalogue::data_type_by_name;
use medledger_protocol::{
    Algorithm, DeviceId, Observation, Reading, SignedReading, SigningKey, VerifyingKey, kid_of,
};
use serde_json::Value;
use std::path::Path;

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn vector(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join(format!("tests/vectors/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(v[field].as_str().unwrap()).unwrap()
}

fn expected(name: &str, ts_ms: u64) -> Reading {
    let t = |n| data_type_by_name(n).unwrap();
    let obs = match name {
        "es256" => vec![
            Observation::scalar(t("heart-rate"), 72.0),
            Observation::scalar(t("spo2"), 97.5),
            Observation::scalar(t("body-temperature"), 36.6),
        ],
        _ => vec![Observation::waveform(
            t("ecg"),
            vec![0.12, 0.5, 1.25, -0.25],
        )],
    };
    Reading {
        dev: DeviceId(
            hex::decode("3074257BF7194E4000001A85")
                .unwrap()
                .try_into()
                .unwrap(),
        ),
        seq: 1,
        ts_ms,
        obs,
        model: Some("medledger-sim-1".into()),
    }
}

#[test]
fn committed_vectors_verify_decode_and_re_encode_exactly() {
    for (name, alg) in [("es256", Algorithm::Es256), ("eddsa", Algorithm::EdDsa)] {
        let v = vector(name);
        let cert = bytes(&v, "certificate_der");
        let kid = kid_of(&cert);
        assert_eq!(
            kid.to_vec(),
            bytes(&v, "kid"),
            "{name}: kid is SHA-256 of the certificate"
        );
        let key = VerifyingKey::new(alg, kid, bytes(&v, "public_key"));
        let signed = bytes(&v, "cose_sign1");
        let reading = SignedReading::decode(&signed)
            .unwrap()
            .verify(&key)
            .unwrap();
        let ts_ms = v["ts_ms"].as_u64().unwrap();
        assert_eq!(reading, expected(name, ts_ms), "{name}");
        assert_eq!(
            reading.to_cbor(),
            bytes(&v, "payload"),
            "{name}: payload encoding changed"
        );

        let signer = SigningKey::from_pkcs8(alg, &bytes(&v, "private_key_pkcs8"), &cert).unwrap();
        assert_eq!(
            signer.verifying_key(),
            key,
            "{name}: private and public key match"
        );
        let resigned = signer.sign(&reading);
        match alg {
            // Ed25519 is deterministic: the whole envelope must be identical.
            Algorithm::EdDsa => assert_eq!(resigned, signed, "{name}: envelope encoding changed"),
            // ECDSA signatures are randomized: all but the last 64 bytes.
            Algorithm::Es256 => {
                assert_eq!(resigned[..resigned.len() - 64], signed[..signed.len() - 64])
            }
        }
    }
}

#[test]
fn docs_carry_the_committed_vectors() {
    let doc = std::fs::read_to_string(dir().join("../../docs/protocol.md")).unwrap();
    let doc: String = doc.split_whitespace().collect();
    for name in ["es256", "eddsa"] {
        let v = vector(name);
        for field in [
            "root_certificate_der",
            "issuing_certificate_der",
            "certificate_der",
            "private_key_pkcs8",
            "public_key",
            "kid",
            "payload",
            "cose_sign1",
        ] {
            assert!(
                doc.contains(v[field].as_str().unwrap()),
                "docs/protocol.md lacks {name}.{field}; run `cargo run -p medledger-pki --example protocol_vectors`"
            );
        }
    }
}
