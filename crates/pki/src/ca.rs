//! The certificate authority: a root CA, an issuing CA, leaf certificates for
//! every role, and the CRL.
//!
//! A CA directory holds:
//!
//! ```text
//! root.crt  root.key        self-signed root (key 0600)
//! issuing.crt issuing.key   issuing CA signed by the root (key 0600)
//! crl.pem                   current CRL of the issuing CA
//! state.json                CRL number and revoked serials
//! issued.jsonl              one line per certificate issued
//! ```

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
            (None, Some(epc), _) => epc.to_tag_uri(),
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
        let key_pkcs8 = files::read_first(&with_suffix(prefix, ".key"), "PRIVATE KEY")?;
        let eth = with_suffix(prefix, ".eth.key");
        let account = if eth.exists() {
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
    /// (PKCS#8 PEM, 0600) and, with an account, `PREFIX.eth.key` (hex, 0600).
    /// Refuses to overwrite an existing key.
    pub fn write(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        let crt = with_suffix(prefix, ".crt");
        let key = with_suffix(prefix, ".key");
        let eth = with_suffix(prefix, ".eth.key");
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
    issuing_der: Vec<u8>,
    issuing_key: KeyPair,
}

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
        let now = OffsetDateTime::now_utc();
        let ca_params = |cn: &str, years: i64, path_len: u8| {
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
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params("medledger root CA", 20, 1);
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, &root_key);
        let issuing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issuing_cert =
            ca_params("medledger issuing CA", 10, 0).signed_by(&issuing_key, &root)?;

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
            issuing_der: issuing_cert.der().to_vec(),
            issuing_key,
        };
        ca.write_state(&State::default())?;
        ca.write_crl()?;
        Ok(ca)
    }

    /// Opens an initialised CA directory.
    pub fn open(dir: &Path) -> Result<Ca> {
        let key_path = dir.join(layout::ISSUING_KEY);
        if !key_path.exists() {
            return Err(Error::Request(format!(
                "{} is not a CA directory (no {}); run `medledger ca init --dir {}` first",
                dir.display(),
                layout::ISSUING_KEY,
                dir.display()
            )));
        }
        let key_pem = String::from_utf8(files::read(&key_path)?).map_err(|_| Error::Format {
            path: key_path.clone(),
            reason: "not UTF-8 PEM".into(),
        })?;
        let issuing_key = KeyPair::from_pem(&key_pem).map_err(|e| Error::Format {
            path: key_path,
            reason: e.to_string(),
        })?;
        let issuing_der = files::read_first(&dir.join(layout::ISSUING_CERT), "CERTIFICATE")?;
        Ok(Ca {
            dir: dir.to_owned(),
            issuing_der,
            issuing_key,
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

    /// The issuing CA certificate.
    pub fn issuing_cert_der(&self) -> &[u8] {
        &self.issuing_der
    }

    fn issuing_not_after(&self) -> Result<OffsetDateTime> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(&self.issuing_der).map_err(|e| Error::Format {
                path: self.dir.join(layout::ISSUING_CERT),
                reason: e.to_string(),
            })?;
        Ok(cert.validity().not_after.to_datetime())
    }

    fn issuer(&self) -> Result<Issuer<'static, PatchingSigner<'_>>> {
        Ok(Issuer::from_ca_cert_der(
            &self.issuing_der.clone().into(),
            PatchingSigner(&self.issuing_key),
        )?)
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
            .signed_by(&key, &self.issuer()?)?;
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
            chain: vec![self.issuing_der.clone()],
            key_pkcs8: key.serialize_der(),
            account,
        })
    }

    fn state(&self) -> Result<State> {
        let path = self.dir.join(layout::STATE);
        serde_json::from_slice(&files::read(&path)?).map_err(|e| Error::Format {
            path,
            reason: e.to_string(),
        })
    }

    fn write_state(&self, state: &State) -> Result<()> {
        let json = serde_json::to_vec_pretty(state).expect("state serializes");
        files::write_public(&self.dir.join(layout::STATE), &json)
    }

    /// The revoked certificates.
    pub fn revoked(&self) -> Result<Vec<Revoked>> {
        Ok(self.state()?.revoked)
    }

    /// Revokes the certificate `cert_der` (which this CA must have issued)
    /// and rewrites `crl.pem`. Returns the new CRL (DER).
    pub fn revoke(&self, cert_der: &[u8]) -> Result<Vec<u8>> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| Error::Request(format!("not a certificate: {e}")))?;
        let (_, issuing) = X509Certificate::from_der(&self.issuing_der)
            .map_err(|e| Error::Request(e.to_string()))?;
        if cert.verify_signature(Some(issuing.public_key())).is_err() {
            return Err(Error::Request(
                "the certificate was not issued by this CA".into(),
            ));
        }
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
        });
        self.write_state(&state)?;
        self.write_crl()
    }

    /// Signs a fresh CRL (next CRL number, valid 7 days), stores it as
    /// `crl.pem` and returns its DER.
    pub fn write_crl(&self) -> Result<Vec<u8>> {
        let mut state = self.state()?;
        state.crl_number += 1;
        let now = OffsetDateTime::now_utc();
        let revoked_certs = state
            .revoked
            .iter()
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
        .signed_by(&self.issuer()?)?;
        self.write_state(&state)?;
        let der = crl.der().to_vec();
        files::write_public(
            &self.dir.join(layout::CRL),
            files::to_pem("X509 CRL", &der).as_bytes(),
        )?;
        Ok(der)
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
            key_pkcs8: key.serialize_der(),
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
    fn placeholder_oids_have_the_length_of_ours() {
        for ext in Ext::ALL {
            assert_eq!(placeholder_oid_der(ext).len(), ext.oid_der().len(), "{ext}");
            assert_ne!(placeholder_oid_der(ext), ext.oid_der());
        }
    }
}
