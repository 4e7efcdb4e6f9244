//! The `Reading` a device signs: its CBOR payload and typed validation.

use crate::catalogue::{self, DataType};
use crate::cbor::{self, Encoder, Value};
use std::fmt;

/// The 96-bit EPC of a device, as carried in `dev`. `medledger-pki` decodes
/// it as SGTIN-96; on the wire it is 12 opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 12]);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// One observation in a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// What was observed.
    pub data_type: &'static DataType,
    /// The value, in `unit`.
    pub value: ObservedValue,
    /// One of `data_type.units`.
    pub unit: &'static str,
}

/// A number or, for waveforms, the samples.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservedValue {
    /// One number.
    Scalar(f64),
    /// Samples taken every `data_type.period_ms`.
    Waveform(Vec<f64>),
}

impl Observation {
    /// A scalar observation of `data_type` in its default unit.
    pub fn scalar(data_type: &'static DataType, value: f64) -> Self {
        Observation {
            data_type,
            value: ObservedValue::Scalar(value),
            unit: data_type.unit(),
        }
    }

    /// A waveform observation of `data_type` in its default unit.
    pub fn waveform(data_type: &'static DataType, samples: Vec<f64>) -> Self {
        Observation {
            data_type,
            value: ObservedValue::Waveform(samples),
            unit: data_type.unit(),
        }
    }
}

/// A device's measurement: what the COSE_Sign1 payload says, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device's EPC; must equal the EPC in its certificate.
    pub dev: DeviceId,
    /// Strictly increasing per device.
    pub seq: u64,
    /// When it was measured, Unix milliseconds.
    pub ts_ms: u64,
    /// At least one observation.
    pub obs: Vec<Observation>,
    /// The device model, if the device says.
    pub model: Option<String>,
}

/// Why a payload is not a valid reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Not deterministic, well-formed CBOR.
    #[error("payload: {0}")]
    Cbor(#[from] cbor::CborError),
    /// A required field is absent.
    #[error("payload field `{0}` is missing")]
    Missing(&'static str),
    /// A field has the wrong CBOR type or an impossible value.
    #[error("payload field `{field}` {problem}")]
    Field {
        /// Which field (`obs[2].v`, `dev`...).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A key this version does not know.
    #[error("payload has unknown field `{0}`")]
    UnknownField(String),
    /// The LOINC code is not in the catalogue.
    #[error("observation {index}: LOINC code `{code}` is not in the catalogue")]
    UnknownCode {
        /// Position in `obs`.
        index: usize,
        /// The code given.
        code: String,
    },
    /// The unit is not one the catalogue lists for the code.
    #[error(
        "observation {index}: unit `{unit}` is not valid for {code}; expected one of {expected:?}"
    )]
    WrongUnit {
        /// Position in `obs`.
        index: usize,
        /// The code.
        code: &'static str,
        /// The unit given.
        unit: String,
        /// The units allowed.
        expected: &'static [&'static str],
    },
}

fn field(field: impl Into<String>, problem: impl Into<String>) -> PayloadError {
    PayloadError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

impl Reading {
    /// The deterministic CBOR payload.
    pub fn to_cbor(&self) -> Vec<u8> {
        let key = |k: &str| {
            cbor::encode_with(|e| {
                e.text(k);
            })
        };
        let mut entries = vec![
            (
                key("dev"),
                cbor::encode_with(|e| {
                    e.bytes(&self.dev.0);
                }),
            ),
            (
                key("seq"),
                cbor::encode_with(|e| {
                    e.uint(self.seq);
                }),
            ),
            (
                key("ts"),
                cbor::encode_with(|e| {
                    e.uint(self.ts_ms);
                }),
            ),
            (
                key("obs"),
                cbor::encode_with(|e| {
                    e.array(self.obs.len());
                    for o in &self.obs {
                        encode_observation(e, o);
                    }
                }),
            ),
        ];
        if let Some(model) = &self.model {
            entries.push((
                key("model"),
                cbor::encode_with(|e| {
                    e.text(model);
                }),
            ));
        }
        cbor::encode_with(|e| {
            e.map_sorted(entries);
        })
    }

    /// Parses and checks a payload.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, PayloadError> {
        let Value::Map(entries) = cbor::decode(bytes)? else {
            return Err(field("(top level)", "is not a map"));
        };
        let (mut dev, mut seq, mut ts, mut obs, mut model) = (None, None, None, None, None);
        for (k, v) in entries {
            let Value::Text(k) = k else {
                return Err(field("(key)", "is not a text string"));
            };
            match k.as_str() {
                "dev" => dev = Some(device_id(v)?),
                "seq" => seq = Some(uint("seq", v)?),
                "ts" => ts = Some(uint("ts", v)?),
                "obs" => obs = Some(observations(v)?),
                "model" => match v {
                    Value::Text(m) => model = Some(m),
                    other => return Err(field("model", format!("is {other}, expected text"))),
                },
                _ => return Err(PayloadError::UnknownField(k)),
            }
        }
        Ok(Reading {
            dev: dev.ok_or(PayloadError::Missing("dev"))?,
            seq: seq.ok_or(PayloadError::Missing("seq"))?,
            ts_ms: ts.ok_or(PayloadError::Missing("ts"))?,
            obs: obs.ok_or(PayloadError::Missing("obs"))?,
            model,
        })
    }
}

fn encode_observation(e: &mut Encoder, o: &Observation) {
    let key = |k: &str| {
        cbor::encode_with(|e| {
            e.text(k);
        })
    };
    let value = cbor::encode_with(|e| match &o.value {
        ObservedValue::Scalar(v) => {
            e.float(*v);
        }
        ObservedValue::Waveform(samples) => {
            e.array(samples.len());
            for s in samples {
                e.float(*s);
            }
        }
    });
    e.map_sorted(vec![
        (
            key("code"),
            cbor::encode_with(|e| {
                e.text(o.data_type.code);
            }),
        ),
        (key("v"), value),
        (
            key("unit"),
            cbor::encode_with(|e| {
                e.text(o.unit);
            }),
        ),
    ]);
}

fn device_id(v: Value) -> Result<DeviceId, PayloadError> {
    match v {
        Value::Bytes(b) => <[u8; 12]>::try_from(b.as_slice())
            .map(DeviceId)
            .map_err(|_| {
                field(
                    "dev",
                    format!("is {} bytes, expected 12 (an SGTIN-96 EPC)", b.len()),
                )
            }),
        other => Err(field("dev", format!("is {other}, expected a byte string"))),
    }
}

fn uint(name: &str, v: Value) -> Result<u64, PayloadError> {
    match v {
        Value::Uint(n) => Ok(n),
        other => Err(field(
            name,
            format!("is {other}, expected an unsigned integer"),
        )),
    }
}

/// The largest integer an `f64` holds exactly.
const MAX_EXACT_INT: u64 = 1 << 53;

fn number(name: &str, v: &Value) -> Result<f64, PayloadError> {
    let n = match *v {
        Value::Float(f) => f,
        Value::Uint(n) if n <= MAX_EXACT_INT => n as f64,
        Value::Nint(n) if n < MAX_EXACT_INT => -1.0 - n as f64,
        ref other => return Err(field(name, format!("is {other}, expected a number"))),
    };
    if n.is_finite() {
        Ok(n)
    } else {
        Err(field(name, "is not a finite number"))
    }
}

fn observations(v: Value) -> Result<Vec<Observation>, PayloadError> {
    let Value::Array(items) = v else {
        return Err(field("obs", format!("is {v}, expected an array")));
    };
    if items.is_empty() {
        return Err(field("obs", "is empty"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| observation(i, item))
        .collect()
}

fn observation(index: usize, v: Value) -> Result<Observation, PayloadError> {
    let at = |f: &str| format!("obs[{index}].{f}");
    let Value::Map(entries) = v else {
        return Err(field(
            format!("obs[{index}]"),
            format!("is {v}, expected a map"),
        ));
    };
    let (mut code, mut value, mut unit) = (None, None, None);
    for (k, v) in entries {
        match (k, v) {
            (Value::Text(k), Value::Text(t)) if k == "code" => code = Some(t),
            (Value::Text(k), Value::Text(t)) if k == "unit" => unit = Some(t),
            (Value::Text(k), v) if k == "v" => value = Some(v),
            (Value::Text(k), v) if k == "code" || k == "unit" => {
                return Err(field(at(&k), format!("is {v}, expected text")));
            }
            (Value::Text(k), _) => return Err(PayloadError::UnknownField(at(&k))),
            _ => return Err(field(format!("obs[{index}]"), "has a key that is not text")),
        }
    }
    let code = code.ok_or_else(|| field(at("code"), "is missing"))?;
    let unit = unit.ok_or_else(|| field(at("unit"), "is missing"))?;
    let value = value.ok_or_else(|| field(at("v"), "is missing"))?;
    let data_type = catalogue::data_type(&code).ok_or(PayloadError::UnknownCode { index, code })?;
    let Some(unit) = data_type.units.iter().copied().find(|u| *u == unit) else {
        return Err(PayloadError::WrongUnit {
            index,
            code: data_type.code,
            unit,
            expected: data_type.units,
        });
    };
    let value = match (data_type.waveform, value) {
        (true, Value::Array(samples)) if !samples.is_empty() => ObservedValue::Waveform(
            samples
                .iter()
                .map(|s| number(&at("v"), s))
                .collect::<Result<_, _>>()?,
        ),
        (true, _) => {
            return Err(field(
                at("v"),
                format!(
                    "must be a non-empty array of samples for {}",
                    data_type.code
                ),
            ));
        }
        (false, v) => ObservedValue::Scalar(number(&at("v"), &v)?),
    };
    Ok(Observation {
        data_type,
        value,
        unit,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalogue::data_type_by_name;

    fn reading() -> Reading {
        Reading {
            dev: DeviceId([
                0x30, 0x74, 0x25, 0x7B, 0xF7, 0x19, 0x4E, 0x40, 0, 0, 0x1A, 0x85,
            ]),
            seq: 7,
            ts_ms: 1_763_000_000_000,
            obs: vec![
                Observation::scalar(data_type_by_name("heart-rate").unwrap(), 72.0),
                Observation::waveform(data_type_by_name("ecg").unwrap(), vec![0.1, -0.25, 1.5]),
            ],
            model: Some("HR-100".into()),
        }
    }

    #[test]
    fn payload_round_trips_with_keys_in_deterministic_order() {
        let r = reading();
        let bytes = r.to_cbor();
        assert_eq!(Reading::from_cbor(&bytes).unwrap(), r);
        // "ts" sorts before the three-letter keys, "model" last.
        let order: Vec<_> = match cbor::decode(&bytes).unwrap() {
            Value::Map(e) => e.into_iter().map(|(k, _)| k).collect(),
            _ => unreachable!(),
        };
        let names: Vec<_> = order
            .iter()
            .map(|k| match k {
                Value::Text(t) => t.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(names, ["ts", "dev", "obs", "seq", "model"]);
    }

    #[test]
    fn wrong_units_codes_and_shapes_are_named() {
        let mut r = reading();
        r.obs[0].unit = "Cel";
        assert!(matches!(
            Reading::from_cbor(&r.to_cbor()),
            Err(PayloadError::WrongUnit {
                index: 0,
                code: "8867-4",
                ..
            })
        ));
        let mut r = reading();
        r.obs[1].value = ObservedValue::Scalar(1.0);
        let err = Reading::from_cbor(&r.to_cbor()).unwrap_err();
        assert!(err.to_string().contains("obs[1].v"), "{err}");
        let mut r = reading();
        r.obs.clear();
        assert!(
            Reading::from_cbor(&r.to_cbor())
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
