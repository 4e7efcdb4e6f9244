//! The protocol test vectors' certificates are medledger device
//! certificates whose key and EPC match the vectors, and whose chain
//! (device, issuing CA, root) OpenSSL verifies at the reading's time.

use medledger_pki::{Identity, Role};
use std::path::Path;

#[test]
fn vector_certificates_carry_the_signing_key_and_the_payload_epc() {
    for name in ["es256", "eddsa"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../protocol/tests/vectors/{name}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let field = |f: &str| hex::decode(v[f].as_str().unwrap()).unwrap();
        let id = Identity::from_peer_certificate(&field("certificate_der")).unwrap();
        assert_eq!(id.role, Role::Device);
        assert_eq!(
            id.key.public_key(),
            field("public_key").as_slice(),
            "{name}"
        );
        assert_eq!(id.epc().unwrap().to_hex(), "3074257BF7194E4000001A85");
        let payload = medledger_protocol::Reading::from_cbor(&field("payload")).unwrap();
        assert_eq!(&payload.dev.0, id.epc().unwrap().as_bytes());
    }
}

#[test]
fn openssl_verifies_each_vector_chain_at_the_reading_time() {
    use std::process::Command;
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is missing"
        );
        eprintln!("SKIPPED: openssl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in ["es256", "eddsa"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../protocol/tests/vectors/{name}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let pem = |field: &str| {
            let der = hex::decode(v[field].as_str().unwrap()).unwrap();
            let file = tmp.path().join(format!("{name}-{field}.pem"));
            std::fs::write(&file, medledger_pki::files::to_pem("CERTIFICATE", &der)).unwrap();
            file
        };
        let at = (v["ts_ms"].as_u64().unwrap() / 1000).to_string();
        let out = Command::new("openssl")
            .args(["verify", "-attime", &at, "-CAfile"])
            .arg(pem("root_certificate_der"))
            .arg("-untrusted")
            .arg(pem("issuing_certificate_der"))
            .arg(pem("certificate_der"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.contains(": OK"),
            "{name}: {said}"
        );
    }
}
