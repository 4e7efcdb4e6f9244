//! What the collector does with a device's readings, whichever way they
//! came (HTTPS or MQTT): the number of readings, the device's rate (429
//! with `Retry-After`), and for each reading its envelope, `kid` and
//! signature against the device's certificate, `dev` against the
//! certificate's EPC, and the timestamp window. What passes goes to the
//! pipeline as one submission; the answer (receipts or problems) comes
//! back after the durable outbox commit, as a transport-neutral
//! [`Answer`] that each transport sends its own way.

use crate::State;
use crate::pipeline::{Candidate, Presented, Submission};
use medledger_checks::{Refusal, Trust, Verdict};
use medledger_pki::Identity;
use medledger_protocol::cbor::{self, Value};
use medledger_protocol::problem::PROBLEM_JSON;
use medledger_protocol::{Problem, ProblemType, Receipt, ReceiptStatus, now_ms};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a caller asking to wait for the server's commit waits.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Who sent a request, as the log names it.
pub(crate) struct Sender {
    /// The device's EPC (its rate bucket).
    pub(crate) epc: [u8; 12],
    /// Where it came from: a TCP peer, or an MQTT topic.
    pub(crate) peer: String,
    /// The certificate's subject.
    pub(crate) device: String,
    /// The certificate's SHA-256, hex.
    pub(crate) fingerprint: String,
}

/// The answer to a request: receipts (202) or a problem document.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status (MQTT carries it as the `status` user property).
    pub(crate) status: u16,
    /// `application/json` or `application/problem+json`.
    pub(crate) content_type: &'static str,
    /// The JSON document.
    pub(crate) body: Vec<u8>,
    /// Seconds to wait before sending again (429, 503).
    pub(crate) retry_after: Option<u64>,
}

impl Answer {
    fn problem(p: &Problem) -> Answer {
        Answer {
            status: p.status,
            content_type: PROBLEM_JSON,
            body: p.to_json().into_bytes(),
            // A device told 503 comes back a little later.
            retry_after: (p.status == 503).then_some(RETRY_UNAVAILABLE_S),
        }
    }

    pub(crate) fn refuse(kind: ProblemType, detail: impl Into<String>) -> Answer {
        Answer::problem(&Problem::new(kind, detail))
    }

    fn json(value: &impl serde::Serialize) -> Answer {
        Answer {
            status: 202,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            retry_after: None,
        }
    }
}

/// How long a device told 503 is asked to wait (`Retry-After`).
const RETRY_UNAVAILABLE_S: u64 = 5;

/// A device's token bucket: `device_rate_per_s` readings per second,
/// `device_burst` at most at once.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The COSE_Sign1 envelopes of a body: one (`batch` false), or a
/// non-empty CBOR array of byte strings.
pub(crate) fn envelopes(state: &State, body: &[u8], batch: bool) -> Result<Vec<Vec<u8>>, Answer> {
    if !batch {
        return Ok(vec![body.to_vec()]);
    }
    let malformed = || {
        count(state, ProblemType::Malformed, 1);
        Answer::refuse(
            ProblemType::Malformed,
            "a batch is a non-empty CBOR array of byte strings, each a COSE_Sign1",
        )
    };
    match cbor::decode(body) {
        Ok(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|item| match item {
                Value::Bytes(b) => Ok(b),
                _ => Err(malformed()),
            })
            .collect(),
        _ => Err(malformed()),
    }
}

/// Whether `sender` may send `n` readings now: not more than a request
/// may carry, and within its rate.
pub(crate) fn admit(state: &State, sender: &Sender, n: usize) -> Result<(), Answer> {
    let limits = &state.limits;
    if n > limits.max_readings_per_request {
        let detail = format!(
            "{n} readings in one request; the limit is {}",
            limits.max_readings_per_request
        );
        count(state, ProblemType::TooLarge, n);
        log_rejected(state, sender, ProblemType::TooLarge, &detail, n);
        return Err(Answer::refuse(ProblemType::TooLarge, detail));
    }
    if let Err(retry_after) = take_tokens(state, sender.epc, n) {
        count(state, ProblemType::RateLimited, n);
        let detail = format!(
            "this device may send {} readings per second",
            limits.device_rate_per_s
        );
        log_rejected(state, sender, ProblemType::RateLimited, &detail, n);
        let mut answer = Answer::refuse(ProblemType::RateLimited, detail);
        answer.retry_after = Some(retry_after);
        return Err(answer);
    }
    Ok(())
}

/// Checks `items` (those already refused keep their verdict), runs what
/// passes through the pipeline, and answers: after the outbox commit, or
/// (`wait_commit`) after the server's, within [`COMMIT_WAIT`]. `identity`
/// resolves the certificate each reading is verified against. `single`:
/// the request carried one reading, not an array.
pub(crate) async fn decide(
    state: &State,
    sender: &Sender,
    mut items: Vec<Candidate>,
    identity: impl Fn(&Arc<Presented>) -> Result<Arc<Identity>, Refusal> + Sync,
    single: bool,
    wait_commit: bool,
) -> Answer {
    medledger_checks::verify(&mut items, identity, Trust::Verify);
    medledger_checks::window(&mut items, state.limits.window(), now_ms());
    for item in &items {
        if let Verdict::Refused(r) = &item.verdict {
            count(state, r.kind, 1);
        }
    }
    let mut commits = HashMap::new();
    if wait_commit {
        let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for item in items.iter().filter(|i| i.passing().is_some()) {
            let (tx, rx) = oneshot::channel();
            waiters.entry(item.hash).or_default().push(tx);
            commits.insert(item.hash, rx);
        }
    }
    let items = if items.iter().any(|i| i.passing().is_some()) {
        let (reply, decided) = oneshot::channel();
        let submitted = state.submit.send(Submission { items, reply }).await;
        let decided = match submitted {
            Ok(()) => decided.await.ok(),
            Err(_) => None,
        };
        let Some(decided) = decided else {
            return Answer::refuse(ProblemType::Unavailable, "the collector is shutting down");
        };
        decided
    } else {
        items
    };
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut unwaited = Vec::new();
    for item in items {
        let commit = commits.remove(&item.hash);
        outcomes.push(match item.verdict {
            Verdict::Passing(p) => {
                // Waiting: the server's answer, or (timed out) none.
                let answer = match commit {
                    Some(rx) => tokio::time::timeout_at(deadline, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                let receipt = |status, ledger_index| Receipt {
                    hash: hex::encode(item.hash),
                    seq: p.reading.seq,
                    status,
                    ledger_index,
                };
                match answer {
                    Some(Err(refusal)) => Err(refusal),
                    Some(Ok(index)) => Ok(receipt(ReceiptStatus::Committed, Some(index))),
                    None => Ok(receipt(ReceiptStatus::Accepted, None)),
                }
            }
            Verdict::Refused(refusal) => {
                if commit.is_some() {
                    unwaited.push(item.hash);
                }
                log_rejected(state, sender, refusal.kind, &refusal.detail, 1);
                Err(refusal)
            }
            Verdict::Unchecked | Verdict::Stored { .. } => Err(Refusal::new(
                ProblemType::Unavailable,
                "the reading was left undecided",
            )),
        });
    }
    if !unwaited.is_empty() {
        // Rejected readings leave no waiter behind.
        let mut waiters = state.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for hash in &unwaited {
            waiters.remove(hash);
        }
    }
    respond(single, outcomes)
}

/// Takes `n` tokens from the device's bucket, or says in how many seconds
/// they will be there.
fn take_tokens(state: &State, epc: [u8; 12], n: usize) -> Result<(), u64> {
    let (rate, burst) = (state.limits.device_rate_per_s, state.limits.device_burst);
    let mut rates = state.rates.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let bucket = rates.entry(epc).or_insert(Bucket {
        tokens: burst,
        at: now,
    });
    bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
    bucket.at = now;
    // A request larger than the burst is admitted when the bucket is
    // full, and leaves a debt the device waits out.
    let want = n as f64;
    if bucket.tokens >= want.min(burst) {
        bucket.tokens -= want;
        Ok(())
    } else {
        let secs = ((want.min(burst) - bucket.tokens) / rate).ceil();
        Err(if secs.is_finite() {
            secs.max(1.0) as u64
        } else {
            60
        })
    }
}

/// Keeps the CA certificates of a device's chain (leaf first) for the
/// server.
pub(crate) fn remember_cas(state: &State, chain: &[Vec<u8>]) {
    if chain.len() < 2 {
        return;
    }
    let mut cas = state.cas.lock().unwrap_or_else(|e| e.into_inner());
    for ca in &chain[1..] {
        if !cas.contains(ca) {
            cas.push(ca.clone());
        }
    }
}

/// Logs `n` readings of `sender` rejected as `kind`, rate-limited (each is
/// counted in `/metrics` whatever the log leaves out).
pub(crate) fn log_rejected(
    state: &State,
    sender: &Sender,
    kind: ProblemType,
    detail: &str,
    n: usize,
) {
    if state.rejections.admit() {
        tracing::warn!(
            peer = %sender.peer,
            device = %sender.device,
            fingerprint = %sender.fingerprint,
            problem = kind.name(),
            "medledger collector: rejected {n} reading(s): {detail}"
        );
    }
}

/// Counts `n` readings rejected as `kind`.
pub(crate) fn count(state: &State, kind: ProblemType, n: usize) {
    state.metrics.add(
        "medledger_collector_readings_total",
        "Readings by outcome and cause.",
        &[("outcome", "rejected"), ("cause", kind.name())],
        n as u64,
    );
}

/// One reading: its receipt (202) or its problem. A batch: 202 with every
/// receipt and every rejection by index, unless all were rejected: then the
/// first rejection's status, with the list.
fn respond(single: bool, outcomes: Vec<Result<Receipt, Refusal>>) -> Answer {
    if single {
        return match outcomes.into_iter().next() {
            Some(Ok(receipt)) => Answer::json(&receipt),
            Some(Err(refusal)) => Answer::problem(&refusal.problem()),
            None => Answer::refuse(ProblemType::Malformed, "no reading"),
        };
    }
    let mut receipts = Vec::new();
    let mut rejected = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(r) => receipts.push(r),
            Err(refusal) => {
                let mut p = serde_json::to_value(refusal.problem()).unwrap_or_default();
                p["index"] = index.into();
                rejected.push(p);
            }
        }
    }
    if receipts.is_empty() {
        let Some(first) = rejected.first() else {
            return Answer::refuse(ProblemType::Malformed, "no reading");
        };
        let kind = first["type"]
            .as_str()
            .and_then(ProblemType::parse)
            .unwrap_or(ProblemType::Malformed);
        let p = Problem::new(
            kind,
            format!(
                "all {} readings were rejected; the first: {}",
                rejected.len(),
                first["detail"].as_str().unwrap_or("")
            ),
        )
        .with("rejected", rejected);
        return Answer::problem(&p);
    }
    Answer::json(&serde_json::json!({ "receipts": receipts, "rejected": rejected }))
}
