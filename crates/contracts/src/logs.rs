//! Log queries in bounded block ranges. One `eth_getLogs` over a long
//! chain fails: nodes cap the range (Besu's `rpc-max-logs-range`, 5,000
//! blocks by default; ours 10,000) and time out (Besu's JSON-RPC over
//! HTTP after 30 s), and a year of 2 s blocks is 15.8 million. So every
//! query here walks its blocks [`LOG_RANGE`] at a time, from where its
//! caller knows nothing before (a persisted cursor, or block 0 for the
//! tools that keep none).

use crate::abi::{Error, Result};
use alloy::providers::Provider;
use alloy::rpc::types::{Filter, Log};

/// The most blocks one `eth_getLogs` asks for.
pub const LOG_RANGE: u64 = 5_000;

/// The logs `filter` matches in blocks `from..=to` (`to`: the head if
/// `None`), oldest first, asked [`LOG_RANGE`] blocks at a time.
///
/// # Errors
/// When the chain cannot be asked.
pub async fn logs_between<P: Provider>(
    provider: &P,
    filter: &Filter,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<Log>> {
    logs_in_steps(provider, filter, from, to, LOG_RANGE).await
}

/// [`logs_between`], asking `step` blocks at a time.
///
/// # Errors
/// When the chain cannot be asked.
pub async fn logs_in_steps<P: Provider>(
    provider: &P,
    filter: &Filter,
    from: u64,
    to: Option<u64>,
    step: u64,
) -> Result<Vec<Log>> {
    let to = match to {
        Some(to) => to,
        None => provider.get_block_number().await.map_err(Error::from)?,
    };
    let mut logs = Vec::new();
    let mut start = from;
    while start <= to {
        let end = to.min(start.saturating_add(step.max(1) - 1));
        let range = filter.clone().from_block(start).to_block(end);
        logs.extend(provider.get_logs(&range).await.map_err(Error::from)?);
        start = end + 1;
    }
    Ok(logs)
}
