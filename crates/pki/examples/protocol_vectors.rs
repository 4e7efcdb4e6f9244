//! Regenerates the protocol test vectors:
//! `crates/protocol/tests/vectors/*.json` and the "Test vectors" section of
//! `docs/protocol.md`.
//!
//! ```text
//! cargo run -p medledger-pki --example protocol_vectors
//! ```
//!
//! Each run mints a new CA and keys, so every vector changes; the tests pin
//! whatever is committed.
#![allow(clippy::unwrap_used, missing_docs)]

use medledger_pki::{Ca, KeyAlg, LeafRequest, Role};
use medledger_protocol::catalogue::data_type_by_name;
use medledger_protocol::{DeviceId, Observation, Reading, SigningKey};
use serde_json::json;
use std::fmt::Write;
use std::path::Path;

const EPC: &str = "urn:epc:tag:sgtin-96:3.0614141.812345.6789";

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "medledger test vectors").unwrap();
    let epc: medledger_pki::Epc = EPC.parse().unwrap();
    let t = |name| data_type_by_name(name).unwrap();
    let cases = [
        (
            "es256",
            KeyAlg::P256,
            vec![
                Observation::scalar(t("heart-rate"), 72.0),
                Observation::scalar(t("spo2"), 97.5),
                Observation::scalar(t("body-temperature"), 36.6),
            ],
        ),
        (
            "eddsa",
            KeyAlg::Ed25519,
            vec![Observation::waveform(
                t("ecg"),
                vec![0.12, 0.5, 1.25, -0.25],
            )],
        ),
    ];
    let mut section = String::new();
    for (name, alg, obs) in cases {
        let mut req = LeafRequest::new(Role::Device);
        req.epc = Some(epc);
        req.group = Some("icu-hr-monitor".into());
        req.rule = Some("hr-basic".into());
        req.key_alg = alg;
        req.validity_days = 3000;
        let issued = ca.issue(&req).unwrap();
        let key =
            SigningKey::from_pkcs8(alg.reading_algorithm(), &issued.key_pkcs8, &issued.cert_der)
                .unwrap();
        // The reading is taken at the first midnight (UTC) after the
        // certificate's notBefore: within its validity.
        let not_before = issued.identity().unwrap().not_before;
        let midnight = (not_before / 86_400 + 1) * 86_400;
        let day = time::OffsetDateTime::from_unix_timestamp(midnight)
            .unwrap()
            .date();
        let reading = Reading {
            dev: DeviceId(*epc.as_bytes()),
            seq: 1,
            ts_ms: u64::try_from(midnight).unwrap() * 1000,
            obs,
            model: Some("medledger-sim-1".into()),
        };
        let signed = key.sign(&reading);
        let vector = json!({
            "description": format!("Reading signed with {} by device {EPC}", alg.reading_algorithm()),
            "alg": alg.reading_algorithm().to_string(),
            "ts_ms": reading.ts_ms,
            "root_certificate_der": hex::encode(ca.root_cert_der().unwrap()),
            "issuing_certificate_der": hex::encode(ca.issuing_cert_der()),
            "certificate_der": hex::encode(&issued.cert_der),
            "private_key_pkcs8": hex::encode(&issued.key_pkcs8),
            "public_key": hex::encode(key.verifying_key().public_key()),
            "kid": hex::encode(key.verifying_key().kid()),
            "payload": hex::encode(reading.to_cbor()),
            "cose_sign1": hex::encode(&signed),
        });
        let path = root.join(format!("crates/protocol/tests/vectors/{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
        println!("wrote {}", path.display());

        let obs_text: Vec<String> = reading
            .obs
            .iter()
            .map(|o| format!("{} ({}) in {}", o.data_type.code, o.data_type.name, o.unit))
            .collect();
        writeln!(
            section,
            "### {} (`{name}.json`)\n",
            vector["description"].as_str().unwrap()
        )
        .unwrap();
        writeln!(
            section,
            "Reading: `seq` 1, `ts` {} ({day}T00:00:00Z, within the certificate's validity), model `medledger-sim-1`, observations: {}.\n",
            reading.ts_ms,
            obs_text.join("; ")
        )
        .unwrap();
        for (label, field) in [
            (
                "Root CA certificate (DER, hex; the same for both vectors)",
                "root_certificate_der",
            ),
            (
                "Issuing CA certificate (DER, hex; signed by the root, signs the device certificate)",
                "issuing_certificate_der",
            ),
            ("Device certificate (DER, hex)", "certificate_der"),
            (
                "Device private key (PKCS#8 DER, hex; a test key, never use it)",
                "private_key_pkcs8",
            ),
            ("Public key (raw)", "public_key"),
            ("kid = SHA-256(certificate DER)", "kid"),
            ("Payload (deterministic CBOR)", "payload"),
            ("COSE_Sign1 (tagged)", "cose_sign1"),
        ] {
            writeln!(
                section,
                "{label}:\n\n```text\n{}\n```\n",
                wrap(vector[field].as_str().unwrap())
            )
            .unwrap();
        }
    }
    let doc_path = root.join("docs/protocol.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let (begin, end) = ("<!-- vectors:begin -->\n", "<!-- vectors:end -->");
    let start = doc
        .find(begin)
        .expect("docs/protocol.md has the vectors:begin marker")
        + begin.len();
    let stop = doc
        .find(end)
        .expect("docs/protocol.md has the vectors:end marker");
    let intro = "Generated by `cargo run -p medledger-pki --example protocol_vectors`; \
                 `crates/protocol/tests/vectors/*.json` hold the same values and a test pins both.\n\n";
    let doc = format!("{}{intro}{section}{}", &doc[..start], &doc[stop..]);
    std::fs::write(&doc_path, doc).unwrap();
    println!("updated {}", doc_path.display());
}

fn wrap(hex: &str) -> String {
    hex.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}
