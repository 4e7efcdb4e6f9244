//! Shared set-up for the fuzz targets.

use medledger_chain::rpc::Rpc;
use medledger_chain::{Node, NodeConfig};
use std::sync::OnceLock;

/// A node in a temporary directory, started once per fuzzing process on a
/// runtime of its own (its miner runs there), and its JSON-RPC handler.
pub fn rpc() -> &'static Rpc {
    static RPC: OnceLock<(tempfile::TempDir, tokio::runtime::Runtime, Rpc)> = OnceLock::new();
    &RPC.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let node = {
            let _inside = runtime.enter();
            Node::start(&NodeConfig::new(dir.path())).expect("a node")
        };
        (dir, runtime, Rpc::new(node))
    })
    .2
}
