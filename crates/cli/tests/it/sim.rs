//! `medledger sim` against roles started apart: devices issued beforehand
//! by the CA operator, registered by an admin, no CA key and no `up`
//! layout in sight of the simulator.

use crate::ca::{ok, s};
use medledger_sim::signals::KINDS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_streams_from_devices_issued_beforehand_to_a_collector_by_its_address() {
    streams_from_devices_issued_beforehand(crate::site::start().await, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_streams_over_mqtt_to_the_broker_the_collector_reads() {
    let Some(site) = crate::mqtt::site_with_broker().await else {
        return;
    };
    let broker = site.broker.as_ref().unwrap().addr.clone();
    streams_from_devices_issued_beforehand(
        site,
        &[
            "--transport",
            "mqtt",
            "--broker",
            &broker,
            "--broker-name",
            "localhost",
        ],
    )
    .await;
}

/// `medledger sim --devices-dir` with `transport` arguments streams, and
/// every reading acknowledged reaches the patient's ledger.
async fn streams_from_devices_issued_beforehand(site: crate::site::Site, transport: &[&str]) {
    // The CA operator issues three pulse oximeters into a directory.
    let devices = site.dir.path().join("devices");
    let printed = ok(&[
        "ca",
        "issue",
        "--ca",
        s(site.ca.dir()),
        "--role",
        "device",
        "--count",
        "3",
        "--epc",
        "urn:epc:tag:sgtin-96:3.0614141.812345.500",
        "--group",
        "pulse-oximeter",
        "--rule",
        "default",
        "--out",
        s(&devices),
    ]);
    assert_eq!(printed.matches("wrote").count(), 6, "{printed}");
    // The admin registers them and gives them to the patient.
    site.allow_kinds(KINDS).await.unwrap();
    for serial in 500..503 {
        let device =
            medledger_sim::Device::load(&devices.join(format!("device-{serial}")), 0).unwrap();
        device
            .register(&site.admin, "pulse-oximeter", Some(site.patient_ref))
            .await
            .unwrap();
    }
    // The simulator has the directory, the collector's address and the
    // root certificate: nothing else.
    let sim_dir = tempfile::tempdir().unwrap();
    let root = sim_dir.path().join("root.crt");
    std::fs::copy(site.ca.dir().join("root.crt"), &root).unwrap();
    let collector = site.collector.addr().to_string();
    let transport: Vec<String> = transport.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "sim",
            "--devices-dir",
            s(&devices),
            "--collector",
            &collector,
            "--ca-root",
            s(&root),
            "--rate",
            "4",
            "--seconds",
            "2",
        ];
        args.extend(transport.iter().map(String::as_str));
        crate::site::medledger(&args)
    })
    .await
    .unwrap();
    let (success, stdout, stderr) = out;
    assert!(success, "{stdout}{stderr}");
    assert!(stdout.contains("medledger sim: 3 devices from"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    let accepted: u64 = last
        .split_once("] accepted ")
        .unwrap_or_else(|| panic!("{stdout}"))
        .1
        .parse()
        .unwrap_or_else(|_| panic!("only accepted readings: {stdout}"));
    assert!(accepted >= 3, "{stdout}");

    // Every acknowledged reading reaches the patient's ledger.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let size = site
            .server
            .ledger()
            .verify(&site.patient_ref.0, &[])
            .await
            .map_or(0, |v| v.size);
        if size >= accepted {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{size} of {accepted}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[test]
fn sim_says_what_is_missing_from_a_devices_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let err = crate::ca::fails(&[
        "sim",
        "--devices-dir",
        s(tmp.path()),
        "--collector",
        "127.0.0.1:1",
        "--ca-root",
        s(&tmp.path().join("root.crt")),
    ]);
    assert!(
        err.contains("no device certificates (*.crt) in")
            && err.contains("medledger ca issue --role device --count N"),
        "{err}"
    );
}
