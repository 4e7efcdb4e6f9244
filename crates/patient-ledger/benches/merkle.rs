//! Merkle proofs at scale: appending leaves, and generating and verifying
//! inclusion and consistency proofs in a tree of 10^6 leaves.
//!
//!     cargo bench -p medledger-patient-ledger --bench merkle

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use medledger_patient_ledger::{Tree, leaf_hash, verify_consistency, verify_inclusion};
use std::hint::black_box;

const SIZE: u64 = 1_000_000;

fn merkle(c: &mut Criterion) {
    let leaves: Vec<_> = (0..SIZE).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let tree = Tree::from_leaf_hashes(leaves.iter().copied());
    let root = tree.root(SIZE).unwrap();
    let index = 123_457;
    let proof = tree.inclusion(index, SIZE).unwrap();
    verify_inclusion(&leaves[index as usize], index, SIZE, &proof, &root).unwrap();
    let old = 777_777;
    let old_root = tree.root(old).unwrap();
    let consistency = tree.consistency(old, SIZE).unwrap();
    verify_consistency(old, SIZE, &old_root, &root, &consistency).unwrap();

    let mut group = c.benchmark_group("merkle_1e6");
    group.bench_function("root", |b| {
        b.iter(|| tree.root(black_box(SIZE - 3)).unwrap())
    });
    group.bench_function("inclusion_proof", |b| {
        b.iter(|| tree.inclusion(black_box(index), SIZE).unwrap())
    });
    group.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            verify_inclusion(
                &leaves[index as usize],
                black_box(index),
                SIZE,
                &proof,
                &root,
            )
            .unwrap()
        })
    });
    group.bench_function("consistency_proof", |b| {
        b.iter(|| tree.consistency(black_box(old), SIZE).unwrap())
    });
    group.bench_function("verify_consistency", |b| {
        b.iter(|| verify_consistency(black_box(old), SIZE, &old_root, &root, &consistency).unwrap())
    });
    group.finish();

    let mut group = c.benchmark_group("merkle_append");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10k_leaves", |b| {
        b.iter(|| {
            let mut t = Tree::new();
            for leaf in &leaves[..10_000] {
                t.push(*leaf);
            }
            t
        })
    });
    group.finish();
}

criterion_group!(benches, merkle);
criterion_main!(benches);
