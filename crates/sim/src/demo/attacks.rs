//! The attack matrix: every attack of the threat model, against the
//! cardiology collector, the server, the stored data and the chain, each
//! with what should happen and what did.
//!
//! ```text
//!  handshake   spoofed device (another CA), no client certificate, a card
//!              posing as a device, plain HTTP, a revoked device
//!  readings    replay, stale timestamp, false data, forged signature,
//!              an unregistered device
//!  collector   a sinkhole altering a reading, a 2 MiB body, slowloris, a
//!              device flooding
//!  data        unauthorized access, a tampered blob, a rewritten ledger,
//!              a Sybil account, free text on chain
//! ```

use super::{Check, Demo, cause, check};
use crate::signals::{KINDS, Kind};
use crate::{Device, Readings, Wait, post_readings};
use alloy::primitives::B256;
use anyhow::{Context, Result};
use medledger_contracts::Scope;
use medledger_pki::https::{Connection, Reply};
use medledger_pki::{Ca, Credentials, LeafRequest, Role};
use medledger_protocol::{ForwardBatch, reading_hash};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The names the demo hospital gives on chain: departments, node places,
/// device groups and rules (with floors, rooms and beds, below). None says
/// anything about a patient; any other text on chain would be free text.
const HOSPITAL_NAMES: &[&str] = &[
    "cardiology",
    "neurology",
    "emergency",
    "cardiology/204",
    "neurology/101",
    "server",
    "icu-hr-monitor",
    "bp-cuff",
    "ecg-patch",
    "glucometer",
    "pulse-oximeter",
    "resp-monitor",
    "scale",
    "thermometer",
    "default",
    "allowed-types",
    "value-range",
];

/// Whether `text` is a code or a name the demo hospital puts on chain: a
/// purpose code, a LOINC code of the catalogue (rules name data types), a
/// floor, room or bed, or one of [`HOSPITAL_NAMES`].
fn is_code_or_name(text: &str) -> bool {
    medledger_contracts::PURPOSES
        .iter()
        .any(|(code, _)| *code == text)
        || medledger_protocol::catalogue::data_type(text).is_some()
        || ["floor-", "room-", "bed-"]
            .iter()
            .any(|p| text.strip_prefix(p).is_some_and(|rest| rest.len() <= 4))
        || HOSPITAL_NAMES.contains(&text)
}

/// Whether an attempt was refused: anything but 202.
fn refused(observed: &str) -> bool {
    !observed.starts_with("202")
}

impl Demo {
    /// Every attack of the threat model, against the cardiology collector, the
    /// server, the stored data and the chain.
    pub async fn attacks(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Check>> {
        let h = &self.hospital;
        let p1 = self.patients[0].1.patient_ref;
        let kind = &KINDS[0];
        let mut checks = Vec::new();

        progress("attack: a spoofed device (another CA)");
        let mut attacker = h.device_of(100, kind, p1).await?;
        checks.push(self.spoofed_device(&mut attacker, kind).await?);

        progress("attack: no client certificate, wrong role, plain HTTP");
        checks.extend(self.wrong_credentials(&mut attacker).await?);
        checks.push(self.plain_http().await);

        progress("attack: replay, stale timestamp, false data, forged signature");
        checks.extend(self.bad_readings(&mut attacker).await?);

        progress("attack: unregistered and revoked devices");
        checks.push(self.unregistered_device(kind).await?);
        checks.push(self.revoked_device(kind, p1).await?);

        progress("attack: a sinkhole collector alters a reading");
        checks.push(self.sinkhole(&mut attacker).await?);

        progress("attack: floods (huge body, slowloris, too many readings)");
        checks.push(self.huge_body(&attacker).await?);
        checks.push(self.slowloris(&attacker).await?);
        checks.push(self.flood(kind, p1).await?);

        progress("attack: unauthorized access, tampered storage, Sybil");
        checks.push(self.unauthorized_access().await?);
        checks.push(self.tampered_blob().await?);
        checks.push(self.rewritten_ledger().await?);
        checks.push(self.sybil(p1).await);
        checks.push(self.free_text_on_chain()?);
        Ok(checks)
    }

    /// A handshake with `config`, then `cose` posted to the cardiology
    /// collector: the answer's cause, or, when the connection is refused
    /// (or left waiting), the refusal causes the collector counted.
    async fn attempt(&self, config: Arc<rustls::ClientConfig>, cose: Vec<u8>) -> String {
        let addr = self.hospital.collector.addr().to_string();
        let metrics = self.hospital.collector.metrics();
        let before = refusals(metrics);
        // A client left waiting on a refused connection counts as
        // refused too: the collector says why in its metrics.
        let exchange = async {
            let mut conn = Connection::open(config, &addr, "localhost").await.ok()?;
            post_readings(&mut conn, Readings::One(cose), Wait::Stored)
                .await
                .ok()
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten();
        if let Some(reply) = answer {
            return cause(&reply);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = refusals(metrics);
            let counted: Vec<&String> = now
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .collect();
            if !counted.is_empty() || Instant::now() > deadline {
                let counted: Vec<&str> = counted.into_iter().map(String::as_str).collect();
                return format!(
                    "connection refused at the TLS handshake: {}",
                    counted.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A device certificate from another CA, carrying a real device's EPC.
    async fn spoofed_device(&self, attacker: &mut Device, kind: &Kind) -> Result<Check> {
        let h = &self.hospital;
        let other = Ca::init(&h.dir.path().join("mallory-ca"), "Mallory")?;
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(attacker.epc);
        request.group = Some(kind.group.into());
        request.rule = Some("default".into());
        let spoofed = other.issue(&request)?;
        let config = h.client_config(&Credentials::from_issued(&spoofed), Role::Collector)?;
        let observed = self.attempt(config, attacker.heart_rate(70.0)).await;
        Ok(check(
            "a device certificate from another CA, with a real device's EPC",
            "refused at the TLS handshake: untrusted-certificate",
            observed.clone(),
            observed.contains("untrusted-certificate"),
        ))
    }

    /// TLS without a client certificate, and a patient's card certificate
    /// posing as a device.
    async fn wrong_credentials(&self, attacker: &mut Device) -> Result<Vec<Check>> {
        let h = &self.hospital;
        let config =
            medledger_pki::client_config(None, &h.ca.root_cert_der()?, &[Role::Collector])?;
        let observed = self.attempt(config, attacker.heart_rate(70.0)).await;
        let no_certificate = check(
            "TLS without a client certificate",
            "refused before any request is read",
            observed.clone(),
            refused(&observed),
        );
        let config = h.client_config(
            &Credentials::from_issued(&self.patients[0].1.card),
            Role::Collector,
        )?;
        let observed = self.attempt(config, attacker.heart_rate(70.0)).await;
        Ok(vec![
            no_certificate,
            check(
                "a patient's card certificate posing as a device",
                "refused at the TLS handshake: wrong-role",
                observed.clone(),
                observed.contains("wrong-role"),
            ),
        ])
    }

    /// A reading request in plain HTTP, no TLS at all.
    async fn plain_http(&self) -> Check {
        let addr = self.hospital.collector.addr().to_string();
        let mut answer = String::new();
        let plain = async {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.write_all(b"POST /v1/readings HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            tcp.read_to_string(&mut answer).await
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), plain).await;
        let first = answer.lines().next().unwrap_or("closed").to_owned();
        check(
            "plain HTTP",
            "400 tls-required, then closed",
            first.clone(),
            first.starts_with("HTTP/1.1 400") && answer.contains("tls-required"),
        )
    }

    /// A registered device's readings gone wrong: replayed, an hour old,
    /// out of range, with a signature that no longer matches.
    async fn bad_readings(&self, attacker: &mut Device) -> Result<Vec<Check>> {
        let mut checks = Vec::new();
        let mut conn = self.hospital.connect(attacker).await?;
        let cose = attacker.heart_rate(74.0);
        let first = post(&mut conn, cose.clone()).await?;
        let again = post(&mut conn, cose).await?;
        checks.push(check(
            "a reading sent twice (replay)",
            "202, then 409 replay",
            format!("{}, then {}", first.status, cause(&again)),
            first.status == 202 && cause(&again).ends_with("replay"),
        ));
        let hr = medledger_protocol::catalogue::data_type("8867-4").context("heart rate")?;
        let old = medledger_protocol::now_ms() - 3_600_000;
        let stale =
            attacker.reading_at(vec![medledger_protocol::Observation::scalar(hr, 72.0)], old);
        let reply = post(&mut conn, stale).await?;
        checks.push(check(
            "a reading an hour old",
            "refused: stale-timestamp",
            cause(&reply),
            cause(&reply).ends_with("stale-timestamp"),
        ));
        let reply = post(&mut conn, attacker.heart_rate(400.0)).await?;
        checks.push(check(
            "false data: a heart rate of 400/min",
            "refused by the rule contract: rule-violation; p1 alerted",
            cause(&reply),
            cause(&reply).ends_with("rule-violation"),
        ));
        let mut forged = attacker.heart_rate(75.0);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let reply = post(&mut conn, forged).await?;
        checks.push(check(
            "a reading whose signature does not match (altered in transit)",
            "refused: bad-signature",
            cause(&reply),
            cause(&reply).ends_with("bad-signature"),
        ));
        Ok(checks)
    }

    /// A device whose certificate is valid but which the Registry does not
    /// know.
    async fn unregistered_device(&self, kind: &Kind) -> Result<Check> {
        let h = &self.hospital;
        let mut stranger = h.issue_device_in(200, kind.group, medledger_pki::KeyAlg::P256)?;
        let mut conn = h.connect(&stranger).await?;
        let reply = post(&mut conn, stranger.heart_rate(70.0)).await?;
        Ok(check(
            "a device with a valid certificate that the Registry does not know",
            "refused: unknown-device",
            cause(&reply),
            cause(&reply).ends_with("unknown-device"),
        ))
    }

    /// A device of `p1` whose certificate was revoked (every node told).
    async fn revoked_device(&self, kind: &Kind, p1: B256) -> Result<Check> {
        let h = &self.hospital;
        let mut revoked = h.device_of(101, kind, p1).await?;
        let crls = h.ca.revoke(&revoked.issued.cert_der)?;
        h.collector_auth.update_crls(crls.clone())?;
        self.neurology.auth.update_crls(crls.clone())?;
        h.server.update_crls(&crls)?;
        let config = h.client_config(&revoked.credentials(), Role::Collector)?;
        let observed = self.attempt(config, revoked.heart_rate(70.0)).await;
        Ok(check(
            "a revoked device certificate",
            "refused at the TLS handshake: revoked",
            observed.clone(),
            observed.contains("revoked"),
        ))
    }

    /// A 2 MiB body: oversized on purpose, so written by hand rather than
    /// with [`post_readings`].
    async fn huge_body(&self, attacker: &Device) -> Result<Check> {
        let mut conn = self.hospital.connect(attacker).await?;
        let reply = conn
            .request(
                "POST",
                "/v1/readings",
                &[("content-type", "application/cose")],
                vec![0u8; 2 << 20],
            )
            .await?;
        Ok(check(
            "a 2 MiB body",
            "413 too-large, before the body is read",
            cause(&reply),
            reply.status == 413,
        ))
    }

    /// Slowloris: request headers that never end.
    async fn slowloris(&self, attacker: &Device) -> Result<Check> {
        let h = &self.hospital;
        let mut config = (*h.client_config(&attacker.credentials(), Role::Collector)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(h.collector.addr()).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into()?, tcp)
            .await?;
        tls.write_all(b"POST /v1/readings HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await?;
        tls.flush().await?;
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest))
            .await
            .is_ok();
        Ok(check(
            "slowloris: headers that never end",
            "closed after the header timeout",
            if closed {
                format!("closed after {:.1} s", started.elapsed().as_secs_f64())
            } else {
                "still open after 10 s".to_owned()
            },
            closed,
        ))
    }

    /// One device of `p1` floods: two requests of 250 readings.
    async fn flood(&self, kind: &Kind, p1: B256) -> Result<Check> {
        let h = &self.hospital;
        let mut flood = h.device_of(102, kind, p1).await?;
        let mut conn = h.connect(&flood).await?;
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let batch: Vec<Vec<u8>> = (0..250).map(|_| flood.heart_rate(72.0)).collect();
            let reply = post_readings(&mut conn, Readings::batch(&batch), Wait::Stored).await?;
            statuses.push(cause(&reply));
        }
        Ok(check(
            "one device floods: two requests of 250 readings",
            "the first admitted, then 429 rate-limited with Retry-After",
            statuses.join(", then "),
            statuses.len() == 2 && statuses[1].ends_with("rate-limited"),
        ))
    }

    /// The unassigned doctor's attempt (in the access scenarios): p1's
    /// alerts tell of it.
    async fn unauthorized_access(&self) -> Result<Check> {
        let mut patient = self.patient_conn(0).await?;
        let alerts = patient
            .request("GET", "/v1/alerts?after=0", &[], vec![])
            .await?;
        let alerts: serde_json::Value = serde_json::from_slice(&alerts.body).unwrap_or_default();
        let kinds: Vec<String> = alerts["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["kind"].as_str().map(str::to_owned))
            .collect();
        let denied = kinds.iter().any(|k| k == "access-denied");
        let refused_read = kinds.iter().any(|k| k == "record-refused");
        Ok(check(
            "unauthorized staff access (the unassigned doctor above)",
            "denied on chain, logged, p1 alerted",
            format!("p1's alerts include access-denied: {denied}, record-refused: {refused_read}"),
            denied && refused_read,
        ))
    }

    /// An account the Registry does not know sends a transaction.
    async fn sybil(&self, p1: B256) -> Check {
        let h = &self.hospital;
        let sybil = h.admin.with_provider(crate::provider(
            &h.node,
            &alloy::signers::local::PrivateKeySigner::random(),
        ));
        let observed = match sybil.request_access(p1, Scope::ALL, "TREAT").await {
            Ok(d) => format!("accepted as request {}", d.id),
            Err(e) => format!("refused: {e}"),
        };
        check(
            "an account the Registry does not know sends a transaction (Sybil)",
            "refused by the chain",
            observed.clone(),
            observed.starts_with("refused"),
        )
    }

    /// Anything on chain is public forever: after every scenario and
    /// attack, the chain's transactions and events hold no text but
    /// purpose codes and the names the hospital gave its wards, devices
    /// and rules.
    fn free_text_on_chain(&self) -> Result<Check> {
        let texts = medledger_chain::texts::short_texts(self.hospital.node.store())?;
        let free: Vec<&String> = texts.iter().filter(|t| !is_code_or_name(t)).collect();
        Ok(check(
            "free text on chain: a purpose or a reason that names a patient, public forever",
            "none: every text in a transaction or event is a purpose code or a name the hospital gave",
            if free.is_empty() {
                format!("none among {} texts", texts.len())
            } else {
                format!("free text: {free:?}")
            },
            free.is_empty(),
        ))
    }

    /// The cardiology collector's key in an attacker's hands: a batch with
    /// one reading altered after the device signed it.
    async fn sinkhole(&self, device: &mut Device) -> Result<Check> {
        use medledger_collector::CardSigner;
        let h = &self.hospital;
        let patient = self.patients[0].1.patient_ref.0;
        let mut cose = device.heart_rate(71.0);
        // The payload's last byte: the value, now a little different.
        let at = cose.len() - 70;
        cose[at] ^= 1;
        let card = medledger_collector::SoftwareCard::new(&Credentials::from_issued(
            &self.patients[0].1.card,
        ))?;
        let hashes = [reading_hash(&cose)];
        let batch = ForwardBatch {
            certs: vec![
                device.issued.cert_der.clone(),
                self.patients[0].1.card.cert_der.clone(),
            ],
            cas: device.issued.chain.clone(),
            readings: vec![medledger_protocol::Forwarded {
                cose,
                cert: 0,
                patient,
                received_ms: medledger_protocol::now_ms(),
            }],
            cards: vec![medledger_protocol::CardSignature {
                patient,
                cert: 1,
                readings: vec![0],
                sig: card.sign(&medledger_protocol::card_digest(&patient, &hashes))?,
            }],
            ..ForwardBatch::default()
        };
        let mut server = h.connect_server().await?;
        let reply = server
            .request(
                "POST",
                "/v1/batches",
                &[("content-type", "application/cbor")],
                batch.to_cbor(),
            )
            .await?;
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let result = &answer["results"][0];
        let observed = format!(
            "{} {}: {}",
            reply.status,
            result["status"].as_str().unwrap_or("?"),
            result["detail"].as_str().unwrap_or("")
        );
        Ok(check(
            "a sinkhole collector forwards a reading it altered (card-signed)",
            "the server re-verifies the device signature and rejects it",
            observed,
            reply.status == 200 && result["status"] == "rejected",
        ))
    }

    /// Sealed blobs changed on disk: the readings they hold no longer
    /// decrypt (AEAD), so the change cannot go unnoticed. Put back after.
    /// Every blob is changed, so that whichever holds a reading, its change
    /// is seen.
    async fn tampered_blob(&self) -> Result<Check> {
        let h = &self.hospital;
        let dir = h.dir.path().join("server").join("blobs");
        let mut opened = Vec::new();
        for hash in &self.sent {
            if h.server.reading(hash).await.is_ok() {
                opened.push(*hash);
            }
        }
        let blobs = walk(&dir);
        anyhow::ensure!(!blobs.is_empty(), "no blob stored");
        let mut originals = Vec::with_capacity(blobs.len());
        for blob in &blobs {
            let original = std::fs::read(blob)?;
            let mut changed = original.clone();
            let last = changed.len() - 1;
            changed[last] ^= 1;
            std::fs::write(blob, &changed)?;
            originals.push(original);
        }
        let mut failures = Vec::new();
        for hash in &opened {
            if let Err(e) = h.server.reading(hash).await {
                failures.push(e);
            }
        }
        for (blob, original) in blobs.iter().zip(&originals) {
            std::fs::write(blob, original)?;
        }
        Ok(check(
            "a sealed blob altered on disk",
            "its readings no longer open: the content hash or AEAD check fails",
            match failures.first() {
                Some(e) => format!(
                    "{} of {} reading(s) refused: {e}",
                    failures.len(),
                    opened.len()
                ),
                None => "every reading still opened".to_owned(),
            },
            !opened.is_empty() && failures.len() == opened.len(),
        ))
    }

    /// An entry of p3's exported ledger rewritten: the bundle no longer
    /// verifies.
    async fn rewritten_ledger(&self) -> Result<Check> {
        let ledger = self.hospital.server.ledger();
        let bundle = ledger.export(&self.patients[2].1.patient_ref.0).await?;
        let mut json = serde_json::to_value(&bundle)?;
        let entry = json["entries"][0]["entry"]
            .as_str()
            .context("p3 has entries")?
            .to_owned();
        // Change one character of the base64 entry (the payload).
        let mut chars: Vec<char> = entry.chars().collect();
        let i = chars.len() / 3;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        json["entries"][0]["entry"] = chars.into_iter().collect::<String>().into();
        let observed = match medledger_patient_ledger::bundle::verify(
            &json.to_string(),
            Some(&ledger.verifier_key()),
        ) {
            Ok(_) => "it still verifies".to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        Ok(check(
            "an entry of p3's ledger rewritten",
            "the ledger no longer verifies (the entry is not under the signed checkpoint)",
            observed.clone(),
            observed.starts_with("refused"),
        ))
    }
}

/// The collector's refused connections so far, by cause.
fn refusals(metrics: &medledger_pki::metrics::Metrics) -> BTreeMap<String, String> {
    metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("medledger_collector_connections_refused_total{cause=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(cause, n)| (cause.to_owned(), n.to_owned()))
        .collect()
}

/// Posts one COSE reading.
async fn post(conn: &mut Connection, cose: Vec<u8>) -> Result<Reply> {
    Ok(post_readings(conn, Readings::One(cose), Wait::Stored).await?)
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
