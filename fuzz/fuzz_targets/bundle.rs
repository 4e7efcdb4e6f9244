//! Exported proof bundles: a patient ledger, and one reading's proof, as
//! `medledger verify` checks them offline.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medledger_patient_ledger::{bundle, reading_proof};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bundle::verify(text, None);
        let _ = reading_proof::verify(text, None);
    }
});
