//! COSE_Sign1 reading verification, ES256 and EdDSA: the collector and the
//! server each do it once per reading; 100 readings of one device alone
//! and in one batch (`verify_batch`).
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use medledger_protocol::catalogue::data_type_by_name;
use medledger_protocol::{
    Algorithm, DeviceId, Observation, Reading, SignedReading, SigningKey, VerifyingKey, open,
    verify_batch,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use std::hint::black_box;

fn reading() -> Reading {
    Reading {
        dev: DeviceId([
            0x30, 0x74, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0, 0, 0x1A, 0x85,
        ]),
        seq: 1,
        ts_ms: 1_763_683_200_000,
        obs: vec![
            Observation::scalar(data_type_by_name("heart-rate").unwrap(), 72.0),
            Observation::scalar(data_type_by_name("spo2").unwrap(), 97.5),
        ],
        model: Some("medledger-sim-1".into()),
    }
}

fn key(alg: Algorithm) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = match alg {
        Algorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap()
        }
        Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).unwrap(),
    };
    SigningKey::from_pkcs8(alg, pkcs8.as_ref(), b"certificate").unwrap()
}

fn bench(c: &mut Criterion) {
    let r = reading();
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let k = key(alg);
        let vk = k.verifying_key();
        let signed = k.sign(&r);
        c.bench_function(&format!("verify_{alg}"), |b| {
            b.iter(|| open(black_box(&signed), &vk).unwrap())
        });
        c.bench_function(&format!("sign_{alg}"), |b| b.iter(|| k.sign(black_box(&r))));
        // 100 readings of one device, as one request brings them: each
        // alone, and through `verify_batch` (one batch for Ed25519).
        let hundred: Vec<SignedReading> = (0..100)
            .map(|_| SignedReading::decode(&k.sign(&r)).unwrap())
            .collect();
        let pairs: Vec<(&SignedReading, &VerifyingKey)> =
            hundred.iter().map(|s| (s, &vk)).collect();
        c.bench_function(&format!("verify_100_alone_{alg}"), |b| {
            b.iter(|| {
                for s in &hundred {
                    s.verify(black_box(&vk)).unwrap();
                }
            })
        });
        c.bench_function(&format!("verify_100_batch_{alg}"), |b| {
            b.iter(|| verify_batch(black_box(&pairs)))
        });
        if alg == Algorithm::Es256 {
            // ring alone on a message of the same size: what our envelope
            // and payload handling add on top of the signature check.
            let tbs = vec![7u8; signed.len()];
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let kp =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            let sig = kp.sign(&rng, &tbs).unwrap();
            let public = ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                ring::signature::KeyPair::public_key(&kp).as_ref().to_vec(),
            );
            c.bench_function("ring_p256_verify_only", |b| {
                b.iter(|| public.verify(black_box(&tbs), sig.as_ref()).unwrap())
            });
            c.bench_function("decode_envelope", |b| {
                b.iter(|| SignedReading::decode(black_box(&signed)).unwrap())
            });
            c.bench_function("encode_payload", |b| b.iter(|| black_box(&r).to_cbor()));
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
