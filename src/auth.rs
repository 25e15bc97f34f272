//! Who is on the other end of a connection. Pure: no I/O.

use std::sync::Arc;

use serde_json::Value;

/// The identity a connection acts as, fixed at the upgrade (and replaced by a `refresh`).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user claim, when authenticated.
    pub user: Option<Arc<str>>,
    /// Roles from the token or API key; empty for anonymous connections.
    pub roles: Vec<Arc<str>>,
    /// Every claim of the token, for `claims:` audiences and the welcome template.
    pub claims: Value,
    /// False for anonymous connections (`auth.mode: optional` or `none`).
    pub authenticated: bool,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            roles: Vec::new(),
            claims: Value::Null,
            authenticated: false,
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}
