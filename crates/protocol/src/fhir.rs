//! Readings as FHIR R4 resources: vital-signs `Observation`s (LOINC codes,
//! UCUM quantities, ECG strips as `SampledData`) in a `Bundle`.
//!
//! Each Observation names its device by EPC (`urn:epc:tag:sgtin-96:...`
//! when it decodes as one, else the hex EPC), the patient by patientRef,
//! and carries the reading hash as an identifier
//! (`urn:medledger:reading`), so that it can be matched to its ledger
//! entry and proof.

use crate::reading::{ObservedValue, Reading};
use serde_json::{Value, json};

/// The identifier system of a reading hash.
pub const READING_SYSTEM: &str = "urn:medledger:reading";
/// The identifier system of a patientRef.
pub const PATIENT_SYSTEM: &str = "urn:medledger:patient-ref";
/// The identifier system of a device EPC (hex).
pub const DEVICE_SYSTEM: &str = "urn:medledger:epc";

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

/// The Observations of one reading: one per observation the `keep`
/// predicate admits (by LOINC code).
pub fn observations(
    reading: &Reading,
    reading_hash: &[u8; 32],
    patient_ref: &[u8; 32],
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let hash = hex::encode(reading_hash);
    reading
        .obs
        .iter()
        .enumerate()
        .filter(|(_, o)| keep(o.data_type.code))
        .map(|(i, o)| {
            let mut obs = json!({
                "resourceType": "Observation",
                "id": format!("{}-{i}", &hash[..16]),
                "identifier": [{ "system": READING_SYSTEM, "value": format!("{hash}#{i}") }],
                "status": "final",
                "category": [{ "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "vital-signs",
                    "display": "Vital Signs",
                }]}],
                "code": { "coding": [{
                    "system": "http://loinc.org",
                    "code": o.data_type.code,
                    "display": o.data_type.display,
                }]},
                "subject": { "identifier": { "system": PATIENT_SYSTEM, "value": hex::encode(patient_ref) } },
                "effectiveDateTime": instant(reading.ts_ms),
                "device": { "identifier": { "system": DEVICE_SYSTEM, "value": hex::encode(reading.dev.0) } },
            });
            match &o.value {
                ObservedValue::Scalar(v) => {
                    obs["valueQuantity"] = json!({
                        "value": v,
                        "unit": o.unit,
                        "system": "http://unitsofmeasure.org",
                        "code": o.unit,
                    });
                    if let Some((low, high)) = o.data_type.reference {
                        let quantity = |value: f64| json!({
                            "value": value,
                            "unit": o.data_type.unit(),
                            "system": "http://unitsofmeasure.org",
                            "code": o.data_type.unit(),
                        });
                        obs["referenceRange"] = json!([{ "low": quantity(low), "high": quantity(high) }]);
                        let reported = o.data_type.to_reporting_unit(o.unit, *v);
                        let (code, display) = if reported < low {
                            ("L", "Low")
                        } else if reported > high {
                            ("H", "High")
                        } else {
                            ("N", "Normal")
                        };
                        obs["interpretation"] = json!([{ "coding": [{
                            "system": INTERPRETATION_SYSTEM,
                            "code": code,
                            "display": display,
                        }]}]);
                    }
                }
                ObservedValue::Waveform(samples) => {
                    let data: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
                    obs["valueSampledData"] = json!({
                        "origin": { "value": 0, "unit": o.unit, "system": "http://unitsofmeasure.org", "code": o.unit },
                        "period": o.data_type.period_ms.unwrap_or(0.0),
                        "dimensions": 1,
                        "data": data.join(" "),
                    });
                }
            }
            obs
        })
        .collect()
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

/// HL7's observation interpretation codes (`H`, `L`, `N`).
pub const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// The identifier system of an account (a person's chain address).
pub const ACCOUNT_SYSTEM: &str = "urn:medledger:account";
/// The identifier system of an on-chain access request id.
pub const REQUEST_SYSTEM: &str = "urn:medledger:access-request";
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
    let mut purpose = vec![json!({ "text": access.purpose })];
    if access.emergency {
        purpose.push(json!({ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
            "code": "BTG", "display": "break the glass",
        }] }));
    }
    let requester = if access.requester.starts_with("0x") {
        json!({ "identifier": { "system": ACCOUNT_SYSTEM, "value": access.requester } })
    } else {
        json!({ "display": access.requester })
    };
    json!({
        "resourceType": "AuditEvent",
        "id": format!("{}-{}", &patient[..16], access.ledger_index),
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
                "what": { "identifier": { "system": PATIENT_SYSTEM, "value": patient } },
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
        let all = observations(&reading, &[1; 32], &[2; 32], |_| true);
        assert_eq!(all.len(), 2);
        let hr = &all[0];
        assert_eq!(hr["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(hr["code"]["coding"][0]["system"], "http://loinc.org");
        assert_eq!(hr["valueQuantity"]["value"], 72.0);
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(hr["effectiveDateTime"], "2025-11-22T00:00:00.000Z");
        // Scope filtering by code.
        let only_spo2 = observations(&reading, &[1; 32], &[2; 32], |c| c == "59408-5");
        assert_eq!(only_spo2.len(), 1);
        let b = bundle(all, 0);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);
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
        let all = observations(&reading, &[1; 32], &[2; 32], |_| true);
        let code = |o: &Value| o["interpretation"][0]["coding"][0]["code"].clone();
        assert_eq!(code(&all[0]), "H");
        assert_eq!(code(&all[1]), "N");
        assert_eq!(code(&all[2]), "L");
        assert_eq!(code(&all[3]), "H");
        assert_eq!(all[0]["referenceRange"][0]["low"]["value"], 60.0);
        assert_eq!(all[0]["referenceRange"][0]["high"]["value"], 100.0);
        assert_eq!(all[3]["referenceRange"][0]["high"]["unit"], "Cel");
    }

    #[test]
    fn an_audit_event_names_who_why_what_and_the_outcome() {
        let patient = [7u8; 32];
        let access = RecordAccess {
            patient_ref: &patient,
            ledger_index: 12,
            recorded_ms: 951_782_400_123,
            requester: "0x00000000000000000000000000000000000000aa",
            request: 3,
            purpose: "sepsis",
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
