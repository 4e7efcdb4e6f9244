//! Readings a collector holds as dead letters (the server refused their
//! batch with a 4xx): told in a later batch's `held` notices, they become
//! an alert to each patient concerned and a line for the operators.

use crate::State;
use crate::alerts::NewAlert;
use alloy::primitives::Address;
use medledger_protocol::Held;

/// Alerts the patients of `held`, told by collector `collector`; each
/// letter and patient once, however often it is told.
pub(crate) async fn alert(state: &State, collector: Address, held: Vec<Held>) {
    if held.is_empty() {
        return;
    }
    let collector = collector.to_string().to_lowercase();
    let mut letters = std::collections::BTreeSet::new();
    let alerts = held
        .into_iter()
        .map(|h| {
            if letters.insert(h.letter) {
                tracing::warn!(
                    "medledger server: collector {collector} holds dead letter {} (refused with {}: {}); its operator retries it with `medledger collector dead-letters retry`",
                    h.letter,
                    h.status,
                    h.detail
                );
            }
            state.metrics.add(
                "medledger_server_held_readings_total",
                "Readings collectors reported held as dead letters.",
                &[],
                h.readings,
            );
            NewAlert {
                actor: String::new(),
                patient: h.patient,
                kind: "readings-held",
                source: format!("held:{collector}:{}:{}", h.letter, hex::encode(h.patient)),
                flagged: true,
                why: format!(
                    "{} readings from your devices are held at a collector: the server refused their batch ({}); they are kept and sent again once an operator has seen to it",
                    h.readings, h.status
                ),
                body: serde_json::json!({
                    "collector": collector,
                    "letter": h.letter,
                    "readings": h.readings,
                    "status": h.status,
                    "detail": h.detail,
                }),
            }
        })
        .collect();
    if let Err(e) = state.alerts.raise(alerts, None).await {
        tracing::warn!("medledger server: raising held-readings alerts: {e}");
    }
}
