//! The admin endpoints: `/ws/stats` and `POST /api/publish` for administrators only (a JWT
//! or API key with an `admin.roles` role, or the static `admin.token`), what they answer,
//! and the body checks of `/api/publish`.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tokens::{ADMIN_KEY, SERVICE_KEY, auth_section, hs256, now, token};
use crate::support::{
    ADMIN_TOKEN, Bridge, RedisServer, WAIT, WsClient, assert_envelope, config_with, http_get,
    http_post,
};

const NEWS: &str = r#"
    - name: news
      channel: test:news
      delivery: auto
    "#;

/// `auth:` (`mode`) and `admin:` with roles admin and superadmin and the static token.
fn sections(mode: &str) -> String {
    format!(
        "{}admin:\n  roles: [admin, superadmin]\n  token: {ADMIN_TOKEN}\n",
        auth_section(mode, "", "")
    )
}

async fn start_with(sections: &str) -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config_with("", sections, NEWS));
    bridge.wait_ready().await;
    (redis, bridge)
}

/// GET `/ws/stats` with one header (or none).
async fn stats_with(bridge: &Bridge, header: Header<'_>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = header.into_iter().collect();
    let (status, body) = http_get(bridge.addr(), "/ws/stats", &headers).await;
    (status, json_body(&body))
}

/// POST `/api/publish` with one header (or none) and `body`.
async fn publish_with(bridge: &Bridge, header: Header<'_>, body: &str) -> (u16, Value) {
    let mut headers: Vec<(&str, &str)> = header.into_iter().collect();
    headers.push(("Content-Type", "application/json"));
    let (status, body) = http_post(bridge.addr(), "/api/publish", &headers, body).await;
    (status, json_body(&body))
}

/// One request header, or none.
type Header<'a> = Option<(&'a str, &'a str)>;

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_administrators_only() {
    let (_redis, bridge) = start_with(&sections("required")).await;
    let user = bearer(&token("alice", &["user"], json!({})));
    let admin = bearer(&token("root", &["user", "admin"], json!({})));
    let superadmin = bearer(&token("boss", &["superadmin"], json!({})));
    let expired_admin = bearer(&hs256(
        &json!({"sub": "root", "roles": ["admin"], "exp": now() - 300}),
    ));
    let static_token = bearer(ADMIN_TOKEN);
    let publish = r#"{"channel":"test:news","payload":"x"}"#;
    let cases: &[(Header, u16, Option<&str>)] = &[
        (None, 401, Some("missing_credentials")),
        (
            Some(("Authorization", "Bearer garbage")),
            401,
            Some("malformed_token"),
        ),
        (
            Some(("Authorization", "Basic cm9vdDpyb290")),
            401,
            Some("unsupported_scheme"),
        ),
        (
            Some(("Authorization", expired_admin.as_str())),
            401,
            Some("token_expired"),
        ),
        (
            Some(("X-API-Key", "not-a-key-we-know")),
            401,
            Some("unknown_api_key"),
        ),
        (
            Some(("Authorization", user.as_str())),
            403,
            Some("not_admin"),
        ),
        (Some(("X-API-Key", SERVICE_KEY)), 403, Some("not_admin")),
        (Some(("Authorization", admin.as_str())), 200, None),
        (Some(("Authorization", superadmin.as_str())), 200, None),
        (Some(("X-API-Key", ADMIN_KEY)), 200, None),
        (Some(("Authorization", static_token.as_str())), 200, None),
    ];
    for (header, status, reason) in cases {
        let (got, body) = stats_with(&bridge, *header).await;
        assert_eq!(got, *status, "GET /ws/stats with {header:?}: {body}");
        let (got, published) = publish_with(&bridge, *header, publish).await;
        assert_eq!(
            got, *status,
            "POST /api/publish with {header:?}: {published}"
        );
        match reason {
            Some(reason) => {
                assert_eq!(body["reason"], *reason, "{body}");
                assert_eq!(published["reason"], *reason, "{published}");
            }
            None => {
                assert!(body["connections"].is_number(), "{body}");
                assert_eq!(published, json!({"receivers": 1}));
            }
        }
    }
    // Admin credentials are read from headers only, never from the URL.
    let admin_token = token("root", &["admin"], json!({}));
    let (status, _) = http_get(
        bridge.addr(),
        &format!("/ws/stats?token={admin_token}"),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    // Health, readiness and metrics need nothing.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(bridge.get(path).await.0, 200, "GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_section_nobody_is_an_administrator() {
    let (_redis, bridge) = start_with(&auth_section("optional", "", "")).await;
    let admin = bearer(&token("root", &["admin"], json!({})));
    let (status, body) = stats_with(&bridge, Some(("Authorization", admin.as_str()))).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = stats_with(&bridge, None).await;
    assert_eq!(status, 401, "{body}");
    let static_token = bearer(ADMIN_TOKEN);
    let (status, body) = publish_with(
        &bridge,
        Some(("Authorization", static_token.as_str())),
        r#"{"channel":"test:news","payload":1}"#,
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_users_roles_and_connections_per_user() {
    let (_redis, bridge) = start_with(&sections("optional")).await;
    let alice = token("alice", &["user"], json!({}));
    let mut clients = Vec::new();
    for path in [
        format!("/ws?token={alice}"),
        format!("/ws?token={alice}"),
        format!("/ws?token={}", token("bob", &["user", "editor"], json!({}))),
        format!("/ws?token={}", token("carol", &["admin"], json!({}))),
        "/ws".to_owned(),
    ] {
        clients.push(bridge.client_at(&path).await);
    }
    let mut svc = WsClient::connect(&bridge.ws_url("/ws"), &[("X-API-Key", SERVICE_KEY)]).await;
    assert_eq!(svc.next_json().await["type"], "connected");
    let stats = bridge.stats().await;
    assert_eq!(stats["connections"], 6, "{stats}");
    assert_eq!(stats["users"], 4, "{stats}");
    assert_eq!(stats["anonymous"], 1, "{stats}");
    assert_eq!(
        stats["by_role"],
        json!({"user": 3, "editor": 1, "admin": 1, "service": 1}),
        "{stats}"
    );
    assert_eq!(
        stats["connections_per_user"],
        json!({"alice": 2, "bob": 1, "carol": 1, "svc": 1}),
        "{stats}"
    );
    // Closing a tab is counted.
    clients.remove(0).close().await;
    crate::support::wait_until_async(WAIT, "alice's second tab only", || async {
        bridge.stats().await["connections_per_user"]["alice"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_checks_its_body_then_publishes_through_redis() {
    let (_redis, bridge) = start_with(&sections("optional")).await;
    let mut client = bridge.client().await;
    let admin = bearer(ADMIN_TOKEN);
    let auth = Some(("Authorization", admin.as_str()));
    for (body, reason) in [
        ("not json", "the body is not JSON"),
        ("[1, 2]", "expected an object"),
        ("{}", "`channel` is required"),
        (
            r#"{"channel": "", "payload": 1}"#,
            "`channel` must be a non-empty string",
        ),
        (
            r#"{"channel": 5, "payload": 1}"#,
            "`channel` must be a non-empty string",
        ),
        (r#"{"channel": "test:news"}"#, "`payload` is required"),
        (
            r#"{"channel": "test:news", "payload": 1, "ttl": 5}"#,
            "unknown field `ttl`",
        ),
    ] {
        let (status, answer) = publish_with(&bridge, auth, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(reason), "{body}: {answer}");
    }
    assert_eq!(oversized_publish(&bridge, &admin).await, 413);

    // JSON is published as JSON, a string as its text; every bridge routes it as usual.
    for body in [
        r#"{"channel": "test:news", "payload": {"headline": "h", "n": 1}}"#,
        r#"{"channel": "test:news", "payload": "plain words"}"#,
        r#"{"channel": "test:news", "payload": "{\"as\":\"text\"}"}"#,
    ] {
        let (status, answer) = publish_with(&bridge, auth, body).await;
        assert_eq!((status, answer), (200, json!({"receivers": 1})), "{body}");
    }
    // None of the refused bodies was published: the first frame is the first good one.
    for (seq, data) in [
        json!({"headline": "h", "n": 1}),
        json!("plain words"),
        json!({"as": "text"}),
    ]
    .iter()
    .enumerate()
    {
        assert_envelope(
            &client.next_json().await,
            "news",
            "news",
            seq as u64 + 1,
            data,
        );
    }
    client.assert_pong(1).await;
    bridge
        .wait_log(WAIT, |line| {
            line.to_string().contains("published through /api/publish")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_redis_answers_503() {
    let (mut redis, bridge) = start_with(&sections("required")).await;
    redis.kill();
    let admin = bearer(ADMIN_TOKEN);
    let (status, body) = publish_with(
        &bridge,
        Some(("Authorization", admin.as_str())),
        r#"{"channel": "test:news", "payload": 1}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
}

/// Announces a body one byte over 1 MiB and sends none of it: the answer comes from the
/// header alone.
async fn oversized_publish(bridge: &Bridge, authorization: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(bridge.addr()).await.unwrap();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024 + 1
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("timed out waiting for the answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
