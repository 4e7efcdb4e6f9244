//! Registry: admins, staff, nodes, devices, admissions; only admins change it.

use crate::common::{Hospital, assert_refused, epc, event, patient_ref, text};
use alloy::primitives::{Address, B256};
use medledger_contracts::bindings::Registry;
use medledger_contracts::{StaffRole, epc_bytes, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_come_and_go_but_one_remains() {
    let h = Hospital::start().await;
    let registry = h.admin.registry();
    let second = h.account();
    assert!(registry.isAdmin(h.admin.address).call().await.unwrap());
    assert_eq!(
        registry.adminCount().call().await.unwrap(),
        alloy::primitives::U256::from(1)
    );

    // The last admin cannot leave.
    assert_refused(
        send(registry.removeAdmin(h.admin.address)).await,
        "LastAdmin",
    );

    let receipt = send(registry.addAdmin(second.address)).await.unwrap();
    let added: Registry::AdminAdded = event(&receipt);
    assert_eq!((added.account, added.by), (second.address, h.admin.address));
    assert_refused(
        send(registry.addAdmin(second.address)).await,
        "AlreadyAdmin",
    );
    assert_refused(send(registry.addAdmin(Address::ZERO)).await, "ZeroAddress");
    // A patient's account cannot become an admin.
    assert_refused(
        send(registry.addAdmin(h.patient.address)).await,
        "AlreadyRegistered",
    );

    // The new admin removes the first; then it is the last.
    let reg2 = second.registry();
    let removed: Registry::AdminRemoved =
        event(&send(reg2.removeAdmin(h.admin.address)).await.unwrap());
    assert_eq!(
        (removed.account, removed.by),
        (h.admin.address, second.address)
    );
    assert_refused(send(reg2.removeAdmin(second.address)).await, "LastAdmin");
    assert_refused(
        send(reg2.removeAdmin(h.admin.address)).await,
        "UnknownAdmin",
    );
    // The old admin is now a stranger to admin functions.
    assert_refused(send(registry.addAdmin(h.admin.address)).await, "NotAdmin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_change_the_registry() {
    let h = Hospital::start().await;
    let d = epc(1);
    // Staff, a patient and a node are registered accounts, but not admins.
    for who in [&h.doctor, &h.patient, &h.collector] {
        let r = who.registry();
        let me = who.address;
        assert_refused(send(r.addAdmin(me)).await, "NotAdmin");
        assert_refused(send(r.removeAdmin(h.admin.address)).await, "NotAdmin");
        assert_refused(send(r.registerStaff(me, 1, text("x"))).await, "NotAdmin");
        assert_refused(send(r.deactivateStaff(h.nurse.address)).await, "NotAdmin");
        assert_refused(send(r.registerNode(me, 2, text("x"))).await, "NotAdmin");
        assert_refused(
            send(r.deactivateNode(h.collector.address)).await,
            "NotAdmin",
        );
        assert_refused(
            send(r.registerDevice(epc_bytes(&d), text("g"), text("default"), B256::ZERO)).await,
            "NotAdmin",
        );
        assert_refused(
            send(r.assignDevice(epc_bytes(&d), h.patient_ref)).await,
            "NotAdmin",
        );
        assert_refused(send(r.releaseDevice(epc_bytes(&d))).await, "NotAdmin");
        assert_refused(
            send(r.setDeviceCertificate(epc_bytes(&d), B256::ZERO)).await,
            "NotAdmin",
        );
        assert_refused(send(r.deactivateDevice(epc_bytes(&d))).await, "NotAdmin");
        let p = patient_ref("p9");
        let (dept, floor, room, bed) = (text("d"), text("f"), text("r"), text("b"));
        assert_refused(
            send(r.admit(p, me, dept, floor, room, bed, vec![])).await,
            "NotAdmin",
        );
        assert_refused(
            send(r.transfer(h.patient_ref, dept, floor, room, bed, vec![])).await,
            "NotAdmin",
        );
        assert_refused(send(r.discharge(h.patient_ref)).await, "NotAdmin");
        assert_refused(send(r.assignCarer(h.patient_ref, me)).await, "NotAdmin");
        assert_refused(
            send(r.releaseCarer(h.patient_ref, h.nurse.address)).await,
            "NotAdmin",
        );
        let dir = r.directory().call().await.unwrap();
        assert_refused(send(r.setDirectory(dir)).await, "NotAdmin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_and_nodes() {
    let h = Hospital::start().await;
    let registry = h.admin.registry();
    let nurse = h.account();
    let receipt = send(registry.registerStaff(nurse.address, StaffRole::Nurse.code(), text("icu")))
        .await
        .unwrap();
    let e: Registry::StaffRegistered = event(&receipt);
    assert_eq!(
        (e.account, e.role, e.department),
        (nurse.address, 2, text("icu"))
    );
    let s = registry.staff(nurse.address).call().await.unwrap();
    assert_eq!((s.role, s.active, s.department), (2, true, text("icu")));
    assert_refused(
        send(registry.registerStaff(nurse.address, 0, text("icu"))).await,
        "InvalidRole",
    );
    // Not a role at all: the ABI decoder refuses it.
    assert!(
        send(registry.registerStaff(nurse.address, 3, text("icu")))
            .await
            .is_err()
    );
    // A node cannot also be staff, nor staff a node.
    assert_refused(
        send(registry.registerStaff(h.collector.address, 1, text("icu"))).await,
        "AlreadyRegistered",
    );
    assert_refused(
        send(registry.registerNode(nurse.address, 1, text("icu"))).await,
        "AlreadyRegistered",
    );

    let e: Registry::StaffDeactivated =
        event(&send(registry.deactivateStaff(nurse.address)).await.unwrap());
    assert_eq!(e.account, nurse.address);
    assert!(!registry.isActiveStaff(nurse.address).call().await.unwrap());
    assert_refused(
        send(registry.deactivateStaff(nurse.address)).await,
        "UnknownStaff",
    );

    let server = h.account();
    let e: Registry::NodeRegistered = event(
        &send(registry.registerNode(server.address, 2, text("dc-1")))
            .await
            .unwrap(),
    );
    assert_eq!(
        (e.account, e.kind, e.location),
        (server.address, 2, text("dc-1"))
    );
    assert_refused(
        send(registry.registerNode(server.address, 0, text("dc-1"))).await,
        "InvalidRole",
    );
    let e: Registry::NodeDeactivated =
        event(&send(registry.deactivateNode(server.address)).await.unwrap());
    assert_eq!(e.account, server.address);
    assert!(!registry.isActiveNode(server.address).call().await.unwrap());
    assert_refused(
        send(registry.deactivateNode(server.address)).await,
        "UnknownNode",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_registered_once_and_bound_to_admitted_patients() {
    let h = Hospital::start().await;
    let registry = h.admin.registry();
    let d = epc_bytes(&epc(42));
    let fp = B256::repeat_byte(0xfe);
    let receipt = send(registry.registerDevice(d, text("icu-hr-monitor"), text("default"), fp))
        .await
        .unwrap();
    let e: Registry::DeviceRegistered = event(&receipt);
    assert_eq!(
        (e.epc, e.group, e.ruleId, e.certFingerprint),
        (d, text("icu-hr-monitor"), text("default"), fp)
    );
    // Registering an EPC twice is refused, whatever the other fields.
    assert_refused(
        send(registry.registerDevice(d, text("other"), text("other"), B256::ZERO)).await,
        "DuplicateDevice",
    );
    let unknown = epc_bytes(&epc(43));
    assert_refused(
        send(registry.assignDevice(unknown, h.patient_ref)).await,
        "UnknownDevice",
    );
    assert_refused(
        send(registry.assignDevice(d, patient_ref("nobody"))).await,
        "NotAdmitted",
    );

    let e: Registry::DeviceAssigned =
        event(&send(registry.assignDevice(d, h.patient_ref)).await.unwrap());
    assert_eq!((e.epc, e.patientRef), (d, h.patient_ref));
    assert_eq!(
        registry.patientOfDevice(d).call().await.unwrap(),
        h.patient_ref
    );

    // A second admitted patient cannot take the device while it is in use.
    let other = patient_ref("p2");
    let other_account = h.account();
    let nowhere = (
        text("cardiology"),
        text("floor-2"),
        text("room-202"),
        text("bed-1"),
    );
    send(registry.admit(
        other,
        other_account.address,
        nowhere.0,
        nowhere.1,
        nowhere.2,
        nowhere.3,
        vec![],
    ))
    .await
    .unwrap();
    assert_refused(send(registry.assignDevice(d, other)).await, "DeviceInUse");

    let e: Registry::DeviceReleased = event(&send(registry.releaseDevice(d)).await.unwrap());
    assert_eq!((e.epc, e.patientRef), (d, h.patient_ref));
    assert_eq!(
        registry.patientOfDevice(d).call().await.unwrap(),
        B256::ZERO
    );
    assert_refused(send(registry.releaseDevice(d)).await, "DeviceNotAssigned");

    // Discharge unbinds in effect: the device reports for nobody.
    send(registry.assignDevice(d, other)).await.unwrap();
    send(registry.discharge(other)).await.unwrap();
    assert_eq!(
        registry.patientOfDevice(d).call().await.unwrap(),
        B256::ZERO
    );
    // ...and the device may then go to someone else.
    send(registry.assignDevice(d, h.patient_ref)).await.unwrap();

    let fp2 = B256::repeat_byte(0x11);
    let e: Registry::DeviceCertificateChanged =
        event(&send(registry.setDeviceCertificate(d, fp2)).await.unwrap());
    assert_eq!((e.epc, e.certFingerprint), (d, fp2));
    let renewed = registry.device(d).call().await.unwrap();
    assert_eq!(renewed.certFingerprint, fp2);
    // The replaced certificate is kept, with when it was retired.
    assert_ne!(renewed.previousCertFingerprint, fp2);
    assert_ne!(renewed.previousCertFingerprint, B256::ZERO);
    assert!(renewed.certChangedAt > 0);
    // Naming the same certificate again changes nothing.
    send(registry.setDeviceCertificate(d, fp2)).await.unwrap();
    let again = registry.device(d).call().await.unwrap();
    assert_eq!(
        (again.previousCertFingerprint, again.certChangedAt),
        (renewed.previousCertFingerprint, renewed.certChangedAt)
    );

    let receipt = send(registry.deactivateDevice(d)).await.unwrap();
    let released: Registry::DeviceReleased = event(&receipt);
    assert_eq!(released.patientRef, h.patient_ref);
    let e: Registry::DeviceDeactivated = event(&receipt);
    assert_eq!(e.epc, d);
    assert_eq!(
        registry.patientOfDevice(d).call().await.unwrap(),
        B256::ZERO
    );
    assert_refused(
        send(registry.assignDevice(d, h.patient_ref)).await,
        "DeviceInactive",
    );
    assert_refused(
        send(registry.registerDevice(d, text("g"), text("r"), B256::ZERO)).await,
        "DuplicateDevice",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_transfer_and_discharge() {
    let h = Hospital::start().await;
    let registry = h.admin.registry();
    let p = h.patient_ref;
    let a = registry.admission(p).call().await.unwrap();
    assert!(a.active);
    assert_eq!((a.account, a.epoch), (h.patient.address, 1));
    assert_eq!(
        (a.department, a.floor, a.room, a.bed),
        (
            text("cardiology"),
            text("floor-2"),
            text("room-201"),
            text("bed-1")
        )
    );
    assert_eq!(
        registry.patientAccount(p).call().await.unwrap(),
        h.patient.address
    );
    assert_eq!(
        registry
            .patientOfAccount(h.patient.address)
            .call()
            .await
            .unwrap(),
        p
    );
    assert!(
        registry
            .isAssignedCarer(p, h.doctor.address)
            .call()
            .await
            .unwrap()
    );
    assert!(
        registry
            .isAssignedCarer(p, h.nurse.address)
            .call()
            .await
            .unwrap()
    );
    assert!(
        !registry
            .isAssignedCarer(p, h.other_doctor.address)
            .call()
            .await
            .unwrap()
    );

    let (d, f, r, b) = (
        text("icu"),
        text("floor-1"),
        text("room-101"),
        text("bed-3"),
    );
    assert_refused(
        send(registry.admit(p, h.patient.address, d, f, r, b, vec![])).await,
        "AlreadyAdmitted",
    );
    assert_refused(
        send(registry.admit(B256::ZERO, h.patient.address, d, f, r, b, vec![])).await,
        "InvalidPatientRef",
    );
    // One account belongs to one patient; the error names its patient.
    let err = send(registry.admit(patient_ref("p2"), h.patient.address, d, f, r, b, vec![]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "AccountInUse(account: {}, patientRef: {p})",
            h.patient.address
        )),
        "{err}"
    );
    // Staff, nodes and admins cannot double as patient accounts, nor the reverse.
    for taken in [h.doctor.address, h.collector.address, h.admin.address] {
        assert_refused(
            send(registry.admit(patient_ref("p3"), taken, d, f, r, b, vec![])).await,
            "AlreadyRegistered",
        );
    }
    assert_refused(
        send(registry.registerStaff(h.patient.address, 1, d)).await,
        "AlreadyRegistered",
    );
    assert_refused(
        send(registry.registerNode(h.patient.address, 1, d)).await,
        "AlreadyRegistered",
    );
    // Carers must be active staff.
    let stranger = h.stranger.address;
    assert_refused(
        send(registry.admit(
            patient_ref("p2"),
            h.account().address,
            d,
            f,
            r,
            b,
            vec![stranger],
        ))
        .await,
        "NotActiveStaff",
    );

    // Transfer: new place, and the new carers replace the old.
    let receipt = send(registry.transfer(p, d, f, r, b, vec![h.other_doctor.address]))
        .await
        .unwrap();
    let e: Registry::PatientTransferred = event(&receipt);
    assert_eq!(
        (e.patientRef, e.epoch, e.department, e.floor, e.room, e.bed),
        (p, 2, d, f, r, b)
    );
    let c: Registry::CarerAssigned = event(&receipt);
    assert_eq!(
        (c.patientRef, c.carer, c.epoch),
        (p, h.other_doctor.address, 2)
    );
    assert!(
        !registry
            .isAssignedCarer(p, h.doctor.address)
            .call()
            .await
            .unwrap()
    );
    assert!(
        registry
            .isAssignedCarer(p, h.other_doctor.address)
            .call()
            .await
            .unwrap()
    );

    let e: Registry::CarerAssigned = event(
        &send(registry.assignCarer(p, h.nurse.address))
            .await
            .unwrap(),
    );
    assert_eq!((e.carer, e.epoch), (h.nurse.address, 2));
    assert_refused(
        send(registry.assignCarer(p, h.nurse.address)).await,
        "AlreadyCarer",
    );
    let e: Registry::CarerReleased = event(
        &send(registry.releaseCarer(p, h.nurse.address))
            .await
            .unwrap(),
    );
    assert_eq!((e.patientRef, e.carer, e.epoch), (p, h.nurse.address, 2));
    assert_refused(
        send(registry.releaseCarer(p, h.nurse.address)).await,
        "NotCarer",
    );

    let e: Registry::PatientDischarged = event(&send(registry.discharge(p)).await.unwrap());
    assert_eq!((e.patientRef, e.epoch), (p, 2));
    assert!(
        !registry
            .isAssignedCarer(p, h.other_doctor.address)
            .call()
            .await
            .unwrap()
    );
    assert_refused(send(registry.discharge(p)).await, "NotAdmitted");
    assert_refused(
        send(registry.transfer(p, d, f, r, b, vec![])).await,
        "NotAdmitted",
    );
    // The patient keeps their account (consents outlive admissions).
    assert_eq!(
        registry.patientAccount(p).call().await.unwrap(),
        h.patient.address
    );

    // The account is the patient's for good: a readmission cannot swap it
    // (an admin would otherwise take over the patient's consents).
    let intruder = h.account();
    assert_refused(
        send(registry.admit(p, intruder.address, d, f, r, b, vec![])).await,
        "AccountFixed",
    );
    // Readmission starts a new epoch with its own carers.
    let receipt = send(registry.admit(p, h.patient.address, d, f, r, b, vec![h.doctor.address]))
        .await
        .unwrap();
    let e: Registry::PatientAdmitted = event(&receipt);
    assert_eq!(
        (
            e.patientRef,
            e.account,
            e.epoch,
            e.department,
            e.floor,
            e.room,
            e.bed
        ),
        (p, h.patient.address, 3, d, f, r, b)
    );
    assert!(
        registry
            .isAssignedCarer(p, h.doctor.address)
            .call()
            .await
            .unwrap()
    );
    assert!(
        !registry
            .isAssignedCarer(p, h.other_doctor.address)
            .call()
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_finds_the_whole_set() {
    let h = Hospital::start().await;
    let found = medledger_contracts::Contracts::at(
        h.admin.provider().clone(),
        h.admin.addresses().registry,
    )
    .await
    .unwrap();
    assert_eq!(found.addresses(), h.admin.addresses());
    // An address without code is named.
    let nowhere = Address::repeat_byte(7);
    let err = medledger_contracts::Contracts::at(h.admin.provider().clone(), nowhere)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&nowhere.to_string()), "{err}");
}
