//! Connections to the hospital's nodes, presenting a device's, a
//! patient's, a member of staff's or the collector's certificate.

use super::Hospital;
use crate::device::Device;
use crate::mqtt::MqttDevice;
use anyhow::{Context, Result};
use medledger_pki::https::Connection;
use medledger_pki::{Credentials, Role};
use std::sync::Arc;

impl Hospital {
    /// A client configuration presenting `own` to a server of `role`.
    pub fn client_config(
        &self,
        own: &Credentials,
        server_role: Role,
    ) -> Result<Arc<rustls::ClientConfig>> {
        Ok(medledger_pki::client_config(
            Some(own),
            &self.ca.root_cert_der()?,
            &[server_role],
        )?)
    }

    /// A connection presenting `own` to the `server_role` node at `addr`.
    pub async fn open(
        &self,
        own: &Credentials,
        server_role: Role,
        addr: &str,
    ) -> Result<Connection> {
        Ok(Connection::open(self.client_config(own, server_role)?, addr, "localhost").await?)
    }

    /// A connection to the collector as `device`.
    pub async fn connect(&self, device: &Device) -> Result<Connection> {
        self.open(
            &device.credentials(),
            Role::Collector,
            &self.collector.addr().to_string(),
        )
        .await
    }

    /// `device` connected to the broker (the options gave Mosquitto), its
    /// readings carrying their certificate chain from now on.
    pub async fn connect_mqtt(&self, device: &mut Device) -> Result<MqttDevice> {
        let broker = self
            .broker
            .as_ref()
            .context("this hospital runs no MQTT broker: give Options::mosquitto")?;
        device.x5chain = true;
        MqttDevice::connect(device, &self.ca.root_cert_der()?, &broker.addr, "localhost").await
    }

    /// A connection to the server presenting `own`.
    pub async fn to_server(&self, own: &Credentials) -> Result<Connection> {
        self.open(own, Role::Server, &self.server.addr().to_string())
            .await
    }

    /// A connection to the server holding the collector's key (as the
    /// collector, or a sinkhole that stole it).
    pub async fn connect_server(&self) -> Result<Connection> {
        self.to_server(&Credentials::from_issued(&self.collector_issued))
            .await
    }

    /// A connection to the server as the patient (their card's
    /// certificate).
    pub async fn connect_patient(&self) -> Result<Connection> {
        self.to_server(&Credentials::from_issued(&self.card)).await
    }
}
