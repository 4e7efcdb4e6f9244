//! Envelope encryption and crypto-shredding, on both SQL backends.

use medledger_storage::test_utils::databases;
use medledger_storage::{Kek, KeyError, Vault};
use ring::digest::{SHA256, digest};
use sqlx::Row;

fn sha(b: &[u8]) -> [u8; 32] {
    digest(&SHA256, b).as_ref().try_into().unwrap()
}

const ALICE: [u8; 32] = [0xa1; 32];
const BOB: [u8; 32] = [0xb0; 32];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_decrypt_only_for_their_patient_and_content() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let vault = Vault::new(db.clone(), Kek::from_hex(&Kek::generate_hex()).unwrap());
        let (a1, a2) = (b"alice: heart rate 72".to_vec(), b"alice: spo2 97".to_vec());
        let s1 = vault.seal(&ALICE, &a1).await.unwrap();
        let s2 = vault.seal(&ALICE, &a2).await.unwrap();
        assert_ne!(s1, s2);
        // A fresh nonce each time: the same plaintext seals differently.
        assert_ne!(vault.seal(&ALICE, &a1).await.unwrap(), s1);
        assert_eq!(vault.open(&ALICE, &sha(&a1), &s1).await.unwrap(), a1);
        assert_eq!(vault.open(&ALICE, &sha(&a2), &s2).await.unwrap(), a2);
        // Moved to another patient: refused.
        let b1 = vault.seal(&BOB, b"bob").await.unwrap();
        assert!(matches!(
            vault.open(&BOB, &sha(&a1), &s1).await,
            Err(KeyError::Decrypt(_))
        ));
        // Swapped with another of the same patient's blobs: refused.
        assert!(matches!(
            vault.open(&ALICE, &sha(&a1), &s2).await,
            Err(KeyError::Decrypt(_))
        ));
        // A flipped byte anywhere after the header: refused.
        for i in 17..s1.len() {
            let mut bad = s1.clone();
            bad[i] ^= 1;
            assert!(
                vault.open(&ALICE, &sha(&a1), &bad).await.is_err(),
                "byte {i}"
            );
        }
        // Garbage is named.
        assert!(matches!(
            vault.open(&ALICE, &sha(&a1), &[1, 2, 3]).await,
            Err(KeyError::Malformed(_))
        ));
        let mut unknown_key = b1.clone();
        unknown_key[4] = 9;
        assert!(matches!(
            vault.open(&BOB, &sha(b"bob"), &unknown_key).await,
            Err(KeyError::NoKey { key_id: 9, .. })
        ));
        // Only wrapped keys are stored: the data key is not in the table.
        let rows = sqlx::query("SELECT wrapped FROM data_keys")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            let wrapped: Vec<u8> = row.get(0);
            assert_eq!(wrapped.len(), 32 + 16);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_kek_cannot_unwrap() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let sealed = Vault::new(db.clone(), Kek::from_hex(&Kek::generate_hex()).unwrap())
            .seal(&ALICE, b"x")
            .await
            .unwrap();
        let other = Vault::new(db.clone(), Kek::from_hex(&Kek::generate_hex()).unwrap());
        assert!(matches!(
            other.open(&ALICE, &sha(b"x"), &sealed).await,
            Err(KeyError::KekNotHeld { .. })
        ));
        // A row claiming to be under the other KEK still does not unwrap.
        sqlx::query("UPDATE data_keys SET kek = $1")
            .bind(other.kek_id().to_string())
            .execute(db.pool())
            .await
            .unwrap();
        assert!(matches!(
            other.open(&ALICE, &sha(b"x"), &sealed).await,
            Err(KeyError::Unwrap { key_id: 1, .. })
        ));
    }
}

fn kek() -> (String, Kek) {
    let hex = Kek::generate_hex();
    let kek = Kek::from_hex(&hex).unwrap();
    (hex, kek)
}

/// Which KEK each data key is recorded under, by patient (None: not
/// recorded).
async fn recorded(db: &medledger_storage::Db) -> Vec<(Vec<u8>, Option<String>)> {
    sqlx::query("SELECT patient, kek FROM data_keys ORDER BY patient")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

const CAROL: [u8; 32] = [0xca; 32];
const DAVE: [u8; 32] = [0xda; 32];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_kek_keeps_old_data_readable_and_rewrap_retires_the_old_one() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let (old_hex, old) = kek();
        let (new_hex, new) = kek();
        let (old_id, new_id) = (old.id(), new.id());
        assert_ne!(old_id, new_id);
        assert_eq!(old_id.to_string().len(), 16);
        let before = Vault::new(db.clone(), old);
        assert_eq!(before.check_keks().await.unwrap().left(), 0);
        let mut blobs = Vec::new();
        for (patient, text) in [(ALICE, "alice"), (BOB, "bob"), (CAROL, "carol")] {
            blobs.push((
                patient,
                text,
                before.seal(&patient, text.as_bytes()).await.unwrap(),
            ));
        }
        // Carol's key dates from before KEK ids were recorded.
        sqlx::query("UPDATE data_keys SET kek = NULL WHERE patient = $1")
            .bind(CAROL.to_vec())
            .execute(db.pool())
            .await
            .unwrap();
        drop(before);

        // The new KEK is current, the old one previous: everything opens,
        // new keys are wrapped by the new KEK.
        let previous = || vec![Kek::from_hex(&old_hex).unwrap()];
        let during = Vault::with_previous(db.clone(), Kek::from_hex(&new_hex).unwrap(), previous());
        let status = during.check_keks().await.unwrap();
        assert_eq!(status.under_previous, vec![(old_id, 2)]);
        assert_eq!(
            (status.unrecorded, status.under_current, status.left()),
            (1, 0, 3)
        );
        for (patient, text, sealed) in &blobs {
            let plain = during
                .open(patient, &sha(text.as_bytes()), sealed)
                .await
                .unwrap();
            assert_eq!(plain, text.as_bytes());
        }
        blobs.push((DAVE, "dave", during.seal(&DAVE, b"dave").await.unwrap()));
        let dave = recorded(&db)
            .await
            .into_iter()
            .find(|(p, _)| p == &DAVE.to_vec());
        assert_eq!(dave.unwrap().1, Some(new_id.to_string()));

        // One bounded batch, then an interruption: a fresh vault resumes.
        let step = during.rewrap(1).await.unwrap();
        assert_eq!((step.rewrapped, step.shredded, step.left), (1, 0, 2));
        drop(during);
        let resumed =
            Vault::with_previous(db.clone(), Kek::from_hex(&new_hex).unwrap(), previous());
        resumed.check_keks().await.unwrap();
        let mut seen = Vec::new();
        let done = resumed.rewrap_all(1, |p| seen.push(p.left)).await.unwrap();
        assert_eq!((done.rewrapped, done.shredded, done.left), (2, 0, 0));
        assert_eq!(seen, vec![1, 0], "progress after each batch");
        assert_eq!(done.retired, vec![old_id]);
        assert!(
            resumed.previous_keks().is_empty(),
            "the retired KEK is dropped"
        );
        for (_, kek) in recorded(&db).await {
            assert_eq!(kek, Some(new_id.to_string()));
        }
        // Idempotent: nothing left to do.
        let again = resumed.rewrap_all(1, |_| {}).await.unwrap();
        assert_eq!((again.rewrapped, again.left), (0, 0));

        // Without the old KEK, everything still opens.
        let after = Vault::new(db.clone(), Kek::from_hex(&new_hex).unwrap());
        assert_eq!(after.check_keks().await.unwrap().under_current, 4);
        for (patient, text, sealed) in &blobs {
            let plain = after
                .open(patient, &sha(text.as_bytes()), sealed)
                .await
                .unwrap();
            assert_eq!(plain, text.as_bytes());
        }
        // A retired KEK configured as previous is not used again, and can
        // never become the current one again.
        let stale = Vault::with_previous(db.clone(), Kek::from_hex(&new_hex).unwrap(), previous());
        stale.check_keks().await.unwrap();
        assert!(stale.previous_keks().is_empty());
        let back = Vault::with_previous(
            db.clone(),
            Kek::from_hex(&old_hex).unwrap(),
            vec![Kek::from_hex(&new_hex).unwrap()],
        );
        let err = back.check_keks().await.unwrap_err();
        assert!(
            matches!(err, KeyError::KekRetired(id) if id == old_id),
            "{err}"
        );
        assert!(err.to_string().contains(&old_id.to_string()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_under_a_kek_not_held_is_refused_naming_the_kek() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let (_, old) = kek();
        let old_id = old.id();
        let sealed = Vault::new(db.clone(), old)
            .seal(&ALICE, b"x")
            .await
            .unwrap();
        let (_, new) = kek();
        let vault = Vault::new(db.clone(), new);
        let err = vault.open(&ALICE, &sha(b"x"), &sealed).await.unwrap_err();
        let said = err.to_string();
        assert!(
            matches!(err, KeyError::KekNotHeld { kek, .. } if kek == old_id),
            "{said}"
        );
        assert!(
            said.contains(&format!(
                "wrapped by retired key-encryption key {old_id}; add it to previous_kek_files"
            )),
            "{said}"
        );
        assert!(said.contains("data key 1 of patient a1a1"), "{said}");
        let said = vault.check_keks().await.unwrap_err().to_string();
        assert!(
            said.contains(&format!(
                "1 data key(s) are wrapped by retired key-encryption key {old_id}"
            )),
            "{said}"
        );
        assert!(vault.rewrap(10).await.is_err(), "nothing re-wrapped blind");

        // Unrecorded rows that no KEK held opens: refused at the check.
        sqlx::query("UPDATE data_keys SET kek = NULL")
            .execute(db.pool())
            .await
            .unwrap();
        assert!(matches!(
            vault.check_keks().await,
            Err(KeyError::Unwrap { key_id: 1, .. })
        ));
        assert!(matches!(
            vault.open(&ALICE, &sha(b"x"), &sealed).await,
            Err(KeyError::Unwrap { key_id: 1, .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_never_brings_back_an_erased_patients_key() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let (old_hex, old) = kek();
        let before = Vault::new(db.clone(), old);
        let alice = before.seal(&ALICE, b"alice").await.unwrap();
        let bob = before.seal(&BOB, b"bob").await.unwrap();
        let row = sqlx::query("SELECT nonce, wrapped, kek FROM data_keys WHERE patient = $1")
            .bind(ALICE.to_vec())
            .fetch_one(db.pool())
            .await
            .unwrap();
        let (nonce, wrapped, kek_id): (Vec<u8>, Vec<u8>, String) =
            (row.get(0), row.get(1), row.get(2));
        before.erase(&ALICE).await.unwrap();
        // An old copy of Alice's wrapped key turns up again.
        sqlx::query(
            "INSERT INTO data_keys (patient, key_id, nonce, wrapped, created_ms, kek) VALUES ($1, 1, $2, $3, 0, $4)",
        )
        .bind(ALICE.to_vec())
        .bind(nonce)
        .bind(wrapped)
        .bind(kek_id)
        .execute(db.pool())
        .await
        .unwrap();

        let (new_hex, new) = kek();
        let vault = Vault::with_previous(db.clone(), new, vec![Kek::from_hex(&old_hex).unwrap()]);
        vault.check_keks().await.unwrap();
        let done = vault.rewrap_all(10, |_| {}).await.unwrap();
        assert_eq!((done.rewrapped, done.shredded, done.left), (1, 1, 0));
        let left = recorded(&db).await;
        assert_eq!(left.len(), 1, "only Bob's key: {left:?}");
        let after = Vault::new(db.clone(), Kek::from_hex(&new_hex).unwrap());
        assert!(matches!(
            after.open(&ALICE, &sha(b"alice"), &alice).await,
            Err(KeyError::Erased(_))
        ));
        assert!(matches!(
            after.seal(&ALICE, b"more").await,
            Err(KeyError::Erased(_))
        ));
        assert_eq!(after.open(&BOB, &sha(b"bob"), &bob).await.unwrap(), b"bob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_while_seals_and_opens_run_loses_nothing() {
    const N: u8 = 120;
    let patient = |i: u8, new: bool| {
        let mut p = [i; 32];
        p[0] = u8::from(new);
        p
    };
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let (old_hex, old) = kek();
        let before = Vault::new(db.clone(), old);
        let mut blobs = Vec::new();
        for i in 0..N {
            let p = patient(i, false);
            blobs.push((p, before.seal(&p, &[i]).await.unwrap()));
        }
        drop(before);
        let (new_hex, new) = kek();
        let vault = std::sync::Arc::new(Vault::with_previous(
            db.clone(),
            new,
            vec![Kek::from_hex(&old_hex).unwrap()],
        ));
        vault.check_keks().await.unwrap();
        let writer = {
            let vault = vault.clone();
            let old_blobs = blobs.clone();
            tokio::spawn(async move {
                let mut sealed = Vec::new();
                for i in 0..N {
                    let p = patient(i, true);
                    sealed.push((p, vault.seal(&p, &[i]).await.unwrap()));
                    // Opens of old data go on too (fresh vaults: no cache).
                    let (op, ob) = &old_blobs[usize::from(i)];
                    assert_eq!(vault.open(op, &sha(&[i]), ob).await.unwrap(), [i]);
                }
                sealed
            })
        };
        let done = vault.rewrap_all(7, |_| {}).await.unwrap();
        blobs.extend(writer.await.unwrap());
        assert_eq!((done.rewrapped, done.left), (u64::from(N), 0));

        let after = Vault::new(db.clone(), Kek::from_hex(&new_hex).unwrap());
        let status = after.check_keks().await.unwrap();
        assert_eq!(status.under_current, 2 * u64::from(N));
        for (p, sealed) in &blobs {
            let i = p[1];
            assert_eq!(after.open(p, &sha(&[i]), sealed).await.unwrap(), [i]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_keys_for_good() {
    for (db, _dir) in databases().await {
        db.migrate().await.unwrap();
        let kek = Kek::generate_hex();
        let vault = Vault::new(db.clone(), Kek::from_hex(&kek).unwrap());
        let sealed = vault.seal(&ALICE, b"alice's ecg").await.unwrap();
        let bob = vault.seal(&BOB, b"bob's ecg").await.unwrap();
        // A backup of the key table taken before the erasure.
        type KeyRow = (Vec<u8>, i64, Vec<u8>, Vec<u8>, i64);
        let backup: Vec<KeyRow> =
            sqlx::query("SELECT patient, key_id, nonce, wrapped, created_ms FROM data_keys")
                .fetch_all(db.pool())
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();

        vault.erase(&ALICE).await.unwrap();
        vault.erase(&ALICE).await.unwrap();
        assert!(vault.is_erased(&ALICE).await.unwrap());
        let left: i64 = sqlx::query("SELECT COUNT(*) FROM data_keys WHERE patient = $1")
            .bind(ALICE.to_vec())
            .fetch_one(db.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "every wrapped copy is gone");
        assert!(matches!(
            vault.open(&ALICE, &sha(b"alice's ecg"), &sealed).await,
            Err(KeyError::Erased(_))
        ));
        assert!(matches!(
            vault.seal(&ALICE, b"more").await,
            Err(KeyError::Erased(_))
        ));
        // Other patients are untouched.
        assert_eq!(
            vault.open(&BOB, &sha(b"bob's ecg"), &bob).await.unwrap(),
            b"bob's ecg"
        );

        // Restoring the old key table does not bring Alice's key back, in
        // this process or a fresh one.
        for (patient, key_id, nonce, wrapped, created) in backup {
            sqlx::query(
                "INSERT INTO data_keys (patient, key_id, nonce, wrapped, created_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (patient, key_id) DO NOTHING",
            )
            .bind(patient)
            .bind(key_id)
            .bind(nonce)
            .bind(wrapped)
            .bind(created)
            .execute(db.pool())
            .await
            .unwrap();
        }
        assert!(matches!(
            vault.open(&ALICE, &sha(b"alice's ecg"), &sealed).await,
            Err(KeyError::Erased(_))
        ));
        let fresh = Vault::new(db.clone(), Kek::from_hex(&kek).unwrap());
        assert!(matches!(
            fresh.open(&ALICE, &sha(b"alice's ecg"), &sealed).await,
            Err(KeyError::Erased(_))
        ));
    }
}

#[test]
fn kek_sources_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    std::fs::write(&path, format!("{}\n", Kek::generate_hex())).unwrap();
    Kek::from_file(&path).unwrap();
    std::fs::write(&path, "abcd").unwrap();
    let err = Kek::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("kek") && err.contains("64 hex digits"),
        "{err}"
    );
    assert!(Kek::from_hex(&"zz".repeat(32)).is_err());
    let err = Kek::from_env("MEDLEDGER_TEST_NO_SUCH_VAR")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MEDLEDGER_TEST_NO_SUCH_VAR is not set"),
        "{err}"
    );
    assert!(Kek::from_bytes(&[0; 16]).is_err());
}
