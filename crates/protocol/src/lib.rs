//! medledger's wire protocol: what a device sends and what it is told.
//!
//! ```text
//!  Reading --to_cbor--> payload --SigningKey::sign--> COSE_Sign1 bytes
//!                                                         | POST /v1/readings
//!  Reading <--verify(VerifyingKey)-- SignedReading <--decode
//!          (kid, alg, signature, payload, catalogue)
//! ```
//!
//! - [`cbor`]: a strict deterministic CBOR codec (RFC 8949 §4.2.1);
//! - [`cose`]: COSE_Sign1 (RFC 9052) with ES256 and EdDSA through ring;
//! - [`reading`]: the typed [`Reading`] and its payload checks;
//! - [`catalogue`]: LOINC codes and their UCUM units;
//! - [`problem`]: RFC 9457 problem details with stable types;
//! - [`purpose`]: the PurposeOfUse codes a read is asked for;
//! - [`batch`]: what collectors forward to servers, and the receipts;
//! - [`fhir`]: readings, reads, consents, devices and patients as FHIR R4
//!   resources, conforming to the R4 vital-signs profiles;
//! - [`mqtt`]: the MQTT topics of readings and receipts;
//! - [`portal`]: the texts people sign in the portal (sign-in, requests).
//!
//! No feature flags.

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
