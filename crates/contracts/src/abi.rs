//! Errors of the typed client, and revert data and event logs decoded by
//! name from the contracts' JSON ABIs, for people and `--json` output.

use crate::bindings::ARTIFACTS;
use alloy::dyn_abi::{DynSolValue, ErrorExt, EventExt};
use alloy::json_abi::JsonAbi;
use alloy::primitives::{Address, B256, Bytes, Log};
use alloy::sol_types::{Panic, Revert, SolError};
use std::collections::HashMap;
use std::sync::LazyLock;

/// The client's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the contracts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The contract refused: the call reverted with `reason`.
    #[error("the contract refused: {reason}")]
    Reverted {
        /// The revert decoded, e.g. `NotAdmin(caller: 0x…)`.
        reason: String,
        /// The raw revert data.
        data: Bytes,
    },
    /// The transaction was mined but failed.
    #[error("transaction {0} was mined but failed (status 0)")]
    Failed(B256),
    /// No receipt came in time.
    #[error("no receipt for transaction {tx} after {waited_ms} ms")]
    Timeout {
        /// The transaction.
        tx: B256,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The node could not be reached or answered with an error.
    #[error("chain RPC: {0}")]
    Rpc(String),
    /// No contract where one was expected.
    #[error("no contract code at {0} (wrong address or wrong chain?)")]
    NoCode(Address),
    /// An argument cannot be put on chain as given.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] crate::text::TextError),
    /// A purpose that is not a PurposeOfUse code.
    #[error("{0}")]
    Purpose(#[from] crate::purpose::PurposeError),
    /// A receipt or answer lacked what the contract always emits.
    #[error("unexpected answer from the chain: {0}")]
    Unexpected(String),
}

impl From<alloy::contract::Error> for Error {
    fn from(e: alloy::contract::Error) -> Error {
        match e.as_revert_data() {
            Some(data) => Error::reverted(data),
            None => Error::Rpc(e.to_string()),
        }
    }
}

impl From<alloy::transports::TransportError> for Error {
    fn from(e: alloy::transports::TransportError) -> Error {
        match e.as_error_resp().and_then(|p| p.as_revert_data()) {
            Some(data) => Error::reverted(data),
            None => Error::Rpc(e.to_string()),
        }
    }
}

impl Error {
    fn reverted(data: Bytes) -> Error {
        Error::Reverted {
            reason: decode_revert(&data),
            data,
        }
    }

    /// The name of the contract error, if this is a revert with a custom
    /// error (e.g. `NotAdmin`).
    pub fn revert_name(&self) -> Option<&str> {
        match self {
            Error::Reverted { reason, .. } => Some(reason.split('(').next().unwrap_or(reason)),
            _ => None,
        }
    }
}

/// Every custom error and event of our contracts, by selector and topic.
struct Abis {
    errors: HashMap<[u8; 4], alloy::json_abi::Error>,
    events: HashMap<B256, alloy::json_abi::Event>,
}

static ABIS: LazyLock<Abis> = LazyLock::new(|| {
    let mut abis = Abis {
        errors: HashMap::new(),
        events: HashMap::new(),
    };
    for artifact in ARTIFACTS {
        let value: serde_json::Value =
            serde_json::from_str(artifact).expect("committed artifacts are JSON");
        let abi: JsonAbi =
            serde_json::from_value(value["abi"].clone()).expect("committed artifacts hold an ABI");
        for error in abi.errors() {
            abis.errors.insert(error.selector().0, error.clone());
        }
        for event in abi.events() {
            abis.events.insert(event.selector(), event.clone());
        }
    }
    abis
});

/// An event of our contracts, decoded: its name and named arguments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DecodedEvent {
    /// The emitting contract.
    pub address: Address,
    /// The event's name, e.g. `StaffRegistered`.
    pub name: String,
    /// Arguments in order, each as (name, value for people).
    pub args: Vec<(String, String)>,
}

impl std::fmt::Display for DecodedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self.args.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{}({})", self.name, args.join(", "))
    }
}

/// Decodes a log emitted by one of our contracts; `None` for anything else.
pub fn decode_event(log: &Log) -> Option<DecodedEvent> {
    let event = ABIS.events.get(log.topics().first()?)?;
    let decoded = event.decode_log(&log.data).ok()?;
    let (mut indexed, mut body) = (decoded.indexed.iter(), decoded.body.iter());
    let args = event
        .inputs
        .iter()
        .map(|param| {
            let value = if param.indexed {
                indexed.next()
            } else {
                body.next()
            };
            (param.name.clone(), value.map_or_else(String::new, show))
        })
        .collect();
    Some(DecodedEvent {
        address: log.address,
        name: event.name.clone(),
        args,
    })
}

/// Revert data in words: a custom error of our contracts with its named
/// arguments, `Error(string)`'s message, or a panic code.
pub fn decode_revert(data: &[u8]) -> String {
    if let Ok(revert) = Revert::abi_decode(data) {
        return revert.reason;
    }
    if let Ok(panic) = Panic::abi_decode(data) {
        return format!("panic {:#x}", panic.code);
    }
    let Some(selector) = data.get(..4) else {
        return if data.is_empty() {
            "reverted without a reason".into()
        } else {
            format!("unknown revert data 0x{}", alloy::hex::encode(data))
        };
    };
    let known = <[u8; 4]>::try_from(selector)
        .ok()
        .and_then(|s| ABIS.errors.get(&s));
    let Some(error) = known else {
        return format!("unknown revert data 0x{}", alloy::hex::encode(data));
    };
    match error.decode_error(data) {
        Ok(decoded) => {
            let args: Vec<String> = error
                .inputs
                .iter()
                .zip(&decoded.body)
                .map(|(param, value)| format!("{}: {}", param.name, show(value)))
                .collect();
            format!("{}({})", error.name, args.join(", "))
        }
        Err(_) => format!(
            "{} with malformed arguments 0x{}",
            error.name,
            alloy::hex::encode(data)
        ),
    }
}

/// A value for people: short text in a `bytes32` shows as text.
fn show(value: &DynSolValue) -> String {
    match value {
        DynSolValue::Address(a) => a.to_checksum(None),
        DynSolValue::FixedBytes(word, 32) => {
            let text = crate::text::text_of(*word);
            let printable = !text.is_empty()
                && text
                    .chars()
                    .all(|c| !c.is_control() && c != char::REPLACEMENT_CHARACTER)
                && word[text.len()..].iter().all(|b| *b == 0);
            if printable {
                format!("{text:?}")
            } else {
                format!("{word}")
            }
        }
        DynSolValue::FixedBytes(word, n) => format!("0x{}", alloy::hex::encode(&word[..*n])),
        DynSolValue::Uint(v, _) => v.to_string(),
        DynSolValue::Int(v, _) => v.to_string(),
        DynSolValue::Bool(b) => b.to_string(),
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) | DynSolValue::Tuple(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{Registry, RuleManager};
    use crate::text::short_text;

    #[test]
    fn custom_errors_by_name() {
        let caller = Address::repeat_byte(0xab);
        let data = Registry::NotAdmin { caller }.abi_encode();
        assert_eq!(
            decode_revert(&data),
            format!("NotAdmin(caller: {})", caller.to_checksum(None))
        );
        let data = Registry::DuplicateDevice {
            epc: [1u8; 12].into(),
        }
        .abi_encode();
        assert_eq!(
            decode_revert(&data),
            "DuplicateDevice(epc: 0x010101010101010101010101)"
        );
        let data = RuleManager::UnknownRule {
            ruleId: short_text("icu").expect("fits"),
        }
        .abi_encode();
        assert_eq!(decode_revert(&data), "UnknownRule(ruleId: \"icu\")");
    }

    #[test]
    fn events_by_name() {
        let event = Registry::StaffRegistered {
            account: Address::repeat_byte(1),
            role: 2,
            department: short_text("icu").expect("fits"),
        };
        let log = Log {
            address: Address::repeat_byte(9),
            data: alloy::sol_types::SolEvent::encode_log_data(&event),
        };
        let decoded = decode_event(&log).expect("ours");
        assert_eq!(decoded.name, "StaffRegistered");
        assert_eq!(
            decoded.to_string(),
            format!(
                "StaffRegistered(account: {}, role: 2, department: \"icu\")",
                Address::repeat_byte(1)
            )
        );
        let foreign = Log::new_unchecked(Address::ZERO, vec![B256::repeat_byte(5)], Bytes::new());
        assert_eq!(decode_event(&foreign), None);
    }

    #[test]
    fn standard_and_unknown_reverts() {
        assert_eq!(
            decode_revert(&Revert::from("too large").abi_encode()),
            "too large"
        );
        assert_eq!(
            decode_revert(
                &Panic {
                    code: alloy::primitives::U256::from(0x11)
                }
                .abi_encode()
            ),
            "panic 0x11"
        );
        assert_eq!(decode_revert(&[]), "reverted without a reason");
        assert_eq!(
            decode_revert(&[1, 2, 3, 4, 5]),
            "unknown revert data 0x0102030405"
        );
    }
}
