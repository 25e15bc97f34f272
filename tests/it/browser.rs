//! The front end in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/clients/browser/drive.js`). The console page against the real daemon (connect,
//! the connection's details, subscribe, frames live with pause and filter, publish as an
//! administrator, a phone-width screen, nothing refused by its CSP), and the client library
//! loaded from `/client.js` through the real nginx wss site (permessage-deflate negotiated
//! through it), across a token expiry, a request without an answer, a network cut and a
//! bridge restart, then closed with nothing left behind, and a page reloaded in the middle of
//! a job that shows the job's latest state at once (`last`). Also the package of
//! `clients/js/`: what `npm pack` puts in it, the ES module generated from the served file,
//! and the declarations type-checked by `tsc`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::nginx::Nginx;
use crate::support::driver::Driver;
use crate::support::tokens::{SECRET, auth_section, now, token};
use crate::support::{
    Bridge, RedisServer, WAIT, config_with, node, node_project, pick_port, publish, repo,
    wait_until_async,
};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium driven by `drive.js`, with a profile of its own.
struct Browser {
    driver: Driver,
    /// The profile (`--user-data-dir`), removed after the browser.
    _profile: tempfile::TempDir,
}

impl std::ops::Deref for Browser {
    type Target = Driver;
    fn deref(&self) -> &Driver {
        &self.driver
    }
}

impl std::ops::DerefMut for Browser {
    fn deref_mut(&mut self) -> &mut Driver {
        &mut self.driver
    }
}

impl Browser {
    /// Shuts the browser and waits for the driver to end by itself.
    async fn finish(self) {
        self.driver.finish().await;
    }
}

/// Chromium with a fresh profile, trusting the certificate whose public key hashes to
/// `spki` (if any), `width` pixels wide.
async fn browser(spki: Option<&str>, width: u32) -> Browser {
    assert!(
        Path::new(CHROMIUM).exists(),
        "no {CHROMIUM}: run scripts/test.sh once (it installs Debian's chromium)"
    );
    let profile = tempfile::tempdir().expect("a profile directory");
    let mut driver = Driver::start("tests/clients/browser", "playwright-core");
    driver.send(json!({
        "op": "launch", "profile": profile.path(), "spki": spki, "width": width, "height": 800,
    }));
    driver.reply("launch").await;
    Browser {
        driver,
        _profile: profile,
    }
}

/// Sends `command` and returns its reply's value, which must be a success.
async fn run(driver: &mut Driver, command: Value) -> Value {
    let op = command["op"].as_str().expect("an op").to_owned();
    driver.send(command);
    driver.reply(&op).await
}

async fn text(driver: &mut Driver, selector: &str) -> String {
    let value = run(driver, json!({"op": "text", "selector": selector})).await;
    value.as_str().unwrap_or_default().to_owned()
}

async fn wait_text(driver: &mut Driver, selector: &str, text: &str) -> String {
    let value = run(
        driver,
        json!({"op": "wait_text", "selector": selector, "text": text}),
    )
    .await;
    value.as_str().unwrap_or_default().to_owned()
}

async fn fill(driver: &mut Driver, selector: &str, value: &str) {
    run(
        driver,
        json!({"op": "fill", "selector": selector, "value": value}),
    )
    .await;
}

async fn click(driver: &mut Driver, selector: &str) {
    run(driver, json!({"op": "click", "selector": selector})).await;
}

/// The page said nothing wrong: no script error, nothing its CSP refused, and no console
/// error but those that begin with one of `expected` (Chromium logs every refused request).
fn assert_no_page_errors(driver: &Driver, expected: &[&str]) {
    for event in ["pageerror", "csp"] {
        assert!(
            driver.seen(event).is_empty(),
            "{event}: {}",
            driver.transcript()
        );
    }
    for error in driver.seen("console") {
        let text = error["text"].as_str().unwrap_or_default();
        assert!(
            expected.iter().any(|prefix| text.starts_with(prefix)),
            "console error: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The console
// ---------------------------------------------------------------------------------------

/// `news` by subscription, `alerts` to everyone without subscribing.
const ROUTES: &str = r#"
    - name: news
      channel: news
      topic: news
      history: { size: 100 }
    - name: alerts
      channel: alerts
      topic: alerts
      delivery: auto
      history: { size: 100 }
    "#;

/// Redis and a bridge that admits anonymous connections and takes `admin` as the admin
/// role.
async fn console_bridge() -> (RedisServer, Bridge) {
    let redis = RedisServer::start();
    let sections = format!(
        "{}admin:\n  roles: [admin]\n",
        auth_section("optional", "", "")
    );
    let bridge = Bridge::start(&redis, &config_with("", &sections, ROUTES));
    bridge.wait_ready().await;
    (redis, bridge)
}

/// The console connected as the administrator `ops`, subscribed to `news`, one frame
/// received from Redis.
async fn console_connected(driver: &mut Driver, redis: &RedisServer, bridge: &Bridge) {
    let url = format!("http://{}/", bridge.addr());
    run(driver, json!({"op": "goto", "url": url})).await;
    assert_eq!(text(driver, "#status").await, "closed");
    fill(driver, "#token", &token("ops", &["admin"], json!({}))).await;
    click(driver, "#connect").await;
    wait_text(driver, "#status", "connected").await;
    fill(driver, "#topics", "news").await;
    fill(driver, "#filter", r#"{"kind": ["a", "b"]}"#).await;
    click(driver, "#subscribe").await;
    wait_text(driver, "#subscriptions", "news").await;
    publish(
        &redis.url(),
        "news",
        r#"{"kind":"a","headline":"straight from redis"}"#,
    )
    .await;
    wait_text(driver, "#log", "straight from redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium_subscribes_receives_and_publishes_as_an_administrator() {
    let (redis, bridge) = console_bridge().await;
    let mut driver = browser(None, 1000).await;
    console_connected(&mut driver, &redis, &bridge).await;

    // The connection as the bridge describes it: the same epoch as another client's.
    let other = bridge.client().await;
    assert_eq!(text(&mut driver, "#info-user").await, "ops");
    assert_eq!(text(&mut driver, "#info-roles").await, "admin");
    assert_eq!(
        text(&mut driver, "#info-epoch").await,
        other.welcome["epoch"].as_str().expect("an epoch")
    );
    assert_eq!(text(&mut driver, "#info-auto").await, "alerts");
    let subscriptions = text(&mut driver, "#subscriptions").await;
    assert!(
        subscriptions.contains(r#"news {"kind":["a","b"]}"#),
        "{subscriptions}"
    );

    // Paused: a frame is held, not shown, until resumed.
    click(&mut driver, "#pause").await;
    publish(
        &redis.url(),
        "news",
        r#"{"kind":"b","headline":"while paused"}"#,
    )
    .await;
    wait_text(&mut driver, "#held", "1 held").await;
    assert!(!text(&mut driver, "#log").await.contains("while paused"));
    click(&mut driver, "#pause").await;
    wait_text(&mut driver, "#log", "while paused").await;
    assert_eq!(text(&mut driver, "#held").await, "");

    // The filter box hides every frame but the matching ones.
    fill(&mut driver, "#search", "straight from").await;
    let shown = run(&mut driver, json!({"op": "count", "selector": "#log li"})).await;
    assert_eq!(shown, 1, "{}", driver.transcript());
    fill(&mut driver, "#search", "").await;
    let shown = run(&mut driver, json!({"op": "count", "selector": "#log li"})).await;
    assert!(shown.as_u64().unwrap_or(0) >= 4, "{shown}");

    // An administrator publishes through POST /api/publish; the frame comes back through
    // Redis like any other.
    click(&mut driver, "#publishing summary").await;
    fill(&mut driver, "#channel", "news").await;
    fill(
        &mut driver,
        "#payload",
        r#"{"kind":"a","headline":"from the console"}"#,
    )
    .await;
    click(&mut driver, "#send").await;
    wait_text(&mut driver, "#published", "published: 1 receiver").await;
    wait_text(&mut driver, "#log", "from the console").await;
    bridge
        .wait_log(WAIT, |v| {
            v.to_string().contains("published through /api/publish")
        })
        .await;

    // A user who is not an administrator is refused, and nothing is published.
    fill(&mut driver, "#token", &token("ada", &["user"], json!({}))).await;
    fill(
        &mut driver,
        "#payload",
        r#"{"kind":"a","headline":"not allowed"}"#,
    )
    .await;
    click(&mut driver, "#send").await;
    wait_text(&mut driver, "#published", "403").await;
    publish(&redis.url(), "news", r#"{"kind":"a","headline":"marker"}"#).await;
    wait_text(&mut driver, "#log", "marker").await;
    assert!(!text(&mut driver, "#log").await.contains("not allowed"));

    // A phone-width screen: nothing wider than the screen, everything still there.
    run(
        &mut driver,
        json!({"op": "viewport", "width": 375, "height": 740}),
    )
    .await;
    let layout = run(&mut driver, json!({"op": "layout"})).await;
    assert_eq!(layout["width"], 375);
    assert!(
        layout["scrollWidth"].as_u64() <= Some(375),
        "wider than the phone: {layout}"
    );
    let shown = run(&mut driver, json!({"op": "count", "selector": "#send"})).await;
    assert_eq!(shown, 1);

    // A subscription's own button drops it; what is published next does not come.
    click(&mut driver, "#subscriptions li[data-topic='news'] button").await;
    wait_text(&mut driver, "#log", "unsubscribe: ok").await;
    let left = run(
        &mut driver,
        json!({"op": "count", "selector": "#subscriptions li"}),
    )
    .await;
    assert_eq!(left, 0);
    assert_eq!(
        run(&mut driver, json!({"op": "count", "selector": "#none"})).await,
        1
    );
    publish(
        &redis.url(),
        "news",
        r#"{"kind":"a","headline":"after unsubscribing"}"#,
    )
    .await;
    publish(&redis.url(), "alerts", r#"{"text":"auto marker"}"#).await;
    wait_text(&mut driver, "#log", "auto marker").await;
    assert!(
        !text(&mut driver, "#log")
            .await
            .contains("after unsubscribing")
    );

    click(&mut driver, "#disconnect").await;
    wait_text(&mut driver, "#status", "closed").await;
    assert_no_page_errors(
        &driver,
        &["Failed to load resource: the server responded with a status of 403"],
    );
    other.close().await;
    driver.finish().await;
}

/// Writes docs/console.png, the README's picture of the console, from the same setup as the
/// test above: `cargo test --test it browser::console_screenshot -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console.png"]
async fn console_screenshot() {
    let (redis, bridge) = console_bridge().await;
    let mut driver = browser(None, 900).await;
    console_connected(&mut driver, &redis, &bridge).await;
    publish(
        &redis.url(),
        "alerts",
        r#"{"level":"warning","text":"disk 91% full"}"#,
    )
    .await;
    wait_text(&mut driver, "#log", "disk 91% full").await;
    click(&mut driver, "#publishing summary").await;
    fill(&mut driver, "#channel", "news").await;
    fill(
        &mut driver,
        "#payload",
        r#"{"kind":"b","headline":"hello"}"#,
    )
    .await;
    click(&mut driver, "#send").await;
    wait_text(&mut driver, "#log", "hello").await;
    assert_no_page_errors(&driver, &[]);
    let path = repo().join("docs/console.png");
    std::fs::create_dir_all(repo().join("docs")).expect("docs/");
    run(
        &mut driver,
        json!({"op": "screenshot", "path": path.display().to_string()}),
    )
    .await;
    driver.finish().await;
}

// ---------------------------------------------------------------------------------------
// The client library through nginx
// ---------------------------------------------------------------------------------------

/// The base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo), which
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | openssl base64 -A",
        cert.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("base64")
        .trim()
        .to_owned()
}

/// `auth.mode: required` on a fixed port, so that a restarted bridge is where nginx looks.
fn fixed_port_config(redis: &RedisServer, port: u16) -> String {
    config_with("", &auth_section("required", "", ""), ROUTES)
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"))
        .replace("{redis_url}", &redis.url())
}

async fn expect_message(driver: &mut Driver, n: u64) -> Value {
    driver.event("message", |m| m["data"]["n"] == n).await["value"].clone()
}

/// Message `n` (of kind b) was held back by the subscription's filter.
fn assert_filtered(driver: &Driver, n: u64) {
    assert!(
        driver.seen("message").iter().all(|m| m["data"]["n"] != n),
        "{}",
        driver.transcript()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_in_chromium_through_nginx_survives_expiry_cuts_and_restarts() {
    let redis = RedisServer::start();
    let port = pick_port();
    let yaml = fixed_port_config(&redis, port);
    let mut bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let mut nginx = Nginx::start(bridge.addr());
    let origin = format!("https://127.0.0.1:{}", nginx.addr.port());
    let url = format!("wss://127.0.0.1:{}/ws", nginx.addr.port());
    let mut driver = browser(Some(&spki_hash(&nginx.cert_path())), 800).await;

    // An application page loads /client.js from the bridge through nginx, with a script tag.
    let loaded = run(&mut driver, json!({"op": "harness", "origin": origin})).await;
    assert_eq!(
        loaded,
        json!({"type": "function", "globals": ["RedisWsBridge"]}),
        "one global, RedisWsBridge"
    );
    // The ES module is the same client.
    let esm_token = token("esm", &[], json!({}));
    let esm = run(
        &mut driver,
        json!({"op": "esm", "url": url, "token": esm_token}),
    )
    .await;
    assert_eq!(esm["welcome"]["user"], "esm", "{esm}");
    assert_eq!(esm["state"], "closed", "{esm}");
    assert_eq!(
        esm["sameClass"], false,
        "a module of its own, not the global"
    );

    // The first token lives 6 s; the client refreshes it 3 s before `exp`.
    let mint = json!({"secret": SECRET, "user": "ada", "ttls": [6, 600]});
    let options = json!({
        "minDelay": 100, "maxDelay": 1000, "refreshBefore": 3000, "requestTimeout": 1000,
    });
    run(
        &mut driver,
        json!({"op": "connect", "url": url, "mint": mint, "options": options}),
    )
    .await;
    let welcome = driver.event("open", |_| true).await["value"].clone();
    assert_eq!(welcome["user"], "ada", "{welcome}");
    assert_eq!(welcome["topics"], json!(["alerts"]), "{welcome}");
    let subscribed = run(
        &mut driver,
        json!({"op": "subscribe", "topics": ["news"], "filter": {"kind": ["a"]}}),
    )
    .await;
    assert_eq!(subscribed, json!(["news"]));
    publish(&redis.url(), "news", r#"{"kind":"a","n":1}"#).await;
    assert_eq!(expect_message(&mut driver, 1).await["seq"], 1);

    // Chromium offers permessage-deflate, nginx passes the offer and the answer on, and a
    // frame far over `min_bytes` arrives whole.
    let pad = "compressible ".repeat(2000);
    let large = json!({"kind": "a", "n": 100, "pad": pad}).to_string();
    publish(&redis.url(), "news", &large).await;
    assert_eq!(expect_message(&mut driver, 100).await["data"]["pad"], pad);
    let extensions = run(&mut driver, json!({"op": "extensions"})).await;
    assert_eq!(
        extensions.as_array().and_then(|sockets| sockets.last()),
        Some(&json!(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )),
        "{extensions}"
    );

    // Across the first token's expiry: refreshed in place, still subscribed, never closed.
    let refreshed = driver.event("frame", |f| f["type"] == "refreshed").await["value"].clone();
    assert_eq!(refreshed["expires_at"], driver.token_exp(2));
    let first_exp = driver.token_exp(1).as_u64().expect("exp");
    wait_until_async(
        Duration::from_secs(8),
        "the first token's exp to pass",
        || async { now() > first_exp },
    )
    .await;
    run(&mut driver, json!({"op": "ping"})).await;
    publish(&redis.url(), "news", r#"{"kind":"b","n":2}"#).await;
    publish(&redis.url(), "news", r#"{"kind":"a","n":3}"#).await;
    expect_message(&mut driver, 3).await;
    assert_filtered(&driver, 2);
    assert!(driver.seen("close").is_empty(), "{}", driver.transcript());
    assert_eq!(driver.seen("open").len(), 1);

    // A bridge that does not answer: the request is rejected after its time-out.
    bridge.signal("STOP");
    driver.send(json!({"op": "ping"}));
    let ping = driver
        .expect("the ping's answer", |l| l["reply"] == "ping")
        .await;
    bridge.signal("CONT");
    assert_eq!(
        (&ping["ok"], &ping["code"]),
        (&json!(false), &json!("timeout")),
        "{ping}"
    );
    run(&mut driver, json!({"op": "ping"})).await;

    // The network cut: nginx stops, the page's socket is gone, and every attempt fails
    // until nginx is back, while messages are published. The same bridge: the subscription
    // restored with its filter, and what was missed replayed, the auto topic's first (it
    // resumes at the upgrade), then the subscription's, with no gap.
    nginx.stop();
    let close = driver.event("close", |_| true).await["value"].clone();
    assert_eq!(
        (&close["code"], &close["reconnect"]),
        (&json!(1006), &json!(true)),
        "{close}"
    );
    driver.event("reconnecting", |v| v["attempt"] == 3).await;
    for (channel, payload) in [
        ("news", r#"{"kind":"a","n":41}"#),
        ("news", r#"{"kind":"b","n":42}"#),
        ("alerts", r#"{"n":43}"#),
        ("news", r#"{"kind":"a","n":44}"#),
    ] {
        publish(&redis.url(), channel, payload).await;
    }
    let before = driver.seen("message").len();
    nginx.resume();
    let reopened = driver.event("open", |_| true).await["value"].clone();
    assert_eq!(reopened["epoch"], welcome["epoch"], "the same bridge");
    driver
        .event("frame", |f| {
            f["type"] == "subscribed" && f["topics"] == json!(["news"])
        })
        .await;
    expect_message(&mut driver, 44).await;
    let replayed: Vec<&Value> = driver.seen("message")[before..]
        .iter()
        .map(|m| &m["data"]["n"])
        .collect();
    assert_eq!(replayed, [&json!(43), &json!(41), &json!(44)]);
    assert_filtered(&driver, 42);
    assert!(driver.seen("gap").is_empty(), "{}", driver.transcript());
    publish(&redis.url(), "news", r#"{"kind":"b","n":4}"#).await;
    publish(&redis.url(), "news", r#"{"kind":"a","n":5}"#).await;
    expect_message(&mut driver, 5).await;
    assert_filtered(&driver, 4);

    // The bridge restarts: 1001, attempts answered 502 by nginx meanwhile, then a new
    // process (a new epoch): the resume of the auto topic and of the subscription are
    // answered with gaps that say so, and the subscription is restored again.
    bridge.signal("TERM");
    bridge.wait_exit(WAIT).await;
    let close = driver.event("close", |v| v["code"] == 1001).await["value"].clone();
    assert_eq!(close["reconnect"], true, "{close}");
    let attempts = driver.seen("reconnecting").len();
    driver
        .event("reconnecting", |v| {
            v["attempt"].as_u64().is_some_and(|a| a >= 2)
        })
        .await;
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    let restarted = driver.event("open", |_| true).await["value"].clone();
    assert_ne!(restarted["epoch"], welcome["epoch"], "a new process");
    let gap = driver.event("gap", |_| true).await["value"].clone();
    assert_eq!(
        gap,
        json!({"reason": "epoch_changed", "topics": ["alerts"]})
    );
    driver
        .event("frame", |f| {
            f["type"] == "subscribed" && f["topics"] == json!(["news"])
        })
        .await;
    let gap = driver.event("gap", |_| true).await["value"].clone();
    assert_eq!(gap, json!({"reason": "epoch_changed", "topics": ["news"]}));
    publish(&redis.url(), "news", r#"{"kind":"a","n":6}"#).await;
    assert_eq!(
        expect_message(&mut driver, 6).await["seq"],
        1,
        "numbered by the new process"
    );
    assert!(driver.seen("reconnecting").len() > attempts);
    // An envelope's seq starting again is no gap of its own: the restart said it all.
    assert!(
        driver.seen("gap").iter().all(|gap| gap["reason"] != "seq"),
        "{}",
        driver.transcript()
    );

    // Closed by the application: no timer left, every socket closing without handlers.
    run(&mut driver, json!({"op": "close"})).await;
    // Told before close() returns.
    let closed = driver.seen("close").last().cloned().cloned();
    assert_eq!(
        closed,
        Some(json!({"code": 1000, "reason": "closed by the client", "reconnect": false}))
    );
    let leftovers = run(&mut driver, json!({"op": "leftovers"})).await;
    assert_eq!(leftovers["timers"], 0, "{leftovers}");
    let sockets = leftovers["sockets"].as_array().expect("sockets");
    assert!(sockets.len() >= 4, "{leftovers}");
    for socket in sockets {
        assert_eq!(socket["handlers"], false, "{leftovers}");
        assert!(socket["readyState"].as_u64() >= Some(2), "{leftovers}");
    }

    let logs = bridge.logs();
    for minted in driver.seen("token") {
        let minted = minted["token"].as_str().expect("a minted token");
        assert!(!logs.contains(minted), "a token in the logs");
    }
    // The connections that the cut and the restart refused.
    assert_no_page_errors(
        &driver,
        &[&format!("WebSocket connection to '{url}?token=")],
    );
    driver.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reloaded_in_the_middle_of_a_job_shows_its_latest_state_at_once() {
    let redis = RedisServer::start();
    let yaml = config_with("", &auth_section("required", "", ""), ROUTES);
    let bridge = Bridge::start(&redis, &yaml);
    bridge.wait_ready().await;
    let origin = format!("http://{}", bridge.addr());
    let url = bridge.ws_url("/ws");
    let mint = json!({"secret": SECRET, "user": "ada", "ttls": [600]});
    let mut driver = browser(None, 800).await;
    let progress = |n: u64| json!({"kind": "a", "n": n}).to_string();
    let retained = |frames: u64| {
        let bridge = &bridge;
        async move {
            wait_until_async(WAIT, "the job's frames retained", || async {
                bridge.metric("bridge_history_frames").await == Some(frames)
            })
            .await;
        }
    };
    // The job made progress before the page opened.
    for n in 1..=3 {
        publish(&redis.url(), "news", progress(n)).await;
    }
    retained(3).await;

    // The page subscribes asking for the last frame: the job's state at once, then live.
    run(&mut driver, json!({"op": "harness", "origin": origin})).await;
    run(
        &mut driver,
        json!({"op": "connect", "url": url, "mint": mint}),
    )
    .await;
    driver.event("open", |_| true).await;
    // The replayed frames follow the answer; the promise it resolves may be reported after
    // them, so the answer is awaited as a frame.
    let latest =
        json!({"op": "subscribe", "topics": ["news"], "filter": null, "options": {"last": 1}});
    driver.send(latest.clone());
    let subscribed = driver.event("frame", |f| f["type"] == "subscribed").await["value"].clone();
    assert_eq!(subscribed["topics"], json!(["news"]), "{subscribed}");
    assert_eq!(expect_message(&mut driver, 3).await["seq"], 3);
    publish(&redis.url(), "news", progress(4)).await;
    expect_message(&mut driver, 4).await;
    let shown = |driver: &Driver, from: usize| -> Vec<Value> {
        driver.seen("message")[from..]
            .iter()
            .map(|m| m["data"]["n"].clone())
            .collect()
    };
    assert_eq!(
        shown(&driver, 0),
        [json!(3), json!(4)],
        "nothing older than the state"
    );

    // Reloaded while the job goes on: the new page gets the state it missed, not the frames
    // the first page showed, and the live frames after it.
    let before = driver.seen("message").len();
    run(&mut driver, json!({"op": "harness", "origin": origin})).await;
    publish(&redis.url(), "news", progress(5)).await;
    retained(5).await;
    run(
        &mut driver,
        json!({"op": "connect", "url": url, "mint": mint}),
    )
    .await;
    driver.event("open", |_| true).await;
    driver.send(latest);
    driver.event("frame", |f| f["type"] == "subscribed").await;
    assert_eq!(expect_message(&mut driver, 5).await["seq"], 5);
    publish(&redis.url(), "news", progress(6)).await;
    expect_message(&mut driver, 6).await;
    assert_eq!(shown(&driver, before), [json!(5), json!(6)]);
    assert!(driver.seen("gap").is_empty(), "{}", driver.transcript());
    assert_no_page_errors(&driver, &[]);
    driver.finish().await;
}

// ---------------------------------------------------------------------------------------
// The package
// ---------------------------------------------------------------------------------------

fn package_dir() -> std::path::PathBuf {
    repo().join("clients/js")
}

#[test]
fn the_es_module_is_generated_from_the_served_file() {
    let out = Command::new(node())
        .arg(package_dir().join("build.mjs"))
        .arg("--check")
        .output()
        .expect("run build.mjs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_package_holds_its_files_and_no_other() {
    let out = Command::new("npm")
        .args(["pack", "--dry-run", "--json", "--ignore-scripts"])
        .current_dir(package_dir())
        .output()
        .expect("run npm pack (scripts/test.sh installs npm)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: Value = serde_json::from_slice(&out.stdout).expect("npm pack --json");
    let files: BTreeSet<&str> = packed[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([
            "README.md",
            "client.d.ts",
            "client.js",
            "client.mjs",
            "package.json"
        ])
    );
    assert_eq!(packed[0]["name"], "redis-ws-bridge-client");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(package_dir().join("package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    assert!(
        manifest.get("dependencies").is_none(),
        "no runtime dependency"
    );
    // Every file the manifest points at is in the package.
    for entry in [
        &manifest["main"],
        &manifest["module"],
        &manifest["types"],
        &manifest["exports"]["."]["import"],
        &manifest["exports"]["."]["require"],
        &manifest["exports"]["."]["types"],
    ] {
        let file = entry.as_str().expect("a path").trim_start_matches("./");
        assert!(files.contains(file), "{file} is not packed");
    }
}

#[test]
fn the_declarations_type_check_an_example_that_uses_every_api() {
    let dir = node_project("tests/clients/browser", "typescript");
    let out = Command::new(node())
        .arg(dir.join("node_modules/typescript/bin/tsc"))
        .args(["--noEmit", "-p"])
        .arg(dir.join("typecheck"))
        .output()
        .expect("run tsc");
    assert!(
        out.status.success(),
        "tsc:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
