//! `medledger ca init|issue|show|revoke|crl|rotate|retire`.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

pub(crate) fn medledger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medledger"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let out = medledger(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its stderr.
pub(crate) fn fails(args: &[&str]) -> String {
    let out = medledger(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_operator_issues_shows_and_revokes_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let printed = ok(&["ca", "init", "--dir", s(&ca)]);
    assert!(!printed.contains("PRIVATE KEY"));
    assert_eq!(mode(&ca.join("root.key")), 0o600);
    assert_eq!(mode(&ca.join("issuing.key")), 0o600);

    // A device, by tag URI.
    let dev = tmp.path().join("dev1");
    let printed = ok(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "device",
        "--out",
        s(&dev),
        "--epc",
        "urn:epc:tag:sgtin-96:3.0614141.812345.6789",
        "--group",
        "icu-hr-monitor",
        "--rule",
        "hr-basic",
    ]);
    let key = std::fs::read_to_string(tmp.path().join("dev1.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!printed.contains("PRIVATE KEY") && !printed.contains(key.lines().nth(1).unwrap()));
    assert_eq!(mode(&tmp.path().join("dev1.key")), 0o600);
    assert!(
        !tmp.path().join("dev1.eth.key").exists(),
        "devices have no chain account"
    );

    let shown: Value = serde_json::from_str(&ok(&[
        "ca",
        "show",
        s(&tmp.path().join("dev1.crt")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(shown["role"], "device");
    assert_eq!(
        shown["epc"]["uri"],
        "urn:epc:tag:sgtin-96:3.0614141.812345.6789"
    );
    assert_eq!(shown["epc"]["hex"], "3074257BF7194E4000001A85");
    assert_eq!(shown["group"], "icu-hr-monitor");
    assert_eq!(shown["rule"], "hr-basic");
    assert_eq!(shown["key"], "ES256");
    for field in [
        "subject",
        "serial",
        "not_before",
        "not_after",
        "sha256_fingerprint",
    ] {
        assert!(
            shown[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}"
        );
    }
    let text = ok(&["ca", "show", s(&tmp.path().join("dev1.crt"))]);
    assert!(
        text.contains("3074257BF7194E4000001A85") && text.contains("icu-hr-monitor"),
        "{text}"
    );

    // A collector, with a location and an account whose key sits beside it.
    let col = tmp.path().join("col1");
    ok(&[
        "ca",
        "issue",
        "--ca",
        s(&ca),
        "--role",
        "collector",
        "--out",
        s(&col),
        "--location",
        "cardiology/204/B",
        "--key-type",
        "ed25519",
    ]);
    let eth = tmp.path().join("col1.eth.key");
    assert_eq!(mode(&eth), 0o600);
    let eth_key = std::fs::read_to_string(&eth).unwrap();
    let account = medledger_pki::EthAccount::from_hex(&eth_key).unwrap();
    let shown: Value = serde_json::from_str(&ok(&[
        "ca",
        "show",
        s(&tmp.path().join("col1.crt")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(shown["role"], "collector");
    assert_eq!(shown["location"], "cardiology/204/B");
    assert_eq!(shown["address"], account.address().to_string());
    assert_eq!(shown["key"], "EdDSA");
    assert!(shown.get("epc").is_none());
    // OpenSSL reads the Ed25519 key file (PKCS#8 v1, RFC 8410) and finds
    // the certificate's public key in it.
    let openssl = |args: &[&str]| Command::new("openssl").args(args).output();
    match openssl(&["version"]) {
        Ok(_) => {
            let from_key =
                openssl(&["pkey", "-in", s(&tmp.path().join("col1.key")), "-pubout"]).unwrap();
            assert!(
                from_key.status.success(),
                "openssl cannot read the key: {}",
                String::from_utf8_lossy(&from_key.stderr)
            );
            let from_cert = openssl(&[
                "x509",
                "-in",
                s(&tmp.path().join("col1.crt")),
                "-pubkey",
                "-noout",
            ])
            .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&from_key.stdout),
                String::from_utf8_lossy(&from_cert.stdout)
            );
        }
        Err(e) if std::env::var_os("CI").is_some() => panic!("openssl is needed in CI: {e}"),
        Err(e) => eprintln!("\n!!! SKIPPED the OpenSSL key check: {e} !!!\n"),
    }

    // Every other role gets an account too.
    for role in ["server", "admin", "doctor", "nurse", "patient"] {
        let out = tmp.path().join(role);
        let issued: Value = serde_json::from_str(&ok(&[
            "ca",
            "issue",
            "--ca",
            s(&ca),
            "--role",
            role,
            "--out",
            s(&out),
            "--json",
        ]))
        .unwrap();
        assert_eq!(issued["role"], role);
        assert!(issued["address"].as_str().unwrap().starts_with("0x"));
        assert!(
            !issued.to_string().contains(
                std::fs::read_to_string(tmp.path().join(format!("{role}.eth.key")))
                    .unwrap()
                    .trim()
            )
        );
    }

    // Revocation and CRLs.
    ok(&[
        "ca",
        "revoke",
        "--ca",
        s(&ca),
        s(&tmp.path().join("dev1.crt")),
    ]);
    assert!(
        fails(&[
            "ca",
            "revoke",
            "--ca",
            s(&ca),
            s(&tmp.path().join("dev1.crt"))
        ])
        .contains("already revoked")
    );
    let crl = tmp.path().join("crl.pem");
    assert!(ok(&["ca", "crl", "--ca", s(&ca), "--out", s(&crl)]).contains("1 revoked"));
    assert!(
        std::fs::read_to_string(&crl)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----")
    );
}

#[test]
fn the_issuing_ca_rotates_then_retires_and_its_key_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let issue = |out: &str| {
        ok(&[
            "ca",
            "issue",
            "--ca",
            s(&ca),
            "--role",
            "nurse",
            "--out",
            s(&tmp.path().join(out)),
        ])
    };
    issue("before");
    let rotated = ok(&["ca", "rotate", "--ca", s(&ca)]);
    let old = rotated
        .lines()
        .find_map(|l| l.strip_prefix("replaced "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_owned();
    assert!(ca.join(format!("previous/{old}.key")).exists(), "{rotated}");
    issue("after");
    // The new certificate chains to a new issuing CA.
    let chain =
        |name: &str| std::fs::read_to_string(tmp.path().join(format!("{name}.crt"))).unwrap();
    assert_ne!(
        chain("before").split("-----END CERTIFICATE-----").nth(1),
        chain("after").split("-----END CERTIFICATE-----").nth(1)
    );
    // One CRL for the root and one per trusted issuing CA.
    let crls = || {
        std::fs::read_to_string(ca.join("crl.pem"))
            .unwrap()
            .matches("BEGIN X509 CRL")
            .count()
    };
    assert_eq!(crls(), 3);
    assert!(fails(&["ca", "retire", "--ca", s(&ca), "0123"]).contains("no previous issuing CA"));
    ok(&["ca", "retire", "--ca", s(&ca), &old]);
    assert!(!ca.join(format!("previous/{old}.key")).exists());
    assert!(ca.join(format!("retired/{old}.crt")).exists());
    assert_eq!(crls(), 2);
    // What the retired CA issued can no longer be revoked here: it is
    // refused already.
    assert!(
        fails(&[
            "ca",
            "revoke",
            "--ca",
            s(&ca),
            s(&tmp.path().join("before.crt"))
        ])
        .contains("retired")
    );
    ok(&[
        "ca",
        "revoke",
        "--ca",
        s(&ca),
        s(&tmp.path().join("after.crt")),
    ]);
}

#[test]
fn mistakes_get_errors_that_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("x");
    assert!(
        fails(&[
            "ca",
            "issue",
            "--ca",
            s(&ca),
            "--role",
            "nurse",
            "--out",
            s(&out)
        ])
        .contains("ca init")
    );
    ok(&["ca", "init", "--dir", s(&ca)]);
    assert!(fails(&["ca", "init", "--dir", s(&ca)]).contains("already holds a CA"));
    let issue = |extra: &[&str]| {
        let mut args = vec!["ca", "issue", "--ca", s(&ca), "--out", s(&out)];
        args.extend_from_slice(extra);
        fails(&args)
    };
    assert!(issue(&["--role", "device", "--group", "g", "--rule", "r"]).contains("--epc"));
    assert!(
        issue(&[
            "--role",
            "device",
            "--epc",
            "3174257BF7194E4000001A85",
            "--group",
            "g",
            "--rule",
            "r"
        ])
        .contains("header")
    );
    assert!(
        issue(&[
            "--role",
            "device",
            "--epc",
            "urn:epc:tag:sgtin-96:9.0614141.812345.6789",
            "--group",
            "g",
            "--rule",
            "r"
        ])
        .contains("filter")
    );
    assert!(issue(&["--role", "janitor"]).contains("unknown role"));
    assert!(
        issue(&["--role", "collector", "--location", "cardiology"]).contains("department/room/bed")
    );
    assert!(
        issue(&["--role", "nurse", "--epc", "3074257BF7194E4000001A85"])
            .contains("only for device")
    );
    assert!(
        !out.with_extension("key").exists(),
        "a refused request writes nothing"
    );
    assert!(
        fails(&["ca", "show", s(&ca.join("root.crt"))])
            .contains("not a medledger leaf certificate")
    );
}
