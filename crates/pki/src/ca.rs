//! The certificate authority: a root CA, an issuing CA, leaf certificates for
//! every role, and the CRLs.
//!
//! A CA directory holds:
//!
//! ```text
//! root.crt  root.key        self-signed root (key 0600)
//! issuing.crt issuing.key   the current issuing CA, signed by the root (key 0600)
//! previous/SERIAL.crt .key  issuing CAs replaced by `rotate`, still trusted
//! retired/SERIAL.crt        issuing CAs retired (revoked by the root); no key
//! crl.pem                   the CRLs: the root's, and one per trusted issuing CA
//! state.json                CRL number and revoked serials, by issuer
//! issued.jsonl              one line per certificate issued
//! ```
//!
//! Rotating the issuing CA is two steps. [`Ca::rotate`] makes a new issuing
//! CA current; the replaced one still vouches for what it issued (and can
//! still revoke it) until [`Ca::retire`] has the root revoke it and deletes
//! its key. From then on nothing it signed is accepted: verifiers check the
//! whole chain against the CRLs.

use crate::account::EthAccount;
use crate::epc::Epc;
use crate::ext::{self, Ext, Location, Role};
use crate::files::{self, with_suffix};
use crate::identity::Identity;
use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
    SignatureAlgorithm, SigningKey,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The key type of a leaf certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlg {
    /// ECDSA P-256 (the default; secure elements and smart cards have it).
    #[default]
    P256,
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The reading signature algorithm a key of this type makes.
    pub fn reading_algorithm(self) -> medledger_protocol::Algorithm {
        match self {
            KeyAlg::P256 => medledger_protocol::Algorithm::Es256,
            KeyAlg::Ed25519 => medledger_protocol::Algorithm::EdDsa,
        }
    }
}

impl std::str::FromStr for KeyAlg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "p256" | "P-256" | "ecdsa" => Ok(KeyAlg::P256),
            "ed25519" | "Ed25519" => Ok(KeyAlg::Ed25519),
            _ => Err(format!("unknown key type `{s}`; use p256 or ed25519")),
        }
    }
}

/// Which extension, for a [`RawExtension`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtId {
    /// One of ours.
    Medledger(Ext),
    /// Any other OID, by its arcs.
    Other(Vec<u64>),
}

/// An extension exactly as it will be written: for building certificates,
/// including deliberately wrong ones in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawExtension {
    /// The OID.
    pub id: ExtId,
    /// The critical flag.
    pub critical: bool,
    /// The extnValue contents (DER of the inner type).
    pub value: Vec<u8>,
}

impl RawExtension {
    /// A non-critical medledger extension.
    pub fn medledger(ext: Ext, value: Vec<u8>) -> Self {
        RawExtension {
            id: ExtId::Medledger(ext),
            critical: false,
            value,
        }
    }
}

/// Everything that goes into a leaf certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Subject common name.
    pub common_name: String,
    /// The role; sets key and extended key usages.
    pub role: Role,
    /// DNS names and IP addresses, for collectors and servers.
    pub subject_alt_names: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Our extensions (and any others), in order.
    pub extensions: Vec<RawExtension>,
}

/// What to issue, as an operator states it.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The role.
    pub role: Role,
    /// Subject common name; a default is derived from the role's data.
    pub common_name: Option<String>,
    /// Key type.
    pub key_alg: KeyAlg,
    /// Device EPC (devices only).
    pub epc: Option<Epc>,
    /// Device group (devices only).
    pub group: Option<String>,
    /// Device rule (devices only).
    pub rule: Option<String>,
    /// Collector location (collectors only).
    pub location: Option<Location>,
    /// Extra DNS names or IPs (collectors and servers; `localhost`,
    /// `127.0.0.1` and `::1` are always included for them).
    pub subject_alt_names: Vec<String>,
    /// Validity in days from now.
    pub validity_days: u32,
}

impl LeafRequest {
    /// A request for `role` with defaults: P-256, one year.
    pub fn new(role: Role) -> Self {
        LeafRequest {
            role,
            common_name: None,
            key_alg: KeyAlg::P256,
            epc: None,
            group: None,
            rule: None,
            location: None,
            subject_alt_names: Vec::new(),
            validity_days: 365,
        }
    }

    /// Checks the request against the role and turns it into a spec, with
    /// `address` for roles that hold an account.
    pub fn to_spec(&self, address: Option<alloy_primitives::Address>) -> Result<CertSpec> {
        let role = self.role;
        let bad = |what: String| Error::Request(what);
        let device_only = [
            ("--epc", self.epc.is_some()),
            ("--group", self.group.is_some()),
            ("--rule", self.rule.is_some()),
        ];
        let mut extensions = vec![RawExtension::medledger(
            Ext::Role,
            ext::der_utf8(role.name()),
        )];
        if role == Role::Device {
            let epc = self
                .epc
                .ok_or_else(|| bad("a device certificate needs --epc".into()))?;
            let group = nonempty(self.group.as_deref())
                .ok_or_else(|| bad("a device certificate needs --group".into()))?;
            let rule = nonempty(self.rule.as_deref())
                .ok_or_else(|| bad("a device certificate needs --rule".into()))?;
            if self.location.is_some() {
                return Err(bad("--location is only for collector certificates".into()));
            }
            extensions.push(RawExtension::medledger(
                Ext::Epc,
                ext::der_octets(epc.as_bytes()),
            ));
            extensions.push(RawExtension::medledger(Ext::Group, ext::der_utf8(group)));
            extensions.push(RawExtension::medledger(Ext::Rule, ext::der_utf8(rule)));
        } else {
            if let Some((flag, _)) = device_only.iter().find(|(_, given)| *given) {
                return Err(bad(format!("{flag} is only for device certificates")));
            }
            let address = address
                .ok_or_else(|| bad(format!("a {role} certificate needs an account address")))?;
            extensions.push(RawExtension::medledger(
                Ext::Address,
                ext::der_octets(address.as_slice()),
            ));
            match (role, &self.location) {
                (Role::Collector, Some(l)) => {
                    extensions.push(RawExtension::medledger(
                        Ext::Location,
                        ext::der_utf8(&l.to_string()),
                    ));
                }
                (Role::Collector, None) => {
                    return Err(bad(
                        "a collector certificate needs --location department/room/bed".into(),
                    ));
                }
                (_, Some(_)) => {
                    return Err(bad("--location is only for collector certificates".into()));
                }
                (_, None) => {}
            }
        }
        if !role.serves_tls() && !self.subject_alt_names.is_empty() {
            return Err(bad(
                "--san is only for collector and server certificates".into()
            ));
        }
        let mut sans = Vec::new();
        if role.serves_tls() {
            sans.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
            sans.extend(
                self.subject_alt_names
                    .iter()
                    .filter(|s| !sans.contains(s))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        let common_name = match (&self.common_name, &self.epc, address) {
            (Some(cn), ..) => cn.clone(),
            // 24 hex digits: an MQTT broker takes the name as the username,
            // and the device's topics end with it.
            (None, Some(epc), _) => epc.to_hex(),
            (None, None, Some(a)) => format!("{role} {a}"),
            (None, None, None) => role.to_string(),
        };
        let now = OffsetDateTime::now_utc();
        let not_after = (self.validity_days > 0)
            .then(|| now.checked_add(Duration::days(i64::from(self.validity_days))))
            .flatten()
            .ok_or_else(|| {
                bad(format!(
                    "--days {} is not a usable validity",
                    self.validity_days
                ))
            })?;
        Ok(CertSpec {
            common_name,
            role,
            subject_alt_names: sans,
            not_before: now - CLOCK_SKEW,
            not_after,
            extensions,
        })
    }
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// Certificates start this long before they are made, for clock skew.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// A newly issued leaf: certificate, private key and, for roles that sign
/// transactions, the chain account.
#[derive(Clone)]
pub struct Issued {
    /// The certificate DER.
    pub cert_der: Vec<u8>,
    /// The CA certificates to send with the leaf (the issuing CA; none for
    /// a self-signed certificate).
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 private key.
    pub key_pkcs8: Vec<u8>,
    /// The EVM account, for all roles but device.
    pub account: Option<EthAccount>,
}

impl Issued {
    /// The parsed identity of the new certificate.
    pub fn identity(&self) -> Result<Identity> {
        Ok(Identity::from_peer_certificate(&self.cert_der)?)
    }

    /// Reads what [`Issued::write`] wrote under `prefix`.
    pub fn load(prefix: &Path) -> Result<Issued> {
        let mut certs = files::read_der_blocks(&with_suffix(prefix, ".crt"), "CERTIFICATE")?;
        if certs.is_empty() {
            return Err(Error::Format {
                path: with_suffix(prefix, ".crt"),
                reason: "no certificate".into(),
            });
        }
        let cert_der = certs.remove(0);
        let key_pkcs8 = files::read_private(&with_suffix(prefix, ".key"), "PRIVATE KEY")?;
        let eth = with_suffix(prefix, ".eth.key");
        let account = if eth.exists() {
            files::require_private(&eth)?;
            let text = String::from_utf8_lossy(&files::read(&eth)?)
                .trim()
                .to_owned();
            Some(EthAccount::from_hex(&text).map_err(|e| Error::Format {
                path: eth.clone(),
                reason: e.to_string(),
            })?)
        } else {
            None
        };
        Ok(Issued {
            cert_der,
            chain: certs,
            key_pkcs8,
            account,
        })
    }

    /// Writes `PREFIX.crt` (leaf then issuing CA, PEM), `PREFIX.key`
    /// (PKCS#8 PEM, 0600) and, with an account, `PREFIX.eth.key` (hex, 0600),
    /// making PREFIX's directory (0700) if it is missing. Refuses to
    /// overwrite an existing key.
    pub fn write(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        let crt = with_suffix(prefix, ".crt");
        let key = with_suffix(prefix, ".key");
        let eth = with_suffix(prefix, ".eth.key");
        // A directory named in the prefix that is not there yet is made,
        // for its owner only.
        if let Some(parent) = prefix.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            files::private_dir(parent)?;
        }
        files::write_secret(
            &key,
            files::to_pem("PRIVATE KEY", &self.key_pkcs8).as_bytes(),
        )?;
        let mut written = vec![key];
        if let Some(account) = &self.account {
            files::write_secret(&eth, format!("{}\n", account.to_hex()).as_bytes())?;
            written.push(eth);
        }
        let chain: String = std::iter::once(&self.cert_der)
            .chain(&self.chain)
            .map(|der| files::to_pem("CERTIFICATE", der))
            .collect();
        files::write_public(&crt, chain.as_bytes())?;
        written.insert(0, crt);
        Ok(written)
    }
}

/// An open CA directory.
pub struct Ca {
    dir: PathBuf,
    issuing: IssuingCa,
    /// Replaced by [`Ca::rotate`], not yet retired.
    previous: Vec<IssuingCa>,
}

/// An issuing CA: its certificate, key and serial (lowercase hex).
struct IssuingCa {
    der: Vec<u8>,
    key: KeyPair,
    serial: String,
}

impl IssuingCa {
    fn load(cert: &Path, key: &Path) -> Result<IssuingCa> {
        let der = files::read_first(cert, "CERTIFICATE")?;
        Ok(IssuingCa {
            serial: serial_hex(&der, cert)?,
            key: read_key(key)?,
            der,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, PatchingSigner<'_>>> {
        Ok(Issuer::from_ca_cert_der(
            &self.der.clone().into(),
            PatchingSigner(&self.key),
        )?)
    }

    /// Whether this CA signed `cert`.
    fn signed(&self, cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
        use x509_parser::prelude::{FromDer, X509Certificate};
        X509Certificate::from_der(&self.der)
            .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
    }
}

/// The `issuer` of revocations the root signs (of issuing CAs).
const ROOT_ISSUER: &str = "root";

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field(
                "fingerprint",
                &hex::encode(medledger_protocol::kid_of(&self.cert_der)),
            )
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    crl_number: u64,
    revoked: Vec<Revoked>,
}

/// A revoked certificate as the CA records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// Serial, lowercase hex without separators.
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// The subject's common name, for people.
    pub subject: String,
    /// Who revoked it: the serial of the issuing CA that issued it, or
    /// `root` for a retired issuing CA. Empty in a state written before
    /// rotation existed: the current issuing CA's.
    #[serde(default)]
    pub issuer: String,
}

#[derive(Serialize)]
struct IssuedLine<'a> {
    serial: &'a str,
    role: &'a str,
    subject: &'a str,
    fingerprint: String,
    not_after: i64,
}

/// File names inside a CA directory.
pub mod layout {
    /// Root CA certificate.
    pub const ROOT_CERT: &str = "root.crt";
    /// Root CA key.
    pub const ROOT_KEY: &str = "root.key";
    /// Issuing CA certificate.
    pub const ISSUING_CERT: &str = "issuing.crt";
    /// Issuing CA key.
    pub const ISSUING_KEY: &str = "issuing.key";
    /// Current CRL.
    pub const CRL: &str = "crl.pem";
    /// CRL number and revocations.
    pub const STATE: &str = "state.json";
    /// Log of issued certificates.
    pub const ISSUED: &str = "issued.jsonl";
    /// Issuing CAs replaced by rotation, still trusted.
    pub const PREVIOUS: &str = "previous";
    /// Issuing CAs retired: certificates only.
    pub const RETIRED: &str = "retired";
}

/// The parameters of a CA certificate valid from now for `years`.
fn ca_params(organization: &str, cn: &str, years: i64, path_len: u8) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = name(organization, cn, None);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + Duration::days(365 * years);
    p.serial_number = Some(random_serial());
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.use_authority_key_identifier_extension = true;
    p
}

/// Years an issuing CA is valid.
const ISSUING_YEARS: i64 = 10;

fn read_key(path: &Path) -> Result<KeyPair> {
    files::require_private(path)?;
    let pem = String::from_utf8(files::read(path)?).map_err(|_| Error::Format {
        path: path.to_owned(),
        reason: "not UTF-8 PEM".into(),
    })?;
    KeyPair::from_pem(&pem).map_err(|e| Error::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn parse_cert<'a>(
    der: &'a [u8],
    path: &Path,
) -> Result<x509_parser::certificate::X509Certificate<'a>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| Error::Format {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn serial_hex(der: &[u8], path: &Path) -> Result<String> {
    Ok(hex::encode(parse_cert(der, path)?.raw_serial()))
}

/// Renames `from` to `to` if `from` exists (finishing a rotation).
fn rename_if_present(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(from, e)),
        _ => Ok(()),
    }
}

impl Ca {
    /// Creates a root CA and an issuing CA in `dir` (created if needed; must
    /// not already hold a CA).
    pub fn init(dir: &Path, organization: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if dir.join(layout::ROOT_KEY).exists() {
            return Err(Error::Request(format!(
                "{} already holds a CA",
                dir.display()
            )));
        }
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(organization, "medledger root CA", 20, 1);
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, &root_key);
        let issuing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuing_cert = ca_params(organization, "medledger issuing CA", ISSUING_YEARS, 0)
            .signed_by(&issuing_key, &root)?;

        files::write_secret(
            &dir.join(layout::ROOT_KEY),
            root_key.serialize_pem().as_bytes(),
        )?;
        files::write_secret(
            &dir.join(layout::ISSUING_KEY),
            issuing_key.serialize_pem().as_bytes(),
        )?;
        files::write_public(&dir.join(layout::ROOT_CERT), root_cert.pem().as_bytes())?;
        files::write_public(
            &dir.join(layout::ISSUING_CERT),
            issuing_cert.pem().as_bytes(),
        )?;
        let ca = Ca {
            dir: dir.to_owned(),
            issuing: IssuingCa {
                serial: serial_hex(issuing_cert.der(), &dir.join(layout::ISSUING_CERT))?,
                der: issuing_cert.der().to_vec(),
                key: issuing_key,
            },
            previous: Vec::new(),
        };
        ca.write_state(&State::default())?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens an initialised CA directory (finishing a rotation that was
    /// interrupted).
    pub fn open(dir: &Path) -> Result<Ca> {
        let key_path = dir.join(layout::ISSUING_KEY);
        let cert_path = dir.join(layout::ISSUING_CERT);
        // A rotation writes the new CA beside the current one, then
        // renames key and certificate over it; the old one is kept in
        // previous/ before that.
        rename_if_present(&with_suffix(&key_path, ".new"), &key_path)?;
        rename_if_present(&with_suffix(&cert_path, ".new"), &cert_path)?;
        if !key_path.exists() {
            return Err(Error::Request(format!(
                "{} is not a CA directory (no {}); run `medledger ca init --dir {}` first",
                dir.display(),
                layout::ISSUING_KEY,
                dir.display()
            )));
        }
        let issuing = IssuingCa::load(&cert_path, &key_path)?;
        let mut previous = Vec::new();
        let previous_dir = dir.join(layout::PREVIOUS);
        let retired_dir = dir.join(layout::RETIRED);
        if retired_dir.is_dir() {
            // Keys of retired CAs that a crash left behind.
            for cert in std::fs::read_dir(&retired_dir).map_err(|e| Error::io(&retired_dir, e))? {
                let Some(name) = cert.ok().map(|c| c.path().with_extension("key")) else {
                    continue;
                };
                let key = previous_dir.join(name.file_name().unwrap_or_default());
                if key.exists() {
                    std::fs::remove_file(&key).map_err(|e| Error::io(&key, e))?;
                }
            }
        }
        if previous_dir.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&previous_dir)
                .map_err(|e| Error::io(&previous_dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "crt"))
                .collect();
            names.sort();
            for cert in names {
                let ca = IssuingCa::load(&cert, &cert.with_extension("key"))?;
                if ca.serial != issuing.serial {
                    previous.push(ca);
                }
            }
        }
        Ok(Ca {
            dir: dir.to_owned(),
            issuing,
            previous,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root certificate, the trust anchor every party needs.
    pub fn root_cert_der(&self) -> Result<Vec<u8>> {
        files::read_first(&self.dir.join(layout::ROOT_CERT), "CERTIFICATE")
    }

    /// The current issuing CA certificate.
    pub fn issuing_cert_der(&self) -> &[u8] {
        &self.issuing.der
    }

    /// The issuing CA certificates whose certificates are accepted: the
    /// current one, then those replaced and not yet retired.
    pub fn issuing_certs_der(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.issuing)
            .chain(&self.previous)
            .map(|ca| ca.der.clone())
            .collect()
    }

    /// The serial (hex) of the current issuing CA.
    pub fn issuing_serial(&self) -> &str {
        &self.issuing.serial
    }

    /// The serials (hex) of issuing CAs replaced by [`Ca::rotate`] and not
    /// yet retired: what they issued is still accepted.
    pub fn previous_serials(&self) -> Vec<String> {
        self.previous.iter().map(|p| p.serial.clone()).collect()
    }

    fn issuing_not_after(&self) -> Result<OffsetDateTime> {
        Ok(
            parse_cert(&self.issuing.der, &self.dir.join(layout::ISSUING_CERT))?
                .validity()
                .not_after
                .to_datetime(),
        )
    }

    fn root(&self) -> Result<(Vec<u8>, KeyPair)> {
        Ok((
            self.root_cert_der()?,
            read_key(&self.dir.join(layout::ROOT_KEY))?,
        ))
    }

    /// Makes a new issuing CA, signed by the root, the one that issues from
    /// now on. The one it replaces moves to `previous/`: certificates it
    /// issued stay valid, and revocable, until [`Ca::retire`]. Returns the
    /// CA as it now is.
    pub fn rotate(self) -> Result<Ca> {
        let (root_der, root_key) = self.root()?;
        let root_path = self.dir.join(layout::ROOT_CERT);
        let root_cert = parse_cert(&root_der, &root_path)?;
        let organization = root_cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .unwrap_or("medledger")
            .to_owned();
        let root = Issuer::from_ca_cert_der(&root_der.clone().into(), &root_key)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&organization, "", ISSUING_YEARS, 0);
        let serial = params
            .serial_number
            .clone()
            .expect("ca_params sets a serial");
        // A name of its own, so that CRLs (matched by issuer name) and
        // chains never confuse it with the CA it replaces.
        params.distinguished_name = name(
            &organization,
            &format!(
                "medledger issuing CA {}",
                &hex::encode(serial.to_bytes())[..8]
            ),
            None,
        );
        let cert = params.signed_by(&key, &root)?;

        // Stamp old revocations with their issuer before it stops being
        // the current one.
        let state = self.state()?;
        self.write_state(&state)?;
        let previous_dir = self.dir.join(layout::PREVIOUS);
        std::fs::create_dir_all(&previous_dir).map_err(|e| Error::io(&previous_dir, e))?;
        let kept = previous_dir.join(&self.issuing.serial);
        let kept_key = with_suffix(&kept, ".key");
        if !kept_key.exists() {
            files::write_secret(&kept_key, self.issuing.key.serialize_pem().as_bytes())?;
        }
        files::write_public(
            &with_suffix(&kept, ".crt"),
            files::to_pem("CERTIFICATE", &self.issuing.der).as_bytes(),
        )?;
        let key_path = self.dir.join(layout::ISSUING_KEY);
        let cert_path = self.dir.join(layout::ISSUING_CERT);
        let new_key = with_suffix(&key_path, ".new");
        if new_key.exists() {
            std::fs::remove_file(&new_key).map_err(|e| Error::io(&new_key, e))?;
        }
        files::write_secret(&new_key, key.serialize_pem().as_bytes())?;
        files::write_public(&with_suffix(&cert_path, ".new"), cert.pem().as_bytes())?;
        let ca = Ca::open(&self.dir)?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Retires the previous issuing CA with `serial` (hex): the root
    /// revokes it, its key is deleted, and from the next CRL on nothing it
    /// issued is accepted. The current issuing CA cannot be retired; rotate
    /// first. Returns the CA as it now is.
    pub fn retire(self, serial: &str) -> Result<Ca> {
        let serial = serial.replace(':', "").to_lowercase();
        if serial == self.issuing.serial {
            return Err(Error::Request(format!(
                "{serial} is the current issuing CA; run `medledger ca rotate` first, then retire it"
            )));
        }
        let Some(retiring) = self.previous.iter().find(|p| p.serial == serial) else {
            return Err(Error::Request(format!(
                "no previous issuing CA {serial}; previous: {}",
                if self.previous.is_empty() {
                    "none".to_owned()
                } else {
                    self.previous_serials().join(", ")
                }
            )));
        };
        let mut state = self.state()?;
        if !state
            .revoked
            .iter()
            .any(|r| r.issuer == ROOT_ISSUER && r.serial == serial)
        {
            let path = self
                .dir
                .join(layout::PREVIOUS)
                .join(format!("{serial}.crt"));
            state.revoked.push(Revoked {
                serial: serial.clone(),
                revoked_at: OffsetDateTime::now_utc().unix_timestamp(),
                subject: crate::identity::common_name(&parse_cert(&retiring.der, &path)?),
                issuer: ROOT_ISSUER.to_owned(),
            });
            self.write_state(&state)?;
        }
        // Revoked on record first; then the files go.
        let retired_dir = self.dir.join(layout::RETIRED);
        std::fs::create_dir_all(&retired_dir).map_err(|e| Error::io(&retired_dir, e))?;
        // The certificate moves first: a key left behind by a crash is
        // deleted by the next `open`.
        let previous = self.dir.join(layout::PREVIOUS).join(&serial);
        std::fs::rename(
            with_suffix(&previous, ".crt"),
            retired_dir.join(format!("{serial}.crt")),
        )
        .map_err(|e| Error::io(&previous, e))?;
        let ca = Ca::open(&self.dir)?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Issues a leaf certificate with a fresh key (and account, for all
    /// roles but device) and records it in `issued.jsonl`.
    pub fn issue(&self, request: &LeafRequest) -> Result<Issued> {
        let account = request.role.has_account().then(EthAccount::generate);
        let spec = request.to_spec(account.as_ref().map(EthAccount::address))?;
        let ca_not_after = self.issuing_not_after()?;
        if spec.not_after > ca_not_after {
            return Err(Error::Request(format!(
                "--days {} would outlive the issuing CA, which expires at {ca_not_after}",
                request.validity_days
            )));
        }
        self.issue_spec(&spec, request.key_alg, account)
    }

    /// Signs `spec` as it is for a fresh key of `key_alg` and records it.
    /// Performs no checks: [`LeafRequest::to_spec`] is the checked way in;
    /// this one also makes the deliberately wrong certificates of tests.
    pub fn issue_spec(
        &self,
        spec: &CertSpec,
        key_alg: KeyAlg,
        account: Option<EthAccount>,
    ) -> Result<Issued> {
        let key = KeyPair::generate_for(key_alg.rcgen())?;
        let serial = random_serial();
        let cert = spec
            .params(serial.clone())?
            .signed_by(&key, &self.issuing.issuer()?)?;
        let cert_der = patch_oids(cert.der());
        let line = serde_json::to_string(&IssuedLine {
            serial: &hex::encode(serial.to_bytes()),
            role: spec.role.name(),
            subject: &spec.common_name,
            fingerprint: hex::encode(medledger_protocol::kid_of(&cert_der)),
            not_after: spec.not_after.unix_timestamp(),
        })
        .expect("a log line serializes");
        let log = self.dir.join(layout::ISSUED);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(&log, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&log, e))?;
        Ok(Issued {
            cert_der,
            chain: vec![self.issuing.der.clone()],
            key_pkcs8: portable_pkcs8(key.serialize_der()),
            account,
        })
    }

    fn state(&self) -> Result<State> {
        let path = self.dir.join(layout::STATE);
        let mut state: State =
            serde_json::from_slice(&files::read(&path)?).map_err(|e| Error::Format {
                path,
                reason: e.to_string(),
            })?;
        for r in &mut state.revoked {
            if r.issuer.is_empty() {
                r.issuer = self.issuing.serial.clone();
            }
        }
        Ok(state)
    }

    fn write_state(&self, state: &State) -> Result<()> {
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        files::write_public(&self.dir.join(layout::STATE), &json)
    }

    /// The revoked certificates.
    pub fn revoked(&self) -> Result<Vec<Revoked>> {
        Ok(self.state()?.revoked)
    }

    /// Revokes the certificate `cert_der` (which the current or a previous
    /// issuing CA must have issued) and rewrites `crl.pem`. Returns the new
    /// CRLs (DER).
    pub fn revoke(&self, cert_der: &[u8]) -> Result<Vec<Vec<u8>>> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| Error::Request(format!("not a certificate: {e}")))?;
        let Some(issuer) = std::iter::once(&self.issuing)
            .chain(&self.previous)
            .find(|ca| ca.signed(&cert))
        else {
            return Err(Error::Request(
                "the certificate was not issued by this CA (or by an issuing CA already retired, which refuses it anyway)".into(),
            ));
        };
        let serial = hex::encode(cert.raw_serial());
        let mut state = self.state()?;
        if state.revoked.iter().any(|r| r.serial == serial) {
            return Err(Error::Request(format!(
                "certificate {serial} is already revoked"
            )));
        }
        state.revoked.push(Revoked {
            serial,
            revoked_at: OffsetDateTime::now_utc().unix_timestamp(),
            subject: crate::identity::common_name(&cert),
            issuer: issuer.serial.clone(),
        });
        self.write_state(&state)?;
        self.write_crl()
    }

    /// Signs fresh CRLs (next CRL number, valid 7 days): the root's (the
    /// retired issuing CAs) and one per trusted issuing CA; stores them
    /// all in `crl.pem` and returns them (DER), the root's first.
    pub fn write_crl(&self) -> Result<Vec<Vec<u8>>> {
        let mut state = self.state()?;
        state.crl_number += 1;
        let (root_der, root_key) = self.root()?;
        let root = Issuer::from_ca_cert_der(&root_der.into(), &root_key)?;
        let mut crls = vec![self.sign_crl(&root, &state, ROOT_ISSUER)?];
        for ca in std::iter::once(&self.issuing).chain(&self.previous) {
            crls.push(self.sign_crl(&ca.issuer()?, &state, &ca.serial)?);
        }
        self.write_state(&state)?;
        let pem: String = crls
            .iter()
            .map(|der| files::to_pem("X509 CRL", der))
            .collect();
        files::write_public(&self.dir.join(layout::CRL), pem.as_bytes())?;
        Ok(crls)
    }

    /// The CRL `issuer` signs of what `state` says it revoked.
    fn sign_crl<S: SigningKey>(
        &self,
        issuer: &Issuer<'_, S>,
        state: &State,
        issuer_id: &str,
    ) -> Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = state
            .revoked
            .iter()
            .filter(|r| r.issuer == issuer_id)
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&hex::decode(&r.serial).map_err(
                        |_| Error::Format {
                            path: self.dir.join(layout::STATE),
                            reason: format!("serial `{}` is not hex", r.serial),
                        },
                    )?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                        .unwrap_or(now),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let crl = CertificateRevocationListParams {
            this_update: now - CLOCK_SKEW,
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(state.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)?;
        Ok(crl.der().to_vec())
    }
}

fn name(organization: &str, common_name: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The PKCS#8 of a leaf key as every toolkit reads it. An Ed25519 key
/// comes as RFC 5958 version 2 (the seed and the public key), which
/// OpenSSL 3.0, Python's `cryptography` and `ssl` refuse; it is written as
/// version 1 (RFC 8410: the seed only), which they and ring all read.
/// Other keys are returned as they are.
fn portable_pkcs8(der: Vec<u8>) -> Vec<u8> {
    // SEQUENCE { INTEGER 1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING {
    // OCTET STRING (32) seed }, [1] public key }.
    const V2_BODY_HEAD: [u8; 14] = [
        0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    const V1_HEAD: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let v2 = der.first() == Some(&0x30)
        && der.get(1).map(|&n| usize::from(n) + 2) == Some(der.len())
        && der.get(2..16) == Some(&V2_BODY_HEAD[..]);
    match der.get(16..48) {
        Some(seed) if v2 => [&V1_HEAD[..], seed].concat(),
        _ => der,
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

impl CertSpec {
    fn params(&self, serial: SerialNumber) -> Result<CertificateParams> {
        let mut p = CertificateParams::new(self.subject_alt_names.clone())?;
        p.distinguished_name = name("medledger", &self.common_name, Some(self.role.name()));
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.serial_number = Some(serial);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = if self.role.serves_tls() {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.custom_extensions = self
            .extensions
            .iter()
            .map(|e| {
                let arcs = match &e.id {
                    ExtId::Medledger(ext) => placeholder_arcs(*ext),
                    ExtId::Other(arcs) => arcs.clone(),
                };
                let mut c = CustomExtension::from_oid_content(&arcs, e.value.clone());
                c.set_criticality(e.critical);
                c
            })
            .collect();
        Ok(p)
    }

    /// Signs the spec with a fresh key of its own: a self-signed
    /// certificate, as a forger would make (tests and attack simulation).
    pub fn self_signed(&self, key_alg: KeyAlg) -> Result<Issued> {
        let key = KeyPair::generate_for(key_alg.rcgen())?;
        let cert = self
            .params(random_serial())?
            .self_signed(&PatchingSigner(&key))?;
        Ok(Issued {
            cert_der: patch_oids(cert.der()),
            chain: Vec::new(),
            key_pkcs8: portable_pkcs8(key.serialize_der()),
            account: None,
        })
    }
}

// rcgen writes OIDs with 64-bit arcs, but our arc is 128 bits. So rcgen
// writes a placeholder OID of exactly the same encoded length, and the
// signer swaps in the real OID before signing; the returned DER gets the
// same swap. The DER stays well-formed because every length is unchanged.

/// `2.25.A.B.suffix` with A taking 10 base-128 digits and B 9, so that its
/// encoding has the length of `2.25.<128-bit arc>.suffix`.
fn placeholder_arcs(ext: Ext) -> Vec<u64> {
    const A: u64 = 0x8000_0000_6d65_646c;
    const B: u64 = 0x0100_0000_6c65_6467;
    vec![2, 25, A, B, u64::from(ext.suffix())]
}

fn oid_tlv(content: &[u8]) -> Vec<u8> {
    let mut v = vec![
        0x06,
        u8::try_from(content.len()).expect("our OIDs are short"),
    ];
    v.extend_from_slice(content);
    v
}

fn placeholder_oid_der(ext: Ext) -> Vec<u8> {
    let arcs = placeholder_arcs(ext);
    let mut out = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &arc in &arcs[2..] {
        let mut digits = Vec::new();
        let mut v = arc;
        loop {
            digits.push((v & 0x7f) as u8);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        for (i, d) in digits.iter().enumerate().rev() {
            out.push(d | if i == 0 { 0 } else { 0x80 });
        }
    }
    out
}

fn patch_oids(der: &[u8]) -> Vec<u8> {
    let mut out = der.to_vec();
    for ext in Ext::ALL {
        let (from, to) = (oid_tlv(&placeholder_oid_der(ext)), oid_tlv(&ext.oid_der()));
        debug_assert_eq!(from.len(), to.len());
        let mut i = 0;
        while let Some(pos) = out[i..]
            .windows(from.len())
            .position(|w| w == from.as_slice())
        {
            out[i + pos..i + pos + to.len()].copy_from_slice(&to);
            i += pos + to.len();
        }
    }
    out
}

/// Signs with the wrapped key after swapping placeholder OIDs for ours.
struct PatchingSigner<'a>(&'a KeyPair);

impl PublicKeyData for PatchingSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(self.0)
    }
}

impl SigningKey for PatchingSigner<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.0.sign(&patch_oids(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_key_files_are_pkcs8_v1_and_still_sign() {
        let key = KeyPair::generate_for(KeyAlg::Ed25519.rcgen()).expect("a key");
        let v1 = portable_pkcs8(key.serialize_der());
        assert_eq!(
            (v1.len(), v1[4]),
            (48, 0),
            "RFC 8410 version 1, the seed only"
        );
        let signer = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1)
            .expect("ring reads it");
        assert_eq!(
            ring::signature::KeyPair::public_key(&signer).as_ref(),
            key.public_key_raw()
        );
        // P-256 keys are left as they are.
        let p256 = KeyPair::generate_for(KeyAlg::P256.rcgen()).expect("a key");
        assert_eq!(portable_pkcs8(p256.serialize_der()), p256.serialize_der());
    }

    #[test]
    fn placeholder_oids_have_the_length_of_ours() {
        for ext in Ext::ALL {
            assert_eq!(placeholder_oid_der(ext).len(), ext.oid_der().len(), "{ext}");
            assert_ne!(placeholder_oid_der(ext), ext.oid_der());
        }
    }
}
