//! A device as a third party would build one: a certificate and key from
//! the hospital's CA, signed readings, and `POST /v1/readings` over its
//! own mutual-TLS connection. Only the wire (`medledger_protocol`) and the
//! PKI (`medledger_pki`) are used here; registering a device on chain is
//! the hospital's part ([`crate::hospital`]).
//!
//! ```text
//!  Device::issue | Device::load --> Device::reading (COSE_Sign1, next seq)
//!      --> post_readings(conn, Readings::One | Readings::Batch, Wait)
//!      --> 202 + receipt(s), or a problem
//! ```

use anyhow::{Context, Result};
use medledger_pki::https::{ClientError, Connection, Reply};
use medledger_pki::{Ca, Credentials, Epc, Issued, KeyAlg, LeafRequest, Role};
use medledger_protocol::catalogue::data_type;
use medledger_protocol::{Algorithm, DeviceId, Observation, Reading, SigningKey, now_ms};
use std::path::Path;

/// A device: its certificate, key and sequence counter.
pub struct Device {
    /// Its certificate and key.
    pub issued: Issued,
    /// Its EPC.
    pub epc: Epc,
    /// Its reading key.
    pub key: SigningKey,
    /// The last sequence number used.
    pub seq: u64,
    /// Whether its readings carry its certificate chain in the COSE
    /// `x5chain` header, as readings sent over MQTT must.
    pub x5chain: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("epc", &self.epc.to_tag_uri())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A signed heart-rate reading with the next sequence number.
    pub fn heart_rate(&mut self, bpm: f64) -> Vec<u8> {
        self.heart_rate_at(bpm, now_ms())
    }

    /// A signed heart-rate reading taken at `ts_ms`.
    pub fn heart_rate_at(&mut self, bpm: f64, ts_ms: u64) -> Vec<u8> {
        self.reading_at(
            data_type("8867-4")
                .map(|t| vec![Observation::scalar(t, bpm)])
                .unwrap_or_default(),
            ts_ms,
        )
    }

    /// A new device of `group` with EPC serial `serial`, its certificate
    /// issued by `ca` (rule `default`), not registered.
    pub fn issue(ca: &Ca, serial: u64, group: &str, key_alg: KeyAlg) -> Result<Device> {
        let epc = Epc::new(3, "0614141", "812345", serial)?;
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(epc);
        request.group = Some(group.into());
        request.rule = Some("default".into());
        request.key_alg = key_alg;
        Device::holding(ca.issue(&request)?, epc, key_alg.reading_algorithm(), 0)
    }

    /// A device from its certificate and key (`PREFIX.crt`, `PREFIX.key`;
    /// P-256 or Ed25519, as the certificate says), its sequence counter set
    /// to `seq`.
    pub fn load(prefix: &Path, seq: u64) -> Result<Device> {
        let issued = Issued::load(prefix)?;
        let identity = issued.identity()?;
        let epc = *identity.epc().context("the certificate holds no EPC")?;
        Device::holding(issued, epc, identity.key.algorithm(), seq)
    }

    /// The device of `epc` holding `issued` (its certificate and its key,
    /// which signs with `algorithm`), its sequence counter at `seq`.
    fn holding(issued: Issued, epc: Epc, algorithm: Algorithm, seq: u64) -> Result<Device> {
        let key = SigningKey::from_pkcs8(algorithm, &issued.key_pkcs8, &issued.cert_der)?;
        Ok(Device {
            issued,
            epc,
            key,
            seq,
            x5chain: false,
        })
    }

    /// A signed reading of `obs`, now, with the next sequence number.
    pub fn reading(&mut self, obs: Vec<Observation>) -> Vec<u8> {
        self.reading_at(obs, now_ms())
    }

    /// A signed reading of `obs` taken at `ts_ms`, with the next sequence
    /// number.
    pub fn reading_at(&mut self, obs: Vec<Observation>, ts_ms: u64) -> Vec<u8> {
        self.seq += 1;
        let reading = Reading {
            dev: DeviceId(*self.epc.as_bytes()),
            seq: self.seq,
            ts_ms,
            obs,
            model: None,
        };
        if !self.x5chain {
            return self.key.sign(&reading);
        }
        let chain: Vec<Vec<u8>> = std::iter::once(&self.issued.cert_der)
            .chain(&self.issued.chain)
            .cloned()
            .collect();
        self.key.sign_with_chain(&reading, &chain)
    }

    /// Its TLS credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::from_issued(&self.issued)
    }
}

/// The body of a `POST /v1/readings`.
#[derive(Debug, Clone)]
pub enum Readings {
    /// One signed reading (COSE_Sign1), sent as `application/cose`.
    One(Vec<u8>),
    /// Several, already a CBOR array of COSE_Sign1 bytes ([`cbor_array`]),
    /// sent as `application/cbor`. Encoded ahead, so that a load generator
    /// can build its bodies before the clock starts.
    Batch(Vec<u8>),
}

impl Readings {
    /// A batch of `readings`, encoded as the collector takes it.
    pub fn batch(readings: &[Vec<u8>]) -> Readings {
        Readings::Batch(cbor_array(readings))
    }
}

/// When the collector answers a `POST /v1/readings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Once it has stored the readings durably in its outbox (the default).
    Stored,
    /// Once the server has committed them too (`?wait=committed`).
    Committed,
}

/// Sends `readings` to the collector on `conn`: the one way this crate
/// builds a `POST /v1/readings`. Only tests that send something malformed
/// on purpose (a wrong content type, an oversized body) write theirs by
/// hand.
pub async fn post_readings(
    conn: &mut Connection,
    readings: Readings,
    wait: Wait,
) -> Result<Reply, ClientError> {
    let path = match wait {
        Wait::Stored => "/v1/readings",
        Wait::Committed => "/v1/readings?wait=committed",
    };
    let (media, body) = match readings {
        Readings::One(cose) => ("application/cose", cose),
        Readings::Batch(cbor) => ("application/cbor", cbor),
    };
    conn.request("POST", path, &[("content-type", media)], body)
        .await
}

/// Readings as a batch request body: a CBOR array of COSE_Sign1 bytes.
pub fn cbor_array(readings: &[Vec<u8>]) -> Vec<u8> {
    medledger_protocol::cbor::encode_with(|e| {
        e.array(readings.len());
        for r in readings {
            e.bytes(r);
        }
    })
}
