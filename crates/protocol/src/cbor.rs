//! A small, strict CBOR (RFC 8949) codec for the subset medledger uses.
//!
//! The decoder accepts only the *core deterministic encoding* of RFC 8949
//! §4.2.1: definite lengths, the shortest argument for every integer and
//! length, floats in the shortest of half, single and double precision that
//! keeps the value, map keys in bytewise order of their encodings and never
//! repeated. So one value has exactly one encoding, and the hash of a reading
//! identifies it. Anything else is a typed [`CborError`].

use std::fmt;

/// A decoded CBOR data item.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Major type 0.
    Uint(u64),
    /// Major type 1: the value is `-1 - n`.
    Nint(u64),
    /// Major type 2.
    Bytes(Vec<u8>),
    /// Major type 3.
    Text(String),
    /// Major type 4.
    Array(Vec<Value>),
    /// Major type 5, in encoded (deterministic) key order.
    Map(Vec<(Value, Value)>),
    /// Major type 6.
    Tag(u64, Box<Value>),
    /// Major type 7 floats, widened to `f64`.
    Float(f64),
    /// `false` or `true`.
    Bool(bool),
    /// `null`.
    Null,
}

/// Why bytes are not an acceptable CBOR item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// The input ended inside an item.
    #[error("CBOR input ends early at byte {offset}")]
    Truncated {
        /// Where the missing bytes were expected.
        offset: usize,
    },
    /// Bytes follow the top-level item.
    #[error("{count} trailing bytes after the CBOR item")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Not well-formed CBOR (reserved additional information, break outside an
    /// indefinite item, invalid UTF-8...).
    #[error("malformed CBOR at byte {offset}: {what}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Well-formed, but not in deterministic encoding.
    #[error("non-canonical CBOR at byte {offset}: {what}")]
    NonCanonical {
        /// Where.
        offset: usize,
        /// Which rule of RFC 8949 §4.2.1 is broken.
        what: &'static str,
    },
    /// Nested deeper than the decoder allows.
    #[error("CBOR nested deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// Containers reserve at most this many slots up front; a length that
/// lies costs no more than the input that carries it.
const PREALLOCATE_MAX: usize = 64;

/// The deepest nesting the decoder accepts.
pub const MAX_DEPTH: usize = 16;

/// Decodes exactly one deterministic CBOR item from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    let mut d = Decoder { bytes, pos: 0 };
    let value = d.item(0)?;
    if d.pos != bytes.len() {
        return Err(CborError::TrailingBytes {
            count: bytes.len() - d.pos,
        });
    }
    Ok(value)
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CborError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(CborError::Truncated { offset: self.pos })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, CborError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, CborError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Reads the argument of a head whose additional information is `info`,
    /// insisting on its shortest form.
    fn argument(&mut self, info: u8, start: usize) -> Result<u64, CborError> {
        let (value, min) = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => (self.be(1)?, 24),
            25 => (self.be(2)?, 0x100),
            26 => (self.be(4)?, 0x1_0000),
            27 => (self.be(8)?, 0x1_0000_0000),
            31 => {
                return Err(CborError::NonCanonical {
                    offset: start,
                    what: "indefinite length",
                });
            }
            _ => {
                return Err(CborError::Malformed {
                    offset: start,
                    what: "reserved additional information",
                });
            }
        };
        if value < min {
            return Err(CborError::NonCanonical {
                offset: start,
                what: "integer or length not in its shortest form",
            });
        }
        Ok(value)
    }

    fn length(&mut self, info: u8, start: usize) -> Result<usize, CborError> {
        let len = self.argument(info, start)?;
        // Every element takes at least one byte, so a length beyond the
        // remaining input is truncated input, not a reason to allocate.
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.bytes.len() - self.pos)
            .ok_or(CborError::Truncated { offset: start })
    }

    fn item(&mut self, depth: usize) -> Result<Value, CborError> {
        if depth > MAX_DEPTH {
            return Err(CborError::TooDeep { max: MAX_DEPTH });
        }
        let start = self.pos;
        let head = self.byte()?;
        let (major, info) = (head >> 5, head & 0x1f);
        Ok(match major {
            0 => Value::Uint(self.argument(info, start)?),
            1 => Value::Nint(self.argument(info, start)?),
            2 => {
                let len = self.length(info, start)?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            3 => {
                let len = self.length(info, start)?;
                let text =
                    std::str::from_utf8(self.take(len)?).map_err(|_| CborError::Malformed {
                        offset: start,
                        what: "text string is not UTF-8",
                    })?;
                Value::Text(text.to_owned())
            }
            4 => {
                let len = self.length(info, start)?;
                let mut items = Vec::with_capacity(len.min(PREALLOCATE_MAX));
                for _ in 0..len {
                    items.push(self.item(depth + 1)?);
                }
                Value::Array(items)
            }
            5 => {
                let len = self.length(info, start)?;
                let mut entries = Vec::with_capacity(len.min(PREALLOCATE_MAX));
                let mut previous_key: Option<&[u8]> = None;
                for _ in 0..len {
                    let key_start = self.pos;
                    let key = self.item(depth + 1)?;
                    let key_bytes = &self.bytes[key_start..self.pos];
                    if let Some(previous) = previous_key {
                        match previous.cmp(key_bytes) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => {
                                return Err(CborError::Malformed {
                                    offset: key_start,
                                    what: "duplicate map key",
                                });
                            }
                            std::cmp::Ordering::Greater => {
                                return Err(CborError::NonCanonical {
                                    offset: key_start,
                                    what: "map keys not in bytewise order",
                                });
                            }
                        }
                    }
                    previous_key = Some(key_bytes);
                    let value = self.item(depth + 1)?;
                    entries.push((key, value));
                }
                Value::Map(entries)
            }
            6 => {
                let tag = self.argument(info, start)?;
                Value::Tag(tag, Box::new(self.item(depth + 1)?))
            }
            _ => self.simple(info, start)?,
        })
    }

    fn simple(&mut self, info: u8, start: usize) -> Result<Value, CborError> {
        let value = match info {
            20 => Value::Bool(false),
            21 => Value::Bool(true),
            22 => Value::Null,
            25 => Value::Float(f16_to_f64(self.be(2)? as u16)),
            26 => Value::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            27 => Value::Float(f64::from_bits(self.be(8)?)),
            31 => {
                return Err(CborError::Malformed {
                    offset: start,
                    what: "break outside an indefinite-length item",
                });
            }
            _ => {
                return Err(CborError::Malformed {
                    offset: start,
                    what: "unsupported simple value",
                });
            }
        };
        if let Value::Float(f) = value {
            let width = match info {
                25 => 2,
                26 => 4,
                _ => 8,
            };
            // NaN has one encoding: the half-precision quiet NaN 0xf97e00.
            let canonical_nan =
                !f.is_nan() || (width == 2 && self.bytes[start + 1..start + 3] == [0x7e, 0x00]);
            if float_width(f) != width || !canonical_nan {
                return Err(CborError::NonCanonical {
                    offset: start,
                    what: "float not in its shortest exact form",
                });
            }
        }
        Ok(value)
    }
}

/// Appends deterministic CBOR to a buffer. Maps must be written with their
/// keys already in deterministic order; [`Encoder::map_sorted`] sorts.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        match arg {
            0..=23 => self.buf.push(m | arg as u8),
            24..=0xff => self.buf.extend_from_slice(&[m | 24, arg as u8]),
            0x100..=0xffff => {
                self.buf.push(m | 25);
                self.buf.extend_from_slice(&(arg as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.buf.push(m | 26);
                self.buf.extend_from_slice(&(arg as u32).to_be_bytes());
            }
            _ => {
                self.buf.push(m | 27);
                self.buf.extend_from_slice(&arg.to_be_bytes());
            }
        }
    }

    /// An unsigned integer.
    pub fn uint(&mut self, v: u64) -> &mut Self {
        self.head(0, v);
        self
    }

    /// A signed integer.
    pub fn int(&mut self, v: i64) -> &mut Self {
        if v >= 0 {
            self.head(0, v as u64);
        } else {
            self.head(1, (-1 - v) as u64);
        }
        self
    }

    /// A byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.head(2, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    /// A text string.
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.head(3, v.len() as u64);
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// The head of an array of `len` items; the items follow.
    pub fn array(&mut self, len: usize) -> &mut Self {
        self.head(4, len as u64);
        self
    }

    /// The head of a map of `len` entries; the keys and values follow.
    pub fn map(&mut self, len: usize) -> &mut Self {
        self.head(5, len as u64);
        self
    }

    /// A tag; its content follows.
    pub fn tag(&mut self, tag: u64) -> &mut Self {
        self.head(6, tag);
        self
    }

    /// A float in the shortest of half, single or double precision that
    /// keeps its value exactly.
    pub fn float(&mut self, v: f64) -> &mut Self {
        match float_width(v) {
            2 => {
                self.buf.push(0xf9);
                self.buf.extend_from_slice(&f64_to_f16(v).to_be_bytes());
            }
            4 => {
                self.buf.push(0xfa);
                self.buf
                    .extend_from_slice(&(v as f32).to_bits().to_be_bytes());
            }
            _ => {
                self.buf.push(0xfb);
                self.buf.extend_from_slice(&v.to_bits().to_be_bytes());
            }
        }
        self
    }

    /// Bytes that are already one encoded CBOR item.
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(encoded);
        self
    }

    /// A map given as pre-encoded `(key, value)` items, written in
    /// deterministic key order.
    pub fn map_sorted(&mut self, mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> &mut Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.map(entries.len());
        for (k, v) in entries {
            self.buf.extend_from_slice(&k);
            self.buf.extend_from_slice(&v);
        }
        self
    }
}

/// Encodes one item with a fresh encoder.
pub fn encode_with(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
    let mut e = Encoder::new();
    f(&mut e);
    e.into_bytes()
}

/// The number of bytes (2, 4 or 8) of the shortest IEEE 754 form that
/// holds `v` exactly. NaN is always the half-precision quiet NaN.
fn float_width(v: f64) -> usize {
    if v.is_nan() {
        return 2;
    }
    if f16_to_f64(f64_to_f16(v)).to_bits() == v.to_bits() {
        2
    } else if f64::from(v as f32).to_bits() == v.to_bits() {
        4
    } else {
        8
    }
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f64::from(h & 0x3ff);
    sign * match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// Converts to half precision, truncating; callers check exactness by
/// converting back.
fn f64_to_f16(v: f64) -> u16 {
    if v.is_nan() {
        return 0x7e00;
    }
    let sign: u16 = if v.is_sign_negative() { 0x8000 } else { 0 };
    let a = v.abs();
    if a == f64::INFINITY {
        return sign | 0x7c00;
    }
    let bits = a.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    if exp > 15 {
        // Not representable; any value that does not round-trip will do.
        return sign | 0x7bff;
    }
    if exp < -14 {
        // Subnormal: units of 2^-24.
        return sign | (a * 2f64.powi(24)) as u16;
    }
    sign | (((exp + 15) as u16) << 10) | ((bits >> 42) & 0x3ff) as u16
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Uint(_) | Value::Nint(_) => f.write_str("an integer"),
            Value::Bytes(_) => f.write_str("a byte string"),
            Value::Text(_) => f.write_str("a text string"),
            Value::Array(_) => f.write_str("an array"),
            Value::Map(_) => f.write_str("a map"),
            Value::Tag(..) => f.write_str("a tag"),
            Value::Float(_) => f.write_str("a float"),
            Value::Bool(_) => f.write_str("a boolean"),
            Value::Null => f.write_str("null"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc8949_appendix_a_floats_use_the_shortest_form() {
        for (v, enc) in [
            (0.0, "f90000"),
            (-0.0, "f98000"),
            (1.0, "f93c00"),
            (1.5, "f93e00"),
            (65504.0, "f97bff"),
            (100000.0, "fa47c35000"),
            (3.4028234663852886e+38, "fa7f7fffff"),
            (1.1, "fb3ff199999999999a"),
            (5.960464477539063e-8, "f90001"),
            (0.00006103515625, "f90400"),
            (-4.0, "f9c400"),
            (-4.1, "fbc010666666666666"),
            (f64::INFINITY, "f97c00"),
            (f64::NEG_INFINITY, "f9fc00"),
            (36.6, "fb40424ccccccccccd"),
            (72.0, "f95480"),
        ] {
            let bytes = encode_with(|e| {
                e.float(v);
            });
            assert_eq!(bytes, hex(enc), "{v}");
            assert_eq!(decode(&bytes).unwrap(), Value::Float(v));
        }
        assert_eq!(
            encode_with(|e| {
                e.float(f64::NAN);
            }),
            hex("f97e00")
        );
    }

    #[test]
    fn integers_round_trip_in_shortest_form() {
        for (v, enc) in [
            (0i64, "00"),
            (23, "17"),
            (24, "1818"),
            (1000, "1903e8"),
            (1_000_000_000_000, "1b000000e8d4a51000"),
            (-1, "20"),
            (-1000, "3903e7"),
        ] {
            let bytes = encode_with(|e| {
                e.int(v);
            });
            assert_eq!(bytes, hex(enc));
            decode(&bytes).unwrap();
        }
    }

    #[test]
    fn non_canonical_forms_are_refused() {
        for (enc, what) in [
            ("1817", "integer or length not in its shortest form"),
            ("190017", "integer or length not in its shortest form"),
            ("5f4100ff", "indefinite length"),
            ("fa3f800000", "float not in its shortest exact form"),
            ("a2616201616100", "map keys not in bytewise order"),
        ] {
            match decode(&hex(enc)) {
                Err(CborError::NonCanonical { what: w, .. }) => assert_eq!(w, what, "{enc}"),
                other => panic!("{enc}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_input_is_refused_with_its_cause() {
        assert!(matches!(
            decode(&hex("a2616100616100")),
            Err(CborError::Malformed {
                what: "duplicate map key",
                ..
            })
        ));
        assert!(matches!(
            decode(&hex("62c328")),
            Err(CborError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&hex("1c")),
            Err(CborError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&hex("ff")),
            Err(CborError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&hex("5a ffffffff".replace(' ', "").as_str())),
            Err(CborError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&hex("0000")),
            Err(CborError::TrailingBytes { count: 1 })
        ));
        assert!(matches!(
            decode(&[0x81; 40]),
            Err(CborError::TooDeep { .. })
        ));
        assert!(matches!(
            decode(&hex("9bffffffffffffffff")),
            Err(CborError::Truncated { .. })
        ));
    }
}
