//! The typed identity of a certificate holder, parsed once at the edge.

use crate::epc::Epc;
use crate::ext::{self, Ext, Location, Role};
use alloy_primitives::Address;
use medledger_protocol::{Algorithm, Kid, VerifyingKey, kid_of};
use std::fmt;
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser;
use x509_parser::prelude::X509Certificate;

/// Why a certificate does not carry a valid medledger identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Certificate(String),
    /// A required extension is absent.
    #[error("extension {0} is missing")]
    Missing(Ext),
    /// An extension appears more than once.
    #[error("extension {0} appears more than once")]
    Duplicated(Ext),
    /// An extension's value is not the DER the design requires.
    #[error("extension {ext} is malformed: {reason}")]
    Malformed {
        /// Which.
        ext: Ext,
        /// What is wrong.
        reason: String,
    },
    /// An extension that this role's certificates must not carry.
    #[error("extension {ext} is not allowed in a {role} certificate")]
    Unexpected {
        /// Which.
        ext: Ext,
        /// The certificate's role.
        role: Role,
    },
    /// One of our extensions is marked critical.
    #[error("extension {0} must be non-critical")]
    Critical(Ext),
    /// The role is valid but not accepted here.
    #[error("a {found} certificate may not be used here; expected {}", list(.expected))]
    WrongRole {
        /// The certificate's role.
        found: Role,
        /// The roles accepted.
        expected: Vec<Role>,
    },
    /// The key is neither P-256 nor Ed25519.
    #[error("the certificate key is not ECDSA P-256 or Ed25519")]
    UnsupportedKey,
}

fn list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// What a certificate says about its holder beyond the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Details {
    /// A device: its EPC, group and rule.
    Device {
        /// The device's SGTIN-96 EPC.
        epc: Epc,
        /// Device group id.
        group: String,
        /// Rule id the device answers to.
        rule: String,
    },
    /// Everyone else: an EVM account, and for collectors a location.
    Account {
        /// The holder's chain account.
        address: Address,
        /// Where a collector sits; `None` for other roles.
        location: Option<Location>,
    },
}

/// A certificate holder as medledger sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The role.
    pub role: Role,
    /// Role-specific facts.
    pub details: Details,
    /// The subject's common name (empty if none).
    pub subject: String,
    /// The serial number, big-endian bytes as in the certificate.
    pub serial: Vec<u8>,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the certificate DER; also the `kid` of its readings.
    pub fingerprint: Kid,
    /// The key readings are verified with.
    pub key: VerifyingKey,
}

impl Identity {
    /// Parses a certificate that TLS has already verified (chain, validity,
    /// revocation) into a typed identity, checking every medledger
    /// extension against the role.
    pub fn from_peer_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        // webpki has checked the standard extensions; ours are parsed below.
        let (rest, cert) = X509CertificateParser::new()
            .with_deep_parse_extensions(false)
            .parse(der)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(IdentityError::Certificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        let mut found: [Option<&[u8]>; 6] = [None; 6];
        for e in cert.extensions() {
            let Some(ext) = Ext::from_oid_der(e.oid.as_bytes()) else {
                continue;
            };
            let slot = &mut found[usize::from(ext.suffix() - 1)];
            if slot.is_some() {
                return Err(IdentityError::Duplicated(ext));
            }
            if e.critical {
                return Err(IdentityError::Critical(ext));
            }
            *slot = Some(e.value);
        }
        let value = |ext: Ext| found[usize::from(ext.suffix() - 1)];
        let required = |ext: Ext| value(ext).ok_or(IdentityError::Missing(ext));
        let malformed = |ext: Ext| {
            move |reason: &dyn std::fmt::Display| IdentityError::Malformed {
                ext,
                reason: reason.to_string(),
            }
        };
        let utf8 = |ext: Ext| -> Result<String, IdentityError> {
            let s = ext::parse_utf8(required(ext)?).map_err(|e| malformed(ext)(&e))?;
            if s.is_empty() {
                return Err(malformed(ext)(&ext::DerError::Empty));
            }
            Ok(s)
        };

        let role_name = utf8(Ext::Role)?;
        let role: Role = role_name
            .parse()
            .map_err(|e: ext::UnknownRole| malformed(Ext::Role)(&e))?;
        let forbid = |exts: &[Ext]| {
            exts.iter()
                .find(|e| value(**e).is_some())
                .map_or(Ok(()), |&ext| Err(IdentityError::Unexpected { ext, role }))
        };
        let details = if role == Role::Device {
            forbid(&[Ext::Address, Ext::Location])?;
            let bytes = ext::parse_octets::<12>(required(Ext::Epc)?)
                .map_err(|e| malformed(Ext::Epc)(&e))?;
            Details::Device {
                epc: Epc::from_bytes(bytes).map_err(|e| malformed(Ext::Epc)(&e))?,
                group: utf8(Ext::Group)?,
                rule: utf8(Ext::Rule)?,
            }
        } else {
            forbid(&[Ext::Epc, Ext::Group, Ext::Rule])?;
            let address = ext::parse_octets::<20>(required(Ext::Address)?)
                .map_err(|e| malformed(Ext::Address)(&e))?;
            let location = if role == Role::Collector {
                let text = utf8(Ext::Location)?;
                Some(
                    text.parse()
                        .map_err(|e: ext::BadLocation| malformed(Ext::Location)(&e))?,
                )
            } else {
                forbid(&[Ext::Location])?;
                None
            };
            Details::Account {
                address: Address::from(address),
                location,
            }
        };

        let fingerprint = kid_of(der);
        Ok(Identity {
            role,
            details,
            subject: common_name(&cert),
            serial: cert.raw_serial().to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint,
            key: verifying_key(&cert, fingerprint)?,
        })
    }

    /// Fails with [`IdentityError::WrongRole`] unless the role is one of
    /// `allowed`.
    pub fn require_role(&self, allowed: &[Role]) -> Result<(), IdentityError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(IdentityError::WrongRole {
                found: self.role,
                expected: allowed.to_vec(),
            })
        }
    }

    /// The device EPC, for device certificates.
    pub fn epc(&self) -> Option<&Epc> {
        match &self.details {
            Details::Device { epc, .. } => Some(epc),
            Details::Account { .. } => None,
        }
    }

    /// The chain account, for all but device certificates.
    pub fn address(&self) -> Option<Address> {
        match &self.details {
            Details::Account { address, .. } => Some(*address),
            Details::Device { .. } => None,
        }
    }

    /// The location, for collector certificates.
    pub fn location(&self) -> Option<&Location> {
        match &self.details {
            Details::Account { location, .. } => location.as_ref(),
            Details::Device { .. } => None,
        }
    }

    /// The serial number as colon-separated hex, as OpenSSL prints it.
    pub fn serial_hex(&self) -> String {
        self.serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The SHA-256 fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.details {
            Details::Device { epc, .. } => write!(f, "device {epc}"),
            Details::Account { address, .. } => write!(f, "{} {address}", self.role),
        }
    }
}

/// The subject's first common name, or empty.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

fn verifying_key(cert: &X509Certificate<'_>, kid: Kid) -> Result<VerifyingKey, IdentityError> {
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.to_vec();
    let alg = spki.algorithm.algorithm.as_bytes();
    let alg = if alg == OID_ED25519 && key.len() == 32 {
        Algorithm::EdDsa
    } else if alg == OID_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve.as_bytes() == OID_P256)
        && key.len() == 65
    {
        Algorithm::Es256
    } else {
        return Err(IdentityError::UnsupportedKey);
    };
    Ok(VerifyingKey::new(alg, kid, key))
}
