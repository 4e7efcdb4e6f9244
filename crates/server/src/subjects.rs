//! Whom a request is about: the patient caller's own patientRef, the
//! patient an admin names, or the admin themselves, each refused as a
//! problem naming why.

use crate::State;
use crate::answer::{Refused, refused};
use crate::caller::Caller;
use crate::failure::Doing;
use alloy::primitives::Address;
use medledger_pki::Role;
use medledger_protocol::ProblemType;

/// The account of `caller`, who must be of `role` (`who` names it in the
/// refusal).
fn account_as(caller: &Caller, role: Role, who: &str) -> Result<Address, Refused> {
    if caller.role != role {
        return Err(refused(
            ProblemType::WrongRole,
            format!(
                "only {who} may do this; you are signed in as {}",
                caller.role
            ),
        ));
    }
    caller
        .account
        .ok_or_else(|| refused(ProblemType::WrongRole, "the certificate names no account"))
}

/// The patientRef of a patient caller, or the refusal.
pub(crate) async fn patient_of(state: &State, caller: &Caller) -> Result<[u8; 32], Refused> {
    let account = account_as(caller, Role::Patient, "the patient")?;
    let patient = state
        .view
        .contracts()
        .registry()
        .patientOfAccount(account)
        .call()
        .await
        .doing("asking the Registry for a patient")?;
    if patient.is_zero() {
        return Err(refused(
            ProblemType::Forbidden,
            format!("the Registry knows no patient with account {account}"),
        ));
    }
    Ok(patient.0)
}

/// Whose ledger a patient or an admin asks for: a patient their own; an
/// admin active in the Registry the one named by `?patient=HEX`.
pub(crate) async fn subject_of(
    state: &State,
    caller: &Caller,
    named: Option<[u8; 32]>,
) -> Result<[u8; 32], Refused> {
    match caller.role {
        Role::Admin => {}
        Role::Patient => return patient_of(state, caller).await,
        role => {
            return Err(refused(
                ProblemType::WrongRole,
                format!("only the patient or an admin may do this; you are signed in as {role}"),
            ));
        }
    }
    admin_of(state, caller).await?;
    named.ok_or_else(|| {
        refused(
            ProblemType::Malformed,
            "name the patient: ?patient=<patientRef, 64 hex digits>",
        )
    })
}

/// The account of `caller` if they are an admin active in the Registry.
pub(crate) async fn admin_of(state: &State, caller: &Caller) -> Result<Address, Refused> {
    let account = account_as(caller, Role::Admin, "an admin")?;
    let admin = state
        .view
        .contracts()
        .registry()
        .isAdmin(account)
        .call()
        .await
        .doing("asking the Registry for an admin")?;
    if !admin {
        return Err(refused(
            ProblemType::Forbidden,
            format!("{account} is not an admin in the Registry"),
        ));
    }
    Ok(account)
}

/// A patientRef in hex (with or without `0x`).
pub(crate) fn patient_ref(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text.trim_start_matches("0x"))
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}
