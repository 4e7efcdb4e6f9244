//! The kernel's share of the per-address limits: while an IP address is
//! over them, a classic BPF filter on the listening socket drops its new
//! connections' SYNs, so that they cost no accept, no close and no
//! handshake's packets, and its TCP stack waits (it resends a SYN after
//! 1 s, then 3 s, ...) instead of reconnecting at once.
//!
//! Only a pure SYN (SYN set, ACK clear) from a listed address is dropped:
//! its open connections are not touched (each accepted connection sheds
//! the filter it inherited from the listener when the kernel made it),
//! and a handshake under way completes. An address is let back in
//! [`SHUT_FOR`] after its last refusal.
//!
//! ```text
//!   ldb [13]; and #SYN|ACK; jeq #SYN ?: ret #keep       a pure SYN?
//!   ldb [net]; rsh #4; jeq #4 ?: ja v6                   IPv4?
//!   ld [net+12]; (jeq #addr ?: ret #0)*; ret #keep       its source, listed?
//!   v6: (ld [net+8+4i]; st M[i])*4;
//!       ((ld M[i]; jeq #word ?: next)*4; ret #0)*; ret #keep
//! ```
//!
//! Costs: the kernel runs the filter on every segment the listener
//! receives (a few instructions; a SYN one comparison per listed address
//! more), and charges it to the socket's option memory
//! (`net.core.optmem_max`) as eBPF's 8-byte instructions: at most about 32
//! bytes an IPv4 address and 112 an IPv6 one, so [`MAX_SHUT`] of them take
//! about 4 KiB, twice that while the filter is replaced: within the
//! 10 KiB of the smallest default. It is rebuilt when an address is shut
//! out or let back in, and when the kernel refuses it, tried again only
//! [`SHUT_FOR`] later. Linux only; elsewhere addresses over their limits
//! are refused at accept only.

use crate::throttle::LogThrottle;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long an address refused at accept stays shut out.
pub(crate) const SHUT_FOR: Duration = Duration::from_secs(1);

/// Addresses shut out at once, at most; more are only refused at accept.
pub(crate) const MAX_SHUT: usize = 32;

/// The addresses a listener shuts out, and until when.
#[derive(Debug)]
pub(crate) struct Gate {
    shut: HashMap<IpAddr, Instant>,
    /// What the filter attached to the listener lists.
    attached: Vec<IpAddr>,
    /// Whether a filter was ever attached: connections accepted since may
    /// have inherited one.
    ever: bool,
    /// The kernel refused the last filter: no new one before then.
    retry_at: Option<Instant>,
    failures: LogThrottle,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            shut: HashMap::new(),
            attached: Vec::new(),
            ever: false,
            retry_at: None,
            failures: LogThrottle::new("socket filters not attached"),
        }
    }
}

impl Gate {
    /// Shuts `ip` out until [`SHUT_FOR`] from `now`.
    pub(crate) fn shut(&mut self, ip: IpAddr, now: Instant) {
        let ip = ip.to_canonical();
        if self.shut.len() >= MAX_SHUT {
            self.shut.retain(|_, until| *until > now);
        }
        if self.shut.len() < MAX_SHUT || self.shut.contains_key(&ip) {
            self.shut.insert(ip, now + SHUT_FOR);
        }
    }

    /// When the next address is let back in, if any is shut out.
    pub(crate) fn next_opening(&self) -> Option<Instant> {
        self.shut.values().min().copied()
    }

    /// Lets in the addresses whose time is up at `now`, and brings the
    /// listener's filter up to date.
    pub(crate) fn apply(&mut self, listener: &tokio::net::TcpListener, now: Instant) {
        self.shut.retain(|_, until| *until > now);
        let mut listed: Vec<IpAddr> = self.shut.keys().copied().collect();
        listed.sort();
        // An address shut again only moves its time.
        if !filter::AVAILABLE || listed == self.attached || self.retry_at.is_some_and(|at| at > now)
        {
            return;
        }
        self.ever = true;
        match filter::set(listener, &listed) {
            Ok(()) => {
                self.attached = listed;
                self.retry_at = None;
            }
            Err(e) => {
                // The kernel keeps the filter before, or none: none, so
                // that no address stays shut out for good.
                let _ = filter::set(listener, &[]);
                self.attached.clear();
                self.retry_at = Some(now + SHUT_FOR);
                if self.failures.admit() {
                    tracing::warn!(
                        shut = listed.len(),
                        "cannot attach a socket filter to the listener ({e}): addresses \
                         over their limits are refused at accept only"
                    );
                }
            }
        }
    }

    /// Rids a connection accepted from the listener of the filter it may
    /// have inherited when the kernel made it: that filter would drop a SYN
    /// on its own connection (a rebooted device's first move).
    pub(crate) fn accepted(&self, tcp: &tokio::net::TcpStream) {
        if self.ever {
            let _ = filter::set(tcp, &[]);
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod filter {
    use socket2::{SockFilter, SockRef};
    use std::net::IpAddr;

    /// Socket filters are there to attach.
    pub(super) const AVAILABLE: bool = true;

    // Classic BPF (linux/filter.h), the kernel's stable ABI.
    const LD_B_ABS: u16 = 0x30;
    const LD_W_ABS: u16 = 0x20;
    const LD_MEM: u16 = 0x60;
    const ST: u16 = 0x02;
    const AND_K: u16 = 0x54;
    const RSH_K: u16 = 0x74;
    const JEQ_K: u16 = 0x15;
    const JA: u16 = 0x05;
    const RET_K: u16 = 0x06;
    /// Loads relative to the IP header (the filter sees the packet from
    /// its TCP header on).
    const NET: u32 = 0xFFF0_0000;
    /// The TCP header's flags byte, and its SYN and ACK bits.
    const TCP_FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    const KEEP: u32 = u32::MAX;
    const DROP: u32 = 0;

    /// Attaches to `socket` the filter dropping pure SYNs from `listed`,
    /// or detaches its filter if `listed` is empty.
    pub(super) fn set(socket: &impl std::os::fd::AsFd, listed: &[IpAddr]) -> std::io::Result<()> {
        let socket = SockRef::from(socket);
        if listed.is_empty() {
            return match socket.detach_filter() {
                // It had none.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                done => done,
            };
        }
        socket.attach_filter(&program(listed))
    }

    /// The filter dropping pure SYNs from `listed`.
    pub(super) fn program(listed: &[IpAddr]) -> Vec<SockFilter> {
        let op = |code, k| SockFilter::new(code, 0, 0, k);
        let jeq = |k, jt, jf| SockFilter::new(JEQ_K, jt, jf, k);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for ip in listed {
            match ip {
                IpAddr::V4(a) => v4.push(u32::from(*a)),
                IpAddr::V6(a) => v6.push(u128::from(*a)),
            }
        }
        let mut p = vec![
            op(LD_B_ABS, TCP_FLAGS),
            op(AND_K, SYN | ACK),
            jeq(SYN, 1, 0),
            op(RET_K, KEEP),
            op(LD_B_ABS, NET),
            op(RSH_K, 4),
            jeq(4, 1, 0),
            // To the IPv6 part: past the IPv4 load, its pairs and its
            // return.
            op(JA, 2 * v4.len() as u32 + 2),
            op(LD_W_ABS, NET + 12),
        ];
        for a in v4 {
            p.extend([jeq(a, 0, 1), op(RET_K, DROP)]);
        }
        p.push(op(RET_K, KEEP));
        // The source's four words into M[0..4], once: each is a call in
        // the kernel, a scratch word one instruction.
        for i in 0..4 {
            p.extend([op(LD_W_ABS, NET + 8 + 4 * i), op(ST, i)]);
        }
        for a in v6 {
            for i in 0..4u8 {
                let word = (a >> (96 - 32 * u32::from(i))) as u32;
                // A word that differs skips to the next address.
                p.extend([op(LD_MEM, u32::from(i)), jeq(word, 0, 7 - 2 * i)]);
            }
            p.push(op(RET_K, DROP));
        }
        p.push(op(RET_K, KEEP));
        p
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod filter {
    /// No socket filters here: addresses over their limits are refused at
    /// accept only.
    pub(super) const AVAILABLE: bool = false;

    pub(super) fn set<S>(_socket: &S, _listed: &[std::net::IpAddr]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use socket2::SockRef;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        (listener, at)
    }

    /// A TCP connection to `to` from the address `from`.
    async fn connect(to: SocketAddr, from: &str) -> std::io::Result<TcpStream> {
        let from: IpAddr = from.parse().unwrap();
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(to).await
    }

    /// Whether a connection from `from` to `to` is made before its first
    /// SYN would be sent again (1 s): the kernel makes it without an
    /// accept, unless the SYN was dropped.
    async fn connects_at_once(to: SocketAddr, from: &str) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connect(to, from)).await,
            Ok(Ok(_))
        )
    }

    fn shut(gate: &mut Gate, listener: &TcpListener, ips: &[&str], now: Instant) {
        for ip in ips {
            gate.shut(ip.parse().unwrap(), now);
        }
        gate.apply(listener, now);
    }

    #[tokio::test]
    async fn a_shut_out_address_gets_no_new_connection_until_let_back_in() {
        let (listener, to) = listen().await;
        let mut open = connect(to, "127.0.0.2").await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut gate = Gate::default();
        let now = Instant::now();
        shut(&mut gate, &listener, &["127.0.0.2", "2001:db8::2"], now);

        assert!(connects_at_once(to, "127.0.0.1").await, "another address");
        assert!(
            !connects_at_once(to, "127.0.0.2").await,
            "the SYN is dropped"
        );
        let waiting = tokio::spawn(async move { connect(to, "127.0.0.2").await });
        // What it had open before works both ways.
        open.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        accepted.write_all(b"pong").await.unwrap();
        open.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");

        // Shut again later: it stays out until a second after that.
        gate.shut("127.0.0.2".parse().unwrap(), now + SHUT_FOR / 2);
        gate.apply(&listener, now + SHUT_FOR);
        assert!(!connects_at_once(to, "127.0.0.2").await, "still dropped");
        gate.apply(&listener, now + SHUT_FOR * 2);
        assert_eq!(gate.next_opening(), None);
        // Let back in: the SYN its kernel sends again gets through.
        let later = tokio::time::timeout(Duration::from_secs(60), waiting).await;
        assert!(matches!(later, Ok(Ok(Ok(_)))), "let back in: {later:?}");
    }

    #[tokio::test]
    async fn ipv6_and_ipv4_mapped_addresses_are_shut_out_too() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no IPv6 here");
            eprintln!("SKIPPED: no IPv6 on this machine");
            return;
        }
        // A dual-stack listener sees IPv4 peers as mapped addresses.
        let socket = tokio::net::TcpSocket::new_v6().unwrap();
        SockRef::from(&socket).set_only_v6(false).unwrap();
        socket.bind("[::]:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let at = listener.local_addr().unwrap();
        let v4 = SocketAddr::from(([127, 0, 0, 1], at.port()));
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, at.port()));
        let mut gate = Gate::default();
        let now = Instant::now();
        // ::2 differs from ::1 in the last word only, 2001:db8::1 in the
        // first.
        let listed = ["::ffff:127.0.0.2", "::2", "2001:db8::1"];
        shut(&mut gate, &listener, &listed, now);
        assert!(connects_at_once(v6, "::1").await, "another IPv6 address");
        assert!(
            connects_at_once(v4, "127.0.0.1").await,
            "another IPv4 address"
        );
        assert!(!connects_at_once(v4, "127.0.0.2").await, "a mapped address");
        shut(&mut gate, &listener, &["::1"], now);
        assert!(!connects_at_once(v6, "::1").await, "an IPv6 address");
        assert!(
            connects_at_once(v4, "127.0.0.1").await,
            "IPv4 is not caught"
        );
    }

    #[tokio::test]
    async fn an_accepted_connection_sheds_the_filter_it_inherited() {
        let (listener, to) = listen().await;
        let mut gate = Gate::default();
        shut(&mut gate, &listener, &["127.0.0.2"], Instant::now());
        let detach = |tcp: &TcpStream| SockRef::from(tcp).detach_filter();
        let _first = connect(to, "127.0.0.1").await.unwrap();
        let (inherited, _) = listener.accept().await.unwrap();
        assert!(
            detach(&inherited).is_ok(),
            "a connection inherits the filter"
        );
        let _second = connect(to, "127.0.0.1").await.unwrap();
        let (shed, _) = listener.accept().await.unwrap();
        gate.accepted(&shed);
        let none = detach(&shed).unwrap_err();
        assert_eq!(none.kind(), std::io::ErrorKind::NotFound, "{none}");
    }

    #[tokio::test]
    async fn at_most_max_shut_addresses_are_listed_and_the_kernel_takes_them() {
        let (listener, _) = listen().await;
        let mut gate = Gate::default();
        let now = Instant::now();
        // Every word at or above 2^31 (the costliest comparisons).
        for i in 0..MAX_SHUT as u128 + 10 {
            gate.shut(IpAddr::V6((u128::MAX - i).into()), now);
        }
        assert_eq!(gate.shut.len(), MAX_SHUT);
        gate.apply(&listener, now);
        assert_eq!(gate.attached.len(), MAX_SHUT, "the kernel took the filter");
        // What the kernel charges the listener (its option memory, `o` in
        // `ss -m`): half the smallest default of `net.core.optmem_max`,
        // 10 KiB, at most, so that a replacement fits beside it.
        let port = listener.local_addr().unwrap().port();
        match std::process::Command::new("ss")
            .args(["-tlmnH", &format!("sport = :{port}")])
            .output()
        {
            Ok(out) => {
                let out = String::from_utf8_lossy(&out.stdout).into_owned();
                let charged: usize = out
                    .split_once(",o")
                    .and_then(|(_, rest)| rest.split(',').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("no option memory in {out}"));
                assert!(charged <= 5 * 1024, "{charged} bytes of option memory");
            }
            Err(e) => {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "ss: {e}");
                eprintln!("SKIPPED the option memory check: no ss (iproute2): {e}");
            }
        }
        // Expired, they make room.
        gate.shut("127.0.0.2".parse().unwrap(), now + SHUT_FOR);
        assert_eq!(gate.shut.len(), 1);
    }
}
