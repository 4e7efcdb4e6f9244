//! A cached view of device bindings, as collectors and servers need it on
//! every batch: which devices are registered and active, with which
//! certificate, reporting for which admitted patient and account.
//!
//! Bindings are cached and the cache is dropped whenever a new block holds
//! any Registry event, so the view is never more than one block behind.
//! Rule checks are not cached here: each batch asks the chain.

use crate::abi::{Error, Result};
use crate::bindings::registry::Registry::DeviceBinding;
use crate::client::Contracts;
use alloy::primitives::{Address, B256, FixedBytes};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use std::collections::HashMap;

/// Most devices asked for in one call.
const CHUNK: usize = 256;

/// What the Registry says about a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Ever registered.
    pub registered: bool,
    /// Not deactivated.
    pub active: bool,
    /// SHA-256 of the registered certificate's DER.
    pub cert_fingerprint: [u8; 32],
    /// The admitted patient it reports for, if any.
    pub patient: Option<B256>,
    /// That patient's account.
    pub account: Option<Address>,
    /// The certificate the registered one replaced, and when it was
    /// retired (block time, Unix seconds).
    pub retired_cert: Option<([u8; 32], u64)>,
}

impl Binding {
    /// Whether a reading signed at `ts_ms` (Unix ms) by the certificate
    /// with `fingerprint` counts: the registered certificate, or the one
    /// it replaced for what that one signed before its retirement (so that
    /// readings accepted before a renewal still commit). Block times are
    /// whole seconds, so the retirement's second still counts as before.
    pub fn signed_by_registered(&self, fingerprint: &[u8; 32], ts_ms: u64) -> bool {
        self.cert_fingerprint == *fingerprint
            || self.retired_cert.is_some_and(|(retired, at_s)| {
                retired == *fingerprint && ts_ms < at_s.saturating_add(1).saturating_mul(1000)
            })
    }
}

impl From<DeviceBinding> for Binding {
    fn from(b: DeviceBinding) -> Binding {
        Binding {
            registered: b.registered,
            active: b.active,
            cert_fingerprint: b.certFingerprint.0,
            patient: (b.patientRef != B256::ZERO).then_some(b.patientRef),
            account: (b.account != Address::ZERO).then_some(b.account),
            retired_cert: (b.certChangedAt != 0)
                .then_some((b.previousCertFingerprint.0, b.certChangedAt)),
        }
    }
}

#[derive(Debug, Default)]
struct Cache {
    /// The newest block whose Registry events have been seen.
    block: Option<u64>,
    devices: HashMap<[u8; 12], Binding>,
}

/// Device bindings, cached until the Registry changes.
#[derive(Debug)]
pub struct ChainView<P> {
    contracts: Contracts<P>,
    cache: tokio::sync::Mutex<Cache>,
}

impl<P: Provider + Clone> ChainView<P> {
    /// A view through `contracts`.
    pub fn new(contracts: Contracts<P>) -> ChainView<P> {
        ChainView {
            contracts,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// The contracts behind it.
    pub fn contracts(&self) -> &Contracts<P> {
        &self.contracts
    }

    /// The bindings of `epcs`, from the cache where the Registry has not
    /// changed since they were read.
    pub async fn bindings(&self, epcs: &[[u8; 12]]) -> Result<HashMap<[u8; 12], Binding>> {
        let mut cache = self.cache.lock().await;
        self.refresh(&mut cache).await?;
        let mut missing: Vec<[u8; 12]> = epcs
            .iter()
            .filter(|e| !cache.devices.contains_key(*e))
            .copied()
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(CHUNK) {
            let asked: Vec<FixedBytes<12>> = chunk.iter().map(|e| FixedBytes(*e)).collect();
            let answers = self
                .contracts
                .registry()
                .deviceBindings(asked)
                .call()
                .await?;
            if answers.len() != chunk.len() {
                return Err(Error::Unexpected(format!(
                    "Registry.deviceBindings answered {} bindings for {} devices",
                    answers.len(),
                    chunk.len()
                )));
            }
            for (epc, binding) in chunk.iter().zip(answers) {
                cache.devices.insert(*epc, binding.into());
            }
        }
        Ok(epcs
            .iter()
            .filter_map(|e| cache.devices.get(e).map(|b| (*e, *b)))
            .collect())
    }

    /// Drops the cache if a block since the last look holds a Registry
    /// event.
    async fn refresh(&self, cache: &mut Cache) -> Result<()> {
        let provider = self.contracts.provider();
        let head = provider.get_block_number().await.map_err(Error::from)?;
        match cache.block {
            Some(seen) if seen >= head => return Ok(()),
            Some(seen) => {
                // After a long outage the range can be long: bounded
                // steps, and the first event found is enough.
                let filter = Filter::new().address(self.contracts.addresses().registry);
                let mut start = seen + 1;
                while start <= head {
                    let end = head.min(start + crate::logs::LOG_RANGE - 1);
                    let range = filter.clone().from_block(start).to_block(end);
                    if !provider
                        .get_logs(&range)
                        .await
                        .map_err(Error::from)?
                        .is_empty()
                    {
                        cache.devices.clear();
                        break;
                    }
                    start = end + 1;
                }
            }
            None => cache.devices.clear(),
        }
        cache.block = Some(head);
        Ok(())
    }
}
