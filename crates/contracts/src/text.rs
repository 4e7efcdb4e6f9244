//! Short names on chain: UTF-8 text left-aligned in a `bytes32`, zero-padded
//! (department, room, floor, bed, device group, rule id, purpose, reason).

use alloy::primitives::{B256, FixedBytes};
use medledger_pki::Epc;

/// A name that does not fit in a `bytes32`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TextError {
    /// More than 32 bytes of UTF-8.
    #[error("{text:?} is {len} bytes long; names on chain hold at most 32 bytes of UTF-8")]
    TooLong {
        /// The text.
        text: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A NUL byte would be lost as padding.
    #[error("{0:?} contains a NUL character")]
    Nul(String),
}

/// Packs `text` into a `bytes32`; the empty text is zero.
pub fn short_text(text: &str) -> Result<B256, TextError> {
    let bytes = text.as_bytes();
    if bytes.len() > 32 {
        return Err(TextError::TooLong {
            text: text.to_owned(),
            len: bytes.len(),
        });
    }
    if bytes.contains(&0) {
        return Err(TextError::Nul(text.to_owned()));
    }
    let mut out = B256::ZERO;
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// The text in a `bytes32` written by [`short_text`]; bytes that are not
/// UTF-8 show as replacement characters.
pub fn text_of(word: B256) -> String {
    let end = word.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&word[..end]).into_owned()
}

/// An EPC as the contracts key devices (`bytes12`).
pub fn epc_bytes(epc: &Epc) -> FixedBytes<12> {
    FixedBytes(*epc.as_bytes())
}

/// An EPC as a RuleManager device binding key (left-aligned in `bytes32`).
pub fn epc_key(epc: &Epc) -> B256 {
    let mut out = B256::ZERO;
    out[..12].copy_from_slice(epc.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let word = short_text("icu-hr-monitor").expect("fits");
        assert_eq!(&word[..14], b"icu-hr-monitor");
        assert_eq!(text_of(word), "icu-hr-monitor");
        assert_eq!(short_text("").expect("fits"), B256::ZERO);
        assert_eq!(
            text_of(short_text(&"x".repeat(32)).expect("fits")),
            "x".repeat(32)
        );
        assert!(matches!(
            short_text(&"é".repeat(17)),
            Err(TextError::TooLong { len: 34, .. })
        ));
        assert_eq!(short_text("a\0b"), Err(TextError::Nul("a\0b".into())));
    }

    #[test]
    fn epc_keys() {
        let epc: Epc = "urn:epc:tag:sgtin-96:3.0614141.812345.6789"
            .parse()
            .expect("valid");
        assert_eq!(epc_bytes(&epc).0, *epc.as_bytes());
        assert_eq!(&epc_key(&epc)[..12], epc.as_bytes());
        assert!(epc_key(&epc)[12..].iter().all(|b| *b == 0));
    }
}
