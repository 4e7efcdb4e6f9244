//! A real mTLS server on loopback, and every kind of client it must refuse.

use medledger_pki::ca::layout;
use medledger_pki::{
    Acceptor, Ca, CertSpec, ClientAuth, Credentials, Epc, Ext, ExtId, Identity, IdentityError,
    Issued, KeyAlg, LeafRequest, RawExtension, Rejection, Role, client_config, ext, files,
    server_config,
};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const EPC: &str = "urn:epc:tag:sgtin-96:3.0614141.812345.6789";

struct Collector {
    ca: Ca,
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    root: Vec<u8>,
    auth: Arc<ClientAuth>,
    results: mpsc::UnboundedReceiver<Result<Identity, Rejection>>,
}

fn device_request() -> LeafRequest {
    let mut r = LeafRequest::new(Role::Device);
    r.epc = Some(EPC.parse().unwrap());
    r.group = Some("icu-hr-monitor".into());
    r.rule = Some("hr-basic".into());
    r
}

/// A CA, a collector certificate, and a server accepting devices only that
/// reports each connection's outcome.
async fn collector() -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), "medledger test").unwrap();
    let mut req = LeafRequest::new(Role::Collector);
    req.location = Some("cardiology/204/B".parse().unwrap());
    let own = Credentials::from_issued(&ca.issue(&req).unwrap());
    let root = ca.root_cert_der().unwrap();
    let crl = files::read_der_blocks(&ca.dir().join(layout::CRL), "X509 CRL").unwrap();
    let auth = ClientAuth::new(&root, crl, &[Role::Device]).unwrap();
    let acceptor = Acceptor::new(
        server_config(&own, auth.clone()).unwrap(),
        Duration::from_secs(5),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, results) = mpsc::unbounded_channel();
    let server_auth = auth.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, auth, tx) = (acceptor.clone(), server_auth.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok((mut stream, id)) => {
                        let _ = stream.write_all(b"welcome\n").await;
                        let _ = tx.send(Ok(id.clone()));
                        // Serve until the client leaves or its certificate
                        // is revoked.
                        let chain: Vec<Vec<u8>> = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .unwrap_or_default()
                            .iter()
                            .map(|c| c.to_vec())
                            .collect();
                        let mut sink = Vec::new();
                        tokio::select! {
                            _ = stream.read_to_end(&mut sink) => {}
                            () = auth.revoked(&id, &chain) => {}
                        }
                        let _ = stream.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    Collector {
        ca,
        _dir: dir,
        addr,
        root,
        auth,
        results,
    }
}

impl Collector {
    /// Connects with `creds` (or none), and returns what the server decided.
    async fn connect(&mut self, creds: Option<&Credentials>) -> Result<Identity, Rejection> {
        let mut config =
            Arc::unwrap_or_clone(client_config(None, &self.root, &[Role::Collector]).unwrap());
        if let Some(creds) = creds {
            // Present the certificate as it is: `client_config` would refuse
            // to load some of the broken ones this test needs to send.
            let key = rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(creds.key.clone_key())
                .unwrap();
            let certified = rustls::sign::CertifiedKey::new(creds.chain.clone(), key);
            config.client_auth_cert_resolver =
                Arc::new(rustls::sign::SingleCertAndKey::from(certified));
        }
        self.dial(Arc::new(config)).await
    }

    /// Connects with `config` and returns what the server decided.
    async fn dial(&mut self, config: Arc<rustls::ClientConfig>) -> Result<Identity, Rejection> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("localhost").unwrap();
        // The client may or may not see the refusal, depending on when the
        // server sends its alert; the server's verdict is what counts.
        if let Ok(mut stream) = connector.connect(name, tcp).await {
            let mut greeting = [0u8; 8];
            let _ = stream.read_exact(&mut greeting).await;
        }
        self.verdict().await
    }

    /// Connects through the configuration a device would use, and reads the
    /// greeting of an accepted connection; the connection stays open.
    async fn open(
        &mut self,
        creds: &Credentials,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, Identity) {
        let config = client_config(Some(creds), &self.root, &[Role::Collector]).unwrap();
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .unwrap();
        let mut greeting = [0u8; 8];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"welcome\n");
        (stream, self.verdict().await.unwrap())
    }

    async fn verdict(&mut self) -> Result<Identity, Rejection> {
        tokio::time::timeout(Duration::from_secs(10), self.results.recv())
            .await
            .expect("the server decides within 10 s")
            .expect("the server is running")
    }

    fn issue_spec(&self, spec: &CertSpec) -> Credentials {
        Credentials::from_issued(&self.ca.issue_spec(spec, KeyAlg::P256, None).unwrap())
    }
}

fn device_spec() -> CertSpec {
    device_request().to_spec(None).unwrap()
}

fn without(spec: &mut CertSpec, ext: Ext) {
    spec.extensions.retain(|e| e.id != ExtId::Medledger(ext));
}

fn replace(spec: &mut CertSpec, ext: Ext, value: Vec<u8>) {
    without(spec, ext);
    spec.extensions.push(RawExtension::medledger(ext, value));
}

#[tokio::test]
async fn a_valid_device_is_accepted_with_its_identity() {
    let mut c = collector().await;
    // Through the configuration a device would use.
    let issued = c.ca.issue(&device_request()).unwrap();
    let (stream, id) = c.open(&Credentials::from_issued(&issued)).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(id.epc().unwrap().to_tag_uri(), EPC);

    for alg in [KeyAlg::P256, KeyAlg::Ed25519] {
        let mut req = device_request();
        req.key_alg = alg;
        let issued = c.ca.issue(&req).unwrap();
        let id = c
            .connect(Some(&Credentials::from_issued(&issued)))
            .await
            .unwrap();
        assert_eq!(id.role, Role::Device);
        assert_eq!(id.epc().unwrap().to_tag_uri(), EPC);
        assert_eq!(id.key.algorithm(), alg.reading_algorithm());
        assert_eq!(id.fingerprint, medledger_protocol::kid_of(&issued.cert_der));
        let medledger_pki::Details::Device { group, rule, .. } = &id.details else {
            panic!("a device has device details")
        };
        assert_eq!(
            (group.as_str(), rule.as_str()),
            ("icu-hr-monitor", "hr-basic")
        );
    }
}

#[tokio::test]
async fn certificates_from_elsewhere_are_untrusted() {
    let mut c = collector().await;
    // Another CA entirely.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::init(other_dir.path(), "medledger test").unwrap();
    let foreign = Credentials::from_issued(&other.issue(&device_request()).unwrap());
    assert!(matches!(
        c.connect(Some(&foreign)).await,
        Err(Rejection::UntrustedCertificate(_))
    ));
    // Self-signed, copying our subject and every extension.
    let forged = device_spec().self_signed(KeyAlg::P256).unwrap();
    assert!(matches!(
        c.connect(Some(&Credentials::from_issued(&forged))).await,
        Err(Rejection::UntrustedCertificate(_))
    ));
    // The same, sent along with our real issuing CA certificate.
    let forged = Issued {
        chain: vec![c.ca.issuing_cert_der().to_vec()],
        ..forged
    };
    assert!(matches!(
        c.connect(Some(&Credentials::from_issued(&forged))).await,
        Err(Rejection::UntrustedCertificate(_))
    ));
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let mut c = collector().await;
    let now = OffsetDateTime::now_utc();
    let mut spec = device_spec();
    spec.not_before = now - time::Duration::days(30);
    spec.not_after = now - time::Duration::days(1);
    assert!(matches!(
        c.connect(Some(&c.issue_spec(&spec))).await,
        Err(Rejection::Expired)
    ));
    let mut spec = device_spec();
    spec.not_before = now + time::Duration::days(1);
    spec.not_after = now + time::Duration::days(30);
    assert!(matches!(
        c.connect(Some(&c.issue_spec(&spec))).await,
        Err(Rejection::NotYetValid)
    ));
}

#[tokio::test]
async fn a_revoked_device_is_refused_once_the_new_crl_is_loaded() {
    let mut c = collector().await;
    let issued = c.ca.issue(&device_request()).unwrap();
    let creds = Credentials::from_issued(&issued);
    assert!(c.connect(Some(&creds)).await.is_ok());
    let crls = c.ca.revoke(&issued.cert_der).unwrap();
    c.auth.update_crls(crls).unwrap();
    assert!(matches!(
        c.connect(Some(&creds)).await,
        Err(Rejection::Revoked)
    ));
    // Others are unaffected.
    let other = Credentials::from_issued(&c.ca.issue(&device_request()).unwrap());
    assert!(c.connect(Some(&other)).await.is_ok());
}

#[tokio::test]
async fn a_revoked_device_cannot_resume_an_earlier_session() {
    let mut c = collector().await;
    let issued = c.ca.issue(&device_request()).unwrap();
    // One client configuration, kept as a real device keeps it: it would
    // offer to resume its earlier session.
    let config = client_config(
        Some(&Credentials::from_issued(&issued)),
        &c.root,
        &[Role::Collector],
    )
    .unwrap();
    assert!(c.dial(config.clone()).await.is_ok());
    assert!(c.dial(config.clone()).await.is_ok());
    c.auth
        .update_crls(c.ca.revoke(&issued.cert_der).unwrap())
        .unwrap();
    assert!(matches!(c.dial(config).await, Err(Rejection::Revoked)));
}

#[tokio::test]
async fn revoking_a_device_closes_its_open_connection() {
    let mut c = collector().await;
    let issued = c.ca.issue(&device_request()).unwrap();
    let (mut stream, id) = c.open(&Credentials::from_issued(&issued)).await;
    assert!(!c.auth.is_revoked(&id));
    let mut byte = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    assert!(
        still_open.is_err(),
        "the connection stays open while the device is in good standing"
    );

    c.auth
        .update_crls(c.ca.revoke(&issued.cert_der).unwrap())
        .unwrap();
    assert!(c.auth.is_revoked(&id));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server closes the revoked device's connection"
    );
}

#[tokio::test]
async fn a_rotated_issuing_ca_vouches_until_retired_then_nothing_it_issued_gets_in() {
    let mut c = collector().await;
    let before = c.ca.issue(&device_request()).unwrap();
    let doomed = c.ca.issue(&device_request()).unwrap();
    let (mut stream, _) = c.open(&Credentials::from_issued(&before)).await;
    let old_serial = c.ca.issuing_serial().to_owned();
    let dir = c.ca.dir().to_owned();

    // Rotated: the new CA issues, what the old one issued still gets in.
    let ca = Ca::open(&dir).unwrap().rotate().unwrap();
    assert_ne!(ca.issuing_serial(), old_serial);
    assert_eq!(ca.previous_serials(), vec![old_serial.clone()]);
    c.auth
        .update_crls(files::read_der_blocks(&dir.join(layout::CRL), "X509 CRL").unwrap())
        .unwrap();
    let after = ca.issue(&device_request()).unwrap();
    assert_eq!(after.chain, vec![ca.issuing_cert_der().to_vec()]);
    assert!(
        c.connect(Some(&Credentials::from_issued(&after)))
            .await
            .is_ok()
    );
    assert!(
        c.connect(Some(&Credentials::from_issued(&before)))
            .await
            .is_ok()
    );
    // The previous CA's certificates can still be revoked.
    c.auth
        .update_crls(ca.revoke(&doomed.cert_der).unwrap())
        .unwrap();
    assert!(matches!(
        c.connect(Some(&Credentials::from_issued(&doomed))).await,
        Err(Rejection::Revoked)
    ));

    // Retired: its key is gone, and nothing it issued gets in, nor stays.
    let ca = ca.retire(&old_serial).unwrap();
    assert!(ca.previous_serials().is_empty());
    assert!(
        !dir.join(layout::PREVIOUS)
            .join(format!("{old_serial}.key"))
            .exists()
    );
    c.auth.update_crls(ca.write_crl().unwrap()).unwrap();
    assert!(
        c.connect(Some(&Credentials::from_issued(&before)))
            .await
            .is_err()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection of the retired CA's device is closed"
    );
    assert!(
        c.connect(Some(&Credentials::from_issued(&after)))
            .await
            .is_ok()
    );
    // Reopened, the directory agrees; the current CA cannot be retired.
    let ca = Ca::open(&dir).unwrap();
    assert!(ca.previous_serials().is_empty());
    let current = ca.issuing_serial().to_owned();
    assert!(
        ca.retire(&current)
            .unwrap_err()
            .to_string()
            .contains("rotate` first")
    );
}

#[tokio::test]
async fn bad_role_extensions_are_refused_naming_the_extension() {
    let mut c = collector().await;

    let mut spec = device_spec();
    without(&mut spec, Ext::Role);
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(
            got,
            Err(Rejection::Identity(IdentityError::Missing(Ext::Role)))
        ),
        "{got:?}"
    );

    let mut spec = device_spec();
    spec.extensions
        .push(RawExtension::medledger(Ext::Role, ext::der_utf8("device")));
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(
            got,
            Err(Rejection::Identity(IdentityError::Duplicated(Ext::Role)))
        ),
        "{got:?}"
    );

    for bad in [
        ext::der_octets(b"device"),
        ext::der_utf8("janitor"),
        vec![0x0c, 0x05, b'd'],
    ] {
        let mut spec = device_spec();
        replace(&mut spec, Ext::Role, bad);
        let got = c.connect(Some(&c.issue_spec(&spec))).await;
        assert!(
            matches!(
                got,
                Err(Rejection::Identity(IdentityError::Malformed {
                    ext: Ext::Role,
                    ..
                }))
            ),
            "{got:?}"
        );
    }

    // A patient's certificate presented as a device.
    let patient = Credentials::from_issued(&c.ca.issue(&LeafRequest::new(Role::Patient)).unwrap());
    let got = c.connect(Some(&patient)).await;
    let Err(Rejection::Identity(IdentityError::WrongRole { found, expected })) = &got else {
        panic!("{got:?}")
    };
    assert_eq!(
        (*found, expected.as_slice()),
        (Role::Patient, &[Role::Device][..])
    );
    assert_eq!(got.unwrap_err().problem_type().name(), "wrong-role");
}

#[tokio::test]
async fn a_bad_epc_and_inconsistent_extensions_are_refused() {
    let mut c = collector().await;
    let epc: Epc = EPC.parse().unwrap();
    for (len, bytes) in [
        (11, &epc.as_bytes()[..11]),
        (13, &[epc.as_bytes().as_slice(), &[0]].concat()[..]),
    ] {
        let mut spec = device_spec();
        replace(&mut spec, Ext::Epc, ext::der_octets(bytes));
        let got = c.connect(Some(&c.issue_spec(&spec))).await;
        let Err(Rejection::Identity(IdentityError::Malformed {
            ext: Ext::Epc,
            reason,
        })) = &got
        else {
            panic!("{len}: {got:?}")
        };
        assert!(
            reason.contains(&format!("{len} bytes, expected 12")),
            "{reason}"
        );
    }
    // Twelve bytes, but not an SGTIN-96.
    let mut spec = device_spec();
    let mut wrong_header = *epc.as_bytes();
    wrong_header[0] = 0x35;
    replace(&mut spec, Ext::Epc, ext::der_octets(&wrong_header));
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(
            got,
            Err(Rejection::Identity(IdentityError::Malformed {
                ext: Ext::Epc,
                ..
            }))
        ),
        "{got:?}"
    );
    // A device certificate carrying an account address.
    let mut spec = device_spec();
    spec.extensions.push(RawExtension::medledger(
        Ext::Address,
        ext::der_octets(&[1; 20]),
    ));
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(
            got,
            Err(Rejection::Identity(IdentityError::Unexpected {
                ext: Ext::Address,
                role: Role::Device
            }))
        ),
        "{got:?}"
    );
    // No group.
    let mut spec = device_spec();
    without(&mut spec, Ext::Group);
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(
            got,
            Err(Rejection::Identity(IdentityError::Missing(Ext::Group)))
        ),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_critical_unknown_extension_is_refused() {
    let mut c = collector().await;
    let mut spec = device_spec();
    spec.extensions.push(RawExtension {
        id: ExtId::Other(vec![1, 3, 6, 1, 4, 1, 55555, 1]),
        critical: true,
        value: ext::der_utf8("must understand"),
    });
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(got, Err(Rejection::UnknownCriticalExtension)),
        "{got:?}"
    );
    // One of ours marked critical is refused by the same rule.
    let mut spec = device_spec();
    spec.extensions[0].critical = true;
    let got = c.connect(Some(&c.issue_spec(&spec))).await;
    assert!(
        matches!(got, Err(Rejection::UnknownCriticalExtension)),
        "{got:?}"
    );
}

#[tokio::test]
async fn plain_http_gets_a_problem_and_tls_without_a_certificate_is_refused() {
    let mut c = collector().await;
    let mut tcp = TcpStream::connect(c.addr).await.unwrap();
    tcp.write_all(b"POST /v1/readings HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nabcd")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(
        response.contains("urn:medledger:problem:tls-required"),
        "{response}"
    );
    assert!(matches!(c.verdict().await, Err(Rejection::PlainText)));

    let got = c.connect(None).await;
    assert!(
        matches!(got, Err(Rejection::NoClientCertificate)),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_slow_handshake_times_out() {
    let mut c = collector().await;
    // Send a TLS record header and then nothing more.
    let mut tcp = TcpStream::connect(c.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let got = c.verdict().await;
    assert!(matches!(got, Err(Rejection::HandshakeTimeout)), "{got:?}");
    drop(tcp);
}

/// The kernel's count of connections dropped from full accept queues
/// (`TcpExt: ListenOverflows`), if it tells.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// A thousand and more devices connecting in the same instant (a ward back
/// after a power cut) are all queued by the kernel, even before the server
/// accepts any: none is dropped to wait a second for its SYN to be resent.
#[tokio::test]
async fn fifteen_hundred_simultaneous_connections_are_all_queued() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let Some(before) = listen_overflows().filter(|_| somaxconn >= 1_500) else {
        eprintln!(
            "\n!!! SKIPPED: no /proc/net/netstat, or net.core.somaxconn ({somaxconn}) below the 1500 this test queues !!!\n"
        );
        return;
    };
    let (listener, addr) = medledger_pki::https::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Nothing is accepted while they connect.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1_500 {
        // A dropped SYN is sent again after 1, 3, 7... s: a bound for a
        // failing run, not a measure.
        tasks.spawn(tokio::time::timeout(
            Duration::from_secs(20),
            tokio::net::TcpStream::connect(addr),
        ));
    }
    let mut connected = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Ok(stream)) = done.unwrap() {
            connected.push(stream);
        }
    }
    let dropped = listen_overflows().unwrap() - before;
    assert_eq!(
        (connected.len(), dropped),
        (1_500, 0),
        "connected, and dropped by the kernel from the full queue"
    );
    drop(listener);
}
