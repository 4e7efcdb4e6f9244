//! A device that speaks MQTT: connected to the broker with its own
//! certificate, it publishes its readings to its own topic with a
//! response topic and correlation data, and waits for the collector's
//! answer on its receipts topic.

use crate::Device;
use anyhow::{Context, Result, bail};
use medledger_mqtt::{Client, Delivery, Message, Options};
use medledger_pki::Role;
use medledger_protocol::mqtt as topics;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a device waits for the collector's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// The collector's answer to one publish, as `POST /v1/readings` would
/// have answered it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status the `status` user property carries.
    pub status: u16,
    /// The content type (`application/json` or
    /// `application/problem+json`).
    pub content_type: String,
    /// The JSON document: a receipt, receipts and rejections, or a
    /// problem.
    pub body: serde_json::Value,
}

/// A device's MQTT session.
#[derive(Debug)]
pub struct MqttDevice {
    client: Client,
    deliveries: mpsc::Receiver<Delivery>,
    readings: String,
    receipts: String,
    next: u64,
}

impl MqttDevice {
    /// Connects `device` to the broker at `broker` (whose certificate
    /// names `broker_name`), trusting `root_der`, and subscribes to its
    /// receipts topic.
    pub async fn connect(
        device: &Device,
        root_der: &[u8],
        broker: &str,
        broker_name: &str,
    ) -> Result<MqttDevice> {
        let tls =
            medledger_pki::client_config(Some(&device.credentials()), root_der, &[Role::Server])?;
        let epc = device.epc.to_hex();
        let (client, deliveries) =
            Client::connect(tls, &Options::new(broker, broker_name, &epc)).await?;
        let receipts = topics::receipts_topic(&epc);
        client.subscribe(&receipts).await?;
        Ok(MqttDevice {
            client,
            deliveries,
            readings: topics::readings_topic(&epc),
            receipts,
            next: 0,
        })
    }

    /// Publishes `payload` (a COSE_Sign1, or a CBOR array of them) to the
    /// device's readings topic and waits for the answer.
    pub async fn send(&mut self, payload: Vec<u8>) -> Result<Answer> {
        let readings = self.readings.clone();
        self.send_to(&readings, payload).await
    }

    /// Publishes `payload` to `topic` (another device's, in an attack) and
    /// waits for the answer. The broker refusing the publish is an error.
    pub async fn send_to(&mut self, topic: &str, payload: Vec<u8>) -> Result<Answer> {
        self.next += 1;
        let correlation = self.next.to_be_bytes().to_vec();
        self.client
            .publish(Message {
                topic: topic.to_owned(),
                payload: payload.into(),
                response_topic: Some(self.receipts.clone()),
                correlation_data: Some(correlation.clone().into()),
                ..Message::default()
            })
            .await?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.deliveries.recv())
                .await
                .context("no answer from the collector within 30 s")?
                .context("the broker closed the connection")?;
            self.client.ack(&delivery).await?;
            let message = delivery.message;
            if message.correlation_data.as_deref() != Some(&correlation[..]) {
                continue; // An answer to an earlier publish.
            }
            let Some(status) = message.user_property("status") else {
                bail!("an answer without a status user property");
            };
            return Ok(Answer {
                status: status.parse().context("the status user property")?,
                content_type: message.content_type.unwrap_or_default(),
                body: serde_json::from_slice(&message.payload).context("the answer's JSON")?,
            });
        }
    }
}
