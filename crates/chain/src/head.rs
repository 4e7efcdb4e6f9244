//! The head of the chain: its newest block's header and the state after it.

use crate::state::WorldState;
use alloy_consensus::Header;
use alloy_primitives::B256;

/// The newest block and the state after it.
pub(crate) struct Head {
    pub(crate) state: WorldState,
    pub(crate) header: Header,
    pub(crate) hash: B256,
}

impl Head {
    /// The head whose newest block is `header`, with `state` after it.
    pub(crate) fn new(state: WorldState, header: Header) -> Head {
        let hash = header.hash_slow();
        Head {
            state,
            header,
            hash,
        }
    }
}
