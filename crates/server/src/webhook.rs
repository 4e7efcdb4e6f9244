//! Alert webhooks: a patient (or an app acting for them) names an HTTPS
//! endpoint and a shared secret; every alert the patient's preferences
//! deliver is POSTed there as JSON, oldest first, signed with
//! `X-Medledger-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//! Delivery is at least once: an alert is retried, with backoff, until the
//! endpoint answers 2xx, and only then the next one is sent; the receiver
//! drops repeats by `id` (also in `X-Medledger-Alert-Id`).
//!
//! ```text
//!  PUT /v1/alerts/webhook --Guard::check--> stored (or 400 naming why)
//!  run, each second, per hook with pending alerts:
//!      Guard::check again (resolve once, check every address)
//!      --> TCP to a checked address --> TLS (system roots or webhook_ca;
//!          the URL's host for SNI and verification) --> POST, Host: host
//!      --> 2xx: next alert; 3xx (never followed), other, none in 10 s:
//!          counted, logged, retried with backoff
//! ```
//!
//! Only `https://` endpoints are reached, and never an internal address
//! (loopback, private, link-local, ...) or the server itself unless an
//! admin allows it with `webhook_allow`: the rules are in [`guard`].
//!
//! A webhook is as good as the certificate of the person who set it: it
//! is kept with the hook, checked before each delivery, and a hook whose
//! certificate is revoked (or expired) is removed, never delivered to.

mod guard;

use crate::State;
use crate::caller::Certificate;
pub(crate) use guard::Unreachable;
use guard::{Guard, Resolve, SystemResolver, Target};
pub use guard::{WebhookAllow, WebhookAllowError};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use medledger_storage::sqlx::{self, Row};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest wait between two attempts at one endpoint.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the TLS handshake, then the answer, may each take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer's body read (and dropped).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Where webhooks may go, and how they are reached.
pub(crate) struct Webhooks {
    guard: Guard,
    tls: TlsConnector,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Webhooks that may also reach `allow`, never `listeners` (the
    /// server's own sockets), and trust endpoints whose certificate chains
    /// to `ca` (DER), or with `None` to the system's roots.
    pub(crate) fn new(
        allow: Vec<WebhookAllow>,
        ca: Option<&[Vec<u8>]>,
        listeners: Vec<SocketAddr>,
    ) -> Result<Webhooks, rustls::Error> {
        Webhooks::with_resolver(allow, ca, listeners, Arc::new(SystemResolver))
    }

    fn with_resolver(
        allow: Vec<WebhookAllow>,
        ca: Option<&[Vec<u8>]>,
        listeners: Vec<SocketAddr>,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Webhooks, rustls::Error> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Webhooks {
            guard: Guard::new(allow, listeners, resolver),
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Parses `url` and checks where it goes (resolving its host once):
    /// what `PUT /v1/alerts/webhook` and every delivery do first.
    pub(crate) async fn check(&self, url: &str) -> Result<Target, Unreachable> {
        self.guard.check(url).await
    }
}

/// The trust anchors for endpoints: `ca`, or the system's.
fn roots(ca: Option<&[Vec<u8>]>) -> Result<RootCertStore, rustls::Error> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for der in ca {
                store.add(CertificateDer::from(der.clone()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!("medledger server: the system's CA certificates: {e}");
            }
            let (added, _unusable) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    "medledger server: no system CA certificates found: webhook deliveries \
                     fail until webhook_ca names the CAs of the endpoints"
                );
            }
        }
    }
    Ok(store)
}

/// Why a delivery failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    /// The certificate of the person who set the webhook is revoked,
    /// expired, or was never kept: the hook ends.
    #[error("the certificate that set it is revoked, expired or unknown")]
    SetterRevoked,
    /// The webhook is no longer one the server may reach.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// Reading the alerts or recording a delivery.
    #[error("the database: {0}")]
    Db(#[from] sqlx::Error),
    /// No checked address took the connection.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (an untrusted certificate, say).
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// HTTP went wrong.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The alert could not be encoded.
    #[error("encoding the alert: {0}")]
    Encode(#[from] serde_json::Error),
    /// No handshake or answer in time.
    #[error("no {0} within {ANSWER_TIMEOUT:?}")]
    Timeout(&'static str),
    /// A redirect, which is never followed.
    #[error("the endpoint answered {0}; redirects are not followed")]
    Redirect(hyper::StatusCode),
    /// Any other answer than 2xx.
    #[error("the endpoint answered {0}")]
    Status(hyper::StatusCode),
}

/// A patient's webhook.
#[derive(Debug, Clone)]
struct Hook {
    patient: [u8; 32],
    url: String,
    secret: String,
    delivered: u64,
    /// The certificate chain (PEM, leaf first) of whoever set it; `None`
    /// for hooks set before certificates were kept.
    certificate: Option<String>,
}

/// A webhook to set: where, the shared secret, and the certificate of the
/// person setting it.
pub(crate) struct NewHook<'a> {
    pub(crate) url: &'a str,
    pub(crate) secret: &'a str,
    pub(crate) set_by: &'a Certificate,
}

/// Sets (or with `None` removes) the patient's webhook; delivery starts
/// with the alerts after `after`. The caller has checked `url`
/// ([`Webhooks::check`]).
pub(crate) async fn set(
    state: &State,
    patient: &[u8; 32],
    hook: Option<NewHook<'_>>,
    after: u64,
) -> Result<(), sqlx::Error> {
    remove(state, patient).await?;
    if let Some(hook) = hook {
        let pem = hook.set_by.to_pem();
        sqlx::query(
            "INSERT INTO alert_webhooks (patient, url, secret, delivered, certificate) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(patient.to_vec())
        .bind(hook.url)
        .bind(hook.secret)
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(pem)
        .execute(state.db.pool())
        .await?;
    }
    Ok(())
}

async fn remove(state: &State, patient: &[u8; 32]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM alert_webhooks WHERE patient = $1")
        .bind(patient.to_vec())
        .execute(state.db.pool())
        .await?;
    Ok(())
}

/// The URL of the patient's webhook, if any.
pub(crate) async fn url(state: &State, patient: &[u8; 32]) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT url FROM alert_webhooks WHERE patient = $1")
        .bind(patient.to_vec())
        .fetch_optional(state.db.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("url")?),
        None => None,
    })
}

/// Delivers alerts to every webhook, forever.
pub(crate) async fn run(state: Arc<State>, every: Duration) {
    let mut backoff: std::collections::HashMap<[u8; 32], (Duration, tokio::time::Instant)> =
        std::collections::HashMap::new();
    loop {
        // One server of those sharing the database delivers.
        match state.leases.job("webhooks").await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("medledger server: the webhook job's lease: {e}");
                tokio::time::sleep(every).await;
                continue;
            }
        }
        let hooks = match hooks(&state).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("medledger server: reading webhooks: {e}");
                Vec::new()
            }
        };
        for hook in hooks {
            if backoff
                .get(&hook.patient)
                .is_some_and(|(_, until)| tokio::time::Instant::now() < *until)
            {
                continue;
            }
            match deliver(&state, &hook).await {
                Ok(()) => {
                    backoff.remove(&hook.patient);
                }
                Err(Undelivered::SetterRevoked) => {
                    tracing::warn!(
                        "medledger server: webhook {}: removed: {}",
                        hook.url,
                        Undelivered::SetterRevoked
                    );
                    if let Err(e) = remove(&state, &hook.patient).await {
                        tracing::warn!("medledger server: removing webhook {}: {e}", hook.url);
                    }
                }
                Err(e) => {
                    let wait = backoff
                        .get(&hook.patient)
                        .map_or(Duration::from_millis(200), |(w, _)| {
                            (*w * 2).min(MAX_BACKOFF)
                        });
                    tracing::warn!(
                        "medledger server: webhook {}: {e}; again in {wait:?}",
                        hook.url
                    );
                    state.metrics.add(
                        "medledger_server_webhook_failures_total",
                        "Webhook deliveries that failed (and will be retried).",
                        &[],
                        1,
                    );
                    backoff.insert(hook.patient, (wait, tokio::time::Instant::now() + wait));
                }
            }
        }
        let mut newest = state.alerts.follow();
        let _ = tokio::time::timeout(every, newest.changed()).await;
    }
}

/// Whether the person who set `hook` still holds a certificate the server
/// accepts (revoking it ends the webhooks they set).
fn set_by_valid_certificate(state: &State, hook: &Hook) -> bool {
    hook.certificate
        .as_deref()
        .and_then(|pem| Certificate::verified_from_pem(pem, &state.client_auth))
        .is_some()
}

async fn hooks(state: &State) -> Result<Vec<Hook>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT patient, url, secret, delivered, certificate FROM alert_webhooks")
            .fetch_all(state.db.pool())
            .await?;
    rows.into_iter()
        .map(|r| {
            let patient: Vec<u8> = r.try_get("patient")?;
            Ok(Hook {
                patient: patient.as_slice().try_into().unwrap_or([0; 32]),
                url: r.try_get("url")?,
                secret: r.try_get("secret")?,
                delivered: u64::try_from(r.try_get::<i64, _>("delivered")?).unwrap_or(0),
                certificate: r.try_get("certificate")?,
            })
        })
        .collect()
}

/// Sends the hook's pending alerts one by one, recording each delivery.
/// Where the URL goes is checked first, resolving its host once; every
/// post connects to one of the addresses checked then (a [`Target`] is
/// made only by the check), and nothing is posted if any was refused.
/// Nothing pending: nothing is resolved.
async fn deliver(state: &State, hook: &Hook) -> Result<(), Undelivered> {
    let alerts = state
        .alerts
        .list(&hook.patient, hook.delivered, 100)
        .await?;
    if alerts.is_empty() {
        return Ok(());
    }
    if !set_by_valid_certificate(state, hook) {
        return Err(Undelivered::SetterRevoked);
    }
    let target = state.webhooks.check(&hook.url).await?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hook.secret.as_bytes());
    for alert in alerts {
        let body = serde_json::to_vec(&alert)?;
        let signature = hex::encode(ring::hmac::sign(&key, &body));
        post(&state.webhooks.tls, &target, body, &signature, alert.id).await?;
        sqlx::query("UPDATE alert_webhooks SET delivered = $1 WHERE patient = $2")
            .bind(i64::try_from(alert.id).unwrap_or(i64::MAX))
            .bind(hook.patient.to_vec())
            .execute(state.db.pool())
            .await?;
    }
    Ok(())
}

/// Connects to the first of `target`'s checked addresses that answers.
async fn connect(target: &Target) -> Result<(SocketAddr, TcpStream), Undelivered> {
    let mut last = None;
    for &addr in target.addrs() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok((addr, tcp)),
            Ok(Err(source)) => last = Some(Undelivered::Connect { addr, source }),
            Err(_) => {
                last = Some(Undelivered::Connect {
                    addr,
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
        }
    }
    // A target holds at least one address (`Guard::check`).
    Err(last.unwrap_or(Undelivered::Timeout("address")))
}

/// Aborts the connection task when the post is over, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One POST over HTTPS (HTTP/1.1) to a checked address of `target`; Ok on
/// a 2xx answer. A redirect is a failure: it is not followed.
async fn post(
    tls: &TlsConnector,
    target: &Target,
    body: Vec<u8>,
    signature: &str,
    id: u64,
) -> Result<(), Undelivered> {
    let (addr, tcp) = connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(
        ANSWER_TIMEOUT,
        tls.connect(target.endpoint().server_name.clone(), tcp),
    )
    .await
    .map_err(|_| Undelivered::Timeout("TLS handshake"))?
    .map_err(|source| Undelivered::Tls { addr, source })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = hyper::Request::post(target.endpoint().path_and_query())
        .header(hyper::header::HOST, target.endpoint().authority())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("x-medledger-signature", format!("sha256={signature}"))
        .header("x-medledger-alert-id", id.to_string())
        .body(Full::new(bytes::Bytes::from(body)))?;
    let status = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Read a little of the body, so a receiver that answers early sees
        // its answer taken; the rest is dropped with the connection.
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        Ok::<_, Undelivered>(status)
    })
    .await
    .map_err(|_| Undelivered::Timeout("answer"))??;
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(Undelivered::Redirect(status))
    } else {
        Err(Undelivered::Status(status))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::guard::tests::FakeResolver;
    use super::*;
    use futures_util::FutureExt;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::AsyncReadExt;

    fn webhooks(allow: &[String], names: &Arc<FakeResolver>) -> Webhooks {
        Webhooks::with_resolver(
            allow.iter().map(|a| a.parse().unwrap()).collect(),
            None,
            Vec::new(),
            names.clone(),
        )
        .unwrap()
    }

    /// Allowed when it was set, refused at delivery (the admin narrowed
    /// `webhook_allow`, or the name now resolves elsewhere): the check that
    /// opens every delivery refuses it, and no connection is made.
    #[tokio::test]
    async fn a_webhook_allowed_when_set_but_not_at_delivery_is_not_connected_to() {
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = receiver.local_addr().unwrap();
        let names = Arc::new(FakeResolver::default());
        names.answer("relay.test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let url = format!("https://relay.test:{}/alerts", at.port());
        let allowed = webhooks(&[at.to_string()], &names);

        // Set time: allowed, and a delivery does connect (and starts TLS).
        let target = allowed.check(&url).await.unwrap();
        assert_eq!(target.addrs(), [at]);
        let posting = tokio::spawn({
            let tls = allowed.tls.clone();
            async move { post(&tls, &target, b"{}".to_vec(), "00", 1).await }
        });
        let (mut conn, _) = tokio::time::timeout(ANSWER_TIMEOUT, receiver.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(conn.read_u8().await.unwrap(), 0x16, "a TLS handshake");
        drop(conn);
        let failed = posting.await.unwrap().unwrap_err();
        assert!(matches!(failed, Undelivered::Tls { .. }), "{failed}");

        // The admin takes the address off the allow list.
        let narrowed = webhooks(&[], &names);
        let refused = narrowed.check(&url).await.unwrap_err();
        assert_eq!(
            refused.to_string(),
            "relay.test resolves to 127.0.0.1, a loopback address; \
             an admin may allow it with webhook_allow"
        );
        // The name moves to another local address.
        names.answer("relay.test", &["127.0.0.2".parse().unwrap()]);
        let refused = allowed.check(&url).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("127.0.0.2, a loopback address"),
            "{refused}"
        );
        // Neither refusal connected anywhere: nothing waits at the receiver.
        assert!(receiver.accept().now_or_never().is_none());
    }

    #[tokio::test]
    async fn the_webhook_ca_replaces_the_system_roots() {
        let bad = Webhooks::new(
            Vec::new(),
            Some(&[b"not a certificate".to_vec()]),
            Vec::new(),
        );
        assert!(bad.is_err());
        // The system's roots load (or, on a machine without any, the
        // server still starts and says so).
        assert!(Webhooks::new(Vec::new(), None, Vec::new()).is_ok());
    }
}
