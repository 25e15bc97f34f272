//! Audiences evaluated against identities. Pure: no I/O.
//!
//! An audience is resolved once per message (its templates filled from the message), then the
//! resolved form is checked against each recipient's identity without further template work.

use serde_json::Value;

use crate::auth::Identity;
use crate::config::Audience;
use crate::template::{PathSegment, Placeholder, Scope, Template};

/// An audience with every template filled in from one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    Everyone,
    Authenticated,
    User(String),
    /// The one connection with this id (a reply to a request).
    Connection(String),
    Roles(Vec<String>),
    Claims(Vec<(Vec<PathSegment>, String)>),
    AnyOf(Vec<Resolved>),
    AllOf(Vec<Resolved>),
}

/// Fills an audience's templates from a message; `None` when one cannot be resolved.
pub fn resolve(audience: &Audience, scope: &Scope) -> Option<Resolved> {
    Some(match audience {
        Audience::Everyone => Resolved::Everyone,
        Audience::Authenticated => Resolved::Authenticated,
        Audience::User(template) => Resolved::User(template.render(scope)?),
        Audience::Connection(template) => Resolved::Connection(template.render(scope)?),
        Audience::Roles(roles) => Resolved::Roles(roles.clone()),
        Audience::Claims(claims) => Resolved::Claims(
            claims
                .iter()
                .map(|(path, template)| Some((path.clone(), template.render(scope)?)))
                .collect::<Option<_>>()?,
        ),
        Audience::AnyOf(items) => Resolved::AnyOf(
            items
                .iter()
                .map(|a| resolve(a, scope))
                .collect::<Option<_>>()?,
        ),
        Audience::AllOf(items) => Resolved::AllOf(
            items
                .iter()
                .map(|a| resolve(a, scope))
                .collect::<Option<_>>()?,
        ),
    })
}

impl Resolved {
    /// Whether `identity` is admitted, not knowing which connection holds it: a
    /// `{connection: …}` audience then admits nobody.
    pub fn admits(&self, identity: &Identity) -> bool {
        self.check(identity, None)
    }

    /// Whether the connection `connection_id`, holding `identity`, is admitted.
    pub fn admits_connection(&self, identity: &Identity, connection_id: &str) -> bool {
        self.check(identity, Some(connection_id))
    }

    fn check(&self, identity: &Identity, connection_id: Option<&str>) -> bool {
        match self {
            Resolved::Everyone => true,
            Resolved::Authenticated => identity.authenticated,
            Resolved::User(user) => {
                identity.authenticated && identity.user.as_deref() == Some(user.as_str())
            }
            Resolved::Roles(roles) => {
                identity.authenticated && roles.iter().any(|role| identity.has_role(role))
            }
            Resolved::Claims(claims) => {
                identity.authenticated
                    && claims.iter().all(|(path, expected)| {
                        claim_matches(claim_at(&identity.claims, path), expected)
                    })
            }
            Resolved::Connection(id) => connection_id == Some(id.as_str()),
            Resolved::AnyOf(items) => items.iter().any(|item| item.check(identity, connection_id)),
            Resolved::AllOf(items) => items.iter().all(|item| item.check(identity, connection_id)),
        }
    }

    /// The only connection this audience can admit, when it is that simple: the recipient is
    /// then found by its id instead of by scanning every connection.
    pub fn single_connection(&self) -> Option<&str> {
        match self {
            Resolved::Connection(id) => Some(id),
            Resolved::AllOf(items) => items.iter().find_map(Resolved::single_connection),
            _ => None,
        }
    }

    /// The only user this audience can admit, when it is that simple: recipients can then be
    /// found through the user index instead of by scanning every connection.
    pub fn single_user(&self) -> Option<&str> {
        match self {
            Resolved::User(user) => Some(user),
            Resolved::AllOf(items) => items.iter().find_map(Resolved::single_user),
            _ => None,
        }
    }
}

/// Whether an audience can admit `identity` for some message, knowing only what `scope`
/// holds (a subscribe, before any message) and, of its placeholders, those that `known` says
/// the scope determines. A part that reads any other placeholder depends on the message: it
/// counts as possibly true and is checked again on every message. (Resolving it anyway would
/// be wrong both ways: a fallback such as `{payload.owner|nobody}` would stand in for the real
/// value, and a capture the topic does not fix would read as empty.)
pub fn may_admit(
    audience: &Audience,
    scope: &Scope,
    identity: &Identity,
    known: &dyn Fn(&Placeholder) -> bool,
) -> bool {
    match audience {
        Audience::AnyOf(items) => items
            .iter()
            .any(|item| may_admit(item, scope, identity, known)),
        Audience::AllOf(items) => items
            .iter()
            .all(|item| may_admit(item, scope, identity, known)),
        // Which connection a frame goes to is checked per frame, against the connection's id,
        // which an identity does not carry.
        Audience::Connection(_) => true,
        leaf => {
            let determined =
                leaf_templates(leaf).all(|template| template.placeholders().all(known));
            match resolve(leaf, scope).filter(|_| determined) {
                Some(resolved) => resolved.admits(identity),
                None => match leaf {
                    // An anonymous connection can never match a user or a claim.
                    Audience::User(_) | Audience::Claims(_) => identity.authenticated,
                    _ => true,
                },
            }
        }
    }
}

fn leaf_templates(leaf: &Audience) -> Box<dyn Iterator<Item = &Template> + '_> {
    match leaf {
        Audience::User(template) | Audience::Connection(template) => {
            Box::new(std::iter::once(template))
        }
        Audience::Claims(claims) => Box::new(claims.iter().map(|(_, template)| template)),
        _ => Box::new(std::iter::empty()),
    }
}

fn claim_at<'a>(claims: &'a Value, path: &[PathSegment]) -> Option<&'a Value> {
    path.iter()
        .try_fold(claims, |node, segment| match (node, segment) {
            (Value::Object(map), PathSegment::Key(key)) => map.get(key),
            (Value::Array(items), PathSegment::Index(i)) => items.get(*i),
            (Value::Object(map), PathSegment::Index(i)) => map.get(&i.to_string()),
            _ => None,
        })
}

fn claim_matches(claim: Option<&Value>, expected: &str) -> bool {
    match claim {
        Some(Value::Array(items)) => items.iter().any(|item| scalar_equals(item, expected)),
        Some(value) => scalar_equals(value, expected),
        None => false,
    }
}

fn scalar_equals(value: &Value, expected: &str) -> bool {
    match value {
        Value::String(s) => s == expected,
        Value::Number(n) => n.to_string() == expected,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == expected,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn user(id: &str, roles: &[&str], claims: Value) -> Identity {
        Identity {
            user: Some(Arc::from(id)),
            roles: roles.iter().map(|r| Arc::from(*r)).collect(),
            claims,
            authenticated: true,
            expires_at: None,
        }
    }

    #[test]
    fn each_resolved_kind_admits_exactly_its_identities() {
        let alice = user(
            "alice",
            &["user"],
            json!({"ws": ["w1", "w2"], "tenant": "t1", "n": 5}),
        );
        let admin = user("root", &["admin"], json!({"ws": "w3"}));
        let anonymous = Identity::anonymous();
        assert!(Resolved::Everyone.admits(&anonymous));
        assert!(!Resolved::Authenticated.admits(&anonymous));
        assert!(Resolved::User("alice".into()).admits(&alice));
        assert!(!Resolved::User("alice".into()).admits(&admin));
        assert!(Resolved::Roles(vec!["admin".into()]).admits(&admin));
        assert!(!Resolved::Roles(vec!["admin".into()]).admits(&alice));
        let ws = |w: &str| Resolved::Claims(vec![(vec![PathSegment::Key("ws".into())], w.into())]);
        assert!(ws("w2").admits(&alice));
        assert!(!ws("w3").admits(&alice));
        assert!(ws("w3").admits(&admin));
        assert!(!ws("w3").admits(&anonymous));
        let n = Resolved::Claims(vec![(vec![PathSegment::Key("n".into())], "5".into())]);
        assert!(n.admits(&alice));
        let either = Resolved::AnyOf(vec![
            Resolved::User("alice".into()),
            Resolved::Roles(vec!["admin".into()]),
        ]);
        assert!(either.admits(&alice) && either.admits(&admin) && !either.admits(&anonymous));
        let both = Resolved::AllOf(vec![Resolved::Authenticated, ws("w1")]);
        assert!(both.admits(&alice) && !both.admits(&admin));
        assert_eq!(both.single_user(), None);
        assert_eq!(
            Resolved::AllOf(vec![Resolved::User("a".into())]).single_user(),
            Some("a")
        );
    }
}
