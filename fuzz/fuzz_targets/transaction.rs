//! Raw transactions (`eth_sendRawTransaction`): EIP-2718 decoding, sender
//! recovery and the node's checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medledger_fuzz::rpc().node().send_raw_transaction(data);
});
