use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::template::{PathSegment, Scope};

const FILE: &str = "bridge.yaml";

fn env(name: &str) -> Option<OsString> {
    match name {
        "REDIS_HOST" => Some("redis.internal".into()),
        "MAX_CONN" => Some("500".into()),
        "JWT_SECRET" => Some("0123456789abcdef0123456789abcdef0123456789abcdef".into()),
        "KEY_HASH" => Some("ab".repeat(32).into()),
        "ADMIN_TOKEN" => Some("an-admin-token-for-tests".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_str_with_env(text, Path::new(FILE), &env)
}

fn ok(text: &str) -> Config {
    match load(text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(ConfigErrors(errors)) => {
            for error in &errors {
                assert_eq!(error.file, Path::new(FILE));
                assert!(error.line.is_some() && error.column.is_some(), "{error}");
                assert!(!error.key.is_empty(), "{error}");
                assert!(!error.message.ends_with('.'), "{error}");
            }
            errors
        }
    }
}

/// The single error of `text`, as `line:column key: message`.
fn one_error(text: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let e = &errors[0];
    format!(
        "{}:{} {}: {}",
        e.line.unwrap_or(0),
        e.column.unwrap_or(0),
        e.key,
        e.message
    )
}

const MINIMAL: &str = "routes:\n  - name: jobs\n    channel: jobs:updates\n";

#[test]
fn minimal_file_gets_every_default() {
    let config = ok(MINIMAL);
    assert_eq!(config.source, Path::new(FILE));
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
    assert_eq!(config.auth.mode, AuthMode::None);
    assert_eq!(config.shutdown_grace, Duration::from_secs(10));
    let ws = &config.websocket;
    assert_eq!(ws.path, "/ws");
    assert!(ws.allowed_origins.is_empty());
    assert_eq!(ws.max_connections, 10_000);
    assert_eq!(ws.max_frame_bytes, 65_536);
    assert_eq!(ws.send_queue, 256);
    assert_eq!(ws.slow_client, SlowClient::Disconnect);
    assert_eq!(ws.ping_interval, Duration::from_secs(30));
    assert_eq!(ws.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        ws.client_rate,
        Rate {
            per_second: 20.0,
            burst: 20
        }
    );
    assert!(matches!(ws.welcome, Welcome::Native));
    assert!(config.console);

    let [route] = config.routes.as_slice() else {
        panic!("one route expected");
    };
    assert_eq!(&*route.name, "jobs");
    assert_eq!(route.source, Source::Channel("jobs:updates".into()));
    assert_eq!(route.topics.len(), 1);
    assert_eq!(route.topics[0].as_literal(), Some("jobs"));
    assert_eq!(route.delivery, Delivery::Subscribe);
    assert!(matches!(route.audience, Audience::Everyone));
    assert!(matches!(route.format, Format::Envelope));
    assert_eq!(route.event_type.as_literal(), Some("jobs"));
    assert!(!route.needs_payload());
    assert_eq!(route.capture_count(), 0);
    assert_eq!(
        route.describe(),
        "jobs: channel=jobs:updates topics=[jobs] delivery=subscribe audience=all format=envelope type=jobs"
    );
}

#[test]
fn example_file_loads() {
    // Beside the file, the secret that scripts/run.sh generates on its first run.
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    if let Err(e) = std::fs::write(dir.path().join("jwt.secret"), "s".repeat(64)) {
        panic!("write jwt.secret: {e}");
    }
    let text = include_str!("../../bridge.example.yaml");
    let config = match Config::from_str(text, &dir.path().join("bridge.example.yaml")) {
        Ok(config) => config,
        Err(errors) => panic!("bridge.example.yaml must load:\n{errors}"),
    };
    assert_eq!(config.auth.mode, AuthMode::Optional);
    assert!(config.auth.jwt.is_some());
    assert_eq!(config.admin.roles, ["admin", "superadmin"]);
    // Without the generated secret, the example does not load: it has no usable default.
    let Err(errors) = Config::from_str(text, Path::new("/nonexistent/bridge.example.yaml")) else {
        panic!("the example must not load without its secret file");
    };
    assert!(
        errors
            .to_string()
            .contains("auth.jwt.secret_file: cannot read"),
        "{errors}"
    );
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
    assert!(config.routes.len() >= 3);
    assert!(config.routes.iter().any(|r| r.delivery == Delivery::Auto));
    assert!(
        config
            .routes
            .iter()
            .any(|r| matches!(r.format, Format::Template(_)))
    );
    assert!(config.routes.iter().any(|r| r.capture_count() == 1));
}

#[test]
fn load_reads_the_file_and_reports_unreadable_ones() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("bridge.yaml");
    if let Err(e) = std::fs::write(&path, MINIMAL) {
        panic!("write: {e}");
    }
    let config = Config::load(&path).map_err(|e| e.to_string());
    assert_eq!(config.map(|c| c.source), Ok(path.clone()));

    let missing = dir.path().join("missing.yaml");
    let Err(ConfigErrors(errors)) = Config::load(&missing) else {
        panic!("a missing file must not load");
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, None);
    let text = errors[0].to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read the routing file: ",
            missing.display()
        )),
        "{text}"
    );
}

#[test]
fn full_settings_are_read() {
    let config = ok(r#"
listen: "[::1]:9000"
redis:
  url: rediss://${REDIS_HOST}:6380/1
websocket:
  path: /live
  allowed_origins: [https://app.example.com, "http://localhost:3000"]
  max_connections: ${MAX_CONN}
  max_frame_bytes: 128
  send_queue: 16
  slow_client: drop_oldest
  ping_interval: 250ms
  idle_timeout: 2m
  client_rate: 120/m
  welcome: { type: hello, id: "{connection_id}", user: "{claims.sub|anonymous}", at: "{now}", epoch: "{epoch}" }
auth:
  mode: optional
  jwt:
    algorithms: [HS256, HS384]
    secret: ${JWT_SECRET}
    issuer: https://id.example.com
    audience: [bridge]
    leeway: 10s
  user_claim: user_id
  roles_claim: realm_access.roles
  api_keys:
    - { sha256: 62AF8704764FAF8EA82FC61CE9C4C3908B6CB97D463A634E9E587D7C885DB0EF, user: svc-reporting, roles: [service, reports] }
    - { sha256: "${KEY_HASH}", user: svc-2, roles: service }
admin:
  roles: [admin, superadmin]
  token: ${ADMIN_TOKEN}
shutdown_grace: 3s
routes:
  - name: jobs
    channel: jobs
"#);
    let auth = &config.auth;
    let jwt = auth.jwt.as_ref().unwrap_or_else(|| panic!("jwt expected"));
    assert_eq!(
        jwt.algorithms,
        [
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::Algorithm::HS384
        ]
    );
    assert_eq!(jwt.validation.leeway, 10);
    assert!(jwt.validation.validate_nbf && jwt.validation.validate_exp);
    assert!(jwt.validation.validate_aud);
    let required: std::collections::BTreeSet<&str> = jwt
        .validation
        .required_spec_claims
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(required, ["aud", "exp", "iss"].into());
    assert!(
        !format!("{config:?}").contains("0123456789abcdef"),
        "Debug shows no secret"
    );
    assert_eq!(auth.user_claim, "user_id");
    assert_eq!(auth.roles_claim, "realm_access.roles");
    assert_eq!(auth.api_keys.len(), 2);
    assert_eq!(auth.api_keys[0].sha256[0], 0x62);
    assert_eq!(&*auth.api_keys[0].user, "svc-reporting");
    assert_eq!(auth.api_keys[1].roles, [std::sync::Arc::from("service")]);
    assert_eq!(config.admin.roles, ["admin", "superadmin"]);
    assert!(config.admin.token_sha256.is_some());
    assert_eq!(config.listen.to_string(), "[::1]:9000");
    assert_eq!(config.redis.url, "rediss://redis.internal:6380/1");
    assert_eq!(config.auth.mode, AuthMode::Optional);
    assert_eq!(config.shutdown_grace, Duration::from_secs(3));
    let ws = &config.websocket;
    assert_eq!(ws.path, "/live");
    assert_eq!(
        ws.allowed_origins,
        vec!["https://app.example.com", "http://localhost:3000"]
    );
    assert_eq!(ws.max_connections, 500);
    assert_eq!(ws.max_frame_bytes, 128);
    assert_eq!(ws.send_queue, 16);
    assert_eq!(ws.slow_client, SlowClient::DropOldest);
    assert_eq!(ws.ping_interval, Duration::from_millis(250));
    assert_eq!(ws.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        ws.client_rate,
        Rate {
            per_second: 2.0,
            burst: 120
        }
    );
    let Welcome::Template(welcome) = &ws.welcome else {
        panic!("a welcome template expected");
    };
    let claims = json!({"sub": "42"});
    let scope = Scope {
        claims: Some(&claims),
        connection_id: Some("c1"),
        epoch: Some("E"),
        now: Some("T"),
        ..Scope::default()
    };
    // Key order is the file's.
    let bytes = welcome.render_to_vec(&scope).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        r#"{"type":"hello","id":"c1","user":"42","at":"T","epoch":"E"}"#
    );
}

const KEY: &str = "  api_keys:\n    - { sha256: 62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef, user: svc }\n";

#[test]
fn auth_modes() {
    for (mode, expected) in [
        ("required", AuthMode::Required),
        ("optional", AuthMode::Optional),
        ("none", AuthMode::None),
    ] {
        let config = ok(&format!("auth:\n  mode: {mode}\n{KEY}{MINIMAL}"));
        assert_eq!(config.auth.mode, expected);
    }
    assert_eq!(
        ok(&format!("auth:\n  mode: none\n{MINIMAL}")).auth.mode,
        AuthMode::None
    );
    assert_eq!(
        one_error(&format!("auth:\n  mode: jwt\n{MINIMAL}")),
        "2:9 auth.mode: unknown mode `jwt` (expected required, optional or none)"
    );
    assert_eq!(
        one_error(&format!("auth:\n  mode: required\n{MINIMAL}")),
        "2:9 auth.mode: needs `jwt` or `api_keys`: without a way to verify a credential, no connection could authenticate"
    );
    assert_eq!(
        one_error(&format!("auth:\n  mode: none\n  jwks: {{}}\n{MINIMAL}")),
        "3:3 auth.jwks: unknown key `jwks` (did you mean `jwt`?)"
    );
    assert_eq!(
        one_error(&format!("auth: {{}}\n{MINIMAL}")),
        "1:7 auth.mode: missing key `mode` (required, optional or none)"
    );
}

#[test]
fn yaml_syntax_error_has_file_line_and_column() {
    let Err(ConfigErrors(errors)) = load("listen: 127.0.0.1:8080\nroutes: [\n  - a: b: c\n") else {
        panic!("must not load");
    };
    assert_eq!(errors.len(), 1);
    let e = &errors[0];
    assert!(e.line.is_some() && e.column.is_some(), "{e}");
    assert!(e.key.is_empty());
    let text = e.to_string();
    assert!(text.starts_with("bridge.yaml:"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    let Err(ConfigErrors(errors)) = load("a: 1\na: 2\n") else {
        panic!("duplicate keys must not load");
    };
    assert_eq!((errors[0].line, errors[0].column), (Some(2), Some(1)));
    assert!(errors[0].message.contains("duplicate"), "{}", errors[0]);
}

#[test]
fn unknown_key_at_top_level() {
    let errors = errors(&format!("lisen: 127.0.0.1:8080\n{MINIMAL}"));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "bridge.yaml:1:1: lisen: unknown key `lisen` (did you mean `listen`?)"
    );
}

#[test]
fn unknown_key_inside_a_route_and_sections() {
    assert_eq!(
        one_error("routes:\n  - name: a\n    patern: \"job:*\"\n    channel: x\n"),
        "3:5 routes[0].patern: unknown key `patern` (did you mean `pattern`?)"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  bogus: 1\n{MINIMAL}")),
        "2:3 websocket.bogus: unknown key `bogus` (expected one of: path, allowed_origins, max_connections, max_connections_per_user, max_connections_per_ip, max_frame_bytes, max_subscriptions, send_queue, slow_client, ping_interval, idle_timeout, client_rate, connect_rate_per_ip, handshake_timeout, welcome, compression)"
    );
    assert_eq!(
        one_error(&format!("redis:\n  host: x\n{MINIMAL}")),
        "2:3 redis.host: unknown key `host` (expected one of: url, sentinel, cluster, tls, heartbeat_interval, heartbeat_timeout)"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    audience: {users: \"{payload.u}\"}\n"),
        "4:16 routes[0].audience.users: unknown key `users` (did you mean `user`?)"
    );
}

#[test]
fn bad_durations_and_numbers() {
    assert_eq!(
        one_error(&format!("websocket:\n  ping_interval: 30\n{MINIMAL}")),
        "2:18 websocket.ping_interval: invalid duration `30`: time unit needed, for example 30sec or 30ms (examples: 30s, 250ms, 2m)"
    );
    assert_eq!(
        one_error(&format!("shutdown_grace: soon\n{MINIMAL}"))
            .split(':')
            .take(2)
            .collect::<Vec<_>>(),
        vec!["1", "17 shutdown_grace"]
    );
    assert_eq!(
        one_error(&format!("websocket:\n  ping_interval: 0s\n{MINIMAL}")),
        "2:18 websocket.ping_interval: must be longer than 0s"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  ping_interval: 1m\n  idle_timeout: 60s\n{MINIMAL}"
        )),
        "3:17 websocket.idle_timeout: must be longer than ping_interval (1m), else idle connections close between pings"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  max_frame_bytes: 64\n{MINIMAL}")),
        "2:20 websocket.max_frame_bytes: must be at least 128"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  send_queue: lots\n{MINIMAL}")),
        "2:15 websocket.send_queue: expected a whole number, found `lots`"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  client_rate: 20/h\n{MINIMAL}")),
        "2:16 websocket.client_rate: invalid rate `20/h`: expected N/s or N/m with N ≥ 1, e.g. 20/s"
    );
    assert_eq!(
        ok(&format!("websocket:\n  client_rate: 5\n{MINIMAL}"))
            .websocket
            .client_rate
            .burst,
        5
    );
}

#[test]
fn compression_settings() {
    let defaults = ok(MINIMAL).websocket.compression;
    assert_eq!(
        (defaults.enabled, defaults.min_bytes, defaults.level),
        (true, 512, 1)
    );
    let set = ok(&format!(
        "websocket:\n  compression: {{enabled: false, min_bytes: 0, level: 9}}\n{MINIMAL}"
    ))
    .websocket
    .compression;
    assert_eq!((set.enabled, set.min_bytes, set.level), (false, 0, 9));
    let partial = ok(&format!(
        "websocket:\n  compression:\n    level: 6\n{MINIMAL}"
    ))
    .websocket
    .compression;
    assert_eq!(
        (partial.enabled, partial.min_bytes, partial.level),
        (true, 512, 6)
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  compression:\n    level: 10\n{MINIMAL}"
        )),
        "3:12 websocket.compression.level: must be 0 to 9"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  compression:\n    enabled: yes\n{MINIMAL}"
        )),
        "3:14 websocket.compression.enabled: expected true or false, found `yes`"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  compression:\n    min_bytes: -1\n{MINIMAL}"
        )),
        "3:16 websocket.compression.min_bytes: expected a whole number, found `-1`"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  compression:\n    windowbits: 9\n{MINIMAL}"
        )),
        "3:5 websocket.compression.windowbits: unknown key `windowbits` (expected one of: enabled, min_bytes, level)"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  compression: on\n{MINIMAL}")),
        "2:16 websocket.compression: expected a mapping, found a string"
    );
}

#[test]
fn other_setting_errors() {
    assert_eq!(
        one_error(&format!("listen: localhost:8080\n{MINIMAL}")),
        "1:9 listen: invalid address `localhost:8080`: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    );
    assert_eq!(
        one_error(&format!(
            "redis:\n  url: http://user:secret@host\n{MINIMAL}"
        )),
        "2:8 redis.url: must start with redis:// or rediss://"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  path: ws\n{MINIMAL}")),
        "2:9 websocket.path: `ws` must start with `/`"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  path: /metrics\n{MINIMAL}")),
        "2:9 websocket.path: `/metrics` is used by another endpoint of the server"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  slow_client: wait\n{MINIMAL}")),
        "2:16 websocket.slow_client: unknown value `wait` (expected disconnect or drop_oldest)"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  allowed_origins: [\"https://a.example/\"]\n{MINIMAL}"
        )),
        "2:21 websocket.allowed_origins[0]: `https://a.example/` is not an origin: write scheme://host[:port] without a path or trailing `/`"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  allowed_origins: [\"*\"]\n{MINIMAL}"
        )),
        "2:21 websocket.allowed_origins[0]: `*` is not an origin: leave the list empty to allow any origin"
    );
    assert_eq!(
        one_error(&format!(
            "websocket:\n  welcome: {{ user: \"{{payload.user}}\" }}\n{MINIMAL}"
        )),
        "2:20 websocket.welcome.user: `{payload.user}` is not available here"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  welcome: fancy\n{MINIMAL}")),
        "2:12 websocket.welcome: expected `native` or a JSON template (a mapping), found `fancy`"
    );
    assert_eq!(
        one_error("listen: 127.0.0.1:1\n"),
        "1:1 routes: missing key `routes`: at least one route is required"
    );
    assert_eq!(
        one_error("routes: []\n"),
        "1:9 routes: at least one route is required"
    );
    assert_eq!(
        one_error("routes:\n  - just-a-name\n"),
        "2:5 routes[0]: expected a route (a mapping with name and channel or pattern), found `just-a-name`"
    );
}

#[test]
fn the_console_switch() {
    assert!(!ok(&format!("console: false\n{MINIMAL}")).console);
    assert!(ok(&format!("console: \"true\"\n{MINIMAL}")).console);
    assert_eq!(
        one_error(&format!("console: off\n{MINIMAL}")),
        "1:10 console: expected true or false, found `off`"
    );
    assert_eq!(
        one_error(&format!("websocket:\n  path: /console.js\n{MINIMAL}")),
        "2:9 websocket.path: `/console.js` is used by another endpoint of the server"
    );
}

#[test]
fn bad_templates_point_at_their_value() {
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    topic: \"{foo}\"\n"),
        "4:12 routes[0].topic: unknown placeholder `{foo}` (expected 1-9, channel, payload.…, claims.…, topic, seq, now, connection_id, epoch or user)"
    );
    assert_eq!(
        one_error(
            "routes:\n  - name: a\n    pattern: \"a:*:*\"\n    topic: [\"t:{1}\", \"t:{3}\"]\n"
        ),
        "4:22 routes[0].topic[1]: capture `{3}` but the pattern has 2 `*`"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    topic: \"t:{1}\"\n"),
        "4:12 routes[0].topic: capture `{1}` is not available here (no `*` pattern to capture from)"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    topic: \"{seq}\"\n"),
        "4:12 routes[0].topic: `{seq}` is not available here"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    audience: {user: \"{claims.sub}\"}\n"),
        "4:22 routes[0].audience.user: `{claims.sub}` is not available here"
    );
    assert_eq!(
        one_error(
            "routes:\n  - name: a\n    pattern: \"j:*\"\n    format:\n      data:\n        - \"{payload.x}\"\n        - \"{2}\"\n"
        ),
        "7:11 routes[0].format.data[1]: capture `{2}` but the pattern has 1 `*`"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    type: \"{payload.kind\"\n"),
        "4:11 routes[0].type: unclosed `{` in `{payload.kind` (write `{{` for a literal brace)"
    );
}

#[test]
fn missing_environment_variable() {
    assert_eq!(
        one_error(&format!(
            "redis:\n  url: \"redis://:${{REDIS_PASSWORD}}@host\"\n{MINIMAL}"
        )),
        "2:8 redis.url: environment variable `REDIS_PASSWORD` is not set"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    format: {k: [\"${NOPE}\"]}\n"),
        "4:18 routes[0].format.k[0]: environment variable `NOPE` is not set"
    );
    // A default makes a missing variable fine.
    let config = ok(&format!(
        "redis:\n  url: \"${{REDIS_URL:-redis://10.1.1.1:6379}}\"\n{MINIMAL}"
    ));
    assert_eq!(config.redis.url, "redis://10.1.1.1:6379");
}

#[test]
fn duplicate_route_names() {
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n  - name: a\n    channel: y\n"),
        "4:11 routes[1].name: duplicate route name `a` (first used on line 2)"
    );
    assert_eq!(
        one_error("routes:\n  - name: \" \"\n    channel: x\n"),
        "2:11 routes[0].name: must not be empty"
    );
    assert_eq!(
        one_error("routes:\n  - channel: x\n"),
        "2:5 routes[0].name: missing key `name`"
    );
}

#[test]
fn channel_and_pattern_exactly_one() {
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: x\n    pattern: \"x:*\"\n"),
        "4:14 routes[0].pattern: a route has exactly one of `channel` and `pattern`, not both"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    topic: t\n"),
        "2:5 routes[0]: missing key `channel` or `pattern` (exactly one is required)"
    );
    assert_eq!(
        one_error("routes:\n  - name: a\n    channel: \"job:*\"\n"),
        "3:14 routes[0].channel: `channel` is an exact channel name: for the glob `job:*` write `pattern: \"job:*\"`"
    );
    // A broken source does not cause extra capture errors.
    assert_eq!(
        one_error("routes:\n  - name: a\n    topic: \"t:{1}\"\n")
            .split(' ')
            .next(),
        Some("2:5")
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let errors = errors(
        "websocket:\n  ping_interval: never\nroutes:\n  - name: a\n    channel: x\n    delivery: sometimes\n  - name: a\n    pattern: \"p:*\"\n    topic: \"{2}\"\n    bogus: 1\n",
    );
    let summary: Vec<String> = errors
        .iter()
        .map(|e| {
            format!(
                "{}:{} {}",
                e.line.unwrap_or(0),
                e.column.unwrap_or(0),
                e.key
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "2:18 websocket.ping_interval",
            "6:15 routes[0].delivery",
            "7:11 routes[1].name",
            "9:12 routes[1].topic",
            "10:5 routes[1].bogus",
        ]
    );
    let all = ConfigErrors(errors).to_string();
    assert_eq!(all.lines().count(), 5);
}

#[test]
fn routes_with_templates_audiences_and_formats() {
    let config = ok(r#"
auth:
  mode: required
  api_keys: [{ sha256: 62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef, user: svc }]
routes:
  - name: botrix-jobs
    channel: botrix:jobs:updates
    topic: jobs
    delivery: auto
    type: "{payload.event|job_update}"
  - name: job-progress
    pattern: "job:*"
    topic: ["job:{1}", "user:{payload.userId}"]
    audience: { user: "{payload.userId}" }
    format: raw
  - name: workspace
    pattern: "ws:*:*"
    topic: "workspace:{1}"
    audience:
      any:
        - { roles: [admin, superadmin] }
        - all: [authenticated, { claims: { tenant: "{1}", org.id: "{2}" } }]
    format:
      type: "{payload.event|update}"
      id: "{2}"
      data: "{payload}"
      seq: "{seq}"
      topic: "{topic}"
      fixed: [1, true, null]
"#);
    let [jobs, progress, workspace] = config.routes.as_slice() else {
        panic!("three routes expected");
    };
    assert_eq!(jobs.delivery, Delivery::Auto);
    assert!(jobs.needs_payload());
    assert_eq!(
        jobs.describe(),
        "botrix-jobs: channel=botrix:jobs:updates topics=[jobs] delivery=auto audience=all format=envelope type={payload.event|job_update}"
    );

    assert_eq!(progress.capture_count(), 1);
    assert!(progress.needs_payload());
    assert!(progress.audience.needs_payload());
    assert_eq!(
        progress.describe(),
        "job-progress: pattern=job:* topics=[job:{1}, user:{payload.userId}] delivery=subscribe audience=user={payload.userId} format=raw"
    );
    let m = progress.topics[0].match_topic("job:abc");
    assert_eq!(
        m.map(|m| m.captures[0].clone()),
        Some(Some("abc".to_owned()))
    );

    assert_eq!(workspace.capture_count(), 2);
    assert!(!workspace.audience.needs_payload());
    assert!(workspace.needs_payload());
    assert_eq!(
        workspace.audience.describe(),
        "any(roles=[admin,superadmin], all(authenticated, claims(tenant={1}, org.id={2})))"
    );
    let Audience::AnyOf(any) = &workspace.audience else {
        panic!("any expected");
    };
    let Audience::AllOf(every) = &any[1] else {
        panic!("all expected");
    };
    let Audience::Claims(claims) = &every[1] else {
        panic!("claims expected");
    };
    assert_eq!(
        claims[1].0,
        vec![
            PathSegment::Key("org".into()),
            PathSegment::Key("id".into())
        ]
    );
    let Format::Template(format) = &workspace.format else {
        panic!("a template format expected");
    };
    let payload = json!({"event": "renamed", "name": "W"});
    let scope = Scope {
        channel: "ws:t1:w9",
        captures: &["t1", "w9"],
        payload: Some(&payload),
        topic: Some("workspace:t1"),
        seq: Some(7),
        ..Scope::default()
    };
    let bytes = format.render_to_vec(&scope).unwrap_or_default();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        r#"{"type":"renamed","id":"w9","data":{"event":"renamed","name":"W"},"seq":7,"topic":"workspace:t1","fixed":[1,true,null]}"#
    );
}

#[test]
fn route_value_errors() {
    let route = |body: &str| one_error(&format!("routes:\n  - name: a\n    channel: x\n{body}"));
    assert_eq!(
        route("    format: raw\n    type: t\n"),
        "5:11 routes[0].type: `type` is only used by `format: envelope`"
    );
    assert_eq!(
        route("    format: json\n"),
        "4:13 routes[0].format: expected `envelope`, `raw` or a JSON template (a mapping), found `json`"
    );
    assert_eq!(
        route("    audience: everyone\n"),
        "4:15 routes[0].audience: expected `all`, `authenticated` or a mapping with one of user, connection, roles, claims, any, all, found `everyone`"
    );
    assert_eq!(
        route("    audience: {user: \"{payload.u}\", roles: [a]}\n"),
        "4:15 routes[0].audience: an audience mapping has exactly one key: user, connection, roles, claims, any or all"
    );
    assert_eq!(
        route("    audience: {roles: []}\n"),
        "4:23 routes[0].audience.roles: expected a non-empty list of non-empty role names"
    );
    assert_eq!(
        route("    audience: {any: []}\n"),
        "4:21 routes[0].audience.any: expected at least one audience"
    );
    assert_eq!(
        route("    audience: {all: [authenticated, nobody]}\n"),
        "4:37 routes[0].audience.all[1]: expected `all`, `authenticated` or a mapping with one of user, connection, roles, claims, any, all, found `nobody`"
    );
    assert_eq!(
        route("    audience: {claims: {\"a..b\": x}}\n"),
        "4:25 routes[0].audience.claims.a..b: empty segment in the path `a..b`"
    );
    assert_eq!(
        route("    delivery: push\n"),
        "4:15 routes[0].delivery: unknown delivery `push` (expected auto or subscribe)"
    );
    assert_eq!(
        route("    topic: []\n"),
        "4:12 routes[0].topic: at least one topic is required"
    );
    assert_eq!(
        route("    topic: [t, t]\n"),
        "4:16 routes[0].topic[1]: duplicate topic `t`"
    );
    assert_eq!(
        route("    topic: \"\"\n"),
        "4:12 routes[0].topic: must not be empty"
    );
    assert_eq!(
        route("    topic: {a: b}\n"),
        "4:12 routes[0].topic: expected a string, found a mapping"
    );
}

#[test]
fn error_display_formats() {
    let mut error = ConfigError {
        file: "/etc/redis-ws-bridge/bridge.yaml".into(),
        line: Some(3),
        column: Some(5),
        key: "routes[0].topic".into(),
        message: "bad".into(),
    };
    assert_eq!(
        error.to_string(),
        "/etc/redis-ws-bridge/bridge.yaml:3:5: routes[0].topic: bad"
    );
    error.key.clear();
    assert_eq!(
        error.to_string(),
        "/etc/redis-ws-bridge/bridge.yaml:3:5: bad"
    );
    error.line = None;
    error.column = None;
    assert_eq!(error.to_string(), "/etc/redis-ws-bridge/bridge.yaml: bad");
    let errors = ConfigErrors(vec![error.clone(), error]);
    assert_eq!(
        errors.to_string(),
        "/etc/redis-ws-bridge/bridge.yaml: bad\n/etc/redis-ws-bridge/bridge.yaml: bad"
    );
}

#[test]
fn hostile_input_does_not_panic() {
    let inputs = [
        "",
        "~",
        "- a\n- b\n",
        "routes: 5\n",
        "routes: [null, 1, [], {}]\n",
        "routes:\n  - name: [a]\n    channel: {x: 1}\n    topic: [[x]]\n    format: 1.5\n    audience: {any: {}}\n",
        "\u{feff}routes:\n  - {name: é, channel: \"é*\"}\n",
        "a: &x [*x]\n",
        &"[".repeat(500),
        "listen: !!binary AAAA\n",
        "routes:\n  - name: a\n    channel: b\n    format: {\"{1}\": \"}}{{\"}\n",
    ];
    for input in inputs {
        // Any outcome but a panic is fine; errors must still be located.
        if let Err(ConfigErrors(errors)) = load(input) {
            assert!(!errors.is_empty());
        }
    }
}

/// `auth:` with `mode: required` and the given `jwt:` body (indented by 4), then MINIMAL.
fn with_jwt(jwt: &str) -> String {
    let mut s = String::from("auth:\n  mode: required\n  jwt:\n");
    for line in jwt.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s.push_str(MINIMAL);
    s
}

const KEYS_DIR: &str = "tests/fixtures/keys";

#[test]
fn jwt_keys_match_their_algorithms() {
    for (algorithms, file) in [
        ("[RS256, RS512, PS256]", "rsa.pub.pem"),
        ("[ES256]", "ec256.pub.pem"),
        ("[ES384]", "ec384.pub.pem"),
        ("[EdDSA]", "ed25519.pub.pem"),
    ] {
        let config = ok(&with_jwt(&format!(
            "algorithms: {algorithms}\npublic_key_file: {KEYS_DIR}/{file}"
        )));
        assert!(config.auth.jwt.is_some(), "{algorithms}");
    }
    let secret = "s".repeat(64);
    for (text, expected) in [
        (
            "algorithms: [HS256, RS256]\nsecret: x".to_owned(),
            "4:25 auth.jwt.algorithms[1]: `RS256` cannot be listed with `HS256`: one list takes algorithms of one key family (HS* use `secret`; RS*/PS* an RSA key; ES* an EC key; EdDSA an Ed25519 key), else a token could pick the family its forger can sign with",
        ),
        (
            "algorithms: [none]\nsecret: x".to_owned(),
            "4:18 auth.jwt.algorithms[0]: `none` is never accepted: an unsigned token would let anyone choose its identity",
        ),
        (
            "algorithms: [ES512]\nsecret: x".to_owned(),
            "4:18 auth.jwt.algorithms[0]: unknown algorithm `ES512` (expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)",
        ),
        (
            "algorithms: [HS256, HS256]\nsecret: x".to_owned(),
            "4:25 auth.jwt.algorithms[1]: `HS256` is listed twice",
        ),
        (
            "secret: x".to_owned(),
            "4:5 auth.jwt.algorithms: missing key `algorithms`, e.g. [HS256] or [RS256]",
        ),
        (
            "algorithms: [HS256]".to_owned(),
            "4:5 auth.jwt.secret: HS* algorithms need `secret` or `secret_file`",
        ),
        (
            "algorithms: [HS256]\nsecret: too-short".to_owned(),
            "5:13 auth.jwt.secret: the secret is 9 bytes; HS256 needs at least 32 (RFC 7518 §3.2), e.g. from `openssl rand -base64 48`",
        ),
        (
            format!("algorithms: [HS256, HS512]\nsecret: {}", &secret[..40]),
            "5:13 auth.jwt.secret: the secret is 40 bytes; HS256/HS512 needs at least 64 (RFC 7518 §3.2), e.g. from `openssl rand -base64 48`",
        ),
        (
            format!("algorithms: [HS256]\nsecret: {secret}\nsecret_file: x"),
            "6:18 auth.jwt.secret_file: set `secret` or `secret_file`, not both",
        ),
        (
            format!("algorithms: [HS256]\nsecret: {secret}\npublic_key_file: x"),
            "6:5 auth.jwt.public_key_file: is for RS*/PS*/ES*/EdDSA; HS* algorithms verify with `secret` or `secret_file`",
        ),
        (
            format!("algorithms: [RS256]\nsecret: {secret}"),
            "5:5 auth.jwt.secret: is for HS* algorithms; RS256 verifies with `public_key_file`",
        ),
        (
            "algorithms: [RS256]".to_owned(),
            "4:5 auth.jwt.public_key_file: RS256 needs `public_key_file` (a PEM public key)",
        ),
        (
            format!("algorithms: [RS256]\npublic_key_file: {KEYS_DIR}/rsa.key.pem"),
            "5:22 auth.jwt.public_key_file: holds a private key: give the bridge the public key only (`openssl pkey -in private.pem -pubout`)",
        ),
        (
            format!("algorithms: [ES256, ES384]\npublic_key_file: {KEYS_DIR}/ec256.pub.pem"),
            "5:22 auth.jwt.public_key_file: the key does not suit ES384",
        ),
        (
            format!("algorithms: [EdDSA]\npublic_key_file: {KEYS_DIR}/ec256.pub.pem"),
            "5:22 auth.jwt.public_key_file: expected an Ed25519 public key in PEM format: InvalidKeyFormat",
        ),
        (
            format!("algorithms: [RS256]\npublic_key_file: {KEYS_DIR}/ed25519.pub.pem"),
            "5:22 auth.jwt.public_key_file: expected an RSA public key in PEM format: InvalidKeyFormat",
        ),
        (
            format!("algorithms: [HS256]\nsecret: {secret}\nissuer: ''"),
            "6:13 auth.jwt.issuer: an empty value would match no token",
        ),
        (
            format!("algorithms: [HS256]\nsecret: {secret}\nleeway: soon"),
            "6:13 auth.jwt.leeway: invalid duration `soon`: expected number at 0 (examples: 30s, 250ms, 2m)",
        ),
    ] {
        assert_eq!(one_error(&with_jwt(&text)), expected, "{text}");
    }
    let missing = one_error(&with_jwt(
        "algorithms: [HS256]\nsecret_file: no/such.secret",
    ));
    assert!(
        missing.starts_with("5:18 auth.jwt.secret_file: cannot read `no/such.secret`: "),
        "{missing}"
    );
}

#[test]
fn key_files_are_read_relative_to_the_routing_file_at_each_load() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let path = dir.path().join("bridge.yaml");
    let text = with_jwt("algorithms: [HS256]\nsecret_file: jwt.secret");
    let write = |name: &str, text: &str| {
        if let Err(e) = std::fs::write(dir.path().join(name), text) {
            panic!("write {name}: {e}");
        }
    };
    write("bridge.yaml", &text);
    write("jwt.secret", "short\n");
    let Err(errors) = Config::load(&path) else {
        panic!("a short secret must not load");
    };
    // The trailing newline is not part of the secret.
    assert!(
        errors.to_string().contains("the secret is 5 bytes"),
        "{errors}"
    );
    write("jwt.secret", &format!("{}\r\n", "k".repeat(32)));
    if let Err(errors) = Config::load(&path) {
        panic!("a 32-byte secret file must load: {errors}");
    }
}

#[test]
fn api_key_and_admin_errors() {
    let auth = |keys: &str| format!("auth:\n  mode: required\n  api_keys:\n{keys}{MINIMAL}");
    let hash = "ab".repeat(32);
    assert_eq!(
        one_error(&auth("    - { sha256: secret-key-in-clear, user: u }\n")),
        "4:17 auth.api_keys[0].sha256: expected 64 hex digits: the SHA-256 of the key (`printf %s KEY | sha256sum`), never the key itself"
    );
    assert_eq!(
        one_error(&auth(&format!(
            "    - {{ sha256: {hash}, user: u }}\n    - {{ sha256: {hash}, user: v }}\n"
        ))),
        "5:7 auth.api_keys[1]: the same key is listed twice"
    );
    assert_eq!(
        one_error(&auth(&format!("    - {{ sha256: {hash} }}\n"))),
        "4:7 auth.api_keys[0].user: missing key `user`"
    );
    assert_eq!(
        one_error(&auth(&format!(
            "    - {{ sha256: {hash}, user: u, role: x }}\n"
        ))),
        "4:92 auth.api_keys[0].role: unknown key `role` (did you mean `roles`?)"
    );
    assert_eq!(
        one_error(&format!("admin:\n  roles: [admin]\n{MINIMAL}")),
        "2:10 admin.roles: needs `auth.jwt` or `auth.api_keys` to verify who has these roles"
    );
    assert_eq!(
        one_error(&format!("admin:\n  token: short\n{MINIMAL}")),
        "2:10 admin.token: the token is 5 bytes; at least 16 are needed, else it can be guessed (e.g. `openssl rand -hex 32`)"
    );
    assert_eq!(
        one_error(&format!(
            "admin:\n  token: a-long-enough-token\n  token_file: x\n{MINIMAL}"
        )),
        "3:15 admin.token_file: set `token` or `token_file`, not both"
    );
    assert_eq!(
        one_error(&format!("admin:\n  tokens: x\n{MINIMAL}")),
        "2:3 admin.tokens: unknown key `tokens` (did you mean `token`?)"
    );
    let config = ok(&format!("admin:\n  token: a-long-enough-token\n{MINIMAL}"));
    assert!(config.admin.roles.is_empty() && config.admin.token_sha256.is_some());
    let config = ok(MINIMAL);
    assert!(config.admin.roles.is_empty() && config.admin.token_sha256.is_none());
}

#[test]
fn audiences_need_authentication_to_admit_anyone() {
    let route = |audience: &str| {
        format!("routes:\n  - name: a\n    pattern: \"a:*\"\n    audience: {audience}\n")
    };
    assert_eq!(
        one_error(&route("{user: \"{1}\"}")),
        "4:15 routes[0].audience: `user={1}` admits only authenticated connections, but auth.mode is none (every connection is anonymous), so this route would reach nobody: set auth.mode to required or optional (with jwt or api_keys), or use `audience: all`"
    );
    assert_eq!(
        one_error(&format!(
            "auth: {{ mode: none }}\n{}",
            route("{all: [all, authenticated]}")
        )),
        "5:15 routes[0].audience: `all(all, authenticated)` admits only authenticated connections, but auth.mode is none (every connection is anonymous), so this route would reach nobody: set auth.mode to required or optional (with jwt or api_keys), or use `audience: all`"
    );
    // An audience that anonymous connections can pass is fine.
    ok(&route("{any: [all, {roles: [admin]}]}"));
    ok(&format!(
        "auth:\n  mode: optional\n{KEY}{}",
        route("authenticated")
    ));
}

#[test]
fn route_match_errors() {
    let route = |body: &str| one_error(&format!("routes:\n  - name: a\n    channel: x\n{body}"));
    assert_eq!(
        route("    match: [type]\n"),
        "4:12 routes[0].match: expected a mapping of payload paths to patterns, e.g. {type: [user.created, \"user.*\"]}"
    );
    assert_eq!(
        route("    match: {type: []}\n"),
        "4:19 routes[0].match.type: expected at least one pattern"
    );
    assert_eq!(
        route("    match: {\"a..b\": x}\n"),
        "4:13 routes[0].match.a..b: empty segment in the path `a..b`"
    );
    assert_eq!(
        route("    match: {type: {a: b}}\n"),
        "4:19 routes[0].match.type: expected a string, found a mapping"
    );
    let config = ok("routes:\n  - name: a\n    channel: x\n    match: {type: user.*, data.n: 3}\n");
    assert!(config.routes[0].needs_payload());
    assert!(!config.routes[0].matcher.is_empty());
}

#[test]
fn a_personal_looking_topic_open_to_all_is_warned_about() {
    let load = |audience: &str| {
        let text = format!(
            "auth:\n  mode: optional\n  jwt: {{ algorithms: [HS256], secret: 0123456789abcdef0123456789abcdef }}\nroutes:\n  - name: inbox\n    channel: c\n    topic: \"user:{{payload.user_id}}\"\n{audience}  - name: news\n    channel: n\n    topic: news\n"
        );
        Config::from_str(&text, Path::new("t.yaml")).unwrap()
    };
    let warnings = load("").warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("route `inbox`"), "{}", warnings[0]);
    assert!(
        load("    audience: { user: \"{payload.user_id}\" }\n")
            .warnings()
            .is_empty()
    );
}

/// The routing file with every key of `sections` that has a default value written out
/// with it (under the section's key, or at the top level for `None`).
fn with_table_defaults(sections: &[(Option<&str>, &[schema::Key])], routes: &str) -> String {
    let mut text = String::new();
    for (section, keys) in sections {
        let indent = match section {
            Some(name) => {
                text.push_str(&format!("{name}:\n"));
                "  "
            }
            None => "",
        };
        for key in *keys {
            if let schema::Default::Value(value) = key.default {
                text.push_str(&format!("{indent}{}: {value}\n", key.name));
            }
        }
    }
    text + routes
}

#[test]
fn the_defaults_of_the_tables_are_the_defaults_in_force() {
    let routes = "routes:\n  - name: r\n    channel: c\n";
    let route_defaults = routes.to_owned()
        + &schema::ROUTE
            .iter()
            .filter_map(|key| match key.default {
                schema::Default::Value(value) => Some(format!("    {}: {value}\n", key.name)),
                schema::Default::Otherwise(_) => None,
            })
            .collect::<String>();
    let explicit = with_table_defaults(
        &[
            (None, schema::TOP),
            (Some("redis"), schema::REDIS),
            (Some("websocket"), schema::WEBSOCKET),
        ],
        "",
    ) + "  compression:\n"
        + &schema::COMPRESSION
            .iter()
            .filter_map(|key| match key.default {
                schema::Default::Value(value) => Some(format!("    {}: {value}\n", key.name)),
                schema::Default::Otherwise(_) => None,
            })
            .collect::<String>()
        + &route_defaults;
    let load = |text: &str| {
        Config::from_str(text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{text}\n{e}"))
    };
    let (implicit, explicit) = (load(routes), load(&explicit));
    let shown = |config: &Config| {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {}",
            config.listen,
            config.redis,
            config.websocket,
            config.shutdown_grace,
            config.trusted_proxies,
            config.console,
            config.routes,
            config.history_max_bytes
        )
    };
    assert_eq!(shown(&implicit), shown(&explicit));
}

#[test]
fn docs_routing_md_has_the_keys_types_and_defaults_of_the_tables() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/routing.md"))
        .expect("docs/routing.md");
    for (heading, keys) in schema::SECTIONS {
        let start = docs
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("docs/routing.md has no `{heading}`"));
        // The section's first table: its rows are `| key | type | default | meaning |`.
        let rows: Vec<Vec<&str>> = docs[start..]
            .lines()
            .skip_while(|line| !line.starts_with("| key |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| line.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect();
        let documented: Vec<&str> = rows.iter().map(|row| row[0].trim_matches('`')).collect();
        let tabled: Vec<&str> = keys.iter().map(|key| key.name).collect();
        assert_eq!(documented, tabled, "the keys of {heading}");
        for (row, key) in rows.iter().zip(*keys) {
            assert_eq!(row[1], key.kind, "{heading} `{}`: type", key.name);
            match key.default {
                schema::Default::Value(value) => assert!(
                    row[2].starts_with(&format!("`{value}`")),
                    "{heading} `{}`: default {} in the docs, `{value}` in the table",
                    key.name,
                    row[2]
                ),
                schema::Default::Otherwise(text) => {
                    assert_eq!(row[2], text, "{heading} `{}`: default", key.name)
                }
            }
        }
    }
}

#[test]
fn redis_tls_files_are_read_and_checked_at_load() {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        if let Err(e) = std::fs::write(&path, text) {
            panic!("write {name}: {e}");
        }
        path.display().to_string()
    };
    let garbage = file("garbage.pem", "not a certificate\n");
    let bad_base64 = file(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let not_a_certificate = file(
        "short.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.path().join("missing.pem").display().to_string();
    let tls = |url: &str, keys: &str| format!("redis:\n  url: {url}\n  tls:\n{keys}{MINIMAL}");
    let rediss = "rediss://redis.internal:6380/0";
    assert_eq!(
        one_error(&tls(rediss, &format!("    ca_file: {missing}\n"))),
        format!(
            "4:14 redis.tls.ca_file: cannot read `{missing}`: No such file or directory (os error 2)"
        )
    );
    assert_eq!(
        one_error(&tls(rediss, &format!("    ca_file: {garbage}\n"))),
        "4:14 redis.tls.ca_file: expected PEM certificates (-----BEGIN CERTIFICATE-----), found none"
    );
    let error = one_error(&tls(rediss, &format!("    ca_file: {bad_base64}\n")));
    assert!(
        error.starts_with("4:14 redis.tls.ca_file: expected PEM certificates: "),
        "{error}"
    );
    let error = one_error(&tls(rediss, &format!("    ca_file: {not_a_certificate}\n")));
    assert!(
        error.starts_with("4:14 redis.tls.ca_file: not a usable CA certificate: "),
        "{error}"
    );
    assert_eq!(
        one_error(&tls(rediss, &format!("    cert_file: {garbage}\n"))),
        "4:5 redis.tls.key_file: `cert_file` needs `key_file` too: the private key of the client certificate"
    );
    assert_eq!(
        one_error(&tls(rediss, &format!("    key_file: {garbage}\n"))),
        "4:5 redis.tls.cert_file: `key_file` needs `cert_file` too: the client certificate it signs for"
    );
    assert_eq!(
        one_error(&tls(
            "redis://redis.internal:6379/0",
            &format!("    ca_file: {garbage}\n")
        )),
        "4:5 redis.tls: applies to TLS connections only: the url must start with rediss://"
    );
    assert_eq!(
        one_error(&tls(rediss, "    ca: x\n")),
        "4:5 redis.tls.ca: unknown key `ca` (expected one of: ca_file, cert_file, key_file)"
    );
    // No `tls` section: a rediss:// URL verifies against the system roots.
    let config = ok(&format!("redis:\n  url: {rediss}\n{MINIMAL}"));
    assert!(config.redis.tls.is_none());
}

#[test]
fn instance_names_a_bridge_among_several() {
    assert_eq!(ok(MINIMAL).instance, None);
    assert_eq!(
        ok(&format!("instance: ws-1\n{MINIMAL}"))
            .instance
            .as_deref(),
        Some("ws-1")
    );
    assert_eq!(
        one_error(&format!("instance: \"ws 1\"\n{MINIMAL}")),
        "1:11 instance: expected a name of 1 to 64 printable ASCII characters, without spaces"
    );
    assert_eq!(
        one_error(&format!("instance: \"\"\n{MINIMAL}")),
        "1:11 instance: expected a name of 1 to 64 printable ASCII characters, without spaces"
    );
}

#[test]
fn redis_sentinel_settings_are_checked() {
    let sentinel =
        |body: &str| format!("redis:\n  url: redis://:pw@unused:1/0\n  sentinel:\n{body}{MINIMAL}");
    let config = ok(&sentinel(
        "    master: mymaster\n    nodes: [redis://10.0.0.1:26379, \"rediss://[::1]:26380\"]\n    password: s3\n",
    ));
    let Some(settings) = &config.redis.sentinel else {
        panic!("a sentinel section");
    };
    assert_eq!(settings.master, "mymaster");
    assert_eq!(settings.nodes.len(), 2);
    assert!(
        !format!("{settings:?}").contains("s3"),
        "Debug shows no password"
    );
    assert_eq!(
        one_error(&sentinel("    master: m\n    nodes: []\n")),
        "5:12 redis.sentinel.nodes: must list at least one node"
    );
    assert_eq!(
        one_error(&sentinel("    master: m\n    nodes: [redis://10.0.0.1]\n")),
        "5:13 redis.sentinel.nodes[0]: `redis://10.0.0.1` must be redis://HOST:PORT (with the port, e.g. 26379, and nothing after it)"
    );
    assert_eq!(
        one_error(&sentinel("    master: m\n    nodes: [10.0.0.1:26379]\n")),
        "5:13 redis.sentinel.nodes[0]: `10.0.0.1:26379` must start with redis:// or rediss://"
    );
    assert_eq!(
        one_error(&sentinel("    nodes: [redis://10.0.0.1:26379]\n")),
        "4:5 redis.sentinel.master: missing key `master`: the master's name in the sentinels' configuration"
    );
    assert_eq!(
        one_error(&sentinel(
            "    master: m\n    nodes: [redis://a:1]\n  cluster:\n    nodes: [redis://b:7000]\n"
        )),
        "7:5 redis.cluster: `sentinel` and `cluster` exclude each other: a Redis is one or the other"
    );
    let cluster = |nodes: &str| format!("redis:\n  cluster:\n    nodes: {nodes}\n{MINIMAL}");
    assert_eq!(
        one_error(&cluster("[]")),
        "3:12 redis.cluster.nodes: must list at least one node"
    );
    assert_eq!(
        one_error(&cluster("[redis://10.0.0.1:7000, redis://10.0.0.2]")),
        "3:36 redis.cluster.nodes[1]: `redis://10.0.0.2` must be redis://HOST:PORT (with the port, e.g. 26379, and nothing after it)"
    );
    assert_eq!(
        one_error(&cluster("[redis://10.0.0.1:7000, rediss://10.0.0.2:7000]")),
        "3:36 redis.cluster.nodes[1]: `rediss://10.0.0.2:7000` does not match redis.url's scheme (redis://): every node is reached with the url's scheme, credentials and TLS settings"
    );
    let config = ok(&cluster("[redis://10.0.0.1:7000, redis://10.0.0.2:7000]"));
    assert_eq!(config.redis.cluster.map(|nodes| nodes.len()), Some(2));
}

#[test]
fn history_conflate_and_their_bound() {
    let config = ok(
        "history_max_bytes: 1048576\nroutes:\n  - name: a\n    pattern: \"job:*\"\n    topic: \"job:{1}\"\n    history: { size: 50, ttl: 10m }\n    conflate: true\n  - name: b\n    channel: c\n    history: { size: 1 }\n  - name: plain\n    channel: d\n",
    );
    assert_eq!(config.history_max_bytes, 1 << 20);
    assert_eq!(
        config.routes[0].history,
        Some(crate::config::Retention {
            size: 50,
            ttl: Some(Duration::from_secs(600))
        })
    );
    assert!(config.routes[0].conflate);
    assert!(
        config.routes[0]
            .describe()
            .ends_with(" history(size=50, ttl=10m) conflate")
    );
    assert_eq!(
        config.routes[1].history.map(|h| (h.size, h.ttl)),
        Some((1, None))
    );
    assert!(config.routes[2].history.is_none() && !config.routes[2].conflate);
    assert_eq!(ok(MINIMAL).history_max_bytes, 64 << 20);

    let route = |body: &str| one_error(&format!("routes:\n  - name: a\n    channel: x\n{body}"));
    assert_eq!(
        route("    history: 50\n"),
        "4:14 routes[0].history: expected a mapping such as {size: 50, ttl: 10m}, found `50`"
    );
    assert_eq!(
        route("    history: { ttl: 1m }\n"),
        "4:14 routes[0].history.size: missing key `size`"
    );
    assert_eq!(
        route("    history: { size: 0 }\n"),
        "4:22 routes[0].history.size: must be at least 1"
    );
    assert_eq!(
        route("    history: { size: 10001 }\n"),
        "4:22 routes[0].history.size: must be 1 to 10000"
    );
    assert_eq!(
        route("    history: { size: many }\n"),
        "4:22 routes[0].history.size: expected a whole number, found `many`"
    );
    assert_eq!(
        route("    history: { size: 5, ttl: 0s }\n"),
        "4:30 routes[0].history.ttl: must be longer than 0s"
    );
    assert_eq!(
        route("    history: { size: 5, ttl: soon }\n"),
        "4:30 routes[0].history.ttl: invalid duration `soon`: expected number at 0 (examples: 30s, 250ms, 2m)"
    );
    assert_eq!(
        route("    history: { size: 5, tll: 1m }\n"),
        "4:25 routes[0].history.tll: unknown key `tll` (did you mean `ttl`?)"
    );
    // Frames addressed to one connection cannot be retained for another: a route has no
    // connection to name (`{connection_id}` is the welcome frame's only).
    assert!(
        route("    topic: \"c:{connection_id}\"\n    history: { size: 5 }\n")
            .starts_with("4:12 routes[0].topic: ")
    );
    assert_eq!(
        route("    conflate: sometimes\n"),
        "4:15 routes[0].conflate: expected true or false, found `sometimes`"
    );
    assert_eq!(
        one_error(&format!("history_max_bytes: 0\n{MINIMAL}")),
        "1:20 history_max_bytes: must be at least 1"
    );
}

#[test]
fn inbound_routes_compile_with_their_defaults_and_errors() {
    // With authentication: the default `allow` admits nobody under `auth.mode: none`.
    let base = format!("auth:\n  mode: optional\n{KEY}{MINIMAL}");
    let config = ok(&format!(
        "{base}inbound:\n  - name: chat\n    match: {{ type: publish }}\n    channel: \"chat:{{payload.topic}}:{{user}}:{{connection_id}}:{{claims.t}}\"\n"
    ));
    let chat = &config.inbound[0];
    assert_eq!(&*chat.name, "chat");
    assert!(matches!(chat.allow, Audience::Authenticated));
    assert!(chat.rate.is_none() && !chat.ack);
    assert!(ok(MINIMAL).inbound.is_empty());

    let inbound = |body: &str| format!("{base}inbound:\n  - name: a\n{body}");
    assert_eq!(
        one_error(&inbound("    channel: \"x:{channel}\"\n")),
        "10:14 inbound[0].channel: `{channel}` is not available here"
    );
    assert!(
        one_error(&inbound("    channel: \"{payload.c}\"\n"))
            .starts_with("10:14 inbound[0].channel: `{payload.c}` can name a channel starting with `__redis-ws-bridge__:`")
    );
    assert_eq!(
        one_error(&inbound("    channel: c\n    rate: fast\n")),
        "11:11 inbound[0].rate: invalid rate `fast`: expected N/s or N/m with N ≥ 1, e.g. 20/s"
    );
    assert_eq!(
        one_error(&format!(
            "{base}inbound:\n  - name: a\n    channel: c\n  - name: a\n    channel: d\n"
        )),
        "11:11 inbound[1].name: duplicate inbound route name `a` (first used on line 9)"
    );
    let typo = errors(&inbound("    chanel: c\n"));
    assert!(
        typo.iter().any(|e| e.key == "inbound[0].chanel"
            && e.message == "unknown key `chanel` (did you mean `channel`?)"),
        "{typo:#?}"
    );
}

#[test]
fn an_inbound_allow_needs_authentication_to_admit_anyone() {
    let inbound = |body: &str| format!("{MINIMAL}inbound:\n  - name: a\n    channel: c\n{body}");
    assert_eq!(
        one_error(&inbound("")),
        "5:5 inbound[0].allow: `authenticated` (the default) admits only authenticated connections, but auth.mode is none (every connection is anonymous), so this inbound route would refuse every frame: set auth.mode to required or optional (with jwt or api_keys), or use `allow: all`"
    );
    assert!(
        one_error(&inbound("    allow: { roles: [ops] }\n"))
            .starts_with("7:12 inbound[0].allow: `roles="),
        "{}",
        one_error(&inbound("    allow: { roles: [ops] }\n"))
    );
    // What anonymous connections can pass is fine.
    assert!(matches!(
        ok(&inbound("    allow: all\n")).inbound[0].allow,
        Audience::Everyone
    ));
    ok(&inbound("    allow: { any: [all, authenticated] }\n"));
}

#[test]
fn presence_and_the_connection_audience_compile() {
    let text = "routes:\n  - name: rooms\n    pattern: \"room:*\"\n    topic: \"room:{1}\"\n    presence: { visible_to: { claims: { rooms: \"{topic}\" } }, events: true }\n  - name: replies\n    channel: replies\n    delivery: auto\n    audience: { connection: \"{payload.connection_id}\" }\n";
    let config = ok(text);
    let presence = config.routes[0].presence.as_ref().expect("presence");
    assert!(presence.events);
    assert!(matches!(presence.visible_to, Audience::Claims(_)));
    assert!(config.routes[1].presence.is_none());
    assert!(matches!(config.routes[1].audience, Audience::Connection(_)));

    let auto = "routes:\n  - name: a\n    channel: c\n    delivery: auto\n    presence: {}\n";
    assert_eq!(
        one_error(auto),
        "5:15 routes[0].presence: `presence` counts subscribers: only `delivery: subscribe` routes have it"
    );
    let cluster = format!(
        "redis:\n  cluster: {{ nodes: [\"redis://10.0.0.1:7000\"] }}\n{}",
        "routes:\n  - name: a\n    channel: c\n    presence: {}\n"
    );
    assert!(
        one_error(&cluster).starts_with("6:15 routes[0].presence: presence keeps a key per topic"),
        "{}",
        one_error(&cluster)
    );
}
