//! medledger's data as FHIR R4 resources: readings as `Observation`s
//! conforming to the R4 vital-signs profiles they fall under, reads as
//! `AuditEvent`s, consents as `Consent`s, devices as `Device`s, and the
//! patient as a minimal `Patient`, in `Bundle`s.
//!
//! - **Observations.** LOINC codes and UCUM quantities (the unit as people
//!   write it in `unit`, the UCUM code in `code`); systolic and diastolic
//!   pressure of one reading as one blood-pressure panel (85354-9) with two
//!   components; SpO2 coded both 59408-5 and 2708-6; ECG strips as
//!   `SampledData`. Only R4's vital signs are categorised `vital-signs` and
//!   declare their profile in `meta.profile`; glucose is `laboratory`, the
//!   ECG `procedure` (as R4's ECG example). Each carries a generated
//!   narrative, its reading hash as an identifier (`urn:medledger:reading`,
//!   to match it to its ledger entry and proof), the patient as
//!   `Patient/{patientRef}` and the device as `Device/{EPC}`.
//! - **People and devices** are named by reference only: a patient by the
//!   salted patientRef, an account by its address, a device by its EPC (its
//!   pure identity URI `urn:epc:id:sgtin:...` when it decodes as one).

use crate::catalogue::{DataType, unit_display};
use crate::reading::{ObservedValue, Reading};
use serde_json::{Value, json};

/// The identifier system of a reading hash.
pub const READING_SYSTEM: &str = "urn:medledger:reading";
/// The identifier system of a patientRef.
pub const PATIENT_SYSTEM: &str = "urn:medledger:patient-ref";
/// The identifier system of a device EPC (hex).
pub const DEVICE_SYSTEM: &str = "urn:medledger:epc";
/// The identifier system of an identifier that is itself a URI (an EPC
/// pure identity URI).
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const PROFILES: &str = "http://hl7.org/fhir/StructureDefinition/";
const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const SYSTOLIC: &str = "8480-6";
const DIASTOLIC: &str = "8462-4";

/// RFC 3339 UTC from Unix milliseconds.
pub fn instant(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}Z",
        ms % 1000
    )
}

/// The R4 vital-signs profile an Observation coded `code` conforms to
/// (systolic or diastolic pressure alone: the generic one).
fn vital_sign_profile(code: &str) -> Option<&'static str> {
    Some(match code {
        "8867-4" => "heartrate",
        "59408-5" => "oxygensat",
        "8310-5" => "bodytemp",
        "9279-1" => "resprate",
        "29463-7" => "bodyweight",
        "85354-9" => "bp",
        SYSTOLIC | DIASTOLIC => "vitalsigns",
        _ => return None,
    })
}

/// The Observation category of `code`: R4's vital signs, laboratory
/// results, or (the ECG) a procedure.
fn category(code: &str) -> Value {
    let (code, display) = if vital_sign_profile(code).is_some() {
        ("vital-signs", "Vital Signs")
    } else if code == "11524-6" {
        ("procedure", "Procedure")
    } else {
        ("laboratory", "Laboratory")
    };
    json!([{ "coding": [{ "system": CATEGORY_SYSTEM, "code": code, "display": display }] }])
}

/// The Observation code of a data type: its LOINC coding and, for SpO2,
/// the 2708-6 coding the oxygen-saturation profile requires.
fn code_of(t: &DataType) -> Value {
    let mut coding = vec![json!({ "system": LOINC, "code": t.code, "display": t.display })];
    if t.code == "59408-5" {
        coding.push(json!({
            "system": LOINC,
            "code": "2708-6",
            "display": "Oxygen saturation in Arterial blood",
        }));
    }
    json!({ "coding": coding, "text": t.display })
}

/// A UCUM quantity: the unit as people write it, the UCUM code beside it.
fn quantity(value: f64, ucum: &str) -> Value {
    json!({ "value": value, "unit": unit_display(ucum), "system": UCUM, "code": ucum })
}

/// `value[x]`, `referenceRange` and `interpretation` of one observation
/// (an Observation's or a component's), and its words for the narrative.
fn measured(o: &crate::reading::Observation) -> (serde_json::Map<String, Value>, String) {
    let mut out = serde_json::Map::new();
    let words = match &o.value {
        ObservedValue::Scalar(v) => {
            out.insert("valueQuantity".into(), quantity(*v, o.unit));
            let mut words = format!("{v} {}", unit_display(o.unit));
            if let Some((low, high)) = o.data_type.reference {
                let unit = o.data_type.unit();
                out.insert(
                    "referenceRange".into(),
                    json!([{ "low": quantity(low, unit), "high": quantity(high, unit) }]),
                );
                let reported = o.data_type.to_reporting_unit(o.unit, *v);
                let (code, display) = if reported < low {
                    ("L", "Low")
                } else if reported > high {
                    ("H", "High")
                } else {
                    ("N", "Normal")
                };
                out.insert(
                    "interpretation".into(),
                    json!([{ "coding": [{
                        "system": INTERPRETATION_SYSTEM,
                        "code": code,
                        "display": display,
                    }]}]),
                );
                words.push_str(&format!(" ({})", display.to_lowercase()));
            }
            words
        }
        ObservedValue::Waveform(samples) => {
            let data: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
            let period = o.data_type.period_ms.unwrap_or(0.0);
            out.insert(
                "valueSampledData".into(),
                json!({
                    "origin": quantity(0.0, o.unit),
                    "period": period,
                    "dimensions": 1,
                    "data": data.join(" "),
                }),
            );
            format!("{} samples every {period} ms", samples.len())
        }
    };
    (out, words)
}

/// A generated narrative of one line.
fn narrative(line: &str) -> Value {
    let escaped = line
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    json!({
        "status": "generated",
        "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{escaped}</p></div>"),
    })
}

/// A reference to the patient `patient_ref` (the id is the salted
/// reference itself).
pub fn patient_reference(patient_ref: &[u8; 32]) -> Value {
    let hex = hex::encode(patient_ref);
    json!({
        "reference": format!("Patient/{hex}"),
        "type": "Patient",
        "identifier": { "system": PATIENT_SYSTEM, "value": hex },
    })
}

/// A reference to the device `epc`, shown by its pure identity URI when it
/// has one.
pub fn device_reference(epc: &[u8; 12], urn: Option<&str>) -> Value {
    let hex = hex::encode(epc);
    json!({
        "reference": format!("Device/{hex}"),
        "type": "Device",
        "display": urn.unwrap_or(&hex),
    })
}

/// The Observations of one reading whose LOINC codes `keep` admits: one
/// per observation, except that a systolic and a diastolic pressure (the
/// first of each, the second of each...) become one blood-pressure panel.
/// `device_urn` is the device's EPC pure identity URI, when it has one.
pub fn observations(
    reading: &Reading,
    reading_hash: &[u8; 32],
    patient_ref: &[u8; 32],
    device_urn: Option<&str>,
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let kept: Vec<(usize, &crate::reading::Observation)> = reading
        .obs
        .iter()
        .enumerate()
        .filter(|(_, o)| keep(o.data_type.code))
        .collect();
    let of = |code: &'static str| kept.iter().filter(move |(_, o)| o.data_type.code == code);
    let panels: Vec<_> = of(SYSTOLIC).zip(of(DIASTOLIC)).collect();
    let in_panel = |i: usize| panels.iter().any(|(s, d)| s.0 == i || d.0 == i);
    let hash = hex::encode(reading_hash);
    let device = device_reference(&reading.dev.0, device_urn);
    let when = instant(reading.ts_ms);
    let envelope = |i: usize, code: &str, code_value: Value, line: String| {
        let mut obs = json!({
            "resourceType": "Observation",
            "id": format!("{}-{i}", &hash[..16]),
            "text": narrative(&format!(
                "{line}; {when}; device {}",
                device["display"].as_str().unwrap_or("")
            )),
            "identifier": [{ "system": READING_SYSTEM, "value": format!("{hash}#{i}") }],
            "status": "final",
            "category": category(code),
            "code": code_value,
            "subject": patient_reference(patient_ref),
            "effectiveDateTime": when,
            "device": device,
        });
        if let Some(profile) = vital_sign_profile(code) {
            obs["meta"] = json!({ "profile": [format!("{PROFILES}{profile}")] });
        }
        obs
    };
    let mut out: Vec<(usize, Value)> = panels
        .iter()
        .map(|((i, systolic), (_, diastolic))| {
            let component = |o: &crate::reading::Observation| {
                let (mut c, words) = measured(o);
                c.insert("code".into(), code_of(o.data_type));
                (Value::Object(c), words)
            };
            let (s, s_words) = component(systolic);
            let (d, d_words) = component(diastolic);
            let code = json!({
                "coding": [{
                    "system": LOINC,
                    "code": "85354-9",
                    "display": "Blood pressure panel with all children optional",
                }],
                "text": "Blood pressure",
            });
            let line = format!("Blood pressure: systolic {s_words}, diastolic {d_words}");
            let mut obs = envelope(*i, "85354-9", code, line);
            obs["component"] = json!([s, d]);
            (*i, obs)
        })
        .collect();
    for (i, o) in kept.iter().filter(|(i, _)| !in_panel(*i)) {
        let (value, words) = measured(o);
        let line = format!("{}: {words}", o.data_type.display);
        let mut obs = envelope(*i, o.data_type.code, code_of(o.data_type), line);
        if let Some(fields) = obs.as_object_mut() {
            fields.extend(value);
        }
        out.push((*i, obs));
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

/// A `collection` Bundle of `resources`, stamped `timestamp_ms`.
pub fn bundle(resources: Vec<Value>, timestamp_ms: u64) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": instant(timestamp_ms),
        "entry": resources
            .into_iter()
            .map(|r| {
                let url = format!(
                    "urn:medledger:{}:{}",
                    r["resourceType"].as_str().unwrap_or("Resource"),
                    r["id"].as_str().unwrap_or("")
                );
                json!({ "fullUrl": url, "resource": r })
            })
            .collect::<Vec<_>>(),
    })
}

/// The Device `epc` (the resource id is its hex): identified by its EPC
/// pure identity URI when it has one, and by its hex EPC.
pub fn device(epc: &[u8; 12], urn: Option<&str>) -> Value {
    let hex = hex::encode(epc);
    let mut identifier = vec![json!({ "system": DEVICE_SYSTEM, "value": hex })];
    if let Some(urn) = urn {
        identifier.insert(0, json!({ "system": URI_SYSTEM, "value": urn }));
    }
    json!({
        "resourceType": "Device",
        "id": hex,
        "text": narrative(&format!("Device {}", urn.unwrap_or(&hex))),
        "identifier": identifier,
        "status": "active",
    })
}

/// The patient `patient_ref` as a minimal Patient: its salted reference
/// and nothing else about the person.
pub fn patient(patient_ref: &[u8; 32]) -> Value {
    let hex = hex::encode(patient_ref);
    json!({
        "resourceType": "Patient",
        "id": hex,
        "text": narrative(&format!("Patient {hex} (a salted reference)")),
        "identifier": [{ "system": PATIENT_SYSTEM, "value": hex }],
    })
}

/// One grant of the patient's consent, as the Consent contract holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant<'a> {
    /// The grant's id on chain.
    pub id: u64,
    /// The patient who granted it.
    pub patient_ref: &'a [u8; 32],
    /// The account it was granted to (`0x...`), if one.
    pub grantee: Option<&'a str>,
    /// Their name, from the directory, if known.
    pub grantee_name: Option<&'a str>,
    /// The staff role it was granted to, if granted to a role.
    pub role: Option<&'a str>,
    /// The data types it covers.
    pub scope: &'a [&'static DataType],
    /// Why, in the patient's words.
    pub purpose: &'a str,
    /// When it was granted, Unix ms.
    pub granted_ms: u64,
    /// When it ends, Unix ms (`None`: never).
    pub expiry_ms: Option<u64>,
    /// Revoked by the patient.
    pub revoked: bool,
}

/// A FHIR R4 Consent for one grant: an opt-in privacy consent permitting
/// access to the data types of its scope, by an account or a role, until
/// its expiry; `inactive` once revoked or expired at `now_ms`.
pub fn consent(grant: &Grant<'_>, now_ms: u64) -> Value {
    let live = !grant.revoked && grant.expiry_ms.is_none_or(|e| e > now_ms);
    let mut actors = Vec::new();
    let recipient = json!({ "coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "code": "IRCP",
        "display": "information recipient",
    }]});
    if let Some(account) = grant.grantee {
        let mut reference = json!({ "identifier": { "system": ACCOUNT_SYSTEM, "value": account } });
        if let Some(name) = grant.grantee_name {
            reference["display"] = json!(name);
        }
        actors.push(json!({ "role": recipient, "reference": reference }));
    }
    if let Some(role) = grant.role {
        actors
            .push(json!({ "role": recipient, "reference": { "display": format!("any {role}") } }));
    }
    let mut provision = json!({
        "type": "permit",
        "actor": actors,
        "action": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
            "code": "access",
        }]}],
        "code": grant.scope.iter().map(|t| code_of(t)).collect::<Vec<_>>(),
        "period": { "start": instant(grant.granted_ms) },
    });
    if let Some(end) = grant.expiry_ms {
        provision["period"]["end"] = json!(instant(end));
    }
    if let Some(code) = crate::purpose::purpose_code(grant.purpose) {
        provision["purpose"] = json!([{
            "system": crate::purpose::PURPOSE_SYSTEM,
            "code": code,
            "display": crate::purpose::purpose_display(code),
        }]);
    }
    let who = grant
        .grantee_name
        .or(grant.grantee)
        .map(str::to_owned)
        .or_else(|| grant.role.map(|r| format!("any {r}")))
        .unwrap_or_default();
    let names: Vec<&str> = grant.scope.iter().map(|t| t.display).collect();
    json!({
        "resourceType": "Consent",
        "id": grant.id.to_string(),
        "text": narrative(&format!(
            "Consent {}: {who} may read {} for {}{}",
            grant.id,
            names.join(", "),
            grant.purpose,
            if live { "" } else { " (no longer in force)" },
        )),
        "identifier": [{ "system": CONSENT_SYSTEM, "value": grant.id.to_string() }],
        "status": if live { "active" } else { "inactive" },
        "scope": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy",
            "display": "Privacy Consent",
        }]},
        "category": [{ "coding": [{ "system": LOINC, "code": "59284-0", "display": "Patient Consent" }] }],
        "patient": patient_reference(grant.patient_ref),
        "dateTime": instant(grant.granted_ms),
        "policyRule": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "OPTIN",
            "display": "opt-in",
        }]},
        "provision": provision,
    })
}

/// HL7's observation interpretation codes (`H`, `L`, `N`).
pub const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// The identifier system of an account (a person's chain address).
pub const ACCOUNT_SYSTEM: &str = "urn:medledger:account";
/// The identifier system of an on-chain access request id.
pub const REQUEST_SYSTEM: &str = "urn:medledger:access-request";
/// The identifier system of an on-chain consent grant id.
pub const CONSENT_SYSTEM: &str = "urn:medledger:consent-grant";
/// The identifier system of a patient-ledger entry (`patientRef/index`).
pub const LEDGER_ENTRY_SYSTEM: &str = "urn:medledger:ledger-entry";

/// One read of a patient's records, served or refused, as the server
/// recorded it in the patient's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAccess<'a> {
    /// The patient.
    pub patient_ref: &'a [u8; 32],
    /// The `AccessEvent` entry's index in the patient's ledger.
    pub ledger_index: u64,
    /// When, Unix ms.
    pub recorded_ms: u64,
    /// Who asked: an account (`0x...`), or a certificate subject.
    pub requester: &'a str,
    /// Their name, from the directory, if known.
    pub requester_name: Option<&'a str>,
    /// The on-chain access request it relied on.
    pub request: u64,
    /// Why (the request's purpose); `emergency` marks break-glass.
    pub purpose: &'a str,
    /// Whether the request was a break-glass one.
    pub emergency: bool,
    /// Whether data was served.
    pub served: bool,
    /// Observations served, or why it was refused.
    pub detail: &'a str,
}

/// A FHIR R4 `AuditEvent` for one read of a patient's records (DICOM
/// "Patient Record" events, action `R`; outcome `0` served, `4` refused).
pub fn audit_event(access: &RecordAccess<'_>) -> Value {
    let patient = hex::encode(access.patient_ref);
    // A PurposeOfUse code as a coding; text kept on chains of earlier
    // releases, as it was.
    let mut purpose = vec![match crate::purpose::purpose_code(access.purpose) {
        Some(code) => json!({
            "coding": [{
                "system": crate::purpose::PURPOSE_SYSTEM,
                "code": code,
                "display": crate::purpose::purpose_display(code),
            }],
            "text": crate::purpose::purpose_display(code),
        }),
        None => json!({ "text": access.purpose }),
    }];
    if access.emergency {
        purpose.push(json!({ "coding": [{
            "system": crate::purpose::PURPOSE_SYSTEM,
            "code": "BTG", "display": "break the glass",
        }] }));
    }
    let mut requester = if access.requester.starts_with("0x") {
        json!({ "identifier": { "system": ACCOUNT_SYSTEM, "value": access.requester } })
    } else {
        json!({ "display": access.requester })
    };
    if let Some(name) = access.requester_name {
        requester["display"] = json!(name);
    }
    let line = format!(
        "{} read of patient {patient}'s records by {} under request {}: {}",
        if access.served { "Served" } else { "Refused" },
        access.requester,
        access.request,
        access.detail,
    );
    json!({
        "resourceType": "AuditEvent",
        "id": format!("{}-{}", &patient[..16], access.ledger_index),
        "text": narrative(&line),
        "type": {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110110", "display": "Patient Record",
        },
        "subtype": [{
            "system": "http://hl7.org/fhir/restful-interaction",
            "code": "search-type", "display": "search-type",
        }],
        "action": "R",
        "recorded": instant(access.recorded_ms),
        "outcome": if access.served { "0" } else { "4" },
        "outcomeDesc": access.detail,
        "purposeOfEvent": purpose,
        "agent": [{ "who": requester, "requestor": true }],
        "source": {
            "observer": { "display": "medledger server" },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4", "display": "Application Server",
            }],
        },
        "entity": [
            {
                "what": patient_reference(access.patient_ref),
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1", "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1", "display": "Patient",
                },
            },
            {
                "what": { "identifier": {
                    "system": REQUEST_SYSTEM, "value": access.request.to_string(),
                } },
                "description": "the on-chain access request",
            },
            {
                "what": { "identifier": {
                    "system": LEDGER_ENTRY_SYSTEM,
                    "value": format!("{patient}/{}", access.ledger_index),
                } },
                "description": "the AccessEvent entry in the patient's ledger",
            },
        ],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalogue::data_type;
    use crate::reading::{DeviceId, Observation};

    #[test]
    fn instants_are_rfc3339_utc() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(instant(1_763_769_600_000), "2025-11-22T00:00:00.000Z");
    }

    #[test]
    fn a_reading_becomes_vital_signs_observations() {
        let reading = Reading {
            dev: DeviceId([0x30; 12]),
            seq: 1,
            ts_ms: 1_763_769_600_000,
            obs: vec![
                Observation::scalar(data_type("8867-4").unwrap(), 72.0),
                Observation::scalar(data_type("59408-5").unwrap(), 97.0),
            ],
            model: None,
        };
        let all = observations(&reading, &[1; 32], &[2; 32], None, |_| true);
        assert_eq!(all.len(), 2);
        let hr = &all[0];
        assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(hr["code"]["coding"][0]["system"], "http://loinc.org");
        assert_eq!(hr["valueQuantity"]["value"], 72.0);
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(hr["effectiveDateTime"], "2025-11-22T00:00:00.000Z");
        // Scope filtering by code.
        let only_spo2 = observations(&reading, &[1; 32], &[2; 32], None, |c| c == "59408-5");
        assert_eq!(only_spo2.len(), 1);
        let b = bundle(all, 0);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
    }

    /// One reading of every data type of the catalogue, in each of its
    /// units, plus a second systolic pressure left without a diastolic.
    fn every_kind() -> Reading {
        let mut obs = Vec::new();
        for t in crate::catalogue::CATALOGUE {
            for unit in t.units {
                let o = if t.waveform {
                    Observation::waveform(t, vec![0.1, 0.5, -0.2])
                } else {
                    let (low, high) = t.reference.unwrap_or((70.0, 80.0));
                    Observation::scalar(t, (low + high) / 2.0)
                };
                obs.push(Observation { unit, ..o });
            }
        }
        obs.push(Observation::scalar(data_type(SYSTOLIC).unwrap(), 150.0));
        Reading {
            dev: DeviceId([0x30; 12]),
            seq: 1,
            ts_ms: 1_763_769_600_000,
            obs,
            model: None,
        }
    }

    const URN: &str = "urn:epc:id:sgtin:0614141.812345.6789";

    #[test]
    fn blood_pressure_is_one_panel_spo2_has_both_codes_and_only_vital_signs_are_vital_signs() {
        let all = observations(&every_kind(), &[1; 32], &[2; 32], Some(URN), |_| true);
        let coded = |code: &str| {
            all.iter()
                .filter(|o| o["code"]["coding"][0]["code"] == code)
                .collect::<Vec<_>>()
        };
        let panel = coded("85354-9");
        assert_eq!(panel.len(), 1);
        let panel = panel[0];
        assert!(panel.get("valueQuantity").is_none());
        assert_eq!(panel["component"][0]["code"]["coding"][0]["code"], SYSTOLIC);
        assert_eq!(
            panel["component"][1]["code"]["coding"][0]["code"],
            DIASTOLIC
        );
        assert_eq!(panel["component"][0]["valueQuantity"]["unit"], "mmHg");
        assert_eq!(panel["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(panel["meta"]["profile"][0], format!("{PROFILES}bp"));
        // The systolic pressure without a diastolic stays on its own.
        let lone = coded(SYSTOLIC);
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0]["valueQuantity"]["value"], 150.0);
        assert!(coded(DIASTOLIC).is_empty());
        let spo2 = coded("59408-5")[0];
        assert_eq!(spo2["code"]["coding"][1]["code"], "2708-6");
        assert_eq!(spo2["meta"]["profile"][0], format!("{PROFILES}oxygensat"));
        let category = |code: &str| coded(code)[0]["category"][0]["coding"][0]["code"].clone();
        assert_eq!(category("8867-4"), "vital-signs");
        assert_eq!(category("2339-0"), "laboratory");
        assert_eq!(category("15074-8"), "laboratory");
        assert_eq!(category("11524-6"), "procedure");
        assert!(coded("2339-0")[0].get("meta").is_none());
        let temperature = coded("8310-5");
        assert_eq!(temperature[0]["valueQuantity"]["unit"], "°C");
        assert_eq!(temperature[1]["valueQuantity"]["unit"], "°F");
        for o in &all {
            assert_eq!(
                o["device"]["reference"],
                format!("Device/{}", "30".repeat(12))
            );
            assert_eq!(o["device"]["display"], URN);
            assert_eq!(
                o["subject"]["reference"],
                format!("Patient/{}", "02".repeat(32))
            );
            assert_eq!(o["text"]["status"], "generated");
        }
        assert!(
            panel["text"]["div"]
                .as_str()
                .unwrap()
                .contains("Blood pressure: systolic 115 mmHg (normal), diastolic 75 mmHg (normal)"),
            "{}",
            panel["text"]["div"]
        );
    }

    #[test]
    fn every_resource_passes_the_r4_schema_and_the_profiles_it_falls_under() {
        let mut resources = observations(&every_kind(), &[1; 32], &[2; 32], Some(URN), |_| true);
        resources.push(device(&[0x30; 12], Some(URN)));
        resources.push(device(&[0x31; 12], None));
        resources.push(patient(&[2; 32]));
        let scope = [data_type("8867-4").unwrap(), data_type("59408-5").unwrap()];
        let grant = Grant {
            id: 4,
            patient_ref: &[2; 32],
            grantee: Some("0x00000000000000000000000000000000000000aa"),
            grantee_name: Some("Dr Ada Lovelace"),
            role: None,
            scope: &scope,
            purpose: "CAREMGT",
            granted_ms: 1_000,
            expiry_ms: Some(5_000),
            revoked: false,
        };
        let live = consent(&grant, 2_000);
        assert_eq!(live["status"], "active");
        assert_eq!(live["provision"]["code"][1]["coding"][1]["code"], "2708-6");
        assert_eq!(live["provision"]["purpose"][0]["code"], "CAREMGT");
        assert_eq!(
            live["provision"]["actor"][0]["reference"]["display"],
            "Dr Ada Lovelace"
        );
        let to_a_role = consent(
            &Grant {
                id: 5,
                grantee: None,
                grantee_name: None,
                role: Some("nurse"),
                expiry_ms: None,
                ..grant.clone()
            },
            2_000,
        );
        assert_eq!(consent(&grant, 6_000)["status"], "inactive");
        assert_eq!(
            consent(
                &Grant {
                    revoked: true,
                    ..grant
                },
                2_000
            )["status"],
            "inactive"
        );
        resources.push(live);
        resources.push(to_a_role);
        resources.push(audit_event(&RecordAccess {
            patient_ref: &[2; 32],
            ledger_index: 3,
            recorded_ms: 1_000,
            requester: "0x00000000000000000000000000000000000000aa",
            requester_name: Some("Dr Ada Lovelace"),
            request: 1,
            purpose: "CAREMGT",
            emergency: true,
            served: true,
            detail: "2 observation(s) served",
        }));
        crate::test_utils::assert_valid_fhir(&bundle(resources, 0));
    }

    /// The validator fails what the vital-signs profiles refuse: SpO2
    /// without 2708-6, pressures as separate values, a heart rate in
    /// another unit.
    #[test]
    fn the_validator_refuses_what_the_profiles_refuse() {
        let reading = every_kind();
        let mut all = observations(&reading, &[1; 32], &[2; 32], None, |_| true);
        let at = |all: &[Value], code: &str| {
            all.iter()
                .position(|o| o["code"]["coding"][0]["code"] == code)
                .unwrap()
        };
        let spo2 = at(&all, "59408-5");
        all[spo2]["code"]["coding"].as_array_mut().unwrap().pop();
        let panel = at(&all, "85354-9");
        all[panel]["component"].as_array_mut().unwrap().pop();
        let hr = at(&all, "8867-4");
        all[hr]["valueQuantity"]["code"] = json!("/s");
        let Some(verdict) = crate::test_utils::check_fhir(&bundle(all, 0)) else {
            return;
        };
        let report = verdict.unwrap_err();
        assert!(report.contains("OxygenSatCode"), "{report}");
        assert!(report.contains("DiastolicBP"), "{report}");
        assert!(report.contains("/s, the profile fixes /min"), "{report}");
        assert!(report.contains("4 error(s)"), "{report}");
    }

    #[test]
    fn values_outside_the_reference_range_are_interpreted_high_or_low() {
        let hr = data_type("8867-4").unwrap();
        let temperature = data_type("8310-5").unwrap();
        let reading = Reading {
            dev: DeviceId([0x30; 12]),
            seq: 1,
            ts_ms: 0,
            obs: vec![
                Observation::scalar(hr, 130.0),
                Observation::scalar(hr, 72.0),
                Observation::scalar(hr, 41.0),
                // 104 degrees Fahrenheit is 40 Celsius: high.
                Observation {
                    unit: "[degF]",
                    ..Observation::scalar(temperature, 104.0)
                },
            ],
            model: None,
        };
        let all = observations(&reading, &[1; 32], &[2; 32], None, |_| true);
        let code = |o: &Value| o["interpretation"][0]["coding"][0]["code"].clone();
        assert_eq!(code(&all[0]), "H");
        assert_eq!(code(&all[1]), "N");
        assert_eq!(code(&all[2]), "L");
        assert_eq!(code(&all[3]), "H");
        assert_eq!(all[0]["referenceRange"][0]["low"]["value"], 60.0);
        assert_eq!(all[0]["referenceRange"][0]["high"]["value"], 100.0);
        assert_eq!(all[3]["referenceRange"][0]["high"]["unit"], "°C");
        assert_eq!(all[3]["referenceRange"][0]["high"]["code"], "Cel");
    }

    #[test]
    fn an_audit_event_names_who_why_what_and_the_outcome() {
        let patient = [7u8; 32];
        let access = RecordAccess {
            patient_ref: &patient,
            ledger_index: 12,
            recorded_ms: 951_782_400_123,
            requester: "0x00000000000000000000000000000000000000aa",
            requester_name: None,
            request: 3,
            purpose: "ETREAT",
            emergency: true,
            served: false,
            detail: "request 3 expired",
        };
        let e = audit_event(&access);
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["recorded"], "2000-02-29T00:00:00.123Z");
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["outcomeDesc"], "request 3 expired");
        assert_eq!(
            e["agent"][0]["who"]["identifier"]["value"],
            access.requester
        );
        assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(e["purposeOfEvent"][0]["text"], "Emergency Treatment");
        assert_eq!(e["purposeOfEvent"][1]["coding"][0]["code"], "BTG");
        assert_eq!(e["entity"][1]["what"]["identifier"]["value"], "3");
        assert_eq!(
            e["entity"][2]["what"]["identifier"]["value"],
            format!("{}/12", hex::encode(patient))
        );
        let served = audit_event(&RecordAccess {
            served: true,
            emergency: false,
            requester: "CN=someone",
            ..access
        });
        assert_eq!(served["outcome"], "0");
        assert_eq!(served["purposeOfEvent"].as_array().unwrap().len(), 1);
        assert_eq!(served["agent"][0]["who"]["display"], "CN=someone");
    }
}
