//! MQTT topics (protocol document, "MQTT").
//!
//! A device publishes to `medledger/v1/readings/{EPC}` (24 upper-case hex
//! digits, its certificate's common name, which the broker takes as the
//! username) and asks for answers on `medledger/v1/receipts/{EPC}` or a
//! topic beneath it. Collectors share one subscription, so each reading
//! goes to one of them.

/// The readings topic of a device, before its EPC.
pub const READINGS_PREFIX: &str = "medledger/v1/readings/";

/// The receipts topic of a device, before its EPC.
pub const RECEIPTS_PREFIX: &str = "medledger/v1/receipts/";

/// The collectors' shared subscription to every device's readings.
pub const SHARED_SUBSCRIPTION: &str = "$share/medledger-collectors/medledger/v1/readings/+";

/// The topic a device publishes its readings to.
pub fn readings_topic(epc_hex: &str) -> String {
    format!("{READINGS_PREFIX}{epc_hex}")
}

/// The topic a device reads its answers from.
pub fn receipts_topic(epc_hex: &str) -> String {
    format!("{RECEIPTS_PREFIX}{epc_hex}")
}

/// Whether `topic` is `epc_hex`'s receipts topic or beneath it: the only
/// response topics a collector answers on (so that no device can have
/// another's answers sent where it reads).
pub fn is_receipts_topic_of(topic: &str, epc_hex: &str) -> bool {
    topic
        .strip_prefix(RECEIPTS_PREFIX)
        .and_then(|rest| rest.strip_prefix(epc_hex))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_answered_on_its_own_receipts_topics_only() {
        let epc = "3074257BF7194E4000001A85";
        assert!(is_receipts_topic_of(&receipts_topic(epc), epc));
        assert!(is_receipts_topic_of(
            "medledger/v1/receipts/3074257BF7194E4000001A85/boot-7",
            epc
        ));
        assert!(!is_receipts_topic_of(
            "medledger/v1/receipts/3074257BF7194E4000001A850",
            epc
        ));
        assert!(!is_receipts_topic_of(
            "medledger/v1/receipts/3074257BF7194E4000001A86",
            epc
        ));
        assert!(!is_receipts_topic_of(&readings_topic(epc), epc));
    }
}
