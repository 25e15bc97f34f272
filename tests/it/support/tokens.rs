//! Credentials for the tests: JWTs signed here with jsonwebtoken (HS256 with [`SECRET`], or
//! the test key pairs of `tests/fixtures/keys/`), API keys, and the `auth:` section that
//! accepts them.

use std::path::PathBuf;
use std::time::SystemTime;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The HS256 secret of [`auth_section`] (48 bytes).
pub const SECRET: &str = "the-hs256-secret-of-the-tests-is-48-bytes-long!!";

/// The API key of [`auth_section`]: user `svc`, role `service`.
pub const SERVICE_KEY: &str = "svc-key-5f0c3a9e61b24d7c8e2f4a6b9d0c1e3f";

/// The API key of [`auth_section`]: user `robot-admin`, role `admin`.
pub const ADMIN_KEY: &str = "admin-key-7a1e9c3b5d2f4e6a8c0b1d3f5e7a9c2b";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The SHA-256 of `key` in hex, as `auth.api_keys` wants it.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A test key file (`tests/fixtures/keys/NAME`).
pub fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

/// A JWT of `claims` signed with `alg` and `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a test token")
}

/// A JWT of `claims`, HS256 with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// An HS256 token for `user` with `roles`, valid 10 minutes; `extra` claims are added (and
/// override).
pub fn token(user: &str, roles: &[&str], extra: Value) -> String {
    let mut claims = json!({"sub": user, "roles": roles, "exp": now() + 600});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    hs256(&claims)
}

/// An unsigned token (`alg: none`) with these claims.
pub fn unsigned(claims: &Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// An `auth:` section (top level, for `config_with`): `mode`, HS256 with [`SECRET`], the
/// API keys [`SERVICE_KEY`] and [`ADMIN_KEY`]; `jwt_extra` lines go into `jwt:` (indented
/// for you) and `extra` lines into `auth:`.
pub fn auth_section(mode: &str, jwt_extra: &str, extra: &str) -> String {
    let mut s = format!(
        "auth:\n  mode: {mode}\n  jwt:\n    algorithms: [HS256]\n    secret: \"{SECRET}\"\n"
    );
    for line in jwt_extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("    ");
        s.push_str(line.trim());
        s.push('\n');
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str("  ");
        s.push_str(line.trim());
        s.push('\n');
    }
    s.push_str(&format!(
        "  api_keys:\n    - {{ sha256: {}, user: svc, roles: [service] }}\n    - {{ sha256: {}, user: robot-admin, roles: [admin] }}\n",
        sha256_hex(SERVICE_KEY),
        sha256_hex(ADMIN_KEY)
    ));
    s
}
