//! A peer's certificate: X.509 and our extensions (role, EPC, group, rule,
//! address, location).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medledger_pki::Identity::from_peer_certificate(data);
});
