//! Integration tests of the wire protocol.
#![allow(clippy::unwrap_used, missing_docs)]

mod cose;
mod vectors;
