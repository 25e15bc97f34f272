//! Identity end to end: credentials refused before the upgrade, audiences (the leak
//! matrix), subscribe authorization, token expiry and refresh, the welcome template, the
//! client rate limit, and logs that never hold a credential.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::support::tokens::{
    ADMIN_KEY, SECRET, SERVICE_KEY, auth_section, hs256, key_file, now, sign, token, unsigned,
};
use crate::support::{
    ADMIN_TOKEN, Bridge, ConnectError, Frame, Publisher, RedisServer, WAIT, WsClient, config_with,
    http_get,
};

/// Starts Redis and a bridge with `sections` (top-level YAML such as `auth:`) and the static
/// admin token that [`Bridge::stats`] uses; waits until it is ready.
async fn start_with(sections: &str, websocket: &str, routes: &str) -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let sections = format!("{sections}admin:\n  token: {ADMIN_TOKEN}\n");
    let bridge = Bridge::start(&redis, &config_with(websocket, &sections, routes));
    bridge.wait_ready().await;
    (redis, bridge)
}

/// Connects with `?token=TOKEN` and reads the welcome frame.
async fn connect_with_token(bridge: &Bridge, token: &str) -> WsClient {
    connect(bridge, &format!("/ws?token={token}"), &[]).await
}

/// Connects to `path` with `headers` and reads the welcome frame into `welcome`.
async fn connect(bridge: &Bridge, path: &str, headers: &[(&str, &str)]) -> WsClient {
    let mut c = WsClient::connect(&bridge.ws_url(path), headers).await;
    c.welcome = c.recv_json(WAIT).await;
    c
}

/// The HTTP status and JSON body of a refused upgrade.
async fn refused(bridge: &Bridge, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    match WsClient::try_connect(&bridge.ws_url(path), headers).await {
        Err(ConnectError::Status(status, body)) => (
            status,
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")),
        ),
        Err(other) => panic!("expected an HTTP refusal of {path}, got {other:?}"),
        Ok(_) => panic!("the upgrade of {path} with {headers:?} was accepted"),
    }
}

/// Asserts a 401 whose body is `{"error": <message>, "reason": reason}`.
async fn assert_401(bridge: &Bridge, path: &str, headers: &[(&str, &str)], reason: &str) {
    let (status, body) = refused(bridge, path, headers).await;
    assert_eq!(status, 401, "{path} {headers:?}: {body}");
    assert_eq!(body["reason"], reason, "{path} {headers:?}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The next frame must be an `error` with `code` (and `id`, when given).
async fn expect_error(c: &mut WsClient, code: &str, id: Option<u64>) -> Value {
    let f = c.next_json().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], code, "{f}");
    if let Some(id) = id {
        assert_eq!(f["id"], id, "{f}");
    }
    f
}

/// Seconds since the epoch, with fractions.
fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Waits for `token_expired` then the 1008 close; asserts both come at `exp` (not before,
/// and within 2 s after, a margin for a loaded machine).
async fn expect_expiry_at(c: &mut WsClient, exp: u64) {
    let wait = Duration::from_secs(exp.saturating_sub(now()) + 5);
    let f = c.recv_json(wait).await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "token_expired", "{f}");
    let at = now_f64();
    assert!(at >= exp as f64 - 0.01, "expired at {at}, before exp {exp}");
    assert!(
        at <= exp as f64 + 2.0,
        "expired at {at}, long after exp {exp}"
    );
    assert_eq!(
        c.expect_close(WAIT).await,
        (1008, "token expired".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_credential_is_refused_before_the_upgrade() {
    let sections = auth_section("required", "issuer: https://id.test\naudience: bridge", "");
    let (_redis, bridge) = start_with(
        &sections,
        "allowed_origins: [https://app.test]",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let t = now();
    let claims = |extra: Value| {
        let mut c =
            json!({"sub": "alice", "exp": t + 600, "iss": "https://id.test", "aud": "bridge"});
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            for (k, v) in extra {
                if v.is_null() {
                    c.remove(&k);
                } else {
                    c.insert(k, v);
                }
            }
        }
        c
    };
    let good = hs256(&claims(json!({})));
    let q = |token: &str| format!("/ws?token={token}");

    assert_401(&bridge, "/ws", &[], "missing_credentials").await;
    assert_401(&bridge, "/ws?token=", &[], "missing_credentials").await;
    assert_401(&bridge, &q("not-a-jwt"), &[], "malformed_token").await;
    let other_secret = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-just-as-long-as-the-real-one!!!!!"),
        &claims(json!({})),
    );
    assert_401(&bridge, &q(&other_secret), &[], "bad_signature").await;
    // Alice's claims under the signature of Mallory's token.
    let (alice_part, _) = good.rsplit_once('.').unwrap();
    let mallory = hs256(&claims(json!({"sub": "mallory"})));
    let (_, mallory_signature) = mallory.rsplit_once('.').unwrap();
    let spliced = format!("{alice_part}.{mallory_signature}");
    assert_401(&bridge, &q(&spliced), &[], "bad_signature").await;
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims(json!({})),
    );
    assert_401(&bridge, &q(&hs512), &[], "algorithm_not_allowed").await;
    assert_401(
        &bridge,
        &q(&unsigned(&claims(json!({})))),
        &[],
        "algorithm_not_allowed",
    )
    .await;
    // Expired beyond the 30 s leeway; not valid for another 2 minutes.
    let expired = hs256(&claims(json!({"exp": t - 120})));
    assert_401(&bridge, &q(&expired), &[], "token_expired").await;
    let early = hs256(&claims(json!({"nbf": t + 120})));
    assert_401(&bridge, &q(&early), &[], "token_not_yet_valid").await;
    let no_exp = hs256(&claims(json!({"exp": null})));
    assert_401(&bridge, &q(&no_exp), &[], "missing_claim").await;
    let wrong_iss = hs256(&claims(json!({"iss": "https://evil.test"})));
    assert_401(&bridge, &q(&wrong_iss), &[], "wrong_issuer").await;
    let no_iss = hs256(&claims(json!({"iss": null})));
    assert_401(&bridge, &q(&no_iss), &[], "missing_claim").await;
    let wrong_aud = hs256(&claims(json!({"aud": ["elsewhere"]})));
    assert_401(&bridge, &q(&wrong_aud), &[], "wrong_audience").await;
    let no_user = hs256(&claims(json!({"sub": null})));
    assert_401(&bridge, &q(&no_user), &[], "missing_user").await;
    assert_401(
        &bridge,
        "/ws",
        &[("X-API-Key", "not-a-key-we-know")],
        "unknown_api_key",
    )
    .await;
    let basic = "Basic YWxpY2U6c2VjcmV0";
    assert_401(
        &bridge,
        "/ws",
        &[("Authorization", basic)],
        "unsupported_scheme",
    )
    .await;
    let bearer = format!("Bearer {good}");
    assert_401(
        &bridge,
        &q(&good),
        &[("Authorization", bearer.as_str())],
        "ambiguous_credentials",
    )
    .await;
    // A valid token from a forbidden Origin: 403.
    let (status, body) = refused(&bridge, &q(&good), &[("Origin", "https://evil.test")]).await;
    assert_eq!(status, 403, "{body}");

    // Nothing was upgraded; each 401 was counted.
    let stats = bridge.stats().await;
    assert_eq!(stats["connections"], 0, "{stats}");
    let (_, metrics) = bridge.get("/metrics").await;
    assert!(
        metrics.contains("bridge_connections_rejected_total{reason=\"unauthorized\"} 17"),
        "{metrics}"
    );

    // The same token by each route in, and an API key, are accepted.
    let mut by_query = connect_with_token(&bridge, &good).await;
    let mut by_header = connect(&bridge, "/ws", &[("Authorization", bearer.as_str())]).await;
    let mut by_key = connect(&bridge, "/ws", &[("X-API-Key", SERVICE_KEY)]).await;
    let mut by_origin = connect(&bridge, &q(&good), &[("Origin", "https://app.test")]).await;
    for (c, user, roles) in [
        (&mut by_query, "alice", json!([])),
        (&mut by_header, "alice", json!([])),
        (&mut by_key, "svc", json!(["service"])),
        (&mut by_origin, "alice", json!([])),
    ] {
        assert_eq!(c.welcome["type"], "connected", "{}", c.welcome);
        assert_eq!(c.welcome["user"], user, "{}", c.welcome);
        assert_eq!(c.welcome["roles"], roles, "{}", c.welcome);
        c.assert_pong(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_algorithms_verify_and_refuse_an_hs256_token_signed_with_the_public_key() {
    let routes = r#"
        - name: news
          channel: test:news
          delivery: auto
        "#;
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa.key.pem", "rsa.pub.pem"),
        (Algorithm::PS256, "rsa.key.pem", "rsa.pub.pem"),
        (Algorithm::ES256, "ec256.key.pem", "ec256.pub.pem"),
        (Algorithm::EdDSA, "ed25519.key.pem", "ed25519.pub.pem"),
    ] {
        let public_path = key_file(public);
        let sections = format!(
            "auth:\n  mode: required\n  jwt:\n    algorithms: [{alg:?}]\n    public_key_file: {}\n",
            public_path.display()
        );
        let (_redis, bridge) = start_with(&sections, "", routes).await;
        let pem = std::fs::read(key_file(private)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        let claims = json!({"sub": "alice", "roles": "user", "exp": now() + 600});
        let mut c = connect_with_token(&bridge, &sign(alg, &key, &claims)).await;
        assert_eq!(c.welcome["user"], "alice", "{alg:?}: {}", c.welcome);
        assert_eq!(c.welcome["roles"], json!(["user"]), "{}", c.welcome);
        c.assert_pong(1).await;

        // The classic confusion attack: HS256 "signed" with the public key as the secret.
        let public_pem = std::fs::read(&public_path).unwrap();
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&public_pem),
            &claims,
        );
        let path = format!("/ws?token={confused}");
        assert_401(&bridge, &path, &[], "algorithm_not_allowed").await;
        // Changed claims under a genuine signature.
        let genuine = sign(alg, &key, &claims);
        let (header, rest) = genuine.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let other = sign(alg, &key, &json!({"sub": "root", "exp": now() + 600}));
        let other_claims = other.split('.').nth(1).unwrap();
        let path = format!("/ws?token={header}.{other_claims}.{signature}");
        assert_401(&bridge, &path, &[], "bad_signature").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mode_admits_anonymous_connections_but_not_invalid_credentials() {
    let (_redis, bridge) = start_with(
        &auth_section("optional", "", ""),
        "",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let mut anonymous = connect(&bridge, "/ws", &[]).await;
    assert_eq!(anonymous.welcome["type"], "connected");
    assert_eq!(
        anonymous.welcome["user"],
        Value::Null,
        "{}",
        anonymous.welcome
    );
    anonymous.assert_pong(1).await;
    // An anonymous connection cannot become someone by `refresh`.
    let alice = token("alice", &["user"], json!({}));
    anonymous
        .send_json(&json!({"type": "refresh", "id": 2, "token": alice}))
        .await;
    expect_error(&mut anonymous, "forbidden", Some(2)).await;
    anonymous.assert_pong(3).await;

    let expired = hs256(&json!({"sub": "alice", "exp": now() - 120}));
    assert_401(
        &bridge,
        &format!("/ws?token={expired}"),
        &[],
        "token_expired",
    )
    .await;
    assert_401(&bridge, "/ws?token=garbage", &[], "malformed_token").await;
    assert_401(&bridge, "/ws", &[("X-API-Key", "nope")], "unknown_api_key").await;
    let mut c = connect_with_token(&bridge, &alice).await;
    assert_eq!(c.welcome["user"], "alice");
    c.assert_pong(1).await;
}

/// The leak matrix: every kind of audience, several identities connected at once, one
/// message for each audience; every connection receives exactly what its identity is
/// admitted to, in order, and nothing else (proven by a final marker every connection gets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_receives_exactly_what_its_audiences_admit() {
    let (redis, bridge) = start_with(
        &auth_section("optional", "", ""),
        "",
        r#"
        - name: everyone
          channel: m:all
          delivery: auto
          format: raw
        - name: authenticated
          channel: m:auth
          delivery: auto
          audience: authenticated
          format: raw
        - name: user-by-channel
          pattern: "m:user:*"
          topic: "user:{1}"
          delivery: auto
          audience: { user: "{1}" }
          format: raw
        - name: user-by-payload
          channel: m:to
          delivery: auto
          audience: { user: "{payload.to}" }
          format: raw
        - name: admins
          channel: m:admins
          delivery: auto
          audience: { roles: [admin] }
          format: raw
        - name: workspace
          pattern: "m:ws:*"
          topic: "ws:{1}"
          delivery: auto
          audience: { claims: { workspaces: "{1}" } }
          format: raw
        - name: user-or-admins
          channel: m:any
          delivery: auto
          audience: { any: [ { user: "{payload.to}" }, { roles: [admin] } ] }
          format: raw
        - name: users-of-tenant
          pattern: "m:tenant:*"
          topic: "tenant:{1}"
          delivery: auto
          audience: { all: [ { roles: [user] }, { claims: { org.tenant: "{1}" } } ] }
          format: raw
        - name: job
          pattern: "job:*"
          topic: "job:{1}"
          audience: { user: "{payload.owner}" }
          format: raw
        "#,
    )
    .await;
    let alice = token(
        "alice",
        &["user"],
        json!({"workspaces": ["w1", "w2"], "org": {"tenant": "t1"}}),
    );
    let bob = token(
        "bob",
        &["user"],
        json!({"workspaces": "w2", "org": {"tenant": "t2"}}),
    );
    let carol = token(
        "carol",
        &["admin"],
        json!({"workspaces": ["w3"], "org": {"tenant": "t1"}}),
    );
    let mut clients: BTreeMap<&str, WsClient> = BTreeMap::new();
    clients.insert("anonymous", connect(&bridge, "/ws", &[]).await);
    clients.insert("alice", connect_with_token(&bridge, &alice).await);
    clients.insert("alice-tab-2", connect_with_token(&bridge, &alice).await);
    clients.insert("bob", connect_with_token(&bridge, &bob).await);
    clients.insert("carol", connect_with_token(&bridge, &carol).await);
    clients.insert(
        "svc",
        connect(&bridge, "/ws", &[("X-API-Key", SERVICE_KEY)]).await,
    );
    // Every authenticated connection may subscribe to a job (whose owner is known only per
    // message); the anonymous one may not.
    for (name, c) in clients.iter_mut() {
        if *name == "anonymous" {
            c.send_json(&json!({"type": "subscribe", "id": 1, "topics": ["job:7"]}))
                .await;
            let f = expect_error(c, "forbidden", Some(1)).await;
            assert_eq!(f["topic"], "job:7", "{f}");
        } else {
            c.subscribe(1, &["job:7"]).await;
        }
    }

    let messages: &[(&str, Value, &[&str])] = &[
        (
            "m:all",
            json!({"id": "all"}),
            &["anonymous", "alice", "alice-tab-2", "bob", "carol", "svc"],
        ),
        (
            "m:auth",
            json!({"id": "auth"}),
            &["alice", "alice-tab-2", "bob", "carol", "svc"],
        ),
        (
            "m:user:alice",
            json!({"id": "user-alice"}),
            &["alice", "alice-tab-2"],
        ),
        ("m:user:bob", json!({"id": "user-bob"}), &["bob"]),
        ("m:user:svc", json!({"id": "user-svc"}), &["svc"]),
        ("m:to", json!({"id": "to-bob", "to": "bob"}), &["bob"]),
        ("m:to", json!({"id": "to-mallory", "to": "mallory"}), &[]),
        ("m:to", json!({"id": "to-nobody"}), &[]),
        ("m:admins", json!({"id": "admins"}), &["carol"]),
        (
            "m:ws:w2",
            json!({"id": "ws-w2"}),
            &["alice", "alice-tab-2", "bob"],
        ),
        ("m:ws:w3", json!({"id": "ws-w3"}), &["carol"]),
        ("m:ws:w9", json!({"id": "ws-w9"}), &[]),
        (
            "m:any",
            json!({"id": "any-alice", "to": "alice"}),
            &["alice", "alice-tab-2", "carol"],
        ),
        (
            "m:tenant:t1",
            json!({"id": "tenant-t1"}),
            &["alice", "alice-tab-2"],
        ),
        ("m:tenant:t2", json!({"id": "tenant-t2"}), &["bob"]),
        (
            "job:7",
            json!({"id": "job-alice", "owner": "alice"}),
            &["alice", "alice-tab-2"],
        ),
        ("job:7", json!({"id": "job-bob", "owner": "bob"}), &["bob"]),
        (
            "m:all",
            json!({"id": "marker"}),
            &["anonymous", "alice", "alice-tab-2", "bob", "carol", "svc"],
        ),
    ];
    let mut publisher = Publisher::connect(&redis.url()).await;
    for (channel, payload, _) in messages {
        publisher.publish(channel, payload.to_string()).await;
    }
    for (name, c) in clients.iter_mut() {
        let expected: Vec<&str> = messages
            .iter()
            .filter(|(_, _, to)| to.contains(name))
            .map(|(_, payload, _)| payload["id"].as_str().unwrap())
            .collect();
        let mut got = Vec::new();
        loop {
            let f = c.next_json().await;
            let id = f["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} got an unexpected frame {f}"))
                .to_owned();
            got.push(id.clone());
            if id == "marker" {
                break;
            }
        }
        assert_eq!(got, expected, "what {name} received");
        c.assert_pong(99).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_needs_a_route_whose_audience_can_admit_the_client() {
    let (redis, bridge) = start_with(
        &auth_section("required", "", ""),
        "",
        r#"
        - name: per-user
          pattern: "user:*"
          topic: "user:{1}"
          audience: { user: "{1}" }
          format: raw
        - name: admin-events
          channel: admin:events
          topic: admin-events
          audience: { roles: [admin] }
          format: raw
        "#,
    )
    .await;
    let mut alice = connect_with_token(&bridge, &token("alice", &["user"], json!({}))).await;
    let mut carol = connect_with_token(&bridge, &token("carol", &["admin"], json!({}))).await;

    // Own topic: admitted. Another user's, in the same command: refused, the rest stands,
    // in one answer.
    alice
        .send_json(&json!({"type": "subscribe", "id": 1, "topics": ["user:bob", "user:alice"]}))
        .await;
    assert_eq!(
        alice.next_json().await,
        json!({"type": "subscribed", "id": 1, "topics": ["user:alice"],
               "refused": [{"topic": "user:bob", "code": "forbidden"}]})
    );
    // Role-gated: forbidden without the role, admitted with it.
    alice
        .send_json(&json!({"type": "subscribe", "id": 2, "topics": ["admin-events"]}))
        .await;
    let f = expect_error(&mut alice, "forbidden", Some(2)).await;
    assert_eq!(f["topic"], "admin-events", "{f}");
    carol.subscribe(1, &["admin-events"]).await;
    // No route produces it: unknown_topic.
    alice
        .send_json(&json!({"type": "subscribe", "id": 3, "topics": ["nope:1"]}))
        .await;
    let f = expect_error(&mut alice, "unknown_topic", Some(3)).await;
    assert_eq!(f["topic"], "nope:1", "{f}");

    let mut p = Publisher::connect(&redis.url()).await;
    p.publish("user:bob", r#"{"id":"bob"}"#).await;
    p.publish("admin:events", r#"{"id":"admin"}"#).await;
    p.publish("user:alice", r#"{"id":"alice"}"#).await;
    assert_eq!(alice.next_json().await, json!({"id": "alice"}));
    alice.assert_pong(4).await;
    assert_eq!(carol.next_json().await, json!({"id": "admin"}));
    carol.assert_pong(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_with_1008_at_exp() {
    let (_redis, bridge) = start_with(
        &auth_section("required", "", ""),
        "",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let exp = now() + 2;
    let mut short = connect_with_token(&bridge, &token("alice", &[], json!({"exp": exp}))).await;
    let mut long = connect_with_token(&bridge, &token("bob", &[], json!({}))).await;
    short.assert_pong(1).await;
    expect_expiry_at(&mut short, exp).await;
    long.assert_pong(2).await;
    // A token accepted within the leeway is already past its exp: closed at once.
    let within_leeway = token("carol", &[], json!({"exp": now() - 5}));
    let mut late = connect_with_token(&bridge, &within_leeway).await;
    assert_eq!(late.welcome["user"], "carol", "{}", late.welcome);
    expect_error(&mut late, "token_expired", None).await;
    assert_eq!(
        late.expect_close(WAIT).await,
        (1008, "token expired".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_a_token_of_the_same_user_moves_the_expiry() {
    let (_redis, bridge) = start_with(
        &auth_section("required", "", ""),
        "",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let first_exp = now() + 2;
    let mut c = connect_with_token(
        &bridge,
        &token("alice", &["user"], json!({"exp": first_exp})),
    )
    .await;
    let later = now() + 60;
    c.send_json(&json!({"type": "refresh", "id": 1, "token": token("alice", &["user", "editor"], json!({"exp": later}))}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "refreshed", "id": 1, "expires_at": later})
    );
    // Past the first exp, the connection is alive and got nothing but the pong.
    while now() <= first_exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.assert_pong(2).await;
    // A refresh can also bring the expiry closer.
    let soon = now() + 2;
    c.send_json(&json!({"type": "refresh", "id": 3, "token": token("alice", &["user"], json!({"exp": soon}))}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "refreshed", "id": 3, "expires_at": soon})
    );
    expect_expiry_at(&mut c, soon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_another_users_or_a_bad_token_is_refused_and_the_old_expiry_stays() {
    let (_redis, bridge) = start_with(
        &auth_section("required", "", ""),
        "",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let exp = now() + 3;
    let mut c = connect_with_token(&bridge, &token("alice", &[], json!({"exp": exp}))).await;
    let bob = token("bob", &["admin"], json!({}));
    c.send_json(&json!({"type": "refresh", "id": 1, "token": bob}))
        .await;
    expect_error(&mut c, "forbidden", Some(1)).await;
    c.send_json(&json!({"type": "refresh", "id": 2, "token": "garbage"}))
        .await;
    expect_error(&mut c, "bad_request", Some(2)).await;
    let expired = hs256(&json!({"sub": "alice", "exp": now() - 120}));
    c.send_json(&json!({"type": "refresh", "id": 3, "token": expired}))
        .await;
    expect_error(&mut c, "token_expired", Some(3)).await;
    c.send_json(&json!({"type": "refresh", "id": 4})).await;
    expect_error(&mut c, "bad_request", Some(4)).await;
    c.assert_pong(5).await;
    // Still alice, still expiring at the first token's exp.
    let stats = bridge.stats().await;
    assert_eq!(
        stats["connections_per_user"],
        json!({"alice": 1}),
        "{stats}"
    );
    expect_expiry_at(&mut c, exp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_template_renders_claims_and_the_connection_id() {
    let (_redis, bridge) = start_with(
        &auth_section("optional", "", "roles_claim: role"),
        r#"welcome: { type: connection.established, data: { client_id: "{connection_id}", user_id: "{claims.sub}", role: "{claims.role}", at: "{now}" } }"#,
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let alice = hs256(&json!({"sub": 24, "role": "user", "exp": now() + 600}));
    let c = connect_with_token(&bridge, &alice).await;
    let w = &c.welcome;
    assert_eq!(w["type"], "connection.established", "{w}");
    let data = w["data"].as_object().unwrap();
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["at", "client_id", "role", "user_id"], "{w}");
    assert_eq!(data["client_id"].as_str().map(str::len), Some(36), "{w}");
    assert_eq!(
        data["user_id"], 24,
        "a lone placeholder keeps the claim's type: {w}"
    );
    assert_eq!(data["role"], "user", "{w}");
    crate::support::assert_rfc3339_ms_utc(data["at"].as_str().unwrap());
    // An anonymous connection has no claims: the native frame instead.
    let anonymous = connect(&bridge, "/ws", &[]).await;
    assert_eq!(
        anonymous.welcome["type"], "connected",
        "{}",
        anonymous.welcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_rate_limited_then_closed_and_a_polite_client_is_unaffected() {
    let (_redis, bridge) = start_with(
        &auth_section("optional", "", ""),
        "client_rate: 5/s",
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .await;
    let mut flooder = connect(&bridge, "/ws", &[]).await;
    let mut polite = connect(&bridge, "/ws", &[]).await;
    let flood = async {
        let pings: Vec<String> = (0..40)
            .map(|i| json!({"type": "ping", "id": i}).to_string())
            .collect();
        flooder.send_burst(&pings).await;
        let (mut pongs, mut limited) = (0, 0);
        loop {
            match flooder.recv_frame(WAIT).await {
                Frame::Text(t) => {
                    let f: Value = serde_json::from_str(&t).unwrap();
                    match (f["type"].as_str(), f["code"].as_str()) {
                        (Some("pong"), _) => pongs += 1,
                        (Some("error"), Some("rate_limited")) => limited += 1,
                        _ => panic!("the flooder got {f}"),
                    }
                }
                Frame::Close(close) => {
                    assert_eq!(close, Some((1008, "rate limit".to_owned())));
                    break;
                }
                other => panic!("the flooder got {other:?}"),
            }
        }
        // The burst of 5 went through (plus what the bucket refilled meanwhile); then as
        // many errors as the burst, and the next refusal closed the connection.
        assert!((5..=10).contains(&pongs), "{pongs} pongs");
        assert_eq!(limited, 5, "rate_limited errors");
    };
    let steady = async {
        for id in 0..8 {
            polite.assert_pong(id).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::join!(flood, steady);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_ever_reaches_the_logs() {
    let redis = RedisServer::start();
    let sections = format!(
        "{}admin:\n  roles: [admin]\n  token: {ADMIN_TOKEN}\n",
        auth_section("required", "", "")
    );
    let yaml = config_with(
        "",
        &sections,
        r#"
        - name: news
          channel: test:news
          delivery: auto
        "#,
    )
    .replace("{redis_url}", &redis.url());
    let bridge = Bridge::start_with(&yaml, &[("RUST_LOG", "debug")]);
    bridge.wait_ready().await;

    let alice = token("alice", &["user"], json!({}));
    let refreshed = token("alice", &["user"], json!({"exp": now() + 900}));
    let admin = token("root", &["admin"], json!({}));
    let bad = hs256(&json!({"sub": "eve", "exp": now() - 300}));
    let mut c = connect_with_token(&bridge, &alice).await;
    c.send_json(&json!({"type": "refresh", "id": 1, "token": refreshed}))
        .await;
    assert_eq!(c.next_json().await["type"], "refreshed");
    let bearer = format!("Bearer {admin}");
    let mut d = connect(&bridge, "/ws", &[("Authorization", bearer.as_str())]).await;
    let mut e = connect(&bridge, "/ws", &[("X-API-Key", SERVICE_KEY)]).await;
    assert_401(&bridge, &format!("/ws?token={bad}"), &[], "token_expired").await;
    assert_401(
        &bridge,
        "/ws",
        &[("X-API-Key", "wrong-key-value")],
        "unknown_api_key",
    )
    .await;
    for header in [bearer.clone(), format!("Bearer {ADMIN_TOKEN}")] {
        let (status, body) =
            http_get(bridge.addr(), "/ws/stats", &[("Authorization", &header)]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = http_get(bridge.addr(), "/ws/stats", &[("X-API-Key", ADMIN_KEY)]).await;
    assert_eq!(status, 200);
    for client in [&mut c, &mut d, &mut e] {
        client.assert_pong(2).await;
    }
    c.close().await;
    bridge
        .wait_log(WAIT, |line| {
            line.to_string().contains("connection closed") && line.to_string().contains("alice")
        })
        .await;

    let logs = bridge.logs();
    for secret in [
        alice.as_str(),
        refreshed.as_str(),
        admin.as_str(),
        bad.as_str(),
        SERVICE_KEY,
        ADMIN_KEY,
        "wrong-key-value",
        ADMIN_TOKEN,
        SECRET,
    ] {
        // Any part of a JWT (header, claims, signature) would be a leak too.
        for part in secret.split('.').filter(|p| p.len() > 8) {
            assert!(!logs.contains(part), "a credential is in the logs:\n{logs}");
        }
    }
    assert!(
        !logs.contains("token="),
        "a query string is in the logs:\n{logs}"
    );
    // Debug lines were written (the refusals), so the check covered them.
    assert!(logs.contains("upgrade refused"), "no debug lines:\n{logs}");
    // The identity is on the connect and close lines.
    let open = bridge
        .wait_log(WAIT, |line| {
            let text = line.to_string();
            text.contains("connection open") && text.contains("svc")
        })
        .await;
    assert!(open.to_string().contains("service"), "{open}");
}
