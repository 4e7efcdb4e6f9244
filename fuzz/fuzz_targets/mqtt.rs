//! Bytes from an MQTT broker as a collector's connection decodes them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = medledger_mqtt::decode_deliveries(data, 1 << 20);
});
