//! Who is asking: a person (or node) known by the client certificate it
//! presented, or, on the portal, by a session its holder signed in to with
//! their chain key. Handlers see only this, never how it was learnt.

use alloy::primitives::Address;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use medledger_pki::https::Peer;
use medledger_pki::{ClientAuth, Identity, Role};
use std::sync::Arc;

/// The party behind a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The role: from the certificate, or from the Registry for a key.
    pub(crate) role: Role,
    /// The chain account (absent only for a certificate that names none).
    pub(crate) account: Option<Address>,
    /// For people reading logs and alerts: the account, else the
    /// certificate's subject.
    pub(crate) name: String,
    /// How the caller was identified.
    pub(crate) via: Via,
    /// The certificate behind the caller: the connection's, or the one a
    /// key session was opened with. A person is their certificate and
    /// account together: once it is revoked, the caller can do nothing.
    pub(crate) certificate: Certificate,
}

/// A verified certificate and the chain it came with.
#[derive(Debug, Clone)]
pub(crate) struct Certificate {
    pub(crate) identity: Arc<Identity>,
    /// DER, leaf first.
    pub(crate) chain: Arc<[Vec<u8>]>,
}

impl Certificate {
    /// The chain in `pem` (leaf first), if `auth` accepts it now as a
    /// handshake would (chain, validity, the current CRLs along the chain,
    /// role): how a stored certificate is checked again.
    pub(crate) fn verified_from_pem(pem: &str, auth: &ClientAuth) -> Option<Certificate> {
        let chain = medledger_pki::files::der_blocks(pem.as_bytes(), "CERTIFICATE").ok()?;
        let (leaf, intermediates) = chain.split_first()?;
        let identity = auth
            .verify_certificate(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .ok()?;
        Some(Certificate {
            identity: Arc::new(identity),
            chain: chain.into(),
        })
    }

    /// The chain as PEM, leaf first: how it is stored.
    pub(crate) fn to_pem(&self) -> String {
        self.chain
            .iter()
            .map(|der| medledger_pki::files::to_pem("CERTIFICATE", der))
            .collect()
    }

    /// Resolves once a CRL update revokes it or its issuing CA: streams
    /// end on it.
    pub(crate) async fn revoked(self, auth: Arc<ClientAuth>) {
        auth.revoked(&self.identity, &self.chain).await;
    }
}

/// How a [`Caller`] was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// By the client certificate of the connection.
    Certificate,
    /// By a portal session signed in to with the chain key.
    Key,
}

impl Via {
    /// As the portal's session JSON names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Certificate => "certificate",
            Via::Key => "key",
        }
    }
}

impl Caller {
    /// The holder of a verified client certificate.
    pub(crate) fn of_peer(peer: &Peer) -> Caller {
        let account = peer.identity.address();
        Caller {
            role: peer.identity.role,
            account,
            name: account.map_or_else(|| peer.identity.subject.clone(), |a| a.to_string()),
            via: Via::Certificate,
            certificate: Certificate {
                identity: peer.identity.clone(),
                chain: peer.chain.clone(),
            },
        }
    }
}

/// Middleware: gives every request with a [`Peer`] its [`Caller`].
pub(crate) async fn from_certificate(mut request: Request, next: Next) -> Response {
    if let Some(peer) = request.extensions().get::<Peer>() {
        let caller = Caller::of_peer(peer);
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}
