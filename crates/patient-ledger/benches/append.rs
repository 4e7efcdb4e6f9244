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

fn ledger(db: Db) -> Ledger {
    Ledger::new(
        db,
        NoteSigner::from_pkcs8("bench", &NoteSigner::generate_pkcs8()).unwrap(),
    )
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![(
        "sqlite",
        runtime.block_on(async {
            let db = Db::open_sqlite(&dir.path().join("bench.db")).await.unwrap();
            db.migrate().await.unwrap();
            ledger(db)
        }),
    )];
    // PostgreSQL when MEDLEDGER_TEST_POSTGRES names one.
    if let Some(db) = runtime.block_on(medledger_storage::test_utils::postgres()) {
        runtime.block_on(db.migrate()).unwrap();
        backends.push(("postgres", ledger(db)));
    }
    let mut group = c.benchmark_group("ledger_append");
    group.sample_size(20);
    for (name, ledger) in &backends {
        for n in [1u64, 100, 1000] {
            group.throughput(Throughput::Elements(n));
            group.bench_function(format!("{name}/batch_{n}"), |b| {
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
        // A server batch: 1,000 readings of 100 patients, one transaction.
        group.throughput(Throughput::Elements(1000));
        group.bench_function(format!("{name}/batch_1000_of_100_patients"), |b| {
            b.iter_batched(
                || (0..100u8).map(|p| ([p; 32], batch(10))).collect::<Vec<_>>(),
                |groups| runtime.block_on(ledger.append_many(groups)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
