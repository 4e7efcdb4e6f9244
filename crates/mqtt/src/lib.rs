//! A small MQTT 5 client over mutual TLS: what a collector and a device
//! need, and nothing else; and the files of a Mosquitto broker that trusts
//! our CA.
//!
//! - the crate root: the [`Client`] (QoS 1 publish and subscribe, response
//!   topics and correlation data, deliveries acknowledged by the caller,
//!   keep-alive), its [`Options`], [`Message`]s and [`Delivery`]s;
//! - [`mosquitto`]: a Mosquitto broker's files written from the CA, and the
//!   broker run as a child process for tests and the demo.
//!
//! ```text
//!  Client (clonable) --Command--> connection task --TLS--> broker
//!    publish (QoS 1, resolves on PUBACK)     |  keep-alive pings
//!    subscribe (QoS 1, resolves on SUBACK)   |  PUBACK / SUBACK matched by id
//!    ack (PUBACK for a delivery)             v
//!  Deliveries (mpsc) <---------------- PUBLISH from the broker
//! ```
//!
//! Packets are encoded and decoded by `rumqttc`'s MQTT 5 codec; the
//! connection (TCP, TLS with the caller's `rustls` configuration, which
//! presents the client certificate) is ours. A delivery at QoS 1 stays
//! unacknowledged until the caller calls [`Client::ack`]: the broker sends
//! it again after a reconnection if the caller never did, so a caller acks
//! only what it has made durable. The connection ends on the first error;
//! callers reconnect (see [`Backoff`]).
//!
//! No feature flags.

pub mod mosquitto;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Filter, Packet, PubAck, PubAckReason, Publish, PublishProperties, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::{Error as CodecError, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;

/// How long a connection may take, TCP to CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection, a publish or a subscription failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// TCP or TLS to the broker failed.
    #[error("cannot reach the MQTT broker at {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The broker refused the connection (CONNACK).
    #[error("the MQTT broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The broker refused a subscription (SUBACK).
    #[error("the MQTT broker refused the subscription to {filter}: {code:?}")]
    Subscription {
        /// The topic filter.
        filter: String,
        /// The broker's reason.
        code: SubscribeReasonCode,
    },
    /// The broker did not take a publish (PUBACK with an error reason;
    /// `NotAuthorized`: the ACL does not let this client write there).
    #[error("the MQTT broker did not take the message for {topic}: {reason:?}")]
    NotTaken {
        /// The topic.
        topic: String,
        /// The broker's reason.
        reason: PubAckReason,
    },
    /// A packet could not be encoded or decoded.
    #[error("MQTT: {0}")]
    Codec(String),
    /// The connection ended.
    #[error("the MQTT connection ended: {0}")]
    Closed(String),
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker's `host:port`.
    pub broker: String,
    /// The name on the broker's certificate.
    pub server_name: String,
    /// The client identifier (the broker keeps a session per identifier).
    pub client_id: String,
    /// Seconds between pings when nothing else is sent.
    pub keep_alive_s: u16,
    /// How long the broker keeps the session (subscriptions, unacknowledged
    /// messages) after a disconnection; 0: a clean session each time.
    pub session_expiry_s: u32,
    /// Messages the broker may have in flight to us at once.
    pub receive_maximum: u16,
    /// The largest packet either side accepts.
    pub max_packet_bytes: u32,
}

impl Options {
    /// Options with the defaults: 30 s keep-alive, a clean session, 100
    /// messages in flight, 1 MiB packets.
    pub fn new(broker: &str, server_name: &str, client_id: &str) -> Options {
        Options {
            broker: broker.to_owned(),
            server_name: server_name.to_owned(),
            client_id: client_id.to_owned(),
            keep_alive_s: 30,
            session_expiry_s: 0,
            receive_maximum: 100,
            max_packet_bytes: 1 << 20,
        }
    }
}

/// An application message, either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Where the receiver should publish its answer (MQTT 5).
    pub response_topic: Option<String>,
    /// Opaque data the answer carries back (MQTT 5).
    pub correlation_data: Option<Bytes>,
    /// The payload's media type (MQTT 5).
    pub content_type: Option<String>,
    /// Name-value pairs (MQTT 5).
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    /// The value of the first user property called `name`.
    pub fn user_property(&self, name: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A message the broker delivered; ack it with [`Client::ack`] once it is
/// dealt with (QoS 1), or the broker delivers it again.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Whether the broker sent it before (a redelivery).
    pub duplicate: bool,
    /// The packet id to acknowledge; 0 at QoS 0.
    pkid: u16,
}

enum Command {
    Publish(Message, oneshot::Sender<Result<(), Error>>),
    Subscribe(String, oneshot::Sender<Result<(), Error>>),
    Ack(u16),
}

/// A handle on a connection; clones share it. Every call fails once the
/// connection has ended.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

impl Client {
    /// Connects to the broker over TLS with `tls` (whose client
    /// certificate identifies us) and waits for its CONNACK, 10 s at
    /// most. Deliveries arrive on the receiver, which closes when the
    /// connection ends.
    pub async fn connect(
        tls: Arc<rustls::ClientConfig>,
        options: &Options,
    ) -> Result<(Client, mpsc::Receiver<Delivery>), Error> {
        tokio::time::timeout(CONNECT_TIMEOUT, Client::open(tls, options))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Closed(format!(
                    "{} did not accept the connection within {} s",
                    options.broker,
                    CONNECT_TIMEOUT.as_secs()
                )))
            })
    }

    async fn open(
        tls: Arc<rustls::ClientConfig>,
        options: &Options,
    ) -> Result<(Client, mpsc::Receiver<Delivery>), Error> {
        let addr = options.broker.clone();
        let connect_err = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };
        let name = rustls::pki_types::ServerName::try_from(options.server_name.clone())
            .map_err(|e| connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let tcp = TcpStream::connect(&options.broker)
            .await
            .map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        // MQTT over TLS takes no ALPN (ours offers HTTP's).
        let mut config = (*tls).clone();
        config.alpn_protocols.clear();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(connect_err)?;
        let (reader, writer) = tokio::io::split(stream);
        let mut connection = Connection {
            reader: Reader {
                stream: reader,
                buffer: BytesMut::with_capacity(8 * 1024),
                max_packet_bytes: options.max_packet_bytes,
            },
            writer,
        };
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(options.session_expiry_s);
        properties.receive_maximum = Some(options.receive_maximum);
        properties.max_packet_size = Some(options.max_packet_bytes);
        connection
            .send(&Packet::Connect(
                Connect {
                    keep_alive: options.keep_alive_s,
                    client_id: options.client_id.clone(),
                    clean_start: options.session_expiry_s == 0,
                    properties: Some(properties),
                },
                None,
                None,
            ))
            .await?;
        match connection.reader.next().await? {
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => {}
            Packet::ConnAck(ConnAck { code, .. }) => return Err(Error::Refused(code)),
            other => {
                return Err(Error::Codec(format!(
                    "expected CONNACK, the broker sent {other:?}"
                )));
            }
        }
        let (commands, inbox) = mpsc::channel(1024);
        let (deliver, deliveries) = mpsc::channel(usize::from(options.receive_maximum.max(1)));
        let keep_alive = Duration::from_secs(u64::from(options.keep_alive_s.max(1)));
        tokio::spawn(async move {
            let reason = connection.run(inbox, deliver, keep_alive).await;
            tracing::debug!("MQTT connection ended: {reason}");
        });
        Ok((Client { commands }, deliveries))
    }

    /// Publishes at QoS 1; resolves when the broker has taken it.
    pub async fn publish(&self, message: Message) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Publish(message, reply)).await?;
        answer.await.map_err(|_| closed())?
    }

    /// Subscribes to `filter` at QoS 1 (`$share/GROUP/...` for a shared
    /// subscription); resolves when the broker has granted it.
    pub async fn subscribe(&self, filter: &str) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Subscribe(filter.to_owned(), reply))
            .await?;
        answer.await.map_err(|_| closed())?
    }

    /// Acknowledges a delivery: the broker will not send it again.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), Error> {
        if delivery.pkid == 0 {
            return Ok(());
        }
        self.command(Command::Ack(delivery.pkid)).await
    }

    async fn command(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).await.map_err(|_| closed())
    }
}

fn closed() -> Error {
    Error::Closed("the connection is gone".into())
}

/// Waits between reconnections: 100 ms doubling to 10 s, back to 100 ms
/// after a connection that worked.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MOST: Duration = Duration::from_secs(10);

    /// Sleeps, and doubles the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Backoff::MOST);
    }

    /// A connection worked: the next wait is short again.
    pub fn reset(&mut self) {
        self.next = Backoff::FIRST;
    }
}

struct Connection {
    reader: Reader,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

struct Reader {
    stream: ReadHalf<TlsStream<TcpStream>>,
    buffer: BytesMut,
    max_packet_bytes: u32,
}

impl Reader {
    /// The next packet from the broker (cancel-safe: bytes read stay in
    /// the buffer).
    async fn next(&mut self) -> Result<Packet, Error> {
        loop {
            match read_packet(&mut self.buffer, self.max_packet_bytes)? {
                Some(packet) => return Ok(packet),
                None => {
                    let n = self
                        .stream
                        .read_buf(&mut self.buffer)
                        .await
                        .map_err(|e| Error::Closed(e.to_string()))?;
                    if n == 0 {
                        return Err(Error::Closed("the broker closed the connection".into()));
                    }
                }
            }
        }
    }
}

/// The next whole packet in `buffer` (taken out of it), or `None` when more
/// bytes must come first (room for them is reserved).
fn read_packet(buffer: &mut BytesMut, max_packet_bytes: u32) -> Result<Option<Packet>, Error> {
    match Packet::read(buffer, Some(max_packet_bytes)) {
        Ok(packet) => Ok(Some(packet)),
        Err(CodecError::InsufficientBytes(more)) => {
            buffer.reserve(more);
            Ok(None)
        }
        Err(e) => Err(Error::Codec(e.to_string())),
    }
}

/// The messages a connection would deliver from `bytes` sent by a broker:
/// each whole packet is decoded as [`Client`] decodes it, and each PUBLISH
/// becomes a [`Delivery`]. The fuzz target `mqtt` feeds it arbitrary bytes.
pub fn decode_deliveries(bytes: &[u8], max_packet_bytes: u32) -> Result<Vec<Delivery>, Error> {
    let mut buffer = BytesMut::from(bytes);
    let mut deliveries = Vec::new();
    while let Some(packet) = read_packet(&mut buffer, max_packet_bytes)? {
        if let Packet::Publish(p) = packet {
            deliveries.push(delivery(p)?);
        }
    }
    Ok(deliveries)
}

/// What a packet id is waiting for.
enum Pending {
    Publish(String, oneshot::Sender<Result<(), Error>>),
    Subscribe(String, oneshot::Sender<Result<(), Error>>),
}

impl Connection {
    async fn send(&mut self, packet: &Packet) -> Result<(), Error> {
        let mut out = BytesMut::new();
        packet
            .write(&mut out, None)
            .map_err(|e| Error::Codec(e.to_string()))?;
        self.writer
            .write_all(&out)
            .await
            .map_err(|e| Error::Closed(e.to_string()))?;
        self.writer
            .flush()
            .await
            .map_err(|e| Error::Closed(e.to_string()))
    }

    /// Serves the connection until it fails; says why.
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        deliver: mpsc::Sender<Delivery>,
        keep_alive: Duration,
    ) -> Error {
        let mut pending: HashMap<u16, Pending> = HashMap::new();
        let mut next_id: u16 = 0;
        let mut ping = tokio::time::interval(keep_alive);
        ping.tick().await;
        let mut unanswered_ping = false;
        let failed = loop {
            tokio::select! {
                packet = self.reader.next() => {
                    let packet = match packet {
                        Ok(packet) => packet,
                        Err(e) => break e,
                    };
                    if let Err(e) = self.take(packet, &mut pending, &deliver, &mut unanswered_ping).await {
                        break e;
                    }
                }
                command = inbox.recv() => {
                    let Some(command) = command else {
                        // Every handle is gone: leave politely.
                        let bye = Packet::Disconnect(Disconnect::new(
                            DisconnectReasonCode::NormalDisconnection,
                        ));
                        let _ = self.send(&bye).await;
                        break Error::Closed("the client closed it".into());
                    };
                    let packet = match command {
                        Command::Ack(pkid) => Packet::PubAck(PubAck::new(pkid, None)),
                        Command::Publish(message, reply) => {
                            let pkid = free_id(&mut next_id, &pending);
                            let topic = message.topic.clone();
                            pending.insert(pkid, Pending::Publish(topic, reply));
                            Packet::Publish(publish(message, pkid))
                        }
                        Command::Subscribe(filter, reply) => {
                            let pkid = free_id(&mut next_id, &pending);
                            let mut subscribe =
                                Subscribe::new(Filter::new(filter.clone(), QoS::AtLeastOnce), None);
                            subscribe.pkid = pkid;
                            pending.insert(pkid, Pending::Subscribe(filter, reply));
                            Packet::Subscribe(subscribe)
                        }
                    };
                    if let Err(e) = self.send(&packet).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    if unanswered_ping {
                        break Error::Closed("the broker did not answer a ping".into());
                    }
                    unanswered_ping = true;
                    if let Err(e) = self.send(&Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq)).await {
                        break e;
                    }
                }
            }
        };
        let why = failed.to_string();
        for (_, waiting) in pending {
            let (Pending::Publish(_, reply) | Pending::Subscribe(_, reply)) = waiting;
            let _ = reply.send(Err(Error::Closed(why.clone())));
        }
        failed
    }

    /// Acts on one packet from the broker.
    async fn take(
        &mut self,
        packet: Packet,
        pending: &mut HashMap<u16, Pending>,
        deliver: &mpsc::Sender<Delivery>,
        unanswered_ping: &mut bool,
    ) -> Result<(), Error> {
        match packet {
            Packet::Publish(p) => {
                let delivery = delivery(p)?;
                deliver
                    .send(delivery)
                    .await
                    .map_err(|_| Error::Closed("no one takes the deliveries".into()))?;
            }
            Packet::PubAck(ack) => {
                if let Some(Pending::Publish(topic, reply)) = pending.remove(&ack.pkid) {
                    let taken = matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    );
                    let _ = reply.send(if taken {
                        Ok(())
                    } else {
                        Err(Error::NotTaken {
                            topic,
                            reason: ack.reason,
                        })
                    });
                }
            }
            Packet::SubAck(ack) => {
                if let Some(Pending::Subscribe(filter, reply)) = pending.remove(&ack.pkid) {
                    let _ = reply.send(match ack.return_codes.first() {
                        Some(SubscribeReasonCode::Success(_)) => Ok(()),
                        Some(code) => Err(Error::Subscription {
                            filter,
                            code: *code,
                        }),
                        None => Err(Error::Codec("a SUBACK without a reason code".into())),
                    });
                }
            }
            Packet::PingResp(_) => *unanswered_ping = false,
            Packet::Disconnect(d) => {
                return Err(Error::Closed(format!(
                    "the broker disconnected: {:?}",
                    d.reason_code
                )));
            }
            // QoS 2 is never asked for; the rest does not come to clients.
            other => tracing::debug!("MQTT: ignored {other:?}"),
        }
        Ok(())
    }
}

/// A packet id no request is waiting on (ids 1..=65535).
fn free_id(next: &mut u16, pending: &HashMap<u16, Pending>) -> u16 {
    loop {
        *next = next.wrapping_add(1).max(1);
        if !pending.contains_key(next) {
            return *next;
        }
    }
}

fn publish(message: Message, pkid: u16) -> Publish {
    let Message {
        topic,
        payload,
        response_topic,
        correlation_data,
        content_type,
        user_properties,
    } = message;
    let properties = PublishProperties {
        response_topic,
        correlation_data,
        content_type,
        user_properties,
        ..PublishProperties::default()
    };
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload, Some(properties));
    publish.pkid = pkid;
    publish
}

fn delivery(p: Publish) -> Result<Delivery, Error> {
    let topic = String::from_utf8(p.topic.to_vec())
        .map_err(|_| Error::Codec("a topic that is not UTF-8".into()))?;
    let properties = p.properties.unwrap_or_default();
    Ok(Delivery {
        message: Message {
            topic,
            payload: p.payload,
            response_topic: properties.response_topic,
            correlation_data: properties.correlation_data,
            content_type: properties.content_type,
            user_properties: properties.user_properties,
        },
        duplicate: p.dup,
        pkid: if p.qos == QoS::AtMostOnce { 0 } else { p.pkid },
    })
}
