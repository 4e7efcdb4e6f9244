//! Why someone reads a patient's data: a code of HL7 v3 PurposeOfUse (the
//! codes of FHIR's `AuditEvent.purposeOfEvent`), never free text, since a
//! purpose on chain is public forever. The contracts take exactly these
//! codes (`PurposeOfUse.sol`); a contracts test holds the two lists
//! together.

/// HL7 v3 PurposeOfUse: the code system of these codes.
pub const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The purposes medledger takes, with HL7's display names.
pub const PURPOSES: &[(&str, &str)] = &[
    ("TREAT", "treatment"),
    ("ETREAT", "Emergency Treatment"),
    ("CAREMGT", "care management"),
    ("COC", "coordination of care"),
    ("CLINTRCH", "clinical trial research"),
    ("HRESCH", "healthcare research"),
    ("HOPERAT", "healthcare operations"),
    ("HQUALIMP", "health quality improvement"),
    ("PATSFTY", "patient safety"),
    ("HSYSADMIN", "health system administration"),
    ("RECORDMGT", "records management"),
    ("PATRQT", "patient requested"),
    ("FAMRQT", "family requested"),
    ("PWATRNY", "power of attorney"),
    ("SUPNWK", "support network"),
    ("PUBHLTH", "public health"),
    ("HPAYMT", "healthcare payment"),
    ("HLEGAL", "legal"),
    ("TRAIN", "training"),
];

/// The code `text` names (any case), if it is one of [`PURPOSES`].
pub fn purpose_code(text: &str) -> Option<&'static str> {
    let code = text.trim().to_ascii_uppercase();
    PURPOSES.iter().find(|(c, _)| *c == code).map(|(c, _)| *c)
}

/// HL7's display name of `code`, if it is one of [`PURPOSES`].
pub fn purpose_display(code: &str) -> Option<&'static str> {
    PURPOSES.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
}
