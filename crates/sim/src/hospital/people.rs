//! The hospital's people and devices: patients admitted with their
//! cards, devices issued, registered and assigned, staff and admins.

use super::chain::{allow_kinds, provider, record_certificate, signer, text};
use super::{GROUP, Hospital, Patient, Staff};
use crate::device::Device;
use crate::signals;
use alloy::primitives::{B256, keccak256};
use alloy::providers::DynProvider;
use anyhow::Result;
use medledger_collector::{CardSigner, Cards, SoftwareCard, TokenCard};
use medledger_contracts::{Contracts, StaffRole, send};
use medledger_pki::token::TokenKey;
use medledger_pki::{Credentials, Issued, KeyAlg, LeafRequest, Role};
use std::sync::Arc;

/// The card of the patient certificate `card`: its key in memory, or put
/// on the PKCS#11 token `token` (a `pkcs11:` URI naming the token) for the
/// hospital's life.
pub(super) fn card_signer(card: &Issued, token: Option<&str>) -> Result<Arc<dyn CardSigner>> {
    let Some(token) = token else {
        return Ok(Arc::new(SoftwareCard::new(&Credentials::from_issued(
            card,
        ))?));
    };
    let object = format!(
        "card-{}",
        hex::encode(&medledger_protocol::kid_of(&card.cert_der)[..8])
    );
    let key = TokenKey::import_p256(token, &object, &card.key_pkcs8)?;
    Ok(Arc::new(TokenCard::new(card.cert_der.clone(), key)?))
}

impl Hospital {
    /// Admits patient `id` (their patientRef is keccak256 of a salt and
    /// `id`) to `department`, room and bed, with a card of their own,
    /// which goes into `cards` (the collector at their bedside).
    pub async fn admit(
        &self,
        id: &str,
        department: &str,
        room: &str,
        bed: &str,
        cards: &Cards,
    ) -> Result<Patient> {
        let card = self.ca.issue(&LeafRequest::new(Role::Patient))?;
        let patient_ref = keccak256(format!("salt:{id}"));
        send(self.admin.registry().admit(
            patient_ref,
            signer(&card)?.address(),
            text(department)?,
            text("floor-1")?,
            text(room)?,
            text(bed)?,
            vec![],
        ))
        .await?;
        record_certificate(&self.admin, &card).await?;
        cards.insert(card_signer(&card, self.options.card_token.as_deref())?);
        Ok(Patient { patient_ref, card })
    }

    /// A device certificate with EPC serial `serial`, not registered.
    pub fn issue_device(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        self.issue_device_in(serial, GROUP, key_alg)
    }

    /// A device certificate of `group` with EPC serial `serial`.
    pub fn issue_device_in(&self, serial: u64, group: &str, key_alg: KeyAlg) -> Result<Device> {
        Device::issue(&self.ca, serial, group, key_alg)
    }

    /// A device registered but assigned to no one.
    pub async fn registered_device(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        let device = self.issue_device(serial, key_alg)?;
        device.register(&self.admin, GROUP, None).await?;
        Ok(device)
    }

    /// A P-256 device of `kind` (its group allowed its data types first,
    /// see [`Hospital::allow_kinds`]) registered and assigned to `patient`.
    pub async fn device_of(
        &self,
        serial: u64,
        kind: &signals::Kind,
        patient: B256,
    ) -> Result<Device> {
        let device = self.issue_device_in(serial, kind.group, KeyAlg::P256)?;
        device
            .register(&self.admin, kind.group, Some(patient))
            .await?;
        Ok(device)
    }

    /// Lets each kind's group send its data types (the `allowed-types`
    /// rule).
    pub async fn allow_kinds(&self, kinds: &[signals::Kind]) -> Result<()> {
        allow_kinds(&self.admin, kinds).await
    }

    /// A P-256 device registered and assigned to the patient.
    pub async fn device(&self, serial: u64) -> Result<Device> {
        self.device_with(serial, KeyAlg::P256).await
    }

    /// A device of `key_alg`, registered and assigned to the patient.
    pub async fn device_with(&self, serial: u64, key_alg: KeyAlg) -> Result<Device> {
        let device = self.issue_device(serial, key_alg)?;
        device
            .register(&self.admin, GROUP, Some(self.patient_ref))
            .await?;
        Ok(device)
    }

    /// A staff member (`Role::Doctor` or `Role::Nurse`) of cardiology with a
    /// certificate and a chain account, registered in the Registry and,
    /// with `carer`, assigned to the patient.
    pub async fn staff(&self, role: Role, carer: bool) -> Result<Staff> {
        let patients: &[B256] = if carer { &[self.patient_ref] } else { &[] };
        self.staff_for(role, "cardiology", patients).await
    }

    /// A staff member (`Role::Doctor` or `Role::Nurse`) of `department`,
    /// registered in the Registry and assigned to care for `patients`.
    pub async fn staff_for(
        &self,
        role: Role,
        department: &str,
        patients: &[B256],
    ) -> Result<Staff> {
        self.staff_named(role, department, None, patients).await
    }

    /// [`Hospital::staff_for`], with `name` as their certificate's subject
    /// (else the CA's default, their role and account).
    pub async fn staff_named(
        &self,
        role: Role,
        department: &str,
        name: Option<&str>,
        patients: &[B256],
    ) -> Result<Staff> {
        let issued = self.ca.issue(&LeafRequest {
            common_name: name.map(str::to_owned),
            ..LeafRequest::new(role)
        })?;
        let signer = signer(&issued)?;
        let code = match role {
            Role::Doctor => StaffRole::Doctor,
            _ => StaffRole::Nurse,
        };
        let registry = self.admin.registry();
        send(registry.registerStaff(signer.address(), code.code(), text(department)?)).await?;
        record_certificate(&self.admin, &issued).await?;
        for patient in patients {
            send(registry.assignCarer(*patient, signer.address())).await?;
        }
        Ok(Staff {
            contracts: self.admin.with_provider(provider(&self.node, &signer)),
            address: signer.address(),
            issued,
        })
    }

    /// An admin with a certificate of their own, added to the Registry's
    /// admins by the first one.
    pub async fn admin_person(&self) -> Result<Staff> {
        let issued = self.ca.issue(&LeafRequest::new(Role::Admin))?;
        let signer = signer(&issued)?;
        send(self.admin.registry().addAdmin(signer.address())).await?;
        record_certificate(&self.admin, &issued).await?;
        Ok(Staff {
            contracts: self.admin.with_provider(provider(&self.node, &signer)),
            address: signer.address(),
            issued,
        })
    }

    /// The contracts, signing as the patient (with the card's account).
    pub fn patient_contracts(&self) -> Result<Contracts<DynProvider>> {
        Ok(self
            .admin
            .with_provider(provider(&self.node, &signer(&self.card)?)))
    }
}
