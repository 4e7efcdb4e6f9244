//! Turning a verified peer certificate into an `Identity`: once per mTLS
//! handshake (and per reading batch on the server).
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use medledger_pki::{Ca, Identity, LeafRequest, Role};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "bench").unwrap();
    let mut device = LeafRequest::new(Role::Device);
    device.epc = Some(
        "urn:epc:tag:sgtin-96:3.0614141.812345.6789"
            .parse()
            .unwrap(),
    );
    device.group = Some("icu-hr-monitor".into());
    device.rule = Some("hr-basic".into());
    let device = ca.issue(&device).unwrap().cert_der;
    let mut collector = LeafRequest::new(Role::Collector);
    collector.location = Some("cardiology/204/B".parse().unwrap());
    let collector = ca.issue(&collector).unwrap().cert_der;
    c.bench_function("identity_device", |b| {
        b.iter(|| Identity::from_peer_certificate(black_box(&device)).unwrap())
    });
    c.bench_function("identity_collector", |b| {
        b.iter(|| Identity::from_peer_certificate(black_box(&collector)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
