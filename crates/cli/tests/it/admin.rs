//! `medledger admin` against `medledger chain`, as an operator runs them.

use crate::ca::{fails, ok, s};
use crate::chain::start_with;
use serde_json::Value;
use std::path::Path;

/// Issues a certificate for `role` and returns (prefix, address if any).
fn issue(ca: &Path, dir: &Path, name: &str, role: &str, extra: &[&str]) -> (String, String) {
    let out = dir.join(name);
    let mut args = vec![
        "ca",
        "issue",
        "--ca",
        s(ca),
        "--role",
        role,
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let shown: Value =
        serde_json::from_str(&ok(&["ca", "show", &format!("{}.crt", s(&out)), "--json"])).unwrap();
    let address = shown["address"].as_str().unwrap_or_default().to_owned();
    (s(&out).to_owned(), address)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn an_admin_runs_the_registry_and_the_rules_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let (admin, admin_address) = issue(&ca, tmp.path(), "admin", "admin", &[]);
    let (doctor, doctor_address) = issue(&ca, tmp.path(), "doctor", "doctor", &[]);
    let epc = "urn:epc:tag:sgtin-96:3.0614141.812345.6789";
    let (device, _) = issue(
        &ca,
        tmp.path(),
        "dev",
        "device",
        &[
            "--epc",
            epc,
            "--group",
            "icu-hr-monitor",
            "--rule",
            "default",
        ],
    );
    let chain_dir = tmp.path().join("chain");
    let admin_key = format!("{admin}.eth.key");
    let doctor_key = format!("{doctor}.eth.key");

    // Deploy on a chain that allows only the admin.
    let chain = start_with(&chain_dir, admin_address.parse().unwrap(), &[]);
    let as_admin = |args: &[&str]| -> Value {
        let mut all = vec!["admin", "--rpc", &chain.url, "--key", &admin_key, "--json"];
        all.extend_from_slice(args);
        json(&ok(&all))
    };
    let deployed = as_admin(&["deploy"]);
    let registry = deployed["addresses"]["registry"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = [
        "admin",
        "--rpc",
        &chain.url,
        "--key",
        &admin_key,
        "--registry",
        &registry,
    ];
    let as_admin =
        |args: &[&str]| -> Value { json(&ok(&[&admin[..], &["--json"], args].concat())) };

    let out = as_admin(&[
        "staff",
        "register",
        &doctor_address,
        "--role",
        "doctor",
        "--department",
        "cardiology",
    ]);
    assert_eq!(out["events"][0]["event"], "StaffRegistered");
    assert_eq!(out["events"][0]["args"]["department"], "\"cardiology\"");
    assert!(out["tx"].as_str().unwrap().starts_with("0x"));
    let shown = as_admin(&["staff", "show", &doctor_address]);
    assert_eq!(
        (shown["role"].as_str(), shown["active"].as_bool()),
        (Some("doctor"), Some(true))
    );

    // A device is registered from its certificate, once.
    let cert = format!("{device}.crt");
    let out = as_admin(&["device", "register", "--cert", &cert]);
    assert_eq!(out["events"][0]["event"], "DeviceRegistered");
    assert_eq!(out["events"][0]["args"]["group"], "\"icu-hr-monitor\"");
    let err = fails(&[&admin[..], &["device", "register", "--cert", &cert]].concat());
    assert!(
        err.contains("DuplicateDevice(epc: 0x3074257bf7194e4000001a85)"),
        "{err}"
    );

    // Admit a patient with the doctor as carer, and give them the device.
    let patient = format!("0x{}", "ab".repeat(32));
    let out = as_admin(&[
        "patient",
        "admit",
        "--patient",
        &patient,
        "--account",
        "0x1111111111111111111111111111111111111111",
        "--department",
        "cardiology",
        "--floor",
        "2",
        "--room",
        "201",
        "--bed",
        "1",
        "--carer",
        &doctor_address,
    ]);
    let names: Vec<&str> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["PatientAdmitted", "CarerAssigned"]);
    as_admin(&["device", "assign", "--epc", epc, "--patient", &patient]);
    let shown = as_admin(&["device", "show", "--epc", epc]);
    assert_eq!(shown["patient"], patient.as_str());
    assert_eq!(
        (
            shown["governing_rule"].as_str(),
            shown["governing_rule_from"].as_str()
        ),
        (Some("default"), Some("certificate"))
    );

    // A collector is registered from its certificate: its account and
    // location, which a different --location cannot contradict.
    let (collector, _) = issue(
        &ca,
        tmp.path(),
        "collector1",
        "collector",
        &["--location", "cardiology/2/A"],
    );
    let collector_cert = format!("{collector}.crt");
    let register_node = |more: &[&str]| {
        let register = ["node", "register", "--cert", &collector_cert];
        crate::ca::fails(&[&admin[..], &register, more].concat())
    };
    let err = register_node(&["--kind", "collector", "--location", "cardiology/2"]);
    assert!(
        err.contains("--location cardiology/2 is not the certificate's location (cardiology/2/A)"),
        "{err}"
    );
    let err = register_node(&["--kind", "server"]);
    assert!(
        err.contains("is a collector certificate, not a server's"),
        "{err}"
    );
    let out = as_admin(&[
        "node",
        "register",
        "--cert",
        &collector_cert,
        "--kind",
        "collector",
    ]);
    assert_eq!(out["events"][0]["event"], "NodeRegistered", "{out}");
    assert_eq!(
        out["events"][0]["args"]["location"], "\"cardiology/2/A\"",
        "{out}"
    );

    // Rules: configure the shipped ones, deploy and bind another.
    let out = as_admin(&[
        "rule",
        "allow",
        "--group",
        "icu-hr-monitor",
        "--types",
        "heart-rate,spo2",
    ]);
    assert_eq!(out["events"][0]["event"], "TypesAllowed");
    let out = as_admin(&[
        "rule",
        "range",
        "--type",
        "heart-rate",
        "--min",
        "-1",
        "--max",
        "220",
    ]);
    assert_eq!(out["events"][0]["args"]["min"], "-1000");
    let out = as_admin(&["rule", "deploy", "value-range", "--id", "icu-ranges"]);
    assert_eq!(out["events"][0]["event"], "RuleChanged");
    as_admin(&[
        "rule",
        "bind",
        "--scope",
        "room",
        "--target",
        "201",
        "--id",
        "icu-ranges",
    ]);
    let shown = as_admin(&["device", "show", "--epc", epc]);
    assert_eq!(
        (
            shown["governing_rule"].as_str(),
            shown["governing_rule_from"].as_str()
        ),
        (Some("icu-ranges"), Some("room"))
    );
    let out = as_admin(&[
        "rule",
        "deploy",
        "all-of",
        "--id",
        "icu-all",
        "--parts",
        "allowed-types,icu-ranges",
    ]);
    assert_eq!(out["events"][0]["args"]["ruleId"], "\"icu-all\"");
    let version = as_admin(&["show"])["rule_version"].as_u64().unwrap();
    assert!(version >= 6, "{version}");
    drop(chain);

    // Restarted with the Registry, the chain lets the registered doctor send;
    // the doctor is still no admin, and the contract says so.
    let chain = start_with(
        &chain_dir,
        admin_address.parse().unwrap(),
        &["--registry", &registry],
    );
    let err = fails(&[
        "admin",
        "--rpc",
        &chain.url,
        "--key",
        &doctor_key,
        "--registry",
        &registry,
        "staff",
        "register",
        &doctor_address,
        "--role",
        "nurse",
        "--department",
        "x",
    ]);
    assert!(
        err.contains(&format!("NotAdmin(caller: {doctor_address})")),
        "{err}"
    );

    // Only admins deploy rules, and nothing is deployed when refused.
    let err = fails(&[
        "admin",
        "--rpc",
        &chain.url,
        "--key",
        &doctor_key,
        "--registry",
        &registry,
        "rule",
        "deploy",
        "value-range",
        "--id",
        "mine",
    ]);
    assert!(err.contains("not an admin"), "{err}");

    // Mistakes are named.
    let base = [
        "admin",
        "--rpc",
        chain.url.as_str(),
        "--key",
        admin_key.as_str(),
        "--registry",
        registry.as_str(),
    ];
    let long = "x".repeat(40);
    let err = fails(
        &[
            &base[..],
            &[
                "staff",
                "register",
                &doctor_address,
                "--role",
                "doctor",
                "--department",
                &long,
            ],
        ]
        .concat(),
    );
    assert!(err.contains("at most 32 bytes"), "{err}");
    let err = fails(
        &[
            &base[..],
            &["rule", "allow", "--group", "g", "--types", "pulse"],
        ]
        .concat(),
    );
    assert!(err.contains("unknown data type \"pulse\""), "{err}");
    let err = fails(
        &[
            &base[..],
            &["device", "register", "--cert", &format!("{doctor}.crt")],
        ]
        .concat(),
    );
    assert!(err.contains("not a device's"), "{err}");
    let err = fails(
        &[
            &base[..],
            &[
                "rule",
                "range",
                "--rule",
                &doctor_address,
                "--type",
                "spo2",
                "--min",
                "1",
                "--max",
                "2",
            ],
        ]
        .concat(),
    );
    assert!(err.contains("no rule contract at"), "{err}");
    let err = fails(&["admin", "--rpc", &chain.url, "--key", &admin_key, "show"]);
    assert!(err.contains("no Registry address"), "{err}");
    let err = fails(&[
        "admin",
        "--rpc",
        &chain.url,
        "--key",
        &admin_key,
        "--registry",
        "0x0000000000000000000000000000000000000007",
        "show",
    ]);
    assert!(err.contains("no contract code at"), "{err}");
}

#[test]
fn the_command_line_reaches_the_chain_over_mutual_tls_and_plain_http_stays_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(&["ca", "init", "--dir", s(&ca)]);
    let (admin, admin_address) = issue(&ca, tmp.path(), "admin", "admin", &[]);
    let (nurse, _) = issue(&ca, tmp.path(), "nurse", "nurse", &[]);
    let (node, _) = issue(&ca, tmp.path(), "chain-node", "server", &[]);
    let foreign_ca = tmp.path().join("foreign");
    ok(&["ca", "init", "--dir", s(&foreign_ca)]);
    let (stranger, _) = issue(&foreign_ca, tmp.path(), "stranger", "admin", &[]);
    let root = format!("{}/root.crt", s(&ca));
    let crl = format!("{}/crl.pem", s(&ca));

    let err = fails(&[
        "chain",
        "--data",
        s(&tmp.path().join("open")),
        "--rpc",
        "0.0.0.0:0",
    ]);
    assert!(
        err.contains("would serve plain HTTP to other machines"),
        "{err}"
    );

    let chain = start_with(
        &tmp.path().join("chain"),
        admin_address.parse().unwrap(),
        &[
            "--rpc-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &node,
            "--tls-root",
            &root,
            "--tls-crl",
            &crl,
        ],
    );
    let rpc = chain.tls_url.as_str();
    assert!(rpc.starts_with("https://127.0.0.1:"), "{rpc}");
    let admin_key = format!("{admin}.eth.key");
    // The admin's certificate is found beside its chain key.
    let deployed = json(&ok(&[
        "admin",
        "--rpc",
        rpc,
        "--key",
        &admin_key,
        "--tls-root",
        &root,
        "--json",
        "deploy",
    ]));
    let registry = deployed["addresses"]["registry"].as_str().unwrap();
    // A nurse reads with her own certificate and no key.
    let patient = format!("0x{}", "11".repeat(32));
    let audit = [
        "audit",
        "--patient",
        &patient,
        "--rpc",
        rpc,
        "--registry",
        registry,
        "--tls-root",
        &root,
        "--tls-cert",
        &nurse,
    ];
    ok(&[&audit[..], &["--json"]].concat());

    // A key others may read is refused, saying how to fix it.
    use std::os::unix::fs::PermissionsExt;
    let nurse_key = format!("{nurse}.key");
    std::fs::set_permissions(&nurse_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&audit);
    assert!(err.contains(&format!("chmod 600 {nurse_key}")), "{err}");
    std::fs::set_permissions(&nurse_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let read = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "--patient",
            &patient,
            "--rpc",
            rpc,
            "--registry",
            registry,
        ];
        args.extend_from_slice(extra);
        fails(&args)
    };
    let err = read(&[]);
    assert!(err.contains("give the medledger root CA"), "{err}");
    // A certificate of another CA is refused at the handshake.
    let err = read(&["--tls-root", &root, "--tls-cert", &stranger]);
    assert!(err.contains("finding the contracts"), "{err}");
    // And a node whose certificate is not of our CA is not believed.
    let foreign_root = format!("{}/root.crt", s(&foreign_ca));
    let err = read(&["--tls-root", &foreign_root, "--tls-cert", &nurse]);
    assert!(err.contains("invalid peer certificate"), "{err}");
    // Plain HTTP to another machine is refused before anything is sent.
    let err = fails(&[
        "audit",
        "--patient",
        &patient,
        "--rpc",
        "http://192.0.2.1:8545",
        "--registry",
        registry,
    ]);
    assert!(err.contains("plain HTTP to another machine"), "{err}");
}

#[test]
fn patient_ref_is_keccak_of_the_salt_then_the_id_and_the_salt_stays_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let salt = tmp.path().join("patient.salt");
    std::fs::write(&salt, format!("{}\n", "11".repeat(32))).unwrap();
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let patient_ref = [
        "patient",
        "ref",
        "--salt-file",
        s(&salt),
        "--id",
        "MRN-0042",
    ];
    // As `cast keccak 0x1111...11$(printf MRN-0042 | xxd -p)` computes it.
    assert_eq!(
        ok(&patient_ref).trim(),
        "0x9aa95fecddc750c4b7cf62d9546b20185393c3211defe10395b232bfc15ab625"
    );

    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&patient_ref);
    assert!(err.contains(&format!("chmod 600 {}", s(&salt))), "{err}");

    std::fs::write(&salt, "not hex").unwrap();
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = fails(&patient_ref);
    assert!(err.contains("openssl rand -hex 32"), "{err}");
}
