//! What the rule contracts are asked and what they answer.

use crate::bindings::RuleManager::RuleInput;
use alloy::primitives::FixedBytes;
use medledger_protocol::{ObservedValue, ProblemType, Reading};
use std::fmt;

/// A rule contract's answer for one reading (`Reason` in
/// `contracts/src/RuleManager.sol`; the numbers are stable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleReason {
    /// The reading is allowed.
    Allow,
    /// No device with this EPC is registered.
    UnknownDevice,
    /// The device was retired.
    DeviceInactive,
    /// No rule governs the device.
    NoRule,
    /// The rule contract failed (reverted).
    RuleFailed,
    /// The device's group may not send this data type.
    TypeNotAllowed,
    /// The rule knows no range for this data type.
    NoRange,
    /// A value is below the allowed range.
    BelowRange,
    /// A value is above the allowed range.
    AboveRange,
    /// The input itself is inconsistent (minimum above maximum, e.g. an
    /// empty waveform).
    InvalidInput,
    /// A code this version does not know (a newer rule contract).
    Other(u16),
}

impl RuleReason {
    /// The reason for a code returned by `RuleManager.check`.
    pub fn from_code(code: u16) -> RuleReason {
        match code {
            0 => RuleReason::Allow,
            1 => RuleReason::UnknownDevice,
            2 => RuleReason::DeviceInactive,
            3 => RuleReason::NoRule,
            4 => RuleReason::RuleFailed,
            5 => RuleReason::TypeNotAllowed,
            6 => RuleReason::NoRange,
            7 => RuleReason::BelowRange,
            8 => RuleReason::AboveRange,
            9 => RuleReason::InvalidInput,
            n => RuleReason::Other(n),
        }
    }

    /// Whether the reading may pass.
    pub fn is_allow(&self) -> bool {
        *self == RuleReason::Allow
    }

    /// What a device is told when a reading gets this reason: the device
    /// is unknown or deactivated, or a rule denied the reading.
    pub fn refusal(&self) -> (ProblemType, String) {
        match self {
            RuleReason::UnknownDevice => (
                ProblemType::UnknownDevice,
                "the rule manager does not know the device".into(),
            ),
            RuleReason::DeviceInactive => (
                ProblemType::UnknownDevice,
                "the device is deactivated".into(),
            ),
            other => (
                ProblemType::RuleViolation,
                format!("a rule contract denied the reading: {}", other.name()),
            ),
        }
    }

    /// A stable name, e.g. `type-not-allowed`.
    pub fn name(&self) -> String {
        match self {
            RuleReason::Allow => "allow".into(),
            RuleReason::UnknownDevice => "unknown-device".into(),
            RuleReason::DeviceInactive => "device-inactive".into(),
            RuleReason::NoRule => "no-rule".into(),
            RuleReason::RuleFailed => "rule-failed".into(),
            RuleReason::TypeNotAllowed => "type-not-allowed".into(),
            RuleReason::NoRange => "no-range".into(),
            RuleReason::BelowRange => "below-range".into(),
            RuleReason::AboveRange => "above-range".into(),
            RuleReason::InvalidInput => "invalid-input".into(),
            RuleReason::Other(n) => format!("reason-{n}"),
        }
    }
}

impl fmt::Display for RuleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A LOINC code as the rules key data types (`bytes16`, left-aligned).
pub fn code_key(code: &str) -> FixedBytes<16> {
    let mut out = FixedBytes::<16>::ZERO;
    let n = code.len().min(16);
    out[..n].copy_from_slice(&code.as_bytes()[..n]);
    out
}

/// A value in the reporting unit as the rules take it: times 1000, rounded,
/// saturating at the ends of `int64`.
pub fn milli(value: f64) -> i64 {
    // `as` saturates and maps NaN to 0; readings never carry NaN.
    (value * 1000.0).round() as i64
}

/// The rule inputs for a reading: one per observation, in the data type's
/// reporting unit; a waveform gives the minimum and maximum of its samples.
pub fn rule_inputs(reading: &Reading) -> Vec<RuleInput> {
    reading
        .obs
        .iter()
        .map(|o| {
            let convert = |v: f64| milli(o.data_type.to_reporting_unit(o.unit, v));
            let (min, max) = match &o.value {
                ObservedValue::Scalar(v) => (convert(*v), convert(*v)),
                ObservedValue::Waveform(samples) => samples
                    .iter()
                    .map(|v| convert(*v))
                    .fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v))),
            };
            RuleInput {
                epc: FixedBytes(reading.dev.0),
                code: code_key(o.data_type.code),
                min,
                max,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use medledger_protocol::{DeviceId, Observation, catalogue::data_type};

    #[test]
    fn inputs_from_a_reading() {
        let temp = data_type("8310-5").expect("listed");
        let ecg = data_type("11524-6").expect("listed");
        let reading = Reading {
            dev: DeviceId([7; 12]),
            seq: 1,
            ts_ms: 0,
            obs: vec![
                Observation {
                    data_type: temp,
                    value: ObservedValue::Scalar(98.6),
                    unit: "[degF]",
                },
                Observation {
                    data_type: ecg,
                    value: ObservedValue::Waveform(vec![0.1, -0.25, 1.2]),
                    unit: "mV",
                },
            ],
            model: None,
        };
        let inputs = rule_inputs(&reading);
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0].epc.0, [7; 12]);
        assert_eq!(&inputs[0].code[..6], b"8310-5");
        assert_eq!((inputs[0].min, inputs[0].max), (37_000, 37_000));
        assert_eq!((inputs[1].min, inputs[1].max), (-250, 1_200));
    }

    #[test]
    fn reasons_round_trip() {
        for code in 0..=10 {
            let reason = RuleReason::from_code(code);
            assert_eq!(reason.is_allow(), code == 0);
            assert!(!reason.name().is_empty());
        }
        assert_eq!(RuleReason::from_code(5).to_string(), "type-not-allowed");
        assert_eq!(RuleReason::from_code(99), RuleReason::Other(99));
    }
}
