//! The hospital's transactions: signers and providers on the in-process
//! chain, and what an admin records in the Registry for a person, a
//! device or a device group.

use crate::device::Device;
use crate::signals;
use alloy::network::TxSigner;
use alloy::primitives::{B256, Signature};
use alloy::providers::DynProvider;
use alloy::rpc::client::RpcClient;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result};
use medledger_chain::Node;
use medledger_chain::rpc::Rpc;
use medledger_chain::rpc::transport::InProcess;
use medledger_contracts::{Contracts, code_key, epc_bytes, send, short_text, signing_provider};
use medledger_pki::Issued;

pub(crate) fn text(s: &str) -> Result<B256> {
    Ok(short_text(s)?)
}

/// The chain signer of a certificate holder.
pub fn signer(issued: &Issued) -> Result<PrivateKeySigner> {
    let account = issued
        .account
        .as_ref()
        .context("the certificate holds no chain account")?;
    Ok(PrivateKeySigner::from_signing_key(
        account.signing_key().clone(),
    ))
}

/// Records in the Registry the certificate of a person (admin, staff,
/// patient): their identity is that certificate and its account together.
pub async fn record_certificate<P: alloy::providers::Provider + Clone>(
    contracts: &Contracts<P>,
    issued: &Issued,
) -> Result<()> {
    let id = issued.identity()?;
    let account = id
        .address()
        .context("the certificate holds no chain account")?;
    send(
        contracts
            .registry()
            .setCertificate(account, B256::from(id.fingerprint)),
    )
    .await?;
    Ok(())
}

/// A provider on `node`, in process, signing as `signer`.
pub fn provider<S>(node: &Node, signer: &S) -> DynProvider
where
    S: TxSigner<Signature> + Clone + Send + Sync + 'static,
{
    signing_provider(
        signer.clone(),
        RpcClient::new(InProcess::new(Rpc::new(node.clone())), true),
    )
}

/// Lets each kind's group send its data types (the `allowed-types`
/// rule), signing as an admin.
pub async fn allow_kinds<P: alloy::providers::Provider + Clone>(
    admin: &Contracts<P>,
    kinds: &[signals::Kind],
) -> Result<()> {
    for kind in kinds {
        send(admin.allowed_types().setAllowed(
            text(kind.group)?,
            kind.codes.iter().map(|c| code_key(c)).collect(),
            true,
        ))
        .await?;
    }
    Ok(())
}

/// Registering a device is the hospital's act, not the device's: it
/// needs an admin's account on chain.
impl Device {
    /// Registers the device in `group` (as an admin), and assigns it to
    /// `patient` if given.
    pub async fn register<P: alloy::providers::Provider + Clone>(
        &self,
        admin: &Contracts<P>,
        group: &str,
        patient: Option<B256>,
    ) -> Result<()> {
        let registry = admin.registry();
        send(registry.registerDevice(
            epc_bytes(&self.epc),
            text(group)?,
            text("default")?,
            B256::from(medledger_protocol::kid_of(&self.issued.cert_der)),
        ))
        .await?;
        if let Some(patient) = patient {
            send(registry.assignDevice(epc_bytes(&self.epc), patient)).await?;
        }
        Ok(())
    }
}
