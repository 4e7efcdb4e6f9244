//! Durable ledger appends: batches of entries signed, inserted and
//! committed to SQLite (WAL, synchronous = FULL) before `append` returns.
//!
//!     cargo bench -p medledger-patient-ledger --bench append

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use medledger_patient_ledger::{Field, Ledger, NewEntry, NoteSigner};
use medledger_storage::Db;
use std::collections::BTreeMap;

fn batch(n: u64) -> Vec<NewEntry> {
    (0..n)
        .map(|i| NewEntry {
            kind: "DataRecorded",
            ts_ms: 1_763_769_600_000 + i,
            body: BTreeMap::from([
                (
                    "cid".to_owned(),
                    Field::Text(
                        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into(),
                    ),
                ),
                ("seq".to_owned(), Field::Uint(i)),
                ("sha256".to_owned(), Field::Bytes(vec![7; 32])),
            ]),
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = runtime.block_on(async {
        let db = Db::open_sqlite(&dir.path().join("bench.db")).await.unwrap();
        db.migrate().await.unwrap();
        Ledger::new(
            db,
            NoteSigner::from_pkcs8("bench", &NoteSigner::generate_pkcs8()).unwrap(),
        )
    });
    let mut group = c.benchmark_group("ledger_append");
    group.sample_size(20);
    for n in [1u64, 100, 1000] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter_batched(
                || batch(n),
                |entries| {
                    runtime
                        .block_on(ledger.append(&[n as u8; 32], entries))
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
