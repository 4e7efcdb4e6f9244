//! The typed client: the deployed set behind one value, the flows other
//! crates use, and [`send`], which turns any contract call into a mined
//! receipt or an error that names the contract's reason.

use crate::abi::{Error, Result};
use crate::bindings::AccessLog::{self, AccessLogInstance};
use crate::bindings::AllOfRule;
use crate::bindings::AllowedTypesRule::{self, AllowedTypesRuleInstance};
use crate::bindings::Anchor::{self, AnchorInstance};
use crate::bindings::Consent::{self, ConsentInstance};
use crate::bindings::Registry::{self, RegistryInstance};
use crate::bindings::RuleManager::{self, RuleInput, RuleManagerInstance};
use crate::bindings::ValueRangeRule::{self, ValueRangeRuleInstance};
use crate::rules::{RuleReason, code_key, milli};
use crate::scope::Scope;
use crate::text::short_text;
use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::{EthereumWallet, TxSigner};
use alloy::primitives::{Address, B256, Signature, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, TransactionReceipt};
use alloy::sol_types::SolEvent;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The rule id the shipped allowed-types rule is registered under.
pub const ALLOWED_TYPES_RULE: &str = "allowed-types";
/// The rule id the shipped value-range rule is registered under.
pub const VALUE_RANGE_RULE: &str = "value-range";
/// The rule id of the shipped rule that applies both (the default for
/// devices whose certificate names it).
pub const DEFAULT_RULE: &str = "default";

/// How long [`send`] waits for a receipt.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Plausibility ranges the deployment starts with, in each type's
/// reporting unit: readings outside them are physically implausible (a
/// sensor fault or forged data), not merely abnormal.
pub const DEFAULT_RANGES: &[(&str, f64, f64)] = &[
    ("8867-4", 20.0, 300.0),
    ("59408-5", 50.0, 100.0),
    ("8310-5", 25.0, 45.0),
    ("8480-6", 40.0, 300.0),
    ("8462-4", 20.0, 200.0),
    ("9279-1", 2.0, 80.0),
    ("2339-0", 10.0, 1000.0),
    ("15074-8", 0.5, 55.0),
    ("29463-7", 0.3, 500.0),
    ("11524-6", -10.0, 10.0),
];

/// Where the contracts of one deployment live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// The Registry; everything else can be found from it.
    pub registry: Address,
    /// The RuleManager.
    pub rule_manager: Address,
    /// Consent.
    pub consent: Address,
    /// AccessLog.
    pub access_log: Address,
    /// Anchor.
    pub anchor: Address,
    /// The shipped allowed-types rule.
    pub allowed_types: Address,
    /// The shipped value-range rule.
    pub value_range: Address,
    /// The shipped rule applying both.
    pub default_rule: Address,
}

impl Addresses {
    /// Every contract of the set, for following all their events.
    pub fn all(&self) -> Vec<Address> {
        vec![
            self.registry,
            self.rule_manager,
            self.consent,
            self.access_log,
            self.anchor,
            self.allowed_types,
            self.value_range,
            self.default_rule,
        ]
    }
}

/// A staff member's role (`Registry.StaffRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// A doctor: may also break the glass.
    Doctor,
    /// A nurse.
    Nurse,
}

impl StaffRole {
    /// The contract's number for the role.
    pub fn code(self) -> u8 {
        match self {
            StaffRole::Doctor => 1,
            StaffRole::Nurse => 2,
        }
    }

    /// The role with the contract's number, if it is one (0 is no role).
    pub fn from_code(code: u8) -> Option<StaffRole> {
        match code {
            1 => Some(StaffRole::Doctor),
            2 => Some(StaffRole::Nurse),
            _ => None,
        }
    }

    /// `doctor` or `nurse`.
    pub fn name(self) -> &'static str {
        match self {
            StaffRole::Doctor => "doctor",
            StaffRole::Nurse => "nurse",
        }
    }
}

impl std::str::FromStr for StaffRole {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<StaffRole, String> {
        match s {
            "doctor" => Ok(StaffRole::Doctor),
            "nurse" => Ok(StaffRole::Nurse),
            _ => Err(format!(
                "unknown staff role {s:?} (expected doctor or nurse)"
            )),
        }
    }
}

/// Why AccessLog granted a request (`AccessLog.Basis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Basis {
    /// An assigned carer of the patient's current admission.
    Carer,
    /// A live consent grant.
    Consent,
    /// Break-glass.
    Emergency,
    /// A code this version does not know.
    Other(u8),
}

impl Basis {
    /// The Basis of an `AccessLog.Basis` code.
    pub fn from_code(code: u8) -> Basis {
        match code {
            1 => Basis::Carer,
            2 => Basis::Consent,
            3 => Basis::Emergency,
            n => Basis::Other(n),
        }
    }

    /// A stable name, e.g. `carer`.
    pub fn name(&self) -> String {
        match self {
            Basis::Carer => "carer".into(),
            Basis::Consent => "consent".into(),
            Basis::Emergency => "emergency".into(),
            Basis::Other(0) => "none".into(),
            Basis::Other(n) => format!("basis-{n}"),
        }
    }
}

/// Why AccessLog denied a request (`DENY_*` in `AccessLog.sol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum DenyReason {
    /// The requester is not active staff.
    NotStaff,
    /// No patient has this patientRef.
    UnknownPatient,
    /// The requester is an assigned carer, but the patient opted out of
    /// default carer access.
    OptedOut,
    /// Neither an assigned carer nor covered by a live consent.
    NoConsent,
    /// Break-glass by someone who is not a doctor.
    NotDoctor,
    /// A code this version does not know.
    Other(u8),
}

impl DenyReason {
    fn from_code(code: u8) -> DenyReason {
        match code {
            1 => DenyReason::NotStaff,
            2 => DenyReason::UnknownPatient,
            3 => DenyReason::OptedOut,
            4 => DenyReason::NoConsent,
            5 => DenyReason::NotDoctor,
            n => DenyReason::Other(n),
        }
    }

    /// A stable name, e.g. `no-consent`.
    pub fn name(&self) -> String {
        match self {
            DenyReason::NotStaff => "not-staff".into(),
            DenyReason::UnknownPatient => "unknown-patient".into(),
            DenyReason::OptedOut => "opted-out".into(),
            DenyReason::NoConsent => "no-consent".into(),
            DenyReason::NotDoctor => "not-doctor".into(),
            DenyReason::Other(n) => format!("reason-{n}"),
        }
    }
}

/// AccessLog's answer to one request, from the transaction's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessDecision {
    /// The request id.
    pub id: u64,
    /// Granted on this basis, or denied for this reason.
    pub outcome: std::result::Result<Basis, DenyReason>,
    /// The consent grant relied on (0 if none).
    pub grant_id: u64,
    /// Until when a granted request may be used (Unix seconds; 0 if denied).
    pub expires_at: u64,
    /// The transaction that recorded it.
    pub tx: B256,
}

impl AccessDecision {
    /// Whether access was granted.
    pub fn granted(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// A deployed set of contracts, reached through one provider.
#[derive(Debug, Clone)]
pub struct Contracts<P> {
    provider: P,
    addresses: Addresses,
}

impl<P: Provider + Clone> Contracts<P> {
    /// Deploys the whole set from the provider's account (which becomes the
    /// first admin), registers the shipped rules under
    /// [`ALLOWED_TYPES_RULE`], [`VALUE_RANGE_RULE`] and [`DEFAULT_RULE`] with
    /// [`DEFAULT_RANGES`], and records the addresses in the Registry.
    pub async fn deploy(provider: P) -> Result<Contracts<P>> {
        Contracts::deploy_set(provider, false).await
    }

    /// Deploys the set as [`Contracts::deploy`] does, with Consent open for
    /// restoring the grants of a retired chain (`Consent.restoreGrant`)
    /// until `Consent.closeRestore`; see [`crate::recover`].
    pub async fn danger_deploy_restoring(provider: P) -> Result<Contracts<P>> {
        Contracts::deploy_set(provider, true).await
    }

    async fn deploy_set(provider: P, restoring: bool) -> Result<Contracts<P>> {
        let p = || provider.clone();
        let registry = deployed(Registry::deploy_builder(p())).await?;
        let rule_manager = deployed(RuleManager::deploy_builder(p(), registry)).await?;
        let consent = deployed(Consent::deploy_builder(p(), registry, restoring)).await?;
        let access_log = deployed(AccessLog::deploy_builder(p(), registry, consent)).await?;
        let anchor = deployed(Anchor::deploy_builder(p(), registry)).await?;
        let allowed_types = deployed(AllowedTypesRule::deploy_builder(p(), rule_manager)).await?;
        let value_range = deployed(ValueRangeRule::deploy_builder(p(), rule_manager)).await?;
        let default_rule = deployed(AllOfRule::deploy_builder(
            p(),
            vec![allowed_types, value_range],
        ))
        .await?;
        let contracts = Contracts {
            provider,
            addresses: Addresses {
                registry,
                rule_manager,
                consent,
                access_log,
                anchor,
                allowed_types,
                value_range,
                default_rule,
            },
        };
        let rules = contracts.rule_manager();
        for (id, at) in [
            (ALLOWED_TYPES_RULE, allowed_types),
            (VALUE_RANGE_RULE, value_range),
            (DEFAULT_RULE, default_rule),
        ] {
            send(rules.registerRule(rule_id(id), at)).await?;
        }
        let (codes, (mins, maxs)): (Vec<_>, (Vec<_>, Vec<_>)) = DEFAULT_RANGES
            .iter()
            .map(|(code, lo, hi)| (code_key(code), (milli(*lo), milli(*hi))))
            .unzip();
        send(contracts.value_range().setRanges(codes, mins, maxs)).await?;
        send(contracts.registry().setDirectory(Registry::Directory {
            ruleManager: rule_manager,
            consent,
            accessLog: access_log,
            anchor,
        }))
        .await?;
        Ok(contracts)
    }

    /// The set whose Registry is at `registry`; the rest is read from its
    /// directory and the RuleManager's shipped rule ids.
    pub async fn at(provider: P, registry: Address) -> Result<Contracts<P>> {
        if provider.get_code_at(registry).await?.is_empty() {
            return Err(Error::NoCode(registry));
        }
        let dir = Registry::new(registry, provider.clone())
            .directory()
            .call()
            .await?;
        if dir.ruleManager.is_zero() {
            return Err(Error::Unexpected(format!(
                "the Registry at {registry} has no directory (not deployed by `Contracts::deploy`?)"
            )));
        }
        let rules = RuleManager::new(dir.ruleManager, provider.clone());
        let rule = async |id| rules.rules(rule_id(id)).call().await;
        let addresses = Addresses {
            registry,
            rule_manager: dir.ruleManager,
            consent: dir.consent,
            access_log: dir.accessLog,
            anchor: dir.anchor,
            allowed_types: rule(ALLOWED_TYPES_RULE).await?,
            value_range: rule(VALUE_RANGE_RULE).await?,
            default_rule: rule(DEFAULT_RULE).await?,
        };
        Ok(Contracts {
            provider,
            addresses,
        })
    }

    /// The same contracts through another provider (say, another signer).
    pub fn with_provider<Q: Provider + Clone>(&self, provider: Q) -> Contracts<Q> {
        Contracts {
            provider,
            addresses: self.addresses,
        }
    }

    /// Where the contracts live.
    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    /// The provider calls go through.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The chain's latest block number: whether the chain answers.
    pub async fn block_number(&self) -> Result<u64> {
        Ok(self.provider.get_block_number().await?)
    }

    /// The Registry.
    pub fn registry(&self) -> RegistryInstance<P> {
        Registry::new(self.addresses.registry, self.provider.clone())
    }

    /// The RuleManager.
    pub fn rule_manager(&self) -> RuleManagerInstance<P> {
        RuleManager::new(self.addresses.rule_manager, self.provider.clone())
    }

    /// The shipped allowed-types rule.
    pub fn allowed_types(&self) -> AllowedTypesRuleInstance<P> {
        AllowedTypesRule::new(self.addresses.allowed_types, self.provider.clone())
    }

    /// The shipped value-range rule.
    pub fn value_range(&self) -> ValueRangeRuleInstance<P> {
        ValueRangeRule::new(self.addresses.value_range, self.provider.clone())
    }

    /// Consent.
    pub fn consent(&self) -> ConsentInstance<P> {
        Consent::new(self.addresses.consent, self.provider.clone())
    }

    /// AccessLog.
    pub fn access_log(&self) -> AccessLogInstance<P> {
        AccessLog::new(self.addresses.access_log, self.provider.clone())
    }

    /// Anchor.
    pub fn anchor(&self) -> AnchorInstance<P> {
        Anchor::new(self.addresses.anchor, self.provider.clone())
    }

    /// Runs the rule contracts over a batch of readings in one call. Returns
    /// one reason per input and the rule version the answers reflect.
    pub async fn check_readings(&self, inputs: Vec<RuleInput>) -> Result<(Vec<RuleReason>, u64)> {
        let n = inputs.len();
        let out = self.rule_manager().check(inputs).call().await?;
        if out.reasons.len() != n {
            return Err(Error::Unexpected(format!(
                "RuleManager.check answered {} reasons for {n} readings",
                out.reasons.len()
            )));
        }
        let reasons = out.reasons.into_iter().map(RuleReason::from_code).collect();
        Ok((reasons, out.ver))
    }

    /// Asks AccessLog for `scope` of a patient's data for `purpose` (a
    /// PurposeOfUse code, [`crate::PURPOSES`]), signed by the provider's
    /// account, and returns the decision.
    pub async fn request_access(
        &self,
        patient_ref: B256,
        scope: Scope,
        purpose: &str,
    ) -> Result<AccessDecision> {
        let log = self.access_log();
        let call = log.requestAccess(patient_ref, scope.0, crate::purpose(purpose)?);
        decision(&send(call).await?)
    }

    /// Emergency access, justified by `justification`: only its SHA-256
    /// goes on chain (free text there would be public forever); give the
    /// text to the server afterwards (`POST /v1/justifications`), which
    /// keeps it sealed for the patient and the reviewers.
    pub async fn break_glass(
        &self,
        patient_ref: B256,
        scope: Scope,
        justification: &str,
    ) -> Result<AccessDecision> {
        let log = self.access_log();
        let hash = B256::from(medledger_protocol::reading_hash(justification.as_bytes()));
        let call = log.breakGlass(patient_ref, scope.0, hash);
        decision(&send(call).await?)
    }

    /// Annotates (or, with `correction`, corrects) a reading under request
    /// `request`: `reading_ref` is the reading's hash and `content_hash`
    /// the SHA-256 of the text, which goes to the server. Returns the
    /// annotation id.
    pub async fn annotate(
        &self,
        request: u64,
        reading_ref: B256,
        correction: bool,
        content_hash: B256,
    ) -> Result<u64> {
        let log = self.access_log();
        let kind = if correction { 2 } else { 1 };
        let receipt =
            send(log.annotate(U256::from(request), reading_ref, kind, content_hash)).await?;
        let event: AccessLog::Annotated = event(&receipt, self.addresses.access_log)?;
        to_u64(event.id)
    }

    /// Whether request `id` lets `requester` read now (granted to them,
    /// unexpired, and its basis still holds).
    pub async fn request_usable(&self, id: u64, requester: Address) -> Result<bool> {
        Ok(self
            .access_log()
            .usable(U256::from(id), requester)
            .call()
            .await?)
    }

    /// Grants consent as the patient (the provider's account); returns the
    /// grant id. `grantee` is a staff account or a staff role; `purpose` a
    /// PurposeOfUse code, or empty for any purpose.
    pub async fn grant_consent(
        &self,
        patient_ref: B256,
        grantee: Grantee,
        scope: Scope,
        purpose: &str,
        expiry: u64,
    ) -> Result<u64> {
        let (account, role) = match grantee {
            Grantee::Account(a) => (a, 0),
            Grantee::Role(r) => (Address::ZERO, r.code()),
        };
        let consent = self.consent();
        let call = consent.grant(
            patient_ref,
            account,
            role,
            scope.0,
            if purpose.trim().is_empty() {
                B256::ZERO
            } else {
                crate::purpose(purpose)?
            },
            expiry,
        );
        let receipt = send(call).await?;
        let event: Consent::ConsentGranted = event(&receipt, self.addresses.consent)?;
        to_u64(event.id)
    }

    /// Revokes a consent grant as the patient.
    pub async fn revoke_consent(&self, patient_ref: B256, id: u64) -> Result<TransactionReceipt> {
        let consent = self.consent();
        send(consent.revoke(patient_ref, U256::from(id))).await
    }

    /// Opts the patient out of (or back into) default carer access.
    pub async fn set_opt_out(
        &self,
        patient_ref: B256,
        opt_out: bool,
    ) -> Result<TransactionReceipt> {
        let consent = self.consent();
        send(consent.setOptOut(patient_ref, opt_out)).await
    }

    /// Anchors one Merkle root as a collector or server; returns its id.
    pub async fn anchor_root(
        &self,
        kind: u8,
        root: B256,
        count: u64,
        first: B256,
        last: B256,
    ) -> Result<u64> {
        let anchor = self.anchor();
        let receipt = send(anchor.anchor(kind, root, count, first, last)).await?;
        let event: Anchor::Anchored = event(&receipt, self.addresses.anchor)?;
        to_u64(event.id)
    }
}

impl<P: Provider + Clone> Contracts<P> {
    /// Anchors several roots in one transaction as a collector or server
    /// (`Anchor.anchorMany`; `inputs` must not be empty); returns their
    /// ids, in order, with the receipt.
    pub async fn anchor_many(
        &self,
        inputs: Vec<AnchorInput>,
    ) -> Result<(Vec<u64>, TransactionReceipt)> {
        let n = inputs.len();
        let receipt = send(self.anchor().anchorMany(inputs)).await?;
        let ids: Vec<u64> = receipt
            .inner
            .logs()
            .iter()
            .filter(|log| log.address() == self.addresses.anchor)
            .filter_map(|log| Anchor::Anchored::decode_log(&log.inner).ok())
            .map(|log| to_u64(log.data.id))
            .collect::<Result<_>>()?;
        if ids.len() != n {
            return Err(Error::Unexpected(format!(
                "anchoring {n} roots logged {} Anchored events",
                ids.len()
            )));
        }
        Ok((ids, receipt))
    }
}

impl<P: Provider> Contracts<P> {
    /// Every checkpoint of the patient's ledger anchored on chain (kind 3),
    /// oldest first.
    pub async fn checkpoint_anchors(&self, patient_ref: B256) -> Result<Vec<CheckpointAnchor>> {
        self.anchors_of(CHECKPOINT_KIND, Some(patient_ref)).await
    }

    /// Every erasure recorded on chain (kind 4), oldest first; `first` of
    /// each is the patientRef.
    pub async fn erasures(&self) -> Result<Vec<CheckpointAnchor>> {
        self.anchors_of(ERASURE_KIND, None).await
    }

    /// Every ledger key rotation anchored (kind 6), oldest first, by any
    /// node: keep those whose `by` is a server. `size` is the rotation's
    /// place in the key history (from 1), `root` the SHA-256 of its
    /// statement.
    pub async fn ledger_key_rotations(&self) -> Result<Vec<CheckpointAnchor>> {
        self.anchors_of(LEDGER_KEY_KIND, None).await
    }

    /// The `Anchored` events of `kind`, for one patient or all.
    async fn anchors_of(
        &self,
        kind: u8,
        patient_ref: Option<B256>,
    ) -> Result<Vec<CheckpointAnchor>> {
        let filter = self.anchors_filter(kind, patient_ref);
        let logs = crate::logs::logs_between(&self.provider, &filter, 0, None).await?;
        anchors_from(&logs)
    }
}

impl<P> Contracts<P> {
    /// The filter of the `Anchored` events of `kind`, for one patient or
    /// all ([`anchors_from`] reads them).
    pub fn anchors_filter(&self, kind: u8, patient_ref: Option<B256>) -> Filter {
        let filter = Filter::new()
            .address(self.addresses.anchor)
            .event_signature(Anchor::Anchored::SIGNATURE_HASH)
            .topic2(B256::with_last_byte(kind));
        match patient_ref {
            Some(patient_ref) => filter.topic3(patient_ref),
            None => filter,
        }
    }

    /// The filter of annotation `id`'s `Annotated` event.
    pub fn annotation_filter(&self, id: u64) -> Filter {
        Filter::new()
            .address(self.addresses.access_log)
            .event_signature(AccessLog::Annotated::SIGNATURE_HASH)
            .topic1(U256::from(id))
    }
}

/// The anchors `Anchored` logs record.
///
/// # Errors
/// When a log is not an `Anchored` event.
pub fn anchors_from(logs: &[alloy::rpc::types::Log]) -> Result<Vec<CheckpointAnchor>> {
    logs.iter()
        .map(|log| {
            let event = Anchor::Anchored::decode_log(&log.inner)
                .map_err(|e| Error::Unexpected(format!("an Anchored log: {e}")))?;
            Ok(CheckpointAnchor {
                patient: event.data.first,
                id: to_u64(event.data.id)?,
                by: event.data.by,
                size: event.data.count,
                root: event.data.root,
                note_hash: event.data.last,
                tx: log.transaction_hash.unwrap_or_default(),
                block: log.block_number.unwrap_or_default(),
            })
        })
        .collect()
}

/// The first annotation an `Annotated` log of `logs` records.
///
/// # Errors
/// When that log is not an `Annotated` event.
pub fn annotation_from(logs: &[alloy::rpc::types::Log]) -> Result<Option<AccessLog::Annotated>> {
    logs.first()
        .map(|log| {
            AccessLog::Annotated::decode_log(&log.inner)
                .map(|e| e.data)
                .map_err(|e| Error::Unexpected(format!("an Annotated log: {e}")))
        })
        .transpose()
}

impl<P: Provider> Contracts<P> {
    /// Annotation `id`'s `Annotated` event, if there is one.
    pub async fn annotation(&self, id: u64) -> Result<Option<AccessLog::Annotated>> {
        let filter = self.annotation_filter(id);
        let logs = crate::logs::logs_between(&self.provider, &filter, 0, None).await?;
        annotation_from(&logs)
    }
}

/// `Anchor` kind 3: a patient-ledger checkpoint.
pub const CHECKPOINT_KIND: u8 = 3;

/// `Anchor` kind 4: a patient erased (`first` = patientRef, `root` and
/// `count` the tombstone checkpoint's, `last` = SHA-256 of its note).
pub const ERASURE_KIND: u8 = 4;

/// The `Anchor` kind of a chain recovery, recorded on the new chain:
/// `root` = the hash of the retired chain's last trusted block, `count` =
/// that block's number + 1 (the blocks trusted), `first` = the retired
/// Registry's address (left-padded), `last` = the retired chain's genesis
/// hash.
pub const RECOVERY_KIND: u8 = 5;

/// The `Anchor` kind of a ledger key rotation (open to any active node, so
/// readers keep only servers' records): `root` = SHA-256 of the rotation
/// statement, `count` = its place in the key history (from 1), `first` and
/// `last` = SHA-256 of the old and the new verifier key.
pub const LEDGER_KEY_KIND: u8 = 6;

/// A patient-ledger checkpoint anchored on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointAnchor {
    /// The patientRef.
    pub patient: B256,
    /// `Anchor.record(id)`.
    pub id: u64,
    /// The server that anchored it.
    pub by: Address,
    /// Entries the checkpoint covers.
    pub size: u64,
    /// Its Merkle root.
    pub root: B256,
    /// SHA-256 of the signed checkpoint note.
    pub note_hash: B256,
    /// The anchoring transaction.
    pub tx: B256,
    /// Its block.
    pub block: u64,
}

/// One root for [`Contracts::anchor_many`] (`Anchor.Input`).
pub type AnchorInput = crate::bindings::anchor::Anchor::Input;

/// Who a consent is granted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grantee {
    /// One staff account.
    Account(Address),
    /// Every active staff member with this role.
    Role(StaffRole),
}

/// A provider that signs as `signer` over `client`, filling gas, chain id
/// and the nonce, which it reads from the node for every transaction.
///
/// alloy's default caches nonces: one transaction the node refuses (say,
/// from an account it does not permit) leaves a gap that stalls every later
/// transaction of the account. Concurrent sends from one account through
/// this provider may take the same nonce; send them one at a time.
pub fn signing_provider(
    signer: impl TxSigner<Signature> + Send + Sync + 'static,
    client: RpcClient,
) -> DynProvider {
    ProviderBuilder::new()
        .disable_recommended_fillers()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id()
        .wallet(EthereumWallet::from(signer))
        .connect_client(client)
        .erased()
}

/// Sends a contract call as a transaction and waits until it is mined. A
/// refusal (found when the node estimates gas, before anything is signed)
/// is [`Error::Reverted`] with the contract's reason by name; a mined
/// failure is [`Error::Failed`].
pub async fn send<P: Provider, D: CallDecoder>(
    call: CallBuilder<P, D>,
) -> Result<TransactionReceipt> {
    let gas = call.estimate_gas().await?;
    let pending = call.gas(gas).send().await?;
    let tx = *pending.tx_hash();
    let receipt = wait_for_receipt(pending.provider(), tx).await?;
    if !receipt.status() {
        return Err(Error::Failed(tx));
    }
    Ok(receipt)
}

/// Sends a transaction someone signed elsewhere (`raw`, EIP-2718 bytes:
/// a person's page, say) and waits for its receipt, whatever its status.
pub async fn send_raw<P: Provider>(provider: &P, raw: &[u8]) -> Result<TransactionReceipt> {
    let pending = provider.send_raw_transaction(raw).await?;
    wait_for_receipt(provider, *pending.tx_hash()).await
}

/// Polls for a receipt, every millisecond for the first 20 (a local chain
/// seals within milliseconds), then less and less often (a remote one
/// takes seconds).
async fn wait_for_receipt<P: Provider>(provider: &P, tx: B256) -> Result<TransactionReceipt> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if start.elapsed() < Duration::from_millis(20) {
            if let Some(receipt) = provider.get_transaction_receipt(tx).await? {
                return Ok(receipt);
            }
            tokio::time::sleep(pause).await;
            continue;
        }
        if let Some(receipt) = provider.get_transaction_receipt(tx).await? {
            return Ok(receipt);
        }
        if start.elapsed() > RECEIPT_TIMEOUT {
            return Err(Error::Timeout {
                tx,
                waited_ms: start.elapsed().as_millis() as u64,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

async fn deployed<P: Provider>(call: CallBuilder<P, ()>) -> Result<Address> {
    let receipt = send(call).await?;
    receipt.contract_address.ok_or_else(|| {
        Error::Unexpected(format!(
            "deployment {} has no contract address",
            receipt.transaction_hash
        ))
    })
}

fn rule_id(id: &str) -> B256 {
    short_text(id).expect("shipped rule ids are short")
}

fn to_u64(v: U256) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Unexpected(format!("id {v} does not fit in 64 bits")))
}

/// The first `E` event that `emitter` logged in `receipt`.
fn event<E: SolEvent>(receipt: &TransactionReceipt, emitter: Address) -> Result<E> {
    receipt
        .inner
        .logs()
        .iter()
        .filter(|log| log.address() == emitter)
        .find_map(|log| E::decode_log(&log.inner).ok())
        .map(|log| log.data)
        .ok_or_else(|| {
            Error::Unexpected(format!(
                "transaction {} has no {} event",
                receipt.transaction_hash,
                E::SIGNATURE
            ))
        })
}

fn decision(receipt: &TransactionReceipt) -> Result<AccessDecision> {
    let tx = receipt.transaction_hash;
    for log in receipt.inner.logs() {
        if let Ok(granted) = AccessLog::AccessGranted::decode_log(&log.inner) {
            return Ok(AccessDecision {
                id: to_u64(granted.id)?,
                outcome: Ok(Basis::from_code(granted.basis)),
                grant_id: to_u64(granted.grantId)?,
                expires_at: granted.expiresAt,
                tx,
            });
        }
        if let Ok(denied) = AccessLog::AccessDenied::decode_log(&log.inner) {
            return Ok(AccessDecision {
                id: to_u64(denied.id)?,
                outcome: Err(DenyReason::from_code(denied.reason)),
                grant_id: 0,
                expires_at: 0,
                tx,
            });
        }
    }
    Err(Error::Unexpected(format!(
        "transaction {tx} has no access decision"
    )))
}
