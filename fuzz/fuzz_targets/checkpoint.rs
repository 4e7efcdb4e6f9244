//! A signed checkpoint note, as `medledger verify` and the anchors read it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medledger_patient_ledger::{NoteSigner, NoteVerifier};
use std::sync::OnceLock;

fn verifier() -> &'static NoteVerifier {
    static V: OnceLock<NoteVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let signer =
            NoteSigner::from_pkcs8("fuzz", &NoteSigner::generate_pkcs8()).expect("a fresh key");
        NoteVerifier::new(&signer.verifier_key()).expect("its verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier().verify(text);
        let _ = NoteVerifier::new(text);
    }
});
