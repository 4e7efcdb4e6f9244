//! A collector's batch as the server receives it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medledger_protocol::ForwardBatch::from_cbor(data);
});
