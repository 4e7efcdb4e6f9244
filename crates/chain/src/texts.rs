//! The short texts a chain holds: every 32-byte word of its transactions'
//! call data and of its events that is printable ASCII padded with zeros
//! (how a `bytes32` short text is written). What a privacy check looks
//! through: anything on chain is public forever.

use crate::Result;
use crate::store::Store;
use alloy_consensus::{Transaction, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use std::collections::BTreeSet;

/// The text of `word` if it is a short text of at least two characters.
fn short_text(word: &[u8]) -> Option<String> {
    let end = word.iter().position(|b| *b == 0)?;
    let text = &word[..end];
    (end >= 2
        && text.iter().all(|b| (0x20..0x7f).contains(b))
        && word[end..].iter().all(|b| *b == 0))
    .then(|| String::from_utf8_lossy(text).into_owned())
}

fn words(data: &[u8], into: &mut BTreeSet<String>) {
    into.extend(data.chunks_exact(32).filter_map(short_text));
}

/// Every short text in the call data of every transaction (after the
/// selector) and in the topics and data of every event, block 0 to head.
pub fn short_texts(store: &Store) -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    for number in 0..=store.head()?.unwrap_or(0) {
        for tx in store.body(number)?.unwrap_or_default() {
            let envelope = TxEnvelope::decode_2718(&mut tx.raw.as_ref()).map_err(|e| {
                crate::ChainError::Store {
                    what: format!("a transaction in block {number}: {e}"),
                }
            })?;
            words(envelope.input().get(4..).unwrap_or_default(), &mut found);
        }
        for receipt in store.receipts(number)?.unwrap_or_default() {
            for log in receipt.logs() {
                for topic in log.topics() {
                    words(topic.as_slice(), &mut found);
                }
                words(&log.data.data, &mut found);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_texts_are_printable_words_padded_with_zeros() {
        let mut word = [0u8; 32];
        word[..5].copy_from_slice(b"TREAT");
        assert_eq!(super::short_text(&word).as_deref(), Some("TREAT"));
        word[31] = 1;
        assert_eq!(super::short_text(&word), None, "not padded with zeros");
        let mut address = [0u8; 32];
        address[12..].fill(0x41);
        assert_eq!(super::short_text(&address), None, "an address word");
        assert_eq!(super::short_text(&[0x41; 32]), None, "no padding");
    }
}
