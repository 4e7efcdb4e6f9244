//! `medledger demo`: a small hospital in one process, run through the
//! seeds' scenarios and every attack of the threat model, with a report of what
//! was expected and what was observed.
//!
//! ```text
//!  provision  two departments, each with its collector; 10 patients with
//!             cards; 30 devices of every kind; 5 staff; rules
//!  stream     every device sends readings over its own mTLS connection
//!  access     an assigned nurse reads; an unassigned doctor is denied;
//!             consent granted, used, revoked; break-glass
//!  attacks    each one, expected against observed
//!  verify     every patient ledger against its checkpoints on chain
//!  backup     the server's database, blobs and the chain, copied while
//!             everything runs
//!  forget     p10 is erased: nothing of theirs opens, the tombstone
//!             still matches the chain, new readings are refused
//!  restore    the backup (from before the erasure) starts again: p10 is
//!             erased again, every ledger verifies against its chain
//! ```

use crate::signals::{KINDS, Vitals};
use crate::{Device, Hospital, Options, Patient, Staff, Ward};
use alloy::primitives::B256;
use anyhow::{Context, Result};
use medledger_contracts::{Grantee, Scope};
use medledger_mqtt::mosquitto::Mosquitto;
use medledger_pki::https::{Connection, Reply};
use medledger_pki::{Ca, Credentials, LeafRequest, Role};
use medledger_protocol::{ForwardBatch, reading_hash};
use serde::Serialize;
use std::collections::BTreeMap;
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

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Readings each device sends.
    pub readings_per_device: usize,
    /// A PKCS#11 token (a `pkcs11:` URI naming it) to keep the patients'
    /// card keys on while the demo runs.
    pub card_token: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            readings_per_device: 10,
            card_token: None,
        }
    }
}

/// One expectation and what happened.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was tried.
    pub what: String,
    /// What should happen.
    pub expected: String,
    /// What did.
    pub observed: String,
    /// Whether they agree.
    pub ok: bool,
}

/// A patient's ledger checked against the chain.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerCheck {
    /// The patient's label (`p1`...).
    pub patient: String,
    /// Entries.
    pub entries: u64,
    /// Checkpoints anchored on chain, all extended by the ledger.
    pub anchors: usize,
    /// Alerts raised for the patient.
    pub alerts: usize,
    /// Whether it verified.
    pub ok: bool,
    /// Why not, if not.
    pub problem: String,
}

/// What the demo did and saw.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Departments, patients, devices, staff.
    pub hospital: BTreeMap<String, usize>,
    /// Readings the collectors accepted.
    pub accepted: u64,
    /// Readings refused, by cause (collector metrics).
    pub rejected: BTreeMap<String, u64>,
    /// The access scenarios.
    pub accesses: Vec<Check>,
    /// The attack matrix.
    pub attacks: Vec<Check>,
    /// Every patient ledger against the chain.
    pub ledgers: Vec<LedgerCheck>,
    /// The right to be forgotten.
    pub forgotten: Vec<Check>,
    /// A backup taken before the erasure, restored after it.
    pub restored: Vec<Check>,
    /// Roots anchored on chain.
    pub anchors: u64,
    /// Seconds, start to end.
    pub seconds: f64,
}

impl Report {
    /// Whether every expectation held.
    pub fn ok(&self) -> bool {
        self.accesses.iter().all(|c| c.ok)
            && self.attacks.iter().all(|c| c.ok)
            && self.ledgers.iter().all(|l| l.ok)
            && self.forgotten.iter().all(|c| c.ok)
            && self.restored.iter().all(|c| c.ok)
    }
}

/// Runs the whole demo; `progress` hears each step. Returns the hospital,
/// still running, with the report.
pub async fn run(
    options: &DemoOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(Demo, Report)> {
    let started = Instant::now();
    let mut demo = Demo::provision(options.card_token.clone(), progress).await?;
    let accepted = demo.stream(options.readings_per_device, progress).await?;
    let accesses = demo.access(progress).await?;
    let attacks = demo.attacks(progress).await?;
    let ledgers = demo.verify_ledgers(progress).await?;
    let backup = demo.backup(progress).await?;
    let forgotten = demo.forget(progress).await?;
    let restored = demo.restore(&backup, progress).await?;
    let metrics = demo.hospital.collector.metrics();
    let mut rejected = BTreeMap::new();
    for m in [metrics, demo.neurology.collector.metrics()] {
        for line in m.render().lines() {
            let Some(rest) = line.strip_prefix("medledger_collector_readings_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(cause) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("cause=\""))
                .map(|c| c.trim_end_matches('"'))
            else {
                continue;
            };
            if !cause.is_empty() {
                *rejected.entry(cause.to_owned()).or_insert(0) +=
                    value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
    }
    let anchors = demo
        .hospital
        .server
        .metrics()
        .value("medledger_server_anchored_total", &[]) as u64;
    let hospital = BTreeMap::from([
        ("departments".to_owned(), 2),
        ("patients".to_owned(), demo.patients.len()),
        ("devices".to_owned(), demo.devices.len()),
        ("staff".to_owned(), demo.staff.len()),
        (
            "devices over MQTT".to_owned(),
            usize::from(demo.hospital.broker.is_some()),
        ),
    ]);
    let report = Report {
        hospital,
        accepted,
        rejected,
        accesses,
        attacks,
        ledgers,
        forgotten,
        restored,
        anchors,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((demo, report))
}

/// The demo hospital: the in-process hospital plus a second department.
pub struct Demo {
    /// Chain, server, cardiology's collector and patient `p1`.
    pub hospital: Hospital,
    /// Neurology's collector.
    pub neurology: Ward,
    /// Patients `p1`..`p10` with their department's collector address.
    pub patients: Vec<(String, Patient, String)>,
    /// Devices, with the index of their patient.
    pub devices: Vec<(Device, usize)>,
    /// Staff by label.
    pub staff: BTreeMap<&'static str, Staff>,
    /// The hashes of the readings the devices sent.
    pub sent: Vec<[u8; 32]>,
}

fn check(what: &str, expected: &str, observed: String, ok: bool) -> Check {
    Check {
        what: what.to_owned(),
        expected: expected.to_owned(),
        observed,
        ok,
    }
}

/// "granted (carer)" or "denied (no-consent)".
fn decision(d: &medledger_contracts::AccessDecision) -> String {
    match &d.outcome {
        Ok(basis) => format!("request {} granted ({})", d.id, basis.name()),
        Err(reason) => format!("request {} denied ({})", d.id, reason.name()),
    }
}

/// The `type` of a problem answer, without its prefix, or the status.
fn cause(reply: &Reply) -> String {
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    match body["type"].as_str() {
        Some(t) => format!(
            "{} {}",
            reply.status,
            t.trim_start_matches("urn:medledger:problem:")
        ),
        None => reply.status.to_string(),
    }
}

impl Demo {
    /// Starts and provisions the hospital, the patients' cards on
    /// `card_token` if given; `progress` hears each step.
    pub async fn provision(
        card_token: Option<String>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Demo> {
        progress("starting chain, contracts, server and cardiology's collector");
        // With Mosquitto installed, cardiology's collector also reads a
        // broker, and one device sends over MQTT.
        let mosquitto = Mosquitto::program();
        if mosquitto.is_none() {
            progress(
                "no mosquitto found: every device sends over HTTPS (apt-get install mosquitto for one over MQTT)",
            );
        }
        if let Some(token) = &card_token {
            progress(&format!(
                "the patients' cards keep their keys on the PKCS#11 token {}",
                token.split('?').next().unwrap_or(token)
            ));
        }
        let hospital = Hospital::start(Options {
            block_interval: Duration::from_millis(2),
            mosquitto,
            card_token,
            ..Options::default()
        })
        .await?;
        hospital.allow_kinds(KINDS).await?;
        progress("starting neurology's collector");
        let neurology = hospital.add_collector("neurology/101/A").await?;
        progress("admitting 10 patients with their cards");
        let cardiology_addr = hospital.collector.addr().to_string();
        let neurology_addr = neurology.collector.addr().to_string();
        let mut patients = vec![(
            "p1".to_owned(),
            Patient {
                patient_ref: hospital.patient_ref,
                card: hospital.card.clone(),
            },
            cardiology_addr.clone(),
        )];
        for n in 2..=10 {
            let (department, cards, addr) = if n <= 5 {
                ("cardiology", &hospital.cards, &cardiology_addr)
            } else {
                ("neurology", &neurology.cards, &neurology_addr)
            };
            let patient = hospital
                .admit(
                    &format!("p{n}"),
                    department,
                    &format!("room-{}", 100 + n),
                    "bed-A",
                    cards,
                )
                .await?;
            patients.push((format!("p{n}"), patient, addr.clone()));
        }
        progress("registering 30 devices of 7 kinds");
        let mut devices = Vec::new();
        for (i, (_, patient, _)) in patients.iter().enumerate() {
            for j in 0..3 {
                let serial = (i * 3 + j + 1) as u64;
                let kind = &KINDS[(i * 3 + j) % KINDS.len()];
                devices.push((
                    hospital
                        .device_of(serial, kind, patient.patient_ref)
                        .await?,
                    i,
                ));
            }
        }
        progress("registering 5 staff and their patients");
        let refs: Vec<B256> = patients.iter().map(|(_, p, _)| p.patient_ref).collect();
        let mut staff = BTreeMap::new();
        staff.insert(
            "cardiology nurse",
            hospital
                .staff_for(Role::Nurse, "cardiology", &refs[..5])
                .await?,
        );
        staff.insert(
            "cardiology doctor",
            hospital
                .staff_for(Role::Doctor, "cardiology", &refs[..2])
                .await?,
        );
        staff.insert(
            "neurology nurse",
            hospital
                .staff_for(Role::Nurse, "neurology", &refs[5..])
                .await?,
        );
        staff.insert(
            "neurology doctor",
            hospital
                .staff_for(Role::Doctor, "neurology", &refs[5..7])
                .await?,
        );
        staff.insert(
            "emergency doctor",
            hospital.staff_for(Role::Doctor, "emergency", &[]).await?,
        );
        Ok(Demo {
            hospital,
            neurology,
            patients,
            devices,
            staff,
            sent: Vec::new(),
        })
    }

    /// Every device sends `n` readings of its kind over its own
    /// connection, the last one waiting until the server committed it;
    /// returns how many were accepted. Where the hospital runs a broker,
    /// the first device publishes over MQTT instead.
    pub async fn stream(&mut self, n: usize, progress: &(dyn Fn(&str) + Sync)) -> Result<u64> {
        let over_mqtt = self.hospital.broker.is_some();
        progress(&format!(
            "{} devices send {n} readings each{}",
            self.devices.len(),
            if over_mqtt {
                " (one of them over MQTT through Mosquitto)"
            } else {
                ""
            }
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_over_mqtt = None;
        // Readings a second apart, ending now.
        let now = medledger_protocol::now_ms();
        for k in 0..self.devices.len() {
            let patient = self.devices[k].1;
            let addr = &self.patients[patient].2;
            let config = self
                .hospital
                .client_config(&self.devices[k].0.credentials(), Role::Collector)?;
            let kind = KINDS[k % KINDS.len()];
            let mut vitals = Vitals::new(patient as u64 * 1_000 + k as u64);
            let mqtt = if k == 0 && over_mqtt {
                Some(self.hospital.connect_mqtt(&mut self.devices[k].0).await?)
            } else {
                None
            };
            let device = &mut self.devices[k].0;
            let readings: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let ts = now - (n - 1 - i) as u64 * 1_000;
                    device.reading_at(vitals.observe(&kind, ts), ts)
                })
                .collect();
            self.sent.extend(readings.iter().map(|r| reading_hash(r)));
            let addr = addr.clone();
            if let Some(mut mqtt) = mqtt {
                last_over_mqtt = readings.last().map(|r| reading_hash(r));
                tasks.spawn(async move {
                    let mut accepted = 0u64;
                    for cose in readings {
                        if mqtt.send(cose).await?.status == 202 {
                            accepted += 1;
                        }
                    }
                    anyhow::Ok(accepted)
                });
                continue;
            }
            tasks.spawn(async move {
                let mut conn = Connection::open(config, &addr, "localhost").await?;
                let mut accepted = 0u64;
                for (i, cose) in readings.into_iter().enumerate() {
                    let path = if i + 1 == n {
                        "/v1/readings?wait=committed"
                    } else {
                        "/v1/readings"
                    };
                    let reply = conn
                        .request("POST", path, &[("content-type", "application/cose")], cose)
                        .await?;
                    if reply.status == 202 {
                        accepted += 1;
                    }
                }
                anyhow::Ok(accepted)
            });
        }
        let mut accepted = 0;
        while let Some(done) = tasks.join_next().await {
            accepted += done??;
        }
        // MQTT answers after the collector's commit: wait for the
        // server's, as the HTTPS devices did.
        if let Some(last) = last_over_mqtt {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self
                .hospital
                .server
                .reading(&last)
                .await
                .map_err(anyhow::Error::msg)?
                .is_none()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(accepted)
    }

    async fn read(&self, who: &Staff, request: u64) -> Result<Reply> {
        let mut conn = self
            .hospital
            .open(
                &who.credentials(),
                Role::Server,
                &self.hospital.server.addr().to_string(),
            )
            .await?;
        Ok(conn
            .request(
                "GET",
                &format!("/v1/records?request={request}"),
                &[],
                vec![],
            )
            .await?)
    }

    /// Breaks the glass for `patient` as `who`: on chain with the reason's
    /// SHA-256, then the reason itself to the server, sealed there.
    async fn break_glass(
        &self,
        who: &Staff,
        patient: B256,
        reason: &str,
    ) -> Result<medledger_contracts::AccessDecision> {
        let d = who
            .contracts
            .break_glass(patient, Scope::ALL, reason)
            .await?;
        let mut conn = self
            .hospital
            .open(
                &who.credentials(),
                Role::Server,
                &self.hospital.server.addr().to_string(),
            )
            .await?;
        let body = serde_json::json!({ "request": d.id, "text": reason });
        let reply = conn
            .request(
                "POST",
                "/v1/justifications",
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .await?;
        anyhow::ensure!(
            reply.status == 200,
            "the server did not take the justification of request {}: {}",
            d.id,
            cause(&reply)
        );
        Ok(d)
    }

    /// Observations in a records answer, or its cause.
    fn served(reply: &Reply) -> String {
        if reply.status != 200 {
            return cause(reply);
        }
        let bundle: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        format!(
            "200, {} observations",
            bundle["entry"].as_array().map_or(0, Vec::len)
        )
    }

    /// The access scenarios of both seeds.
    pub async fn access(&self, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Check>> {
        progress("access: assigned nurse, unassigned doctor, consent, break-glass");
        let mut checks = Vec::new();
        let p1 = self.patients[0].1.patient_ref;
        let nurse = &self.staff["cardiology nurse"];
        let outsider = &self.staff["neurology doctor"];
        let emergency = &self.staff["emergency doctor"];

        let d = nurse
            .contracts
            .request_access(p1, Scope::ALL, "TREAT")
            .await?;
        let reply = self.read(nurse, d.id).await?;
        let observed = format!("{}; read {}", decision(&d), Self::served(&reply));
        checks.push(check(
            "the assigned cardiology nurse reads p1",
            "granted (carer); data served",
            observed,
            d.granted() && reply.status == 200,
        ));

        let d = outsider
            .contracts
            .request_access(p1, Scope::ALL, "HOPERAT")
            .await?;
        let reply = self.read(outsider, d.id).await?;
        checks.push(check(
            "an unassigned neurology doctor asks for p1",
            "denied (no consent); read refused; p1 alerted",
            format!("{}; read {}", decision(&d), cause(&reply)),
            !d.granted() && reply.status == 403,
        ));

        let patient = self.hospital.patient_contracts()?;
        let expiry = medledger_protocol::now_ms() / 1000 + 3600;
        let grant = patient
            .grant_consent(
                p1,
                Grantee::Account(outsider.address),
                "heart-rate,spo2".parse()?,
                "COC",
                expiry,
            )
            .await?;
        let d = outsider
            .contracts
            .request_access(p1, "heart-rate,spo2".parse()?, "COC")
            .await?;
        let before = self.read(outsider, d.id).await?;
        patient.revoke_consent(p1, grant).await?;
        let after = self.read(outsider, d.id).await?;
        checks.push(check(
            "p1 consents to the neurology doctor, who reads; p1 revokes",
            "granted (consent); heart rate and SpO2 served; after the revocation refused",
            format!(
                "{}; read {}; after revoking {}",
                decision(&d),
                Self::served(&before),
                cause(&after)
            ),
            d.granted() && before.status == 200 && after.status == 403,
        ));

        let p6 = self.patients[5].1.patient_ref;
        let d = self
            .break_glass(emergency, p6, "cardiac arrest in the corridor, unconscious")
            .await?;
        let reply = self.read(emergency, d.id).await?;
        let pending = self
            .hospital
            .admin
            .access_log()
            .pendingReviews(
                alloy::primitives::U256::ZERO,
                alloy::primitives::U256::from(100),
            )
            .call()
            .await?;
        checks.push(check(
            "an emergency doctor breaks the glass for p6",
            "granted (emergency); data served; in the review queue; p6 alerted",
            format!(
                "{}; read {}; {} in review",
                decision(&d),
                Self::served(&reply),
                pending.len()
            ),
            d.granted() && reply.status == 200 && pending.len() == 1,
        ));
        Ok(checks)
    }

    /// Every attack of the threat model, against the cardiology collector, the
    /// server, the stored data and the chain.
    pub async fn attacks(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Check>> {
        let h = &self.hospital;
        let addr = h.collector.addr().to_string();
        let p1 = self.patients[0].1.patient_ref;
        let kind = &KINDS[0];
        let mut checks = Vec::new();
        // A handshake, then a request: refused if either fails; the
        // collector counts why.
        let attempt = |config: std::sync::Arc<rustls::ClientConfig>, cose: Vec<u8>| {
            let addr = addr.clone();
            let metrics = h.collector.metrics();
            async move {
                let before = refusals(metrics);
                // A client left waiting on a refused connection counts as
                // refused too: the collector says why in its metrics.
                let exchange = async {
                    let mut conn = Connection::open(config, &addr, "localhost").await.ok()?;
                    conn.request(
                        "POST",
                        "/v1/readings",
                        &[("content-type", "application/cose")],
                        cose,
                    )
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
        };
        let refused = |observed: &str| !observed.starts_with("202");

        progress("attack: a spoofed device (another CA)");
        let mut attacker = h.device_of(100, kind, p1).await?;
        let other = Ca::init(&h.dir.path().join("mallory-ca"), "Mallory")?;
        let mut request = LeafRequest::new(Role::Device);
        request.epc = Some(attacker.epc);
        request.group = Some(kind.group.into());
        request.rule = Some("default".into());
        let spoofed = other.issue(&request)?;
        let config = h.client_config(&Credentials::from_issued(&spoofed), Role::Collector)?;
        let observed = attempt(config, attacker.heart_rate(70.0)).await;
        checks.push(check(
            "a device certificate from another CA, with a real device's EPC",
            "refused at the TLS handshake: untrusted-certificate",
            observed.clone(),
            observed.contains("untrusted-certificate"),
        ));

        progress("attack: no client certificate, wrong role, plain HTTP");
        let config =
            medledger_pki::client_config(None, &h.ca.root_cert_der()?, &[Role::Collector])?;
        let observed = attempt(config, attacker.heart_rate(70.0)).await;
        checks.push(check(
            "TLS without a client certificate",
            "refused before any request is read",
            observed.clone(),
            refused(&observed),
        ));
        let config = h.client_config(
            &Credentials::from_issued(&self.patients[0].1.card),
            Role::Collector,
        )?;
        let observed = attempt(config, attacker.heart_rate(70.0)).await;
        checks.push(check(
            "a patient's card certificate posing as a device",
            "refused at the TLS handshake: wrong-role",
            observed.clone(),
            observed.contains("wrong-role"),
        ));
        let mut answer = String::new();
        let plain = async {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.write_all(b"POST /v1/readings HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            tcp.read_to_string(&mut answer).await
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), plain).await;
        let first = answer.lines().next().unwrap_or("closed").to_owned();
        checks.push(check(
            "plain HTTP",
            "400 tls-required, then closed",
            first.clone(),
            first.starts_with("HTTP/1.1 400") && answer.contains("tls-required"),
        ));

        progress("attack: replay, stale timestamp, false data, forged signature");
        let mut conn = h.connect(&attacker).await?;
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

        progress("attack: unregistered and revoked devices");
        let mut stranger = h.issue_device_in(200, kind.group, medledger_pki::KeyAlg::P256)?;
        let mut conn = h.connect(&stranger).await?;
        let reply = post(&mut conn, stranger.heart_rate(70.0)).await?;
        checks.push(check(
            "a device with a valid certificate that the Registry does not know",
            "refused: unknown-device",
            cause(&reply),
            cause(&reply).ends_with("unknown-device"),
        ));
        let mut revoked = h.device_of(101, kind, p1).await?;
        let crls = h.ca.revoke(&revoked.issued.cert_der)?;
        h.collector_auth.update_crls(crls.clone())?;
        self.neurology.auth.update_crls(crls.clone())?;
        h.server.update_crls(&crls)?;
        let config = h.client_config(&revoked.credentials(), Role::Collector)?;
        let observed = attempt(config, revoked.heart_rate(70.0)).await;
        checks.push(check(
            "a revoked device certificate",
            "refused at the TLS handshake: revoked",
            observed.clone(),
            observed.contains("revoked"),
        ));

        progress("attack: a sinkhole collector alters a reading");
        let checked = self.sinkhole(&mut attacker).await?;
        checks.push(checked);

        progress("attack: floods (huge body, slowloris, too many readings)");
        let mut conn = h.connect(&attacker).await?;
        let reply = post(&mut conn, vec![0u8; 2 << 20]).await?;
        checks.push(check(
            "a 2 MiB body",
            "413 too-large, before the body is read",
            cause(&reply),
            reply.status == 413,
        ));
        let mut config = (*h.client_config(&attacker.credentials(), Role::Collector)?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
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
        checks.push(check(
            "slowloris: headers that never end",
            "closed after the header timeout",
            if closed {
                format!("closed after {:.1} s", started.elapsed().as_secs_f64())
            } else {
                "still open after 10 s".to_owned()
            },
            closed,
        ));
        let mut flood = h.device_of(102, kind, p1).await?;
        let mut conn = h.connect(&flood).await?;
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let batch: Vec<Vec<u8>> = (0..250).map(|_| flood.heart_rate(72.0)).collect();
            let body = crate::load::cbor_array(&batch);
            let reply = conn
                .request(
                    "POST",
                    "/v1/readings",
                    &[("content-type", "application/cbor")],
                    body,
                )
                .await?;
            statuses.push(cause(&reply));
        }
        checks.push(check(
            "one device floods: two requests of 250 readings",
            "the first admitted, then 429 rate-limited with Retry-After",
            statuses.join(", then "),
            statuses.len() == 2 && statuses[1].ends_with("rate-limited"),
        ));

        progress("attack: unauthorized access, tampered storage, Sybil");
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
        checks.push(check(
            "unauthorized staff access (the unassigned doctor above)",
            "denied on chain, logged, p1 alerted",
            format!("p1's alerts include access-denied: {denied}, record-refused: {refused_read}"),
            denied && refused_read,
        ));
        checks.push(self.tampered_blob().await?);
        checks.push(self.rewritten_ledger().await?);
        let sybil = h.admin.with_provider(crate::provider(
            &h.node,
            &alloy::signers::local::PrivateKeySigner::random(),
        ));
        let observed = match sybil.request_access(p1, Scope::ALL, "TREAT").await {
            Ok(d) => format!("accepted as request {}", d.id),
            Err(e) => format!("refused: {e}"),
        };
        checks.push(check(
            "an account the Registry does not know sends a transaction (Sybil)",
            "refused by the chain",
            observed.clone(),
            observed.starts_with("refused"),
        ));

        // Anything on chain is public forever: after every scenario and
        // attack, the chain's transactions and events hold no text but
        // purpose codes and the names the hospital gave its wards, devices
        // and rules.
        let texts = medledger_chain::texts::short_texts(h.node.store())?;
        let free: Vec<&String> = texts.iter().filter(|t| !is_code_or_name(t)).collect();
        checks.push(check(
            "free text on chain: a purpose or a reason that names a patient, public forever",
            "none: every text in a transaction or event is a purpose code or a name the hospital gave",
            if free.is_empty() {
                format!("none among {} texts", texts.len())
            } else {
                format!("free text: {free:?}")
            },
            free.is_empty(),
        ));
        Ok(checks)
    }

    /// Every patient's ledger, once its latest checkpoint is anchored:
    /// every entry and checkpoint signature, and that it extends every
    /// checkpoint anchored for it on chain.
    pub async fn verify_ledgers(
        &self,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<LedgerCheck>> {
        progress("verifying every patient ledger against the chain");
        let ledger = self.hospital.server.ledger();
        let key = ledger.verifier_key();
        let mut out = Vec::new();
        for (i, (label, patient, _)) in self.patients.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(20);
            let check = loop {
                let check = self.verify_ledger(label, patient, &key).await?;
                let settled = check.ok && check.anchors > 0;
                if settled || Instant::now() > deadline {
                    break check;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let mut conn = self.patient_conn(i).await?;
            let reply = conn
                .request("GET", "/v1/alerts?after=0", &[], vec![])
                .await?;
            let alerts: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            out.push(LedgerCheck {
                alerts: alerts["alerts"].as_array().map_or(0, Vec::len),
                ..check
            });
        }
        Ok(out)
    }

    /// One patient's ledger: ok only if it verifies and its newest
    /// anchored checkpoint covers every entry.
    async fn verify_ledger(
        &self,
        label: &str,
        patient: &Patient,
        key: &str,
    ) -> Result<LedgerCheck> {
        let ledger = self.hospital.server.ledger();
        let bundle = serde_json::to_string(&ledger.export(&patient.patient_ref.0).await?)?;
        let mut check = LedgerCheck {
            patient: label.to_owned(),
            entries: 0,
            anchors: 0,
            alerts: 0,
            ok: false,
            problem: String::new(),
        };
        let report = match medledger_patient_ledger::bundle::verify(&bundle, Some(key)) {
            Ok(r) => r,
            Err(e) => {
                check.problem = e.to_string();
                return Ok(check);
            }
        };
        check.entries = report.size;
        let anchors = self
            .hospital
            .admin
            .checkpoint_anchors(patient.patient_ref)
            .await?;
        check.anchors = anchors.len();
        for a in &anchors {
            if let Err(why) = report.check_extends(a.size, &a.root.0) {
                check.problem = format!("anchor {}: {why}", a.id);
                return Ok(check);
            }
        }
        let latest = anchors.iter().map(|a| a.size).max().unwrap_or(0);
        if latest < report.size {
            check.problem = format!("{} of {} entries anchored so far", latest, report.size);
            return Ok(check);
        }
        check.ok = true;
        Ok(check)
    }

    /// p10 asks to be forgotten: their readings no longer open, their
    /// ledger is a tombstone that still matches the chain, and nothing new
    /// is taken for them.
    pub async fn forget(&mut self, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Check>> {
        progress("right to be forgotten: p10 is erased");
        let i = self.patients.len() - 1;
        let (label, patient, _) = &self.patients[i];
        let label = label.clone();
        let patient_ref = patient.patient_ref;
        let mut checks = Vec::new();
        let mut conn = self.patient_conn(i).await?;
        let reply = conn
            .request(
                "DELETE",
                &format!("/v1/patients/{}", hex::encode(patient_ref)),
                &[],
                vec![],
            )
            .await?;
        let done: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        checks.push(check(
            &format!("{label} asks to be erased"),
            "200: keys destroyed, blobs deleted, ledger reduced to a signed tombstone",
            format!(
                "{}: {} readings unlinked, {} blobs deleted",
                reply.status, done["readings"], done["blobs"]
            ),
            reply.status == 200,
        ));
        // Their readings: the hashes of what their devices sent.
        let theirs: Vec<usize> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| *p == i)
            .map(|(k, _)| k)
            .collect();
        let n = self.sent.len() / self.devices.len().max(1);
        let mut opened = 0;
        for k in &theirs {
            for hash in &self.sent[k * n..(k + 1) * n] {
                if matches!(self.hospital.server.reading(hash).await, Ok(Some(_))) {
                    opened += 1;
                }
            }
        }
        checks.push(check(
            &format!("reading {label}'s stored readings afterwards"),
            "none opens",
            format!("{opened} of {} open", theirs.len() * n),
            opened == 0,
        ));
        let ledger = self.hospital.server.ledger();
        let bundle = serde_json::to_string(&ledger.export(&patient_ref.0).await?)?;
        let observed =
            match medledger_patient_ledger::bundle::verify(&bundle, Some(&ledger.verifier_key())) {
                Ok(report) => {
                    let anchors = self.hospital.admin.checkpoint_anchors(patient_ref).await?;
                    let matched = anchors
                        .iter()
                        .filter(|a| report.check_extends(a.size, &a.root.0) == Ok(true))
                        .count();
                    format!(
                        "erased: {}; {} entries, none held; {matched} of {} anchors still match",
                        report.erased,
                        report.size,
                        anchors.len()
                    )
                }
                Err(e) => format!("does not verify: {e}"),
            };
        checks.push(check(
            &format!("{label}'s ledger"),
            "a signed tombstone that still matches its latest anchor",
            observed.clone(),
            observed.starts_with("erased: true") && !observed.contains(" 0 of"),
        ));
        let k = theirs[0];
        let kind = KINDS[k % KINDS.len()];
        let addr = self.patients[i].2.clone();
        let config = self
            .hospital
            .client_config(&self.devices[k].0.credentials(), Role::Collector)?;
        let mut vitals = Vitals::new(1);
        let device = &mut self.devices[k].0;
        let cose = device.reading(vitals.observe(&kind, medledger_protocol::now_ms()));
        let mut conn = Connection::open(config, &addr, "localhost").await?;
        let reply = conn
            .request(
                "POST",
                "/v1/readings?wait=committed",
                &[("content-type", "application/cose")],
                cose,
            )
            .await?;
        checks.push(check(
            &format!("one of {label}'s devices sends a new reading"),
            "refused by the server: the patient was erased",
            cause(&reply),
            reply.status != 202 && String::from_utf8_lossy(&reply.body).contains("erased"),
        ));
        Ok(checks)
    }

    /// Backs up the server's data and the chain while they run, as
    /// `medledger backup` does: the database by SQLite's online copy, the
    /// blobs after it (they never change once written), the chain last (it
    /// only grows). Returns the backup directory.
    pub async fn backup(&self, progress: &(dyn Fn(&str) + Sync)) -> Result<std::path::PathBuf> {
        progress("backing up the server and the chain while they run");
        let dir = self.hospital.dir.path();
        let out = dir.join("backup");
        std::fs::create_dir_all(out.join("server"))?;
        let db = medledger_storage::Db::open_sqlite(&dir.join("server/server.db")).await?;
        medledger_storage::sqlx::query("VACUUM INTO $1")
            .bind(out.join("server/server.db").display().to_string())
            .execute(db.pool())
            .await
            .context("copying the server's database")?;
        let blobs = dir.join("server/blobs");
        for file in walk(&blobs) {
            let rel = file.strip_prefix(&blobs)?;
            if rel.to_string_lossy().contains(".tmp-") {
                continue;
            }
            let to = out.join("server/blobs").join(rel);
            std::fs::create_dir_all(to.parent().context("a blob path has a parent")?)?;
            std::fs::copy(&file, &to)?;
        }
        self.hospital.node.backup(&out.join("chain"))?;
        Ok(out)
    }

    /// Starts the server of the backup on the backup's chain, erases again
    /// every patient whose erasure the live chain records, and checks
    /// every ledger against the backup chain's anchors.
    pub async fn restore(
        &self,
        backup: &std::path::Path,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Vec<Check>> {
        progress("restoring the backup taken before the erasure");
        let h = &self.hospital;
        let node = medledger_chain::Node::start(&medledger_chain::NodeConfig {
            data_dir: backup.join("chain"),
            chain_id: h.node.chain_id(),
            allow: vec![h.admin_signer.address()],
            sealing: medledger_chain::Sealing::OnDemand {
                min_interval: Duration::from_millis(1),
            },
        })?;
        node.set_permissions(std::sync::Arc::new(
            medledger_chain::RegistryPermissions::new(h.admin.addresses().registry),
        ));
        let server = h.restored_server(&backup.join("server"), &node).await?;
        let live: Vec<[u8; 32]> = h
            .admin
            .erasures()
            .await?
            .iter()
            .map(|a| a.patient.0)
            .collect();
        let again = server
            .erase_recorded(&live)
            .await
            .map_err(anyhow::Error::msg)?;
        let (label, forgotten, _) = &self.patients[self.patients.len() - 1];
        let erased = server.ledger().is_erased(&forgotten.patient_ref.0).await?;
        let mut checks = vec![check(
            &format!("restoring a backup taken before {label}'s erasure"),
            &format!("{label} erased again: the live chain records the erasure"),
            format!("{again} patient(s) erased again; {label} erased: {erased}"),
            again == 1 && erased,
        )];
        let failures = server.verify_ledgers().await.map_err(anyhow::Error::msg)?;
        let patients = server.patients().await.map_err(anyhow::Error::msg)?;
        checks.push(check(
            "every restored ledger against the backup chain's anchors",
            "all verify",
            if failures.is_empty() {
                format!("{} of {} verify", patients.len(), patients.len())
            } else {
                failures.join("; ")
            },
            failures.is_empty() && patients.len() == self.patients.len(),
        ));
        let n = self.sent.len() / self.devices.len().max(1);
        let (mut kept, mut back) = (0, 0);
        for (k, (_, p)) in self.devices.iter().enumerate() {
            for hash in &self.sent[k * n..(k + 1) * n] {
                if matches!(server.reading(hash).await, Ok(Some(_))) {
                    if *p == self.patients.len() - 1 {
                        back += 1;
                    } else {
                        kept += 1;
                    }
                }
            }
        }
        checks.push(check(
            "the restored readings",
            &format!("everyone's open but {label}'s"),
            format!("{kept} open; {back} of {label}'s"),
            kept > 0 && back == 0,
        ));
        Ok(checks)
    }

    /// A connection to the server as patient `i`.
    async fn patient_conn(&self, i: usize) -> Result<Connection> {
        self.hospital
            .open(
                &Credentials::from_issued(&self.patients[i].1.card),
                Role::Server,
                &self.hospital.server.addr().to_string(),
            )
            .await
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
        ))
        .map_err(anyhow::Error::msg)?;
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
                sig: card
                    .sign(&medledger_protocol::card_digest(&patient, &hashes))
                    .map_err(anyhow::Error::msg)?,
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
    Ok(conn
        .request(
            "POST",
            "/v1/readings",
            &[("content-type", "application/cose")],
            cose,
        )
        .await?)
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
