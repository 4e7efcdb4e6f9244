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
            Err(KeyError::Unwrap { key_id: 1, .. })
        ));
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
