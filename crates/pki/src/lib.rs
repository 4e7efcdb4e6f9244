//! medledger's public-key infrastructure: who is who, by certificate. The
//! CA and what it issues, the typed identity of a peer, mutual TLS and
//! HTTPS between the roles, keys on PKCS#11 tokens, and what monitoring
//! reads.
//!
//! - [`account`]: EVM accounts ([`EthAccount`]) for holders who sign
//!   transactions;
//! - [`ca`]: the CA directory (root and issuing CA), issuance, revocation,
//!   CRLs, the issuing CA's rotation and retirement;
//! - [`epc`]: SGTIN-96 EPCs (GS1 Tag Data Standard);
//! - `error`: the crate's [`Error`];
//! - [`ext`]: our X.509 extensions and their DER encodings;
//! - [`files`]: PEM files, private keys and TOML configuration on disk;
//! - [`health`]: what monitoring reads without a client certificate:
//!   `/metrics`, `/livez`, and `/readyz` from a role's probes of its
//!   dependencies; plain HTTP on loopback, HTTPS elsewhere;
//! - [`https`]: serving an axum app to identified peers over mutual TLS
//!   (a connection cap, TCP_NODELAY on every accepted connection,
//!   handshake and header timeouts, a peer's connections closed when the
//!   CRL revokes it), and a client `Connection` over HTTP/2 or HTTP/1.1;
//! - [`identity`]: the typed [`Identity`] of a certificate holder, parsed
//!   once at the edge;
//! - [`metrics`]: Prometheus counters, gauges and histograms in the text
//!   format;
//! - `softhsm` (feature `test-utils`): SoftHSM2 tokens for tests;
//! - [`throttle`]: logs of what peers do wrong, limited so that a flood
//!   cannot fill the disk;
//! - [`tls`]: rustls server and client configurations and an mTLS
//!   [`Acceptor`] (the client certificate optional for the portal:
//!   [`server_config_optional_client`], `Acceptor::optional`), CRLs
//!   replaced while running;
//! - [`token`]: keys on PKCS#11 tokens named by `pkcs11:` URIs, signing
//!   P-256 and secp256k1 digests on the token; a chain account's key in a
//!   file or on a token.
//!
//! ```text
//!  Ca::init -> root CA -> issuing CA --issue--> leaf (role + extensions)
//!                              |                  device: epc, group, rule
//!                              |                  others: address (+ location)
//!                              +--revoke/write_crl--> CRL
//!  peer cert --ClientAuth (webpki + CRL)--> Identity::from_peer_certificate
//!  accept --cap--> Acceptor (handshake timeout, CRL) --> hyper, by ALPN
//!         --> app, each request carrying its Peer (Identity, chain, address)
//! ```
//!
//! Feature `test-utils`: `softhsm`, SoftHSM2 tokens for other crates' tests.

pub mod account;
pub mod ca;
pub mod epc;
mod error;
pub mod ext;
pub mod files;
mod gate;
pub mod health;
pub mod https;
pub mod identity;
pub mod metrics;
#[cfg(any(test, feature = "test-utils"))]
pub mod softhsm;
pub mod throttle;
pub mod tls;
pub mod token;

pub use account::EthAccount;
pub use ca::{Ca, CertSpec, ExtId, Issued, KeyAlg, LeafRequest, RawExtension};
pub use epc::{Epc, EpcError};
pub use error::{Error, Result};
pub use ext::{Ext, Location, Role};
pub use identity::{Details, Identity, IdentityError};
pub use tls::{
    Acceptor, ClientAuth, Credentials, Rejection, client_config, server_config,
    server_config_optional_client,
};
