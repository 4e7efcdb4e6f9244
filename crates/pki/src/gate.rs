//! The kernel's share of the per-address limits: while an IP address is
//! over them, a classic BPF filter on the listening socket drops its new
//! connections' SYNs, so that they cost no accept, no close and no
//! handshake's packets, and its TCP stack waits (it resends a SYN after
//! 1 s, then 3 s, ...) instead of reconnecting at once.
//!
//! Only a pure SYN (SYN set, ACK clear) from a listed address is dropped:
//! handshakes already under way and open connections (which inherit the
//! filter at accept) are not touched. An address is let back in
//! [`SHUT_FOR`] after its last refusal.
//!
//! ```text
//!   ldb [13]; and #SYN|ACK; jeq #SYN ?: ret #keep     a pure SYN?
//!   ldb [net]; rsh #4; jeq #4 ?: ja v6                 IPv4?
//!   ld [net+12]; (jeq #addr ?: ret #0)*; ret #keep     its source, listed?
//!   v6: (ld [net+8+4i]; jeq #word ...)*; ret #keep
//! ```

use socket2::{SockFilter, SockRef};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long an address refused at accept stays shut out.
pub(crate) const SHUT_FOR: Duration = Duration::from_secs(1);

/// Addresses shut out at once, at most (the filter stays under the
/// kernel's 4,096 instructions with every one an IPv6 address); more are
/// only refused at accept.
pub(crate) const MAX_SHUT: usize = 400;

// Classic BPF (linux/filter.h), the kernel's stable ABI.
const LD_B_ABS: u16 = 0x30;
const LD_W_ABS: u16 = 0x20;
const AND_K: u16 = 0x54;
const RSH_K: u16 = 0x74;
const JEQ_K: u16 = 0x15;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
/// Loads relative to the IP header (the filter sees the packet from its
/// TCP header on).
const NET: u32 = 0xFFF0_0000;
/// The TCP header's flags byte, and its SYN and ACK bits.
const TCP_FLAGS: u32 = 13;
const SYN: u32 = 0x02;
const ACK: u32 = 0x10;
const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;

/// The addresses a listener shuts out, and until when.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    shut: HashMap<IpAddr, Instant>,
    /// What the filter attached to the listener lists.
    attached: Vec<IpAddr>,
    /// Attaching failed once (logged): the gate stays open.
    broken: bool,
}

impl Gate {
    /// Shuts `ip` out until [`SHUT_FOR`] from `now`.
    pub(crate) fn shut(&mut self, ip: IpAddr, now: Instant) {
        let ip = ip.to_canonical();
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
        if self.broken || listed == self.attached {
            return;
        }
        let socket = SockRef::from(listener);
        let done = if listed.is_empty() {
            socket.detach_filter()
        } else {
            socket.attach_filter(&program(&listed))
        };
        match done {
            Ok(()) => self.attached = listed,
            Err(e) => {
                self.broken = true;
                tracing::warn!(
                    "cannot attach a socket filter to the listener ({e}): addresses over \
                     their limits are refused at accept only"
                );
            }
        }
    }
}

/// The filter dropping pure SYNs from `listed`.
fn program(listed: &[IpAddr]) -> Vec<SockFilter> {
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
        // To the IPv6 part: past the IPv4 load, its pairs and its return.
        op(JA, 2 * v4.len() as u32 + 2),
        op(LD_W_ABS, NET + 12),
    ];
    for a in v4 {
        p.extend([jeq(a, 0, 1), op(RET_K, DROP)]);
    }
    p.push(op(RET_K, KEEP));
    for a in v6 {
        for i in 0..4u8 {
            let word = (a >> (96 - 32 * u32::from(i))) as u32;
            // A word that differs skips to the next address.
            p.extend([
                op(LD_W_ABS, NET + 8 + 4 * u32::from(i)),
                jeq(word, 0, 7 - 2 * i),
            ]);
        }
        p.push(op(RET_K, DROP));
    }
    p.push(op(RET_K, KEEP));
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::https::{bind, connect_from};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether a connection from `from` to `to` is made before its first
    /// SYN would be sent again (1 s): the kernel makes it without an
    /// accept, unless the SYN was dropped.
    async fn connects_at_once(to: SocketAddr, from: &str) -> bool {
        let to = to.to_string();
        let connecting = connect_from(&to, Some(from.parse().unwrap()));
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connecting).await,
            Ok(Ok(_))
        )
    }

    fn shut(gate: &mut Gate, listener: &tokio::net::TcpListener, ips: &[&str], now: Instant) {
        for ip in ips {
            gate.shut(ip.parse().unwrap(), now);
        }
        gate.apply(listener, now);
    }

    #[tokio::test]
    async fn a_shut_out_address_gets_no_new_connection_until_let_back_in() {
        let (listener, to) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let mut open = connect_from(&to.to_string(), Some("127.0.0.2".parse().unwrap()))
            .await
            .unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut gate = Gate::default();
        let now = Instant::now();
        shut(&mut gate, &listener, &["127.0.0.2", "2001:db8::2"], now);

        assert!(connects_at_once(to, "127.0.0.1").await, "another address");
        assert!(
            !connects_at_once(to, "127.0.0.2").await,
            "the SYN is dropped"
        );
        let waiting = tokio::spawn(async move {
            connect_from(&to.to_string(), Some("127.0.0.2".parse().unwrap())).await
        });
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
        // A dual-stack listener sees IPv4 peers as mapped addresses.
        let (listener, at) = bind("[::]:0".parse().unwrap()).await.unwrap();
        let v4 = SocketAddr::from(([127, 0, 0, 1], at.port()));
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, at.port()));
        let mut gate = Gate::default();
        let now = Instant::now();
        shut(
            &mut gate,
            &listener,
            &["::ffff:127.0.0.2", "2001:db8::1"],
            now,
        );
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

    #[test]
    fn at_most_max_shut_addresses_are_listed() {
        let mut gate = Gate::default();
        let now = Instant::now();
        for i in 0..MAX_SHUT as u32 + 10 {
            gate.shut(IpAddr::V6((u128::from(i) + 1).into()), now);
        }
        assert_eq!(gate.shut.len(), MAX_SHUT);
        let listed: Vec<IpAddr> = gate.shut.keys().copied().collect();
        assert!(program(&listed).len() <= 4096, "the kernel's limit");
    }
}
