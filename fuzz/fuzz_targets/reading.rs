//! A device's reading as the collector receives it: CBOR, the COSE_Sign1
//! envelope, and the payload.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medledger_protocol::{Reading, SignedReading, cbor};

fuzz_target!(|data: &[u8]| {
    let _ = cbor::decode(data);
    let _ = Reading::from_cbor(data);
    if let Ok(signed) = SignedReading::decode(data) {
        let _ = signed.reading_unverified();
    }
});
