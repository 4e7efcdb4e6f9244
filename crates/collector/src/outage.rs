//! Deciding while the chain is unreachable: what the chain last said about
//! each device (its Registry binding) and about its readings (the rule
//! contracts' verdicts), kept for a bounded time and number of devices.
//!
//! Every answer from the chain updates it; while the chain cannot be
//! asked, a reading of a device the chain answered for within
//! `chain_outage_max_age_ms` is decided from it, and a reading of any
//! other device is refused `unavailable` as before. The server checks
//! every reading again against the chain, so a stale answer here can make
//! the collector accept a reading the server then refuses (the device
//! that waits is told, the patient alerted), never store one.
//!
//! A verdict is kept per device and data type as what the answers imply
//! for a range rule: the span of values allowed, the highest value found
//! below the range and the lowest found above it, or a refusal whatever
//! the value (the type not allowed, no rule). A reading inside the span
//! is allowed, one at or beyond a refused value refused with that reason,
//! and one in between allowed provisionally (the server decides). A new
//! rule set version (`RuleManager.check`'s `ver`) forgets every verdict.

use medledger_contracts::bindings::RuleManager::RuleInput;
use medledger_contracts::{Binding, RuleReason};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the chain last said, kept for `max_age` and at most `capacity`
/// devices (and as many device and data type pairs).
#[derive(Debug)]
pub(crate) struct LastKnown {
    max_age: Duration,
    capacity: usize,
    bindings: Mutex<Aging<[u8; 12], Binding>>,
    verdicts: Mutex<Verdicts>,
}

#[derive(Debug, Default)]
struct Verdicts {
    version: Option<u64>,
    by_type: Aging<([u8; 12], [u8; 16]), Span>,
}

/// What the rule contracts' answers imply for one device and data type.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    /// The values allowed, from the lowest to the highest.
    allowed: Option<(i64, i64)>,
    /// The highest value refused as below the range.
    below: Option<i64>,
    /// The lowest value refused as above the range.
    above: Option<i64>,
    /// A refusal whatever the value.
    always: Option<RuleReason>,
}

/// How a reading was decided while the chain could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Basis {
    /// From what the chain said.
    Known,
    /// Allowed, for the server to decide.
    Provisional,
}

impl LastKnown {
    pub(crate) fn new(max_age: Duration, capacity: usize) -> LastKnown {
        LastKnown {
            max_age,
            capacity: capacity.max(1),
            bindings: Mutex::new(Aging::default()),
            verdicts: Mutex::new(Verdicts::default()),
        }
    }

    /// Notes the chain's answers for these devices.
    pub(crate) fn saw_bindings(&self, bindings: &HashMap<[u8; 12], Binding>) {
        let mut known = lock(&self.bindings);
        for (epc, binding) in bindings {
            known.put(*epc, *binding, self.capacity, self.max_age);
        }
    }

    /// The bindings of `epcs` the chain gave within the age limit.
    pub(crate) fn bindings(&self, epcs: &[[u8; 12]]) -> HashMap<[u8; 12], Binding> {
        let known = lock(&self.bindings);
        epcs.iter()
            .filter_map(|e| Some((*e, *known.get(e, self.max_age)?)))
            .collect()
    }

    /// Notes the rule contracts' answers (`reasons[i]` for `inputs[i]`)
    /// under rule set `version`.
    pub(crate) fn saw_verdicts(&self, inputs: &[RuleInput], reasons: &[RuleReason], version: u64) {
        let mut verdicts = lock(&self.verdicts);
        if verdicts.version != Some(version) {
            verdicts.by_type = Aging::default();
            verdicts.version = Some(version);
        }
        for (input, reason) in inputs.iter().zip(reasons) {
            let key = (input.epc.0, input.code.0);
            let mut span = verdicts
                .by_type
                .get(&key, self.max_age)
                .copied()
                .unwrap_or_default();
            span.learn(input, *reason);
            verdicts.by_type.put(key, span, self.capacity, self.max_age);
        }
    }

    /// Reasons for `inputs` from what the chain said, and how each was
    /// found; `None` for an input whose device's binding is not known
    /// within the age limit.
    pub(crate) fn verdicts(&self, inputs: &[RuleInput]) -> Vec<Option<(RuleReason, Basis)>> {
        let bindings = lock(&self.bindings);
        let verdicts = lock(&self.verdicts);
        inputs
            .iter()
            .map(|input| {
                bindings.get(&input.epc.0, self.max_age)?;
                let span = verdicts
                    .by_type
                    .get(&(input.epc.0, input.code.0), self.max_age);
                Some(span.map_or((RuleReason::Allow, Basis::Provisional), |s| s.judge(input)))
            })
            .collect()
    }
}

impl Span {
    fn learn(&mut self, input: &RuleInput, reason: RuleReason) {
        let (min, max) = (input.min, input.max);
        match reason {
            RuleReason::Allow => {
                self.always = None;
                self.allowed = Some(match self.allowed {
                    Some((lo, hi)) => (lo.min(min), hi.max(max)),
                    None => (min, max),
                });
                self.below = self.below.filter(|b| *b < min);
                self.above = self.above.filter(|a| *a > max);
            }
            RuleReason::BelowRange => {
                self.below = Some(self.below.map_or(min, |b| b.max(min)));
                self.allowed = self
                    .allowed
                    .filter(|(_, hi)| *hi > min)
                    .map(|(lo, hi)| (lo.max(min.saturating_add(1)), hi));
            }
            RuleReason::AboveRange => {
                self.above = Some(self.above.map_or(max, |a| a.min(max)));
                self.allowed = self
                    .allowed
                    .filter(|(lo, _)| *lo < max)
                    .map(|(lo, hi)| (lo, hi.min(max.saturating_sub(1))));
            }
            // Said of the input itself, not of the rule.
            RuleReason::InvalidInput => {}
            other => {
                *self = Span {
                    always: Some(other),
                    ..Span::default()
                };
            }
        }
    }

    fn judge(&self, input: &RuleInput) -> (RuleReason, Basis) {
        let (min, max) = (input.min, input.max);
        if min > max {
            return (RuleReason::InvalidInput, Basis::Known);
        }
        if let Some(reason) = self.always {
            return (reason, Basis::Known);
        }
        if self.below.is_some_and(|b| min <= b) {
            return (RuleReason::BelowRange, Basis::Known);
        }
        if self.above.is_some_and(|a| max >= a) {
            return (RuleReason::AboveRange, Basis::Known);
        }
        match self.allowed {
            Some((lo, hi)) if lo <= min && max <= hi => (RuleReason::Allow, Basis::Known),
            _ => (RuleReason::Allow, Basis::Provisional),
        }
    }
}

/// Values by key with the time each was last given; at most `capacity`,
/// the expired going first, then the oldest.
#[derive(Debug)]
struct Aging<K, V> {
    values: HashMap<K, (V, Instant)>,
}

impl<K, V> Default for Aging<K, V> {
    fn default() -> Self {
        Aging {
            values: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Copy, V> Aging<K, V> {
    fn put(&mut self, key: K, value: V, capacity: usize, max_age: Duration) {
        if self.values.len() >= capacity && !self.values.contains_key(&key) {
            self.values.retain(|_, (_, at)| at.elapsed() <= max_age);
            if self.values.len() >= capacity {
                // Drop the oldest eighth at once, so that a full cache is
                // not scanned for every new device.
                let mut ages: Vec<(K, Instant)> =
                    self.values.iter().map(|(k, (_, at))| (*k, *at)).collect();
                ages.sort_unstable_by_key(|(_, at)| *at);
                for (k, _) in ages.iter().take((capacity / 8).max(1)) {
                    self.values.remove(k);
                }
            }
        }
        self.values.insert(key, (value, Instant::now()));
    }

    fn get(&self, key: &K, max_age: Duration) -> Option<&V> {
        self.values
            .get(key)
            .filter(|(_, at)| at.elapsed() <= max_age)
            .map(|(v, _)| v)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloy::primitives::FixedBytes;

    fn input(min: i64, max: i64) -> RuleInput {
        RuleInput {
            epc: FixedBytes([1; 12]),
            code: FixedBytes([2; 16]),
            min,
            max,
        }
    }

    fn known(max_age: Duration) -> LastKnown {
        let known = LastKnown::new(max_age, 4);
        let binding = Binding {
            registered: true,
            active: true,
            cert_fingerprint: [0; 32],
            patient: None,
            account: None,
            retired_cert: None,
        };
        known.saw_bindings(&HashMap::from([([1; 12], binding)]));
        known
    }

    #[test]
    fn range_answers_decide_values_between_and_beyond_them() {
        let known = known(Duration::from_secs(60));
        known.saw_verdicts(
            &[input(60, 60), input(90, 90), input(20, 20), input(250, 250)],
            &[
                RuleReason::Allow,
                RuleReason::Allow,
                RuleReason::BelowRange,
                RuleReason::AboveRange,
            ],
            1,
        );
        let judged = known.verdicts(&[
            input(75, 75),
            input(10, 10),
            input(300, 300),
            input(120, 120),
            input(5, 3),
        ]);
        let judged: Vec<_> = judged.into_iter().map(Option::unwrap).collect();
        assert_eq!(
            judged,
            vec![
                (RuleReason::Allow, Basis::Known),
                (RuleReason::BelowRange, Basis::Known),
                (RuleReason::AboveRange, Basis::Known),
                (RuleReason::Allow, Basis::Provisional),
                (RuleReason::InvalidInput, Basis::Known),
            ]
        );
        // A narrower range learned later wins over what was allowed.
        known.saw_verdicts(&[input(85, 85)], &[RuleReason::AboveRange], 1);
        assert_eq!(
            known.verdicts(&[input(88, 88), input(70, 70)]),
            vec![
                Some((RuleReason::AboveRange, Basis::Known)),
                Some((RuleReason::Allow, Basis::Known))
            ]
        );
        // A refusal whatever the value, then a new rule set forgets it.
        known.saw_verdicts(&[input(70, 70)], &[RuleReason::TypeNotAllowed], 1);
        assert_eq!(
            known.verdicts(&[input(70, 70)]),
            vec![Some((RuleReason::TypeNotAllowed, Basis::Known))]
        );
        known.saw_verdicts(&[], &[], 2);
        assert_eq!(
            known.verdicts(&[input(70, 70)]),
            vec![Some((RuleReason::Allow, Basis::Provisional))]
        );
    }

    #[test]
    fn unknown_or_too_old_devices_are_not_decided() {
        let known = known(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(known.verdicts(&[input(70, 70)]), vec![None]);
        assert!(known.bindings(&[[1; 12], [9; 12]]).is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut aging = Aging::default();
        for k in 0..100u32 {
            aging.put(k, k, 16, Duration::from_secs(60));
        }
        assert!(aging.values.len() <= 16);
        assert_eq!(aging.get(&99, Duration::from_secs(60)), Some(&99));
    }
}
