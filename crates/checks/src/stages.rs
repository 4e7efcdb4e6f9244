//! The stages after [`verify`](crate::verify): the timestamp window, the
//! Registry binding, the rule contracts and the sequence number.

use crate::{Bound, Item, Refusal, Verdict, epc_name};
use alloy::primitives::B256;
use alloy::providers::Provider;
use medledger_contracts::bindings::RuleManager::RuleInput;
use medledger_contracts::{Binding, ChainView, RuleReason, rule_inputs};
use medledger_protocol::ProblemType;
use medledger_storage::sqlx::{self, Row};
use medledger_storage::{Db, SqlValue, insert_many};
use std::collections::HashMap;

/// Rule inputs per `RuleManager.check` call (gas per call is bounded).
const RULE_CHUNK: usize = 512;

/// How far a reading's timestamp may lie from the time it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// At most this old, in ms.
    pub past_ms: u64,
    /// At most this far ahead (clock skew), in ms.
    pub future_ms: u64,
}

/// Refuses each reading whose timestamp lies outside `window` around
/// `now_ms` (`stale-timestamp`).
pub fn window<T>(items: &mut [Item<T>], window: Window, now_ms: u64) {
    for item in items.iter_mut() {
        let Some(p) = item.passing() else { continue };
        let ts = p.reading.ts_ms;
        let detail = if ts.saturating_add(window.past_ms) < now_ms {
            format!(
                "the reading is {} ms old; at most {} ms is accepted",
                now_ms - ts,
                window.past_ms
            )
        } else if ts > now_ms.saturating_add(window.future_ms) {
            format!(
                "the reading is {} ms in the future; at most {} ms of clock skew is accepted",
                ts - now_ms,
                window.future_ms
            )
        } else {
            continue;
        };
        item.refuse(Refusal::new(ProblemType::StaleTimestamp, detail));
    }
}

/// When a reading counts as signed, for a device whose certificate was
/// renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Now, as it arrives (the collector): only the registered certificate
    /// counts, whatever the reading's timestamp claims.
    Now,
    /// When it says it was measured (the server, which receives readings
    /// late from a collector's outbox): what the replaced certificate
    /// signed before its retirement still counts, nothing after.
    Measured,
}

/// Binds each reading to its device's admitted patient through the
/// Registry: the device registered and active, the reading signed by its
/// registered certificate (see [`Signed`]), reporting for an admitted
/// patient, and, where the side was told one (`named`), that patient.
///
/// # Errors
/// When the chain cannot be asked; nothing is refused then.
pub async fn bind<T, P: Provider + Clone>(
    view: &ChainView<P>,
    items: &mut [Item<T>],
    signed: Signed,
    named: impl Fn(&T) -> Option<B256>,
) -> medledger_contracts::Result<()> {
    let epcs = devices(items);
    if epcs.is_empty() {
        return Ok(());
    }
    let bindings = view.bindings(&epcs).await?;
    bind_from(&bindings, items, signed, named);
    Ok(())
}

/// The devices of the readings still in.
pub fn devices<T>(items: &[Item<T>]) -> Vec<[u8; 12]> {
    items
        .iter()
        .filter_map(|i| Some(i.passing()?.reading.dev.0))
        .collect()
}

/// Binds as [`bind`] does, from bindings already read; a device missing
/// from `bindings` counts as not registered.
pub fn bind_from<T>(
    bindings: &HashMap<[u8; 12], Binding>,
    items: &mut [Item<T>],
    signed: Signed,
    named: impl Fn(&T) -> Option<B256>,
) {
    for item in items.iter_mut() {
        let Verdict::Passing(p) = &item.verdict else {
            continue;
        };
        let dev = p.reading.dev.0;
        let epc = || epc_name(&dev);
        let fingerprint = &p.identity.fingerprint;
        let refusal = match bindings.get(&dev).filter(|b| b.registered) {
            None => Refusal::new(
                ProblemType::UnknownDevice,
                format!("device {} is not registered", epc()),
            ),
            Some(b) if !b.active => Refusal::new(
                ProblemType::UnknownDevice,
                format!("device {} is deactivated in the Registry", epc()),
            ),
            Some(b) if signed == Signed::Now && b.cert_fingerprint != *fingerprint => Refusal::new(
                ProblemType::UnknownDevice,
                format!(
                    "the certificate presented is not the one registered for device {}",
                    epc()
                ),
            ),
            Some(b) if !b.signed_by_registered(fingerprint, p.reading.ts_ms) => Refusal::new(
                ProblemType::UnknownDevice,
                format!(
                    "the certificate is not the one registered for device {} (or was retired before the reading)",
                    epc()
                ),
            ),
            Some(b) => match (b.patient, b.account) {
                (Some(patient), Some(account))
                    if named(&item.data).is_none_or(|n| n == patient) =>
                {
                    item.bound = Some(Bound { patient, account });
                    continue;
                }
                (Some(_), Some(_)) => Refusal::new(
                    ProblemType::NotAdmitted,
                    format!(
                        "device {} does not report for the patient the collector named",
                        epc()
                    ),
                ),
                _ => Refusal::new(
                    ProblemType::NotAdmitted,
                    format!("device {} is not assigned to an admitted patient", epc()),
                ),
            },
        };
        item.refuse(refusal);
    }
}

/// Asks the rule contracts about every observation of the readings still
/// in, one call per chunk of the batch, and refuses those a rule denies.
/// Inputs alike (the same device, data type and value) are asked once: a
/// rule's answer depends on nothing else within one call. Returns the
/// positions it refused.
///
/// # Errors
/// When the chain cannot be asked; nothing is refused then.
pub async fn rules<T, P: Provider + Clone>(
    view: &ChainView<P>,
    items: &mut [Item<T>],
) -> medledger_contracts::Result<Vec<usize>> {
    let questions = RuleQuestions::of(items);
    let (reasons, _version) = ask_rules(view, &questions.inputs).await?;
    Ok(questions.answer(items, &reasons))
}

/// The rule contracts' reasons for `inputs`, one call per chunk, and the
/// rule set's version (`RuleManager.check`'s `ver`).
///
/// # Errors
/// When the chain cannot be asked.
pub async fn ask_rules<P: Provider + Clone>(
    view: &ChainView<P>,
    inputs: &[RuleInput],
) -> medledger_contracts::Result<(Vec<RuleReason>, u64)> {
    let mut reasons = Vec::with_capacity(inputs.len());
    let mut version = 0;
    for chunk in inputs.chunks(RULE_CHUNK) {
        let (r, v) = view.contracts().check_readings(chunk.to_vec()).await?;
        reasons.extend(r);
        version = v;
    }
    Ok((reasons, version))
}

/// What the rule contracts are to be asked about the readings still in:
/// each input once.
#[derive(Debug)]
pub struct RuleQuestions {
    /// The inputs, each once.
    pub inputs: Vec<RuleInput>,
    /// (item, input) pairs.
    owners: Vec<(usize, usize)>,
}

impl RuleQuestions {
    /// The questions for `items`.
    pub fn of<T>(items: &[Item<T>]) -> RuleQuestions {
        let mut inputs = Vec::new();
        let mut asked: HashMap<([u8; 12], [u8; 16], i64, i64), usize> = HashMap::new();
        let mut owners = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(p) = item.passing() else { continue };
            for input in rule_inputs(&p.reading) {
                let key = (input.epc.0, input.code.0, input.min, input.max);
                let at = *asked.entry(key).or_insert_with(|| {
                    inputs.push(input);
                    inputs.len() - 1
                });
                owners.push((i, at));
            }
        }
        RuleQuestions { inputs, owners }
    }

    /// Refuses the readings a reason (one per input) denies; returns
    /// their positions.
    pub fn answer<T>(&self, items: &mut [Item<T>], reasons: &[RuleReason]) -> Vec<usize> {
        let mut refused = Vec::new();
        for &(i, at) in &self.owners {
            let Some(reason) = reasons.get(at) else {
                continue;
            };
            if items[i].passing().is_some() && !reason.is_allow() {
                items[i].refuse(Refusal::of_rule(reason));
                refused.push(i);
            }
        }
        refused
    }
}

/// Readings of a device that never arrived: the reading at `item` came
/// after a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Its position in the batch.
    pub item: usize,
    /// The device.
    pub device: [u8; 12],
    /// The first sequence number missing.
    pub from: u64,
    /// The last one missing.
    pub to: u64,
}

/// What a sequence check found.
#[derive(Debug, Default)]
pub struct Sequenced {
    /// Positions refused as replays.
    pub replays: Vec<usize>,
    /// Readings that came after a gap (accepted).
    pub gaps: Vec<Gap>,
}

/// Each device's highest accepted sequence number, as kept in one SQL
/// table (`epc BLOB PRIMARY KEY, seq BIGINT`): loaded as needed and kept,
/// the marks of a batch pending until its transaction commits.
///
/// With a table of holes ([`Marks::with_holes`]), the numbers a gap
/// skipped stay open: a reading that arrives late (held back and sent
/// again) fills its hole once instead of being refused as a replay.
#[derive(Debug)]
pub struct Marks {
    table: &'static str,
    holes: Option<&'static str>,
    known: HashMap<[u8; 12], Option<u64>>,
    pending: HashMap<[u8; 12], u64>,
    /// The batch's new holes (device, lo, hi) and filled numbers.
    new_holes: Vec<([u8; 12], u64, u64)>,
    filled: Vec<([u8; 12], u64)>,
}

/// Most holes kept per device; the oldest go first.
const MAX_HOLES: i64 = 64;

impl Marks {
    /// The marks kept in `table`, none loaded yet. Keep one across batches
    /// only where nothing else writes the table.
    pub fn new(table: &'static str) -> Marks {
        Marks {
            table,
            holes: None,
            known: HashMap::new(),
            pending: HashMap::new(),
            new_holes: Vec::new(),
            filled: Vec::new(),
        }
    }

    /// Marks in `table` that also keep each device's unfilled gaps in
    /// `holes` (`epc BLOB, lo BIGINT, hi BIGINT`, key `(epc, lo)`).
    pub fn with_holes(table: &'static str, holes: &'static str) -> Marks {
        Marks {
            holes: Some(holes),
            ..Marks::new(table)
        }
    }

    /// Refuses each reading whose sequence number is not above its
    /// device's last accepted one (`replay`) and fills no open hole, in
    /// batch order, and notes the gaps; the batch's new marks are pending
    /// until [`Marks::advance`].
    ///
    /// # Errors
    /// When a mark cannot be read; nothing is refused then.
    pub async fn sequence<T>(
        &mut self,
        db: &Db,
        items: &mut [Item<T>],
    ) -> Result<Sequenced, sqlx::Error> {
        self.pending.clear();
        self.new_holes.clear();
        self.filled.clear();
        let mut found = Sequenced::default();
        for (i, item) in items.iter_mut().enumerate() {
            let Some(p) = item.passing() else { continue };
            let (dev, seq) = (p.reading.dev.0, p.reading.seq);
            let mark = match self.pending.get(&dev) {
                Some(m) => Some(*m),
                None => self.load(db, &dev).await?,
            };
            match mark {
                Some(m) if seq <= m && self.fills_hole(db, dev, seq).await? => {
                    self.filled.push((dev, seq));
                    continue;
                }
                Some(m) if seq <= m => {
                    item.refuse(Refusal::new(
                        ProblemType::Replay,
                        format!("sequence {seq} is not above {m}, the device's last accepted"),
                    ));
                    found.replays.push(i);
                    continue;
                }
                Some(m) if seq > m + 1 => {
                    self.new_holes.push((dev, m + 1, seq - 1));
                    found.gaps.push(Gap {
                        item: i,
                        device: dev,
                        from: m + 1,
                        to: seq - 1,
                    });
                }
                _ => {}
            }
            self.pending.insert(dev, seq);
        }
        Ok(found)
    }

    /// Whether `seq` of `dev` is in one of its open holes and not yet
    /// filled by this batch.
    async fn fills_hole(&self, db: &Db, dev: [u8; 12], seq: u64) -> Result<bool, sqlx::Error> {
        let Some(holes) = self.holes else {
            return Ok(false);
        };
        if self.filled.contains(&(dev, seq)) {
            return Ok(false);
        }
        let in_new = self
            .new_holes
            .iter()
            .any(|&(d, first, last)| d == dev && (first..=last).contains(&seq));
        Ok(in_new || hole_at(db.pool(), holes, dev, seq).await?.is_some())
    }

    async fn load(&mut self, db: &Db, dev: &[u8; 12]) -> Result<Option<u64>, sqlx::Error> {
        if let Some(m) = self.known.get(dev) {
            return Ok(*m);
        }
        let row = sqlx::query(&format!("SELECT seq FROM {} WHERE epc = $1", self.table))
            .bind(dev.to_vec())
            .fetch_optional(db.pool())
            .await?;
        let mark = match row {
            Some(r) => Some(u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0)),
            None => None,
        };
        self.known.insert(*dev, mark);
        Ok(mark)
    }

    /// The batch's marks, from now on the known ones (the next batch is
    /// checked against them), to be written with the batch
    /// ([`NewMarks::write`]); if that fails, [`Marks::forget`] them.
    pub fn advance(&mut self) -> NewMarks {
        let marks: Vec<([u8; 12], u64)> = self.pending.drain().collect();
        for (dev, seq) in &marks {
            self.known.insert(*dev, Some(*seq));
        }
        NewMarks {
            table: self.table,
            marks,
            holes: self.holes.map(|table| NewHoles {
                table,
                opened: std::mem::take(&mut self.new_holes),
                filled: std::mem::take(&mut self.filled),
            }),
        }
    }

    /// Forgets every mark known: they are read again from the table (a
    /// batch whose marks were advanced was not written).
    pub fn forget(&mut self) {
        self.known.clear();
        self.pending.clear();
        self.new_holes.clear();
        self.filled.clear();
    }
}

/// The hole of `dev` that `seq` is in, as (lo, hi).
async fn hole_at<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    db: E,
    holes: &str,
    dev: [u8; 12],
    seq: u64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let row = sqlx::query(&format!(
        "SELECT lo, hi FROM {holes} WHERE epc = $1 AND lo <= $2 AND hi >= $2"
    ))
    .bind(dev.to_vec())
    .bind(seq)
    .fetch_optional(db)
    .await?;
    row.map(|r| Ok((r.try_get("lo")?, r.try_get("hi")?)))
        .transpose()
}

/// A batch's new marks (device, highest accepted sequence number), for
/// the table they belong in; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMarks {
    table: &'static str,
    marks: Vec<([u8; 12], u64)>,
    holes: Option<NewHoles>,
}

/// The holes a batch opened and filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NewHoles {
    table: &'static str,
    opened: Vec<([u8; 12], u64, u64)>,
    filled: Vec<([u8; 12], u64)>,
}

impl NewHoles {
    /// Opens and fills them in `tx`, keeping at most [`MAX_HOLES`] per
    /// device.
    async fn write(&self, tx: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        let table = self.table;
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for &(dev, first, last) in &self.opened {
            sqlx::query(&format!(
                "INSERT INTO {table} (epc, lo, hi) VALUES ($1, $2, $3)"
            ))
            .bind(dev.to_vec())
            .bind(int(first))
            .bind(int(last))
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE epc = $1 AND lo < \
                 (SELECT lo FROM {table} WHERE epc = $1 ORDER BY lo DESC LIMIT 1 OFFSET $2)"
            ))
            .bind(dev.to_vec())
            .bind(MAX_HOLES - 1)
            .execute(&mut *tx)
            .await?;
        }
        for &(dev, seq) in &self.filled {
            let Some((first, last)) = hole_at(&mut *tx, table, dev, seq).await? else {
                continue;
            };
            sqlx::query(&format!("DELETE FROM {table} WHERE epc = $1 AND lo = $2"))
                .bind(dev.to_vec())
                .bind(first)
                .execute(&mut *tx)
                .await?;
            let seq = int(seq);
            for (a, b) in [(first, seq - 1), (seq + 1, last)] {
                if a <= b {
                    sqlx::query(&format!(
                        "INSERT INTO {table} (epc, lo, hi) VALUES ($1, $2, $3)"
                    ))
                    .bind(dev.to_vec())
                    .bind(a)
                    .bind(b)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl NewMarks {
    /// Upserts them in `tx`, the batch's transaction.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn write(&self, tx: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        if let Some(holes) = &self.holes {
            holes.write(tx).await?;
        }
        if self.marks.is_empty() {
            return Ok(());
        }
        let rows: Vec<Vec<SqlValue>> = self
            .marks
            .iter()
            .map(|(dev, seq)| {
                vec![
                    SqlValue::Bytes(dev.to_vec()),
                    SqlValue::Int(i64::try_from(*seq).unwrap_or(i64::MAX)),
                ]
            })
            .collect();
        insert_many(
            tx,
            self.table,
            &["epc", "seq"],
            "ON CONFLICT (epc) DO UPDATE SET seq = excluded.seq",
            &rows,
        )
        .await
    }
}
