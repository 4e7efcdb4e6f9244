//! Ed25519 verification as RFC 8032 §5.1.7 states it: `S` below the group
//! order, `A` and `R` canonically encoded, and the cofactored equation
//! `[8][S]B = [8]R + [8][k]A`. One signature alone and many in a batch get
//! the same answer (ed25519-zebra implements ZIP 215, whose single and
//! batch equations agree; the canonical encodings are required here on
//! top of it). Every signature a standard signer makes verifies; a
//! verifier using the cofactorless shortcut (OpenSSL, ring) may refuse one
//! that a key's own holder crafted with a small-order component, which
//! this one accepts.

use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes, batch};

/// Whether a 32-byte point encoding is canonical: its `y` below
/// `p = 2^255 - 19` (the sign bit aside).
fn canonical(point: &[u8]) -> bool {
    let Some((&last, rest)) = point.split_last() else {
        return false;
    };
    let Some((&first, middle)) = rest.split_first() else {
        return false;
    };
    // y >= p only for 0x7fff...ffed..0x7fff...ffff.
    !(last & 0x7f == 0x7f && middle.iter().all(|&b| b == 0xff) && first >= 0xed)
}

/// The parts of a signature whose encodings are canonical.
fn parts(public_key: &[u8], sig: &[u8]) -> Option<([u8; 32], [u8; 64])> {
    let public_key: [u8; 32] = public_key.try_into().ok()?;
    let sig: [u8; 64] = sig.try_into().ok()?;
    (canonical(&public_key) && canonical(&sig[..32])).then_some((public_key, sig))
}

/// Verifies one signature.
pub(crate) fn verify(public_key: &[u8], message: &[u8], sig: &[u8]) -> bool {
    let Some((public_key, sig)) = parts(public_key, sig) else {
        return false;
    };
    VerificationKey::try_from(public_key)
        .and_then(|key| key.verify(&Signature::from(sig), message))
        .is_ok()
}

/// Whether every `(public key, message, signature)` verifies, checked in
/// one batch: several times cheaper per signature than one at a time, most
/// of all for many signatures of one key. `false` says only that at least
/// one does not.
pub(crate) fn verify_all<'a>(
    items: impl IntoIterator<Item = (&'a [u8], &'a [u8], &'a [u8])>,
) -> bool {
    let mut verifier = batch::Verifier::new();
    for (public_key, message, sig) in items {
        let Some((public_key, sig)) = parts(public_key, sig) else {
            return false;
        };
        verifier.queue((
            VerificationKeyBytes::from(public_key),
            Signature::from(sig),
            message,
        ));
    }
    verifier.verify(rand_core::OsRng).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn signer() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn a_batch_answers_as_the_signatures_one_by_one() {
        let (a, b) = (signer(), signer());
        let messages: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("reading {i}").into_bytes())
            .collect();
        let mut sigs: Vec<(Vec<u8>, Vec<u8>)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let k = if i % 3 == 0 { &b } else { &a };
                (
                    k.public_key().as_ref().to_vec(),
                    k.sign(m).as_ref().to_vec(),
                )
            })
            .collect();
        let all = |sigs: &[(Vec<u8>, Vec<u8>)]| {
            verify_all(
                sigs.iter()
                    .zip(&messages)
                    .map(|((k, s), m)| (k.as_slice(), m.as_slice(), s.as_slice())),
            )
        };
        assert!(all(&sigs));
        for ((k, s), m) in sigs.iter().zip(&messages) {
            assert!(verify(k, m, s));
            // ring (cofactorless) agrees on what a standard signer makes.
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, k)
                .verify(m, s)
                .unwrap();
        }
        // One signature of another message spoils the batch, and only it
        // fails alone.
        sigs[7].1 = a.sign(b"another reading").as_ref().to_vec();
        assert!(!all(&sigs));
        let alone: Vec<bool> = sigs
            .iter()
            .zip(&messages)
            .map(|((k, s), m)| verify(k, m, s))
            .collect();
        assert_eq!(alone.iter().filter(|ok| !**ok).count(), 1);
        assert!(!alone[7]);
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let a = signer();
        let m = b"reading";
        let key = a.public_key().as_ref().to_vec();
        let sig = a.sign(m).as_ref().to_vec();
        assert!(verify(&key, m, &sig));
        // y = p + 1 encodes the same point as y = 1 (the identity, as R).
        let mut r = [0xff_u8; 32];
        r[0] = 0xee;
        r[31] = 0x7f;
        assert!(!canonical(&r));
        let mut forged = sig.clone();
        forged[..32].copy_from_slice(&r);
        assert!(!verify(&key, m, &forged));
        assert!(!verify_all([(
            key.as_slice(),
            m.as_slice(),
            forged.as_slice()
        )]));
        // S at or above the group order is refused (ZIP 215 too).
        let mut high = sig;
        high[63] |= 0xf0;
        assert!(!verify(&key, m, &high));
        // The largest canonical y passes the encoding check.
        let mut edge = [0xff_u8; 32];
        edge[0] = 0xec;
        edge[31] = 0x7f;
        assert!(canonical(&edge));
    }
}
