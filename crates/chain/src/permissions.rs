//! Who may send transactions: the genesis allowlist, and the Registry
//! contract once it is deployed.

use crate::executor::{self, BlockInfo, CallRequest};
use crate::genesis::{Genesis, now_secs};
use crate::state::WorldState;
use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::SolCall;

alloy_sol_types::sol! {
    /// The Registry's answer to whether `account` may send transactions.
    function canTransact(address account) external view returns (bool);
}

/// Decides who may send transactions besides the current authority, which
/// always may. The genesis allowlist is the start; the Registry contract
/// plugs in here once it is deployed.
///
/// It runs while the node holds its head state: read `state` (for instance
/// with [`crate::executor::call`]), never call back into the [`crate::Node`], which would
/// deadlock against the miner.
pub trait Permissions: Send + Sync + 'static {
    /// Whether `sender` may send, given the chain's current state.
    fn is_permitted(&self, state: &WorldState, genesis: &Genesis, sender: &Address) -> bool;
}

/// Only the genesis allowlist (and the current authority) may send. The
/// genesis authority is not on it by being named in the genesis: once it
/// has handed over, it is an account like any other.
#[derive(Debug, Default, Clone, Copy)]
pub struct GenesisAllowlist;

impl Permissions for GenesisAllowlist {
    fn is_permitted(&self, _state: &WorldState, genesis: &Genesis, sender: &Address) -> bool {
        genesis.allow.contains(sender)
    }
}

/// Gas for one `canTransact` lookup; it reads four storage slots.
const LOOKUP_GAS: u64 = 100_000;

/// Lets an account send if the genesis allowlist has it or the Registry at
/// `registry` says `canTransact`: admins, active staff, collectors and
/// servers, registered patients. (The node lets the current chain authority
/// send in any case.) Any contract with that one function will do.
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
            data: canTransactCall { account: *sender }.abi_encode().into(),
        };
        // No Registry there (yet), or a failing one, permits nobody extra.
        executor::call(state, &info, &req)
            .ok()
            .and_then(|out| canTransactCall::abi_decode_returns(&out).ok())
            .unwrap_or(false)
    }
}
