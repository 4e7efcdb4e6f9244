//! medledger's contracts on the authority chain, seen from Rust: bindings,
//! a typed client that works over any alloy `Provider` (the embedded node
//! or anvil), and one call that deploys and wires the whole set. (The
//! chain node's permissioning by the Registry is the chain crate's
//! `RegistryPermissions`; this crate does not depend on the chain.)
//!
//! ```text
//!  Registry <── RuleManager ──> rule contracts (AllowedTypes, ValueRange, AllOf)
//!     ^   ^──── Consent <── AccessLog
//!     └──────── Anchor
//! ```
//!
//! The Solidity sources live in `contracts/src`; `contracts/compile.js`
//! builds the artifacts in `contracts/out` that the bindings are generated
//! from.

mod abi;
pub mod bindings;
mod client;
pub mod logs;
mod purpose;
pub mod recover;
mod rules;
mod scope;
mod text;
mod view;

pub use abi::{DecodedEvent, Error, Result, decode_event, decode_revert};
pub use client::{
    ALLOWED_TYPES_RULE, AccessDecision, Addresses, AnchorInput, Basis, CHECKPOINT_KIND,
    CheckpointAnchor, Contracts, DEFAULT_RANGES, DEFAULT_RULE, DenyReason, ERASURE_KIND, Grantee,
    LEDGER_KEY_KIND, RECOVERY_KIND, StaffRole, VALUE_RANGE_RULE, anchors_from, annotation_from,
    send, send_raw, signing_provider,
};
pub use medledger_protocol::purpose::{PURPOSE_SYSTEM, PURPOSES, purpose_display};
pub use purpose::{PurposeError, purpose};
pub use rules::{RuleReason, code_key, milli, rule_inputs};
pub use scope::{Scope, ScopeError};
pub use text::{TextError, epc_bytes, epc_key, short_text, text_of};
pub use view::{Binding, ChainView};
