//! Where a webhook may point: the server's defence against server-side
//! request forgery.
//!
//! A webhook URL comes from a patient (or an app acting for them), and the
//! server POSTs to it from inside the hospital's network; without these
//! rules anyone with a patient certificate could make the server send
//! requests to its own ports, the chain's JSON-RPC, a cloud metadata
//! service or any internal address. [`Guard::check`] runs when the webhook
//! is set and again before every delivery (DNS may answer differently
//! between the two):
//!
//! ```text
//!  URL --WHATWG parse (2130706433, 0177.0.0.1, 127.1 become 127.0.0.1)
//!      --https only; no user name or password; a host usable for TLS
//!      --a name: resolved once (within 5 s); an IP literal is its own answer
//!      --every address: a listener of this server?      refused, always
//!                       covered by webhook_allow?       allowed
//!                       loopback, private, link-local, CGNAT, multicast, ...
//!                         (also inside ::ffff:a.b.c.d, ::a.b.c.d,
//!                          64:ff9b::/96 and 2002::/16)? refused
//!                       one of this host's addresses?   refused
//!  --> Target: the URL, its host for SNI and Host, the checked addresses
//! ```
//!
//! The delivery then connects to a checked address and nowhere else: it
//! never resolves the name again (DNS rebinding), and it follows no
//! redirect.
//!
//! Every refusal says what is wrong in words a patient can act on, and
//! never carries an internal error text: it is sent back as the detail of a
//! 400 problem.

use futures_util::future::BoxFuture;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long a name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One entry of the `webhook_allow` setting: addresses webhooks may reach
/// although they would be refused otherwise (a relay on the same host or
/// in the hospital's network).
///
/// Written as `ADDR` (any port), `ADDR:PORT` (IPv6 in brackets:
/// `[fd00::5]:8443`) or `NETWORK/PREFIX` (any port: `10.1.2.0/24`,
/// `fd00::/8`). Names are not accepted: what is checked is the address a
/// name resolves to. An entry never opens the server's own listening
/// ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct WebhookAllow {
    /// The network's first address (host bits zero).
    net: IpAddr,
    /// Its prefix length: 32 or 128 for one address.
    prefix: u8,
    /// The one port allowed, or any.
    port: Option<u16>,
}

/// A `webhook_allow` entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook_allow entry {entry:?}: {why}")]
pub struct WebhookAllowError {
    entry: String,
    why: &'static str,
}

impl WebhookAllow {
    /// Whether `addr` is one this entry allows.
    fn covers(&self, addr: SocketAddr) -> bool {
        self.port.is_none_or(|port| port == addr.port()) && in_net(addr.ip(), self.net, self.prefix)
    }
}

impl FromStr for WebhookAllow {
    type Err = WebhookAllowError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let bad = |why| WebhookAllowError {
            entry: entry.to_owned(),
            why,
        };
        if let Some((net, prefix)) = entry.split_once('/') {
            let net: IpAddr = net
                .parse()
                .map_err(|_| bad("a network is written ADDRESS/PREFIX, e.g. 10.1.2.0/24"))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| bad("the prefix length is not a number"))?;
            if prefix > max_prefix(net) {
                return Err(bad("the prefix length is longer than the address"));
            }
            if masked(net, prefix) != net {
                return Err(bad(
                    "the address has bits set past the prefix; name the network's first address",
                ));
            }
            return Ok(WebhookAllow {
                net,
                prefix,
                port: None,
            });
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(WebhookAllow {
                net: ip,
                prefix: max_prefix(ip),
                port: None,
            });
        }
        let addr: SocketAddr = entry.parse().map_err(|_| {
            bad("write ADDRESS, ADDRESS:PORT ([IPv6]:PORT) or NETWORK/PREFIX; names are not accepted")
        })?;
        if addr.port() == 0 {
            return Err(bad("port 0 is no port"));
        }
        Ok(WebhookAllow {
            net: addr.ip(),
            prefix: max_prefix(addr.ip()),
            port: Some(addr.port()),
        })
    }
}

impl TryFrom<String> for WebhookAllow {
    type Error = WebhookAllowError;

    fn try_from(entry: String) -> Result<Self, Self::Error> {
        entry.parse()
    }
}

impl fmt::Display for WebhookAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}", SocketAddr::new(self.net, port)),
            None if self.prefix == max_prefix(self.net) => write!(f, "{}", self.net),
            None => write!(f, "{}/{}", self.net, self.prefix),
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with every bit past `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

/// Whether `ip` lies in `net/prefix` (of the same family).
fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    ip.is_ipv4() == net.is_ipv4() && prefix <= max_prefix(ip) && masked(ip, prefix) == net
}

/// Why an address is not one a webhook may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Unspecified,
    ThisNetwork,
    Loopback,
    Private,
    SharedCgnat,
    LinkLocal,
    ProtocolAssignment,
    Documentation,
    Benchmarking,
    Multicast,
    Broadcast,
    Reserved,
    Discard,
    LocalNat64,
    UniqueLocal,
    SiteLocal,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Unspecified => "the unspecified address",
            Class::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Class::Loopback => "a loopback address",
            Class::Private => "a private address (RFC 1918)",
            Class::SharedCgnat => "a shared carrier-grade NAT address (100.64.0.0/10)",
            Class::LinkLocal => "a link-local address",
            Class::ProtocolAssignment => "an IETF protocol assignment, not a host",
            Class::Documentation => "a documentation address",
            Class::Benchmarking => "a benchmarking address",
            Class::Multicast => "a multicast address",
            Class::Broadcast => "the broadcast address",
            Class::Reserved => "a reserved address",
            Class::Discard => "a discard-only address (100::/64)",
            Class::LocalNat64 => "a local-use NAT64 address (64:ff9b:1::/48)",
            Class::UniqueLocal => "a unique local address (fc00::/7)",
            Class::SiteLocal => "a site-local address (fec0::/10)",
        })
    }
}

/// IPv4 ranges refused unless allow-listed; the first match names the
/// class (IANA's special-purpose registry: every range not globally
/// reachable).
const V4_REFUSED: &[(Ipv4Addr, u8, Class)] = &[
    (Ipv4Addr::UNSPECIFIED, 32, Class::Unspecified),
    (Ipv4Addr::new(0, 0, 0, 0), 8, Class::ThisNetwork),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Class::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Class::SharedCgnat),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Class::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Class::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Class::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, Class::ProtocolAssignment),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Class::Documentation),
    // The deprecated 6to4 relay anycast.
    (Ipv4Addr::new(192, 88, 99, 0), 24, Class::Reserved),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Class::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Class::Benchmarking),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Class::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Class::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Class::Multicast),
    (Ipv4Addr::BROADCAST, 32, Class::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, Class::Reserved),
];

/// IPv6 ranges refused unless allow-listed, first match; the forms that
/// carry an IPv4 address are in [`EMBEDDING`].
const V6_REFUSED: &[(Ipv6Addr, u8, Class)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, Class::Unspecified),
    (Ipv6Addr::LOCALHOST, 128, Class::Loopback),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        Class::Discard,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        Class::LocalNat64,
    ),
    // Teredo, benchmarking, ORCHID and the rest of the IETF's block.
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        Class::ProtocolAssignment,
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        Class::Documentation,
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        Class::Documentation,
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        Class::UniqueLocal,
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        Class::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        Class::SiteLocal,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        Class::Multicast,
    ),
];

/// An IPv6 form that carries an IPv4 address, which is checked as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Embedding {
    /// `::ffff:a.b.c.d`: a dual-stack socket reaches `a.b.c.d` itself.
    Mapped,
    /// `::a.b.c.d` (deprecated).
    Compatible,
    /// `64:ff9b::a.b.c.d`: a NAT64 gateway forwards to `a.b.c.d`.
    Nat64,
    /// `2002:aabb:ccdd::/48`: 6to4 (deprecated) tunnels to `a.b.c.d`.
    SixToFour,
}

impl fmt::Display for Embedding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Embedding::Mapped => "an IPv4-mapped form",
            Embedding::Compatible => "an IPv4-compatible form",
            Embedding::Nat64 => "a NAT64 form",
            Embedding::SixToFour => "a 6to4 form",
        })
    }
}

/// The forms of [`Embedding`]: the prefix, its length, and where in the
/// address the IPv4 address sits (bits counted from the most significant).
const EMBEDDING: &[(Ipv6Addr, u8, u32, Embedding)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        96,
        Embedding::Mapped,
    ),
    (Ipv6Addr::UNSPECIFIED, 96, 96, Embedding::Compatible),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        96,
        Embedding::Nat64,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        16,
        Embedding::SixToFour,
    ),
];

/// Why a resolved address may not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// In a refused range.
    Class(Class),
    /// An IPv6 form of an IPv4 address in a refused range.
    Embedded(Embedding, Ipv4Addr, Class),
    /// One of this host's own addresses (the server itself).
    OwnAddress,
    /// One of this server's listening sockets; never allowed.
    OwnListener,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Class(class) => write!(f, "{class}"),
            Why::Embedded(form, v4, class) => write!(f, "{form} of {v4}, {class}"),
            Why::OwnAddress => f.write_str("one of this server's own addresses"),
            Why::OwnListener => f.write_str("one of this server's own listening ports"),
        }
    }
}

/// The range `ip` is refused for, if any, whatever the allow list says.
fn classify(ip: IpAddr) -> Option<Why> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(Why::Class),
        IpAddr::V6(v6) => {
            if let Some((_, _, class)) = V6_REFUSED
                .iter()
                .find(|(net, prefix, _)| in_net(ip, IpAddr::V6(*net), *prefix))
            {
                return Some(Why::Class(*class));
            }
            let (_, _, at, form) = EMBEDDING
                .iter()
                .find(|(net, prefix, ..)| in_net(ip, IpAddr::V6(*net), *prefix))?;
            // The 32 bits after the prefix; `at` is at most 96.
            let v4 = Ipv4Addr::from_bits((v6.to_bits() >> (96 - at)) as u32);
            classify_v4(v4).map(|class| Why::Embedded(*form, v4, class))
        }
    }
}

fn classify_v4(v4: Ipv4Addr) -> Option<Class> {
    V4_REFUSED
        .iter()
        .find(|(net, prefix, _)| in_net(IpAddr::V4(v4), IpAddr::V4(*net), *prefix))
        .map(|(_, _, class)| *class)
}

/// Whether `ip` is one of this host's own addresses: binding a socket to it
/// succeeds only then (unless the kernel allows binding any address, when
/// every address counts as own and webhooks fail closed).
fn is_own(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip.to_canonical(), 0)).is_ok()
}

/// Why a webhook URL is refused, in words for the patient who set it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unreachable {
    /// Not a URL at all.
    #[error("the webhook is not a URL: {0}")]
    NotUrl(#[source] url::ParseError),
    /// Another scheme than `https`.
    #[error("a webhook must be an https:// URL, not {0}://")]
    NotHttps(String),
    /// `https://user:password@host/`.
    #[error("a webhook URL may not carry a user name or password")]
    Userinfo,
    /// No host, or one that cannot be a TLS server name.
    #[error("the webhook URL names no host a TLS certificate can be checked for")]
    NoHost,
    /// The name does not resolve, or to nothing.
    #[error("{0} does not resolve")]
    Unresolved(String),
    /// The name took too long to resolve.
    #[error("{0} did not resolve within {RESOLVE_TIMEOUT:?}")]
    ResolveTimeout(String),
    /// An address it resolves to (or is) may not be reached.
    #[error("{}{why}{}", lead(.name.as_deref(), .addr.ip()), hint(*.why))]
    Address {
        /// The name, if the URL named a host rather than an address.
        name: Option<String>,
        /// The refused address.
        addr: SocketAddr,
        /// Why.
        why: Why,
    },
}

/// "localhost resolves to 127.0.0.1, " or "127.0.0.1 is ".
fn lead(name: Option<&str>, ip: IpAddr) -> String {
    match name {
        Some(name) => format!("{name} resolves to {ip}, "),
        None => format!("{ip} is "),
    }
}

fn hint(why: Why) -> &'static str {
    match why {
        Why::OwnListener => "; webhooks never reach the server itself",
        _ => "; an admin may allow it with webhook_allow",
    }
}

/// A webhook URL, parsed: what a delivery needs besides the addresses.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The URL as parsed (the form stored and shown).
    pub(crate) url: Url,
    /// The host: a name to resolve, or an address.
    host: url::Host<String>,
    /// The port (443 unless the URL says otherwise).
    port: u16,
    /// The name the certificate must carry (and SNI, for a name).
    pub(crate) server_name: ServerName<'static>,
}

impl Endpoint {
    /// Parses `url` the way browsers do (WHATWG), so that every spelling
    /// of an address (`2130706433`, `0177.0.0.1`, `0x7f.1`) is that
    /// address.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, Unreachable> {
        let url = Url::parse(url).map_err(Unreachable::NotUrl)?;
        if url.scheme() != "https" {
            return Err(Unreachable::NotHttps(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Unreachable::Userinfo);
        }
        let host = url.host().ok_or(Unreachable::NoHost)?.to_owned();
        let server_name = match &host {
            url::Host::Domain(name) => {
                ServerName::try_from(name.clone()).map_err(|_| Unreachable::NoHost)?
            }
            url::Host::Ipv4(v4) => ServerName::IpAddress(IpAddr::V4(*v4).into()),
            url::Host::Ipv6(v6) => ServerName::IpAddress(IpAddr::V6(*v6).into()),
        };
        let port = url.port_or_known_default().ok_or(Unreachable::NoHost)?;
        Ok(Endpoint {
            url,
            host,
            port,
            server_name,
        })
    }

    /// The `Host` header: the host as the URL writes it, and the port if
    /// the URL names one.
    pub(crate) fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The request target: path and query (a fragment is never sent).
    pub(crate) fn path_and_query(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        }
    }
}

/// Turns a name into addresses: the system's resolver, or a test's.
///
/// Boxed futures keep the trait object-safe: the guard holds an
/// `Arc<dyn Resolve>`.
pub(crate) trait Resolve: Send + Sync {
    /// The addresses of the domain name `name` (never an IP literal) with
    /// `port`; an empty answer and an error are both "does not resolve".
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((name, port)).await?.collect()) })
    }
}

/// A checked webhook: where to connect, and as whom. Only
/// [`Guard::check`] makes one.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    endpoint: Endpoint,
    /// Every address the host resolved to, each checked; never empty.
    addrs: Vec<SocketAddr>,
}

impl Target {
    /// The URL, parsed.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The checked addresses: a delivery connects to one of these and
    /// nowhere else.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Decides where webhooks may go.
#[derive(Clone)]
pub(crate) struct Guard {
    allow: Vec<WebhookAllow>,
    listeners: Vec<SocketAddr>,
    resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("allow", &self.allow)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard allowing `allow` beyond the public internet, never reaching
    /// `listeners` (the server's own sockets), resolving with `resolver`.
    pub(crate) fn new(
        allow: Vec<WebhookAllow>,
        listeners: Vec<SocketAddr>,
        resolver: Arc<dyn Resolve>,
    ) -> Guard {
        Guard {
            allow,
            listeners,
            resolver,
        }
    }

    /// Parses `url`, resolves its host once and checks every address.
    pub(crate) async fn check(&self, url: &str) -> Result<Target, Unreachable> {
        let endpoint = Endpoint::parse(url)?;
        let (name, mut addrs) = match &endpoint.host {
            url::Host::Domain(name) => {
                let answer = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    self.resolver.resolve(name, endpoint.port),
                )
                .await
                .map_err(|_| Unreachable::ResolveTimeout(name.clone()))?;
                let addrs = answer.map_err(|_| Unreachable::Unresolved(name.clone()))?;
                (Some(name.clone()), addrs)
            }
            url::Host::Ipv4(v4) => (None, vec![SocketAddr::new(IpAddr::V4(*v4), endpoint.port)]),
            url::Host::Ipv6(v6) => (None, vec![SocketAddr::new(IpAddr::V6(*v6), endpoint.port)]),
        };
        let mut unique = Vec::with_capacity(addrs.len());
        for addr in addrs.drain(..) {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        let addrs = unique;
        if addrs.is_empty() {
            return Err(Unreachable::Unresolved(
                name.unwrap_or_else(|| endpoint.authority()),
            ));
        }
        for addr in &addrs {
            if let Some(why) = self.refuses(*addr) {
                return Err(Unreachable::Address {
                    name,
                    addr: *addr,
                    why,
                });
            }
        }
        Ok(Target { endpoint, addrs })
    }

    /// Why `addr` may not be reached, if it may not.
    pub(crate) fn refuses(&self, addr: SocketAddr) -> Option<Why> {
        let ip = addr.ip();
        let canonical = SocketAddr::new(ip.to_canonical(), addr.port());
        let listens_here = self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == ip
                    || l.ip() == canonical.ip()
                    || (l.ip().is_unspecified() && is_own(ip)))
        });
        if listens_here {
            return Some(Why::OwnListener);
        }
        if self
            .allow
            .iter()
            .any(|a| a.covers(addr) || a.covers(canonical))
        {
            return None;
        }
        if let Some(why) = classify(ip) {
            return Some(why);
        }
        is_own(ip).then_some(Why::OwnAddress)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A resolver answering from a table the test can change.
    #[derive(Default)]
    pub(crate) struct FakeResolver(pub(crate) Mutex<HashMap<String, Vec<IpAddr>>>);

    impl FakeResolver {
        pub(crate) fn answer(&self, name: &str, ips: &[IpAddr]) {
            self.0.lock().unwrap().insert(name.to_owned(), ips.to_vec());
        }
    }

    impl Resolve for FakeResolver {
        fn resolve<'a>(
            &'a self,
            name: &'a str,
            port: u16,
        ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
            let answer = self.0.lock().unwrap().get(name).cloned();
            Box::pin(async move {
                let ips = answer.ok_or_else(|| io::Error::other("no such name"))?;
                Ok(ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect())
            })
        }
    }

    fn allow(entries: &[&str]) -> Vec<WebhookAllow> {
        entries.iter().map(|e| e.parse().unwrap()).collect()
    }

    fn system(entries: &[&str]) -> Guard {
        Guard::new(allow(entries), Vec::new(), Arc::new(SystemResolver))
    }

    #[test]
    fn whatwg_parsing_turns_every_spelling_of_an_address_into_the_address() {
        for url in [
            "https://2130706433/",
            "https://0177.0.0.1/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://0x7F000001/",
            "https://127.0.0.1./",
        ] {
            let endpoint = Endpoint::parse(url).unwrap();
            assert_eq!(
                endpoint.host,
                url::Host::<String>::Ipv4(Ipv4Addr::LOCALHOST),
                "{url}"
            );
        }
        let v6 = Endpoint::parse("https://[::ffff:7f00:1]:8443/a?b=c#frag").unwrap();
        assert_eq!(
            v6.host,
            url::Host::<String>::Ipv6("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(v6.authority(), "[::ffff:7f00:1]:8443");
        assert_eq!(v6.path_and_query(), "/a?b=c");
        let named = Endpoint::parse("HTTPS://Hooks.Example.ORG/in").unwrap();
        assert_eq!(named.authority(), "hooks.example.org");
        assert_eq!(named.port, 443);
        assert_eq!(
            named.server_name,
            ServerName::try_from("hooks.example.org").unwrap()
        );
    }

    #[test]
    fn only_https_urls_without_userinfo_parse() {
        for (url, refused) in [
            ("http://example.org/", Unreachable::NotHttps("http".into())),
            ("ftp://example.org/", Unreachable::NotHttps("ftp".into())),
            ("file:///etc/passwd", Unreachable::NotHttps("file".into())),
            ("https://user@example.org/", Unreachable::Userinfo),
            ("https://user:pw@example.org/", Unreachable::Userinfo),
            ("https://:pw@example.org/", Unreachable::Userinfo),
        ] {
            assert_eq!(Endpoint::parse(url).unwrap_err(), refused, "{url}");
        }
        assert!(matches!(
            Endpoint::parse("not a url"),
            Err(Unreachable::NotUrl(_))
        ));
        assert!(matches!(
            Endpoint::parse("https://exa mple.org/"),
            Err(Unreachable::NotUrl(_))
        ));
        let e = Endpoint::parse("http://example.org/").unwrap_err();
        assert_eq!(
            e.to_string(),
            "a webhook must be an https:// URL, not http://"
        );
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_naming_why() {
        let guard = system(&[]);
        for (url, why) in [
            ("https://127.0.0.1/", "127.0.0.1 is a loopback address"),
            ("https://127.0.0.1:8545/", "127.0.0.1 is a loopback address"),
            ("https://[::1]/", "::1 is a loopback address"),
            (
                "https://[::ffff:127.0.0.1]/",
                "::ffff:127.0.0.1 is an IPv4-mapped form of 127.0.0.1, a loopback address",
            ),
            (
                "https://[::127.0.0.1]/",
                "::7f00:1 is an IPv4-compatible form of 127.0.0.1, a loopback address",
            ),
            (
                "https://[64:ff9b::a9fe:a9fe]/",
                "64:ff9b::a9fe:a9fe is a NAT64 form of 169.254.169.254, a link-local address",
            ),
            (
                "https://[2002:c0a8:101::1]/",
                "2002:c0a8:101::1 is a 6to4 form of 192.168.1.1, a private address",
            ),
            ("https://2130706433/", "127.0.0.1 is a loopback address"),
            ("https://0177.0.0.1/", "127.0.0.1 is a loopback address"),
            ("https://10.0.0.5/", "10.0.0.5 is a private address"),
            ("https://172.31.255.1/", "172.31.255.1 is a private address"),
            ("https://192.168.1.1/", "192.168.1.1 is a private address"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "169.254.169.254 is a link-local address",
            ),
            (
                "https://100.64.0.1/",
                "100.64.0.1 is a shared carrier-grade NAT",
            ),
            ("https://0.0.0.0/", "0.0.0.0 is the unspecified address"),
            ("https://0.1.2.3/", "0.1.2.3 is a \"this network\" address"),
            ("https://[::]/", ":: is the unspecified address"),
            ("https://[fd00::5]/", "fd00::5 is a unique local address"),
            ("https://[fe80::1]/", "fe80::1 is a link-local address"),
            ("https://[fec0::1]/", "fec0::1 is a site-local address"),
            ("https://224.0.0.1/", "224.0.0.1 is a multicast address"),
            ("https://[ff02::1]/", "ff02::1 is a multicast address"),
            (
                "https://255.255.255.255/",
                "255.255.255.255 is the broadcast",
            ),
            ("https://240.0.0.1/", "240.0.0.1 is a reserved address"),
            ("https://192.0.2.7/", "192.0.2.7 is a documentation address"),
            (
                "https://[2001:db8::1]/",
                "2001:db8::1 is a documentation address",
            ),
            (
                "https://198.18.0.1/",
                "198.18.0.1 is a benchmarking address",
            ),
            (
                "https://192.0.0.8/",
                "192.0.0.8 is an IETF protocol assignment",
            ),
            (
                "https://[2001::1]/",
                "2001::1 is an IETF protocol assignment",
            ),
            (
                "https://[64:ff9b:1::1]/",
                "64:ff9b:1::1 is a local-use NAT64",
            ),
            // A name: /etc/hosts answers, no network needed.
            ("https://localhost/", "localhost resolves to "),
        ] {
            let refused = guard.check(url).await.unwrap_err();
            let text = refused.to_string();
            assert!(text.starts_with(why), "{url}: {text}");
            assert!(
                matches!(refused, Unreachable::Address { .. }),
                "{url}: {text}"
            );
            assert!(
                text.ends_with("; an admin may allow it with webhook_allow"),
                "{url}: {text}"
            );
        }
        let text = guard
            .check("https://localhost/")
            .await
            .unwrap_err()
            .to_string();
        assert!(text.contains("a loopback address"), "{text}");
    }

    #[tokio::test]
    async fn a_name_is_refused_if_any_of_its_addresses_is() {
        let names = Arc::new(FakeResolver::default());
        let guard = Guard::new(Vec::new(), Vec::new(), names.clone());
        names.answer(
            "hooks.example",
            &["8.8.8.8".parse().unwrap(), "10.1.2.3".parse().unwrap()],
        );
        let text = guard
            .check("https://hooks.example/")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            "hooks.example resolves to 10.1.2.3, a private address (RFC 1918); \
             an admin may allow it with webhook_allow"
        );
        assert_eq!(
            guard.check("https://nowhere.example/").await.unwrap_err(),
            Unreachable::Unresolved("nowhere.example".into())
        );
        names.answer("empty.example", &[]);
        assert_eq!(
            guard.check("https://empty.example/").await.unwrap_err(),
            Unreachable::Unresolved("empty.example".into())
        );
        // Nothing is sent anywhere by a check: these are public addresses.
        names.answer(
            "hooks.example",
            &[
                "8.8.8.8".parse().unwrap(),
                "2606:4700::1111".parse().unwrap(),
            ],
        );
        let target = guard.check("https://hooks.example:8443/in").await.unwrap();
        assert_eq!(
            target.addrs,
            [
                "8.8.8.8:8443".parse::<SocketAddr>().unwrap(),
                "[2606:4700::1111]:8443".parse().unwrap()
            ]
        );
        // Public forms that embed a public IPv4 address are public too.
        assert!(guard.check("https://[64:ff9b::808:808]/").await.is_ok());
        assert!(guard.check("https://[::ffff:8.8.8.8]/").await.is_ok());
    }

    #[tokio::test]
    async fn a_name_that_rebinds_after_the_check_is_refused_at_the_next() {
        // Set time: the name resolves to a public address; delivery time:
        // to the cloud metadata service. Each check resolves afresh.
        let names = Arc::new(FakeResolver::default());
        let guard = Guard::new(Vec::new(), Vec::new(), names.clone());
        names.answer("rebind.example", &["8.8.4.4".parse().unwrap()]);
        assert!(guard.check("https://rebind.example/").await.is_ok());
        names.answer("rebind.example", &["169.254.169.254".parse().unwrap()]);
        let refused = guard.check("https://rebind.example/").await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("169.254.169.254, a link-local address"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn the_allow_list_opens_exactly_what_it_names_and_never_the_servers_own_ports() {
        let guard = Guard::new(
            allow(&["127.0.0.1:8443", "10.1.2.0/24", "[fd00::5]:443", "::1"]),
            vec![
                "127.0.0.1:9443".parse().unwrap(),
                "0.0.0.0:9444".parse().unwrap(),
                "[::]:9445".parse().unwrap(),
            ],
            Arc::new(SystemResolver),
        );
        for url in [
            "https://127.0.0.1:8443/",
            "https://[::ffff:127.0.0.1]:8443/",
            "https://10.1.2.200/",
            "https://10.1.2.0:99/",
            "https://[fd00::5]/",
            "https://[::1]:7000/",
        ] {
            assert!(guard.check(url).await.is_ok(), "{url}");
        }
        for (url, why) in [
            ("https://127.0.0.1:8444/", "a loopback address"),
            ("https://10.1.3.1/", "a private address"),
            ("https://[fd00::5]:444/", "a unique local address"),
            (
                "https://127.0.0.1:9443/",
                "one of this server's own listening ports",
            ),
            // Bound to every address: reached through any of them.
            (
                "https://127.0.0.1:9444/",
                "one of this server's own listening ports",
            ),
            (
                "https://[::1]:9445/",
                "one of this server's own listening ports",
            ),
            (
                "https://127.0.0.1:9445/",
                "one of this server's own listening ports",
            ),
        ] {
            let text = guard.check(url).await.unwrap_err().to_string();
            assert!(text.contains(why), "{url}: {text}");
        }
        let own = guard
            .check("https://127.0.0.1:9443/")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            own,
            "127.0.0.1 is one of this server's own listening ports; \
             webhooks never reach the server itself"
        );
    }

    #[test]
    fn this_hosts_own_addresses_are_its_own() {
        // Binding is the test: it succeeds for an address of this host's
        // and fails for any other (without reaching the network).
        assert!(is_own(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(is_own(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(is_own("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_own("8.8.8.8".parse().unwrap()));
        let guard = system(&[]);
        assert_eq!(guard.refuses("8.8.8.8:443".parse().unwrap()), None);
    }

    #[test]
    fn allow_entries_parse_and_print_back() {
        for entry in [
            "127.0.0.1:8443",
            "10.1.2.0/24",
            "[fd00::5]:8443",
            "fd00::/8",
            "192.168.7.7",
            "::1",
            "0.0.0.0/0",
        ] {
            let parsed: WebhookAllow = entry.parse().unwrap();
            assert_eq!(parsed.to_string(), entry);
        }
        for (entry, why) in [
            ("localhost:8443", "names are not accepted"),
            ("10.1.2.5/24", "bits set past the prefix"),
            ("10.1.2.0/33", "longer than the address"),
            ("10.1.2.0/x", "not a number"),
            ("127.0.0.1:0", "port 0"),
            ("", "write ADDRESS"),
        ] {
            let e = entry.parse::<WebhookAllow>().unwrap_err();
            assert!(e.to_string().contains(why), "{entry}: {e}");
        }
        // As the configuration file writes them (serde, as TOML does).
        let parsed: Vec<WebhookAllow> =
            serde_json::from_str(r#"["127.0.0.1:8443", "10.1.2.0/24"]"#).unwrap();
        assert_eq!(parsed, allow(&["127.0.0.1:8443", "10.1.2.0/24"]));
        let bad = serde_json::from_str::<Vec<WebhookAllow>>(r#"["relay.local:8443"]"#)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("names are not accepted"), "{bad}");
    }
}
