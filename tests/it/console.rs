//! The console page and the browser client (README.md, "The browser client"): what `GET /`, `/console.js`,
//! `/console.css` and `/client.js` answer, the `console` switch (at start and by a reload),
//! and `clients/js/client.js` itself run under Node against the real daemon
//! (`tests/clients/node/drive.js`, with the `ws` package): reconnect with backoff after a
//! restart, subscriptions restored with their filters, refresh by hand and before `exp`, a
//! fresh token after "token expired", refused handshakes that back off, `seq` jumps
//! reported as gaps, and a close while connecting that leaves nothing behind.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::driver::Driver;
use crate::support::tokens::{auth_section, now};
use crate::support::{
    Bridge, HttpResponse, RedisServer, WAIT, config, config_with, http_get_response, pick_port,
    publish, repo, start, wait_until_async,
};

/// A file of the repository, as the binary compiled it in.
fn asset(name: &str) -> String {
    let path = repo().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

const ROUTE: &str = r#"
    - name: news
      channel: news
      topic: news
    "#;

async fn get(bridge: &Bridge, path: &str) -> HttpResponse {
    http_get_response(bridge.addr(), path, &[]).await
}

// ---------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_the_client_are_served_with_their_headers() {
    let (_redis, bridge) = start("", ROUTE).await;

    let page = get(&bridge, "/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-cache");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP without {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(
        page.body,
        asset("assets/console.html").replace("{{WS_PATH}}", "/ws"),
        "the page, with the WebSocket path in it"
    );
    // Under `script-src 'self'` an inline script would not run: every script is a file.
    assert_eq!(
        page.body.matches("<script").count(),
        page.body.matches("<script src=\"/").count()
    );

    for (path, file, content_type, cache) in [
        (
            "/client.js",
            "clients/js/client.js",
            "text/javascript; charset=utf-8",
            "public, max-age=300",
        ),
        (
            "/console.js",
            "assets/console.js",
            "text/javascript; charset=utf-8",
            "no-cache",
        ),
        (
            "/console.css",
            "assets/console.css",
            "text/css; charset=utf-8",
            "no-cache",
        ),
    ] {
        let response = get(&bridge, path).await;
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert_eq!(response.header("content-type"), content_type, "{path}");
        assert_eq!(response.header("cache-control"), cache, "{path}");
        assert_eq!(response.header("x-content-type-options"), "nosniff");
        assert!(!response.has_header("content-security-policy"), "{path}");
        assert_eq!(response.body, asset(file), "{path}");

        // A cached copy is revalidated without the body.
        let etag = response.header("etag").to_owned();
        let again = http_get_response(bridge.addr(), path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}: {again:?}");
        assert_eq!(again.header("etag"), etag);
        assert_eq!(again.header("cache-control"), cache);
        assert_eq!(again.body, "");
    }

    for path in [
        "/nope",
        "/index.html",
        "/client.js/x",
        "/console",
        "/assets/client.js",
    ] {
        let response = get(&bridge, path).await;
        assert_eq!(response.status, 404, "{path}: {response:?}");
        assert_eq!(response.header("content-type"), "application/json");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_names_the_configured_websocket_path() {
    let redis = RedisServer::start();
    let yaml = config("", ROUTE).replace("  path: /ws\n", "  path: /live/updates\n");
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    let page = get(&bridge, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"<body data-ws-path="/live/updates">"#),
        "{}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_can_be_switched_off_and_on_again_by_a_reload() {
    let redis = RedisServer::start();
    let off = config_with("", "console: false\n", ROUTE);
    let bridge = Bridge::start(&redis, &off);
    bridge.wait_ready().await;
    for path in ["/", "/console.js", "/console.css"] {
        let response = get(&bridge, path).await;
        assert_eq!(response.status, 404, "{path} with the console off");
    }
    let client = get(&bridge, "/client.js").await;
    assert_eq!(client.status, 200, "applications still load the client");

    let on = off.replace("console: false\n", "console: true\n");
    std::fs::write(
        bridge.config_path(),
        on.replace("{redis_url}", &redis.url()),
    )
    .expect("rewrite the routing file");
    wait_until_async(
        WAIT,
        "the console to come back after the reload",
        || async { get(&bridge, "/").await.status == 200 },
    )
    .await;
    assert_eq!(get(&bridge, "/console.js").await.status, 200);
}

#[test]
fn the_console_switch_is_a_boolean() {
    let yaml = |console: &str| {
        config_with("", &format!("console: {console}\n"), ROUTE)
            .replace("{redis_url}", "redis://127.0.0.1:6379/0")
    };
    let exit = Bridge::check(&yaml("maybe"));
    assert_eq!(exit.code, Some(1), "{exit:?}");
    assert!(
        exit.stderr
            .contains("console: expected true or false, found `maybe`"),
        "{}",
        exit.stderr
    );
    let exit = Bridge::check(&yaml("false"));
    assert_eq!(exit.code, Some(0), "{exit:?}");
}

// ---------------------------------------------------------------------------------------
// client.js under Node
// ---------------------------------------------------------------------------------------

/// `tests/clients/node/drive.js`: the client library under Node, with `ws`.
fn node_client() -> Driver {
    Driver::start("tests/clients/node", "ws")
}

/// `news` for everyone, `feed` frames each for one user.
const NODE_ROUTES: &str = r#"
    - name: news
      channel: news
      topic: news
    - name: feed
      channel: feed
      topic: feed
      audience: { user: "{payload.user}" }
    "#;

/// A routing file on a fixed port (a restarted bridge must be found where it was), with
/// `auth.mode: required`.
fn fixed_port_config(redis: &RedisServer, port: u16) -> String {
    config_with("", &auth_section("required", "", ""), NODE_ROUTES)
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
        .replace("{redis_url}", &redis.url())
}

/// Checks the reconnect events seen so far: attempts 1, 2, … with delays between half and
/// all of `min_delay` · 2^(n-1) (capped at `max_delay`), and each attempt made no earlier
/// than its delay after the one before.
fn assert_backoff(node: &Driver, min_delay: u64, max_delay: u64) -> usize {
    let attempts: Vec<(u64, u64, u64)> = node
        .seen
        .iter()
        .filter(|line| line["event"] == "reconnecting")
        .map(|line| {
            let v = &line["value"];
            let field = |value: &Value| value.as_u64().unwrap_or_else(|| panic!("{line}"));
            (field(&v["attempt"]), field(&v["delay"]), field(&line["t"]))
        })
        .collect();
    for (i, (attempt, delay, _)) in attempts.iter().enumerate() {
        assert_eq!(*attempt, i as u64 + 1, "{attempts:?}");
        let ceiling = (min_delay << i).min(max_delay);
        assert!(
            (ceiling / 2..=ceiling).contains(delay),
            "attempt {attempt}: delay {delay} outside {}..={ceiling}",
            ceiling / 2
        );
    }
    for pair in attempts.windows(2) {
        let ((_, delay, at), (_, _, next)) = (pair[0], pair[1]);
        assert!(
            next >= at + delay,
            "the next attempt came {}ms after one scheduled in {delay}ms",
            next - at
        );
    }
    attempts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_comes_back_after_a_restart_with_its_subscriptions() {
    let redis = RedisServer::start();
    let yaml = fixed_port_config(&redis, pick_port());
    let mut bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let (min_delay, max_delay) = (100, 1000);

    let mut node = node_client();
    node.connect_minting(
        &bridge.ws_url("/ws"),
        "ada",
        &[600],
        json!({"minDelay": min_delay, "maxDelay": max_delay}),
    );
    let welcome = node.event("open", |_| true).await["value"].clone();
    assert_eq!(welcome["user"], "ada");
    node.send(json!({"op": "subscribe", "topics": ["news"], "filter": {"kind": ["a"]}}));
    assert_eq!(node.reply("subscribe").await, json!(["news"]));
    publish(&redis.url(), "news", r#"{"kind":"a","n":1}"#).await;
    let first = node.event("message", |_| true).await["value"].clone();
    assert_eq!(first["data"], json!({"kind": "a", "n": 1}));
    assert_eq!(first["seq"], 1);

    // Stopped: the client is told 1001 and retries, further and further apart, while
    // nothing listens.
    bridge.signal("TERM");
    bridge.wait_exit(WAIT).await;
    let close = node.event("close", |_| true).await["value"].clone();
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(close["reconnect"], true, "{close}");
    node.event("reconnecting", |v| v["attempt"] == 4).await;

    // Back on the same port: the filtered subscription restored without the script asking,
    // and a gap notice for what was missed meanwhile.
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let reopened = node.event("open", |_| true).await["value"].clone();
    assert_ne!(reopened["epoch"], welcome["epoch"], "a new process");
    node.event("frame", |f| {
        f["type"] == "subscribed" && f["topics"] == json!(["news"])
    })
    .await;
    // A new epoch: the resume is answered with a gap saying that the bridge is another
    // process, not merely that the client was away.
    let gap = node.event("gap", |_| true).await["value"].clone();
    assert_eq!(gap, json!({"reason": "epoch_changed", "topics": ["news"]}));
    let attempts = assert_backoff(&node, min_delay, max_delay);
    assert!(attempts >= 4, "{attempts} attempts");
    // A token from the token function for every attempt: never a stale one.
    assert_eq!(node.seen("token").len(), 1 + attempts);

    publish(&redis.url(), "news", r#"{"kind":"b","n":2}"#).await;
    publish(&redis.url(), "news", r#"{"kind":"a","n":3}"#).await;
    let next = node.event("message", |_| true).await["value"].clone();
    assert_eq!(
        next["data"],
        json!({"kind": "a", "n": 3}),
        "the filter came back too"
    );
    assert_eq!(next["seq"], 1, "numbered by the new process");

    // refresh() takes the token function's next token and resolves with its expiry.
    node.send(json!({"op": "refresh"}));
    let expires_at = node.reply("refresh").await;
    let call = 2 + attempts as u64;
    assert_eq!(expires_at, node.token_exp(call));

    // Closed by the user: no reconnect, so the process ends by itself.
    node.send(json!({"op": "close"}));
    node.event("close", |v| v["reconnect"] == false).await;
    assert!(
        node.seen("gap").iter().all(|gap| gap["reason"] != "seq"),
        "{}",
        node.transcript()
    );
    let logs = bridge.logs();
    for token in node.seen("token") {
        let token = token["token"].as_str().expect("a minted token");
        assert!(!logs.contains(token), "a token in the logs:\n{logs}");
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_keeps_its_token_fresh_and_backs_off_when_refused() {
    let redis = RedisServer::start();
    let yaml = fixed_port_config(&redis, pick_port());
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let url = bridge.ws_url("/ws");

    // Expiring without automatic refreshes: closed with 1008 "token expired", back at once
    // with the token function's next token, subscription restored.
    let mut expiring = node_client();
    expiring.connect_minting(
        &url,
        "bob",
        &[2, 600],
        json!({"minDelay": 100, "refreshBefore": 0}),
    );
    // Refreshed before `exp` by itself: the first token's expiry passes unnoticed.
    let mut refreshing = node_client();
    refreshing.connect_minting(&url, "cy", &[5, 600], json!({"refreshBefore": 3000}));
    // Refused at every handshake (401): attempts back off instead of hammering.
    let mut refused = node_client();
    refused.send(json!({
        "op": "connect", "url": url, "tokens": ["not-a-jwt"],
        "options": {"minDelay": 100, "maxDelay": 800},
    }));

    // Stopped after four retries; every handshake reached the bridge and was refused.
    refused.event("reconnecting", |v| v["attempt"] == 4).await;
    refused.send(json!({"op": "close"}));
    refused.event("close", |v| v["reconnect"] == false).await;
    assert!(refused.seen("open").is_empty(), "{}", refused.transcript());
    let retries = assert_backoff(&refused, 100, 800) as u64;
    let rejected = bridge
        .metric("bridge_connections_rejected_total{reason=\"unauthorized\"}")
        .await
        .unwrap_or(0);
    // The first connection and the retries; the last one may have been cut short by close.
    assert!(
        (retries..=retries + 1).contains(&rejected),
        "{rejected} refused handshakes for {retries} retries"
    );
    refused.finish().await;

    expiring.event("open", |_| true).await;
    expiring.send(json!({"op": "subscribe", "topics": ["news"]}));
    assert_eq!(expiring.reply("subscribe").await, json!(["news"]));
    let close = expiring.event("close", |_| true).await["value"].clone();
    assert_eq!(
        (&close["code"], &close["reason"], &close["reconnect"]),
        (&json!(1008), &json!("token expired"), &json!(true))
    );
    expiring.event("open", |_| true).await;
    assert_eq!(expiring.seen("token").len(), 2);
    expiring
        .event("frame", |f| {
            f["type"] == "subscribed" && f["topics"] == json!(["news"])
        })
        .await;
    publish(&redis.url(), "news", r#"{"n":1}"#).await;
    let message = expiring.event("message", |_| true).await["value"].clone();
    assert_eq!(message["data"], json!({"n": 1}));

    let refreshed = refreshing
        .event("frame", |f| f["type"] == "refreshed")
        .await["value"]
        .clone();
    assert_eq!(refreshed["expires_at"], refreshing.token_exp(2));
    let first_exp = refreshing.token_exp(1).as_u64().expect("exp");
    wait_until_async(
        Duration::from_secs(8),
        "the first token's exp to pass",
        || async { now() > first_exp },
    )
    .await;
    refreshing.send(json!({"op": "ping"}));
    refreshing.reply("ping").await;
    assert!(
        refreshing.seen("close").is_empty(),
        "{}",
        refreshing.transcript()
    );
    assert_eq!(refreshing.seen("open").len(), 1);

    // `seq` counts every frame of a topic: cy sees a jump where bob's frame went by.
    for node in [&mut expiring, &mut refreshing] {
        node.send(json!({"op": "subscribe", "topics": ["feed"]}));
        assert_eq!(node.reply("subscribe").await, json!(["feed"]));
    }
    for (user, n) in [("cy", 1), ("bob", 2), ("cy", 3)] {
        let payload = json!({"user": user, "n": n}).to_string();
        publish(&redis.url(), "feed", payload).await;
    }
    let bobs = expiring.event("message", |m| m["topic"] == "feed").await["value"].clone();
    assert_eq!((&bobs["data"]["n"], &bobs["seq"]), (&json!(2), &json!(2)));
    let first = refreshing.event("message", |m| m["topic"] == "feed").await["value"].clone();
    assert_eq!((&first["data"]["n"], &first["seq"]), (&json!(1), &json!(1)));
    let gap = refreshing.event("gap", |_| true).await["value"].clone();
    assert_eq!(
        gap,
        json!({"reason": "seq", "topics": ["feed"], "missing": [2, 2]})
    );
    let third = refreshing.event("message", |m| m["topic"] == "feed").await["value"].clone();
    assert_eq!((&third["data"]["n"], &third["seq"]), (&json!(3), &json!(3)));
    assert!(
        expiring
            .seen("gap")
            .iter()
            .all(|gap| gap["reason"] != "seq"),
        "bob saw no jump: {}",
        expiring.transcript()
    );

    for mut node in [expiring, refreshing] {
        node.send(json!({"op": "close"}));
        node.event("close", |v| v["reconnect"] == false).await;
        node.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_client_closed_while_connecting_leaves_nothing_behind() {
    // A server that takes the TCP connection and never answers the handshake.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let mut node = node_client();
    node.send(json!({
        "op": "connect", "url": url, "tokens": ["a-token"], "options": {"requestTimeout": 300},
    }));
    node.event("token", |_| true).await;
    let (_socket, _) = tokio::task::spawn_blocking(move || listener.accept())
        .await
        .expect("accept thread")
        .expect("the client's connection");
    // Queued while connecting, then timed out: never sent, rejected with `timeout`.
    node.send(json!({"op": "subscribe", "topics": ["news"]}));
    let reply = node
        .expect("the subscribe's answer", |line| {
            line["reply"] == "subscribe"
        })
        .await;
    assert_eq!(
        (&reply["ok"], &reply["code"]),
        (&json!(false), &json!("timeout")),
        "{reply}"
    );
    node.send(json!({"op": "close"}));
    let close = node.event("close", |_| true).await["value"].clone();
    assert_eq!(
        close,
        json!({"code": 1000, "reason": "closed by the client", "reconnect": false})
    );
    assert!(node.seen("open").is_empty(), "{}", node.transcript());
    // The socket still connecting is let go of without an unhandled error, and no timer is
    // left: the process ends by itself, successfully.
    node.finish().await;
}
