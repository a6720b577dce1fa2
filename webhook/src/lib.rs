//! mcp-guard admission webhook: decides which pods get the mcp-guard sidecar and builds the JSON
//! patch that injects it, serves that decision to the API server over TLS (`serve`), and applies
//! it offline to manifests (`inject`). `serve` also refuses policy bundles that do not compile
//! ([`validate`]) and, with `--controller`, distributes policy to every namespace that needs it
//! ([`controller`]).
//!
//! The decision itself is one pure function, [`inject::mutate`]: raw pod in, [`inject::Outcome`]
//! out. Everything else is plumbing around it.

pub mod access;
pub mod annotations;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod fleet;
pub mod fleet_api;
pub mod inject;
pub mod metrics;
pub mod offline;
pub mod patch;
pub mod registry;
pub mod registry_api;
pub mod resource_uri;
pub mod selection;
pub mod server;
pub mod settings;
pub mod tls;
pub mod validate;
pub mod values;
