//! Who is calling: the verified identity of a request, as the interception point, policy and
//! audit see it. Filled in by authentication; `None` in a [`crate::intercept::Context`] means an
//! anonymous caller.

use std::sync::{Arc, OnceLock};

use http::header::{HeaderName, HeaderValue};

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
    /// What every request of this caller needs of these fields, converted on first use. An
    /// identity is built once per verified token and not changed afterwards, so each is
    /// computed once per token, not once per request.
    #[serde(skip)]
    pub derived: Derived,
}

/// The identity header values of one caller, ready to insert.
pub type HeaderValues = Arc<[(HeaderName, HeaderValue)]>;

/// Caches beside the identity's fields; they take no part in comparisons, and a clone starts
/// empty, so an identity cloned and then changed (`Identity { sub, ..other.clone() }`) never
/// shows policy or the server the fields it was cloned from.
#[derive(Default)]
pub struct Derived {
    subject: OnceLock<regorus::Value>,
    headers: OnceLock<HeaderValues>,
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Derived::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl Identity {
    /// The policy input's `subject` for this caller.
    pub fn policy_subject(&self) -> regorus::Value {
        self.derived
            .subject
            .get_or_init(|| input::subject_value(Some(&self.subject())))
            .clone()
    }

    /// The identity headers the server is sent for this caller, made by `make` on first use.
    /// Identities are cached by the one authenticator of the process, whose header
    /// configuration is fixed at start, so `make` is the same function on every call.
    pub fn header_values(
        &self,
        make: impl FnOnce(&Identity) -> Vec<(HeaderName, HeaderValue)>,
    ) -> HeaderValues {
        Arc::clone(self.derived.headers.get_or_init(|| make(self).into()))
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

    #[test]
    fn header_values_are_made_once_per_identity_and_anew_for_a_changed_clone() {
        let made = std::cell::Cell::new(0);
        let make = |id: &Identity| {
            made.set(made.get() + 1);
            let v = HeaderValue::from_str(&id.sub).expect("a header value");
            vec![(HeaderName::from_static("x-user"), v)]
        };
        let a = Identity {
            sub: "ana".into(),
            ..Default::default()
        };
        assert_eq!(a.header_values(make)[0].1, "ana");
        assert_eq!(a.header_values(make)[0].1, "ana");
        assert_eq!(made.get(), 1);
        let b = Identity {
            sub: "bob".into(),
            ..a.clone()
        };
        assert_eq!(b.header_values(make)[0].1, "bob");
        assert_eq!(made.get(), 2);
    }
}
