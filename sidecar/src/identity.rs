//! Who is calling: the verified identity of a request, as the interception point, policy and
//! audit see it. Filled in by authentication; `None` in a [`crate::intercept::Context`] means an
//! anonymous caller.

use std::sync::OnceLock;

use mcp_guard_policy::input;
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
    /// The policy input's `subject` for this caller, converted on first use. An identity is
    /// built once per verified token and not changed afterwards, so this is computed once per
    /// token, not once per request.
    #[serde(skip)]
    pub policy_view: PolicyView,
}

/// A cache beside the identity's fields; it takes no part in comparisons, and a clone starts
/// empty, so an identity cloned and then changed (`Identity { sub, ..other.clone() }`) never
/// shows policy the fields it was cloned from.
#[derive(Default)]
pub struct PolicyView(OnceLock<regorus::Value>);

impl Clone for PolicyView {
    fn clone(&self) -> Self {
        PolicyView::default()
    }
}

impl PartialEq for PolicyView {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PolicyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyView")
    }
}

impl Identity {
    /// The policy input's `subject` for this caller.
    pub fn policy_subject(&self) -> regorus::Value {
        self.policy_view
            .0
            .get_or_init(|| input::subject_value(Some(&self.subject())))
            .clone()
    }

    /// This caller as the policy input's `subject` shows it.
    pub fn subject(&self) -> input::Subject<'_> {
        input::Subject {
            sub: &self.sub,
            iss: &self.iss,
            email: self.email.as_deref(),
            groups: &self.groups,
            roles: &self.roles,
            scopes: &self.scopes,
            client_id: self.client_id.as_deref(),
            claims: &self.claims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_clone_shows_policy_its_own_fields() {
        let a = Identity {
            sub: "ana".into(),
            ..Default::default()
        };
        assert_eq!(a.policy_subject()["sub"], regorus::Value::from("ana"));
        let b = Identity {
            sub: "bob".into(),
            ..a.clone()
        };
        assert_eq!(b.policy_subject()["sub"], regorus::Value::from("bob"));
        assert_eq!(a.policy_subject()["sub"], regorus::Value::from("ana"));
    }
}
