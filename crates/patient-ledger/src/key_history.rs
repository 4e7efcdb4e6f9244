//! The ledger key's history: which Ed25519 key signed the ledger when.
//!
//! A rotation is a signed note (C2SP `signed-note`) signed by BOTH the old
//! and the new key:
//!
//! ```text
//! medledger ledger key rotation        header
//! medledger-server-0x…+1a2b3c4d+AR…=   the old (retired) verifier key
//! medledger-server-0x…+5e6f7a8b+AQ…=   the new (current) verifier key
//! 1763769600000                        when, Unix ms: the old key's retirement
//!
//! — medledger-server-0x… Gi…=          the old key's signature
//! — medledger-server-0x… Xq…=          the new key's signature
//! ```
//!
//! The old key's signature says the key holder handed over; the new key's
//! says the new key takes the old one's ledger as its own. A chain of such
//! statements, each starting at the previous one's new key and later in
//! time, is a [`KeyHistory`]. A key signs validly until its retirement:
//! an entry whose `ts`, or a checkpoint whose `time`, is at or after it is
//! refused.
//!
//! ```text
//!  key 0 ----[rotation t1]----> key 1 ----[rotation t2]----> key 2 (current)
//!  valid ..t1                  valid t1..t2                 valid t2..
//! ```
//!
//! Trust: a verifier who trusts any key of the chain trusts the whole
//! chain, since every link is signed by both its ends. A retired key can
//! still sign things dated before its retirement, as any key could before
//! it was retired: the on-chain anchors of checkpoints (and of rotations)
//! are what fix the past.

use crate::checkpoint::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier};
use crate::entry::{Entry, EntryError, Stored};

/// The first line of a rotation statement.
pub const ROTATION_HEADER: &str = "medledger ledger key rotation";

/// Why a key history or a rotation statement is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHistoryError {
    /// Not a rotation statement.
    #[error("rotation statement {index}: malformed: {why}")]
    Malformed {
        /// Its place in the history, from 0.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// One of the two signatures is missing or does not verify.
    #[error("rotation statement {index}: not signed by the {role} key {key}: {source}")]
    NotSigned {
        /// Its place in the history.
        index: usize,
        /// `old` or `new`.
        role: &'static str,
        /// That key.
        key: String,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// A statement that does not start at the key the previous one ended at.
    #[error(
        "rotation statement {index}: it retires {found}, but the current key then was {expected}"
    )]
    Broken {
        /// Its place in the history.
        index: usize,
        /// The key it retires.
        found: String,
        /// The key current before it.
        expected: String,
    },
    /// A statement not later than the previous one.
    #[error(
        "rotation statement {index}: its time {time_ms} is not after the previous rotation at {previous_ms}"
    )]
    NotLater {
        /// Its place in the history.
        index: usize,
        /// Its time.
        time_ms: u64,
        /// The previous statement's time.
        previous_ms: u64,
    },
    /// A key rotated to itself, or to a key it already retired.
    #[error("rotation statement {index}: the key {key} was already used")]
    Reused {
        /// Its place in the history.
        index: usize,
        /// The key.
        key: String,
    },
    /// The history ends at another key than expected.
    #[error("the key history's current key is {history}, not {expected}")]
    NotCurrent {
        /// The history's last key.
        history: String,
        /// The key that was expected to be current.
        expected: String,
    },
    /// The trusted key is not in the history.
    #[error("the trusted key {trusted} is not in the key history ({})", keys.join(" -> "))]
    Untrusted {
        /// The key trusted.
        trusted: String,
        /// The history's keys, oldest first.
        keys: Vec<String>,
    },
    /// A verifier key string that is not one.
    #[error("{0}")]
    BadKey(#[source] CheckpointError),
}

/// A rotation statement, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The retired key.
    pub old: String,
    /// The key that takes over.
    pub new: String,
    /// When the old key was retired, Unix ms.
    pub time_ms: u64,
}

/// The body of the rotation statement from `old` to `new` at `time_ms`.
fn statement_body(old: &str, new: &str, time_ms: u64) -> String {
    format!("{ROTATION_HEADER}\n{old}\n{new}\n{time_ms}\n")
}

/// The rotation statement from `old` to `new` at `time_ms`, signed by
/// both keys.
pub fn sign_rotation(old: &NoteSigner, new: &NoteSigner, time_ms: u64) -> String {
    let body = statement_body(&old.verifier_key(), &new.verifier_key(), time_ms);
    format!(
        "{body}\n{}{}",
        old.signature_line(&body),
        new.signature_line(&body)
    )
}

/// Verifies one rotation statement: its form and both signatures.
/// `index` only names it in errors.
pub fn verify_rotation(note: &str, index: usize) -> Result<Rotation, KeyHistoryError> {
    let malformed = |why: String| KeyHistoryError::Malformed { index, why };
    let (body, _) = note
        .split_once("\n\n")
        .ok_or_else(|| malformed("no blank line before the signatures".into()))?;
    let lines: Vec<&str> = body.split('\n').collect();
    let [header, old, new, time] = lines.as_slice() else {
        return Err(malformed(format!(
            "{} lines of text, expected 4 (header, old key, new key, time)",
            lines.len()
        )));
    };
    if *header != ROTATION_HEADER {
        return Err(malformed(format!(
            "first line {header:?}, expected {ROTATION_HEADER:?}"
        )));
    }
    if time.is_empty()
        || (time.len() > 1 && time.starts_with('0'))
        || !time.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(malformed(format!("time {time:?} is not a decimal number")));
    }
    let time_ms = time
        .parse()
        .map_err(|_| malformed(format!("time {time:?} is too large")))?;
    if old == new {
        return Err(KeyHistoryError::Reused {
            index,
            key: (*old).to_owned(),
        });
    }
    for (role, key) in [("old", *old), ("new", *new)] {
        let verifier = NoteVerifier::new(key).map_err(|e| malformed(e.to_string()))?;
        verifier
            .open(note)
            .map_err(|source| KeyHistoryError::NotSigned {
                index,
                role,
                key: key.to_owned(),
                source,
            })?;
    }
    Ok(Rotation {
        old: (*old).to_owned(),
        new: (*new).to_owned(),
        time_ms,
    })
}

/// One key and when it signed validly.
#[derive(Debug, Clone)]
struct Period {
    verifier: NoteVerifier,
    key: String,
    /// When it took over (0 for the first key).
    from_ms: u64,
    /// When it was retired, if it was.
    until_ms: Option<u64>,
}

/// The chain of ledger keys, oldest first, from verified rotation
/// statements; the last key is the current one.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    periods: Vec<Period>,
    statements: Vec<String>,
}

impl KeyHistory {
    /// A history of one key, never rotated.
    pub fn new(key: &str) -> Result<KeyHistory, KeyHistoryError> {
        Ok(KeyHistory {
            periods: vec![Period {
                verifier: NoteVerifier::new(key).map_err(KeyHistoryError::BadKey)?,
                key: key.to_owned(),
                from_ms: 0,
                until_ms: None,
            }],
            statements: Vec::new(),
        })
    }

    /// The history the statements (oldest first) make, which must end at
    /// `current`; no statements means `current` was never rotated.
    pub fn from_statements(
        statements: &[String],
        current: &str,
    ) -> Result<KeyHistory, KeyHistoryError> {
        let first = match statements.first() {
            Some(note) => verify_rotation(note, 0)?.old,
            None => current.to_owned(),
        };
        let mut history = KeyHistory::new(&first)?;
        for note in statements {
            history.push(note)?;
        }
        if history.current() != current {
            return Err(KeyHistoryError::NotCurrent {
                history: history.current().to_owned(),
                expected: current.to_owned(),
            });
        }
        Ok(history)
    }

    /// Adds a rotation statement, which must retire the current key later
    /// than the last rotation, to a key not used before.
    pub fn push(&mut self, note: &str) -> Result<Rotation, KeyHistoryError> {
        let index = self.statements.len();
        let rotation = verify_rotation(note, index)?;
        let last = self.periods.last().expect("a history has a key");
        if rotation.old != last.key {
            return Err(KeyHistoryError::Broken {
                index,
                found: rotation.old,
                expected: last.key.clone(),
            });
        }
        if index > 0 && rotation.time_ms <= last.from_ms {
            return Err(KeyHistoryError::NotLater {
                index,
                time_ms: rotation.time_ms,
                previous_ms: last.from_ms,
            });
        }
        if self.periods.iter().any(|p| p.key == rotation.new) {
            return Err(KeyHistoryError::Reused {
                index,
                key: rotation.new,
            });
        }
        let verifier = NoteVerifier::new(&rotation.new).map_err(KeyHistoryError::BadKey)?;
        self.periods
            .last_mut()
            .expect("a history has a key")
            .until_ms = Some(rotation.time_ms);
        self.periods.push(Period {
            verifier,
            key: rotation.new.clone(),
            from_ms: rotation.time_ms,
            until_ms: None,
        });
        self.statements.push(note.to_owned());
        Ok(rotation)
    }

    /// Rotates from the current key (`old`, which must be it) to `new` at
    /// `time_ms`; returns the statement, now part of the history.
    pub fn rotate(
        &mut self,
        old: &NoteSigner,
        new: &NoteSigner,
        time_ms: u64,
    ) -> Result<String, KeyHistoryError> {
        if old.verifier_key() != self.current() {
            return Err(KeyHistoryError::NotCurrent {
                history: self.current().to_owned(),
                expected: old.verifier_key(),
            });
        }
        let note = sign_rotation(old, new, time_ms);
        self.push(&note)?;
        Ok(note)
    }

    /// The current key.
    pub fn current(&self) -> &str {
        &self.periods.last().expect("a history has a key").key
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> Vec<String> {
        self.periods.iter().map(|p| p.key.clone()).collect()
    }

    /// The rotation statements, oldest first.
    pub fn statements(&self) -> &[String] {
        &self.statements
    }

    /// When `key` was retired: `Some(None)` while it is current, `None`
    /// if it is not in the history.
    pub fn retired_ms(&self, key: &str) -> Option<Option<u64>> {
        self.periods
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.until_ms)
    }

    /// The key that signed validly at `time_ms`.
    pub fn key_at(&self, time_ms: u64) -> &str {
        let at = self
            .periods
            .iter()
            .position(|p| p.until_ms.is_none_or(|until| time_ms < until))
            .expect("the current key has no end");
        &self.periods[at].key
    }

    /// Refuses a history that does not hold `trusted`: a verifier who
    /// trusts it then trusts every key of the chain.
    pub fn require(&self, trusted: &str) -> Result<(), KeyHistoryError> {
        if self.periods.iter().any(|p| p.key == trusted) {
            Ok(())
        } else {
            Err(KeyHistoryError::Untrusted {
                trusted: trusted.to_owned(),
                keys: self.keys(),
            })
        }
    }

    /// Decodes a stored entry; a signed one of an earlier release (`v` 1)
    /// must verify by a key of the history valid at the entry's `ts`. An
    /// unsigned one is authentic only under a checkpoint: the caller
    /// checks its inclusion.
    pub fn open_entry(&self, stored: &[u8]) -> Result<Entry, EntryError> {
        let (entry, message, signature) = match Entry::decode(stored)? {
            Stored::Unsigned(entry) => return Ok(entry),
            Stored::Signed {
                entry,
                message,
                signature,
            } => (entry, message, signature),
        };
        let expected = self.key_at(entry.ts_ms);
        // The key valid at `ts` first: the only one tried for a good entry.
        let order = self
            .periods
            .iter()
            .filter(|p| p.key == expected)
            .chain(self.periods.iter().filter(|p| p.key != expected));
        for period in order {
            if !period.verifier.verify_raw(&message, &signature) {
                continue;
            }
            return match period.until_ms {
                Some(retired_ms) if entry.ts_ms >= retired_ms => Err(EntryError::RetiredKey {
                    key: period.key.clone(),
                    ts_ms: entry.ts_ms,
                    retired_ms,
                }),
                _ => Ok(entry),
            };
        }
        Err(if self.periods.len() == 1 {
            EntryError::BadSignature
        } else {
            EntryError::NoKeySigned(self.periods.len())
        })
    }

    /// Verifies a signed checkpoint by a key of the history, valid at the
    /// checkpoint's `time` (a retired key's checkpoint must state one).
    pub fn verify_checkpoint(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        for period in self.periods.iter().rev() {
            let checkpoint = match period.verifier.verify(note) {
                Ok(checkpoint) => checkpoint,
                Err(e @ CheckpointError::NotSignedBy(_)) if self.periods.len() == 1 => {
                    return Err(e);
                }
                Err(CheckpointError::NotSignedBy(_)) => continue,
                Err(e) => return Err(e),
            };
            if let Some(retired_ms) = period.until_ms {
                let time_ms = checkpoint.time_ms();
                if time_ms.is_none_or(|t| t >= retired_ms) {
                    return Err(CheckpointError::RetiredKey {
                        key: period.key.clone(),
                        time_ms,
                        retired_ms,
                    });
                }
            }
            return Ok(checkpoint);
        }
        Err(CheckpointError::NotSignedBy(format!(
            "any key of the key history ({})",
            self.keys().join(" -> ")
        )))
    }
}
