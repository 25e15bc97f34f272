//! The `auth` and `admin` sections: how connections and operators prove who they are.
//!
//! Key and secret files are read here, at load time, so that a reload picks up a changed
//! file and verification later does no I/O. Everything that could make a credential check
//! ambiguous or weak is refused here rather than at the first connection: algorithms of
//! different key families in one list (which would also open the door to an HS256 token
//! "signed" with an RSA public key), a key that does not suit an algorithm, a short HMAC
//! secret, `alg: none`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use super::inbound::InboundRoute;
use super::route::{Audience, Route};
use super::schema;
use super::yaml::{self, Ctx, Kind, Node, fields, index, join};

/// How connections authenticate.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Whether a credential is needed (`none` when the section is absent).
    pub mode: AuthMode,
    /// JWT verification, when `jwt` is set.
    pub jwt: Option<JwtSettings>,
    /// The claim holding the user id (`user_claim`, default `sub`): a top-level claim name,
    /// else a dot path into nested claims.
    pub user_claim: String,
    /// The claim holding the roles (`roles_claim`, default `roles`), a string or an array of
    /// strings; read like `user_claim`.
    pub roles_claim: String,
    /// API keys, by SHA-256 digest of the key.
    pub api_keys: Vec<ApiKey>,
}

/// Whether a connection needs a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid token or API key is needed (HTTP 401 otherwise).
    Required,
    /// Anonymous connections are allowed; a credential, when given, must be valid.
    Optional,
    /// WebSocket connections are not authenticated: every connection is anonymous. The
    /// `jwt` and `api_keys` settings, when present, still serve the admin endpoints.
    None,
}

/// A compiled `auth.jwt` section.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The accepted `alg` values, all of one key family.
    pub algorithms: Vec<Algorithm>,
    /// The HMAC secret or the public key (its `Debug` does not show the bytes).
    pub key: DecodingKey,
    /// Algorithms, issuer, audience, leeway and required claims, ready for verification.
    pub validation: Validation,
}

/// One `auth.api_keys` entry.
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// SHA-256 of the key: the file never holds the key itself.
    pub sha256: [u8; 32],
    /// The user the key authenticates as.
    pub user: Arc<str>,
    /// The roles it carries.
    pub roles: Vec<Arc<str>>,
}

/// The `admin` section: who may use `/ws/stats` and `/api/publish`.
#[derive(Clone, Debug, Default)]
pub struct AdminSettings {
    /// A token or API key carrying one of these roles is an administrator.
    pub roles: Vec<String>,
    /// SHA-256 of the static bearer token (`token` or `token_file`), when set.
    pub token_sha256: Option<[u8; 32]>,
}

/// Clock skew tolerated on `exp` and `nbf` when `leeway` is not set.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// A static admin token shorter than this is refused: it would be guessable.
const MIN_ADMIN_TOKEN: usize = 16;

/// Reads the `auth` section; absent means `mode: none`.
pub(super) fn compile(ctx: &mut Ctx, node: Option<&Node>) -> Option<AuthSettings> {
    let Some(node) = node else {
        return Some(AuthSettings {
            mode: AuthMode::None,
            jwt: None,
            user_claim: "sub".to_owned(),
            roles_claim: "roles".to_owned(),
            api_keys: Vec::new(),
        });
    };
    let section = fields(ctx, node, "auth", &schema::names(schema::AUTH))?;
    let mode = match section.get("mode") {
        Some(mode_node) => mode(ctx, mode_node),
        None => {
            ctx.error(
                node,
                "auth.mode",
                "missing key `mode` (required, optional or none)",
            );
            None
        }
    };
    let jwt = match section.get("jwt") {
        Some(node) => jwt(ctx, node).map(Some),
        None => Some(None),
    };
    let user_claim = claim_name(ctx, section.get("user_claim"), "auth.user_claim", "sub");
    let roles_claim = claim_name(ctx, section.get("roles_claim"), "auth.roles_claim", "roles");
    let api_keys = match section.get("api_keys") {
        Some(node) => api_keys(ctx, node),
        None => Some(Vec::new()),
    };
    let (mode, jwt, api_keys) = (mode?, jwt?, api_keys?);
    if mode != AuthMode::None
        && jwt.is_none()
        && api_keys.is_empty()
        && let Some(mode_node) = section.get("mode")
    {
        let message = "needs `jwt` or `api_keys`: without a way to verify a credential, \
                       no connection could authenticate";
        ctx.error(mode_node, "auth.mode", message);
        return None;
    }
    Some(AuthSettings {
        mode,
        jwt,
        user_claim: user_claim?,
        roles_claim: roles_claim?,
        api_keys,
    })
}

fn mode(ctx: &mut Ctx, node: &Node) -> Option<AuthMode> {
    match yaml::string(ctx, node, "auth.mode")?.as_str() {
        "required" => Some(AuthMode::Required),
        "optional" => Some(AuthMode::Optional),
        "none" => Some(AuthMode::None),
        other => {
            let message = format!("unknown mode `{other}` (expected required, optional or none)");
            ctx.error(node, "auth.mode", message);
            None
        }
    }
}

fn claim_name(ctx: &mut Ctx, node: Option<&Node>, path: &str, default: &str) -> Option<String> {
    let Some(node) = node else {
        return Some(default.to_owned());
    };
    let name = yaml::string(ctx, node, path)?;
    if name.is_empty() {
        let message = "expected a claim name, e.g. sub, or a dot path such as realm_access.roles";
        ctx.error(node, path, message);
        return None;
    }
    Some(name)
}

fn jwt(ctx: &mut Ctx, node: &Node) -> Option<JwtSettings> {
    let section = fields(ctx, node, "auth.jwt", &schema::names(schema::JWT))?;
    let key = |name: &str| join("auth.jwt", name);
    let algorithms = match section.get("algorithms") {
        Some(algorithms_node) => algorithms(ctx, algorithms_node),
        None => {
            ctx.error(
                node,
                &key("algorithms"),
                "missing key `algorithms`, e.g. [HS256] or [RS256]",
            );
            None
        }
    };
    let leeway = match section.get("leeway") {
        Some(node) => yaml::duration(ctx, node, &key("leeway")),
        None => Some(DEFAULT_LEEWAY),
    };
    let issuer = match section.get("issuer") {
        Some(node) => optional_list(ctx, node, &key("issuer")),
        None => Some(Vec::new()),
    };
    let audience = match section.get("audience") {
        Some(node) => optional_list(ctx, node, &key("audience")),
        None => Some(Vec::new()),
    };
    let algorithms = algorithms?;
    let decoding_key = verification_key(ctx, node, &section, &algorithms)?;
    let (leeway, issuer, audience) = (leeway?, issuer?, audience?);

    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.clone();
    // Whole seconds: `exp` and `nbf` are whole seconds too.
    validation.leeway = leeway.as_secs();
    validation.validate_exp = true;
    // Off by default in jsonwebtoken: a token must not be usable before its `nbf`.
    validation.validate_nbf = true;
    // `exp` is required: a bearer token that never expires cannot be revoked short of
    // changing the key. Credentials that must not expire are API keys (removable from
    // this file). The library checks `iss` and `aud` only when the token has them, so
    // they are required whenever they are configured.
    let mut required = vec!["exp"];
    if !issuer.is_empty() {
        validation.set_issuer(&issuer);
        required.push("iss");
    }
    if audience.is_empty() {
        // Not checked when not configured, whatever `aud` the token carries (docs/routing.md).
        validation.validate_aud = false;
    } else {
        validation.set_audience(&audience);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    Some(JwtSettings {
        algorithms,
        key: decoding_key,
        validation,
    })
}

fn algorithms(ctx: &mut Ctx, node: &Node) -> Option<Vec<Algorithm>> {
    let path = "auth.jwt.algorithms";
    let names = yaml::string_list(ctx, node, path)?;
    if names.is_empty() {
        ctx.error(node, path, "expected at least one algorithm, e.g. [HS256]");
        return None;
    }
    let items: Vec<&Node> = match &node.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut out: Vec<Algorithm> = Vec::with_capacity(names.len());
    let mut ok = true;
    for (i, (name, item)) in names.iter().zip(items).enumerate() {
        let item_path = index(path, i);
        let algorithm = match name.as_str() {
            "HS256" => Algorithm::HS256,
            "HS384" => Algorithm::HS384,
            "HS512" => Algorithm::HS512,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                let message = if other.eq_ignore_ascii_case("none") {
                    "`none` is never accepted: an unsigned token would let anyone choose \
                     its identity"
                        .to_owned()
                } else {
                    format!(
                        "unknown algorithm `{other}` (expected HS256, HS384, HS512, RS256, \
                         RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
                    )
                };
                ctx.error(item, &item_path, message);
                ok = false;
                continue;
            }
        };
        if out.contains(&algorithm) {
            ctx.error(item, &item_path, format!("`{name}` is listed twice"));
            ok = false;
            continue;
        }
        if let Some(first) = out.first()
            && first.family() != algorithm.family()
        {
            let message = format!(
                "`{name}` cannot be listed with `{first:?}`: one list takes algorithms of one \
                 key family (HS* use `secret`; RS*/PS* an RSA key; ES* an EC key; EdDSA an \
                 Ed25519 key), else a token could pick the family its forger can sign with"
            );
            ctx.error(item, &item_path, message);
            ok = false;
            continue;
        }
        out.push(algorithm);
    }
    ok.then_some(out)
}

/// `null`, a string or a list of strings; `null` and the empty list mean "not checked".
fn optional_list(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<String>> {
    if matches!(node.kind, Kind::Null) {
        return Some(Vec::new());
    }
    let values = yaml::string_list(ctx, node, path)?;
    if values.iter().any(String::is_empty) {
        ctx.error(node, path, "an empty value would match no token");
        return None;
    }
    Some(values)
}

/// Reads the secret or public key the algorithms need, and checks that it suits them.
fn verification_key(
    ctx: &mut Ctx,
    node: &Node,
    section: &yaml::Fields,
    algorithms: &[Algorithm],
) -> Option<DecodingKey> {
    if algorithms[0].family() == AlgorithmFamily::Hmac {
        hmac_key(ctx, node, section, algorithms)
    } else {
        public_key(ctx, node, section, algorithms)
    }
}

/// The HS* secret (`secret` or `secret_file`), at least as long as the hash output.
fn hmac_key(
    ctx: &mut Ctx,
    node: &Node,
    section: &yaml::Fields,
    algorithms: &[Algorithm],
) -> Option<DecodingKey> {
    if let Some(entry) = section.entry("public_key_file") {
        let message = "is for RS*/PS*/ES*/EdDSA; HS* algorithms verify with `secret` or \
                       `secret_file`";
        ctx.error_at(
            entry.line,
            entry.column,
            "auth.jwt.public_key_file",
            message,
        );
        return None;
    }
    let secret = match (section.get("secret"), section.get("secret_file")) {
        (Some(_), Some(file_node)) => {
            let message = "set `secret` or `secret_file`, not both";
            ctx.error(file_node, "auth.jwt.secret_file", message);
            return None;
        }
        (Some(secret_node), None) => {
            let secret = yaml::string(ctx, secret_node, "auth.jwt.secret")?;
            (secret.into_bytes(), secret_node, "auth.jwt.secret")
        }
        (None, Some(file_node)) => {
            let make = "a random secret: `openssl rand -base64 48 > FILE`";
            let Some(bytes) = read_file(ctx, file_node, "auth.jwt.secret_file", make)? else {
                // Only `check` gets here, and its configuration is never run.
                return Some(DecodingKey::from_secret(&[]));
            };
            (trim_newline(bytes), file_node, "auth.jwt.secret_file")
        }
        (None, None) => {
            let message = "HS* algorithms need `secret` or `secret_file`";
            ctx.error(node, "auth.jwt.secret", message);
            return None;
        }
    };
    let (bytes, at, path) = secret;
    // RFC 7518 §3.2: an HMAC key as long as the hash output at least.
    let needed = algorithms
        .iter()
        .map(|a| match a {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        })
        .max()
        .unwrap_or(32);
    if bytes.len() < needed {
        let message = format!(
            "the secret is {} bytes; {} needs at least {needed} (RFC 7518 §3.2), e.g. \
             from `openssl rand -base64 48`",
            bytes.len(),
            algorithms
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join("/")
        );
        ctx.error(at, path, message);
        return None;
    }
    Some(DecodingKey::from_secret(&bytes))
}

/// The RS*/PS*/ES*/EdDSA public key (`public_key_file`), checked against every algorithm.
fn public_key(
    ctx: &mut Ctx,
    node: &Node,
    section: &yaml::Fields,
    algorithms: &[Algorithm],
) -> Option<DecodingKey> {
    let family = algorithms[0].family();
    for name in ["secret", "secret_file"] {
        if let Some(entry) = section.entry(name) {
            let message = format!(
                "is for HS* algorithms; {:?} verifies with `public_key_file`",
                algorithms[0]
            );
            ctx.error_at(entry.line, entry.column, &join("auth.jwt", name), message);
            return None;
        }
    }
    let Some(file_node) = section.get("public_key_file") else {
        let message = format!(
            "{:?} needs `public_key_file` (a PEM public key)",
            algorithms[0]
        );
        ctx.error(node, "auth.jwt.public_key_file", message);
        return None;
    };
    let path = "auth.jwt.public_key_file";
    let make = "the PEM public key of the tokens' issuer";
    let Some(pem) = read_file(ctx, file_node, path, make)? else {
        // Only `check` gets here, and its configuration is never run.
        return Some(DecodingKey::from_secret(&[]));
    };
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        let message = "holds a private key: give the bridge the public key only \
                       (`openssl pkey -in private.pem -pubout`)";
        ctx.error(file_node, path, message);
        return None;
    }
    let (parsed, expected) = match family {
        AlgorithmFamily::Rsa => (DecodingKey::from_rsa_pem(&pem), "an RSA public key"),
        AlgorithmFamily::Ec => (DecodingKey::from_ec_pem(&pem), "an EC public key"),
        _ => (DecodingKey::from_ed_pem(&pem), "an Ed25519 public key"),
    };
    let key = match parsed {
        Ok(key) => key,
        Err(e) => {
            let message = format!("expected {expected} in PEM format: {e}");
            ctx.error(file_node, path, message);
            return None;
        }
    };
    // A trial verification builds each algorithm's verifier, which checks that the key
    // suits it (an ES384 list with a P-256 key fails here, not at the first token).
    for algorithm in algorithms {
        if jsonwebtoken::crypto::verify("AAAA", b"probe", &key, *algorithm).is_err() {
            let message = format!("the key does not suit {algorithm:?}");
            ctx.error(file_node, path, message);
            return None;
        }
    }
    Some(key)
}

/// Reads a key, secret or token file: `Some(None)` when it does not exist and `ctx`
/// tolerates that (`check`; the note says how to `make` it), `None` after an error.
fn read_file(ctx: &mut Ctx, node: &Node, path: &str, make: &str) -> Option<Option<Vec<u8>>> {
    let (file, read) = yaml::named_file(ctx, node, path)?;
    match read {
        Ok(bytes) => Some(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && ctx.tolerate_absent => {
            let message = format!(
                "`{}` does not exist yet: the daemon will not start without it ({})",
                file.display(),
                make.replace("FILE", &file.display().to_string())
            );
            ctx.error(node, path, message);
            if let Some(note) = ctx.errors.pop() {
                ctx.absent.push(note);
            }
            Some(None)
        }
        Err(e) => {
            let message = format!("cannot read `{}`: {e}", file.display());
            ctx.error(node, path, message);
            None
        }
    }
}

/// Secret files usually end with a newline that is not part of the secret.
fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    bytes
}

fn api_keys(ctx: &mut Ctx, node: &Node) -> Option<Vec<ApiKey>> {
    let path = "auth.api_keys";
    let items = match &node.kind {
        Kind::Seq(items) => items,
        Kind::Null => return Some(Vec::new()),
        Kind::Invalid => return None,
        _ => {
            let message = "expected a list of { sha256, user, roles }";
            ctx.error(node, path, message);
            return None;
        }
    };
    let mut out: Vec<ApiKey> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_path = index(path, i);
        match api_key(ctx, item, &item_path) {
            Some(key) if out.iter().any(|k| k.sha256 == key.sha256) => {
                ctx.error(item, &item_path, "the same key is listed twice");
                ok = false;
            }
            Some(key) => out.push(key),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn api_key(ctx: &mut Ctx, node: &Node, path: &str) -> Option<ApiKey> {
    let entry = fields(ctx, node, path, &schema::names(schema::API_KEY))?;
    let sha256 = match entry.get("sha256") {
        Some(hex_node) => {
            let hex = yaml::string(ctx, hex_node, &join(path, "sha256"))?;
            match parse_sha256(&hex) {
                Some(digest) => Some(digest),
                None => {
                    let message = "expected 64 hex digits: the SHA-256 of the key \
                                   (`printf %s KEY | sha256sum`), never the key itself";
                    ctx.error(hex_node, &join(path, "sha256"), message);
                    None
                }
            }
        }
        None => {
            ctx.error(node, &join(path, "sha256"), "missing key `sha256`");
            None
        }
    };
    let user = match entry.get("user") {
        Some(user_node) => match yaml::string(ctx, user_node, &join(path, "user")) {
            Some(user) if !user.is_empty() => Some(Arc::from(user)),
            Some(_) => {
                ctx.error(user_node, &join(path, "user"), "must not be empty");
                None
            }
            None => None,
        },
        None => {
            ctx.error(node, &join(path, "user"), "missing key `user`");
            None
        }
    };
    let roles = match entry.get("roles") {
        Some(roles_node) => role_list(ctx, roles_node, &join(path, "roles")),
        None => Some(Vec::new()),
    };
    Some(ApiKey {
        sha256: sha256?,
        user: user?,
        roles: roles?.into_iter().map(Arc::from).collect(),
    })
}

fn role_list(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<String>> {
    let roles = yaml::string_list(ctx, node, path)?;
    if roles.iter().any(String::is_empty) {
        ctx.error(node, path, "a role name is empty");
        return None;
    }
    Some(roles)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Under `auth.mode: none` every connection is anonymous, so a route's audience that admits
/// only authenticated connections would silently reach nobody: that is reported as an error
/// at the route's `audience`.
pub(super) fn check_audiences(
    ctx: &mut Ctx,
    auth: &AuthSettings,
    routes_node: &Node,
    routes: &[Route],
) {
    let audiences = routes.iter().map(|route| &route.audience);
    let outcome = "this route would reach nobody";
    reported_if_anonymous(
        ctx,
        auth,
        routes_node,
        ("routes", "audience"),
        audiences,
        outcome,
    );
}

/// The same for inbound routes' `allow`, whose default (`authenticated`) is such an audience:
/// the route would refuse every frame.
pub(super) fn check_allows(
    ctx: &mut Ctx,
    auth: &AuthSettings,
    inbound_node: &Node,
    inbound: &[InboundRoute],
) {
    let allows = inbound.iter().map(|route| &route.allow);
    let outcome = "this inbound route would refuse every frame";
    reported_if_anonymous(
        ctx,
        auth,
        inbound_node,
        ("inbound", "allow"),
        allows,
        outcome,
    );
}

/// Reports each of `audiences` (of the items of `section`, at their `key`, or at the item
/// when it takes the default) that no connection passes under `auth.mode: none`.
fn reported_if_anonymous<'a>(
    ctx: &mut Ctx,
    auth: &AuthSettings,
    node: &Node,
    (section, key): (&str, &str),
    audiences: impl Iterator<Item = &'a Audience>,
    outcome: &str,
) {
    if auth.mode != AuthMode::None {
        return;
    }
    let Kind::Seq(items) = &node.kind else {
        return;
    };
    for (i, (audience, item)) in audiences.zip(items).enumerate() {
        if admits_anonymous(audience) {
            continue;
        }
        let Kind::Map(entries) = &item.kind else {
            continue;
        };
        let (at, default) = match entries.iter().find(|e| e.key == key) {
            Some(entry) => (&entry.value, ""),
            None => (item, " (the default)"),
        };
        let message = format!(
            "`{}`{default} admits only authenticated connections, but auth.mode is none (every \
             connection is anonymous), so {outcome}: set auth.mode to required or optional \
             (with jwt or api_keys), or use `{key}: all`",
            audience.describe()
        );
        ctx.error(at, &join(&index(section, i), key), message);
    }
}

fn admits_anonymous(audience: &Audience) -> bool {
    match audience {
        Audience::Everyone | Audience::Connection(_) => true,
        Audience::Authenticated | Audience::User(_) | Audience::Roles(_) | Audience::Claims(_) => {
            false
        }
        Audience::AnyOf(items) => items.iter().any(admits_anonymous),
        Audience::AllOf(items) => items.iter().all(admits_anonymous),
    }
}

/// Reads the `admin` section; absent: nobody is an administrator.
pub(super) fn compile_admin(
    ctx: &mut Ctx,
    node: Option<&Node>,
    auth: Option<&AuthSettings>,
) -> Option<AdminSettings> {
    let Some(node) = node else {
        return Some(AdminSettings::default());
    };
    let section = fields(ctx, node, "admin", &schema::names(schema::ADMIN))?;
    let roles = match section.get("roles") {
        Some(roles_node) => {
            let roles = role_list(ctx, roles_node, "admin.roles");
            if let (Some(roles), Some(auth)) = (&roles, auth)
                && !roles.is_empty()
                && auth.jwt.is_none()
                && auth.api_keys.is_empty()
            {
                let message = "needs `auth.jwt` or `auth.api_keys` to verify who has these roles";
                ctx.error(roles_node, "admin.roles", message);
                return None;
            }
            roles
        }
        None => Some(Vec::new()),
    };
    let token = match (section.get("token"), section.get("token_file")) {
        (Some(_), Some(file_node)) => {
            ctx.error(
                file_node,
                "admin.token_file",
                "set `token` or `token_file`, not both",
            );
            None
        }
        (Some(token_node), None) => yaml::string(ctx, token_node, "admin.token")
            .map(|t| Some((t.into_bytes(), token_node, "admin.token"))),
        (None, Some(file_node)) => {
            let make = "a random token: `openssl rand -hex 32 > FILE`";
            read_file(ctx, file_node, "admin.token_file", make).map(|bytes| {
                bytes.map(|bytes| (trim_newline(bytes), file_node, "admin.token_file"))
            })
        }
        (None, None) => Some(None),
    };
    let token_sha256 = match token? {
        Some((bytes, at, path)) if bytes.len() < MIN_ADMIN_TOKEN => {
            let message = format!(
                "the token is {} bytes; at least {MIN_ADMIN_TOKEN} are needed, else it can be \
                 guessed (e.g. `openssl rand -hex 32`)",
                bytes.len()
            );
            ctx.error(at, path, message);
            return None;
        }
        Some((bytes, _, _)) => Some(Sha256::digest(&bytes).into()),
        None => None,
    };
    Some(AdminSettings {
        roles: roles?,
        token_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_sha256;

    #[test]
    fn sha256_hex_is_exactly_32_bytes() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_sha256(&hex), Some([0xab; 32]));
        assert_eq!(parse_sha256(&hex.to_uppercase()), Some([0xab; 32]));
        assert_eq!(parse_sha256(&hex[2..]), None);
        assert_eq!(parse_sha256(&format!("{}zz", &hex[2..])), None);
        assert_eq!(parse_sha256(&"é".repeat(32)), None);
    }
}
