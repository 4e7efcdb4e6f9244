//! EPC SGTIN-96 encoding and decoding, following the GS1 EPC Tag Data
//! Standard (TDS).
//!
//! An SGTIN (Serialised Global Trade Item Number) identifies one individual
//! trade item: a GS1 company prefix, an item reference (which carries the
//! GTIN indicator digit in front) and a serial number. The SGTIN-96 binary
//! encoding packs it into 96 bits (12 bytes), most significant bit first:
//!
//! | bits | field          | notes                                         |
//! |------|----------------|-----------------------------------------------|
//! | 8    | header         | always `0x30` for SGTIN-96                    |
//! | 3    | filter         | 0..=7 (e.g. 1 = point of sale item)           |
//! | 3    | partition      | 0..=6, splits the next 44 bits (table below)  |
//! | M    | company prefix | decimal, `L` digits                           |
//! | N    | item reference | decimal, `13 - L` digits (incl. indicator)    |
//! | 38   | serial         | 0..=274877906943                              |
//!
//! | partition | company prefix bits / digits | item reference bits / digits |
//! |-----------|------------------------------|------------------------------|
//! | 0         | 40 / 12                      | 4 / 1                        |
//! | 1         | 37 / 11                      | 7 / 2                        |
//! | 2         | 34 / 10                      | 10 / 3                       |
//! | 3         | 30 / 9                       | 14 / 4                       |
//! | 4         | 27 / 8                       | 17 / 5                       |
//! | 5         | 24 / 7                       | 20 / 6                       |
//! | 6         | 20 / 6                       | 24 / 7                       |
//!
//! The textual form is the EPC tag URI
//! `urn:epc:tag:sgtin-96:F.CCCCCCC.IIIIII.SSSS` (filter, company prefix and
//! item reference with leading zeros, serial in decimal without leading
//! zeros). [`Epc`] always holds a well-formed SGTIN-96; every constructor
//! validates its input and reports a precise [`EpcError`].

use std::fmt;
use std::str::FromStr;

/// Header byte identifying the SGTIN-96 encoding.
const HEADER: u8 = 0x30;
/// Number of bits of the serial number field.
const SERIAL_BITS: u32 = 38;
/// Largest serial number that fits in 38 bits.
const SERIAL_MAX: u64 = (1 << SERIAL_BITS) - 1;
/// Combined width of company prefix and item reference fields.
const PAYLOAD_BITS: u32 = 44;
/// Total decimal digits of company prefix plus item reference.
const GTIN_DIGITS: usize = 13;
/// Prefix of the SGTIN-96 EPC tag URI.
const URI_PREFIX: &str = "urn:epc:tag:sgtin-96:";
/// Number of hex digits in the textual hex form.
const HEX_LEN: usize = 24;
/// Longest user-supplied text echoed back in an error message.
const SNIPPET_MAX: usize = 48;

/// One row of the SGTIN-96 partition table.
#[derive(Clone, Copy, Debug)]
struct Partition {
    cp_bits: u32,
    cp_digits: usize,
    ir_bits: u32,
    ir_digits: usize,
}

/// SGTIN-96 partition table (TDS), indexed by partition value.
#[rustfmt::skip]
const PARTITIONS: [Partition; 7] = [
    Partition { cp_bits: 40, cp_digits: 12, ir_bits: 4, ir_digits: 1 },
    Partition { cp_bits: 37, cp_digits: 11, ir_bits: 7, ir_digits: 2 },
    Partition { cp_bits: 34, cp_digits: 10, ir_bits: 10, ir_digits: 3 },
    Partition { cp_bits: 30, cp_digits: 9, ir_bits: 14, ir_digits: 4 },
    Partition { cp_bits: 27, cp_digits: 8, ir_bits: 17, ir_digits: 5 },
    Partition { cp_bits: 24, cp_digits: 7, ir_bits: 20, ir_digits: 6 },
    Partition { cp_bits: 20, cp_digits: 6, ir_bits: 24, ir_digits: 7 },
];

/// Error returned when an SGTIN-96 EPC is malformed. Each variant names the
/// offending field and says what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EpcError {
    /// The header byte is not `0x30` (the EPC is not an SGTIN-96).
    #[error("EPC header is 0x{found:02X}, expected 0x30 (SGTIN-96)")]
    WrongHeader {
        /// Header byte that was found.
        found: u8,
    },
    /// The partition value is 7, which the SGTIN-96 partition table does not define.
    #[error("EPC partition is {0}, expected 0..=6 (SGTIN-96 partition table)")]
    Partition(u8),
    /// The filter value is not a single digit 0..=7.
    #[error("EPC filter `{0}` is invalid, expected a single digit 0..=7")]
    Filter(String),
    /// The company prefix has the wrong digit count, contains non-digits, or
    /// its value does not fit the digit count of its partition.
    #[error("EPC company prefix `{found}` is invalid, expected {expected}")]
    CompanyPrefix {
        /// Company prefix text (or decoded decimal value) that was found.
        found: String,
        /// Description of what was expected.
        expected: String,
    },
    /// The item reference has the wrong digit count, contains non-digits, or
    /// its value does not fit the digit count of its partition.
    #[error("EPC item reference `{found}` is invalid, expected {expected}")]
    ItemReference {
        /// Item reference text (or decoded decimal value) that was found.
        found: String,
        /// Description of what was expected.
        expected: String,
    },
    /// The serial is not numeric, has leading zeros, or exceeds 2^38-1.
    #[error("EPC serial `{found}` is invalid, expected {expected}")]
    Serial {
        /// Serial text (or value) that was found.
        found: String,
        /// Description of what was expected.
        expected: String,
    },
    /// The hex form does not have exactly 24 characters.
    #[error("EPC hex is {found} characters long, expected exactly 24 hex digits")]
    Length {
        /// Number of characters that were found.
        found: usize,
    },
    /// The hex form contains a character that is not a hex digit.
    #[error(
        "EPC hex contains a non-hexadecimal character, expected only 24 digits 0-9, a-f or A-F"
    )]
    Hex,
    /// The text is not an SGTIN-96 tag URI with four dot-separated fields.
    #[error(
        "EPC tag URI `{0}` is malformed, expected `urn:epc:tag:sgtin-96:F.CCCCCCC.IIIIII.SSSS` \
         (filter, company prefix, item reference, serial)"
    )]
    Uri(String),
}

/// A well-formed 96-bit SGTIN-96 EPC (binary form, 12 bytes, big endian).
///
/// Construct it with [`Epc::new`], [`Epc::from_bytes`], [`Epc::from_hex`] or
/// [`Epc::parse`] (also via [`FromStr`]); all of them validate the value.
/// [`fmt::Display`] and serde use the EPC tag URI form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Epc([u8; 12]);

/// Raw bit fields of a 96-bit value, before validation.
#[derive(Clone, Copy, Debug)]
struct Raw {
    header: u8,
    filter: u8,
    partition: u8,
    payload: u64,
    serial: u64,
}

impl Raw {
    fn extract(b: &[u8; 12]) -> Self {
        let mut wide = [0u8; 16];
        wide[4..].copy_from_slice(b);
        let v = u128::from_be_bytes(wide);
        let serial_and_payload = v & ((1u128 << (PAYLOAD_BITS + SERIAL_BITS)) - 1);
        Raw {
            header: ((v >> 88) & 0xFF) as u8,
            filter: ((v >> 85) & 0x7) as u8,
            partition: ((v >> 82) & 0x7) as u8,
            payload: (serial_and_payload >> SERIAL_BITS) as u64,
            serial: (v as u64) & SERIAL_MAX,
        }
    }
}

impl Epc {
    /// Header byte of every SGTIN-96 EPC (`0x30`).
    pub const HEADER: u8 = HEADER;
    /// Largest serial number an SGTIN-96 can carry (2^38 - 1 = 274877906943).
    pub const SERIAL_MAX: u64 = SERIAL_MAX;

    /// Builds an SGTIN-96 from its fields.
    ///
    /// `company_prefix` must be 6..=12 decimal digits (leading zeros are
    /// significant and select the partition); `item_reference` must be
    /// exactly `13 - company_prefix.len()` decimal digits (indicator digit
    /// first); `filter` must be 0..=7 and `serial` at most
    /// [`Epc::SERIAL_MAX`].
    pub fn new(
        filter: u8,
        company_prefix: &str,
        item_reference: &str,
        serial: u64,
    ) -> Result<Epc, EpcError> {
        if filter > 7 {
            return Err(EpcError::Filter(filter.to_string()));
        }
        let (partition, cp) = parse_company_prefix(company_prefix)?;
        let spec = spec(partition);
        let ir = parse_item_reference(item_reference, spec)?;
        if serial > SERIAL_MAX {
            return Err(serial_too_large(serial.to_string()));
        }
        Ok(Epc(encode(filter, partition, cp, ir, serial)))
    }

    /// Validates 12 bytes as a well-formed SGTIN-96: header `0x30`,
    /// partition 0..=6, and company prefix / item reference values that fit
    /// the decimal digit counts of the partition.
    pub fn from_bytes(b: [u8; 12]) -> Result<Epc, EpcError> {
        let raw = Raw::extract(&b);
        if raw.header != HEADER {
            return Err(EpcError::WrongHeader { found: raw.header });
        }
        let spec = PARTITIONS
            .get(usize::from(raw.partition))
            .copied()
            .ok_or(EpcError::Partition(raw.partition))?;
        let (cp, ir) = split_payload(raw.payload, spec);
        if cp >= pow10(spec.cp_digits) {
            return Err(EpcError::CompanyPrefix {
                found: cp.to_string(),
                expected: format!(
                    "a value of at most {} decimal digits for partition {}",
                    spec.cp_digits, raw.partition
                ),
            });
        }
        if ir >= pow10(spec.ir_digits) {
            return Err(EpcError::ItemReference {
                found: ir.to_string(),
                expected: format!(
                    "a value of at most {} decimal digits for partition {}",
                    spec.ir_digits, raw.partition
                ),
            });
        }
        Ok(Epc(b))
    }

    /// The 12 bytes of the binary EPC.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    /// The binary EPC as 24 uppercase hex digits, e.g. `3074257BF7194E4000001A85`.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut s = String::with_capacity(HEX_LEN);
        for &byte in &self.0 {
            s.push(char::from(DIGITS[usize::from(byte >> 4)]));
            s.push(char::from(DIGITS[usize::from(byte & 0x0F)]));
        }
        s
    }

    /// Parses 24 hex digits (either case, no prefix or separators) and
    /// validates the result with [`Epc::from_bytes`].
    pub fn from_hex(s: &str) -> Result<Epc, EpcError> {
        let count = s.chars().count();
        if count != HEX_LEN {
            return Err(EpcError::Length { found: count });
        }
        let mut out = [0u8; 12];
        let mut chars = s.chars();
        for byte in &mut out {
            let hi = chars
                .next()
                .and_then(|c| c.to_digit(16))
                .ok_or(EpcError::Hex)?;
            let lo = chars
                .next()
                .and_then(|c| c.to_digit(16))
                .ok_or(EpcError::Hex)?;
            *byte = u8::try_from((hi << 4) | lo).map_err(|_| EpcError::Hex)?;
        }
        Epc::from_bytes(out)
    }

    /// The EPC tag URI, e.g. `urn:epc:tag:sgtin-96:3.0614141.812345.6789`.
    pub fn to_tag_uri(&self) -> String {
        format!(
            "{URI_PREFIX}{}.{}.{}.{}",
            self.filter(),
            self.company_prefix(),
            self.item_reference(),
            self.serial()
        )
    }

    /// The EPC pure identity URI, e.g. `urn:epc:id:sgtin:0614141.812345.6789`:
    /// the tag URI without its filter, naming the item whatever tag it is on
    /// (how FHIR's Device names it).
    pub fn to_pure_uri(&self) -> String {
        format!(
            "urn:epc:id:sgtin:{}.{}.{}",
            self.company_prefix(),
            self.item_reference(),
            self.serial()
        )
    }

    /// Parses an EPC tag URI `urn:epc:tag:sgtin-96:F.CCCCCCC.IIIIII.SSSS`.
    pub fn from_tag_uri(s: &str) -> Result<Epc, EpcError> {
        let body = s
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| EpcError::Uri(snippet(s)))?;
        let mut fields = body.split('.');
        let (Some(f), Some(c), Some(i), Some(ser), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(EpcError::Uri(snippet(s)));
        };
        let filter = parse_filter(f)?;
        let (partition, cp) = parse_company_prefix(c)?;
        let ir = parse_item_reference(i, spec(partition))?;
        let serial = parse_serial(ser)?;
        Ok(Epc(encode(filter, partition, cp, ir, serial)))
    }

    /// Parses either an EPC tag URI (anything containing `:`) or 24 hex
    /// digits (anything else). Surrounding whitespace is not accepted.
    pub fn parse(s: &str) -> Result<Epc, EpcError> {
        if s.contains(':') {
            Epc::from_tag_uri(s)
        } else {
            Epc::from_hex(s)
        }
    }

    /// Filter value, 0..=7.
    pub fn filter(&self) -> u8 {
        Raw::extract(&self.0).filter
    }

    /// Partition value, 0..=6 (determines the company prefix length).
    pub fn partition(&self) -> u8 {
        Raw::extract(&self.0).partition
    }

    /// GS1 company prefix with leading zeros; 6..=12 digits depending on
    /// the partition.
    pub fn company_prefix(&self) -> String {
        let raw = Raw::extract(&self.0);
        let spec = spec(raw.partition);
        let (cp, _) = split_payload(raw.payload, spec);
        format!("{cp:0width$}", width = spec.cp_digits)
    }

    /// Item reference (indicator digit first) with leading zeros; exactly
    /// `13 - company_prefix().len()` digits.
    pub fn item_reference(&self) -> String {
        let raw = Raw::extract(&self.0);
        let spec = spec(raw.partition);
        let (_, ir) = split_payload(raw.payload, spec);
        format!("{ir:0width$}", width = spec.ir_digits)
    }

    /// Serial number, 0..=[`Epc::SERIAL_MAX`].
    pub fn serial(&self) -> u64 {
        Raw::extract(&self.0).serial
    }
}

/// Partition table row for a partition value; clamps to the last row so it
/// can never panic (a validated [`Epc`] always has partition 0..=6).
fn spec(partition: u8) -> Partition {
    PARTITIONS[usize::from(partition.min(6))]
}

/// 10^n for n <= 13 (saturating, never panics).
fn pow10(n: usize) -> u64 {
    u32::try_from(n)
        .ok()
        .and_then(|n| 10u64.checked_pow(n))
        .unwrap_or(u64::MAX)
}

/// Splits the 44-bit payload into (company prefix, item reference).
fn split_payload(payload: u64, spec: Partition) -> (u64, u64) {
    let cp = (payload >> spec.ir_bits) & ((1u64 << spec.cp_bits) - 1);
    let ir = payload & ((1u64 << spec.ir_bits) - 1);
    (cp, ir)
}

/// Packs validated fields into the 12-byte binary form.
fn encode(filter: u8, partition: u8, cp: u64, ir: u64, serial: u64) -> [u8; 12] {
    let spec = spec(partition);
    let payload = (u128::from(cp) << spec.ir_bits) | u128::from(ir);
    let v = (u128::from(HEADER) << 88)
        | (u128::from(filter & 0x7) << 85)
        | (u128::from(partition & 0x7) << 82)
        | ((payload & ((1u128 << PAYLOAD_BITS) - 1)) << SERIAL_BITS)
        | u128::from(serial & SERIAL_MAX);
    let wide = v.to_be_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&wide[4..]);
    out
}

/// Parses a run of ASCII decimal digits (at most 19, so it fits in u64).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn parse_filter(s: &str) -> Result<u8, EpcError> {
    match s.as_bytes() {
        [d @ b'0'..=b'7'] => Ok(d - b'0'),
        _ => Err(EpcError::Filter(snippet(s))),
    }
}

/// Returns (partition, value) for a 6..=12 digit company prefix.
fn parse_company_prefix(s: &str) -> Result<(u8, u64), EpcError> {
    let err = || EpcError::CompanyPrefix {
        found: snippet(s),
        expected: "6 to 12 decimal digits (0-9)".to_owned(),
    };
    let partition = PARTITIONS
        .iter()
        .position(|p| p.cp_digits == s.len())
        .and_then(|p| u8::try_from(p).ok())
        .ok_or_else(err)?;
    let value = parse_digits(s).ok_or_else(err)?;
    Ok((partition, value))
}

fn parse_item_reference(s: &str, spec: Partition) -> Result<u64, EpcError> {
    let err = || EpcError::ItemReference {
        found: snippet(s),
        expected: format!(
            "exactly {} decimal digits (13 minus the {}-digit company prefix)",
            spec.ir_digits, spec.cp_digits
        ),
    };
    if s.len() != GTIN_DIGITS - spec.cp_digits {
        return Err(err());
    }
    parse_digits(s).ok_or_else(err)
}

fn parse_serial(s: &str) -> Result<u64, EpcError> {
    let not_numeric = || EpcError::Serial {
        found: snippet(s),
        expected: "a decimal number without leading zeros".to_owned(),
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_numeric());
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(not_numeric());
    }
    match parse_digits(s) {
        Some(v) if v <= SERIAL_MAX => Ok(v),
        _ => Err(serial_too_large(snippet(s))),
    }
}

fn serial_too_large(found: String) -> EpcError {
    EpcError::Serial {
        found,
        expected: format!("at most {SERIAL_MAX} (2^38 - 1)"),
    }
}

/// Shortens untrusted text before echoing it in an error message.
fn snippet(s: &str) -> String {
    if s.chars().count() <= SNIPPET_MAX {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(SNIPPET_MAX).collect();
        out.push('…');
        out
    }
}

impl FromStr for Epc {
    type Err = EpcError;

    /// Same as [`Epc::parse`]: a tag URI or 24 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Epc::parse(s)
    }
}

impl fmt::Display for Epc {
    /// Writes the EPC tag URI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_tag_uri())
    }
}

impl TryFrom<[u8; 12]> for Epc {
    type Error = EpcError;

    /// Same as [`Epc::from_bytes`].
    fn try_from(b: [u8; 12]) -> Result<Self, Self::Error> {
        Epc::from_bytes(b)
    }
}

impl From<Epc> for [u8; 12] {
    fn from(epc: Epc) -> Self {
        epc.0
    }
}

impl serde::Serialize for Epc {
    /// Serializes as the EPC tag URI string.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_tag_uri())
    }
}

impl<'de> serde::Deserialize<'de> for Epc {
    /// Deserializes from a string: the EPC tag URI (canonical) or 24 hex digits.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EpcVisitor;

        impl serde::de::Visitor<'_> for EpcVisitor {
            type Value = Epc;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an SGTIN-96 EPC tag URI (urn:epc:tag:sgtin-96:F.C.I.S) or 24 hex digits",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Epc, E> {
                Epc::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EpcVisitor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const URI: &str = "urn:epc:tag:sgtin-96:3.0614141.812345.6789";
    const HEX: &str = "3074257BF7194E4000001A85";

    fn bytes_of(hex: &str) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// Independent bit packing used to cross-check `encode`.
    fn pack(header: u8, filter: u8, partition: u8, cp: u64, ir: u64, serial: u64) -> [u8; 12] {
        let p = PARTITIONS[usize::from(partition.min(6))];
        let mut bits = String::new();
        bits += &format!("{header:08b}{filter:03b}{partition:03b}");
        bits += &format!("{cp:0w$b}", w = p.cp_bits as usize);
        bits += &format!("{ir:0w$b}", w = p.ir_bits as usize);
        bits += &format!("{serial:038b}");
        assert_eq!(bits.len(), 96);
        let mut out = [0u8; 12];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&bits[8 * i..8 * i + 8], 2).unwrap();
        }
        out
    }

    #[test]
    fn partition_table_is_consistent() {
        for (i, p) in PARTITIONS.iter().enumerate() {
            assert_eq!(p.cp_bits + p.ir_bits, PAYLOAD_BITS, "partition {i}");
            assert_eq!(p.cp_digits + p.ir_digits, GTIN_DIGITS, "partition {i}");
            assert_eq!(p.cp_digits, 12 - i);
            // Every value of the digit count fits in the bit width.
            assert!(pow10(p.cp_digits) <= 1u64 << p.cp_bits);
            assert!(pow10(p.ir_digits) <= 1u64 << p.ir_bits);
        }
        assert_eq!(SERIAL_MAX, 274_877_906_943);
    }

    #[test]
    fn tds_vector_uri_to_hex() {
        let epc = Epc::parse(URI).unwrap();
        assert_eq!(epc.to_hex(), HEX);
        assert_eq!(epc.as_bytes(), &bytes_of(HEX));
        assert_eq!(epc.filter(), 3);
        assert_eq!(epc.partition(), 5);
        assert_eq!(epc.company_prefix(), "0614141");
        assert_eq!(epc.item_reference(), "812345");
        assert_eq!(epc.serial(), 6789);
        assert_eq!(epc, Epc::from_tag_uri(URI).unwrap());
        assert_eq!(epc, Epc::new(3, "0614141", "812345", 6789).unwrap());
        assert_eq!(epc.as_bytes(), &pack(0x30, 3, 5, 614_141, 812_345, 6789));
    }

    #[test]
    fn tds_vector_hex_to_uri() {
        let epc = Epc::from_hex(HEX).unwrap();
        assert_eq!(epc.to_tag_uri(), URI);
        assert_eq!(epc.to_string(), URI);
        assert_eq!(Epc::parse(HEX).unwrap(), epc);
        assert_eq!(Epc::from_hex(&HEX.to_lowercase()).unwrap(), epc);
        assert_eq!(Epc::parse(&HEX.to_lowercase()).unwrap(), epc);
        assert_eq!(Epc::from_bytes(bytes_of(HEX)).unwrap(), epc);
        assert_eq!(Epc::try_from(bytes_of(HEX)).unwrap(), epc);
        assert_eq!(<[u8; 12]>::from(epc), bytes_of(HEX));
        assert_eq!(HEX.parse::<Epc>().unwrap(), epc);
        assert_eq!(URI.parse::<Epc>().unwrap(), epc);
    }

    #[test]
    fn all_partitions_round_trip() {
        let cases = [
            (0, "urn:epc:tag:sgtin-96:1.123456789012.3.42"),
            (1, "urn:epc:tag:sgtin-96:0.12345678901.23.0"),
            (2, "urn:epc:tag:sgtin-96:2.0123456789.012.1"),
            (3, "urn:epc:tag:sgtin-96:7.000000001.0004.100"),
            (4, "urn:epc:tag:sgtin-96:4.00000000.00000.9"),
            (5, "urn:epc:tag:sgtin-96:5.0614141.012345.274877906943"),
            (6, "urn:epc:tag:sgtin-96:6.061414.1234567.55"),
        ];
        for (partition, uri) in cases {
            let epc = Epc::parse(uri).unwrap();
            assert_eq!(epc.partition(), partition, "{uri}");
            assert_eq!(epc.to_tag_uri(), uri);
            let cp = epc.company_prefix();
            let ir = epc.item_reference();
            assert_eq!(cp.len(), 12 - usize::from(partition));
            assert_eq!(cp.len() + ir.len(), 13);
            // bytes -> URI
            let again = Epc::from_bytes(*epc.as_bytes()).unwrap();
            assert_eq!(again.to_tag_uri(), uri);
            // hex -> URI
            let hex = epc.to_hex();
            assert_eq!(hex.len(), 24);
            assert!(
                hex.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            );
            assert_eq!(Epc::from_hex(&hex).unwrap().to_tag_uri(), uri);
            // fields -> same bytes, cross-checked against independent packing
            let built = Epc::new(epc.filter(), &cp, &ir, epc.serial()).unwrap();
            assert_eq!(built, epc);
            let expected = pack(
                0x30,
                epc.filter(),
                partition,
                cp.parse().unwrap(),
                ir.parse().unwrap(),
                epc.serial(),
            );
            assert_eq!(epc.as_bytes(), &expected, "{uri}");
        }
    }

    #[test]
    fn maximum_values_round_trip() {
        for (i, p) in PARTITIONS.iter().enumerate() {
            let cp = "9".repeat(p.cp_digits);
            let ir = "9".repeat(p.ir_digits);
            let epc = Epc::new(7, &cp, &ir, Epc::SERIAL_MAX).unwrap();
            let uri = format!("urn:epc:tag:sgtin-96:7.{cp}.{ir}.274877906943");
            assert_eq!(epc.to_tag_uri(), uri);
            assert_eq!(Epc::parse(&uri).unwrap(), epc);
            assert_eq!(Epc::from_hex(&epc.to_hex()).unwrap(), epc);
            assert_eq!(epc.partition(), u8::try_from(i).unwrap());
            assert_eq!(epc.filter(), 7);
            assert_eq!(epc.serial(), 274_877_906_943);
            assert_eq!(epc.company_prefix(), cp);
            assert_eq!(epc.item_reference(), ir);
            let expected = pack(
                0x30,
                7,
                u8::try_from(i).unwrap(),
                pow10(p.cp_digits) - 1,
                pow10(p.ir_digits) - 1,
                SERIAL_MAX,
            );
            assert_eq!(epc.as_bytes(), &expected);
        }
        // Minimum values too.
        let epc = Epc::new(0, "000000", "0000000", 0).unwrap();
        assert_eq!(epc.to_tag_uri(), "urn:epc:tag:sgtin-96:0.000000.0000000.0");
        assert_eq!(epc.to_hex(), "301800000000000000000000");
    }

    #[test]
    fn error_wrong_header() {
        let err = Epc::from_hex("3174257BF7194E4000001A85").unwrap_err();
        assert_eq!(err, EpcError::WrongHeader { found: 0x31 });
        assert_eq!(
            err.to_string(),
            "EPC header is 0x31, expected 0x30 (SGTIN-96)"
        );
        assert_eq!(
            Epc::from_bytes([0; 12]).unwrap_err(),
            EpcError::WrongHeader { found: 0 }
        );
    }

    #[test]
    fn error_partition() {
        let mut b = bytes_of(HEX);
        b[1] |= 0b0001_1100; // partition 7
        let err = Epc::from_bytes(b).unwrap_err();
        assert_eq!(err, EpcError::Partition(7));
        assert!(err.to_string().contains("partition"));
        assert!(err.to_string().contains("0..=6"));
    }

    #[test]
    fn error_filter() {
        for bad in ["8", "9", "x", "", "03", "-1", "٣"] {
            let uri = format!("urn:epc:tag:sgtin-96:{bad}.0614141.812345.6789");
            let err = Epc::parse(&uri).unwrap_err();
            assert_eq!(err, EpcError::Filter(bad.to_owned()), "{uri}");
            assert!(err.to_string().contains("filter"));
            assert!(err.to_string().contains("0..=7"));
        }
        assert_eq!(
            Epc::new(8, "0614141", "812345", 1).unwrap_err(),
            EpcError::Filter("8".to_owned())
        );
    }

    #[test]
    fn error_company_prefix() {
        for bad in [
            "12345",
            "1234567890123",
            "",
            "06141a1",
            "+614141",
            "061 141",
            "0614١41",
        ] {
            let uri = format!("urn:epc:tag:sgtin-96:3.{bad}.812345.6789");
            let err = Epc::parse(&uri).unwrap_err();
            assert!(
                matches!(err, EpcError::CompanyPrefix { .. }),
                "{uri}: {err:?}"
            );
            assert!(err.to_string().contains("company prefix"));
            assert!(err.to_string().contains("6 to 12"));
            assert!(matches!(
                Epc::new(3, bad, "812345", 1).unwrap_err(),
                EpcError::CompanyPrefix { .. }
            ));
        }
        // Binary: company prefix value 10^7 does not fit 7 digits (partition 5).
        let b = pack(0x30, 3, 5, 10_000_000, 812_345, 6789);
        let err = Epc::from_bytes(b).unwrap_err();
        assert_eq!(
            err,
            EpcError::CompanyPrefix {
                found: "10000000".to_owned(),
                expected: "a value of at most 7 decimal digits for partition 5".to_owned(),
            }
        );
        assert!(err.to_string().contains("company prefix"));
        // Partition 0: 40 bits can hold more than 12 digits.
        let b = pack(0x30, 0, 0, (1 << 40) - 1, 0, 0);
        assert!(matches!(
            Epc::from_bytes(b).unwrap_err(),
            EpcError::CompanyPrefix { .. }
        ));
    }

    #[test]
    fn error_item_reference() {
        for bad in ["81234", "8123456", "", "81234x", "８12345"] {
            let uri = format!("urn:epc:tag:sgtin-96:3.0614141.{bad}.6789");
            let err = Epc::parse(&uri).unwrap_err();
            assert!(
                matches!(err, EpcError::ItemReference { .. }),
                "{uri}: {err:?}"
            );
            assert!(err.to_string().contains("item reference"));
            assert!(err.to_string().contains("exactly 6 decimal digits"));
            assert!(matches!(
                Epc::new(3, "0614141", bad, 1).unwrap_err(),
                EpcError::ItemReference { .. }
            ));
        }
        // Binary: item reference 10 in partition 0 (1 digit, 4 bits).
        let b = pack(0x30, 1, 0, 123_456_789_012, 10, 1);
        let err = Epc::from_bytes(b).unwrap_err();
        assert_eq!(
            err,
            EpcError::ItemReference {
                found: "10".to_owned(),
                expected: "a value of at most 1 decimal digits for partition 0".to_owned(),
            }
        );
        // Binary: item reference 10^7 in partition 6.
        let b = pack(0x30, 1, 6, 614_141, 10_000_000, 1);
        assert!(matches!(
            Epc::from_bytes(b).unwrap_err(),
            EpcError::ItemReference { .. }
        ));
    }

    #[test]
    fn error_serial() {
        let cases = [
            ("01", "without leading zeros"),
            ("00", "without leading zeros"),
            ("", "without leading zeros"),
            ("12a", "without leading zeros"),
            ("-1", "without leading zeros"),
            ("+1", "without leading zeros"),
            ("1e3", "without leading zeros"),
            ("274877906944", "at most 274877906943"),
            ("99999999999999999999999999", "at most 274877906943"),
        ];
        for (bad, expected) in cases {
            let uri = format!("urn:epc:tag:sgtin-96:3.0614141.812345.{bad}");
            let err = Epc::parse(&uri).unwrap_err();
            assert!(matches!(err, EpcError::Serial { .. }), "{uri}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains("serial"), "{msg}");
            assert!(msg.contains(expected), "{msg}");
        }
        assert!(Epc::parse("urn:epc:tag:sgtin-96:3.0614141.812345.0").is_ok());
        let err = Epc::new(3, "0614141", "812345", SERIAL_MAX + 1).unwrap_err();
        assert_eq!(
            err,
            EpcError::Serial {
                found: "274877906944".to_owned(),
                expected: "at most 274877906943 (2^38 - 1)".to_owned(),
            }
        );
        assert!(Epc::new(3, "0614141", "812345", u64::MAX).is_err());
    }

    #[test]
    fn error_length() {
        for bad in [
            "",
            "3074257BF7194E4000001A8",
            "3074257BF7194E4000001A850",
            "0x3074257BF7194E4000001A85",
        ] {
            let err = Epc::from_hex(bad).unwrap_err();
            assert_eq!(err, EpcError::Length { found: bad.len() });
            assert_eq!(Epc::parse(bad).unwrap_err(), err);
            assert!(err.to_string().contains("24 hex digits"));
        }
        // Length counts characters, not bytes.
        let s = "é".repeat(12);
        assert_eq!(
            Epc::from_hex(&s).unwrap_err(),
            EpcError::Length { found: 12 }
        );
    }

    #[test]
    fn error_hex() {
        for bad in [
            "3074257BF7194E4000001A8G",
            "G074257BF7194E4000001A85",
            " 074257BF7194E4000001A85",
            "3074257BF7194E4000001A8é",
            "3074257BF7194E4000001A8８",
        ] {
            let err = Epc::from_hex(bad).unwrap_err();
            assert_eq!(err, EpcError::Hex, "{bad}");
            assert_eq!(Epc::parse(bad).unwrap_err(), EpcError::Hex);
            assert!(err.to_string().contains("hex"));
        }
    }

    #[test]
    fn the_pure_identity_uri_drops_the_filter() {
        let epc = Epc::parse("urn:epc:tag:sgtin-96:3.0614141.812345.6789").unwrap();
        assert_eq!(epc.to_pure_uri(), "urn:epc:id:sgtin:0614141.812345.6789");
    }

    #[test]
    fn error_uri() {
        for bad in [
            "urn:epc:tag:sgtin-96:3.0614141.812345",
            "urn:epc:tag:sgtin-96:3.0614141.812345.6789.1",
            "urn:epc:tag:sgtin-96:",
            "urn:epc:tag:sgtin-198:3.0614141.812345.6789",
            "urn:epc:id:sgtin:0614141.812345.6789",
            "URN:EPC:TAG:SGTIN-96:3.0614141.812345.6789",
            " urn:epc:tag:sgtin-96:3.0614141.812345.6789",
            ":",
        ] {
            let err = Epc::parse(bad).unwrap_err();
            assert_eq!(err, EpcError::Uri(bad.to_owned()), "{bad}");
            assert!(
                err.to_string()
                    .contains("urn:epc:tag:sgtin-96:F.CCCCCCC.IIIIII.SSSS")
            );
        }
        // Very long input is truncated in the message.
        let long = format!("urn:{}", "x".repeat(10_000));
        let Err(EpcError::Uri(shown)) = Epc::parse(&long) else {
            panic!("expected Uri error");
        };
        assert!(shown.chars().count() <= SNIPPET_MAX + 1);
    }

    #[test]
    fn serde_uses_tag_uri() {
        let epc = Epc::parse(URI).unwrap();
        let json = serde_json::to_string(&epc).unwrap();
        assert_eq!(json, format!("\"{URI}\""));
        let back: Epc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, epc);
        let from_hex: Epc = serde_json::from_str(&format!("\"{HEX}\"")).unwrap();
        assert_eq!(from_hex, epc);
        let err = serde_json::from_str::<Epc>("\"urn:epc:tag:sgtin-96:9.0614141.812345.6789\"")
            .unwrap_err();
        assert!(err.to_string().contains("filter"));
        assert!(serde_json::from_str::<Epc>("42").is_err());
    }

    #[test]
    fn arbitrary_input_never_panics_and_valid_values_round_trip() {
        // Deterministic xorshift so the test is reproducible.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ok = 0;
        for _ in 0..20_000 {
            let mut b = [0u8; 12];
            for chunk in b.chunks_mut(8) {
                let r = next().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            b[0] = 0x30; // exercise the interesting paths most of the time
            if let Ok(epc) = Epc::from_bytes(b) {
                ok += 1;
                assert_eq!(epc.as_bytes(), &b);
                assert_eq!(Epc::parse(&epc.to_tag_uri()).unwrap(), epc);
                assert_eq!(Epc::parse(&epc.to_hex()).unwrap(), epc);
                assert_eq!(
                    Epc::new(
                        epc.filter(),
                        &epc.company_prefix(),
                        &epc.item_reference(),
                        epc.serial()
                    )
                    .unwrap(),
                    epc
                );
            }
        }
        assert!(ok > 0);
        // Random strings over a small alphabet through every parser.
        let alphabet: Vec<char> = "0123456789abcdefABCDEF.:-urn:epc:tag:sgtin-96é "
            .chars()
            .collect();
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 50).unwrap();
            let s: String = (0..len)
                .map(|_| alphabet[usize::try_from(next()).unwrap() % alphabet.len()])
                .collect();
            let _ = Epc::parse(&s);
            let _ = Epc::from_hex(&s);
            let _ = Epc::new(3, &s, &s, 0);
            let uri = format!("urn:epc:tag:sgtin-96:{s}");
            let _ = Epc::parse(&uri);
        }
    }
}
