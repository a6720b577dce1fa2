//! mcp-guard's policy engine, shared by the sidecar (which enforces) and the webhook (which
//! refuses and distributes bundles): a bundle read and hashed ([`bundle`]), compiled once and
//! evaluated ([`engine`]), the input document it decides on ([`input`], with the MCP vocabulary of
//! [`mcp`] and the server's tool definitions from [`catalog`] and JSON converted by [`value`]),
//! what a bundle can tell of its input ([`reads`], [`terms`], [`classes`]) and the decisions it remembers for
//! the inputs it cannot tell apart ([`memo`], for a bundle whose every call is deterministic:
//! [`builtins`]), and the offline `policy test` / `policy eval` commands ([`offline`]). It knows
//! nothing of HTTP, tokens or the proxy: the sidecar hands it plain values.

pub mod builtins;
pub mod bundle;
pub mod catalog;
pub mod classes;
pub mod engine;
pub mod input;
pub mod limits;
pub mod mcp;
pub mod memo;
pub mod nesting;
pub mod offline;
pub mod param_headers;
pub mod reads;
pub mod terms;
pub mod value;

use std::path::PathBuf;

/// Why a policy could not be loaded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error("policy evaluation failed: {0}")]
    Eval(String),
}
