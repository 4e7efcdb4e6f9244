//! HTTPS over mutual TLS: serving an axum app to identified peers, and a
//! client for talking to one.
//!
//! ```text
//!  accept --cap on open connections, per address--> Acceptor (handshake timeout, CRL)
//!     (an address over its limits: its new SYNs dropped by the kernel for 1 s)
//!     --> hyper HTTP/1.1 (header timeout) or HTTP/2, by ALPN
//!     --> app, each request carrying the peer's [`Peer`]
//!     closed as soon as a CRL update revokes the peer
//! ```

use crate::gate::Gate;
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
    /// Connections one IP address may hold open at once; more from it are
    /// closed at accept.
    pub max_connections_per_address: usize,
    /// New connections (each a TLS handshake) one IP address may open per
    /// second, sustained...
    pub handshakes_per_address_per_s: f64,
    /// ...and at once.
    pub handshake_burst_per_address: f64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 20_000,
            header_timeout: Duration::from_secs(5),
            max_connections_per_address: 2_048,
            handshakes_per_address_per_s: 200.0,
            handshake_burst_per_address: 2_048.0,
        }
    }
}

/// The HTTP/2 flow-control window of each request's body.
const H2_STREAM_WINDOW: u32 = 65_535;

/// What each IP address holds: open connections, and its handshake
/// bucket. An address holding nothing, with a full bucket, is forgotten.
#[derive(Debug)]
struct PerAddress {
    limits: ServeLimits,
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Held>>,
}

#[derive(Debug)]
struct Held {
    open: usize,
    tokens: f64,
    at: std::time::Instant,
}

/// One connection counted against its address until dropped.
struct AddressSlot {
    addresses: Arc<PerAddress>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    /// A slot for a new connection from `ip`, or why not.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Result<AddressSlot, &'static str> {
        let limits = &self.limits;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if held.len() > 65_536 {
            let burst = limits.handshake_burst_per_address;
            held.retain(|_, h| {
                h.open > 0
                    || h.tokens
                        + now.duration_since(h.at).as_secs_f64()
                            * limits.handshakes_per_address_per_s
                        < burst
            });
        }
        let h = held.entry(ip).or_insert(Held {
            open: 0,
            tokens: limits.handshake_burst_per_address,
            at: now,
        });
        h.tokens = (h.tokens
            + now.duration_since(h.at).as_secs_f64() * limits.handshakes_per_address_per_s)
            .min(limits.handshake_burst_per_address);
        h.at = now;
        if h.open >= limits.max_connections_per_address {
            return Err("address-at-capacity");
        }
        if h.tokens < 1.0 {
            return Err("handshake-rate");
        }
        h.tokens -= 1.0;
        h.open += 1;
        Ok(AddressSlot {
            addresses: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .addresses
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(&self.ip) {
            h.open = h.open.saturating_sub(1);
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
    /// Over the address's limits: `address-at-capacity`
    /// ([`ServeLimits::max_connections_per_address`]) or `handshake-rate`
    /// ([`ServeLimits::handshakes_per_address_per_s`]).
    Address(SocketAddr, &'static str),
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
    let addresses = Arc::new(PerAddress {
        limits: limits.clone(),
        held: std::sync::Mutex::new(std::collections::HashMap::new()),
    });
    // Every connection ends with this task: a server stopped (dropped)
    // answers nothing more, on old connections either.
    let mut connections = tokio::task::JoinSet::new();
    let mut gate = Gate::default();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = match gate.next_opening() {
            Some(at) => match tokio::time::timeout_at(at.into(), listener.accept()).await {
                Ok(accepted) => accepted,
                Err(_) => {
                    gate.apply(&listener, std::time::Instant::now());
                    continue;
                }
            },
            None => listener.accept().await,
        };
        let (tcp, addr) = match accepted {
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
        let address_slot = match addresses.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(cause) => {
                // Its next connections are dropped by the kernel for a while.
                let now = std::time::Instant::now();
                gate.shut(addr.ip(), now);
                gate.apply(&listener, now);
                refused(Refused::Address(addr, cause));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(Refused::AtCapacity(addr));
            continue;
        };
        gate.accepted(&tcp);
        let (acceptor, client_auth, app, refused) = (
            acceptor.clone(),
            client_auth.clone(),
            app.clone(),
            refused.clone(),
        );
        let header_timeout = limits.header_timeout;
        connections.spawn(async move {
            let _slots = (slot, address_slot);
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
            // HTTP/2's own default window (64 KiB) rather than hyper's
            // 1 MiB: a body refused before it is read (413) costs at most
            // that much decryption, not a megabyte a request.
            builder
                .http2()
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW);
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
        Connection::open_from(config, addr, server_name, None).await
    }

    /// [`Connection::open`] from the local address `from` (any if `None`),
    /// e.g. another loopback address than a test's other clients.
    pub async fn open_from(
        config: Arc<rustls::ClientConfig>,
        addr: &str,
        server_name: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<Connection, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        };
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let tcp = connect_from(addr, from).await.map_err(connect_err)?;
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
        let (peer, cause, certificate) = match &refused {
            Refused::AtCapacity(peer) => (peer, "at-capacity", None),
            Refused::Address(peer, cause) => (peer, *cause, None),
            Refused::Handshake {
                peer,
                rejection,
                certificate,
            } => (peer, rejection.problem_type().name(), *certificate),
        };
        metrics.add(
            name,
            "Connections refused before any request, by cause.",
            &[("cause", cause)],
            1,
        );
        // Words only for the lines written: a flood is refused by the tens
        // of thousands a second.
        if log.admit() {
            let why = match &refused {
                Refused::AtCapacity(_) => "at its connection limit".to_owned(),
                Refused::Address(_, cause) => format!("the address is over its limit ({cause})"),
                Refused::Handshake { rejection, .. } => rejection.to_string(),
            };
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
    medledger_protocol::Problem::new(kind, detail).into_response()
}

/// [`problem_response`] that asks the client to come back in `seconds`
/// (`Retry-After`).
pub fn problem_retry_after(
    kind: medledger_protocol::ProblemType,
    detail: impl Into<String>,
    seconds: u64,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    medledger_protocol::Problem::new(kind, detail)
        .retry_after(seconds)
        .into_response()
}

/// A TCP connection to `addr`, from the local address `from` if given.
pub async fn connect_from(
    addr: &str,
    from: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect(addr).await;
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for to in tokio::net::lookup_host(addr).await? {
        let socket = if to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        match socket.connect(to).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
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

/// Middleware: every error answer is problem+json (or, from a FHIR API, a
/// FHIR OperationOutcome), also those no handler wrote (another method on a known path, path and query values the router
/// could not parse). Give the router [`not_found`] as its fallback too.
pub async fn problems_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use medledger_protocol::ProblemType;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    // A FHIR API answers its errors as OperationOutcomes, its own way.
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| {
            let t = t.as_bytes();
            t.starts_with(medledger_protocol::problem::PROBLEM_JSON.as_bytes())
                || t.starts_with(b"application/fhir+json")
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_connection_cap_and_handshake_bucket() {
        let addresses = Arc::new(PerAddress {
            limits: ServeLimits {
                max_connections_per_address: 2,
                handshakes_per_address_per_s: 0.0,
                handshake_burst_per_address: 3.0,
                ..ServeLimits::default()
            },
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let (a, b) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let first = addresses.admit(a).unwrap();
        let second = addresses.admit(a).unwrap();
        assert_eq!(addresses.admit(a).err(), Some("address-at-capacity"));
        // Another address is not held back.
        let other = addresses.admit(b).unwrap();
        // A connection closed frees its place; the bucket still counts.
        drop(first);
        let third = addresses.admit(a).unwrap();
        drop((second, third));
        assert_eq!(addresses.admit(a).err(), Some("handshake-rate"));
        drop(other);
        assert!(addresses.admit(b).is_ok());
    }
}
