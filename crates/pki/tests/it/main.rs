//! Integration tests of the PKI: issuance, identities and mutual TLS.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod ca;
mod tls;
mod vectors;
