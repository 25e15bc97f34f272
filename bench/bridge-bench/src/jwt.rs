//! Per-client tokens: a fixed `--token`, or an HS256 JWT signed with `--jwt-secret` whose
//! `sub` is `user{i}` (plus `--jwt-claims`), so that every connection is a distinct user.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::ClientArgs;

pub fn token_for(args: &ClientArgs, client: usize) -> Option<String> {
    if let Some(token) = &args.token {
        return Some(token.clone());
    }
    let secret = args.jwt_secret.as_ref()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(format!("user{client}")));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + args.jwt_ttl.as_secs()));
    if let Some(Value::Object(extra)) = args
        .jwt_claims
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
    {
        claims.extend(extra);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .ok()
}
