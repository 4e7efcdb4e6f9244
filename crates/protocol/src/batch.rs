//! What collectors and servers exchange about accepted readings: the
//! batch a collector forwards, the patient card's signature over it, the
//! server's answer, and the receipt a device gets.
//!
//! ```text
//!  device --COSE_Sign1--> collector --ForwardBatch (CBOR)--> server
//!         <--Receipt (JSON)--        <--CommitReply (JSON)--
//! ```
//!
//! A reading is named everywhere by [`reading_hash`]: SHA-256 of its
//! COSE_Sign1 bytes exactly as the device sent them.

use crate::ProblemType;
use crate::cbor::{self, CborError, Value};
use serde::{Deserialize, Serialize};

/// SHA-256 of a signed reading's bytes: its name in receipts, outboxes,
/// the ledger and proofs.
pub fn reading_hash(cose: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cose);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Domain separation for [`card_digest`].
const CARD_DOMAIN: &[u8] = b"medledger card batch v1\n";

/// What a patient's card signs for a batch: SHA-256 of the domain string
/// `"medledger card batch v1\n"`, the patientRef and the hashes of that
/// patient's readings, in batch order.
pub fn card_digest<'a>(
    patient: &[u8; 32],
    hashes: impl IntoIterator<Item = &'a [u8; 32]>,
) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(CARD_DOMAIN);
    ctx.update(patient);
    for h in hashes {
        ctx.update(h);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// One accepted reading as forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The COSE_Sign1 bytes as the device sent them.
    pub cose: Vec<u8>,
    /// Index into [`ForwardBatch::certs`] of the device certificate.
    pub cert: u32,
    /// The patientRef the collector bound it to.
    pub patient: [u8; 32],
    /// When the collector accepted it, Unix ms.
    pub received_ms: u64,
}

/// A patient card's signature over some of a batch's readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSignature {
    /// The patientRef.
    pub patient: [u8; 32],
    /// Index into [`ForwardBatch::certs`] of the card's certificate.
    pub cert: u32,
    /// Indexes into [`ForwardBatch::readings`] of the readings it covers,
    /// in order; all of this patient.
    pub readings: Vec<u32>,
    /// A COSE_Sign1 by the card key whose payload is [`card_digest`].
    pub sig: Vec<u8>,
}

/// A reading the collector refused after checking its signature, so that
/// the server can alert the patient (it verifies the signature and the
/// device's binding to the patient first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The COSE_Sign1 bytes as the device sent them.
    pub cose: Vec<u8>,
    /// Index into [`ForwardBatch::certs`] of the device certificate.
    pub cert: u32,
    /// The patient the device reports for.
    pub patient: [u8; 32],
    /// Why the collector refused it.
    pub problem: ProblemType,
    /// Why, for a person.
    pub detail: String,
}

/// Readings a collector holds back because the server refused the batch
/// they were in (a dead letter), told once per patient so that the server
/// can alert the patient; the readings themselves are sent again when an
/// operator retries the letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The collector's number for the dead letter.
    pub letter: u64,
    /// The patientRef.
    pub patient: [u8; 32],
    /// How many of the patient's readings it holds.
    pub readings: u64,
    /// The HTTP status the server refused the batch with.
    pub status: u16,
    /// Why, as the server said it.
    pub detail: String,
}

/// Where a forward batch stands among those its collector has in flight,
/// so that the server commits them in the order they were sent.
///
/// A collector numbers the batches it sends from 1 in a stream, and starts
/// a new stream whenever a batch fails. A batch sent while its predecessor
/// is unanswered names it in `after`: the server commits it only once that
/// one has committed, and refuses it (`unavailable`) if that one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// The stream, a number the collector never used before.
    pub stream: u64,
    /// This batch's number in the stream.
    pub n: u64,
    /// The number of the unanswered batch of the same stream it follows.
    pub after: Option<u64>,
}

/// What a collector forwards to a server (`POST /v1/batches`,
/// `application/cbor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardBatch {
    /// Its place among the batches its collector has in flight, if it
    /// sends several at once.
    pub order: Option<Order>,
    /// Leaf certificates (DER), each once: devices' and cards'.
    pub certs: Vec<Vec<u8>>,
    /// The CA certificates between those leaves and the root (DER).
    pub cas: Vec<Vec<u8>>,
    /// The readings.
    pub readings: Vec<Forwarded>,
    /// The card signatures; every reading is covered by exactly one.
    pub cards: Vec<CardSignature>,
    /// Readings the collector refused, for the patients' alerts.
    pub refused: Vec<Refused>,
    /// Readings the collector holds as dead letters, for the patients'
    /// alerts (sent only when there are some).
    pub held: Vec<Held>,
}

/// Why bytes are not a forward batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Not deterministic CBOR.
    #[error("batch: {0}")]
    Cbor(#[from] CborError),
    /// CBOR of the wrong shape.
    #[error("batch field `{field}` {problem}")]
    Field {
        /// Which (`readings[3].patient`...).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> BatchError {
    BatchError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A map with text keys, sorted as deterministic CBOR wants.
fn text_map(entries: Vec<(&str, Vec<u8>)>) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.map_sorted(
            entries
                .into_iter()
                .map(|(k, v)| {
                    (
                        cbor::encode_with(|e| {
                            e.text(k);
                        }),
                        v,
                    )
                })
                .collect(),
        );
    })
}

fn enc_bytes(b: &[u8]) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.bytes(b);
    })
}

fn enc_text(t: &str) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.text(t);
    })
}

fn enc_uint(n: u64) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.uint(n);
    })
}

fn enc_array(items: Vec<Vec<u8>>) -> Vec<u8> {
    cbor::encode_with(|e| {
        e.array(items.len());
        for item in &items {
            e.raw(item);
        }
    })
}

/// The fields of a map with text keys, by name; unknown keys refused.
fn fields(v: Value, at: &str, known: &[&str]) -> Result<Vec<(String, Value)>, BatchError> {
    let Value::Map(entries) = v else {
        return Err(bad(at, "is not a map"));
    };
    entries
        .into_iter()
        .map(|(k, v)| match k {
            Value::Text(k) if known.contains(&k.as_str()) => Ok((k, v)),
            Value::Text(k) => Err(bad(format!("{at}.{k}"), "is not a known field")),
            _ => Err(bad(at, "has a key that is not text")),
        })
        .collect()
}

fn take(fields: &mut Vec<(String, Value)>, name: &str, at: &str) -> Result<Value, BatchError> {
    let i = fields
        .iter()
        .position(|(k, _)| k == name)
        .ok_or_else(|| bad(format!("{at}.{name}"), "is missing"))?;
    Ok(fields.swap_remove(i).1)
}

fn as_bytes(v: Value, at: &str) -> Result<Vec<u8>, BatchError> {
    match v {
        Value::Bytes(b) => Ok(b),
        other => Err(bad(at, format!("is {other}, expected a byte string"))),
    }
}

fn as_ref32(v: Value, at: &str) -> Result<[u8; 32], BatchError> {
    let b = as_bytes(v, at)?;
    b.as_slice()
        .try_into()
        .map_err(|_| bad(at, format!("is {} bytes, expected 32", b.len())))
}

fn as_text(v: Value, at: &str) -> Result<String, BatchError> {
    match v {
        Value::Text(t) => Ok(t),
        other => Err(bad(at, format!("is {other}, expected text"))),
    }
}

fn as_uint(v: Value, at: &str) -> Result<u64, BatchError> {
    match v {
        Value::Uint(n) => Ok(n),
        other => Err(bad(at, format!("is {other}, expected an unsigned integer"))),
    }
}

fn as_u32(v: Value, at: &str) -> Result<u32, BatchError> {
    u32::try_from(as_uint(v, at)?).map_err(|_| bad(at, "is too large"))
}

fn as_array(v: Value, at: &str) -> Result<Vec<Value>, BatchError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(bad(at, format!("is {other}, expected an array"))),
    }
}

impl ForwardBatch {
    /// The deterministic CBOR form:
    /// `{"v": 1, "cas": [...], "cards": [...], "certs": [...], "readings": [...]}`.
    pub fn to_cbor(&self) -> Vec<u8> {
        let readings = self
            .readings
            .iter()
            .map(|r| {
                text_map(vec![
                    ("cose", enc_bytes(&r.cose)),
                    ("cert", enc_uint(u64::from(r.cert))),
                    ("patient", enc_bytes(&r.patient)),
                    ("rx", enc_uint(r.received_ms)),
                ])
            })
            .collect();
        let cards = self
            .cards
            .iter()
            .map(|c| {
                text_map(vec![
                    ("patient", enc_bytes(&c.patient)),
                    ("cert", enc_uint(u64::from(c.cert))),
                    (
                        "readings",
                        enc_array(c.readings.iter().map(|&i| enc_uint(u64::from(i))).collect()),
                    ),
                    ("sig", enc_bytes(&c.sig)),
                ])
            })
            .collect();
        let mut top = vec![
            ("v", enc_uint(1)),
            (
                "cas",
                enc_array(self.cas.iter().map(|c| enc_bytes(c)).collect()),
            ),
            (
                "certs",
                enc_array(self.certs.iter().map(|c| enc_bytes(c)).collect()),
            ),
            ("readings", enc_array(readings)),
            ("cards", enc_array(cards)),
            (
                "refused",
                enc_array(
                    self.refused
                        .iter()
                        .map(|r| {
                            text_map(vec![
                                ("cose", enc_bytes(&r.cose)),
                                ("cert", enc_uint(u64::from(r.cert))),
                                ("patient", enc_bytes(&r.patient)),
                                ("problem", enc_text(r.problem.name())),
                                ("detail", enc_text(&r.detail)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ];
        if !self.held.is_empty() {
            let held = self
                .held
                .iter()
                .map(|h| {
                    text_map(vec![
                        ("letter", enc_uint(h.letter)),
                        ("patient", enc_bytes(&h.patient)),
                        ("readings", enc_uint(h.readings)),
                        ("status", enc_uint(u64::from(h.status))),
                        ("detail", enc_text(&h.detail)),
                    ])
                })
                .collect();
            top.push(("held", enc_array(held)));
        }
        if let Some(order) = &self.order {
            let mut fields = vec![("stream", enc_uint(order.stream)), ("n", enc_uint(order.n))];
            if let Some(after) = order.after {
                fields.push(("after", enc_uint(after)));
            }
            top.push(("order", text_map(fields)));
        }
        text_map(top)
    }

    /// Parses a batch and checks that every index points inside it.
    pub fn from_cbor(bytes: &[u8]) -> Result<ForwardBatch, BatchError> {
        let mut top = fields(
            cbor::decode(bytes)?,
            "batch",
            &[
                "v", "cas", "certs", "readings", "cards", "refused", "order", "held",
            ],
        )?;
        let order = match top.iter().position(|(k, _)| k == "order") {
            Some(i) => Some(order_of(top.swap_remove(i).1)?),
            None => None,
        };
        let held = match top.iter().position(|(k, _)| k == "held") {
            Some(i) => held_of(top.swap_remove(i).1)?,
            None => Vec::new(),
        };
        let version = as_uint(take(&mut top, "v", "batch")?, "batch.v")?;
        if version != 1 {
            return Err(bad(
                "batch.v",
                format!("is {version}; this server speaks 1"),
            ));
        }
        let der_list = |top: &mut Vec<(String, Value)>, name: &str| {
            as_array(take(top, name, "batch")?, &format!("batch.{name}"))?
                .into_iter()
                .enumerate()
                .map(|(i, v)| as_bytes(v, &format!("{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        let certs = der_list(&mut top, "certs")?;
        let cas = der_list(&mut top, "cas")?;
        let cert_index = |v: Value, at: &str| -> Result<u32, BatchError> {
            let i = as_u32(v, at)?;
            if (i as usize) < certs.len() {
                Ok(i)
            } else {
                Err(bad(
                    at,
                    format!("is {i}; the batch has {} certificates", certs.len()),
                ))
            }
        };
        let mut readings = Vec::new();
        for (i, v) in as_array(take(&mut top, "readings", "batch")?, "batch.readings")?
            .into_iter()
            .enumerate()
        {
            let at = format!("readings[{i}]");
            let mut f = fields(v, &at, &["cose", "cert", "patient", "rx"])?;
            readings.push(Forwarded {
                cose: as_bytes(take(&mut f, "cose", &at)?, &format!("{at}.cose"))?,
                cert: cert_index(take(&mut f, "cert", &at)?, &format!("{at}.cert"))?,
                patient: as_ref32(take(&mut f, "patient", &at)?, &format!("{at}.patient"))?,
                received_ms: as_uint(take(&mut f, "rx", &at)?, &format!("{at}.rx"))?,
            });
        }
        let mut cards = Vec::new();
        for (i, v) in as_array(take(&mut top, "cards", "batch")?, "batch.cards")?
            .into_iter()
            .enumerate()
        {
            let at = format!("cards[{i}]");
            let mut f = fields(v, &at, &["patient", "cert", "readings", "sig"])?;
            let covered = as_array(take(&mut f, "readings", &at)?, &format!("{at}.readings"))?
                .into_iter()
                .map(|v| {
                    let r = as_u32(v, &format!("{at}.readings"))?;
                    if (r as usize) < readings.len() {
                        Ok(r)
                    } else {
                        Err(bad(
                            format!("{at}.readings"),
                            format!("names reading {r}, which is not in the batch"),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            cards.push(CardSignature {
                patient: as_ref32(take(&mut f, "patient", &at)?, &format!("{at}.patient"))?,
                cert: cert_index(take(&mut f, "cert", &at)?, &format!("{at}.cert"))?,
                readings: covered,
                sig: as_bytes(take(&mut f, "sig", &at)?, &format!("{at}.sig"))?,
            });
        }
        let mut refused = Vec::new();
        for (i, v) in as_array(take(&mut top, "refused", "batch")?, "batch.refused")?
            .into_iter()
            .enumerate()
        {
            let at = format!("refused[{i}]");
            let mut f = fields(v, &at, &["cose", "cert", "patient", "problem", "detail"])?;
            refused.push(Refused {
                cose: as_bytes(take(&mut f, "cose", &at)?, &format!("{at}.cose"))?,
                cert: cert_index(take(&mut f, "cert", &at)?, &format!("{at}.cert"))?,
                patient: as_ref32(take(&mut f, "patient", &at)?, &format!("{at}.patient"))?,
                problem: {
                    let name = as_text(take(&mut f, "problem", &at)?, &format!("{at}.problem"))?;
                    ProblemType::parse(&name).ok_or_else(|| {
                        bad(
                            format!("{at}.problem"),
                            format!("{name:?} is not a problem type"),
                        )
                    })?
                },
                detail: as_text(take(&mut f, "detail", &at)?, &format!("{at}.detail"))?,
            });
        }
        Ok(ForwardBatch {
            order,
            certs,
            cas,
            readings,
            cards,
            refused,
            held,
        })
    }
}

fn held_of(v: Value) -> Result<Vec<Held>, BatchError> {
    as_array(v, "batch.held")?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("held[{i}]");
            let mut f = fields(
                v,
                &at,
                &["letter", "patient", "readings", "status", "detail"],
            )?;
            let status = as_uint(take(&mut f, "status", &at)?, &format!("{at}.status"))?;
            Ok(Held {
                letter: as_uint(take(&mut f, "letter", &at)?, &format!("{at}.letter"))?,
                patient: as_ref32(take(&mut f, "patient", &at)?, &format!("{at}.patient"))?,
                readings: as_uint(take(&mut f, "readings", &at)?, &format!("{at}.readings"))?,
                status: u16::try_from(status)
                    .ok()
                    .filter(|s| (400..500).contains(s))
                    .ok_or_else(|| {
                        bad(
                            format!("{at}.status"),
                            format!("is {status}, not a 4xx status"),
                        )
                    })?,
                detail: as_text(take(&mut f, "detail", &at)?, &format!("{at}.detail"))?,
            })
        })
        .collect()
}

fn order_of(v: Value) -> Result<Order, BatchError> {
    let at = "batch.order";
    let mut f = fields(v, at, &["stream", "n", "after"])?;
    let after = match f.iter().position(|(k, _)| k == "after") {
        Some(i) => Some(as_uint(f.swap_remove(i).1, "batch.order.after")?),
        None => None,
    };
    let order = Order {
        stream: as_uint(take(&mut f, "stream", at)?, "batch.order.stream")?,
        n: as_uint(take(&mut f, "n", at)?, "batch.order.n")?,
        after,
    };
    if order.after.is_some_and(|after| after >= order.n) {
        return Err(bad("batch.order.after", "is not below n"));
    }
    Ok(order)
}

/// What became of one forwarded reading at the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitStatus {
    /// Stored and recorded in the patient's ledger now.
    Stored,
    /// Stored before (a retry): nothing new was written.
    Duplicate,
    /// Refused; `problem` says why. The collector must not retry it.
    Rejected,
}

/// The server's answer for one reading of a batch, in batch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitResult {
    /// [`reading_hash`], hex.
    pub hash: String,
    /// What happened.
    pub status: CommitStatus,
    /// Its index in the patient's ledger, when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The problem type (its name on the wire), when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<ProblemType>,
    /// Why, for a person, when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A rule's reason name, when a rule contract denied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The server's answer to a batch (`application/json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitReply {
    /// One per forwarded reading, in order.
    pub results: Vec<CommitResult>,
}

/// How far an accepted reading has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptStatus {
    /// Durable in the collector's outbox; it will reach the server.
    Accepted,
    /// Stored by the server and recorded in the patient's ledger.
    Committed,
}

/// What a device is told about one accepted reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`reading_hash`], hex.
    pub hash: String,
    /// The reading's sequence number.
    pub seq: u64,
    /// How far it got.
    pub status: ReceiptStatus,
    /// Its index in the patient's ledger, once committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_index: Option<u64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> ForwardBatch {
        ForwardBatch {
            order: None,
            certs: vec![vec![1, 2, 3], vec![4; 40]],
            cas: vec![vec![5; 10]],
            readings: vec![
                Forwarded {
                    cose: vec![0xd2, 1],
                    cert: 0,
                    patient: [7; 32],
                    received_ms: 1_763_769_600_000,
                },
                Forwarded {
                    cose: vec![0xd2, 2],
                    cert: 0,
                    patient: [7; 32],
                    received_ms: 1_763_769_600_001,
                },
            ],
            cards: vec![CardSignature {
                patient: [7; 32],
                cert: 1,
                readings: vec![0, 1],
                sig: vec![9; 70],
            }],
            refused: vec![Refused {
                cose: vec![0xd2, 3],
                cert: 0,
                patient: [7; 32],
                problem: ProblemType::RuleViolation,
                detail: "above-range".into(),
            }],
            held: Vec::new(),
        }
    }

    #[test]
    fn batches_round_trip_and_indexes_are_checked() {
        let batch = sample();
        assert_eq!(ForwardBatch::from_cbor(&batch.to_cbor()).unwrap(), batch);

        let mut wrong = sample();
        wrong.readings[1].cert = 2;
        let err = ForwardBatch::from_cbor(&wrong.to_cbor()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch field `readings[1].cert` is 2; the batch has 2 certificates"
        );
        let mut wrong = sample();
        wrong.cards[0].readings.push(5);
        let err = ForwardBatch::from_cbor(&wrong.to_cbor()).unwrap_err();
        assert!(err.to_string().contains("names reading 5"), "{err}");
    }

    #[test]
    fn an_order_is_optional_and_after_comes_before_n() {
        let mut batch = sample();
        for after in [None, Some(6)] {
            batch.order = Some(Order {
                stream: 1 << 60,
                n: 7,
                after,
            });
            assert_eq!(ForwardBatch::from_cbor(&batch.to_cbor()).unwrap(), batch);
        }
        batch.order = Some(Order {
            stream: 1,
            n: 7,
            after: Some(7),
        });
        let err = ForwardBatch::from_cbor(&batch.to_cbor()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch field `batch.order.after` is not below n"
        );
    }

    #[test]
    fn held_notices_are_optional_and_name_a_4xx() {
        let mut batch = sample();
        assert!(!batch.to_cbor().windows(4).any(|w| w == b"held"));
        batch.held = vec![Held {
            letter: 3,
            patient: [7; 32],
            readings: 12,
            status: 403,
            detail: "not an active collector".into(),
        }];
        assert_eq!(ForwardBatch::from_cbor(&batch.to_cbor()).unwrap(), batch);
        batch.held[0].status = 503;
        let err = ForwardBatch::from_cbor(&batch.to_cbor()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "batch field `held[0].status` is 503, not a 4xx status"
        );
    }

    #[test]
    fn card_digests_bind_patient_and_order() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let d = card_digest(&[7; 32], [&a, &b]);
        assert_ne!(d, card_digest(&[7; 32], [&b, &a]));
        assert_ne!(d, card_digest(&[8; 32], [&a, &b]));
        assert_eq!(reading_hash(b"").len(), 32);
    }
}
