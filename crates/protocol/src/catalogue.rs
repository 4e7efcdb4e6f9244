//! The data types a reading may carry: LOINC codes with their UCUM units.
//!
//! A reading names each observation by LOINC code and states its unit in
//! UCUM case-sensitive syntax; the unit must be one the catalogue lists for
//! that code, so a temperature in `[degF]` is never read as Celsius.

use serde::Serialize;

/// One kind of observation.
#[derive(Debug, PartialEq, Serialize)]
pub struct DataType {
    /// LOINC code, e.g. `8867-4`.
    pub code: &'static str,
    /// A short name for people and command lines, e.g. `heart-rate`.
    pub name: &'static str,
    /// The LOINC display name.
    pub display: &'static str,
    /// Accepted UCUM units; the first is the one medledger reports in.
    pub units: &'static [&'static str],
    /// Whether `v` is an array of samples rather than one number.
    pub waveform: bool,
    /// For waveforms, the sampling period in milliseconds.
    pub period_ms: Option<f64>,
    /// The usual adult reference interval (low, high) in the reporting
    /// unit, for marking values out of range; `None` where a single
    /// interval would mislead (weight, waveforms).
    pub reference: Option<(f64, f64)>,
}

impl DataType {
    /// The unit medledger reports this data type in.
    pub fn unit(&self) -> &'static str {
        self.units[0]
    }

    /// `value`, given in `unit` (one of [`DataType::units`]), converted to
    /// the unit medledger reports in.
    pub fn to_reporting_unit(&self, unit: &str, value: f64) -> f64 {
        match unit {
            "[degF]" => (value - 32.0) * 5.0 / 9.0,
            "[lb_av]" => value * 0.453_592_37,
            _ => value,
        }
    }
}

/// Every data type medledger accepts.
pub static CATALOGUE: &[DataType] = &[
    DataType {
        code: "8867-4",
        name: "heart-rate",
        display: "Heart rate",
        units: &["/min"],
        waveform: false,
        period_ms: None,
        reference: Some((60.0, 100.0)),
    },
    DataType {
        code: "59408-5",
        name: "spo2",
        display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        units: &["%"],
        waveform: false,
        period_ms: None,
        reference: Some((95.0, 100.0)),
    },
    DataType {
        code: "8310-5",
        name: "body-temperature",
        display: "Body temperature",
        units: &["Cel", "[degF]"],
        waveform: false,
        period_ms: None,
        reference: Some((36.1, 37.8)),
    },
    DataType {
        code: "8480-6",
        name: "systolic-bp",
        display: "Systolic blood pressure",
        units: &["mm[Hg]"],
        waveform: false,
        period_ms: None,
        reference: Some((90.0, 140.0)),
    },
    DataType {
        code: "8462-4",
        name: "diastolic-bp",
        display: "Diastolic blood pressure",
        units: &["mm[Hg]"],
        waveform: false,
        period_ms: None,
        reference: Some((60.0, 90.0)),
    },
    DataType {
        code: "9279-1",
        name: "respiratory-rate",
        display: "Respiratory rate",
        units: &["/min"],
        waveform: false,
        period_ms: None,
        reference: Some((12.0, 20.0)),
    },
    DataType {
        code: "2339-0",
        name: "blood-glucose",
        display: "Glucose [Mass/volume] in Blood",
        units: &["mg/dL"],
        waveform: false,
        period_ms: None,
        reference: Some((70.0, 140.0)),
    },
    DataType {
        code: "15074-8",
        name: "blood-glucose-molar",
        display: "Glucose [Moles/volume] in Blood",
        units: &["mmol/L"],
        waveform: false,
        period_ms: None,
        reference: Some((3.9, 7.8)),
    },
    DataType {
        code: "29463-7",
        name: "body-weight",
        display: "Body weight",
        units: &["kg", "[lb_av]"],
        waveform: false,
        period_ms: None,
        reference: None,
    },
    DataType {
        code: "11524-6",
        name: "ecg",
        display: "EKG study (single lead waveform)",
        units: &["mV"],
        waveform: true,
        period_ms: Some(4.0),
        reference: None,
    },
];

/// A UCUM unit as people write it: `Cel` is °C, `mm[Hg]` is mmHg,
/// `[lb_av]` is lb; units people already write as UCUM does (`/min`, `%`,
/// `kg`, `mg/dL`) are themselves.
pub fn unit_display(ucum: &str) -> &str {
    match ucum {
        "Cel" => "°C",
        "[degF]" => "°F",
        "mm[Hg]" => "mmHg",
        "[lb_av]" => "lb",
        other => other,
    }
}

/// Looks up a data type by LOINC code.
pub fn data_type(code: &str) -> Option<&'static DataType> {
    CATALOGUE.iter().find(|t| t.code == code)
}

/// Looks up a data type by LOINC code or by its short name.
pub fn data_type_by_name(name_or_code: &str) -> Option<&'static DataType> {
    CATALOGUE
        .iter()
        .find(|t| t.code == name_or_code || t.name == name_or_code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reporting_units() {
        let temp = super::data_type("8310-5").expect("listed");
        assert!((temp.to_reporting_unit("[degF]", 98.6) - 37.0).abs() < 1e-9);
        assert_eq!(temp.to_reporting_unit("Cel", 37.5), 37.5);
        let weight = super::data_type("29463-7").expect("listed");
        assert!((weight.to_reporting_unit("[lb_av]", 100.0) - 45.359_237).abs() < 1e-9);
        for t in super::CATALOGUE {
            for unit in &t.units[1..] {
                assert_ne!(
                    t.to_reporting_unit(unit, 10.0),
                    10.0,
                    "{unit} of {} has no conversion",
                    t.code
                );
            }
        }
    }

    use super::*;

    #[test]
    fn codes_and_names_are_unique_and_every_type_has_a_unit() {
        for (i, a) in CATALOGUE.iter().enumerate() {
            assert!(!a.units.is_empty(), "{} has no unit", a.code);
            assert_eq!(a.waveform, a.period_ms.is_some(), "{}", a.code);
            for b in &CATALOGUE[i + 1..] {
                assert_ne!(a.code, b.code);
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(data_type_by_name("spo2").map(|t| t.code), Some("59408-5"));
        assert_eq!(data_type("8867-4").map(DataType::unit), Some("/min"));
    }
}
