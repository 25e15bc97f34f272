//! The audience evaluator: a route whose `audience` is the fuzz input's first line, loaded
//! through the routing-file loader; for files that load, the audience is resolved for a
//! message (channel and payload from the input) and checked against a few identities.
//!
//! Input, line by line: the audience (YAML, e.g. `{any: [{user: "{payload.u}"}, {roles:
//! [admin]}]}`), the channel (matched against the route's `fuzz:*:*`), the payload, the claims
//! of one identity (JSON).
//!
//! Beyond "no panic", what must hold:
//! - with everything a message tells, `may_admit` (the subscribe-time check) says exactly
//!   what `admits_connection` says, but for audiences naming a connection, which a subscribe
//!   cannot tell (it may then only admit more);
//! - `single_connection` names the only connection admitted;
//! - `single_user` (recipients looked up in the user index instead of every connection) never
//!   misses an admitted identity;
//! - an anonymous connection is never admitted by an audience that needs authentication.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use redis_ws_bridge::audience::{self, Resolved};
use redis_ws_bridge::auth::Identity;
use redis_ws_bridge::config::{Audience, Config};
use redis_ws_bridge::glob;
use redis_ws_bridge::template::{Placeholder, Scope};
use serde_json::{Value, json};

const PATTERN: &str = "fuzz:*:*";

/// The id of the connection every identity is checked on.
const CONNECTION: &str = "c1";

/// Whether the audience names a connection somewhere.
fn names_connection(audience: &Audience) -> bool {
    match audience {
        Audience::Connection(_) => true,
        Audience::AnyOf(items) | Audience::AllOf(items) => items.iter().any(names_connection),
        _ => false,
    }
}

fn routing_file(audience: &str) -> String {
    format!(
        "auth:\n  mode: required\n  jwt:\n    algorithms: [HS256]\n    secret: fuzz-secret-0123456789abcdef0123456789\n\
         routes:\n  - name: fuzz\n    pattern: \"{PATTERN}\"\n    topic: \"t:{{1}}\"\n    audience: {audience}\n"
    )
}

fn identity(user: Option<&str>, roles: &[&str], claims: Value) -> Identity {
    Identity {
        user: user.map(Arc::from),
        roles: roles.iter().map(|r| Arc::from(*r)).collect(),
        claims,
        authenticated: true,
        expires_at: None,
    }
}

/// Whether the audience can admit an anonymous connection (on [`CONNECTION`]) at all: only
/// `all` and that connection do.
fn admits_anonymous(resolved: &Resolved) -> bool {
    match resolved {
        Resolved::Everyone => true,
        Resolved::Connection(id) => id == CONNECTION,
        Resolved::Authenticated | Resolved::User(_) | Resolved::Roles(_) | Resolved::Claims(_) => {
            false
        }
        Resolved::AnyOf(items) => items.iter().any(admits_anonymous),
        Resolved::AllOf(items) => items.iter().all(admits_anonymous),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(4, '\n');
    let audience_text = lines.next().unwrap_or("");
    let channel = lines.next().unwrap_or("");
    let payload: Option<Value> = lines.next().and_then(|p| serde_json::from_str(p).ok());
    let claims: Value = lines
        .next()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_else(|| json!({"sub": "alice", "ws": ["w1", "w2"], "tenant": "t1", "n": 5}));

    let Ok(config) = Config::from_str(&routing_file(audience_text), Path::new("fuzz.yaml")) else {
        return;
    };
    let Some(route) = config.routes.first() else {
        return;
    };
    let audience: &Audience = &route.audience;

    let channel = if glob::captures(PATTERN, channel).is_some() {
        channel
    } else {
        "fuzz:a:b"
    };
    let captures = glob::captures(PATTERN, channel).unwrap_or_default();
    let scope = Scope {
        channel,
        captures: &captures,
        payload: payload.as_ref(),
        ..Scope::default()
    };

    // Identities: anonymous; an admin with the input's claims; a user named by the payload's
    // first string field whose claims are the payload; the captures as user and role.
    let named = payload
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|o| o.values().find_map(Value::as_str))
        .unwrap_or("bob");
    let capture = captures.first().copied().unwrap_or("a");
    let identities = [
        Identity::anonymous(),
        identity(Some("alice"), &["admin", "user"], claims),
        identity(Some(named), &[], payload.clone().unwrap_or(Value::Null)),
        identity(Some(capture), &[capture], json!({"ws": capture})),
    ];

    let resolved = audience::resolve(audience, &scope);
    // What a subscribe knows before any message: the channel and captures, no payload.
    let before = Scope {
        payload: None,
        ..scope
    };
    let without_payload =
        |placeholder: &Placeholder| !matches!(placeholder, Placeholder::Payload(_));
    for id in &identities {
        let maybe = audience::may_admit(audience, &before, id, &without_payload);
        let Some(resolved) = &resolved else { continue };
        let admitted = resolved.admits_connection(id, CONNECTION);
        let may = audience::may_admit(audience, &scope, id, &|_| true);
        if names_connection(audience) {
            assert!(!admitted || may, "admitted but may_admit refuses: {resolved:?}");
        } else {
            assert_eq!(
                may, admitted,
                "may_admit with the whole message differs from admits: {resolved:?}"
            );
            assert_eq!(resolved.admits(id), admitted, "{resolved:?}");
        }
        if admitted && let Some(connection) = resolved.single_connection() {
            assert_eq!(connection, CONNECTION, "{resolved:?}");
        }
        // A subscribe check must never refuse someone a message would admit.
        assert!(
            !admitted || maybe,
            "admitted by the message but refused before it: {resolved:?}"
        );
        if admitted && let Some(user) = resolved.single_user() {
            assert_eq!(
                id.user.as_deref(),
                Some(user),
                "single_user {user} but another user is admitted: {resolved:?}"
            );
        }
        if !id.authenticated {
            assert_eq!(admitted, admits_anonymous(resolved), "{resolved:?}");
        }
    }
});
