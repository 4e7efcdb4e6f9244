//! MQTT in front of [`crate::intake`]: readings a broker delivers from the
//! collectors' shared subscription.
//!
//! The broker authenticated the device (its certificate from our CA, our
//! CRL) and let it publish only to its own topic; the collector does not
//! see that handshake, so each reading carries its signer's certificate
//! chain in the COSE `x5chain` header, which is verified here exactly as a
//! TLS handshake verifies it (chain to our root, validity, CRL, role,
//! extensions) and must name the topic's device. Then the intake, as for
//! HTTPS. The answer is published after the outbox commit to the response
//! topic the device set (its own receipts topic only), with its
//! correlation data, and only then is the delivery acknowledged: a reading
//! the collector did not decide is delivered again.

use crate::State;
use crate::intake::{self, Answer, Sender};
use crate::pipeline::{Candidate, Presented};
use medledger_checks::{Item, Refusal, Verdict};
use medledger_mqtt::{Backoff, Client, Delivery, Message, Options};
use medledger_pki::{ClientAuth, Epc, Identity};
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::{ProblemType, SignedReading, mqtt as topics};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where the collector takes readings from MQTT.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// The broker's `host:port`.
    pub broker: String,
    /// The name on the broker's certificate.
    pub server_name: String,
    /// The topic filter (a shared subscription, so that each reading goes
    /// to one collector).
    pub subscription: String,
    /// The client identifier: one per collector (the broker keeps its
    /// session, and the readings not yet acknowledged, under it).
    pub client_id: String,
}

/// A chain's identity, and the CRL generation it was verified under.
type Verified = (Arc<Identity>, u64);

/// Verified certificate chains, until the CRL changes (at most
/// [`Certificates::MOST`]; then it starts again).
struct Certificates {
    auth: Arc<ClientAuth>,
    verified: Mutex<HashMap<Vec<Vec<u8>>, Verified>>,
}

impl Certificates {
    const MOST: usize = 100_000;

    /// The identity of a device certificate chain (leaf first), verified
    /// as a handshake verifies it.
    fn verify(&self, chain: &[Vec<u8>]) -> Result<Arc<Identity>, Refusal> {
        let generation = self.auth.crl_generation();
        let now_s = (medledger_protocol::now_ms() / 1000) as i64;
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(chain)
            .cloned();
        if let Some((identity, at)) = cached
            && at == generation
            && (identity.not_before..=identity.not_after).contains(&now_s)
        {
            return Ok(identity);
        }
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Refusal::new(
                ProblemType::Malformed,
                "over MQTT, a reading carries its certificate in the COSE x5chain header (label 33)",
            ));
        };
        let identity = Arc::new(
            self.auth
                .verify_certificate(leaf, intermediates, rustls::pki_types::UnixTime::now())
                .map_err(|e| Refusal::new(e.problem_type(), e.to_string()))?,
        );
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= Certificates::MOST {
            verified.clear();
        }
        verified.insert(chain.to_vec(), (identity.clone(), generation));
        Ok(identity)
    }
}

/// Takes readings from the broker until the collector stops, connecting
/// again (with a growing pause) whenever the connection ends.
pub(crate) async fn run(
    state: Arc<State>,
    tls: Arc<rustls::ClientConfig>,
    settings: MqttSettings,
    devices: Arc<ClientAuth>,
) {
    let certificates = Arc::new(Certificates {
        auth: devices,
        verified: Mutex::new(HashMap::new()),
    });
    let mut options = Options::new(&settings.broker, &settings.server_name, &settings.client_id);
    // The broker keeps unacknowledged readings for an hour of absence.
    options.session_expiry_s = 3600;
    options.receive_maximum = 1000;
    options.max_packet_bytes =
        u32::try_from(state.limits.max_body_bytes + 64 * 1024).unwrap_or(u32::MAX);
    let mut backoff = Backoff::default();
    loop {
        match Client::connect(tls.clone(), &options).await {
            Ok((client, mut deliveries)) => match client.subscribe(&settings.subscription).await {
                Ok(()) => {
                    tracing::info!(
                        broker = %settings.broker,
                        "medledger collector: taking readings from MQTT ({})",
                        settings.subscription
                    );
                    backoff.reset();
                    while let Some(delivery) = deliveries.recv().await {
                        tokio::spawn(take(
                            state.clone(),
                            client.clone(),
                            certificates.clone(),
                            delivery,
                        ));
                    }
                    tracing::warn!(
                        broker = %settings.broker,
                        "medledger collector: the MQTT connection ended; connecting again"
                    );
                }
                Err(e) => tracing::warn!(broker = %settings.broker, "medledger collector: {e}"),
            },
            Err(e) => tracing::warn!(broker = %settings.broker, "medledger collector: {e}"),
        }
        backoff.wait().await;
    }
}

/// Decides one delivery, answers it, then acknowledges it.
async fn take(
    state: Arc<State>,
    client: Client,
    certificates: Arc<Certificates>,
    delivery: Delivery,
) {
    let message = &delivery.message;
    let (epc, answer) = decide(&state, &certificates, message).await;
    let reply_to = message.response_topic.as_deref();
    match (reply_to, &epc) {
        (Some(topic), Some(epc)) if topics::is_receipts_topic_of(topic, &epc.to_hex()) => {
            let mut user_properties = vec![("status".to_owned(), answer.status.to_string())];
            if let Some(seconds) = answer.retry_after {
                user_properties.push(("retry-after".to_owned(), seconds.to_string()));
            }
            let reply = Message {
                topic: topic.to_owned(),
                payload: answer.body.into(),
                response_topic: None,
                correlation_data: message.correlation_data.clone(),
                content_type: Some(answer.content_type.to_owned()),
                user_properties,
            };
            if let Err(e) = client.publish(reply).await {
                // Not acknowledged: the broker delivers the reading again,
                // and it is answered again (the outbox holds it once).
                tracing::warn!("medledger collector: cannot answer on {topic}: {e}");
                return;
            }
        }
        (Some(topic), _) => tracing::warn!(
            topic = %message.topic,
            "medledger collector: not answering on {topic:?}: a device is answered on its own receipts topic only"
        ),
        (None, _) => {}
    }
    if let Err(e) = client.ack(&delivery).await {
        tracing::debug!("medledger collector: cannot acknowledge a reading: {e}");
    }
}

/// The device the topic names, and the answer to its message.
async fn decide(
    state: &State,
    certificates: &Certificates,
    message: &Message,
) -> (Option<Epc>, Answer) {
    let Some(epc) = message
        .topic
        .strip_prefix(topics::READINGS_PREFIX)
        .and_then(|hex| Epc::from_hex(hex).ok())
    else {
        intake::count(state, ProblemType::Malformed, 1);
        let detail = format!(
            "readings go to {}{{EPC}}, 24 hex digits",
            topics::READINGS_PREFIX
        );
        return (None, Answer::refuse(ProblemType::Malformed, detail));
    };
    let mut sender = Sender {
        epc: *epc.as_bytes(),
        peer: format!("mqtt {}", message.topic),
        device: epc.to_tag_uri(),
        fingerprint: String::new(),
    };
    let single = match message.content_type.as_deref() {
        Some("application/cose") => true,
        Some("application/cbor") => false,
        // Unsaid: an array whose items are all byte strings is a batch (a
        // COSE_Sign1 without its tag has a map second).
        _ => !matches!(
            cbor::decode(&message.payload),
            Ok(Value::Array(items)) if items.iter().all(|i| matches!(i, Value::Bytes(_)))
        ),
    };
    let answer = async {
        if message.payload.len() > state.limits.max_body_bytes {
            intake::count(state, ProblemType::TooLarge, 1);
            return Err(Answer::refuse(
                ProblemType::TooLarge,
                format!(
                    "the message is larger than {} bytes",
                    state.limits.max_body_bytes
                ),
            ));
        }
        let envelopes = intake::envelopes(state, &message.payload, !single)?;
        intake::admit(state, &sender, envelopes.len())?;
        let mut identities = HashMap::new();
        let items: Vec<Candidate> = envelopes
            .into_iter()
            .map(|cose| match signer(state, certificates, &cose, &epc) {
                Ok((presented, identity)) => {
                    identities.insert(presented.fingerprint, identity);
                    Item::new(cose, presented)
                }
                Err(refusal) => {
                    let mut item = Item::new(cose, Arc::new(Presented::default()));
                    item.verdict = Verdict::Refused(refusal);
                    item
                }
            })
            .collect();
        if let Some(identity) = identities.values().next() {
            sender.fingerprint = identity.fingerprint_hex();
        }
        let identity = |presented: &Arc<Presented>| {
            identities
                .get(&presented.fingerprint)
                .cloned()
                .ok_or_else(|| Refusal::new(ProblemType::Malformed, "no certificate"))
        };
        Ok(intake::decide(state, &sender, items, identity, single, false).await)
    }
    .await
    .unwrap_or_else(|refused| refused);
    (Some(epc), answer)
}

/// The certificate a reading carries, verified, and of the topic's device.
fn signer(
    state: &State,
    certificates: &Certificates,
    cose: &[u8],
    topic_epc: &Epc,
) -> Result<(Arc<Presented>, Arc<Identity>), Refusal> {
    let envelope = SignedReading::decode(cose)
        .map_err(|e| Refusal::new(ProblemType::Malformed, e.to_string()))?;
    let chain = envelope.x5chain();
    let identity = certificates.verify(chain)?;
    if identity.epc() != Some(topic_epc) {
        return Err(Refusal::new(
            ProblemType::UnknownDevice,
            format!(
                "the reading's certificate is of {}, the topic names {}",
                identity.subject,
                topic_epc.to_hex()
            ),
        ));
    }
    intake::remember_cas(state, chain);
    let presented = Arc::new(Presented {
        der: chain.first().cloned().unwrap_or_default(),
        fingerprint: identity.fingerprint,
    });
    Ok((presented, identity))
}
