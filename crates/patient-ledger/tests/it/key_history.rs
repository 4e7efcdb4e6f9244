//! Rotating the ledger key: what the old and the new key signed verifies,
//! in the store, in bundles and in reading proofs; what a retired key
//! signed after its retirement, and forged rotation statements, do not.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_patient_ledger::bundle::{self, Bundle};
use medledger_patient_ledger::key_history::ROTATION_HEADER;
use medledger_patient_ledger::reading_proof::{self, BatchPart, LedgerPart, ReadingProof};
use medledger_patient_ledger::{
    BundleError, Checkpoint, CheckpointError, Entry, EntryError, Field, KeyHistory,
    KeyHistoryError, Ledger, LedgerError, NewEntry, NoteSigner, ReadingProofError, leaf_hash,
    sign_rotation,
};
use medledger_protocol::now_ms;
use medledger_storage::sqlx;
use medledger_storage::test_utils::databases;
use std::collections::BTreeMap;

const P: [u8; 32] = [0x7c; 32];

fn signer() -> NoteSigner {
    NoteSigner::from_pkcs8("medledger-server", &NoteSigner::generate_pkcs8()).unwrap()
}

fn entry(i: u64, ts_ms: u64) -> NewEntry {
    let reading = [i as u8; 32];
    let mut body = BTreeMap::new();
    body.insert("reading".to_owned(), Field::Bytes(reading.to_vec()));
    // A batch of one reading: its root is the reading's leaf hash.
    body.insert(
        "batch".to_owned(),
        Field::Bytes(leaf_hash(&reading).to_vec()),
    );
    NewEntry {
        kind: "DataRecorded",
        ts_ms,
        body,
    }
}

fn checkpoint(size: u64, time_ms: Option<u64>) -> Checkpoint {
    Checkpoint {
        origin: Ledger::origin(&P),
        size,
        root: [0; 32],
        extensions: time_ms.map(|t| format!("time {t}")).into_iter().collect(),
    }
}

#[test]
fn the_history_says_which_key_was_valid_when() {
    let (k0, k1, k2) = (signer(), signer(), signer());
    let mut history = KeyHistory::new(&k0.verifier_key()).unwrap();
    let s1 = history.rotate(&k0, &k1, 1_000).unwrap();
    let s2 = history.rotate(&k1, &k2, 2_000).unwrap();
    assert!(s1.starts_with(&format!(
        "{ROTATION_HEADER}\n{}\n{}\n1000\n\n",
        k0.verifier_key(),
        k1.verifier_key()
    )));
    assert_eq!(s1.matches("\n\u{2014} medledger-server ").count(), 2);
    assert_eq!(history.current(), k2.verifier_key());
    assert_eq!(history.key_at(0), k0.verifier_key());
    assert_eq!(history.key_at(999), k0.verifier_key());
    assert_eq!(history.key_at(1_000), k1.verifier_key());
    assert_eq!(history.key_at(5_000), k2.verifier_key());
    assert_eq!(history.retired_ms(&k0.verifier_key()), Some(Some(1_000)));
    assert_eq!(history.retired_ms(&k2.verifier_key()), Some(None));
    assert_eq!(history.retired_ms(&signer().verifier_key()), None);

    // The same chain from its statements, and each of its keys trusted.
    let again = KeyHistory::from_statements(&[s1.clone(), s2.clone()], &k2.verifier_key()).unwrap();
    assert_eq!(again.keys(), history.keys());
    for k in [&k0, &k1, &k2] {
        again.require(&k.verifier_key()).unwrap();
    }
    let stranger = signer().verifier_key();
    assert!(matches!(
        again.require(&stranger),
        Err(KeyHistoryError::Untrusted { .. })
    ));
    // It must end at the key said to be current.
    assert!(matches!(
        KeyHistory::from_statements(std::slice::from_ref(&s1), &k2.verifier_key()),
        Err(KeyHistoryError::NotCurrent { .. })
    ));
    // Out of order, or a link left out.
    assert!(matches!(
        KeyHistory::from_statements(&[s2.clone(), s1.clone()], &k1.verifier_key()),
        Err(KeyHistoryError::Broken { index: 1, .. })
    ));
    let mut h = KeyHistory::new(&k0.verifier_key()).unwrap();
    assert!(matches!(
        h.push(&s2),
        Err(KeyHistoryError::Broken { index: 0, .. })
    ));
    // Not later than the previous rotation.
    let mut h = KeyHistory::new(&k0.verifier_key()).unwrap();
    h.push(&s1).unwrap();
    let early = sign_rotation(&k1, &k2, 1_000);
    let err = h.push(&early).unwrap_err();
    assert!(matches!(err, KeyHistoryError::NotLater { .. }), "{err}");
    // Back to a key already retired.
    let back = sign_rotation(&k1, &k0, 3_000);
    assert!(matches!(h.push(&back), Err(KeyHistoryError::Reused { .. })));
    // Only the current key rotates.
    let mut h = KeyHistory::new(&k0.verifier_key()).unwrap();
    assert!(matches!(
        h.rotate(&k1, &k2, 1_000),
        Err(KeyHistoryError::NotCurrent { .. })
    ));
}

#[test]
fn forged_rotation_statements_are_refused() {
    let (old, new, stranger) = (signer(), signer(), signer());
    let body = format!(
        "{ROTATION_HEADER}\n{}\n{}\n1000\n",
        old.verifier_key(),
        new.verifier_key()
    );
    let push = |note: &str| KeyHistory::new(&old.verifier_key()).unwrap().push(note);
    // Signed by the old key only: someone who stole it and hands over to
    // a key of their own without the new key's consent, or a typo.
    let err = push(&old.sign_text(&body)).unwrap_err();
    assert!(
        matches!(err, KeyHistoryError::NotSigned { role: "new", .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&new.verifier_key()), "{err}");
    // Signed by the new key only: a key claiming a ledger it was never
    // handed.
    let err = push(&new.sign_text(&body)).unwrap_err();
    assert!(
        matches!(err, KeyHistoryError::NotSigned { role: "old", .. }),
        "{err}"
    );
    // Signed by the old key and an unrelated one.
    let note = format!(
        "{body}\n{}{}",
        old.signature_line(&body),
        stranger.signature_line(&body)
    );
    let err = push(&note).unwrap_err();
    assert!(
        matches!(err, KeyHistoryError::NotSigned { role: "new", .. }),
        "{err}"
    );
    // Both signatures, but the text altered afterwards (time moved).
    let good = sign_rotation(&old, &new, 1_000);
    let moved = good.replacen("\n1000\n", "\n9000\n", 1);
    let err = push(&moved).unwrap_err();
    assert!(
        matches!(
            err,
            KeyHistoryError::NotSigned {
                source: CheckpointError::BadSignature(_),
                ..
            }
        ),
        "{err}"
    );
    // A rotation of an unrelated key does not extend this history.
    let err = push(&sign_rotation(&stranger, &new, 1_000)).unwrap_err();
    assert!(matches!(err, KeyHistoryError::Broken { .. }), "{err}");
    // Not a rotation statement at all.
    let checkpoint = old.sign(&checkpoint(1, Some(5)));
    assert!(matches!(
        push(&checkpoint),
        Err(KeyHistoryError::Malformed { .. })
    ));
    push(&good).unwrap();
}

#[test]
fn a_retired_key_signs_nothing_after_its_retirement() {
    let (old, new) = (signer(), signer());
    let retired = 1_763_769_600_000;
    let mut history = KeyHistory::new(&old.verifier_key()).unwrap();
    history.rotate(&old, &new, retired).unwrap();
    let at = |ts_ms: u64| Entry {
        patient: P,
        index: 0,
        ts_ms,
        kind: "DataRecorded".to_owned(),
        body: BTreeMap::new(),
    };

    // Entries: the old key before its retirement, the new key any time.
    history.open_entry(&at(retired - 1).sign_v1(&old)).unwrap();
    history.open_entry(&at(retired - 1).sign_v1(&new)).unwrap();
    history.open_entry(&at(retired + 1).sign_v1(&new)).unwrap();
    for ts_ms in [retired, retired + 1] {
        let err = history.open_entry(&at(ts_ms).sign_v1(&old)).unwrap_err();
        assert_eq!(
            err,
            EntryError::RetiredKey {
                key: old.verifier_key(),
                ts_ms,
                retired_ms: retired,
            }
        );
        let text = err.to_string();
        assert!(
            text.contains(&old.verifier_key()) && text.contains(&retired.to_string()),
            "{text}"
        );
    }
    assert!(matches!(
        history.open_entry(&at(retired - 1).sign_v1(&signer())),
        Err(EntryError::NoKeySigned(2))
    ));

    // Checkpoints: likewise, and a retired key's must state its time.
    history
        .verify_checkpoint(&old.sign(&checkpoint(1, Some(retired - 1))))
        .unwrap();
    history
        .verify_checkpoint(&new.sign(&checkpoint(1, Some(retired + 1))))
        .unwrap();
    for time_ms in [Some(retired), Some(retired + 5), None] {
        let err = history
            .verify_checkpoint(&old.sign(&checkpoint(1, time_ms)))
            .unwrap_err();
        assert_eq!(
            err,
            CheckpointError::RetiredKey {
                key: old.verifier_key(),
                time_ms,
                retired_ms: retired,
            }
        );
    }
    let err = history
        .verify_checkpoint(&signer().sign(&checkpoint(1, Some(retired + 1))))
        .unwrap_err();
    assert!(matches!(err, CheckpointError::NotSignedBy(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_verify_across_a_rotation() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let (old, old_pkcs8) = {
            let pkcs8 = NoteSigner::generate_pkcs8();
            (
                NoteSigner::from_pkcs8("medledger-server", &pkcs8).unwrap(),
                pkcs8,
            )
        };
        let old_key = old.verifier_key();
        let ledger = Ledger::open(db.clone(), old).await.unwrap();
        let before_ts = now_ms() - 10_000;
        ledger
            .append(&P, (0..3).map(|i| entry(i, before_ts + i)).collect())
            .await
            .unwrap();
        let old_checkpoint = ledger.checkpoint(&P).await.unwrap();
        let old_bundle = serde_json::to_string(&ledger.export(&P).await.unwrap()).unwrap();
        // An unrotated ledger's bundle is the format it always was.
        assert!(!old_bundle.contains("key_history"), "{old_bundle}");

        // A rotation dated before a stored checkpoint is refused.
        let new_pkcs8 = NoteSigner::generate_pkcs8();
        let new = || NoteSigner::from_pkcs8("medledger-server", &new_pkcs8).unwrap();
        let err = ledger.rotate(new(), before_ts).await.unwrap_err();
        assert!(matches!(err, LedgerError::Rotation(_)), "{err}");

        let ledger = Ledger::open(
            db.clone(),
            NoteSigner::from_pkcs8("medledger-server", &old_pkcs8).unwrap(),
        )
        .await
        .unwrap();
        let rotated_ms = now_ms() + 1;
        let (ledger, statement) = ledger.rotate(new(), rotated_ms).await.unwrap();
        assert_eq!(ledger.verifier_key(), new().verifier_key());
        assert_eq!(
            ledger.history().statements(),
            std::slice::from_ref(&statement)
        );
        ledger
            .append(&P, (3..6).map(|i| entry(i, rotated_ms + i)).collect())
            .await
            .unwrap();
        let new_checkpoint = ledger.checkpoint(&P).await.unwrap();

        // The store: every entry, the new checkpoint, consistent with the
        // old (anchored) one.
        let verified = ledger
            .verify(&P, std::slice::from_ref(&old_checkpoint))
            .await
            .unwrap();
        assert_eq!(verified.size, 6);

        // Reopened as a restarted server would: the history is read back;
        // the retired key no longer opens the ledgers.
        let reopened = Ledger::open(db.clone(), new()).await.unwrap();
        assert_eq!(
            reopened.history().keys(),
            [old_key.clone(), new().verifier_key()]
        );
        reopened
            .verify(&P, &[old_checkpoint, new_checkpoint])
            .await
            .unwrap();
        let err = Ledger::open(
            db.clone(),
            NoteSigner::from_pkcs8("medledger-server", &old_pkcs8).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::KeyHistory(KeyHistoryError::NotCurrent { .. })
            ),
            "{err}"
        );

        // Bundles: the new one carries the history and verifies trusting
        // the old key, the new key, or neither; the old bundle (no
        // history) still verifies with the old key.
        let bundle = serde_json::to_string(&reopened.export(&P).await.unwrap()).unwrap();
        for trusted in [Some(old_key.as_str()), Some(&new().verifier_key()), None] {
            let report = bundle::verify(&bundle, trusted.map(|k| k as &str)).unwrap();
            assert_eq!(report.size, 6);
            assert_eq!(report.keys.len(), 2);
        }
        let report = bundle::verify(&old_bundle, Some(&old_key)).unwrap();
        assert_eq!((report.size, report.keys.len()), (3, 1));
        // Trusting a key outside the chain.
        let err = bundle::verify(&bundle, Some(&signer().verifier_key())).unwrap_err();
        assert!(matches!(err, BundleError::UntrustedKey { .. }), "{err}");
        // Entries carry no signature: without the history, the bundle
        // still verifies under its newest checkpoint, the new key's, which
        // covers every entry; trusting the old key needs the history.
        let mut stripped: Bundle = serde_json::from_str(&bundle).unwrap();
        stripped.key_history.clear();
        let stripped = serde_json::to_string(&stripped).unwrap();
        assert_eq!(bundle::verify(&stripped, None).unwrap().size, 6);
        let err = bundle::verify(&stripped, Some(&old_key)).unwrap_err();
        assert!(matches!(err, BundleError::UntrustedKey { .. }), "{err}");

        // A retired-key entry dated after the retirement, slipped into
        // the store, is named.
        let late = Entry {
            patient: P,
            index: 6,
            ts_ms: rotated_ms + 100,
            kind: "DataRecorded".to_owned(),
            body: BTreeMap::new(),
        }
        .sign_v1(&NoteSigner::from_pkcs8("medledger-server", &old_pkcs8).unwrap());
        sqlx::query("INSERT INTO ledger_entries (patient, idx, entry) VALUES ($1, $2, $3)")
            .bind(P.to_vec())
            .bind(6_i64)
            .bind(late)
            .execute(db.pool())
            .await
            .unwrap();
        let err = Ledger::open(db.clone(), new())
            .await
            .unwrap()
            .verify(&P, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Entry {
                    index: 6,
                    source: EntryError::RetiredKey { .. }
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_proofs_verify_across_a_rotation() {
    let (db, _dir) = databases().await.into_iter().next().unwrap();
    db.migrate().await.unwrap();
    let old = signer();
    let old_key = old.verifier_key();
    let ledger = Ledger::open(db.clone(), old).await.unwrap();
    let ts = now_ms() - 1_000;
    ledger.append(&P, vec![entry(0, ts)]).await.unwrap();
    let (ledger, _) = ledger.rotate(signer(), now_ms() + 1).await.unwrap();
    ledger
        .append(&P, vec![entry(1, now_ms() + 2)])
        .await
        .unwrap();
    let (checkpoint, proofs) = ledger.proofs(&P, &[0]).await.unwrap();
    let stored = ledger.entry(&P, 0).await.unwrap().unwrap();
    let reading = [0_u8; 32];
    let proof = |key_history: Vec<String>| {
        serde_json::to_string(&ReadingProof {
            format: reading_proof::FORMAT.to_owned(),
            reading: hex::encode(reading),
            patient: hex::encode(P),
            ledger: LedgerPart {
                index: 0,
                entry: B64.encode(&stored),
                size: 2,
                proof: proofs[0].iter().map(hex::encode).collect(),
                checkpoint: checkpoint.clone(),
                verifier_key: ledger.verifier_key(),
                key_history,
                anchor: None,
            },
            batch: BatchPart {
                root: hex::encode(leaf_hash(&reading)),
                index: 0,
                count: 1,
                proof: Vec::new(),
                anchor: None,
            },
        })
        .unwrap()
    };
    let with = proof(ledger.history().statements().to_vec());
    // Entry 0 by the retired key, the checkpoint by the new one.
    for trusted in [Some(old_key.as_str()), Some(&ledger.verifier_key()), None] {
        let report = reading_proof::verify(&with, trusted.map(|k| k as &str)).unwrap();
        assert_eq!((report.index, report.size), (0, 2));
    }
    let err = reading_proof::verify(&with, Some(&signer().verifier_key())).unwrap_err();
    assert!(
        matches!(
            err,
            ReadingProofError::KeyHistory(KeyHistoryError::Untrusted { .. })
        ),
        "{err}"
    );
    // The entry is unsigned: the new key's checkpoint alone proves it.
    let without = proof(Vec::new());
    assert_eq!(reading_proof::verify(&without, None).unwrap().index, 0);
    let err = reading_proof::verify(&without, Some(&old_key)).unwrap_err();
    assert!(
        matches!(
            err,
            ReadingProofError::KeyHistory(KeyHistoryError::Untrusted { .. })
        ),
        "{err}"
    );
}
