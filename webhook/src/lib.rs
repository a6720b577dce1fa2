//! mcp-guard admission webhook: decides which pods get the mcp-guard sidecar and builds the JSON
//! patch that injects it, serves that decision to the API server over TLS (`serve`), and applies
//! it offline to manifests (`inject`).
//!
//! The decision itself is one pure function, [`inject::mutate`]: raw pod in, [`inject::Outcome`]
//! out. Everything else is plumbing around it.

pub mod annotations;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod offline;
pub mod patch;
pub mod selection;
pub mod server;
pub mod tls;
