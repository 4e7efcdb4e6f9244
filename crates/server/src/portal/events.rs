//! Chain events as the portal reads them: from the indexer, and from a
//! transaction's receipt.

use crate::State;
use crate::indexer::{IndexError, IndexedEvent, events_named};
use alloy::rpc::types::TransactionReceipt;
use medledger_contracts::decode_event;
use serde_json::{Value, json};

/// The events with one of `names`, newest first or in chain order, at
/// most `limit` of them.
pub(super) async fn indexed(
    state: &State,
    names: &[&str],
    newest_first: bool,
    limit: Option<u64>,
) -> Result<Vec<IndexedEvent>, IndexError> {
    events_named(&state.db, names, newest_first, limit).await
}

/// An event's argument `name`, as the indexer shows it.
pub(super) fn arg<'a>(e: &'a IndexedEvent, name: &str) -> &'a str {
    e.args[name].as_str().unwrap_or("")
}

/// A `bytes32` short text as the indexer shows it (quoted), as text.
pub(super) fn text_or(shown: &str) -> String {
    shown
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(shown)
        .to_owned()
}

/// A receipt's events of our contracts, decoded: `{event, ...args}`.
pub(super) fn events_of(receipt: &TransactionReceipt) -> Vec<Value> {
    receipt
        .inner
        .logs()
        .iter()
        .filter_map(|log| decode_event(&log.inner))
        .map(|e| {
            let mut v = serde_json::Map::new();
            v.insert("event".into(), json!(e.name));
            for (k, value) in e.args {
                v.insert(k, json!(text_or(&value)));
            }
            Value::Object(v)
        })
        .collect()
}
