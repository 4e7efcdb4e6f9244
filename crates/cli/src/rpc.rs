//! The chain's JSON-RPC as medledger's roles and commands reach it: plain
//! HTTP to this machine only, and HTTPS with mutual TLS to any other (the
//! `--rpc-tls` listener of `medledger chain`, or an external node behind a
//! certificate of our CA): the node must show a certificate of role
//! `server` chaining to the medledger root, and the caller shows its own.

use alloy::rpc::client::RpcClient;
use alloy::rpc::json_rpc::{RequestPacket, ResponsePacket};
use alloy::transports::{TransportError, TransportErrorKind, TransportFut, TransportResult};
use anyhow::{Context, Result, bail};
use clap::Args;
use medledger_pki::https::Connection;
use medledger_pki::{Credentials, Role, client_config, files};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

/// Most idle connections kept to one node.
const MAX_IDLE: usize = 16;

/// What a client shows a node over mutual TLS: the root the node's
/// certificate must chain to, and its own certificate (PREFIX.crt and
/// PREFIX.key).
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) root: PathBuf,
    pub(crate) cert: PathBuf,
}

impl Identity {
    /// The root `root` and the certificate `cert` (PREFIX).
    pub(crate) fn new(root: &Path, cert: &Path) -> Identity {
        Identity {
            root: root.to_path_buf(),
            cert: cert.to_path_buf(),
        }
    }

    /// The administrator of the `medledger up` directory `d`.
    pub(crate) fn up_admin(d: &Path) -> Identity {
        Identity::new(&d.join("ca/root.crt"), &d.join("people/admin"))
    }
}

/// The command-line form of [`Identity`], for an `https://` `--rpc`.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// For an https:// --rpc: the medledger root CA certificate the node's
    /// certificate must chain to.
    #[arg(long, env = "MEDLEDGER_CA_ROOT", global = true)]
    tls_root: Option<PathBuf>,
    /// For an https:// --rpc: your certificate and key, PREFIX.crt and
    /// PREFIX.key (by default the PREFIX of --key's PREFIX.eth.key).
    #[arg(long, env = "MEDLEDGER_CERT", global = true)]
    tls_cert: Option<PathBuf>,
}

impl TlsArgs {
    /// The identity given, with the certificate beside `key` (a
    /// `PREFIX.eth.key`) when none is named.
    pub(crate) fn identity(&self, key: Option<&Path>) -> Option<Identity> {
        let cert = self.tls_cert.clone().or_else(|| {
            let name = key?.to_str()?.strip_suffix(".eth.key")?;
            Some(PathBuf::from(name))
        })?;
        Some(Identity::new(self.tls_root.as_deref()?, &cert))
    }
}

/// A JSON-RPC client for the node at `rpc`.
pub(crate) fn client(rpc: &str, identity: Option<&Identity>) -> Result<RpcClient> {
    let url: url::Url = rpc
        .parse()
        .with_context(|| format!("the chain RPC {rpc:?} is not a URL"))?;
    let host = url
        .host_str()
        .with_context(|| format!("the chain RPC {rpc:?} names no host"))?;
    let local = is_loopback(host);
    match url.scheme() {
        "http" if local => {
            // reqwest has rustls without a provider of its own in this
            // build and takes the process's: ring, as everywhere else.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Ok(RpcClient::new_http(url))
        }
        "http" => bail!(
            "the chain RPC {rpc} is plain HTTP to another machine: use https:// \
             (`medledger chain --rpc-tls`) with the medledger root and a certificate"
        ),
        "https" => {
            let identity = identity.with_context(|| {
                format!(
                    "the chain RPC {rpc} is https: give the medledger root CA and a certificate \
                     (--tls-root and --tls-cert, or ca_root and credentials in a role's file)"
                )
            })?;
            let own = Credentials::load(&identity.cert)
                .with_context(|| format!("loading {}.crt and .key", identity.cert.display()))?;
            let root = files::read_der_blocks(&identity.root, "CERTIFICATE")
                .with_context(|| format!("reading the root {}", identity.root.display()))?;
            let root = root
                .first()
                .with_context(|| format!("{} holds no certificate", identity.root.display()))?;
            let mut config = client_config(Some(&own), root, &[Role::Server])?;
            // One request at a time per connection (HTTP/1.1): the pool
            // holds as many as are asked for at once.
            Arc::make_mut(&mut config).alpn_protocols = vec![b"http/1.1".to_vec()];
            let port = url.port_or_known_default().unwrap_or(443);
            let transport = Mtls {
                config,
                addr: format!("{host}:{port}").into(),
                name: host.trim_start_matches('[').trim_end_matches(']').into(),
                path: match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_owned(),
                }
                .into(),
                idle: Arc::default(),
            };
            Ok(RpcClient::new(transport, local))
        }
        other => bail!("the chain RPC {rpc} is {other}:, not http: or https:"),
    }
}

/// Refuses to serve JSON-RPC over plain HTTP at `addr` unless it is a
/// loopback address.
pub(crate) fn loopback_only(addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "--rpc {addr} would serve plain HTTP to other machines: keep it on loopback \
             (127.0.0.1 or [::1]) and serve them with `medledger chain --rpc-tls` (mutual TLS)"
        );
    }
    Ok(())
}

/// `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// JSON-RPC over HTTPS with mutual TLS, on a pool of connections.
#[derive(Clone)]
struct Mtls {
    config: Arc<rustls::ClientConfig>,
    addr: Arc<str>,
    name: Arc<str>,
    path: Arc<str>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Mtls {
    async fn post(self, request: RequestPacket) -> TransportResult<ResponsePacket> {
        let body = serde_json::to_vec(&request).map_err(TransportError::ser_err)?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reply = match pooled {
            Some(mut connection) => match self.send(&mut connection, body.clone()).await {
                Ok(reply) => (reply, connection),
                // The node closed it while it was idle: once more on a new one.
                Err(_) => self.open_and_send(body).await?,
            },
            None => self.open_and_send(body).await?,
        };
        let (reply, connection) = reply;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
        drop(idle);
        let text = || String::from_utf8_lossy(&reply.body).into_owned();
        if !(200..300).contains(&reply.status) {
            return Err(TransportErrorKind::http_error(reply.status, text()));
        }
        serde_json::from_slice(&reply.body).map_err(|e| TransportError::deser_err(e, text()))
    }

    async fn open_and_send(
        &self,
        body: Vec<u8>,
    ) -> TransportResult<(medledger_pki::https::Reply, Connection)> {
        let mut connection = Connection::open(self.config.clone(), &self.addr, &self.name)
            .await
            .map_err(TransportErrorKind::custom)?;
        let reply = self.send(&mut connection, body).await?;
        Ok((reply, connection))
    }

    async fn send(
        &self,
        connection: &mut Connection,
        body: Vec<u8>,
    ) -> TransportResult<medledger_pki::https::Reply> {
        connection
            .request(
                "POST",
                &self.path,
                &[("content-type", "application/json")],
                body,
            )
            .await
            .map_err(TransportErrorKind::custom)
    }
}

impl tower::Service<RequestPacket> for Mtls {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), TransportError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> TransportFut<'static> {
        Box::pin(self.clone().post(request))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_reaches_this_machine_only() {
        assert!(client("http://127.0.0.1:8545", None).is_ok());
        assert!(client("http://localhost:8545", None).is_ok());
        assert!(client("http://[::1]:8545", None).is_ok());
        let err = client("http://10.0.0.10:8545", None).unwrap_err();
        assert!(
            err.to_string().contains("plain HTTP to another machine"),
            "{err}"
        );
        let err = client("https://chain.example:8546", None).unwrap_err();
        assert!(
            err.to_string().contains("give the medledger root CA"),
            "{err}"
        );
        assert!(client("ftp://chain.example", None).is_err());
    }
}
