//! A CRL handed to the verifiers (files re-read while the roles run).
#![no_main]
use libfuzzer_sys::fuzz_target;
use medledger_pki::{ClientAuth, Role};
use std::sync::{Arc, OnceLock};

fn verifier() -> &'static Arc<ClientAuth> {
    static AUTH: OnceLock<(tempfile::TempDir, Arc<ClientAuth>)> = OnceLock::new();
    &AUTH
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let ca = medledger_pki::Ca::init(dir.path(), "fuzz").expect("a CA");
            let crls = ca.write_crl().expect("its CRLs");
            let root = ca.root_cert_der().expect("its root");
            let auth = ClientAuth::new(&root, crls, &[Role::Device]).expect("a verifier");
            (dir, auth)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let _ = verifier().update_crls(vec![data.to_vec()]);
});
