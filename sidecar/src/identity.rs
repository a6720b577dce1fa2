//! Who is calling: the verified identity of a request, as the interception point, policy and
//! audit see it. Filled in by authentication; `None` in a [`crate::intercept::Context`] means an
//! anonymous caller.

use serde::Serialize;
use serde_json::{Map, Value};

/// A caller whose bearer token was verified.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Identity {
    /// `sub` claim.
    pub sub: String,
    /// `iss` claim.
    pub iss: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// Granted scopes (`scope`, space-separated, or `scp`).
    pub scopes: Vec<String>,
    /// The OAuth client (agent) the token was issued to: `client_id` or `azp`.
    pub client_id: Option<String>,
    /// Every claim of the token, as issued.
    pub claims: Map<String, Value>,
}
