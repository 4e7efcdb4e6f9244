//! Signed checkpoints: the Go `sumdb/note` vector byte for byte, and every
//! alteration refused with the check that failed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_patient_ledger::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier};

const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_SEED: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_NOTE_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

#[test]
fn the_go_note_vector_signs_and_verifies_byte_for_byte() {
    let seed = B64.decode(GO_SEED).unwrap();
    let signer = NoteSigner::from_seed("PeterNeumann", &seed[1..]).unwrap();
    assert_eq!(signer.verifier_key(), GO_VKEY);
    let note = signer.sign_text(GO_TEXT);
    assert_eq!(note, format!("{GO_TEXT}\n{GO_NOTE_SIG}"));
    let verifier = NoteVerifier::new(GO_VKEY).unwrap();
    assert_eq!(verifier.open(&note).unwrap(), GO_TEXT);
    assert_eq!(
        verifier.open(&note.replace("cryptography", "cryptographY")),
        Err(CheckpointError::BadSignature("PeterNeumann".into()))
    );
}

fn signer() -> NoteSigner {
    NoteSigner::from_pkcs8("medledger-server-1", &NoteSigner::generate_pkcs8()).unwrap()
}

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: "medledger/patient/4f2c".into(),
        size: 1234,
        root: [7; 32],
        extensions: vec!["time 1763769600000".into()],
    }
}

#[test]
fn checkpoints_round_trip_in_the_c2sp_format() {
    let s = signer();
    let note = s.sign(&checkpoint());
    let lines: Vec<&str> = note.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "medledger/patient/4f2c",
            "1234",
            &B64.encode([7u8; 32]),
            "time 1763769600000"
        ]
    );
    assert_eq!(lines[4], "");
    assert!(lines[5].starts_with("\u{2014} medledger-server-1 "));
    let verifier = NoteVerifier::new(&s.verifier_key()).unwrap();
    let back = verifier.verify(&note).unwrap();
    assert_eq!(back, checkpoint());
    assert_eq!(back.time_ms(), Some(1763769600000));
    // Other signers' lines are ignored (cosignatures), ours is enough.
    let other = signer().sign(&checkpoint());
    let cosigned = format!("{note}{}", other.lines().last().unwrap()) + "\n";
    assert_eq!(verifier.verify(&cosigned).unwrap(), checkpoint());
}

#[test]
fn alterations_are_refused_with_what_failed() {
    let s = signer();
    let verifier = NoteVerifier::new(&s.verifier_key()).unwrap();
    let note = s.sign(&checkpoint());
    // Every byte of the text matters.
    let body_len = checkpoint().body().len();
    for i in 0..body_len {
        let mut bytes = note.clone().into_bytes();
        bytes[i] ^= 0x01;
        let Ok(altered) = String::from_utf8(bytes) else {
            continue;
        };
        assert!(
            verifier.verify(&altered).is_err(),
            "byte {i} altered and accepted"
        );
    }
    let grown = note.replacen("1234", "1235", 1);
    assert_eq!(
        verifier.verify(&grown),
        Err(CheckpointError::BadSignature("medledger-server-1".into()))
    );
    // Re-signed by another key with the same name: not ours.
    let forged = NoteSigner::from_pkcs8("medledger-server-1", &NoteSigner::generate_pkcs8())
        .unwrap()
        .sign(&checkpoint());
    assert_eq!(
        verifier.verify(&forged),
        Err(CheckpointError::NotSignedBy("medledger-server-1".into()))
    );
    // Shapes.
    assert!(matches!(
        verifier.verify("no blank line\n"),
        Err(CheckpointError::Malformed(_))
    ));
    let no_sig = checkpoint().body() + "\n";
    assert_eq!(
        verifier.verify(&no_sig),
        Err(CheckpointError::NotSignedBy("medledger-server-1".into()))
    );
    let bad_line = checkpoint().body() + "\n- medledger-server-1 AAAA\n";
    assert!(
        matches!(verifier.verify(&bad_line), Err(CheckpointError::Malformed(m)) if m.contains("does not start"))
    );
    // A well-signed text that is not a checkpoint.
    let not_a_checkpoint = s.sign_text("origin\n01\nroot\n");
    assert!(
        matches!(verifier.verify(&not_a_checkpoint), Err(CheckpointError::Malformed(m)) if m.contains("not a decimal"))
    );
    let short_root = s.sign_text("origin\n1\nAAAA\n");
    assert!(
        matches!(verifier.verify(&short_root), Err(CheckpointError::Malformed(m)) if m.contains("32 bytes"))
    );
}

#[test]
fn verifier_keys_are_checked() {
    let key = signer().verifier_key();
    NoteVerifier::new(&key).unwrap();
    // Base64 keys with '+' in them (one in about four) parse too.
    for _ in 0..64 {
        NoteVerifier::new(&signer().verifier_key()).unwrap();
    }
    NoteVerifier::new("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6").unwrap();
    for bad in [
        "",
        "name",
        "name+00000000",
        &key.replacen("medledger-server-1", "medledger-server-2", 1),
        &format!("{key}+x"),
        "PeterNeumann+c74f20a3+AhtcwQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ] {
        assert!(
            matches!(NoteVerifier::new(bad), Err(CheckpointError::BadKey(_))),
            "{bad:?} accepted"
        );
    }
    assert!(NoteSigner::from_pkcs8("two words", &NoteSigner::generate_pkcs8()).is_err());
}
