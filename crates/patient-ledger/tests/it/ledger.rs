//! The durable ledger on SQLite: appends, checkpoints, proofs, bundles,
//! erasure, and every tamper named by entry and check.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_patient_ledger::bundle::{self, Bundle};
use medledger_patient_ledger::{
    BundleError, Entry, EntryError, Field, Ledger, LedgerError, NewEntry, NoteSigner, ProofError,
    leaf_hash, verify_inclusion,
};
use medledger_storage::Db;
use medledger_storage::sqlx;
use medledger_storage::test_utils::databases;
use std::collections::BTreeMap;

const P: [u8; 32] = [0x5a; 32];

fn entry(i: u64) -> NewEntry {
    let mut body = BTreeMap::new();
    body.insert("cid".to_owned(), Field::Text(format!("bafk{i}")));
    body.insert("seq".to_owned(), Field::Uint(i));
    body.insert("sha256".to_owned(), Field::Bytes(vec![i as u8; 32]));
    NewEntry {
        kind: "DataRecorded",
        ts_ms: 1_763_769_600_000 + i,
        body,
    }
}

struct Fixture {
    db: Db,
    key: Vec<u8>,
    ledger: Ledger,
}

/// A ledger over a fresh migrated database of each backend (SQLite, and
/// PostgreSQL when `MEDLEDGER_TEST_POSTGRES` is set).
async fn fixtures() -> Vec<(Fixture, Option<tempfile::TempDir>)> {
    let mut all = Vec::new();
    for (db, dir) in databases().await {
        db.migrate().await.unwrap();
        let key = NoteSigner::generate_pkcs8();
        let ledger = Ledger::new(
            db.clone(),
            NoteSigner::from_pkcs8("medledger-server", &key).unwrap(),
        );
        all.push((Fixture { db, key, ledger }, dir));
    }
    all
}

impl Fixture {
    /// The same ledger as another process would open it: nothing cached.
    async fn reopen(&self) -> Ledger {
        Ledger::new(
            self.db.clone(),
            NoteSigner::from_pkcs8("medledger-server", &self.key).unwrap(),
        )
    }

    async fn db(&self) -> Db {
        self.db.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_durable_and_proven() {
    for (f, _dir) in fixtures().await {
        let first = f
            .ledger
            .append(&P, (0..5).map(entry).collect())
            .await
            .unwrap();
        assert_eq!(first, [0, 1, 2, 3, 4]);
        let anchored = f.ledger.checkpoint(&P).await.unwrap();
        assert!(anchored.starts_with(&format!("{}\n5\n", Ledger::origin(&P))));
        let more = f
            .ledger
            .append(&P, (5..12).map(entry).collect())
            .await
            .unwrap();
        assert_eq!(more, (5..12).collect::<Vec<_>>());
        f.ledger.checkpoint(&P).await.unwrap();

        // A new process sees the same ledger, and it verifies, also against
        // the earlier (anchored) checkpoint.
        let again = f.reopen().await;
        let v = again
            .verify(&P, std::slice::from_ref(&anchored))
            .await
            .unwrap();
        assert_eq!(v.size, 12);
        let entries = again.entries(&P).await.unwrap();
        let proof = again.inclusion(&P, 7, 12).await.unwrap();
        verify_inclusion(&leaf_hash(&entries[7]), 7, 12, &proof, &v.root).unwrap();
        assert_eq!(again.append(&P, vec![entry(12)]).await.unwrap(), [12]);
        // Another patient's ledger is separate.
        assert_eq!(again.append(&[1; 32], vec![entry(0)]).await.unwrap(), [0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_named_by_entry_and_check() {
    for (f, _dir) in fixtures().await {
        f.ledger
            .append(&P, (0..6).map(entry).collect())
            .await
            .unwrap();
        let anchored = f.ledger.checkpoint(&P).await.unwrap();
        let db = f.db().await;

        // An entry rewritten (a well-formed entry saying something else):
        // the entries no longer hash to the signed checkpoint's root.
        let stored = f.ledger.entries(&P).await.unwrap();
        let mut rewritten = f.ledger.history().open_entry(&stored[3]).unwrap();
        rewritten.body.insert("seq".to_owned(), Field::Uint(99));
        set_entry(&db, 3, &rewritten.encode()).await;
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(
            matches!(err, LedgerError::RootMismatch { size: 6, .. }),
            "{err}"
        );
        // A flipped byte in a stored entry (here, in the patientRef).
        let mut bad = stored[3].clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        set_entry(&db, 3, &bad).await;
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(
            matches!(err, LedgerError::Misplaced { index: 3, .. }),
            "{err}"
        );
        // Bytes that are no entry at all.
        set_entry(&db, 3, b"\xa1\x61v\x07").await;
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Entry {
                    index: 3,
                    source: EntryError::Malformed(_)
                }
            ),
            "{err}"
        );
        set_entry(&db, 3, &stored[3]).await;

        // Two entries swapped (each validly signed): misplaced.
        set_entry(&db, 1, &stored[2]).await;
        set_entry(&db, 2, &stored[1]).await;
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Misplaced {
                    index: 1,
                    claims: 2,
                    ..
                }
            ),
            "{err}"
        );
        set_entry(&db, 1, &stored[1]).await;
        set_entry(&db, 2, &stored[2]).await;

        // A flipped byte in the stored checkpoint.
        let note = anchored.replacen("\n6\n", "\n7\n", 1);
        sqlx::query("UPDATE ledger_checkpoints SET note = $1")
            .bind(note)
            .execute(db.pool())
            .await
            .unwrap();
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(matches!(err, LedgerError::Checkpoint { .. }), "{err}");
        assert!(err.to_string().contains("does not verify"), "{err}");

        // History rewritten and re-signed with the server's own key: every
        // signature checks out, but it no longer extends the anchored checkpoint.
        sqlx::query("DELETE FROM ledger_entries")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM ledger_checkpoints")
            .execute(db.pool())
            .await
            .unwrap();
        let forger = f.reopen().await;
        let mut rewritten: Vec<NewEntry> = (0..6).map(entry).collect();
        rewritten[2]
            .body
            .insert("cid".into(), Field::Text("bafk-forged".into()));
        forger.append(&P, rewritten).await.unwrap();
        forger.append(&P, vec![entry(6)]).await.unwrap();
        forger.checkpoint(&P).await.unwrap();
        forger.verify(&P, &[]).await.unwrap();
        let err = forger.verify(&P, &[anchored]).await.unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::NotConsistent {
                    old: 6,
                    new: 7,
                    source: ProofError::OldRootMismatch { .. }
                }
            ),
            "{err}"
        );
    }
}

async fn set_entry(db: &Db, idx: i64, bytes: &[u8]) {
    sqlx::query("UPDATE ledger_entries SET entry = $1 WHERE patient = $2 AND idx = $3")
        .bind(bytes)
        .bind(P.to_vec())
        .bind(idx)
        .execute(db.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_verify_offline_and_name_what_is_wrong() {
    for (f, _dir) in fixtures().await {
        f.ledger
            .append(&P, (0..9).map(entry).collect())
            .await
            .unwrap();
        let b = f.ledger.export(&P).await.unwrap();
        let json = serde_json::to_string(&b).unwrap();
        let report = bundle::verify(&json, Some(&f.ledger.verifier_key())).unwrap();
        assert_eq!(
            (report.size, report.entries.len(), report.erased),
            (9, 9, false)
        );
        assert_eq!(report.entries[4].body["seq"], Field::Uint(4));

        let check = |b: &Bundle| bundle::verify(&serde_json::to_string(b).unwrap(), None);
        // A flipped byte in an entry.
        let mut t = b.clone();
        let mut raw = B64.decode(&t.entries[5].entry).unwrap();
        let n = raw.len() - 3;
        raw[n] ^= 1;
        t.entries[5].entry = B64.encode(raw);
        assert!(matches!(
            check(&t),
            Err(BundleError::Entry { index: 5, .. }
                | BundleError::Proof { index: 5, .. }
                | BundleError::Misplaced { index: 5, .. })
        ));
        // A flipped byte in a proof.
        let mut t = b.clone();
        let mut h = B64.decode(&t.entries[2].proof[0]).unwrap();
        h[0] ^= 1;
        t.entries[2].proof[0] = B64.encode(h);
        assert!(matches!(
            check(&t),
            Err(BundleError::Proof { index: 2, .. })
        ));
        // An entry left out.
        let mut t = b.clone();
        t.entries.pop();
        assert!(matches!(
            check(&t),
            Err(BundleError::Incomplete {
                expected: 9,
                found: 8
            })
        ));
        // Entries reordered.
        let mut t = b.clone();
        t.entries.swap(0, 1);
        assert!(matches!(
            check(&t),
            Err(BundleError::Misplaced { index: 0, .. })
        ));
        // The checkpoint altered.
        let mut t = b.clone();
        t.checkpoint = t.checkpoint.replacen("\n9\n", "\n8\n", 1);
        assert!(matches!(check(&t), Err(BundleError::Checkpoint(_))));
        // The same entries signed by another key (same name): fine on its own,
        // refused against the trusted key.
        let (other, _other_dir) = fixtures().await.into_iter().next().unwrap();
        other
            .ledger
            .append(&P, (0..9).map(entry).collect())
            .await
            .unwrap();
        let forged = serde_json::to_string(&other.ledger.export(&P).await.unwrap()).unwrap();
        bundle::verify(&forged, None).unwrap();
        let err = bundle::verify(&forged, Some(&f.ledger.verifier_key())).unwrap_err();
        assert!(matches!(err, BundleError::UntrustedKey { .. }), "{err}");
        // Not a bundle.
        assert!(matches!(
            bundle::verify("{}", None),
            Err(BundleError::Malformed(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_only_a_tombstone() {
    for (f, _dir) in fixtures().await {
        f.ledger
            .append(&P, (0..4).map(entry).collect())
            .await
            .unwrap();
        f.ledger.checkpoint(&P).await.unwrap();
        let tombstone = f.ledger.erase(&P).await.unwrap();
        assert!(tombstone.contains("\nerased "), "{tombstone}");
        assert!(f.ledger.entries(&P).await.unwrap().is_empty());
        assert!(f.ledger.is_erased(&P).await.unwrap());
        assert_eq!(f.ledger.erase(&P).await.unwrap(), tombstone, "idempotent");
        assert!(matches!(
            f.ledger.append(&P, vec![entry(9)]).await,
            Err(LedgerError::Erased(_))
        ));
        let again = f.reopen().await;
        assert!(matches!(
            again.append(&P, vec![entry(9)]).await,
            Err(LedgerError::Erased(_))
        ));
        assert_eq!(
            again.latest_checkpoint(&P).await.unwrap().unwrap(),
            tombstone
        );
        let b = serde_json::to_string(&again.export(&P).await.unwrap()).unwrap();
        let report = bundle::verify(&b, Some(&f.ledger.verifier_key())).unwrap();
        assert!(report.erased && report.entries.is_empty() && report.size == 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_appends_for_many_patients() {
    const Q: [u8; 32] = [9; 32];
    for (f, _dir) in fixtures().await {
        f.ledger.append(&Q, vec![entry(0)]).await.unwrap();
        let indexes = f
            .ledger
            .append_many(vec![
                (P, (0..3).map(entry).collect()),
                (Q, (1..3).map(entry).collect()),
                (P, vec![entry(3)]),
            ])
            .await
            .unwrap();
        assert_eq!(indexes, [vec![0, 1, 2], vec![1, 2], vec![3]]);
        let again = f.reopen().await;
        assert_eq!(again.verify(&P, &[]).await.unwrap().size, 4);
        assert_eq!(again.verify(&Q, &[]).await.unwrap().size, 3);

        f.ledger.erase(&Q).await.unwrap();
        assert!(matches!(
            f.ledger
                .append_many(vec![(P, vec![entry(4)]), (Q, vec![entry(3)])])
                .await,
            Err(LedgerError::Erased(_))
        ));
        assert_eq!(
            f.ledger.verify(&P, &[]).await.unwrap().size,
            4,
            "nothing written"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_entries_follow_the_callers_transaction() {
    for (f, _dir) in fixtures().await {
        f.ledger.append(&P, vec![entry(0)]).await.unwrap();
        // Rolled back: nothing stored, the tree unchanged.
        {
            let mut tx = f.db.pool().begin().await.unwrap();
            let staged = f
                .ledger
                .stage(&mut tx, vec![(P, vec![entry(1), entry(2)])])
                .await
                .unwrap();
            assert_eq!(staged.indexes(), [vec![1, 2]]);
            drop(staged);
            tx.rollback().await.unwrap();
        }
        assert_eq!(f.ledger.append(&P, vec![entry(1)]).await.unwrap(), [1]);
        // Committed with another row of the caller's.
        let mut tx = f.db.pool().begin().await.unwrap();
        let staged = f
            .ledger
            .stage(&mut tx, vec![(P, vec![entry(2)])])
            .await
            .unwrap();
        medledger_storage::sqlx::query(
            "INSERT INTO erased_patients (patient, erased_ms) VALUES ($1, 0)",
        )
        .bind(vec![5u8; 32])
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(staged.committed(), [vec![2]]);
        let again = f.reopen().await;
        assert_eq!(again.verify(&P, &[]).await.unwrap().size, 3);
        assert_eq!(
            f.ledger.verify(&P, &[]).await.unwrap(),
            again.verify(&P, &[]).await.unwrap()
        );
    }
}

/// Ledgers written by earlier releases hold signed entries (`v` 1): they
/// still verify, grow with unsigned ones, and export as bundles that
/// verify; a forged signature on an old entry is still named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_of_signed_entries_from_earlier_releases_still_verify() {
    for (f, _dir) in fixtures().await {
        let db = f.db().await;
        let signer = NoteSigner::from_pkcs8("medledger-server", &f.key).unwrap();
        let old: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let e = entry(i);
                Entry {
                    patient: P,
                    index: i,
                    ts_ms: e.ts_ms,
                    kind: e.kind.to_owned(),
                    body: e.body,
                }
                .sign_v1(&signer)
            })
            .collect();
        for (i, stored) in old.iter().enumerate() {
            sqlx::query("INSERT INTO ledger_entries (patient, idx, entry) VALUES ($1, $2, $3)")
                .bind(P.to_vec())
                .bind(i as i64)
                .bind(stored.clone())
                .execute(db.pool())
                .await
                .unwrap();
        }
        let ledger = f.reopen().await;
        assert_eq!(
            ledger
                .append(&P, (3..5).map(entry).collect())
                .await
                .unwrap(),
            [3, 4]
        );
        let anchored = ledger.checkpoint(&P).await.unwrap();
        let v = ledger.verify(&P, &[anchored]).await.unwrap();
        assert_eq!(v.size, 5);
        let stored = ledger.entries(&P).await.unwrap();
        assert_eq!(stored[0], old[0], "old entries are kept as they were");
        assert_ne!(
            stored[3].first(),
            old[0].first(),
            "new entries are unsigned"
        );
        let bundle = serde_json::to_string(&ledger.export(&P).await.unwrap()).unwrap();
        let report = bundle::verify(&bundle, Some(&ledger.verifier_key())).unwrap();
        assert_eq!(report.entries[1].body["seq"], Field::Uint(1));

        // An old entry with a signature of another key is named.
        let forged = Entry {
            patient: P,
            index: 1,
            ts_ms: 1,
            kind: "DataRecorded".to_owned(),
            body: BTreeMap::new(),
        }
        .sign_v1(
            &NoteSigner::from_pkcs8("medledger-server", &NoteSigner::generate_pkcs8()).unwrap(),
        );
        set_entry(&db, 1, &forged).await;
        let err = f.reopen().await.verify(&P, &[]).await.unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Entry {
                    index: 1,
                    source: EntryError::BadSignature
                }
            ),
            "{err}"
        );
    }
}
