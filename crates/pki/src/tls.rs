//! rustls configurations for mutual TLS between medledger parties.
//!
//! ```text
//!  TCP --peek: TLS record?--no--> 400 "TLS required", Rejection::PlainText
//!       |yes
//!  handshake --ClientAuth: webpki chain to our root, validity, CRL,
//!       |                  then Identity parse + role check
//!  (TlsStream, Identity)        else Rejection naming the cause
//! ```
//!
//! The CRL can be replaced while the server runs ([`ClientAuth::update_crls`]);
//! every later handshake checks against it.

use crate::files::{self, with_suffix};
use crate::identity::{Identity, IdentityError};
use crate::{Error, Result, Role};
use medledger_protocol::{Kid, Problem, ProblemType, kid_of};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// ALPN protocols offered by medledger servers, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(root_der: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    store.add(CertificateDer::from(root_der.to_vec()))?;
    Ok(Arc::new(store))
}

/// A party's own certificate chain and private key.
pub struct Credentials {
    /// Leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Credentials {
    /// Loads `PREFIX.crt` and `PREFIX.key` as written by `medledger ca issue`.
    pub fn load(prefix: &Path) -> Result<Self> {
        let crt = with_suffix(prefix, ".crt");
        let key = with_suffix(prefix, ".key");
        let chain = files::read_der_blocks(&crt, "CERTIFICATE")?;
        Self::from_der(chain, files::read_private(&key, "PRIVATE KEY")?)
    }

    /// The certificate, chain and key of a freshly issued certificate.
    pub fn from_issued(issued: &crate::Issued) -> Self {
        let chain = std::iter::once(&issued.cert_der).chain(&issued.chain);
        Credentials {
            chain: chain.map(|der| CertificateDer::from(der.clone())).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pkcs8.clone())),
        }
    }

    /// From a DER chain (leaf first) and a PKCS#8 key.
    pub fn from_der(chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>) -> Result<Self> {
        if chain.is_empty() {
            return Err(Error::Request(
                "a certificate chain needs at least the leaf".into(),
            ));
        }
        Ok(Credentials {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8)),
        })
    }

    /// The identity of the leaf.
    pub fn identity(&self) -> Result<Identity, IdentityError> {
        let leaf = self.chain.first().map_or(&[][..], |c| c.as_ref());
        Identity::from_peer_certificate(leaf)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

/// Verifies client certificates: chain to our root, validity, the current
/// CRL, then the medledger identity and its role.
pub struct ClientAuth {
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    allowed: Vec<Role>,
    webpki: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Serials on the current CRLs, for connections opened before.
    revoked: RwLock<HashSet<Vec<u8>>>,
    /// Bumped on every CRL update.
    crl_updates: watch::Sender<u64>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Trusts `root_der`, checks revocation against `crls` (DER), and
    /// accepts only certificates whose role is in `allowed`.
    pub fn new(root_der: &[u8], crls: Vec<Vec<u8>>, allowed: &[Role]) -> Result<Arc<Self>> {
        let roots = roots(root_der)?;
        let revoked = revoked_serials(&crls)?;
        let webpki = Self::build(&roots, crls)?;
        Ok(Arc::new(ClientAuth {
            hints: roots.subjects(),
            roots,
            allowed: allowed.to_vec(),
            webpki: RwLock::new(webpki),
            revoked: RwLock::new(revoked),
            crl_updates: watch::Sender::new(0),
        }))
    }

    /// Loads the root certificate and CRL files (PEM or DER).
    pub fn load(root: &Path, crl: &Path, allowed: &[Role]) -> Result<Arc<Self>> {
        let root = files::read_first(root, "CERTIFICATE")?;
        Self::new(&root, files::read_der_blocks(crl, "X509 CRL")?, allowed)
    }

    fn build(
        roots: &Arc<RootCertStore>,
        crls: Vec<Vec<u8>>,
    ) -> Result<Arc<dyn ClientCertVerifier>> {
        if crls.is_empty() {
            return Err(Error::Request(
                "CRLs from the root and the issuing CA are required".into(),
            ));
        }
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .with_crls(crls.into_iter().map(CertificateRevocationListDer::from))
            .build()
            .map_err(|e| Error::Request(format!("cannot use the CRL: {e}")))
    }

    /// Replaces the CRLs: handshakes from now on use them, and
    /// [`ClientAuth::revoked`] wakes for connections already open.
    pub fn update_crls(&self, crls: Vec<Vec<u8>>) -> Result<()> {
        let revoked = revoked_serials(&crls)?;
        let verifier = Self::build(&self.roots, crls)?;
        *self.webpki.write().unwrap_or_else(|e| e.into_inner()) = verifier;
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        self.crl_updates.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Moves on each time the CRLs are replaced: what was verified under
    /// an older number must be verified again.
    pub fn crl_generation(&self) -> u64 {
        *self.crl_updates.borrow()
    }

    /// Whether the current CRLs list this certificate.
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&identity.serial)
    }

    /// Resolves once a CRL update revokes `identity` or, through its
    /// issuing CA, the `chain` it presented (leaf first): a connection's
    /// task selects on it to close connections of revoked peers.
    pub async fn revoked(&self, identity: &Identity, chain: &[Vec<u8>]) {
        let mut updates = self.crl_updates.subscribe();
        let refused = || {
            let Some((leaf, intermediates)) = chain.split_first() else {
                return false;
            };
            self.verify_certificate(leaf, intermediates, UnixTime::now())
                .is_err()
        };
        loop {
            if self.is_revoked(identity) || refused() {
                return;
            }
            if updates.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Verifies a certificate outside a handshake, as a handshake would
    /// (chain through `intermediates` to our root, validity at `at`, the
    /// current CRL, identity and role): for a server that re-checks the
    /// device certificates a collector forwards.
    pub fn verify_certificate(
        &self,
        leaf: &[u8],
        intermediates: &[Vec<u8>],
        at: UnixTime,
    ) -> Result<Identity, Rejection> {
        let leaf = CertificateDer::from(leaf);
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let verified = self.verify_client_cert(&leaf, &intermediates, at);
        // Not a handshake: nothing to tell the log of one.
        REFUSED_CERTIFICATE.set(None);
        verified.map_err(|e| Rejection::from_io(std::io::Error::other(e)))?;
        let identity = Identity::from_peer_certificate(&leaf).map_err(Rejection::Identity)?;
        if self.is_revoked(&identity) {
            return Err(Rejection::Revoked);
        }
        Ok(identity)
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.webpki
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

thread_local! {
    /// The SHA-256 of the certificate this thread's [`ClientAuth`] refused
    /// last in a handshake: rustls's error does not carry it, and the
    /// handshake fails in the same poll, on the same thread, as the
    /// verifier runs, so [`refused_certificate`] finds it there.
    static REFUSED_CERTIFICATE: std::cell::Cell<Option<Kid>> = const { std::cell::Cell::new(None) };
}

/// The SHA-256 of the certificate a handshake just refused as `rejection`,
/// for the log; call it where the handshake's error surfaces (the same
/// poll). `None` for refusals not about a certificate.
pub fn refused_certificate(rejection: &Rejection) -> Option<Kid> {
    let taken = REFUSED_CERTIFICATE.take();
    match rejection.problem_type() {
        ProblemType::UntrustedCertificate | ProblemType::Revoked | ProblemType::WrongRole => taken,
        _ => None,
    }
}

/// The serials listed on `crls` (DER).
fn revoked_serials(crls: &[Vec<u8>]) -> Result<HashSet<Vec<u8>>> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let mut serials = HashSet::new();
    for der in crls {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| Error::Request(format!("cannot use the CRL: {e}")))?;
        serials.extend(
            crl.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
    }
    Ok(serials)
}

fn identity_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// Parses and role-checks a certificate webpki has verified.
fn check_identity(der: &[u8], allowed: &[Role]) -> Result<(), rustls::Error> {
    let id = Identity::from_peer_certificate(der).map_err(identity_error)?;
    id.require_role(allowed).map_err(identity_error)
}

impl ClientCertVerifier for ClientAuth {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self
            .current()
            .verify_client_cert(end_entity, intermediates, now)
            .and_then(|_| check_identity(end_entity, &self.allowed));
        REFUSED_CERTIFICATE.set(verdict.is_err().then(|| kid_of(end_entity)));
        verdict.map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A server configuration presenting `own` and verifying clients with
/// `client_auth`; offers HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(
    own: &Credentials,
    client_auth: Arc<ClientAuth>,
) -> Result<Arc<rustls::ServerConfig>> {
    config_with_verifier(own, client_auth)
}

/// Like [`server_config`], but a client may connect without a
/// certificate (a browser whose user signs in with a key instead); one it
/// does present is verified exactly as there. Pair it with
/// [`Acceptor::optional`].
pub fn server_config_optional_client(
    own: &Credentials,
    client_auth: Arc<ClientAuth>,
) -> Result<Arc<rustls::ServerConfig>> {
    config_with_verifier(own, Arc::new(OptionalClientAuth(client_auth)))
}

/// [`ClientAuth`] with the certificate made optional.
#[derive(Debug)]
struct OptionalClientAuth(Arc<ClientAuth>);

impl ClientCertVerifier for OptionalClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn config_with_verifier(
    own: &Credentials,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.chain.clone(), own.key.clone_key())?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // No session resumption: a resumed session reuses the client
    // certificate verified back then, skipping today's CRL and validity
    // checks. Every connection gets a full handshake instead.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Verifies a server's certificate against our root and its role.
#[derive(Debug)]
struct ServerAuth {
    webpki: Arc<WebPkiServerVerifier>,
    allowed: Vec<Role>,
}

impl ServerCertVerifier for ServerAuth {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_identity(end_entity, &self.allowed)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A client configuration presenting `own` (or no certificate, with
/// `None`) that trusts servers chaining to `root_der` whose role is one of
/// `server_roles`.
pub fn client_config(
    own: Option<&Credentials>,
    root_der: &[u8],
    server_roles: &[Role],
) -> Result<Arc<rustls::ClientConfig>> {
    let webpki = WebPkiServerVerifier::builder_with_provider(roots(root_der)?, provider())
        .build()
        .map_err(|e| Error::Request(format!("cannot verify servers: {e}")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous() // Not weaker: webpki verification plus a role check.
        .with_custom_certificate_verifier(Arc::new(ServerAuth {
            webpki,
            allowed: server_roles.to_vec(),
        }));
    let mut config = match own {
        Some(own) => builder.with_client_auth_cert(own.chain.clone(), own.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Why a connection was refused before any request was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The first bytes were not a TLS handshake (plain HTTP, for instance).
    #[error("the client did not start TLS (plain text on the TLS port)")]
    PlainText,
    /// TLS without a client certificate.
    #[error("the client presented no certificate")]
    NoClientCertificate,
    /// The chain does not lead to our root, or a signature in it is wrong.
    #[error("the client certificate is not from the medledger CA: {0}")]
    UntrustedCertificate(String),
    /// Past `notAfter`.
    #[error("the client certificate has expired")]
    Expired,
    /// Before `notBefore`.
    #[error("the client certificate is not valid yet")]
    NotYetValid,
    /// On the CRL.
    #[error("the client certificate is revoked")]
    Revoked,
    /// A critical extension nobody here understands.
    #[error("the client certificate has an unknown critical extension")]
    UnknownCriticalExtension,
    /// A valid chain without a valid medledger identity for this service.
    #[error("{0}")]
    Identity(IdentityError),
    /// The handshake did not finish in time.
    #[error("the TLS handshake did not finish in time")]
    HandshakeTimeout,
    /// Any other TLS failure.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The socket failed.
    #[error("connection: {0}")]
    Io(std::io::Error),
}

impl Rejection {
    /// The stable problem type a log or metric reports it under.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            Rejection::Revoked => ProblemType::Revoked,
            Rejection::Identity(IdentityError::WrongRole { .. }) => ProblemType::WrongRole,
            Rejection::PlainText => ProblemType::TlsRequired,
            Rejection::HandshakeTimeout | Rejection::Io(_) | Rejection::Tls(_) => {
                ProblemType::Malformed
            }
            _ => ProblemType::UntrustedCertificate,
        }
    }

    fn from_io(e: std::io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Rejection::Io(e);
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Rejection::NoClientCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Rejection::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Rejection::NotYetValid
                }
                CertificateError::Revoked => Rejection::Revoked,
                CertificateError::UnhandledCriticalExtension => Rejection::UnknownCriticalExtension,
                CertificateError::Other(other) => {
                    if let Some(id) = other.0.downcast_ref::<IdentityError>() {
                        Rejection::Identity(id.clone())
                    } else if let Some(webpki::Error::UnsupportedCriticalExtension) =
                        other.0.downcast_ref()
                    {
                        Rejection::UnknownCriticalExtension
                    } else {
                        Rejection::UntrustedCertificate(other.to_string())
                    }
                }
                other => Rejection::UntrustedCertificate(format!("{other:?}")),
            },
            other => Rejection::Tls(other.clone()),
        }
    }
}

/// Accepts mutual-TLS connections, refusing plain text and bad certificates
/// before any application byte is read.
#[derive(Clone)]
pub struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    /// Whether a client may come without a certificate.
    optional: bool,
}

/// The TLS record type of a handshake; every TLS connection starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

impl Acceptor {
    /// An acceptor for `config` that gives up on handshakes slower than
    /// `handshake_timeout`.
    pub fn new(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout,
            optional: false,
        }
    }

    /// An acceptor for a [`server_config_optional_client`] configuration:
    /// [`Acceptor::accept_optional`] admits clients without a certificate.
    pub fn optional(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        Acceptor {
            optional: true,
            ..Acceptor::new(config, handshake_timeout)
        }
    }

    /// Runs the handshake on `tcp` and returns the stream with the client's
    /// identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), Rejection> {
        match self.handshake(tcp, false).await? {
            (stream, Some(identity)) => Ok((stream, identity)),
            (_, None) => Err(Rejection::NoClientCertificate),
        }
    }

    /// Like [`Acceptor::accept`], but on an [`Acceptor::optional`]
    /// acceptor a client without a certificate is admitted (`None`).
    pub async fn accept_optional(
        &self,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Identity>), Rejection> {
        self.handshake(tcp, self.optional).await
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        optional: bool,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Identity>), Rejection> {
        let work = async {
            let mut first = [0u8; 1];
            let n = tcp.peek(&mut first).await.map_err(Rejection::Io)?;
            if n == 0 {
                return Err(Rejection::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                refuse_plain_text(tcp, optional).await;
                return Err(Rejection::PlainText);
            }
            let stream = self.tls.accept(tcp).await.map_err(Rejection::from_io)?;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let identity = match leaf {
                Some(leaf) => Some(Identity::from_peer_certificate(leaf).map_err(|e| {
                    REFUSED_CERTIFICATE.set(Some(kid_of(leaf)));
                    Rejection::Identity(e)
                })?),
                None if optional => None,
                None => return Err(Rejection::NoClientCertificate),
            };
            Ok((stream, identity))
        };
        tokio::time::timeout(self.handshake_timeout, work)
            .await
            .unwrap_or(Err(Rejection::HandshakeTimeout))
    }
}

/// Tells a plain-HTTP client, in HTTP, that it must use TLS, then closes.
async fn refuse_plain_text(mut tcp: TcpStream, certificate_optional: bool) {
    let body = Problem::new(
        ProblemType::TlsRequired,
        if certificate_optional {
            "this port speaks HTTPS only"
        } else {
            "this port speaks HTTPS with a client certificate only"
        },
    )
    .to_json();
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        medledger_protocol::problem::PROBLEM_JSON,
        body.len()
    );
    // Best effort: the client may already be gone. Drain (a bounded amount
    // of) what it sent before closing, so the kernel does not answer unread
    // data with a reset that destroys the response in flight.
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = PLAIN_TEXT_DRAIN_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(PLAIN_TEXT_DRAIN_TIME, drain).await;
}

/// How much of a plain-text request is read and dropped before closing.
const PLAIN_TEXT_DRAIN_BYTES: usize = 64 * 1024;
/// How long to wait for it.
const PLAIN_TEXT_DRAIN_TIME: Duration = Duration::from_secs(1);
