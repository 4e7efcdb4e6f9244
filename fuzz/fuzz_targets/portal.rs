//! The texts the portal parses from a browser: a signed sign-in message
//! (its claimed portal, nonce and time, checked by re-issuing it) and a
//! signed request's nonce.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medledger_protocol::portal::{challenge_message, challenge_parts, valid_nonce};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"fuzz");
    if let Some((portal, random, issued_ms)) = challenge_parts(text) {
        // Only the server's own message passes: anything else differs.
        let _ = challenge_message(portal, random, issued_ms, &key) == text;
    }
    let _ = valid_nonce(text);
});
