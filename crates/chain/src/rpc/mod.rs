//! Ethereum JSON-RPC: request parsing and dispatch, apart from the logic
//! in [`Node`]. Served over HTTP ([`http`]) and in-process
//! as an alloy transport ([`transport`]).

pub mod http;
mod methods;
pub mod transport;

use crate::Node;
use serde_json::{Value, json};

pub use methods::Filters;

/// The largest request body served.
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
/// The most requests in one batch.
pub const MAX_BATCH: usize = 1000;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code (-32700 parse, -32600 invalid request, -32601 no such
    /// method, -32602 invalid params, -32603 internal, -32000 server,
    /// 3 execution reverted).
    pub code: i64,
    /// The message.
    pub message: String,
    /// Extra data (the revert data of a reverted call).
    pub data: Option<Value>,
}

/// The longest error message sent: what a client sent is quoted back,
/// never in full.
const MAX_MESSAGE_CHARS: usize = 512;

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        RpcError {
            code,
            message,
            data: None,
        }
    }

    pub(crate) fn invalid_params(message: impl std::fmt::Display) -> Self {
        Self::new(-32602, format!("invalid params: {message}"))
    }

    pub(crate) fn server(message: impl std::fmt::Display) -> Self {
        Self::new(-32000, message.to_string())
    }

    fn to_json(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            e["data"] = data.clone();
        }
        e
    }
}

/// The JSON-RPC service of a node: one per node, shared by its HTTP server
/// and in-process transports (they share the filters).
#[derive(Debug, Clone)]
pub struct Rpc {
    node: Node,
    filters: Filters,
}

fn response(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    }
}

impl Rpc {
    /// The service for `node`.
    pub fn new(node: Node) -> Self {
        Rpc {
            node,
            filters: Filters::default(),
        }
    }

    /// The node served.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Answers a request body (one request or a batch). `None` when there
    /// is nothing to answer (only notifications).
    pub fn handle_body(&self, body: &[u8]) -> Option<Value> {
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Some(response(
                    Value::Null,
                    Err(RpcError::new(-32700, format!("parse error: {e}"))),
                ));
            }
        };
        match request {
            Value::Array(batch) if batch.is_empty() => Some(response(
                Value::Null,
                Err(RpcError::new(-32600, "empty batch")),
            )),
            Value::Array(batch) if batch.len() > MAX_BATCH => Some(response(
                Value::Null,
                Err(RpcError::new(
                    -32600,
                    format!(
                        "batch of {} requests; the limit is {MAX_BATCH}",
                        batch.len()
                    ),
                )),
            )),
            Value::Array(batch) => {
                let answers: Vec<Value> = batch
                    .into_iter()
                    .filter_map(|r| self.handle_one(r))
                    .collect();
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            single => self.handle_one(single),
        }
    }

    fn handle_one(&self, request: Value) -> Option<Value> {
        let Value::Object(mut request) = request else {
            return Some(response(
                Value::Null,
                Err(RpcError::new(-32600, "invalid request: not an object")),
            ));
        };
        let id = request.remove("id");
        let Some(Value::String(method)) = request.remove("method") else {
            return Some(response(
                id.unwrap_or(Value::Null),
                Err(RpcError::new(-32600, "invalid request: no method")),
            ));
        };
        let params = request.remove("params").unwrap_or(Value::Array(Vec::new()));
        let result = methods::dispatch(self, &method, params);
        // A request without an id is a notification: no answer.
        id.map(|id| response(id, result))
    }
}
