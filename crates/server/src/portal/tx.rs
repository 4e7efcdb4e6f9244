//! Transactions people sign in the page: the server prepares the call
//! (checked against the contract by a dry run from the person's account),
//! the page signs it, and the server relays the signed bytes.
//!
//! The server never holds the person's key, so it cannot change what is
//! signed; it refuses to relay what the signed-in account did not sign,
//! or what is not addressed to one of our contracts.

use super::events::events_of;
use crate::State;
use crate::answer::json_response;
use crate::answer::{Refused, refused, unavailable};
use crate::caller::Caller;
use crate::failure::{Doing, Failure};
use crate::subjects::patient_of;
use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Transaction, TxEnvelope};
use alloy::contract::{CallBuilder, CallDecoder};
use alloy::eips::Decodable2718;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use axum::body::Body;
use axum::extract::{Extension, State as AxState};
use axum::response::Response;
use medledger_contracts::{Scope, StaffRole, short_text};
use medledger_pki::Role;
use medledger_protocol::ProblemType;
use serde_json::{Value, json};
use std::sync::Arc;

/// Consent lasts at most this many days from the portal.
const MAX_GRANT_DAYS: u64 = 3650;

/// What a person asks to sign.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum Action {
    /// Patient: consent to an account or a staff role.
    Grant {
        grantee: Option<Address>,
        role: Option<String>,
        scope: String,
        #[serde(default)]
        purpose: String,
        days: u64,
    },
    /// Patient: revoke a grant.
    Revoke { id: u64 },
    /// Patient: refuse (or accept again) default access by assigned carers.
    OptOut { opted_out: bool },
    /// Doctor or nurse: ask for a patient's data.
    RequestAccess {
        patient: B256,
        scope: String,
        purpose: String,
    },
    /// Doctor: emergency access.
    BreakGlass {
        patient: B256,
        scope: String,
        reason: String,
    },
    /// Doctor or nurse: annotate a reading read under a request.
    Annotate {
        request: u64,
        reading: B256,
        text: String,
        #[serde(default)]
        correction: bool,
    },
    /// Admin: close a break-glass review.
    CloseReview { id: u64, outcome: String },
    /// Admin: assign a carer to a patient.
    AssignCarer { patient: B256, carer: Address },
    /// Admin: release a carer.
    ReleaseCarer { patient: B256, carer: Address },
    /// Admin: register a doctor or nurse of a department.
    RegisterStaff {
        account: Address,
        role: String,
        department: String,
    },
    /// Admin: deactivate a staff member (their assignments and requests
    /// lapse).
    DeactivateStaff { account: Address },
    /// Admin: register a device, from its certificate (PEM: the EPC, group
    /// and rule it names, and its fingerprint) or by EPC, group and rule.
    RegisterDevice {
        #[serde(default)]
        certificate: Option<String>,
        #[serde(default)]
        epc: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        rule: Option<String>,
    },
    /// Admin: admit a patient (their account signs their consents) to a
    /// department, floor, room and bed.
    Admit {
        patient: B256,
        account: Address,
        #[serde(flatten)]
        place: Place,
    },
    /// Admin: move an admitted patient, with the carers assigned after the
    /// move (none given: none).
    Transfer {
        patient: B256,
        #[serde(flatten)]
        place: Place,
        #[serde(default)]
        carers: Vec<Address>,
    },
    /// Admin: discharge a patient.
    Discharge { patient: B256 },
    /// Admin: bind a registered rule to a device (EPC), a room, a floor or
    /// a group.
    BindRule {
        scope: String,
        target: String,
        rule: String,
    },
}

/// Where a patient lies.
#[derive(Debug, serde::Deserialize)]
struct Place {
    department: String,
    floor: String,
    room: String,
    bed: String,
}

impl Place {
    fn words(&self) -> Result<[B256; 4], Refused> {
        Ok([
            word(&self.department, "department")?,
            word(&self.floor, "floor")?,
            word(&self.room, "room")?,
            word(&self.bed, "bed")?,
        ])
    }

    fn text(&self) -> String {
        format!(
            "{}, {}, {}, {}",
            self.department, self.floor, self.room, self.bed
        )
    }
}

/// A device's EPC (hex or tag URI).
fn epc_of(text: &str) -> Result<medledger_pki::Epc, Refused> {
    medledger_pki::Epc::parse(text.trim()).map_err(|e| malformed(format!("epc: {e}")))
}

/// What a device certificate (PEM) names: its EPC, group, rule id and
/// fingerprint; refused if it is another role's.
fn device_certificate(pem: &str) -> Result<(medledger_pki::Epc, String, String, B256), Refused> {
    let der = medledger_pki::files::der_blocks(pem.as_bytes(), "CERTIFICATE")
        .map_err(|e| malformed(format!("certificate: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| malformed("certificate: no PEM CERTIFICATE block"))?;
    let id = medledger_pki::Identity::from_peer_certificate(&der)
        .map_err(|e| malformed(format!("certificate: {e}")))?;
    match id.details {
        medledger_pki::Details::Device { epc, group, rule } => {
            Ok((epc, group, rule, B256::from(id.fingerprint)))
        }
        medledger_pki::Details::Account { .. } => Err(malformed(format!(
            "certificate: a {} certificate, not a device's",
            id.role.name()
        ))),
    }
}

fn malformed(detail: impl Into<String>) -> Refused {
    refused(ProblemType::Malformed, detail)
}

fn require(caller: &Caller, roles: &[Role], what: &str) -> Result<Address, Refused> {
    if !roles.contains(&caller.role) {
        return Err(refused(
            ProblemType::WrongRole,
            format!("{what} is not for a {}", caller.role),
        ));
    }
    caller
        .account
        .ok_or_else(|| refused(ProblemType::WrongRole, "the caller has no chain account"))
}

fn scope_of(text: &str) -> Result<Scope, Refused> {
    text.parse::<Scope>()
        .map_err(|e| malformed(format!("scope {text:?}: {e}")))
}

fn word(text: &str, what: &str) -> Result<B256, Refused> {
    short_text(text).map_err(|e| malformed(format!("{what}: {e}")))
}

/// A PurposeOfUse code (`TREAT`, ...), or for a grant none (any purpose).
fn purpose_code(text: &str, none_is_any: bool) -> Result<B256, Refused> {
    if none_is_any && text.trim().is_empty() {
        return Ok(B256::ZERO);
    }
    medledger_contracts::purpose(text).map_err(|e| malformed(e.to_string()))
}

/// `POST /portal/v1/prepare` with `{"action": ..., ...}`: the call to
/// sign, `{to, data, nonce, chain_id, gas, summary}`.
pub(super) async fn prepare(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Refused> {
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return Err(refused(
            ProblemType::TooLarge,
            "an action is at most 64 KiB",
        ));
    };
    let action: Action =
        serde_json::from_slice(&bytes).map_err(|e| malformed(format!("the action: {e}")))?;
    let prepared = build(&state, &caller, action).await?;
    Ok(json_response(&prepared))
}

async fn build(state: &State, caller: &Caller, action: Action) -> Result<Value, Refused> {
    let contracts = state.view.contracts();
    let patient_self = || async { patient_of(state, caller).await.map(B256::from) };
    let staff = [Role::Doctor, Role::Nurse];
    match action {
        Action::Grant {
            grantee,
            role,
            scope,
            purpose,
            days,
        } => {
            let from = require(caller, &[Role::Patient], "consent")?;
            let patient = patient_self().await?;
            let (account, role_code, whom) = match (grantee, role.as_deref()) {
                (Some(a), None | Some("")) => (a, 0, a.to_string()),
                (None, Some(r)) => {
                    let r: StaffRole = r
                        .parse()
                        .map_err(|_| malformed(format!("role {r:?}: expected doctor or nurse")))?;
                    (Address::ZERO, r.code(), format!("every {}", r.name()))
                }
                _ => return Err(malformed("grant to one grantee account or one role")),
            };
            if days == 0 || days > MAX_GRANT_DAYS {
                return Err(malformed(format!(
                    "days: 1 to {MAX_GRANT_DAYS}, not {days}"
                )));
            }
            let expiry = medledger_protocol::now_ms() / 1000 + days * 86_400;
            let scope = scope_of(&scope)?;
            let summary = format!(
                "Consent.grant: {whom} may read {scope} for {} for {days} day(s)",
                if purpose.is_empty() {
                    "any purpose".to_owned()
                } else {
                    format!("purpose {purpose:?}")
                }
            );
            let consent = contracts.consent();
            let purpose = purpose_code(&purpose, true)?;
            prepared(
                consent.grant(patient, account, role_code, scope.0, purpose, expiry),
                from,
                summary,
            )
            .await
        }
        Action::Revoke { id } => {
            let from = require(caller, &[Role::Patient], "revoking consent")?;
            let patient = patient_self().await?;
            let consent = contracts.consent();
            prepared(
                consent.revoke(patient, U256::from(id)),
                from,
                format!("Consent.revoke: grant {id}"),
            )
            .await
        }
        Action::OptOut { opted_out } => {
            let from = require(caller, &[Role::Patient], "opting out")?;
            let patient = patient_self().await?;
            let consent = contracts.consent();
            let summary = if opted_out {
                "Consent.setOptOut: assigned carers may no longer read without your consent"
            } else {
                "Consent.setOptOut: assigned carers may read again"
            };
            prepared(
                consent.setOptOut(patient, opted_out),
                from,
                summary.to_owned(),
            )
            .await
        }
        Action::RequestAccess {
            patient,
            scope,
            purpose,
        } => {
            let from = require(caller, &staff, "an access request")?;
            let scope = scope_of(&scope)?;
            let log = contracts.access_log();
            let summary =
                format!("AccessLog.requestAccess: {scope} of patient {patient} for {purpose:?}");
            prepared(
                log.requestAccess(patient, scope.0, purpose_code(&purpose, false)?),
                from,
                summary,
            )
            .await
        }
        Action::BreakGlass {
            patient,
            scope,
            reason,
        } => {
            let from = require(caller, &[Role::Doctor], "break-glass")?;
            let scope = scope_of(&scope)?;
            let log = contracts.access_log();
            let summary = format!(
                "AccessLog.breakGlass: EMERGENCY access to {scope} of patient {patient}, reason {reason:?} (always alerted and reviewed)"
            );
            if reason.trim().is_empty() {
                return Err(malformed("give the reason for emergency access"));
            }
            // Only its SHA-256 on chain; the page then gives the server the
            // text (POST /v1/justifications).
            let justification = B256::from(medledger_protocol::reading_hash(reason.as_bytes()));
            prepared(
                log.breakGlass(patient, scope.0, justification),
                from,
                summary,
            )
            .await
        }
        Action::Annotate {
            request,
            reading,
            text,
            correction,
        } => {
            let from = require(caller, &staff, "an annotation")?;
            crate::offchain_text::check_length(
                &text,
                crate::annotations::TEXT,
                crate::annotations::MAX_TEXT_BYTES,
                crate::offchain_text::Blank::Taken,
            )?;
            let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
            let content = B256::from_slice(digest.as_ref());
            let log = contracts.access_log();
            let kind = if correction { 2 } else { 1 };
            prepared(
                log.annotate(U256::from(request), reading, kind, content),
                from,
                format!(
                    "AccessLog.annotate: {} reading {reading} under request {request} (text SHA-256 {content})",
                    if correction { "correct" } else { "annotate" }
                ),
            )
            .await
        }
        Action::CloseReview { id, outcome } => {
            let from = require(caller, &[Role::Admin], "closing a review")?;
            let log = contracts.access_log();
            prepared(
                log.closeReview(U256::from(id), word(&outcome, "outcome")?),
                from,
                format!("AccessLog.closeReview: break-glass {id}, outcome {outcome:?}"),
            )
            .await
        }
        Action::AssignCarer { patient, carer } => {
            let from = require(caller, &[Role::Admin], "assigning carers")?;
            let registry = contracts.registry();
            prepared(
                registry.assignCarer(patient, carer),
                from,
                format!("Registry.assignCarer: {carer} cares for patient {patient}"),
            )
            .await
        }
        Action::ReleaseCarer { patient, carer } => {
            let from = require(caller, &[Role::Admin], "releasing carers")?;
            let registry = contracts.registry();
            prepared(
                registry.releaseCarer(patient, carer),
                from,
                format!("Registry.releaseCarer: {carer} no longer cares for patient {patient}"),
            )
            .await
        }
        Action::RegisterStaff {
            account,
            role,
            department,
        } => {
            let from = require(caller, &[Role::Admin], "registering staff")?;
            let code = match role.as_str() {
                "doctor" => StaffRole::Doctor,
                "nurse" => StaffRole::Nurse,
                other => {
                    return Err(malformed(format!("role {other:?}: doctor or nurse")));
                }
            };
            prepared(
                contracts.registry().registerStaff(
                    account,
                    code.code(),
                    word(&department, "department")?,
                ),
                from,
                format!("Registry.registerStaff: {account}, {role} of {department}"),
            )
            .await
        }
        Action::DeactivateStaff { account } => {
            let from = require(caller, &[Role::Admin], "deactivating staff")?;
            prepared(
                contracts.registry().deactivateStaff(account),
                from,
                format!(
                    "Registry.deactivateStaff: {account} (their assignments and requests lapse)"
                ),
            )
            .await
        }
        Action::RegisterDevice {
            certificate,
            epc,
            group,
            rule,
        } => {
            let from = require(caller, &[Role::Admin], "registering devices")?;
            let (epc, group, rule, fingerprint) = match (certificate, epc, group, rule) {
                (Some(pem), None, None, None) => device_certificate(&pem)?,
                (None, Some(epc), Some(group), Some(rule)) => {
                    (epc_of(&epc)?, group, rule, B256::ZERO)
                }
                _ => {
                    return Err(malformed(
                        "give the device's certificate, or its epc, group and rule",
                    ));
                }
            };
            prepared(
                contracts.registry().registerDevice(
                    medledger_contracts::epc_bytes(&epc),
                    word(&group, "group")?,
                    word(&rule, "rule")?,
                    fingerprint,
                ),
                from,
                format!(
                    "Registry.registerDevice: {} (group {group}, rule {rule})",
                    epc.to_pure_uri()
                ),
            )
            .await
        }
        Action::Admit {
            patient,
            account,
            place,
        } => {
            let from = require(caller, &[Role::Admin], "admitting patients")?;
            let [department, floor, room, bed] = place.words()?;
            prepared(
                contracts
                    .registry()
                    .admit(patient, account, department, floor, room, bed, vec![]),
                from,
                format!(
                    "Registry.admit: patient {patient} (account {account}) to {}",
                    place.text()
                ),
            )
            .await
        }
        Action::Transfer {
            patient,
            place,
            carers,
        } => {
            let from = require(caller, &[Role::Admin], "transferring patients")?;
            let [department, floor, room, bed] = place.words()?;
            prepared(
                contracts.registry().transfer(
                    patient,
                    department,
                    floor,
                    room,
                    bed,
                    carers.clone(),
                ),
                from,
                format!(
                    "Registry.transfer: patient {patient} to {}, {} carer(s)",
                    place.text(),
                    carers.len()
                ),
            )
            .await
        }
        Action::Discharge { patient } => {
            let from = require(caller, &[Role::Admin], "discharging patients")?;
            prepared(
                contracts.registry().discharge(patient),
                from,
                format!("Registry.discharge: patient {patient}"),
            )
            .await
        }
        Action::BindRule {
            scope,
            target,
            rule,
        } => {
            let from = require(caller, &[Role::Admin], "binding rules")?;
            let (code, key) = match scope.as_str() {
                "device" => (1, medledger_contracts::epc_key(&epc_of(&target)?)),
                "room" => (2, word(&target, "room")?),
                "floor" => (3, word(&target, "floor")?),
                "group" => (4, word(&target, "group")?),
                other => {
                    return Err(malformed(format!(
                        "scope {other:?}: device, room, floor or group"
                    )));
                }
            };
            prepared(
                contracts
                    .rule_manager()
                    .bind(code, key, word(&rule, "rule")?),
                from,
                format!("RuleManager.bind: rule {rule} for {scope} {target}"),
            )
            .await
        }
    }
}

/// The call as the page signs it, after a dry run from `from` that would
/// name the contract's refusal before anything is signed.
async fn prepared<P: Provider, D: CallDecoder>(
    call: CallBuilder<P, D>,
    from: Address,
    summary: String,
) -> Result<Value, Refused> {
    let call = call.from(from);
    // A revert is the contract's refusal, named; anything else is the
    // chain's failure, not the caller's.
    let gas = call
        .estimate_gas()
        .await
        .map_err(|e| match medledger_contracts::Error::from(e) {
            reverted @ medledger_contracts::Error::Reverted { .. } => {
                refused(ProblemType::ContractRefused, reverted.to_string())
            }
            other => unavailable(Failure::new("estimating a transaction's gas", other)),
        })?;
    let provider = &call.provider;
    let nonce = provider
        .get_transaction_count(from)
        .pending()
        .await
        .doing("asking the chain for a nonce")?;
    let chain_id = provider
        .get_chain_id()
        .await
        .doing("asking the chain for its id")?;
    let data = call.calldata().clone();
    let to = call
        .into_transaction_request()
        .to
        .and_then(|kind| kind.to().copied());
    Ok(json!({
        "to": to.map(|a| a.to_string()),
        "data": format!("0x{}", hex::encode(data)),
        "nonce": nonce,
        "chain_id": chain_id,
        // Headroom over the estimate: state may move before it is sealed.
        "gas": gas + gas / 4 + 10_000,
        "summary": summary,
    }))
}

/// `POST /portal/v1/transactions` with `{"raw": "0x..."}`: relays a
/// transaction the caller signed and answers with its receipt.
pub(super) async fn relay(
    AxState(state): AxState<Arc<State>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, Refused> {
    #[derive(serde::Deserialize)]
    struct Raw {
        raw: String,
    }
    let Ok(bytes) = axum::body::to_bytes(body, 256 << 10).await else {
        return Err(refused(
            ProblemType::TooLarge,
            "a transaction is at most 256 KiB",
        ));
    };
    let raw: Raw = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(format!("expected {{\"raw\": \"0x...\"}}: {e}")))?;
    let raw = hex::decode(raw.raw.trim_start_matches("0x"))
        .map_err(|_| malformed("the raw transaction is not hex"))?;
    let envelope = TxEnvelope::decode_2718_exact(raw.as_slice())
        .map_err(|e| malformed(format!("not a signed transaction: {e}")))?;
    // What the page signs (15.3): legacy, for this chain (EIP-155).
    let contracts = state.view.contracts();
    let chain_id = contracts
        .provider()
        .get_chain_id()
        .await
        .doing("asking the chain for its id")?;
    if !matches!(&envelope, TxEnvelope::Legacy(_)) || envelope.chain_id() != Some(chain_id) {
        return Err(malformed(format!(
            "the portal relays legacy transactions signed for chain {chain_id} (EIP-155) only"
        )));
    }
    let signer = envelope.recover_signer().map_err(|e| {
        refused(
            ProblemType::BadRequestSignature,
            format!("the signature: {e}"),
        )
    })?;
    if Some(signer) != caller.account {
        return Err(refused(
            ProblemType::BadRequestSignature,
            format!(
                "signed by {signer}, not by the signed-in account {}",
                caller.name
            ),
        ));
    }
    let ours = envelope
        .to()
        .is_some_and(|to| contracts.addresses().all().contains(&to));
    if !ours {
        return Err(refused(
            ProblemType::Forbidden,
            "the portal relays only calls to medledger's contracts",
        ));
    }
    let receipt = medledger_contracts::send_raw(contracts.provider(), &raw)
        .await
        .doing("relaying a transaction")?;
    let ok = receipt.status();
    Ok(json_response(&json!({
        "tx": receipt.transaction_hash.to_string(),
        "block": receipt.block_number,
        "status": if ok { "ok" } else { "reverted" },
        "events": events_of(&receipt),
        "error": (!ok).then_some("the transaction reverted: the chain changed since it was prepared; prepare it again"),
    })))
}
