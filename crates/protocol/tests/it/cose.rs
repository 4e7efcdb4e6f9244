use medledger_protocol::catalogue::data_type_by_name;
use medledger_protocol::cbor::{self, CborError};
use medledger_protocol::{
    Algorithm, DeviceId, MAX_SIGNED_READING_BYTES, Observation, PayloadError, Reading,
    ReadingError, SignedReading, SigningKey, VerifyingKey, open,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};

const CERT: &[u8] = b"stand-in for a certificate DER: only its hash matters here";

fn key(alg: Algorithm) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = match alg {
        Algorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap()
        }
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).unwrap(),
    };
    SigningKey::from_pkcs8(alg, pkcs8.as_ref(), CERT).unwrap()
}

fn reading() -> Reading {
    Reading {
        dev: DeviceId([
            0x30, 0x74, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0, 0, 0x1A, 0x85,
        ]),
        seq: 42,
        ts_ms: 1_763_683_200_000,
        obs: vec![
            Observation::scalar(data_type_by_name("heart-rate").unwrap(), 72.0),
            Observation::scalar(data_type_by_name("spo2").unwrap(), 97.5),
        ],
        model: None,
    }
}

/// A COSE_Sign1 from parts with a zero signature: header checks come
/// before the signature is looked at.
fn envelope(protected: &[u8], unprotected: &[u8], payload: &[u8]) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.tag(18)
            .array(4)
            .bytes(protected)
            .raw(unprotected)
            .bytes(payload)
            .bytes(&[0u8; 64]);
    })
}

#[test]
fn es256_and_eddsa_readings_verify_and_round_trip() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let k = key(alg);
        let signed = k.sign(&reading());
        let decoded = SignedReading::decode(&signed).unwrap();
        assert_eq!(decoded.algorithm(), alg);
        assert_eq!(decoded.kid(), &medledger_protocol::kid_of(CERT));
        assert_eq!(decoded.verify(&k.verifying_key()).unwrap(), reading());
    }
}

#[test]
fn any_flipped_bit_in_the_signed_bytes_is_rejected() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let k = key(alg);
        let vk = k.verifying_key();
        let signed = k.sign(&reading());
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&bad, &vk).is_err(),
                "{alg}: flipping a bit of byte {i} was accepted"
            );
        }
    }
}

#[test]
fn a_changed_payload_is_a_bad_signature() {
    let k = key(Algorithm::Es256);
    let signed = k.sign(&reading());
    let mut other = reading();
    other.seq = 43;
    let forged_payload = other.to_cbor();
    let original_payload = reading().to_cbor();
    // Same length, so splice the new payload in place of the old.
    let at = signed
        .windows(original_payload.len())
        .position(|w| w == original_payload)
        .unwrap();
    let mut forged = signed.clone();
    forged[at..at + forged_payload.len()].copy_from_slice(&forged_payload);
    assert_eq!(
        open(&forged, &k.verifying_key()),
        Err(ReadingError::BadSignature)
    );
}

#[test]
fn a_kid_of_another_certificate_or_another_algorithm_is_refused() {
    let k = key(Algorithm::Es256);
    let signed = k.sign(&reading());
    let vk = k.verifying_key();
    let other_cert = VerifyingKey::new(Algorithm::Es256, [7; 32], vk.public_key().to_vec());
    assert_eq!(open(&signed, &other_cert), Err(ReadingError::KidMismatch));
    let ed = VerifyingKey::new(Algorithm::EdDsa, *vk.kid(), vec![0; 32]);
    assert!(matches!(
        open(&signed, &ed),
        Err(ReadingError::AlgorithmMismatch { .. })
    ));
    let wrong_key = key(Algorithm::Es256).verifying_key();
    let wrong_key = VerifyingKey::new(Algorithm::Es256, *vk.kid(), wrong_key.public_key().to_vec());
    assert_eq!(open(&signed, &wrong_key), Err(ReadingError::BadSignature));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![0u8; MAX_SIGNED_READING_BYTES + 1];
    assert!(matches!(
        SignedReading::decode(&big),
        Err(ReadingError::TooLarge { .. })
    ));
}

fn protected(entries: impl FnOnce(&mut cbor::Encoder)) -> Vec<u8> {
    cbor::encode_with(entries)
}

#[test]
fn unknown_critical_headers_and_bad_headers_are_refused() {
    let payload = reading().to_cbor();
    let empty = cbor::encode_with(|e| {
        e.map(0);
    });
    // {1: -7, 2: [99], 4: kid, 99: 0}
    let p = protected(|e| {
        e.map(4)
            .int(1)
            .int(-7)
            .int(2)
            .array(1)
            .int(99)
            .int(4)
            .bytes(&[0; 32])
            .int(99)
            .int(0);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &empty, &payload)).unwrap_err(),
        ReadingError::UnknownCriticalHeader("99".into())
    );
    // {1: -7, 2: ["x"], 4: kid}
    let p = protected(|e| {
        e.map(3)
            .int(1)
            .int(-7)
            .int(2)
            .array(1)
            .text("x")
            .int(4)
            .bytes(&[0; 32]);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &empty, &payload)).unwrap_err(),
        ReadingError::UnknownCriticalHeader("\"x\"".into())
    );
    // crit must list something, and only headers that are present.
    let p = protected(|e| {
        e.map(3)
            .int(1)
            .int(-7)
            .int(2)
            .array(0)
            .int(4)
            .bytes(&[0; 32]);
    });
    assert!(matches!(
        SignedReading::decode(&envelope(&p, &empty, &payload)),
        Err(ReadingError::Envelope(_))
    ));
    let p = protected(|e| {
        e.map(3)
            .int(1)
            .int(-7)
            .int(2)
            .array(1)
            .int(3)
            .int(4)
            .bytes(&[0; 32]);
    });
    assert!(matches!(
        SignedReading::decode(&envelope(&p, &empty, &payload)),
        Err(ReadingError::Envelope(_))
    ));
    // An unknown non-critical header is ignored.
    let p = protected(|e| {
        e.map(3)
            .int(1)
            .int(-7)
            .int(4)
            .bytes(&[0; 32])
            .int(99)
            .int(0);
    });
    assert!(SignedReading::decode(&envelope(&p, &empty, &payload)).is_ok());
    // RS256 is not accepted.
    let p = protected(|e| {
        e.map(2).int(1).int(-257).int(4).bytes(&[0; 32]);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &empty, &payload)).unwrap_err(),
        ReadingError::UnsupportedAlgorithm(-257)
    );
    // No kid; a short kid.
    let p = protected(|e| {
        e.map(1).int(1).int(-7);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &empty, &payload)).unwrap_err(),
        ReadingError::BadKid
    );
    let p = protected(|e| {
        e.map(2).int(1).int(-7).int(4).bytes(&[0; 8]);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &empty, &payload)).unwrap_err(),
        ReadingError::BadKid
    );
    // kid in the unprotected header is accepted; alg there is not.
    let p = protected(|e| {
        e.map(1).int(1).int(-7);
    });
    let u = cbor::encode_with(|e| {
        e.map(1).int(4).bytes(&[1; 32]);
    });
    assert_eq!(
        SignedReading::decode(&envelope(&p, &u, &payload))
            .unwrap()
            .kid(),
        &[1; 32]
    );
    let u = cbor::encode_with(|e| {
        e.map(1).int(1).int(-7);
    });
    assert!(matches!(
        SignedReading::decode(&envelope(&p, &u, &payload)),
        Err(ReadingError::Envelope(_))
    ));
}

#[test]
fn non_canonical_and_malformed_envelopes_are_typed_errors() {
    let k = key(Algorithm::EdDsa);
    let signed = k.sign(&reading());
    // Untagged.
    assert!(matches!(
        SignedReading::decode(&signed[1..]),
        Err(ReadingError::Envelope(_))
    ));
    // Array length in a long form: 0x98 0x04 instead of 0x84.
    let mut long = vec![signed[0], 0x98, 0x04];
    long.extend_from_slice(&signed[2..]);
    assert!(matches!(
        SignedReading::decode(&long),
        Err(ReadingError::Cbor(CborError::NonCanonical { .. }))
    ));
    // Truncated.
    assert!(matches!(
        SignedReading::decode(&signed[..signed.len() - 1]),
        Err(ReadingError::Cbor(CborError::Truncated { .. }))
    ));
    // Trailing garbage.
    let mut extra = signed.clone();
    extra.push(0);
    assert!(matches!(
        SignedReading::decode(&extra),
        Err(ReadingError::Cbor(CborError::TrailingBytes { .. }))
    ));
}

#[test]
fn a_non_canonical_payload_is_refused_even_when_correctly_signed() {
    // A device that encodes `seq` as 0x1a0000002a (long form of 42) is
    // refused, since two encodings of one reading would hash differently.
    let k = key(Algorithm::EdDsa);
    let canonical = reading().to_cbor();
    let needle = [0x63, b's', b'e', b'q', 0x18, 42];
    let at = canonical
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut payload = canonical[..at + 4].to_vec();
    payload.extend_from_slice(&[0x1a, 0, 0, 0, 42]);
    payload.extend_from_slice(&canonical[at + needle.len()..]);
    let signed = k.sign_payload(&payload);
    let err = open(&signed, &k.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            ReadingError::Payload(PayloadError::Cbor(CborError::NonCanonical { .. }))
        ),
        "{err}"
    );
}

#[test]
fn x5chain_carries_one_certificate_or_a_chain_in_either_header_and_is_signed() {
    let k = key(Algorithm::Es256);
    let issuing = b"issuing CA".to_vec();
    for chain in [vec![CERT.to_vec()], vec![CERT.to_vec(), issuing.clone()]] {
        let signed = k.sign_with_chain(&reading(), &chain);
        let decoded = SignedReading::decode(&signed).unwrap();
        assert_eq!(decoded.x5chain(), chain.as_slice());
        assert_eq!(decoded.verify(&k.verifying_key()).unwrap(), reading());
    }
    assert!(
        SignedReading::decode(&k.sign(&reading()))
            .unwrap()
            .x5chain()
            .is_empty()
    );
    let payload = reading().to_cbor();
    let alg_kid = |e: &mut cbor::Encoder, n: usize| {
        e.map(n).int(1).int(-7).int(4).bytes(&[0; 32]);
    };
    // In the unprotected header: read, not signed.
    let p = protected(|e| alg_kid(e, 2));
    let u = cbor::encode_with(|e| {
        e.map(1).int(33).bytes(CERT);
    });
    let decoded = SignedReading::decode(&envelope(&p, &u, &payload)).unwrap();
    assert_eq!(decoded.x5chain(), [CERT.to_vec()]);
    // In both headers, empty, or not certificates.
    let p3 = protected(|e| {
        alg_kid(e, 3);
        e.int(33).bytes(CERT);
    });
    for (p, u) in [
        (p3.as_slice(), u.as_slice()),
        (
            &protected(|e| {
                alg_kid(e, 3);
                e.int(33).array(0);
            }),
            &cbor::encode_with(|e| {
                e.map(0);
            }),
        ),
        (
            &protected(|e| {
                alg_kid(e, 3);
                e.int(33).int(7);
            }),
            &cbor::encode_with(|e| {
                e.map(0);
            }),
        ),
    ] {
        assert!(
            matches!(
                SignedReading::decode(&envelope(p, u, &payload)),
                Err(ReadingError::Envelope(_))
            ),
            "{p:?} {u:?}"
        );
    }
}
