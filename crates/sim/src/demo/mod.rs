//! `medledger demo`: a small hospital in one process, run through the
//! access scenarios and every attack of the threat model, with a report of what
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
//!
//! - `scenarios`: provisioning, streaming, the access scenarios and the
//!   ledgers' verification against the chain;
//! - `attacks`: the attack matrix, one function per attack or small group;
//! - `backup`: the right to be forgotten, and a backup taken before it,
//!   restored after it.

mod attacks;
mod backup;
mod scenarios;

use crate::{Device, Hospital, Patient, Staff, Ward};
use anyhow::Result;
use medledger_pki::Credentials;
use medledger_pki::https::{Connection, Reply};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

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
    /// A connection to the server as patient `i`.
    async fn patient_conn(&self, i: usize) -> Result<Connection> {
        self.hospital
            .to_server(&Credentials::from_issued(&self.patients[i].1.card))
            .await
    }
}
