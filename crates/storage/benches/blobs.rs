//! Blob store throughput: durable puts and verified gets of a sealed
//! reading (300 bytes) and of an ECG strip (64 KiB), one at a time, 64
//! concurrently and 64 as one batch (`put_many`), on a local directory; and sealing with a patient's data key.
//!
//!     cargo bench -p medledger-storage --bench blobs

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use medledger_storage::{BlobStore, Db, Kek, LocalDir, Vault};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinct blobs of `len` bytes (a counter in front keeps CIDs apart).
fn blobs(n: usize, len: usize) -> Vec<Vec<u8>> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (0..n)
        .map(|_| {
            let mut b = vec![0x5a; len];
            b[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            b
        })
        .collect()
}

const PUT_MANY: u64 = 1000;

fn blob_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(LocalDir::open(dir.path())).unwrap();
    let mut group = c.benchmark_group("blobs");
    group.sample_size(20);
    for (name, len) in [("300B", 300), ("64KiB", 64 << 10)] {
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("put_{name}"), |b| {
            b.iter_batched(
                || blobs(1, len).pop().unwrap(),
                |blob| runtime.block_on(store.put(&blob)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(64));
        group.bench_function(format!("put_{name}_64_concurrent"), |b| {
            b.iter_batched(
                || blobs(64, len),
                |batch| {
                    runtime.block_on(async {
                        let mut puts = tokio::task::JoinSet::new();
                        for blob in batch {
                            let store = store.clone();
                            puts.spawn(async move { store.put(&blob).await });
                        }
                        while let Some(put) = puts.join_next().await {
                            put.unwrap().unwrap();
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
        group.throughput(Throughput::Elements(PUT_MANY));
        group.bench_function(format!("put_many_{name}_{PUT_MANY}"), |b| {
            b.iter_batched(
                || blobs(PUT_MANY as usize, len),
                |batch| runtime.block_on(store.put_many(&batch)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let stored: Vec<_> = blobs(64, len)
            .iter()
            .map(|blob| runtime.block_on(store.put(blob)).unwrap())
            .collect();
        group.throughput(Throughput::Elements(64));
        group.bench_function(format!("get_{name}_64"), |b| {
            b.iter(|| {
                for cid in &stored {
                    runtime.block_on(store.get(cid)).unwrap();
                }
            })
        });
    }
    let vault = runtime.block_on(async {
        let db = Db::open_sqlite(&dir.path().join("keys.db")).await.unwrap();
        db.migrate().await.unwrap();
        Vault::new(db, Kek::from_hex(&Kek::generate_hex()).unwrap())
    });
    let reading = blobs(1, 300).pop().unwrap();
    let sealed = runtime.block_on(vault.seal(&[1; 32], &reading)).unwrap();
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &reading)
        .as_ref()
        .try_into()
        .unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal_300B", |b| {
        b.iter(|| runtime.block_on(vault.seal(&[1; 32], &reading)).unwrap())
    });
    group.bench_function("open_300B", |b| {
        b.iter(|| {
            runtime
                .block_on(vault.open(&[1; 32], &digest, &sealed))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, blob_store);
criterion_main!(benches);
