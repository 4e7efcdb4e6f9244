//! The off-chain text of an on-chain record: an annotation or a break-glass
//! justification. The chain holds the record's author and the text's
//! SHA-256 only (free text on chain would be public forever); the author
//! then gives the text to the server, which keeps it only if the caller
//! wrote the record and the text hashes to it, sealed with the patient's
//! key (so an erasure removes it with the patient's readings).

use crate::State;
use crate::answer::{Refused, refused};
use crate::caller::Caller;
use crate::failure::Failure;
use alloy::primitives::Address;
use medledger_pki::Role;
use medledger_protocol::{ProblemType, reading_hash};

/// What the chain says of the record a text belongs to.
pub(crate) struct Record {
    /// The record, for a person: `annotation 7`, `request 3`.
    pub(crate) name: String,
    /// What the chain calls the text's hash: `contentHash`.
    pub(crate) hash_name: &'static str,
    /// Who wrote the record.
    pub(crate) author: Address,
    /// The SHA-256 of the text.
    pub(crate) hash: [u8; 32],
    /// The patient it is about.
    pub(crate) patient: [u8; 32],
}

/// The account of `caller`, who must have one of `roles` (`only` says who
/// may, e.g. "only doctors break the glass").
pub(crate) fn author(caller: &Caller, roles: &[Role], only: &str) -> Result<Address, Refused> {
    if !roles.contains(&caller.role) {
        return Err(refused(ProblemType::WrongRole, only));
    }
    caller
        .account
        .ok_or_else(|| refused(ProblemType::WrongRole, "the certificate names no account"))
}

/// Whether a text of whitespace only is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blank {
    /// It is (an annotation: the chain took its hash already).
    Taken,
    /// It is not (a justification must say something).
    Refused,
}

/// `text` is 1 to `max` bytes (`what` names it), and not blank unless
/// `blank` takes it.
pub(crate) fn check_length(
    text: &str,
    what: &str,
    max: usize,
    blank: Blank,
) -> Result<(), Refused> {
    let blank_refused = blank == Blank::Refused && text.trim().is_empty();
    if text.is_empty() || blank_refused || text.len() > max {
        return Err(refused(
            ProblemType::Malformed,
            format!("{what} is 1 to {max} bytes"),
        ));
    }
    Ok(())
}

/// Whether `text`, from `author`, is the record's: its author wrote the
/// record, and it hashes to the record's hash.
pub(crate) fn check(record: &Record, author: Address, text: &str) -> Result<(), Refused> {
    let name = &record.name;
    if record.author != author {
        return Err(refused(
            ProblemType::Forbidden,
            format!("{name} is {}'s, not {author}'s", record.author),
        ));
    }
    let digest = reading_hash(text.as_bytes());
    if digest != record.hash {
        return Err(refused(
            ProblemType::Malformed,
            format!(
                "the text hashes to {}, not to {name}'s {} 0x{}",
                hex::encode(digest),
                record.hash_name,
                hex::encode(record.hash)
            ),
        ));
    }
    Ok(())
}

/// A stored text, opened with its patient's key and checked against its
/// hash (`name` names it in a failure).
pub(crate) async fn open(
    state: &State,
    patient: &[u8; 32],
    hash: &[u8; 32],
    sealed: &[u8],
    name: impl Fn() -> String,
) -> Result<String, Failure> {
    let plain = state
        .vault
        .open(patient, hash, sealed)
        .await
        .map_err(|e| Failure::new(format!("opening {}", name()), e))?;
    Ok(String::from_utf8_lossy(&plain).into_owned())
}
