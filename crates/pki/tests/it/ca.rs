//! Issuance: every role gets exactly its extensions (docs/protocol.md, section 2).

use medledger_pki::ca::layout;
use medledger_pki::{Ca, EthAccount, Ext, LeafRequest, Role, files};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Our extensions in a certificate, in order: (extension, critical, value).
fn our_extensions(der: &[u8]) -> Vec<(Ext, bool, Vec<u8>)> {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.extensions()
        .iter()
        .filter_map(|e| {
            Ext::from_oid_der(e.oid.as_bytes()).map(|x| (x, e.critical, e.value.to_vec()))
        })
        .collect()
}

fn request(role: Role) -> LeafRequest {
    let mut r = LeafRequest::new(role);
    match role {
        Role::Device => {
            r.epc = Some("3074257BF7194E4000001A85".parse().unwrap());
            r.group = Some("icu-hr-monitor".into());
            r.rule = Some("hr-basic".into());
        }
        Role::Collector => r.location = Some("cardiology/204/B".parse().unwrap()),
        _ => {}
    }
    r
}

#[test]
fn every_role_gets_exactly_its_extensions_in_der() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "medledger test").unwrap();
    for role in Role::ALL {
        let issued = ca.issue(&request(role)).unwrap();
        let exts = our_extensions(&issued.cert_der);
        let role_der = [&[0x0c, role.name().len() as u8][..], role.name().as_bytes()].concat();
        let mut expected = vec![(Ext::Role, false, role_der)];
        if role == Role::Device {
            assert!(issued.account.is_none());
            let epc = [
                &[0x04, 0x0c][..],
                &hex::decode("3074257BF7194E4000001A85").unwrap(),
            ]
            .concat();
            expected.push((Ext::Epc, false, epc));
            expected.push((
                Ext::Group,
                false,
                [&[0x0c, 14][..], b"icu-hr-monitor"].concat(),
            ));
            expected.push((Ext::Rule, false, [&[0x0c, 8][..], b"hr-basic"].concat()));
        } else {
            let address = issued.account.as_ref().unwrap().address();
            expected.push((
                Ext::Address,
                false,
                [&[0x04, 0x14][..], address.as_slice()].concat(),
            ));
            if role == Role::Collector {
                expected.push((
                    Ext::Location,
                    false,
                    [&[0x0c, 16][..], b"cardiology/204/B"].concat(),
                ));
            }
        }
        assert_eq!(exts, expected, "{role}");
        let id = issued.identity().unwrap();
        assert_eq!(id.role, role);
        assert_eq!(
            id.address(),
            issued.account.as_ref().map(EthAccount::address)
        );
    }
}

#[test]
fn requests_that_do_not_fit_the_role_say_which_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "medledger test").unwrap();
    let mut r = request(Role::Device);
    r.rule = None;
    assert!(ca.issue(&r).unwrap_err().to_string().contains("--rule"));
    let mut r = request(Role::Nurse);
    r.location = Some("a/b/c".parse().unwrap());
    assert!(ca.issue(&r).unwrap_err().to_string().contains("--location"));
    assert!(
        ca.issue(&LeafRequest::new(Role::Collector))
            .unwrap_err()
            .to_string()
            .contains("--location")
    );
    let mut r = request(Role::Doctor);
    r.subject_alt_names = vec!["example.org".into()];
    assert!(ca.issue(&r).unwrap_err().to_string().contains("--san"));
    assert!(
        Ca::init(dir.path(), "again")
            .unwrap_err()
            .to_string()
            .contains("already holds a CA")
    );
}

#[test]
fn keys_are_private_files_and_the_account_key_matches_the_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "medledger test").unwrap();
    for f in [layout::ROOT_KEY, layout::ISSUING_KEY] {
        let mode = std::fs::metadata(ca.dir().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let issued = ca.issue(&request(Role::Nurse)).unwrap();
    // A directory in the prefix that is not there yet is made, private.
    let prefix = dir.path().join("staff/ward-1/nurse1");
    let written = issued.write(&prefix).unwrap();
    assert_eq!(written.len(), 3);
    let made = std::fs::metadata(dir.path().join("staff/ward-1")).unwrap();
    assert_eq!(made.permissions().mode() & 0o777, 0o700);
    for suffix in [".key", ".eth.key"] {
        let path = files::with_suffix(&prefix, suffix);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600,
            "{suffix}"
        );
    }
    let account = EthAccount::from_hex(
        &std::fs::read_to_string(files::with_suffix(&prefix, ".eth.key")).unwrap(),
    )
    .unwrap();
    let creds = medledger_pki::Credentials::load(&prefix).unwrap();
    assert_eq!(creds.chain.len(), 2);
    assert_eq!(creds.identity().unwrap().address(), Some(account.address()));
    // A second write to the same prefix does not overwrite the key.
    assert!(issued.write(&prefix).is_err());
}

#[test]
fn revocation_lists_the_serial_in_a_crl_signed_by_the_issuing_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(dir.path(), "medledger test").unwrap();
    let issued = ca.issue(&request(Role::Device)).unwrap();
    let crls = ca.revoke(&issued.cert_der).unwrap();
    // The root's first, then the issuing CA's.
    assert_eq!(crls.len(), 2);
    let (_, parsed) = CertificateRevocationList::from_der(&crls[1]).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    let (_, issuing) = X509Certificate::from_der(ca.issuing_cert_der()).unwrap();
    assert!(
        parsed
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == cert.raw_serial())
    );
    assert_eq!(parsed.issuer(), issuing.subject());
    assert!(parsed.verify_signature(issuing.public_key()).is_ok());
    let first = parsed.crl_number().unwrap().clone();
    // Revoking twice is refused; a new CRL has a higher number.
    assert!(
        ca.revoke(&issued.cert_der)
            .unwrap_err()
            .to_string()
            .contains("already revoked")
    );
    let again = ca.write_crl().unwrap();
    let (_, again) = CertificateRevocationList::from_der(&again[1]).unwrap();
    assert!(*again.crl_number().unwrap() > first);
    // A certificate of another CA cannot be revoked here.
    let other_dir = tempfile::tempdir().unwrap();
    // (Same organization name, so the same issuer name: only the signature
    // tells them apart.)
    let other = Ca::init(other_dir.path(), "medledger test").unwrap();
    let foreign = other.issue(&request(Role::Device)).unwrap();
    assert!(
        ca.revoke(&foreign.cert_der)
            .unwrap_err()
            .to_string()
            .contains("not issued by this CA")
    );
}
