//! HTTPS over mutual TLS: serving an axum app to identified peers, and a
//! client for talking to one.
//!
//! ```text
//!  accept --cap on open connections--> Acceptor (handshake timeout, CRL)
//!     --> hyper HTTP/1.1 (header timeout) or HTTP/2, by ALPN
//!     --> app, each request carrying the peer's [`Peer`]
//!     closed as soon as a CRL update revokes the peer
//! ```

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;
use crate::tls::{Acceptor, ClientAuth, Rejection};
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Limits on what a peer may hold open.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections open at once; more are closed at accept. (The
    /// handshake deadline is the [`Acceptor`]'s.)
    pub max_connections: usize,
    /// An HTTP/1.1 request's headers must arrive in this time (slowloris).
    pub header_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 20_000,
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// Who sent a request: the verified certificate holder and their socket.
#[derive(Debug, Clone)]
pub struct Peer {
    /// From the client certificate.
    pub identity: Arc<Identity>,
    /// The certificates it presented (DER), leaf first.
    pub chain: Arc<[Vec<u8>]>,
    /// The TCP peer.
    pub addr: SocketAddr,
}

/// The TCP peer of a request, on every request (with or without a client
/// certificate): what per-address limits key on.
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// What happened to a connection that never reached the app.
#[derive(Debug)]
pub enum Refused {
    /// Over [`ServeLimits::max_connections`].
    AtCapacity(SocketAddr),
    /// The handshake failed.
    Handshake {
        /// The TCP peer.
        peer: SocketAddr,
        /// Why.
        rejection: Rejection,
        /// The SHA-256 of the certificate refused, if a certificate was.
        certificate: Option<medledger_protocol::Kid>,
    },
}

/// Serves `app` on `listener` to peers the acceptor admits, until the
/// future is dropped. Each request carries a [`Peer`] extension, but on an
/// [`Acceptor::optional`] acceptor, whose clients may come without a
/// certificate: those requests carry none.
/// `refused` hears of every connection turned away (for logs and metrics).
pub async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    client_auth: Arc<ClientAuth>,
    app: Router,
    limits: ServeLimits,
    refused: Arc<dyn Fn(Refused) + Send + Sync>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection ends with this task: a server stopped (dropped)
    // answers nothing more, on old connections either.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => {
                // Answers go out at once, not after the peer's delayed ACK.
                let _ = accepted.0.set_nodelay(true);
                accepted
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not die.
                tracing::warn!("medledger: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(Refused::AtCapacity(addr));
            continue;
        };
        let (acceptor, client_auth, app, refused) = (
            acceptor.clone(),
            client_auth.clone(),
            app.clone(),
            refused.clone(),
        );
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let (tls, identity) = match acceptor.accept_optional(tcp).await {
                Ok(accepted) => accepted,
                Err(rejection) => {
                    let certificate = crate::tls::refused_certificate(&rejection);
                    return refused(Refused::Handshake {
                        peer: addr,
                        rejection,
                        certificate,
                    });
                }
            };
            let identity = identity.map(Arc::new);
            let chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_vec())
                .collect::<Arc<[Vec<u8>]>>();
            let peer_chain = Arc::clone(&chain);
            let peer = identity.clone().map(|identity| Peer {
                identity,
                chain,
                addr,
            });
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    if let Some(peer) = &peer {
                        request.extensions_mut().insert(peer.clone());
                    }
                    request.extensions_mut().insert(RemoteAddr(addr));
                    app.clone().oneshot(request.map(Body::new))
                });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = connection => {}
                // Revoked while connected: the connection goes.
                () = revoked(&client_auth, identity.as_deref(), &peer_chain) => {}
            }
        });
    }
}

/// Resolves once `identity`'s certificate is revoked; never without one.
async fn revoked(client_auth: &ClientAuth, identity: Option<&Identity>, chain: &[Vec<u8>]) {
    match identity {
        Some(identity) => client_auth.revoked(identity, chain).await,
        None => std::future::pending().await,
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value as text, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting or the TLS handshake failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One mutual-TLS connection to a server, speaking HTTP/2 or HTTP/1.1 as
/// the server chose by ALPN.
pub struct Connection {
    sender: Sender,
    authority: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` (host:port) and verifies the server as
    /// `server_name` with `config` (see [`crate::client_config`]).
    pub async fn open(
        config: Arc<rustls::ClientConfig>,
        addr: &str,
        server_name: &str,
    ) -> Result<Connection, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let tcp = TcpStream::connect(addr).await.map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(connect_err)?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        let sender = if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(http)?;
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(http)?;
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Ok(Connection {
            sender,
            authority: addr.to_owned(),
        })
    }

    /// Whether the server chose HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends a request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
        let mut builder = hyper::Request::builder().method(method);
        builder = match self.sender {
            // HTTP/2 wants the full URI; HTTP/1.1 the path and a Host.
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.authority)),
            Sender::H1(_) => builder.uri(path).header("host", &self.authority),
        };
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(&e))?;
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.map_err(|e| http(&e))?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.map_err(|e| http(&e))?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| http(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// Binds `addr` (port 0: any free port); returns the listener and the
/// address it got.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted server may bind while old
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Connections the kernel queues before they are accepted (capped by
/// `net.core.somaxconn`). tokio's default of 1024 overflows when a
/// thousand devices connect at once (after a power cut, say): the kernel
/// drops the excess, and each dropped device waits a second for its SYN
/// to be sent again.
const LISTEN_BACKLOG: u32 = 8192;

/// What a listener of `service` (e.g. "medledger collector") does with a
/// connection it turned away before any request: counts it in the metric
/// `name` by cause, and logs it with the peer's address and the cause,
/// rate-limited ([`LogThrottle`]).
pub fn refusals(
    metrics: Arc<Metrics>,
    name: &'static str,
    service: &'static str,
) -> Arc<dyn Fn(Refused) + Send + Sync> {
    let log = LogThrottle::new("refused connections");
    Arc::new(move |refused| {
        let (peer, cause, why, certificate) = match &refused {
            Refused::AtCapacity(peer) => (
                peer,
                "at-capacity",
                "at its connection limit".to_owned(),
                None,
            ),
            Refused::Handshake {
                peer,
                rejection,
                certificate,
            } => (
                peer,
                rejection.problem_type().name(),
                rejection.to_string(),
                *certificate,
            ),
        };
        metrics.add(
            name,
            "Connections refused before any request, by cause.",
            &[("cause", cause)],
            1,
        );
        if log.admit() {
            let fingerprint = certificate.map(hex::encode).unwrap_or_default();
            tracing::warn!(%peer, cause, fingerprint, "{service}: refused a connection: {why}");
        }
    })
}

/// Background tasks that stop when this is dropped.
#[derive(Debug, Default)]
pub struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Tasks {
    /// Runs `task` until this is dropped.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// An RFC 9457 problem answer of `kind`, with `detail` for a person.
pub fn problem_response(
    kind: medledger_protocol::ProblemType,
    detail: impl Into<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let p = medledger_protocol::Problem::new(kind, detail);
    (
        axum::http::StatusCode::from_u16(p.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST),
        [(
            axum::http::header::CONTENT_TYPE,
            medledger_protocol::problem::PROBLEM_JSON,
        )],
        p.to_json(),
    )
        .into_response()
}

/// [`problem_response`] that asks the client to come back in `seconds`
/// (`Retry-After`).
pub fn problem_retry_after(
    kind: medledger_protocol::ProblemType,
    detail: impl Into<String>,
    seconds: u64,
) -> axum::response::Response {
    let mut response = problem_response(kind, detail);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(seconds),
    );
    response
}

/// At most 64 characters of what a client sent, to quote it back.
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What an unknown path answers: 404 `not-found`.
pub async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    problem_response(
        medledger_protocol::ProblemType::NotFound,
        format!("nothing here: {}", bounded(uri.path())),
    )
}

/// Middleware: every error answer is problem+json, also those no handler
/// wrote (another method on a known path, path and query values the router
/// could not parse). Give the router [`not_found`] as its fallback too.
pub async fn problems_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use medledger_protocol::ProblemType;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| {
            t.as_bytes()
                .starts_with(medledger_protocol::problem::PROBLEM_JSON.as_bytes())
        });
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let said = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let path = bounded(&path);
    match status {
        axum::http::StatusCode::NOT_FOUND => {
            problem_response(ProblemType::NotFound, format!("nothing here: {path}"))
        }
        axum::http::StatusCode::METHOD_NOT_ALLOWED => problem_response(
            ProblemType::MethodNotAllowed,
            format!("{path} does not answer {method}"),
        ),
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            problem_response(ProblemType::TooLarge, format!("{path}: {}", bounded(&said)))
        }
        s if s.is_client_error() => problem_response(
            ProblemType::Malformed,
            format!("{method} {path}: {}", bounded(&said)),
        ),
        _ => problem_response(
            ProblemType::Unavailable,
            "the service could not answer; try again",
        ),
    }
}
