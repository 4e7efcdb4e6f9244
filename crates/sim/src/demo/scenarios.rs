//! The demo's scenarios: the hospital provisioned, every device
//! streaming, the access scenarios, and every patient
//! ledger verified against the chain.

use super::{Check, Demo, LedgerCheck, cause, check, decision};
use crate::signals::{KINDS, Vitals};
use crate::{Hospital, Options, Patient, Readings, Staff, Wait, post_readings};
use alloy::primitives::B256;
use anyhow::Result;
use medledger_contracts::{Grantee, Scope};
use medledger_mqtt::mosquitto::Mosquitto;
use medledger_pki::Role;
use medledger_pki::https::{Connection, Reply};
use medledger_protocol::reading_hash;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

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
                    let wait = if i + 1 == n {
                        Wait::Committed
                    } else {
                        Wait::Stored
                    };
                    let reply = post_readings(&mut conn, Readings::One(cose), wait).await?;
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
            while self.hospital.server.reading(&last).await?.is_none() && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(accepted)
    }

    async fn read(&self, who: &Staff, request: u64) -> Result<Reply> {
        let mut conn = self.hospital.to_server(&who.credentials()).await?;
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
        let mut conn = self.hospital.to_server(&who.credentials()).await?;
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

    /// The access scenarios.
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
}
