//! When each device and each node (collector, server) was last heard of,
//! since this server started: ingest notes every reading it stores and
//! `POST /v1/batches` every node that forwards; the portal's overview
//! shows it. Kept in memory only: a restart starts it afresh.

use std::collections::HashMap;
use std::sync::Mutex;

/// Last heard of, Unix ms, by `device:<epc hex>` or `node:<account, lower
/// case>`.
#[derive(Debug, Default)]
pub(crate) struct Heard(Mutex<HashMap<String, u64>>);

impl Heard {
    /// Device `epc` sent a reading taken at `ms`.
    pub(crate) fn device(&self, epc: &[u8; 12], ms: u64) {
        self.note(format!("device:{}", hex::encode(epc)), ms);
    }

    /// Node `account` forwarded at `ms`.
    pub(crate) fn node(&self, account: alloy::primitives::Address, ms: u64) {
        self.note(format!("node:{}", hex::encode(account)), ms);
    }

    /// When the device with EPC `epc_hex` was last heard of.
    pub(crate) fn device_ms(&self, epc_hex: &str) -> Option<u64> {
        let epc = epc_hex.trim_start_matches("0x").to_lowercase();
        self.last(&format!("device:{epc}"))
    }

    /// When the node with account `account` (0x and hex) was last heard of.
    pub(crate) fn node_ms(&self, account: &str) -> Option<u64> {
        let account = account.trim_start_matches("0x").to_lowercase();
        self.last(&format!("node:{account}"))
    }

    fn note(&self, who: String, ms: u64) {
        let mut heard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = heard.entry(who).or_insert(ms);
        *last = (*last).max(ms);
    }

    fn last(&self, who: &str) -> Option<u64> {
        let heard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        heard.get(who).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_time_is_kept_under_either_spelling() {
        let heard = Heard::default();
        let epc = [0xab; 12];
        heard.device(&epc, 20);
        heard.device(&epc, 10);
        assert_eq!(
            heard.device_ms(&format!("0x{}", hex::encode_upper(epc))),
            Some(20)
        );
        let account = alloy::primitives::Address::repeat_byte(0xcd);
        heard.node(account, 5);
        assert_eq!(heard.node_ms(&account.to_string()), Some(5));
        assert_eq!(heard.device_ms("00"), None);
    }
}
