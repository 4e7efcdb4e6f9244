//! The protocol test vectors' certificates are medledger device
//! certificates whose key and EPC match the vectors.

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
