//! medledger's public-key infrastructure: who is who, by certificate.
//!
//! ```text
//!  Ca::init -> root CA -> issuing CA --issue--> leaf (role + extensions)
//!                              |                  device: epc, group, rule
//!                              |                  others: address (+ location)
//!                              +--revoke/write_crl--> CRL
//!  peer cert --ClientAuth (webpki + CRL)--> Identity::from_peer_certificate
//! ```
//!
//! - [`ca`]: the CA directory, issuance, revocation, CRLs;
//! - [`ext`]: our X.509 extensions and their DER encodings;
//! - [`epc`]: SGTIN-96 EPCs (GS1 Tag Data Standard);
//! - [`identity`]: the typed [`Identity`] of a certificate holder;
//! - [`account`]: EVM accounts for holders who sign transactions;
//! - [`tls`]: rustls server and client configurations and an acceptor;
//! - [`https`]: serving an app over mutual TLS, and a client;
//! - [`metrics`]: Prometheus counters, gauges and histograms;
//! - [`token`]: keys on PKCS#11 tokens, named by `pkcs11:` URIs.
//!
//! Feature `test-utils`: `softhsm`, SoftHSM2 tokens for tests.

pub mod account;
pub mod ca;
pub mod epc;
mod error;
pub mod ext;
pub mod files;
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
