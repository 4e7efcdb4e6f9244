//! The texts a person signs with their chain key in the portal (protocol
//! 15): the sign-in challenge and signed off-chain requests. Formatting
//! and parsing only, shared by the server and the fuzz target `portal`;
//! the server checks signatures, times and replays.

use ring::hmac;

/// The first line of every sign-in message.
pub const SIGN_IN: &str = "medledger portal sign-in";
/// The first line of every signed request.
pub const SIGNED_REQUEST: &str = "medledger portal request";

/// The sign-in message for `portal` with nonce `random`, issued at
/// `issued_ms`, tagged with `key`: the nonce is `RANDOM-ISSUED_MS-TAG`,
/// the tag an HMAC of the rest, so that the server keeps no state for it.
pub fn challenge_message(portal: &str, random: &str, issued_ms: u64, key: &hmac::Key) -> String {
    let tag = hmac::sign(
        key,
        format!("medledger portal challenge\n{portal}\n{random}\n{issued_ms}").as_bytes(),
    );
    format!(
        "{SIGN_IN}\nportal: {portal}\nnonce: {random}-{issued_ms}-{}\nissued: {}",
        hex::encode(tag.as_ref()),
        crate::fhir::instant(issued_ms)
    )
}

/// What a signed sign-in message claims: its portal, its nonce's random
/// part and when it was issued; `None` if it is not shaped like one. It
/// is genuine only if [`challenge_message`] gives it back whole.
pub fn challenge_parts(message: &str) -> Option<(&str, &str, u64)> {
    let portal = message.lines().find_map(|l| l.strip_prefix("portal: "))?;
    let nonce = message.lines().find_map(|l| l.strip_prefix("nonce: "))?;
    let mut parts = nonce.split('-');
    let (random, issued_ms) = (parts.next()?, parts.next()?.parse::<u64>().ok()?);
    Some((portal, random, issued_ms))
}

/// Whether `nonce` may name a signed request: 16 to 64 letters, digits,
/// `-` or `_`.
pub fn valid_nonce(nonce: &str) -> bool {
    (16..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The bytes a signed request's signature covers:
/// `"medledger portal request\nportal: {PORTAL}\nnonce: {NONCE}\n{METHOD} {PATH}\n{AT_MS}\n{BODY}"`.
pub fn signed_request_text(
    portal: &str,
    nonce: &str,
    method: &str,
    path: &str,
    at_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut text =
        format!("{SIGNED_REQUEST}\nportal: {portal}\nnonce: {nonce}\n{method} {path}\n{at_ms}\n")
            .into_bytes();
    text.extend_from_slice(body);
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_challenge_reads_back_and_only_its_own_tag_passes() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        let message = challenge_message("portal.example:8444", "ab12", 1_790_000_000_000, &key);
        let (portal, random, issued) = challenge_parts(&message).unwrap();
        assert_eq!(
            (portal, random, issued),
            ("portal.example:8444", "ab12", 1_790_000_000_000)
        );
        assert_eq!(challenge_message(portal, random, issued, &key), message);
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"other");
        assert_ne!(challenge_message(portal, random, issued, &other), message);
        assert!(challenge_parts("medledger portal sign-in\nportal: x\nnonce: a-b").is_none());
        assert!(
            valid_nonce("0123456789abcdef")
                && !valid_nonce("short")
                && !valid_nonce("0123456789abcdef!")
        );
    }
}
