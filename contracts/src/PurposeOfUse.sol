// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// Why someone reads a patient's data, as a code of HL7 v3 PurposeOfUse
/// (the codes of FHIR's AuditEvent.purposeOfEvent), never as free text: a
/// purpose on chain is public forever, so it names no one and tells
/// nothing but its code. Codes are short text, left-aligned in a bytes32.
library PurposeOfUse {
    /// Whether `code` is one of the codes medledger takes.
    function isCode(bytes32 code) internal pure returns (bool) {
        return code == "TREAT" || code == "ETREAT" || code == "CAREMGT" || code == "COC"
            || code == "CLINTRCH" || code == "HRESCH" || code == "HOPERAT" || code == "HQUALIMP"
            || code == "PATSFTY" || code == "HSYSADMIN" || code == "RECORDMGT" || code == "PATRQT"
            || code == "FAMRQT" || code == "PWATRNY" || code == "SUPNWK" || code == "PUBHLTH"
            || code == "HPAYMT" || code == "HLEGAL" || code == "TRAIN";
    }
}
