//! Purposes on chain: the PurposeOfUse codes of
//! [`medledger_protocol::purpose`], as the contracts take them.

use crate::text::short_text;
use alloy::primitives::B256;
use medledger_protocol::purpose::{PURPOSES, purpose_code};

/// A purpose that is not one of [`PURPOSES`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a purpose: give a PurposeOfUse code, one of {list}",
    list = PURPOSES.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
)]
pub struct PurposeError(pub String);

/// The code `text` names (any case), as the contracts take it.
pub fn purpose(text: &str) -> Result<B256, PurposeError> {
    purpose_code(text)
        .and_then(|c| short_text(c).ok())
        .ok_or_else(|| PurposeError(text.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn purposes_are_codes_in_any_case_and_nothing_else() {
        assert_eq!(purpose("treat").unwrap(), short_text("TREAT").unwrap());
        assert_eq!(purpose(" ETREAT ").unwrap(), short_text("ETREAT").unwrap());
        let e = purpose("arrest of Bob").unwrap_err().to_string();
        assert!(e.contains("`arrest of Bob` is not a purpose"), "{e}");
        assert!(e.contains("TREAT, ETREAT"), "{e}");
    }
}
