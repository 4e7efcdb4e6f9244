//! Chain recovery: the state of a retired (compromised) chain's contracts,
//! rebuilt from an indexed copy of their events up to the last trusted
//! block, and written onto a fresh deployment (`medledger chain recover`).
//!
//! ```text
//!  indexed logs (<= trusted block) --Replica::apply--> Replica (final state)
//!  Contracts::danger_deploy_restoring --> Replica::restore --> Restored (what was copied, what was not)
//! ```
//!
//! The replica is the *final* state, not a replay: a device registered,
//! assigned and released on the old chain is registered on the new one and
//! left unassigned. What is restored: admins, staff, nodes, devices (with
//! certificate and live assignment), people's certificates and revoked
//! accounts, admissions with their place and carers, discharges (the patient's account stays theirs), rules of the
//! shipped contracts with their bindings, allowed types and ranges, and
//! every live consent and opt-out. What is history and stays on the
//! retired chain: access requests, decisions, annotations and anchors.
//! Rules served by contracts of an admin's own cannot be redeployed from
//! events; they are reported in [`Restored::custom_rules`].

use crate::abi::Result;
use crate::bindings::AccessLog::AccessLogEvents;
use crate::bindings::AllowedTypesRule::AllowedTypesRuleEvents;
use crate::bindings::Anchor::AnchorEvents;
use crate::bindings::Consent::ConsentEvents;
use crate::bindings::Registry::RegistryEvents;
use crate::bindings::RuleManager::RuleManagerEvents;
use crate::bindings::ValueRangeRule::ValueRangeRuleEvents;
use crate::client::{Addresses, Contracts, send};
use alloy::primitives::{Address, B256, FixedBytes, Log};
use alloy::providers::Provider;
use alloy::sol_types::SolEventInterface;
use std::collections::{BTreeMap, BTreeSet};

/// Consents that lapse within this many seconds are not restored.
const EXPIRY_MARGIN_S: u64 = 300;

#[derive(Debug, Clone)]
struct StaffState {
    role: u8,
    department: B256,
    active: bool,
}

#[derive(Debug, Clone)]
struct NodeState {
    kind: u8,
    location: B256,
    active: bool,
}

#[derive(Debug, Clone)]
struct DeviceState {
    group: B256,
    rule_id: B256,
    cert: B256,
    active: bool,
    /// The patient and the stay it was assigned in.
    patient: Option<(B256, u64)>,
}

#[derive(Debug, Clone)]
struct PatientState {
    account: Address,
    active: bool,
    stay: u64,
    place: [B256; 4],
    carers: BTreeSet<Address>,
}

#[derive(Debug, Clone)]
struct GrantState {
    patient: B256,
    grantee: Address,
    role: u8,
    scope: alloy::primitives::U256,
    purpose: B256,
    expiry: u64,
}

/// The final state of a deployment's contracts, from their events.
#[derive(Debug, Clone)]
pub struct Replica {
    old: Addresses,
    admins: BTreeSet<Address>,
    staff: BTreeMap<Address, StaffState>,
    nodes: BTreeMap<Address, NodeState>,
    devices: BTreeMap<FixedBytes<12>, DeviceState>,
    patients: BTreeMap<B256, PatientState>,
    /// People's recorded certificates.
    certificates: BTreeMap<Address, B256>,
    /// Accounts revoked (and not given a new certificate since).
    revoked: BTreeSet<Address>,
    rules: BTreeMap<B256, Address>,
    bindings: BTreeMap<(u8, B256), B256>,
    allowed: BTreeMap<(B256, FixedBytes<16>), bool>,
    ranges: BTreeMap<FixedBytes<16>, Option<(i64, i64)>>,
    grants: BTreeMap<u64, GrantState>,
    opt_outs: BTreeMap<B256, bool>,
    access_ttl: Option<u64>,
    /// Patients whose erasure a server recorded (kind 4).
    erasures: BTreeSet<B256>,
    events: u64,
}

/// What [`Replica::restore`] wrote, and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Transactions sent.
    pub transactions: u64,
    /// Admins, staff, nodes, devices and patients (admitted or
    /// discharged) registered again.
    pub admins: usize,
    /// See `admins`.
    pub staff: usize,
    /// See `admins`.
    pub nodes: usize,
    /// See `admins`.
    pub devices: usize,
    /// See `admins`.
    pub patients: usize,
    /// Consents live at the trusted block and unexpired for five minutes
    /// more.
    pub grants: usize,
    /// Patients opted out of default carer access.
    pub opt_outs: usize,
    /// Rule bindings (device, room, floor, group).
    pub bindings: usize,
    /// (rule id, the retired chain's contract) of rules whose contract is
    /// not one of the shipped set: deploy them again and register them.
    pub custom_rules: Vec<(B256, Address)>,
    /// Bindings left out because their rule is such a custom rule
    /// (bindings to a rule id since removed are restored: they refuse).
    pub skipped_bindings: usize,
}

impl Replica {
    /// An empty replica of the set at `old` (on the retired chain).
    pub fn new(old: Addresses) -> Replica {
        Replica {
            old,
            admins: BTreeSet::new(),
            staff: BTreeMap::new(),
            nodes: BTreeMap::new(),
            devices: BTreeMap::new(),
            patients: BTreeMap::new(),
            certificates: BTreeMap::new(),
            revoked: BTreeSet::new(),
            rules: BTreeMap::new(),
            bindings: BTreeMap::new(),
            allowed: BTreeMap::new(),
            ranges: BTreeMap::new(),
            grants: BTreeMap::new(),
            opt_outs: BTreeMap::new(),
            access_ttl: None,
            erasures: BTreeSet::new(),
            events: 0,
        }
    }

    /// The patients whose erasure a server recorded on the retired chain:
    /// they stay forgotten.
    pub fn erasures(&self) -> Vec<[u8; 32]> {
        self.erasures.iter().map(|p| p.0).collect()
    }

    /// How many events were applied.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Applies one log, in chain order. Logs of other contracts, and
    /// events that change nothing restored (anchors, access requests), are
    /// passed over.
    pub fn apply(&mut self, log: &Log) -> Result<()> {
        let undecodable = |e: alloy::sol_types::Error| {
            crate::abi::Error::Unexpected(format!("an indexed log of {}: {e}", log.address))
        };
        let a = self.old;
        if log.address == a.registry {
            let event = RegistryEvents::decode_log(log).map_err(undecodable)?;
            self.registry(event.data);
        } else if log.address == a.rule_manager {
            let RuleManagerEvents::RuleChanged(e) = RuleManagerEvents::decode_log(log)
                .map_err(undecodable)?
                .data;
            match e.kind {
                1 | 2 => {
                    self.rules.insert(e.ruleId, e.rule);
                }
                3 => {
                    self.rules.remove(&e.ruleId);
                }
                4 => {
                    self.bindings.insert((e.scope, e.key), e.ruleId);
                }
                5 => {
                    self.bindings.remove(&(e.scope, e.key));
                }
                _ => {}
            }
        } else if log.address == a.allowed_types {
            let AllowedTypesRuleEvents::TypesAllowed(e) = AllowedTypesRuleEvents::decode_log(log)
                .map_err(undecodable)?
                .data;
            for code in e.codes {
                self.allowed.insert((e.group, code), e.allowed);
            }
        } else if log.address == a.value_range {
            match ValueRangeRuleEvents::decode_log(log)
                .map_err(undecodable)?
                .data
            {
                ValueRangeRuleEvents::RangeSet(e) => {
                    self.ranges.insert(e.code, Some((e.min, e.max)));
                }
                ValueRangeRuleEvents::RangeCleared(e) => {
                    self.ranges.insert(e.code, None);
                }
            }
        } else if log.address == a.consent {
            match ConsentEvents::decode_log(log).map_err(undecodable)?.data {
                ConsentEvents::ConsentGranted(e) => {
                    let id = u64::try_from(e.id).unwrap_or(u64::MAX);
                    self.grants.insert(
                        id,
                        GrantState {
                            patient: e.patientRef,
                            grantee: e.grantee,
                            role: e.role,
                            scope: e.scope,
                            purpose: e.purpose,
                            expiry: e.expiry,
                        },
                    );
                }
                ConsentEvents::ConsentRevoked(e) => {
                    self.grants.remove(&u64::try_from(e.id).unwrap_or(u64::MAX));
                }
                ConsentEvents::OptOutChanged(e) => {
                    self.opt_outs.insert(e.patientRef, e.optedOut);
                }
                _ => {}
            }
        } else if log.address == a.access_log {
            if let AccessLogEvents::AccessTtlChanged(e) =
                AccessLogEvents::decode_log(log).map_err(undecodable)?.data
            {
                self.access_ttl = Some(e.ttl);
            }
        } else if log.address == a.anchor {
            let AnchorEvents::Anchored(e) =
                AnchorEvents::decode_log(log).map_err(undecodable)?.data;
            let by_server = self.nodes.get(&e.by).is_some_and(|n| n.kind == 2);
            if e.kind == crate::client::ERASURE_KIND && by_server {
                self.erasures.insert(e.first);
            }
        } else {
            return Ok(());
        }
        self.events += 1;
        Ok(())
    }

    fn registry(&mut self, event: RegistryEvents) {
        use RegistryEvents as E;
        match event {
            E::AdminAdded(e) => {
                self.admins.insert(e.account);
            }
            E::AdminRemoved(e) => {
                self.admins.remove(&e.account);
            }
            E::StaffRegistered(e) => {
                self.staff.insert(
                    e.account,
                    StaffState {
                        role: e.role,
                        department: e.department,
                        active: true,
                    },
                );
            }
            E::StaffDeactivated(e) => {
                if let Some(s) = self.staff.get_mut(&e.account) {
                    s.active = false;
                }
                // A deactivation ends every assignment made before it.
                for p in self.patients.values_mut() {
                    p.carers.remove(&e.account);
                }
            }
            E::NodeRegistered(e) => {
                self.nodes.insert(
                    e.account,
                    NodeState {
                        kind: e.kind,
                        location: e.location,
                        active: true,
                    },
                );
            }
            E::NodeDeactivated(e) => {
                if let Some(n) = self.nodes.get_mut(&e.account) {
                    n.active = false;
                }
            }
            E::DeviceRegistered(e) => {
                self.devices.insert(
                    e.epc,
                    DeviceState {
                        group: e.group,
                        rule_id: e.ruleId,
                        cert: e.certFingerprint,
                        active: true,
                        patient: None,
                    },
                );
            }
            E::DeviceCertificateChanged(e) => {
                if let Some(d) = self.devices.get_mut(&e.epc) {
                    d.cert = e.certFingerprint;
                }
            }
            E::DeviceDeactivated(e) => {
                if let Some(d) = self.devices.get_mut(&e.epc) {
                    d.active = false;
                    d.patient = None;
                }
            }
            E::DeviceAssigned(e) => {
                let stay = self.patients.get(&e.patientRef).map_or(0, |p| p.stay);
                if let Some(d) = self.devices.get_mut(&e.epc) {
                    d.patient = Some((e.patientRef, stay));
                }
            }
            E::DeviceReleased(e) => {
                if let Some(d) = self.devices.get_mut(&e.epc) {
                    d.patient = None;
                }
            }
            E::PatientAdmitted(e) => {
                let p = self
                    .patients
                    .entry(e.patientRef)
                    .or_insert_with(|| PatientState {
                        account: e.account,
                        active: false,
                        stay: 0,
                        place: [B256::ZERO; 4],
                        carers: BTreeSet::new(),
                    });
                p.account = e.account;
                p.active = true;
                p.stay += 1;
                p.place = [e.department, e.floor, e.room, e.bed];
                p.carers.clear();
            }
            E::PatientTransferred(e) => {
                if let Some(p) = self.patients.get_mut(&e.patientRef) {
                    p.place = [e.department, e.floor, e.room, e.bed];
                    p.carers.clear();
                }
            }
            E::PatientDischarged(e) => {
                if let Some(p) = self.patients.get_mut(&e.patientRef) {
                    p.active = false;
                    p.carers.clear();
                }
            }
            E::CarerAssigned(e) => {
                if let Some(p) = self.patients.get_mut(&e.patientRef) {
                    p.carers.insert(e.carer);
                }
            }
            E::CarerReleased(e) => {
                if let Some(p) = self.patients.get_mut(&e.patientRef) {
                    p.carers.remove(&e.carer);
                }
            }
            E::CertificateRecorded(e) => {
                self.certificates.insert(e.account, e.certFingerprint);
                self.revoked.remove(&e.account);
            }
            E::AccountRevoked(e) => {
                self.certificates.remove(&e.account);
                self.revoked.insert(e.account);
            }
            E::DirectorySet(_) => {}
        }
    }

    /// Writes the replica onto `new`, a set that `me` has just deployed
    /// with [`Contracts::danger_deploy_restoring`], through `new`'s provider
    /// (signing as `me`); closes Consent's restoring at the end, and takes
    /// away `me`'s admin role if the retired chain had none for it.
    /// Consents that have expired by now are left out.
    pub async fn restore<P: Provider + Clone>(
        &self,
        new: &Contracts<P>,
        me: Address,
    ) -> Result<Restored> {
        let mut done = Restored::default();
        let registry = new.registry();
        let rules = new.rule_manager();
        let consent = new.consent();
        let count = |done: &mut Restored| done.transactions += 1;

        for admin in self.admins.iter().filter(|a| **a != me) {
            send(registry.addAdmin(*admin)).await?;
            count(&mut done);
        }
        done.admins = self.admins.len();
        for (account, s) in &self.staff {
            send(registry.registerStaff(*account, s.role, s.department)).await?;
            count(&mut done);
            if !s.active {
                send(registry.deactivateStaff(*account)).await?;
                count(&mut done);
            }
        }
        done.staff = self.staff.len();
        for (account, n) in &self.nodes {
            send(registry.registerNode(*account, n.kind, n.location)).await?;
            count(&mut done);
            if !n.active {
                send(registry.deactivateNode(*account)).await?;
                count(&mut done);
            }
        }
        done.nodes = self.nodes.len();
        for (patient, p) in &self.patients {
            let carers: Vec<Address> = if p.active {
                p.carers.iter().copied().collect()
            } else {
                Vec::new()
            };
            let [department, floor, room, bed] = p.place;
            send(registry.admit(*patient, p.account, department, floor, room, bed, carers)).await?;
            count(&mut done);
            if !p.active {
                send(registry.discharge(*patient)).await?;
                count(&mut done);
            }
        }
        done.patients = self.patients.len();
        for (epc, d) in &self.devices {
            send(registry.registerDevice(*epc, d.group, d.rule_id, d.cert)).await?;
            count(&mut done);
            let assigned = d.patient.filter(|(patient, stay)| {
                d.active
                    && self
                        .patients
                        .get(patient)
                        .is_some_and(|p| p.active && p.stay == *stay)
            });
            if let Some((patient, _)) = assigned {
                send(registry.assignDevice(*epc, patient)).await?;
                count(&mut done);
            }
            if !d.active {
                send(registry.deactivateDevice(*epc)).await?;
                count(&mut done);
            }
        }
        done.devices = self.devices.len();
        for (account, fingerprint) in &self.certificates {
            send(registry.setCertificate(*account, *fingerprint)).await?;
            count(&mut done);
        }

        // Rules: the shipped contracts map to the new set's; a custom
        // contract cannot be rebuilt from events.
        let a = new.addresses();
        let shipped = [
            (self.old.allowed_types, a.allowed_types),
            (self.old.value_range, a.value_range),
            (self.old.default_rule, a.default_rule),
        ];
        let mut new_rules: BTreeMap<B256, Address> = BTreeMap::new();
        for (id, old_at) in &self.rules {
            match shipped.iter().find(|(old, _)| old == old_at) {
                Some((_, at)) => {
                    new_rules.insert(*id, *at);
                }
                None => done.custom_rules.push((*id, *old_at)),
            }
        }
        // First free the shipped ids the retired chain removed or pointed
        // elsewhere (a contract answers to one id only), then register.
        for (id, at) in shipped_ids(new) {
            if new_rules.get(&id) != Some(&at) {
                send(rules.removeRule(id)).await?;
                count(&mut done);
            }
        }
        for (id, at) in &new_rules {
            if rules.rules(*id).call().await? != *at {
                send(rules.registerRule(*id, *at)).await?;
                count(&mut done);
            }
        }
        let custom: BTreeSet<B256> = done.custom_rules.iter().map(|(id, _)| *id).collect();
        for ((scope, key), id) in &self.bindings {
            if new_rules.contains_key(id) {
                send(rules.bind(*scope, *key, *id)).await?;
                count(&mut done);
                done.bindings += 1;
            } else if custom.contains(id) {
                done.skipped_bindings += 1;
            } else {
                // A binding to a rule id since removed: on the retired
                // chain it refuses the readings it governs (no rule), so it
                // must on the new one too. `bind` needs a registered id:
                // lend it a contract of the set, bind, then remove it.
                send(rules.registerRule(*id, a.anchor)).await?;
                send(rules.bind(*scope, *key, *id)).await?;
                send(rules.removeRule(*id)).await?;
                done.transactions += 3;
                done.bindings += 1;
            }
        }
        let mut by_group: BTreeMap<(B256, bool), Vec<FixedBytes<16>>> = BTreeMap::new();
        for ((group, code), allowed) in &self.allowed {
            by_group.entry((*group, *allowed)).or_default().push(*code);
        }
        for ((group, allowed), codes) in by_group {
            send(new.allowed_types().setAllowed(group, codes, allowed)).await?;
            count(&mut done);
        }
        let value_range = new.value_range();
        for (code, range) in &self.ranges {
            let current = value_range.ranges(*code).call().await?;
            match range {
                Some((min, max))
                    if !(current.set && current.min == *min && current.max == *max) =>
                {
                    send(value_range.setRange(*code, *min, *max)).await?;
                    count(&mut done);
                }
                None if current.set => {
                    send(value_range.clearRange(*code)).await?;
                    count(&mut done);
                }
                _ => {}
            }
        }

        let now = new
            .provider()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await?
            .map_or(0, |b| b.header.timestamp);
        for (id, g) in &self.grants {
            // A grant that would lapse while the restore runs is left out.
            if g.expiry <= now + EXPIRY_MARGIN_S || !self.patients.contains_key(&g.patient) {
                continue;
            }
            send(consent.restoreGrant(
                alloy::primitives::U256::from(*id),
                g.patient,
                g.grantee,
                g.role,
                g.scope,
                g.purpose,
                g.expiry,
            ))
            .await?;
            count(&mut done);
            done.grants += 1;
        }
        for (patient, opted) in &self.opt_outs {
            if *opted && self.patients.contains_key(patient) {
                send(consent.restoreOptOut(*patient)).await?;
                count(&mut done);
                done.opt_outs += 1;
            }
        }
        if let Some(ttl) = self.access_ttl {
            send(new.access_log().setAccessTtl(ttl)).await?;
            count(&mut done);
        }
        send(consent.closeRestore()).await?;
        count(&mut done);
        // Revocations last: revoking `me` ends its admin role too.
        for account in self.revoked.iter().filter(|a| **a != me) {
            send(registry.revokeAccount(*account)).await?;
            count(&mut done);
        }
        if self.revoked.contains(&me) {
            send(registry.revokeAccount(me)).await?;
            count(&mut done);
        } else if !self.admins.contains(&me) && !self.admins.is_empty() {
            send(registry.removeAdmin(me)).await?;
            count(&mut done);
        }
        Ok(done)
    }
}

/// The addresses of the set whose Registry is `registry`, from its logs
/// (in chain order): the Registry's last `DirectorySet`, and the first
/// contracts registered under the shipped rule ids.
pub fn addresses_from_logs(registry: Address, logs: &[Log]) -> Result<Addresses> {
    let missing = |what: &str| {
        crate::abi::Error::Unexpected(format!(
            "the indexed events of the Registry at {registry} hold no {what}"
        ))
    };
    let dir = logs
        .iter()
        .filter(|l| l.address == registry)
        .filter_map(|l| match RegistryEvents::decode_log(l).ok()?.data {
            RegistryEvents::DirectorySet(d) => Some(d),
            _ => None,
        })
        .last()
        .ok_or_else(|| missing("DirectorySet"))?;
    let first_rule = |id: &str| {
        let id = crate::text::short_text(id).expect("shipped rule ids are short");
        logs.iter()
            .filter(|l| l.address == dir.ruleManager)
            .filter_map(|l| RuleManagerEvents::decode_log(l).ok())
            .map(|l| match l.data {
                RuleManagerEvents::RuleChanged(e) => e,
            })
            .find(|e| e.kind == 1 && e.ruleId == id)
            .map(|e| e.rule)
            .ok_or_else(|| missing(&format!("registration of the rule {id}")))
    };
    Ok(Addresses {
        registry,
        rule_manager: dir.ruleManager,
        consent: dir.consent,
        access_log: dir.accessLog,
        anchor: dir.anchor,
        allowed_types: first_rule(crate::client::ALLOWED_TYPES_RULE)?,
        value_range: first_rule(crate::client::VALUE_RANGE_RULE)?,
        default_rule: first_rule(crate::client::DEFAULT_RULE)?,
    })
}

/// The shipped rule ids and where the set has them.
fn shipped_ids<P: Provider + Clone>(set: &Contracts<P>) -> Vec<(B256, Address)> {
    let a = set.addresses();
    [
        (crate::client::ALLOWED_TYPES_RULE, a.allowed_types),
        (crate::client::VALUE_RANGE_RULE, a.value_range),
        (crate::client::DEFAULT_RULE, a.default_rule),
    ]
    .into_iter()
    .map(|(id, at)| {
        (
            crate::text::short_text(id).expect("shipped rule ids are short"),
            at,
        )
    })
    .collect()
}
