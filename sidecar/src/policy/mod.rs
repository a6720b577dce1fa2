//! Rego policy: bundles compiled once and swapped atomically on reload, the input document, the
//! decisions, and the interceptor that enforces them.

pub mod bundle;
pub mod catalog;
pub mod config;
pub mod engine;
pub mod input;
pub mod interceptor;
pub mod offline;
pub mod store;
pub mod value;

pub use config::{Enforcement, PolicyConfig};
pub use interceptor::PolicyInterceptor;
pub use store::PolicyStore;

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
