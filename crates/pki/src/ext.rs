//! medledger's certificate extensions and their DER encodings.
//!
//! All live under the UUID arc `2.25.280981808911232721963113049122953743303`
//! and are non-critical:
//!
//! | suffix | name     | ASN.1                          | in certificates of |
//! |--------|----------|--------------------------------|--------------------|
//! | `.1`   | role     | UTF8String                     | all                |
//! | `.2`   | epc      | OCTET STRING (SIZE(12))        | device             |
//! | `.3`   | group    | UTF8String                     | device             |
//! | `.4`   | rule     | UTF8String                     | device             |
//! | `.5`   | address  | OCTET STRING (SIZE(20))        | all but device     |
//! | `.6`   | location | UTF8String `dept/room/bed`     | collector          |

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

/// The UUID arc our extensions hang from (X.667, no registration needed).
pub const ARC: u128 = 280_981_808_911_232_721_963_113_049_122_953_743_303;

/// One of our extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ext {
    /// `.1` role.
    Role,
    /// `.2` EPC.
    Epc,
    /// `.3` device group.
    Group,
    /// `.4` rule id.
    Rule,
    /// `.5` EVM address.
    Address,
    /// `.6` location.
    Location,
}

impl Ext {
    /// All extensions, in OID order.
    pub const ALL: [Ext; 6] = [
        Ext::Role,
        Ext::Epc,
        Ext::Group,
        Ext::Rule,
        Ext::Address,
        Ext::Location,
    ];

    /// The last arc of the OID.
    pub fn suffix(self) -> u8 {
        match self {
            Ext::Role => 1,
            Ext::Epc => 2,
            Ext::Group => 3,
            Ext::Rule => 4,
            Ext::Address => 5,
            Ext::Location => 6,
        }
    }

    /// The extension's name in errors and output.
    pub fn name(self) -> &'static str {
        match self {
            Ext::Role => "role",
            Ext::Epc => "epc",
            Ext::Group => "group",
            Ext::Rule => "rule",
            Ext::Address => "address",
            Ext::Location => "location",
        }
    }

    /// The DER contents octets of the OID (no tag or length).
    pub fn oid_der(self) -> Vec<u8> {
        let mut out = vec![2 * 40 + 25];
        push_base128(&mut out, ARC);
        push_base128(&mut out, u128::from(self.suffix()));
        out
    }

    /// Finds the extension whose OID contents octets are `der`.
    pub fn from_oid_der(der: &[u8]) -> Option<Ext> {
        static ARC_DER: LazyLock<Vec<u8>> = LazyLock::new(|| {
            let mut der = Ext::Role.oid_der();
            der.pop();
            der
        });
        match der.split_last() {
            Some((&suffix, arc)) if arc == ARC_DER.as_slice() => {
                Ext::ALL.into_iter().find(|e| e.suffix() == suffix)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Ext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (2.25.{ARC}.{})", self.name(), self.suffix())
    }
}

fn push_base128(out: &mut Vec<u8>, mut v: u128) {
    let mut tmp = [0u8; 19];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8 | if i == tmp.len() - 1 { 0 } else { 0x80 };
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// The role a certificate holder plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A sensor that signs readings.
    Device,
    /// An ingest gateway.
    Collector,
    /// The application server.
    Server,
    /// A hospital administrator.
    Admin,
    /// A doctor.
    Doctor,
    /// A nurse.
    Nurse,
    /// A patient.
    Patient,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 7] = [
        Role::Device,
        Role::Collector,
        Role::Server,
        Role::Admin,
        Role::Doctor,
        Role::Nurse,
        Role::Patient,
    ];

    /// The role's name as written in the `role` extension.
    pub fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Collector => "collector",
            Role::Server => "server",
            Role::Admin => "admin",
            Role::Doctor => "doctor",
            Role::Nurse => "nurse",
            Role::Patient => "patient",
        }
    }

    /// Whether the holder has an EVM account (all but devices).
    pub fn has_account(self) -> bool {
        self != Role::Device
    }

    /// Whether the holder is a person (admin, doctor, nurse, patient): their
    /// identity is the certificate and the account it names together.
    pub fn is_person(self) -> bool {
        matches!(
            self,
            Role::Admin | Role::Doctor | Role::Nurse | Role::Patient
        )
    }

    /// Whether the holder runs a TLS server (collectors and servers).
    pub fn serves_tls(self) -> bool {
        matches!(self, Role::Collector | Role::Server)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role `{0}`; expected one of device, collector, server, admin, doctor, nurse, patient"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Where a collector sits: `department/room/bed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// Department, e.g. `cardiology`.
    pub department: String,
    /// Room, e.g. `204`.
    pub room: String,
    /// Bed, e.g. `B`.
    pub bed: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.department, self.room, self.bed)
    }
}

/// A location that is not `department/room/bed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("location `{0}` is not department/room/bed with three non-empty parts")]
pub struct BadLocation(pub String);

impl FromStr for Location {
    type Err = BadLocation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [d, r, b] if !d.is_empty() && !r.is_empty() && !b.is_empty() => Ok(Location {
                department: (*d).to_owned(),
                room: (*r).to_owned(),
                bed: (*b).to_owned(),
            }),
            _ => Err(BadLocation(s.to_owned())),
        }
    }
}

const TAG_OCTET_STRING: u8 = 0x04;
const TAG_UTF8_STRING: u8 = 0x0c;

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 4);
    out.push(tag);
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        _ => {
            let len = u16::try_from(len).expect("extension values are far below 64 KiB");
            out.push(0x82);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

/// DER of a UTF8String.
pub fn der_utf8(s: &str) -> Vec<u8> {
    der_tlv(TAG_UTF8_STRING, s.as_bytes())
}

/// DER of an OCTET STRING.
pub fn der_octets(b: &[u8]) -> Vec<u8> {
    der_tlv(TAG_OCTET_STRING, b)
}

/// Why a DER value is not what an extension requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    /// No bytes at all.
    #[error("value is empty")]
    Empty,
    /// Another type than the one expected.
    #[error("expected {what} (tag 0x{expected:02x}), found tag 0x{found:02x}")]
    Tag {
        /// The type expected, e.g. `UTF8String`.
        what: &'static str,
        /// Its tag.
        expected: u8,
        /// The tag found.
        found: u8,
    },
    /// The tag has no length after it.
    #[error("length is missing")]
    NoLength,
    /// A length in more bytes than it needs.
    #[error("length is not in minimal DER form")]
    NotMinimal,
    /// A length of more than two bytes.
    #[error("length form is not supported")]
    LengthForm,
    /// The length does not match the bytes that follow.
    #[error("length says {said} bytes but {follow} follow")]
    Length {
        /// The length encoded.
        said: usize,
        /// The bytes after it.
        follow: usize,
    },
    /// A UTF8String that is not UTF-8.
    #[error("UTF8String is not valid UTF-8")]
    NotUtf8,
    /// An OCTET STRING of another size.
    #[error("OCTET STRING is {found} bytes, expected {expected}")]
    Size {
        /// Its size.
        found: usize,
        /// The size required.
        expected: usize,
    },
}

/// Reads one DER TLV with the expected tag that spans all of `der`,
/// insisting on minimal length encoding.
fn parse_tlv(der: &[u8], tag: u8, what: &'static str) -> Result<Vec<u8>, DerError> {
    let (&found, rest) = der.split_first().ok_or(DerError::Empty)?;
    if found != tag {
        return Err(DerError::Tag {
            what,
            expected: tag,
            found,
        });
    }
    let (&l, rest) = rest.split_first().ok_or(DerError::NoLength)?;
    let (len, rest) = match l {
        0..=0x7f => (usize::from(l), rest),
        0x81 => match rest.split_first() {
            Some((&n, rest)) if n >= 0x80 => (usize::from(n), rest),
            _ => return Err(DerError::NotMinimal),
        },
        0x82 => match rest {
            [a, b, rest @ ..] if *a != 0 => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => return Err(DerError::NotMinimal),
        },
        _ => return Err(DerError::LengthForm),
    };
    if rest.len() != len {
        return Err(DerError::Length {
            said: len,
            follow: rest.len(),
        });
    }
    Ok(rest.to_vec())
}

/// Decodes a DER UTF8String spanning all of `der`.
pub fn parse_utf8(der: &[u8]) -> Result<String, DerError> {
    let content = parse_tlv(der, TAG_UTF8_STRING, "UTF8String")?;
    String::from_utf8(content).map_err(|_| DerError::NotUtf8)
}

/// Decodes a DER OCTET STRING of exactly `N` bytes spanning all of `der`.
pub fn parse_octets<const N: usize>(der: &[u8]) -> Result<[u8; N], DerError> {
    let content = parse_tlv(der, TAG_OCTET_STRING, "OCTET STRING")?;
    <[u8; N]>::try_from(content.as_slice()).map_err(|_| DerError::Size {
        found: content.len(),
        expected: N,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn oid_encodes_the_uuid_arc_in_base128() {
        // 2.25 -> 0x69, then 128-bit arc in 19 base-128 digits, then the suffix.
        let der = Ext::Role.oid_der();
        assert_eq!(der.len(), 21);
        assert_eq!(der[0], 0x69);
        assert_eq!(*der.last().unwrap(), 1);
        let mut arc: u128 = 0;
        for b in &der[1..20] {
            arc = (arc << 7) | u128::from(b & 0x7f);
        }
        assert_eq!(arc, ARC);
        assert_eq!(
            Ext::from_oid_der(&Ext::Location.oid_der()),
            Some(Ext::Location)
        );
    }

    #[test]
    fn values_round_trip_and_bad_der_is_named() {
        assert_eq!(
            parse_utf8(&der_utf8("icu-hr-monitor")).unwrap(),
            "icu-hr-monitor"
        );
        let long = "x".repeat(300);
        assert_eq!(parse_utf8(&der_utf8(&long)).unwrap(), long);
        assert_eq!(parse_octets::<12>(&der_octets(&[7; 12])).unwrap(), [7; 12]);
        assert!(
            parse_octets::<12>(&der_octets(&[7; 11]))
                .unwrap_err()
                .to_string()
                .contains("11 bytes, expected 12")
        );
        assert!(
            parse_utf8(&der_octets(b"x"))
                .unwrap_err()
                .to_string()
                .contains("UTF8String")
        );
        assert_eq!(
            parse_utf8(&[0x0c, 0x81, 0x05, b'a', b'b', b'c', b'd', b'e']),
            Err(DerError::NotMinimal)
        );
        assert_eq!(
            parse_utf8(&[0x0c, 0x03, b'a']),
            Err(DerError::Length { said: 3, follow: 1 })
        );
        assert_eq!("cardiology/204/B".parse::<Location>().unwrap().room, "204");
        assert!("cardiology/204".parse::<Location>().is_err());
        assert!("patient".parse::<Role>().is_ok() && "root".parse::<Role>().is_err());
    }
}
