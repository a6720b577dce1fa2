//! The sidecar's side of policy: its flags ([`config`]), the bundle in force, watched on disk and
//! swapped atomically on reload ([`store`]), and the interceptor that enforces decisions on the
//! request path ([`interceptor`]). Compiling, the input document and deciding are the
//! `mcp-guard-policy` crate's, which the webhook shares.

pub mod config;
pub mod interceptor;
pub mod store;

pub use config::{Enforcement, PolicyConfig};
pub use interceptor::PolicyInterceptor;
pub use store::PolicyStore;
