//! RuleManager and the shipped rules: registration, most specific
//! resolution, batch checks with reasons, versioned change events.

use crate::common::{Hospital, assert_refused, epc, event, text};
use alloy::primitives::{Address, B256};
use medledger_contracts::bindings::RuleManager::{self, RuleInput};
use medledger_contracts::bindings::{AllowedTypesRule, ValueRangeRule};
use medledger_contracts::{RuleReason, code_key, epc_bytes, epc_key, milli, send};
use medledger_pki::Epc;

const DEVICE: u8 = 1;
const ROOM: u8 = 2;
const FLOOR: u8 = 3;
const GROUP: u8 = 4;

fn input(device: &Epc, code: &str, value: f64) -> RuleInput {
    RuleInput {
        epc: epc_bytes(device),
        code: code_key(code),
        min: milli(value),
        max: milli(value),
    }
}

/// Registers a device of `group` that answers to `rule` and assigns it to
/// the hospital's patient (room-201 on floor-2).
async fn device(h: &Hospital, serial: u64, group: &str, rule: &str) -> Epc {
    let e = epc(serial);
    let registry = h.admin.registry();
    send(registry.registerDevice(epc_bytes(&e), text(group), text(rule), B256::ZERO))
        .await
        .unwrap();
    send(registry.assignDevice(epc_bytes(&e), h.patient_ref))
        .await
        .unwrap();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rules_allow_types_per_group_and_plausible_values() {
    let h = Hospital::start().await;
    let hr_monitor = device(&h, 1, "icu-hr-monitor", "default").await;
    let allowed = h.admin.allowed_types();
    let v0 = h.admin.rule_manager().version().call().await.unwrap();
    let receipt = send(allowed.setAllowed(
        text("icu-hr-monitor"),
        vec![code_key("8867-4"), code_key("59408-5")],
        true,
    ))
    .await
    .unwrap();
    let e: AllowedTypesRule::TypesAllowed = event(&receipt);
    assert_eq!(
        (e.group, e.allowed, e.codes.len()),
        (text("icu-hr-monitor"), true, 2)
    );
    // A parameter change inside a rule is a versioned RuleManager event.
    let change: RuleManager::RuleChanged = event(&receipt);
    assert_eq!(
        (change.version, change.kind, change.ruleId),
        (v0 + 1, 6, text("allowed-types"))
    );

    let unknown = epc(99);
    let batch = vec![
        input(&hr_monitor, "8867-4", 72.0),  // allowed
        input(&hr_monitor, "59408-5", 97.0), // allowed
        input(&hr_monitor, "8310-5", 37.0),  // a thermometer reading from a heart-rate monitor
        input(&hr_monitor, "8867-4", 900.0), // implausible
        input(&hr_monitor, "8867-4", 5.0),   // implausible
        input(&unknown, "8867-4", 72.0),     // no such device
    ];
    let (reasons, version) = h.admin.check_readings(batch).await.unwrap();
    assert_eq!(
        reasons,
        [
            RuleReason::Allow,
            RuleReason::Allow,
            RuleReason::TypeNotAllowed,
            RuleReason::AboveRange,
            RuleReason::BelowRange,
            RuleReason::UnknownDevice,
        ]
    );
    assert_eq!(version, v0 + 1);

    // A waveform passes its extremes; one sample out of range refuses it.
    let mut ecg = input(&hr_monitor, "11524-6", 0.0);
    send(allowed.setAllowed(text("icu-hr-monitor"), vec![code_key("11524-6")], true))
        .await
        .unwrap();
    (ecg.min, ecg.max) = (milli(-1.5), milli(2.0));
    assert_eq!(
        h.admin.check_readings(vec![ecg.clone()]).await.unwrap().0,
        [RuleReason::Allow]
    );
    ecg.max = milli(12.0);
    assert_eq!(
        h.admin.check_readings(vec![ecg]).await.unwrap().0,
        [RuleReason::AboveRange]
    );

    // An inconsistent input (an empty waveform gives min > max) is refused.
    let mut empty = input(&hr_monitor, "11524-6", 0.0);
    (empty.min, empty.max) = (i64::MAX, i64::MIN);
    assert_eq!(
        h.admin.check_readings(vec![empty]).await.unwrap().0,
        [RuleReason::InvalidInput]
    );

    // Withdrawing a type refuses it from then on.
    send(allowed.setAllowed(text("icu-hr-monitor"), vec![code_key("59408-5")], false))
        .await
        .unwrap();
    let (reasons, _) = h
        .admin
        .check_readings(vec![input(&hr_monitor, "59408-5", 97.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::TypeNotAllowed]);

    // A retired device is refused as such.
    send(h.admin.registry().deactivateDevice(epc_bytes(&hr_monitor)))
        .await
        .unwrap();
    let (reasons, _) = h
        .admin
        .check_readings(vec![input(&hr_monitor, "8867-4", 72.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::DeviceInactive]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_ranges() {
    let h = Hospital::start().await;
    let range = h.admin.value_range();
    let thermometer = device(&h, 2, "thermo", "value-range").await;
    let r = range.ranges(code_key("8310-5")).call().await.unwrap();
    assert_eq!((r.set, r.min, r.max), (true, 25_000, 45_000));

    let e: ValueRangeRule::RangeSet = event(
        &send(range.setRange(code_key("8310-5"), 34_000, 42_000))
            .await
            .unwrap(),
    );
    assert_eq!((e.code, e.min, e.max), (code_key("8310-5"), 34_000, 42_000));
    let check = |v| {
        h.admin
            .check_readings(vec![input(&thermometer, "8310-5", v)])
    };
    assert_eq!(check(33.9).await.unwrap().0, [RuleReason::BelowRange]);
    assert_eq!(check(34.0).await.unwrap().0, [RuleReason::Allow]);
    assert_eq!(check(42.0).await.unwrap().0, [RuleReason::Allow]);
    assert_eq!(check(42.1).await.unwrap().0, [RuleReason::AboveRange]);

    let e: ValueRangeRule::RangeCleared =
        event(&send(range.clearRange(code_key("8310-5"))).await.unwrap());
    assert_eq!(e.code, code_key("8310-5"));
    assert_eq!(check(37.0).await.unwrap().0, [RuleReason::NoRange]);

    assert_refused(
        send(range.setRange(code_key("8310-5"), 5, 4)).await,
        "InvalidRange",
    );
    assert_refused(
        send(range.setRanges(vec![code_key("8310-5")], vec![], vec![1])).await,
        "LengthMismatch",
    );
    // Only admins configure rules.
    let nurse_range = h.nurse.value_range();
    assert_refused(
        send(nurse_range.setRange(code_key("8310-5"), 0, 1)).await,
        "NotAdmin",
    );
    let nurse_allowed = h.nurse.allowed_types();
    assert_refused(
        send(nurse_allowed.setAllowed(text("thermo"), vec![], true)).await,
        "NotAdmin",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolution_picks_the_most_specific_rule() {
    let h = Hospital::start().await;
    let rules = h.admin.rule_manager();
    let dev = device(&h, 3, "bedside", "default").await;
    let by_device = (DEVICE, epc_key(&dev));
    let by_room = (ROOM, text("room-201"));
    let by_floor = (FLOOR, text("floor-2"));
    let by_group = (GROUP, text("bedside"));
    let resolved = async || {
        let r = rules.resolve(epc_bytes(&dev)).call().await.unwrap();
        (r.ruleId, r.scope)
    };
    // Only the certificate's rule id.
    assert_eq!(resolved().await, (text("default"), 0));
    // Bind a different rule at each level, least specific first; each wins.
    for (i, (scope, key)) in [by_group, by_floor, by_room, by_device]
        .into_iter()
        .enumerate()
    {
        let id = text(&format!("rule-{i}"));
        // One contract answers to one id: each level gets its own.
        let fresh = AllowedTypesRule::deploy(h.admin.provider().clone(), *rules.address())
            .await
            .unwrap();
        send(rules.registerRule(id, *fresh.address()))
            .await
            .unwrap();
        let receipt = send(rules.bind(scope, key, id)).await.unwrap();
        let e: RuleManager::RuleChanged = event(&receipt);
        assert_eq!((e.kind, e.ruleId, e.scope, e.key), (4, id, scope, key));
        assert_eq!(resolved().await, (id, scope));
    }
    // Unbinding falls back to the next level.
    let e: RuleManager::RuleChanged =
        event(&send(rules.unbind(by_device.0, by_device.1)).await.unwrap());
    assert_eq!(
        (e.kind, e.ruleId, e.scope, e.key),
        (5, text("rule-3"), DEVICE, epc_key(&dev))
    );
    assert_eq!(resolved().await, (text("rule-2"), ROOM));
    // Room and floor come from the patient's admission: after a transfer the
    // room rule no longer applies.
    let registry = h.admin.registry();
    send(registry.transfer(
        h.patient_ref,
        text("cardiology"),
        text("floor-3"),
        text("room-301"),
        text("bed-1"),
        vec![],
    ))
    .await
    .unwrap();
    assert_eq!(resolved().await, (text("rule-0"), GROUP));
    assert_refused(
        send(rules.unbind(by_device.0, by_device.1)).await,
        "NotBound",
    );

    // The group's rule is an allowed-types rule with nothing allowed.
    let (reasons, _) = h
        .admin
        .check_readings(vec![input(&dev, "8867-4", 70.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::TypeNotAllowed]);
    // Removing a bound rule leaves the device with no rule at all.
    let e: RuleManager::RuleChanged = event(&send(rules.removeRule(text("rule-0"))).await.unwrap());
    assert_eq!((e.kind, e.ruleId, e.scope), (3, text("rule-0"), 0));
    let (reasons, _) = h
        .admin
        .check_readings(vec![input(&dev, "8867-4", 70.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::NoRule]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_registration_refusals_and_versions() {
    let h = Hospital::start().await;
    let rules = h.admin.rule_manager();
    let version = rules.version().call().await.unwrap();
    let anchor = h.admin.addresses().anchor;
    // Only admins.
    let nurse_rules = h.nurse.rule_manager();
    assert_refused(
        send(nurse_rules.registerRule(text("x"), anchor)).await,
        "NotAdmin",
    );
    assert_refused(
        send(nurse_rules.bind(GROUP, text("g"), text("default"))).await,
        "NotAdmin",
    );
    assert_refused(send(nurse_rules.unbind(GROUP, text("g"))).await, "NotAdmin");
    assert_refused(
        send(nurse_rules.removeRule(text("default"))).await,
        "NotAdmin",
    );
    // Malformed registrations.
    assert_refused(
        send(rules.registerRule(B256::ZERO, anchor)).await,
        "ZeroRuleId",
    );
    assert_refused(
        send(rules.registerRule(text("x"), Address::repeat_byte(3))).await,
        "NotAContract",
    );
    assert_refused(
        send(rules.registerRule(text("x"), h.admin.addresses().default_rule)).await,
        "RuleInUse",
    );
    assert_refused(
        send(rules.bind(GROUP, text("g"), text("nope"))).await,
        "UnknownRule",
    );
    assert_refused(
        send(rules.bind(0, text("g"), text("default"))).await,
        "InvalidScope",
    );
    assert_refused(send(rules.removeRule(text("nope"))).await, "UnknownRule");
    // Refusals change nothing.
    assert_eq!(rules.version().call().await.unwrap(), version);

    // A contract that is not a rule: checks through it fail, as a reason.
    let receipt = send(rules.registerRule(text("broken"), anchor))
        .await
        .unwrap();
    let e: RuleManager::RuleChanged = event(&receipt);
    assert_eq!((e.version, e.kind, e.rule), (version + 1, 1, anchor));
    let dev = device(&h, 4, "g", "broken").await;
    let (reasons, v) = h
        .admin
        .check_readings(vec![input(&dev, "8867-4", 70.0)])
        .await
        .unwrap();
    assert_eq!(
        (reasons.as_slice(), v),
        ([RuleReason::RuleFailed].as_slice(), version + 1)
    );
    // Replacing it under the same id is a new version.
    let fixed = ValueRangeRule::deploy(h.admin.provider().clone(), *rules.address())
        .await
        .unwrap();
    let e: RuleManager::RuleChanged = event(
        &send(rules.registerRule(text("broken"), *fixed.address()))
            .await
            .unwrap(),
    );
    assert_eq!(
        (e.version, e.kind, e.rule),
        (version + 2, 2, *fixed.address())
    );
    let (reasons, _) = h
        .admin
        .check_readings(vec![input(&dev, "8867-4", 70.0)])
        .await
        .unwrap();
    assert_eq!(reasons, [RuleReason::NoRange]);
}
