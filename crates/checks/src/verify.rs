//! The first stage: who signed each reading, and what it says.

use crate::{Item, Passing, Refusal, Verdict};
use medledger_pki::Identity;
use medledger_protocol::{ProblemType, Reading, SignedReading, verify_batch};
use std::sync::Arc;

/// Batches at least this large are verified on every core.
const PARALLEL: usize = 32;

/// How much of a reading [`verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Everything: the reading crossed a trust boundary (from a device, or
    /// from a collector on another machine, which could forge or alter).
    Verify,
    /// This process verified the signature before it made the reading
    /// durable (a collector in the server's own process): it is parsed
    /// again, not verified twice.
    VerifiedHere,
}

/// Verifies each [`Verdict::Unchecked`] item: its certificate's identity
/// (`identity`, which the side resolves: from the TLS handshake, or from a
/// forwarded batch's certificates), its COSE envelope and signature, and
/// that it names the device of that certificate. On every core for large
/// batches.
pub fn verify<T: Send + Sync>(
    items: &mut [Item<T>],
    identity: impl Fn(&T) -> Result<Arc<Identity>, Refusal> + Sync,
    trust: Trust,
) {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    if items.len() < PARALLEL || threads < 2 {
        return verify_on_this_thread(items, &identity, trust);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in items.chunks_mut(chunk) {
            let identity = &identity;
            scope.spawn(move || verify_on_this_thread(part, identity, trust));
        }
    });
}

fn verify_on_this_thread<T>(
    items: &mut [Item<T>],
    identity: &(impl Fn(&T) -> Result<Arc<Identity>, Refusal> + Sync),
    trust: Trust,
) {
    // Envelopes and certificates first, then the signatures together
    // (Ed25519 ones in one batch).
    let mut signed = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        if !matches!(item.verdict, Verdict::Unchecked) {
            continue;
        }
        match identity(&item.data).and_then(|id| {
            let envelope = SignedReading::decode(&item.cose).map_err(refused)?;
            Ok((envelope, id))
        }) {
            Ok((envelope, id)) => signed.push((i, envelope, id)),
            Err(refusal) => item.verdict = Verdict::Refused(refusal),
        }
    }
    let readings = match trust {
        Trust::Verify => verify_batch(
            &signed
                .iter()
                .map(|(_, envelope, id)| (envelope, &id.key))
                .collect::<Vec<_>>(),
        ),
        Trust::VerifiedHere => signed
            .iter()
            .map(|(_, envelope, _)| envelope.reading_unverified())
            .collect(),
    };
    for ((i, _, identity), reading) in signed.into_iter().zip(readings) {
        items[i].verdict = match reading
            .map_err(refused)
            .and_then(|r| of_its_device(r, &identity))
        {
            Ok(reading) => Verdict::Passing(Box::new(Passing { reading, identity })),
            Err(refusal) => Verdict::Refused(refusal),
        };
    }
}

fn refused(e: medledger_protocol::ReadingError) -> Refusal {
    Refusal::new(e.problem_type(), e.to_string())
}

/// The reading, if it names the EPC of the certificate that signed it.
fn of_its_device(reading: Reading, identity: &Identity) -> Result<Reading, Refusal> {
    if identity.epc().map(|e| e.as_bytes()) != Some(&reading.dev.0) {
        return Err(Refusal::new(
            ProblemType::UnknownDevice,
            "the reading names another device than its certificate",
        ));
    }
    Ok(reading)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Window, window};
    use medledger_pki::{Ca, Epc, KeyAlg, LeafRequest, Role};
    use medledger_protocol::catalogue::data_type_by_name;
    use medledger_protocol::{DeviceId, Observation, SigningKey, now_ms};

    struct Device {
        identity: Arc<Identity>,
        key: SigningKey,
    }

    fn device(ca: &Ca, serial: u64, alg: KeyAlg) -> Device {
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(Epc::new(3, "0614141", "812345", serial).unwrap());
        request.group = Some("ward".into());
        request.rule = Some("default".into());
        request.key_alg = alg;
        let issued = ca.issue(&request).unwrap();
        Device {
            identity: Arc::new(issued.identity().unwrap()),
            key: SigningKey::from_pkcs8(
                alg.reading_algorithm(),
                &issued.key_pkcs8,
                &issued.cert_der,
            )
            .unwrap(),
        }
    }

    fn reading(dev: &Device, seq: u64, ts_ms: u64) -> Reading {
        Reading {
            dev: DeviceId(*dev.identity.epc().unwrap().as_bytes()),
            seq,
            ts_ms,
            obs: vec![Observation::scalar(
                data_type_by_name("heart-rate").unwrap(),
                72.0,
            )],
            model: None,
        }
    }

    fn problem(item: &Item<()>) -> Option<ProblemType> {
        match &item.verdict {
            Verdict::Refused(r) => Some(r.kind),
            _ => None,
        }
    }

    #[test]
    fn each_reading_is_refused_for_its_own_fault_and_order_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "Test Hospital").unwrap();
        for alg in [KeyAlg::P256, KeyAlg::Ed25519] {
            let a = device(&ca, 1, alg);
            let b = device(&ca, 2, alg);
            let now = now_ms();
            // 40 readings (verified on every core), four of them bad.
            let mut cose: Vec<Vec<u8>> = (1..=40)
                .map(|seq| a.key.sign(&reading(&a, seq, now)))
                .collect();
            cose[3] = b.key.sign(&reading(&b, 4, now)); // another device's key and EPC
            cose[17] = a.key.sign(&reading(&b, 18, now)); // names another device
            cose[25] = vec![0xd2, 0x84]; // not COSE
            cose[31] = a.key.sign(&reading(&a, 32, now - 3_600_000)); // an hour old
            let last = cose[9].len() - 2;
            cose[9][last] ^= 1; // the signature no longer verifies (the batch fails)
            let mut items: Vec<Item<()>> = cose.into_iter().map(|c| Item::new(c, ())).collect();
            verify(&mut items, |_| Ok(a.identity.clone()), Trust::Verify);
            window(
                &mut items,
                Window {
                    past_ms: 300_000,
                    future_ms: 30_000,
                },
                now,
            );
            for (i, item) in items.iter().enumerate() {
                let expected = match i {
                    3 | 9 => Some(ProblemType::BadSignature),
                    17 => Some(ProblemType::UnknownDevice),
                    25 => Some(ProblemType::Malformed),
                    31 => Some(ProblemType::StaleTimestamp),
                    _ => None,
                };
                assert_eq!(problem(item), expected, "{alg:?} reading {i}");
                if expected.is_none() {
                    assert_eq!(item.passing().unwrap().reading.seq, i as u64 + 1);
                }
            }
        }
    }

    #[test]
    fn readings_verified_here_are_parsed_not_verified_again() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "Test Hospital").unwrap();
        let a = device(&ca, 1, KeyAlg::P256);
        let mut cose = a.key.sign(&reading(&a, 1, now_ms()));
        let last = cose.len() - 1;
        cose[last] ^= 1; // the signature no longer verifies
        let mut items = [Item::new(cose.clone(), ()), Item::new(cose, ())];
        verify(&mut items[..1], |_| Ok(a.identity.clone()), Trust::Verify);
        verify(
            &mut items[1..],
            |_| Ok(a.identity.clone()),
            Trust::VerifiedHere,
        );
        assert_eq!(problem(&items[0]), Some(ProblemType::BadSignature));
        assert!(items[1].passing().is_some());
    }
}
