//! The embedded chain's JSON-RPC endpoint: any request body, single or
//! batched, answered by a real node.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medledger_fuzz::rpc().handle_body(data);
});
