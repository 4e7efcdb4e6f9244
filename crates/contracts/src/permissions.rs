//! The chain node's account permissioning, read from the Registry.

use crate::bindings::Registry;
use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::SolCall;
use medledger_chain::executor::{self, BlockInfo, CallRequest};
use medledger_chain::genesis::now_secs;
use medledger_chain::state::WorldState;
use medledger_chain::{Genesis, GenesisAllowlist, Permissions};

/// Gas for one `canTransact` lookup; it reads four storage slots.
const LOOKUP_GAS: u64 = 100_000;

/// Lets an account send if the genesis allowlist has it or the Registry at
/// `registry` says `canTransact`: admins, active staff, collectors and
/// servers, registered patients. (The node lets the current chain authority
/// send in any case.)
#[derive(Debug, Clone, Copy)]
pub struct RegistryPermissions {
    registry: Address,
}

impl RegistryPermissions {
    /// Permissioning by the Registry deployed at `registry`.
    pub fn new(registry: Address) -> RegistryPermissions {
        RegistryPermissions { registry }
    }
}

impl Permissions for RegistryPermissions {
    fn is_permitted(&self, state: &WorldState, genesis: &Genesis, sender: &Address) -> bool {
        if GenesisAllowlist.is_permitted(state, genesis, sender) {
            return true;
        }
        let info = BlockInfo {
            chain_id: genesis.chain_id,
            number: 0,
            timestamp: now_secs(),
            beneficiary: genesis.authority,
            gas_limit: genesis.gas_limit,
            prevrandao: B256::ZERO,
        };
        let req = CallRequest {
            from: Address::ZERO,
            to: Some(self.registry),
            gas: Some(LOOKUP_GAS),
            value: U256::ZERO,
            data: Registry::canTransactCall { account: *sender }
                .abi_encode()
                .into(),
        };
        // No Registry there (yet), or a failing one, permits nobody extra.
        executor::call(state, &info, &req)
            .ok()
            .and_then(|out| Registry::canTransactCall::abi_decode_returns(&out).ok())
            .unwrap_or(false)
    }
}
