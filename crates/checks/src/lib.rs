//! The per-reading checks, written once and used by both the collector (on
//! what devices send) and the server (on what a collector forwards).
//!
//! A batch is a slice of [`Item`]s, each carrying its own [`Verdict`]
//! (unchecked, passing, refused with a typed [`Refusal`], stored). A stage
//! looks only at the items still in the running and refuses some of them;
//! what passes every stage is a [`Passing`] reading, [`Bound`] to its
//! patient.
//!
//! - `verify`: the first stage, [`verify()`]: who signed each reading and
//!   what it says (the certificate identity given by the side, the COSE
//!   signature, Ed25519 ones batch-verified, `dev` against the
//!   certificate), on every core; [`Trust::VerifiedHere`] only parses what
//!   this process verified before;
//! - `stages`: the stages after it: [`window()`] (the timestamp),
//!   [`bind()`] (the Registry binding to an admitted patient, and to the
//!   patient a collector named), [`rules()`] (the rule contracts, one call
//!   per chunk) and [`Marks`] (sequence numbers in a SQL table, gaps; on
//!   the server the gaps kept so that a late reading fills its number
//!   once; the batch's marks written in its transaction).
//!
//! ```text
//!  Item { hash, COSE, the side's data }                      Unchecked
//!    verify    certificate identity (given by the side), COSE
//!              signature, `dev` = the certificate's EPC      -> Passing
//!    window    the timestamp within the accepted window of now (collector)
//!    bind      Registry: registered, active, signed by the registered
//!              certificate, reporting for an admitted patient (the one
//!              the collector named, at the server)
//!    rules     the rule contracts, one call per chunk of the batch
//!    sequence  above the device's last accepted sequence number
//! ```
//!
//! Each side adds what only it does around these: the collector its
//! per-request limits and the patient's card, the server duplicates, the
//! card signatures and erasures, then storing.
//!
//! No feature flags.

mod stages;
mod verify;

pub use stages::{
    Gap, Marks, NewMarks, RuleQuestions, Sequenced, Signed, Window, ask_rules, bind, bind_from,
    devices, rules, window,
};
pub use verify::{Trust, verify};

use alloy::primitives::{Address, B256};
use medledger_contracts::RuleReason;
use medledger_pki::Identity;
use medledger_protocol::{Problem, ProblemType, Reading, reading_hash};
use std::sync::Arc;

/// One reading in a batch, with what a side knows of it (`data`) and how
/// far it got.
#[derive(Debug)]
pub struct Item<T> {
    /// [`reading_hash`] of `cose`.
    pub hash: [u8; 32],
    /// The COSE_Sign1 bytes, as the device signed them.
    pub cose: Vec<u8>,
    /// The side's own facts (the collector: the device certificate; the
    /// server: what the collector said of the reading).
    pub data: T,
    /// The patient its device reports for, once [`bind`] found them; kept
    /// when a later stage refuses it (its patient is told).
    pub bound: Option<Bound>,
    /// How far it got.
    pub verdict: Verdict,
}

impl<T> Item<T> {
    /// A reading not checked yet.
    pub fn new(cose: Vec<u8>, data: T) -> Item<T> {
        Item {
            hash: reading_hash(&cose),
            cose,
            data,
            bound: None,
            verdict: Verdict::Unchecked,
        }
    }

    /// The reading, if it passed every stage so far.
    pub fn passing(&self) -> Option<&Passing> {
        match &self.verdict {
            Verdict::Passing(p) => Some(p),
            _ => None,
        }
    }

    /// The patient it is bound to, if it passed [`bind`] and every stage
    /// so far.
    pub fn passing_for(&self) -> Option<&Bound> {
        self.passing().and(self.bound.as_ref())
    }

    /// Refuses it, whatever it was.
    pub fn refuse(&mut self, refusal: Refusal) {
        self.verdict = Verdict::Refused(refusal);
    }
}

/// How far a reading got.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Not verified yet.
    Unchecked,
    /// Passed every stage so far.
    Passing(Box<Passing>),
    /// Refused: it goes no further.
    Refused(Refusal),
    /// Stored by the server under this index of its patient's ledger
    /// (`before`: by an earlier batch; this one is a retry).
    Stored {
        /// The entry's index in the patient's ledger.
        index: u64,
        /// Stored by an earlier batch.
        before: bool,
    },
}

/// A reading that passed every stage so far.
#[derive(Debug, Clone)]
pub struct Passing {
    /// What the device says.
    pub reading: Reading,
    /// Its device's certificate, as verified.
    pub identity: Arc<Identity>,
}

/// The admitted patient a device reports for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The patient's reference.
    pub patient: B256,
    /// The patient's account.
    pub account: Address,
}

/// Why a reading was refused, as the device is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable cause.
    pub kind: ProblemType,
    /// What was wrong, for a person.
    pub detail: String,
    /// A rule's reason name, for `rule-violation`.
    pub reason: Option<String>,
}

impl Refusal {
    /// A refusal of `kind`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            detail: detail.into(),
            reason: None,
        }
    }

    /// The refusal of a rule contract's `reason`.
    pub fn of_rule(reason: &RuleReason) -> Refusal {
        let (kind, detail) = reason.refusal();
        Refusal {
            kind,
            detail,
            reason: (kind == ProblemType::RuleViolation).then(|| reason.name()),
        }
    }

    /// As problem details, with the rule's `reason` member where there is
    /// one.
    pub fn problem(&self) -> Problem {
        let p = Problem::new(self.kind, self.detail.clone());
        match &self.reason {
            Some(reason) => p.with("reason", reason.as_str()),
            None => p,
        }
    }
}

/// A device's EPC as its tag URI (hex if it is not an SGTIN-96).
pub fn epc_name(dev: &[u8; 12]) -> String {
    medledger_pki::Epc::from_bytes(*dev).map_or_else(|_| hex::encode(dev), |e| e.to_tag_uri())
}
