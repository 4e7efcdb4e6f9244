//! medledger's wire protocol: what a device sends and what it is told, what
//! collectors and servers exchange about accepted readings, and how the
//! data reads as FHIR R4: types, their encodings and their checks.
//!
//! - [`batch`]: what collectors forward to servers and the receipts: the
//!   reading hash, the CBOR [`ForwardBatch`], the patient card's digest,
//!   the server's [`CommitReply`], the device's [`Receipt`];
//! - [`catalogue`]: the data types a reading may carry, LOINC codes with
//!   their UCUM units;
//! - [`cbor`]: a strict deterministic CBOR codec (RFC 8949 §4.2.1);
//! - [`cose`]: COSE_Sign1 (RFC 9052) envelopes signed with ES256 or EdDSA
//!   through ring, many verified at once ([`verify_batch`]);
//! - `ed25519`: Ed25519 verification as RFC 8032 states it (ed25519-zebra,
//!   canonical encodings required), alone or batched with the same answer;
//! - [`fhir`]: readings, reads, consents, devices and patients as FHIR R4
//!   resources, conforming to the R4 vital-signs profiles;
//! - [`mqtt`]: the MQTT topics of readings and receipts;
//! - [`portal`]: the texts people sign in the portal (sign-in, requests);
//! - [`problem`]: RFC 9457 problem details with stable types (feature
//!   `axum`: a [`Problem`] answers as an HTTP response, for every service);
//! - [`purpose`]: the PurposeOfUse codes a read is asked for;
//! - [`reading`]: the typed [`Reading`] and its payload checks;
//! - `test_utils` (feature `test-utils`): a FHIR validator no one here
//!   wrote (`fhir-check/`), for other crates' tests.
//!
//! ```text
//!  Reading --to_cbor--> payload --SigningKey::sign--> COSE_Sign1 bytes
//!                                                         | POST /v1/readings, MQTT
//!  Reading <--verify(VerifyingKey)-- SignedReading <--decode
//!          (kid, alg, signature, payload, catalogue)
//!
//!  device --COSE_Sign1--> collector --ForwardBatch (CBOR)--> server
//!         <--Receipt (JSON)--        <--CommitReply (JSON)--
//! ```
//!
//! Feature `test-utils`: the `test_utils` module.

pub mod batch;
pub mod catalogue;
pub mod cbor;
pub mod cose;
mod ed25519;
pub mod fhir;
pub mod mqtt;
pub mod portal;
pub mod problem;
pub mod purpose;
pub mod reading;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use batch::{
    BatchError, CardSignature, CommitReply, CommitResult, CommitStatus, ForwardBatch, Forwarded,
    Held, Order, Receipt, ReceiptStatus, Refused, card_digest, reading_hash,
};
pub use catalogue::{CATALOGUE, DataType};
pub use cose::{
    Algorithm, Kid, MAX_SIGNED_READING_BYTES, ReadingError, SignedReading, SigningKey,
    VerifyingKey, kid_of, open, verify_batch,
};
pub use problem::{Problem, ProblemType};
pub use reading::{DeviceId, Observation, ObservedValue, PayloadError, Reading};

/// The time now in Unix milliseconds, as readings and receipts state it.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
