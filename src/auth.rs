//! Who is on the other end of a connection: a JWT or an API key turned into an [`Identity`],
//! or a reason to refuse it. Pure: no I/O (keys and secrets were read when the routing file
//! was loaded); only the clock is read, for `exp` and `nbf`.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminSettings, AuthSettings};

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
    /// The token's `exp`: the connection is closed then unless refreshed. `None` for API
    /// keys and anonymous connections, which do not expire.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            roles: Vec::new(),
            claims: Value::Null,
            authenticated: false,
            expires_at: None,
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }

    /// `expires_at` in whole seconds since the Unix epoch, as clients see it.
    pub fn expires_at_unix(&self) -> Option<u64> {
        self.expires_at
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    }
}

/// Why a credential was refused. The code and message go to the client (HTTP 401 body or an
/// `error` frame) and to debug logs; neither ever contains the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No credential where one is needed.
    Missing,
    /// More than one credential (query, `Authorization`, `X-API-Key`): which one counts
    /// would be a guess.
    Ambiguous,
    /// An `Authorization` header that is not `Bearer <token>`.
    UnsupportedScheme,
    /// A JWT, but `auth.jwt` is not configured.
    JwtNotAccepted,
    /// Not a JWT (bad base64, JSON or structure), or claims of the wrong type.
    Malformed,
    /// The header's `alg` is not in `auth.jwt.algorithms` (`none` included).
    AlgorithmNotAllowed(String),
    /// The signature does not verify with the configured key.
    BadSignature,
    /// `exp` (plus the leeway) has passed.
    Expired,
    /// `nbf` (minus the leeway) is still to come.
    NotYetValid,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience.
    WrongAudience,
    /// A claim the configuration requires is absent (`exp`, or `iss`/`aud` when checked).
    MissingClaim(String),
    /// The user claim is absent or not a string or number.
    NoUser(String),
    /// No configured API key has this digest.
    UnknownApiKey,
    /// `exp` is past the year 9999: no real token expires then, and times that far away
    /// overflow clocks.
    ExpiryOutOfRange,
    /// The token's user is the user of a configured API key: the two kinds of credential
    /// never act as one another.
    ApiKeyUser,
}

impl Rejection {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing_credentials",
            Rejection::Ambiguous => "ambiguous_credentials",
            Rejection::UnsupportedScheme => "unsupported_scheme",
            Rejection::JwtNotAccepted => "jwt_not_accepted",
            Rejection::Malformed => "malformed_token",
            Rejection::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "token_expired",
            Rejection::NotYetValid => "token_not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::MissingClaim(_) => "missing_claim",
            Rejection::NoUser(_) => "missing_user",
            Rejection::UnknownApiKey => "unknown_api_key",
            Rejection::ExpiryOutOfRange => "expiry_out_of_range",
            Rejection::ApiKeyUser => "api_key_user",
        }
    }

    /// A sentence for a person.
    pub fn message(&self) -> String {
        match self {
            Rejection::Missing => {
                "a token (?token=, Authorization: Bearer) or an API key (X-API-Key) is required"
                    .to_owned()
            }
            Rejection::Ambiguous => "send one credential, not several".to_owned(),
            Rejection::UnsupportedScheme => {
                "the Authorization header must be `Bearer <token>`".to_owned()
            }
            Rejection::JwtNotAccepted => "this bridge does not accept JWTs".to_owned(),
            Rejection::Malformed => "the token is not a well-formed JWT".to_owned(),
            Rejection::AlgorithmNotAllowed(alg) if alg.is_empty() => {
                "the token's algorithm is not accepted".to_owned()
            }
            Rejection::AlgorithmNotAllowed(alg) => {
                format!("the token's algorithm `{alg}` is not accepted")
            }
            Rejection::BadSignature => "the token's signature is not valid".to_owned(),
            Rejection::Expired => "the token has expired".to_owned(),
            Rejection::NotYetValid => "the token is not valid yet (nbf)".to_owned(),
            Rejection::WrongIssuer => "the token's issuer (iss) is not accepted".to_owned(),
            Rejection::WrongAudience => "the token's audience (aud) is not accepted".to_owned(),
            Rejection::MissingClaim(claim) => format!("the token has no `{claim}` claim"),
            Rejection::NoUser(claim) => {
                format!("the token's `{claim}` claim is absent or not a string or number")
            }
            Rejection::UnknownApiKey => "the API key is not valid".to_owned(),
            Rejection::ExpiryOutOfRange => {
                "the token's `exp` is out of range (after the year 9999)".to_owned()
            }
            Rejection::ApiKeyUser => {
                "the token's user is reserved for an API key of this bridge".to_owned()
            }
        }
    }
}

/// A credential as a client presented it. Deliberately not `Debug`, so that it cannot end
/// up in a log line by accident.
#[derive(Clone)]
pub enum Credential {
    /// A JWT (`?token=` or `Authorization: Bearer`).
    Token(String),
    /// An API key (`X-API-Key`).
    ApiKey(String),
}

/// A connection's credential, kept so that a reload can verify it again with the new keys
/// (a removed API key or a rotated secret must not keep serving open connections). Its
/// `Debug` prints nothing of it.
#[derive(Default)]
pub struct HeldCredential(Mutex<Option<Credential>>);

impl std::fmt::Debug for HeldCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldCredential(..)")
    }
}

impl HeldCredential {
    pub fn new(credential: Option<Credential>) -> HeldCredential {
        HeldCredential(Mutex::new(credential))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Credential>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A `refresh` replaced the credential.
    pub fn replace(&self, credential: Credential) {
        *self.lock() = Some(credential);
    }

    /// Verifies the credential again; `None` for a connection that presented none.
    pub fn verify(&self, authenticator: &Authenticator) -> Option<Result<Identity, Rejection>> {
        let credential = self.lock().clone()?;
        Some(authenticator.verify(&credential))
    }
}

/// The latest `exp` accepted: 9999-12-31T23:59:59Z.
const MAX_EXP: u64 = 253_402_300_799;

/// Turns credentials into identities with the keys of one configuration generation.
#[derive(Debug, Clone, Copy)]
pub struct Authenticator<'a> {
    settings: &'a AuthSettings,
}

/// Longest `alg` quoted back in a rejection, so that a forged header cannot make the answer
/// large.
const MAX_QUOTED_ALG: usize = 16;

impl<'a> Authenticator<'a> {
    pub fn new(settings: &'a AuthSettings) -> Authenticator<'a> {
        Authenticator { settings }
    }

    /// Verifies either kind of credential.
    pub fn verify(&self, credential: &Credential) -> Result<Identity, Rejection> {
        match credential {
            Credential::Token(token) => self.verify_token(token),
            Credential::ApiKey(key) => self.verify_api_key(key),
        }
    }

    /// Verifies a JWT: algorithm, signature, `exp` (required), `nbf`, and `iss`/`aud` when
    /// configured, with the configured leeway.
    pub fn verify_token(&self, token: &str) -> Result<Identity, Rejection> {
        let Some(jwt) = &self.settings.jwt else {
            return Err(Rejection::JwtNotAccepted);
        };
        // The library refuses a foreign `alg` too, but as a bare JSON error for `none`;
        // reading it first names the algorithm in the answer.
        let alg = header_alg(token).ok_or(Rejection::Malformed)?;
        if !Algorithm::from_str(&alg).is_ok_and(|a| jwt.algorithms.contains(&a)) {
            let quoted: String = alg.chars().take(MAX_QUOTED_ALG).collect();
            return Err(Rejection::AlgorithmNotAllowed(quoted));
        }
        let data = jsonwebtoken::decode::<Value>(token, &jwt.key, &jwt.validation)
            .map_err(|e| rejection(e.kind()))?;
        let claims = data.claims;
        if !claims.is_object() {
            return Err(Rejection::Malformed);
        }
        let user: Arc<str> = match claim(&claims, &self.settings.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => Arc::from(s.as_str()),
            Some(Value::Number(n)) => Arc::from(n.to_string()),
            _ => return Err(Rejection::NoUser(self.settings.user_claim.clone())),
        };
        if self.settings.api_keys.iter().any(|key| key.user == user) {
            return Err(Rejection::ApiKeyUser);
        }
        let roles = match claim(&claims, &self.settings.roles_claim) {
            Some(Value::String(role)) => vec![Arc::from(role.as_str())],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(Arc::from)
                .collect(),
            _ => Vec::new(),
        };
        // Validation required a numeric `exp`; it may be a float in some issuers' tokens.
        let expires_at = match claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)))
        {
            Some(secs) if secs > MAX_EXP => return Err(Rejection::ExpiryOutOfRange),
            Some(secs) => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            None => None,
        };
        Ok(Identity {
            user: Some(user),
            roles,
            claims,
            authenticated: true,
            expires_at,
        })
    }

    /// Looks an API key up by its SHA-256. Every configured digest is compared, each in
    /// constant time, so the answer's timing tells nothing about how close a guess was.
    pub fn verify_api_key(&self, key: &str) -> Result<Identity, Rejection> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for entry in &self.settings.api_keys {
            if bool::from(entry.sha256.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Rejection::UnknownApiKey)?;
        let mut claims = serde_json::Map::new();
        claims.insert(self.settings.user_claim.clone(), Value::from(&*entry.user));
        claims.insert(
            self.settings.roles_claim.clone(),
            Value::from(entry.roles.iter().map(|r| &**r).collect::<Vec<_>>()),
        );
        Ok(Identity {
            user: Some(entry.user.clone()),
            roles: entry.roles.clone(),
            claims: Value::Object(claims),
            authenticated: true,
            expires_at: None,
        })
    }
}

/// Whether a bearer value is the static admin token (compared as SHA-256 digests, in
/// constant time).
pub fn is_admin_token(admin: &AdminSettings, bearer: &str) -> bool {
    let Some(expected) = &admin.token_sha256 else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
    bool::from(expected.ct_eq(&digest))
}

/// Whether an identity holds one of the admin roles.
pub fn is_admin(admin: &AdminSettings, identity: &Identity) -> bool {
    identity.authenticated && admin.roles.iter().any(|role| identity.has_role(role))
}

/// A claim by name: a top-level claim of exactly that name (namespaced claims such as
/// `https://example.com/roles` contain dots), else a dot path into nested objects
/// (`realm_access.roles`).
fn claim<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    name.split('.')
        .try_fold(claims, |node, segment| node.get(segment))
}

/// The `alg` of a JWT's header, read without verifying anything.
fn header_alg(token: &str) -> Option<String> {
    let (header, _) = token.split_once('.')?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: Value = serde_json::from_slice(&bytes).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

fn rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature => Rejection::Expired,
        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
        ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
        ErrorKind::InvalidAudience => Rejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => Rejection::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            Rejection::AlgorithmNotAllowed(String::new())
        }
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Rejection::BadSignature,
        _ => Rejection::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::config::Config;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn load(auth: &str) -> Config {
        let text = format!("{auth}\nroutes:\n  - name: r\n    channel: c\n");
        Config::from_str(&text, Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("config must load:\n{e}"))
    }

    fn hs256(claims: &Value) -> String {
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap_or_default()
    }

    const HS_AUTH: &str = "auth:
  mode: required
  jwt:
    algorithms: [HS256]
    secret: 0123456789abcdef0123456789abcdef
    leeway: 5s
  roles_claim: realm_access.roles
  api_keys:
    - { sha256: 62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef, user: svc, roles: [service] }
";

    #[test]
    fn a_valid_token_gives_user_roles_claims_and_expiry() {
        let config = load(HS_AUTH);
        let auth = Authenticator::new(&config.auth);
        let exp = now() + 60;
        let token =
            hs256(&json!({"sub": "42", "exp": exp, "realm_access": {"roles": ["a", "b", 3]}}));
        let identity = auth
            .verify_token(&token)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(identity.user.as_deref(), Some("42"));
        assert_eq!(identity.roles, vec![Arc::from("a"), Arc::from("b")]);
        assert!(identity.authenticated);
        assert_eq!(identity.expires_at_unix(), Some(exp));
        assert_eq!(identity.claims["realm_access"]["roles"][0], "a");

        // A numeric user id reads as its text; one role as a string.
        let config = load(&HS_AUTH.replace("realm_access.roles", "role"));
        let auth = Authenticator::new(&config.auth);
        let token = hs256(&json!({"sub": 24, "exp": exp, "role": "admin"}));
        let identity = auth
            .verify_token(&token)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(identity.user.as_deref(), Some("24"));
        assert_eq!(identity.roles, vec![Arc::from("admin")]);
    }

    #[test]
    fn every_defect_is_refused_with_its_reason() {
        let config = load(HS_AUTH);
        let auth = Authenticator::new(&config.auth);
        let t = now();
        let check = |claims: Value, expected: Rejection| {
            assert_eq!(
                auth.verify_token(&hs256(&claims)),
                Err(expected),
                "{claims}"
            );
        };
        check(json!({"sub": "u", "exp": t - 60}), Rejection::Expired);
        // Within the leeway: accepted.
        assert!(
            auth.verify_token(&hs256(&json!({"sub": "u", "exp": t - 2})))
                .is_ok()
        );
        check(
            json!({"sub": "u", "exp": t + 60, "nbf": t + 60}),
            Rejection::NotYetValid,
        );
        check(json!({"sub": "u"}), Rejection::MissingClaim("exp".into()));
        check(json!({"exp": t + 60}), Rejection::NoUser("sub".into()));
        check(
            json!({"sub": "", "exp": t + 60}),
            Rejection::NoUser("sub".into()),
        );

        let good = hs256(&json!({"sub": "u", "exp": t + 60}));
        let wrong_key = encode(
            &Header::default(),
            &json!({"sub": "u", "exp": t + 60}),
            &EncodingKey::from_secret(b"another secret, just as long as the other"),
        )
        .unwrap_or_default();
        assert_eq!(auth.verify_token(&wrong_key), Err(Rejection::BadSignature));
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "u", "exp": t + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap_or_default();
        assert_eq!(
            auth.verify_token(&hs512),
            Err(Rejection::AlgorithmNotAllowed("HS512".into()))
        );
        let (_, rest) = good.split_once('.').unwrap_or_default();
        let payload = rest.split_once('.').map_or("", |(p, _)| p);
        let none_header =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            auth.verify_token(&format!("{none_header}.{payload}.")),
            Err(Rejection::AlgorithmNotAllowed("none".into()))
        );
        assert_eq!(auth.verify_token("not a token"), Err(Rejection::Malformed));
        assert_eq!(auth.verify_token(""), Err(Rejection::Malformed));
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let config = load(&HS_AUTH.replace(
            "    leeway: 5s\n",
            "    leeway: 5s\n    issuer: https://id.example\n    audience: [bridge, other]\n",
        ));
        let auth = Authenticator::new(&config.auth);
        let exp = now() + 60;
        let ok = json!({"sub": "u", "exp": exp, "iss": "https://id.example", "aud": "bridge"});
        assert!(auth.verify_token(&hs256(&ok)).is_ok());
        let mut claims = ok.clone();
        claims["iss"] = json!("https://evil.example");
        assert_eq!(
            auth.verify_token(&hs256(&claims)),
            Err(Rejection::WrongIssuer)
        );
        let mut claims = ok.clone();
        claims["aud"] = json!(["elsewhere"]);
        assert_eq!(
            auth.verify_token(&hs256(&claims)),
            Err(Rejection::WrongAudience)
        );
        for missing in ["iss", "aud"] {
            let mut claims = ok.clone();
            claims.as_object_mut().map(|o| o.remove(missing));
            assert_eq!(
                auth.verify_token(&hs256(&claims)),
                Err(Rejection::MissingClaim(missing.into()))
            );
        }
        // Without `audience` configured, a token's `aud` is not checked.
        let config = load(HS_AUTH);
        let auth = Authenticator::new(&config.auth);
        assert!(auth.verify_token(&hs256(&ok)).is_ok());
    }

    #[test]
    fn api_keys_match_by_digest_only() {
        let config = load(HS_AUTH);
        let auth = Authenticator::new(&config.auth);
        // The digest in HS_AUTH is the SHA-256 of `test-key`.
        let identity = auth
            .verify_api_key("test-key")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(identity.user.as_deref(), Some("svc"));
        assert_eq!(identity.roles, vec![Arc::from("service")]);
        assert_eq!(identity.expires_at, None);
        assert_eq!(identity.claims["sub"], "svc");
        assert_eq!(
            auth.verify_api_key("test-kez"),
            Err(Rejection::UnknownApiKey)
        );
        assert_eq!(auth.verify_api_key(""), Err(Rejection::UnknownApiKey));
        // A JWT is not an API key, and a bridge without `jwt` takes no JWT.
        let token = hs256(&json!({"sub": "u", "exp": now() + 60}));
        assert_eq!(auth.verify_api_key(&token), Err(Rejection::UnknownApiKey));
        let keys_only = load(
            "auth:
  mode: required
  api_keys:
    - { sha256: 62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef, user: svc }
",
        );
        assert_eq!(
            Authenticator::new(&keys_only.auth).verify_token(&token),
            Err(Rejection::JwtNotAccepted)
        );
    }

    #[test]
    fn admin_token_and_roles() {
        let config = load(&format!(
            "{HS_AUTH}admin:\n  roles: [admin]\n  token: a-static-admin-token-of-length\n"
        ));
        assert!(is_admin_token(
            &config.admin,
            "a-static-admin-token-of-length"
        ));
        assert!(!is_admin_token(
            &config.admin,
            "a-static-admin-token-of-lengtH"
        ));
        assert!(!is_admin_token(&AdminSettings::default(), ""));
        let mut identity = Identity::anonymous();
        identity.roles = vec![Arc::from("admin")];
        assert!(
            !is_admin(&config.admin, &identity),
            "anonymous is never admin"
        );
        identity.authenticated = true;
        assert!(is_admin(&config.admin, &identity));
        identity.roles = vec![Arc::from("user")];
        assert!(!is_admin(&config.admin, &identity));
    }
}
