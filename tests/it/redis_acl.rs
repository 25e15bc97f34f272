//! ACL users: the bridge runs under exactly the `ACL SETUSER` line README.md gives, with its
//! password from the environment; a user without the bridge's reserved channels, without a
//! route's pattern, or with a wrong password is named in the log (command and channel, or
//! `auth`), counted, and keeps the bridge not ready, and fixing the ACL is enough.

use serde_json::{Value, json};

use crate::support::{
    Bridge, JOB_ROUTE, RedisServer, WAIT, config, log_field, publish, repo, wait_until_async,
};

pub(crate) const PASSWORD: &str = "acl-test-password-8d1f";

/// README's `ACL SETUSER redis-ws-bridge …` line, with `>PASSWORD` made [`PASSWORD`].
pub(crate) fn readme_acl_line() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("ACL SETUSER redis-ws-bridge "))
        .expect("README.md gives an `ACL SETUSER redis-ws-bridge` line");
    line.split_whitespace()
        .map(|word| match word {
            ">PASSWORD" => format!(">{PASSWORD}"),
            other => other.to_owned(),
        })
        .collect()
}

/// Runs one command on the server as its default user.
pub(crate) async fn command(redis: &RedisServer, words: &[String]) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let mut command = redis::cmd(&words[0]);
    for word in &words[1..] {
        command.arg(word);
    }
    command
        .query_async::<()>(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("{words:?}: {e}"));
}

/// A bridge on the jobs route, as `user` with the password from `REDIS_PASSWORD`.
fn bridge_as(redis: &RedisServer, user: &str, password: &str) -> Bridge {
    let url = format!(
        "redis://{user}:${{REDIS_PASSWORD}}@127.0.0.1:{}/0",
        redis.port()
    );
    let yaml = config("", JOB_ROUTE).replace("{redis_url}", &url);
    Bridge::start_with(&yaml, &[("REDIS_PASSWORD", password)])
}

/// Waits for a few failed attempts of `reason`; returns the bridge's one `redis unavailable`
/// line (one line for one error, however many attempts).
async fn refused(bridge: &Bridge, reason: &str) -> Value {
    let series = format!("bridge_redis_connect_errors_total{{reason=\"{reason}\"}}");
    wait_until_async(WAIT, &format!("attempts refused as {reason}"), || async {
        bridge.metric(&series).await.unwrap_or(0) >= 2
    })
    .await;
    bridge.wait_readyz(503, WAIT).await;
    let lines: Vec<Value> = bridge
        .log_values()
        .into_iter()
        .filter(|v| log_field(v, "message").and_then(Value::as_str) == Some("redis unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", bridge.logs());
    assert_eq!(log_field(&lines[0], "reason"), Some(&json!(reason)));
    assert!(!bridge.logs().contains(PASSWORD), "a password in the logs");
    lines[0].clone()
}

/// `word`, or `user` in place of the user name `redis-ws-bridge`.
fn rename(word: &str, user: &str) -> String {
    match word {
        "redis-ws-bridge" => user.to_owned(),
        other => other.to_owned(),
    }
}

fn error_of(line: &Value) -> &str {
    log_field(line, "error")
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[tokio::test]
async fn the_readme_acl_line_is_enough_and_less_is_named() {
    let redis = RedisServer::start();
    let least = readme_acl_line();
    command(&redis, &least).await;
    let bridge = bridge_as(&redis, "redis-ws-bridge", PASSWORD);
    bridge.wait_ready().await;
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:3"]).await;
    publish(&redis.url(), "job:3", r#"{"n":1}"#).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": 1}), "{frame}");
    // A reload under the same user: the new channel is subscribed and the switch marker
    // published and received on the reserved channels, so nothing is switched blind.
    let reloaded = std::fs::read_to_string(bridge.config_path())
        .expect("read the routing file")
        .replace(
            "routes:\n",
            "routes:\n  - name: special\n    channel: job:special\n    topic: special\n",
        );
    std::fs::write(bridge.config_path(), reloaded).expect("rewrite the routing file");
    bridge.signal("HUP");
    bridge
        .wait_log(WAIT, |v| {
            log_field(v, "message").and_then(Value::as_str) == Some("reloaded")
        })
        .await;
    client.subscribe(2, &["special"]).await;
    publish(&redis.url(), "job:special", r#"{"n":2}"#).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["topic"], "special", "{frame}");
    let logs = bridge.logs();
    assert!(!logs.contains("switching without a marker"), "{logs}");
    assert!(!logs.contains("NOPERM"), "{logs}");
    assert!(!logs.contains(PASSWORD), "a password in the logs");

    // Without the reserved channels: the heartbeat's SUBSCRIBE is named.
    let without_reserved: Vec<String> = least
        .iter()
        .filter(|word| *word != "&__redis-ws-bridge__:*")
        .map(|word| rename(word, "no-reserved"))
        .collect();
    assert_eq!(without_reserved.len(), least.len() - 1, "{least:?}");
    command(&redis, &without_reserved).await;
    let blind = bridge_as(&redis, "no-reserved", PASSWORD);
    let line = refused(&blind, "denied").await;
    let error = error_of(&line);
    assert!(
        error.contains("NOPERM") && error.contains("SUBSCRIBE `__redis-ws-bridge__:heartbeat:"),
        "{line}"
    );

    // Without the route's pattern: its PSUBSCRIBE is named. Granting it is enough.
    let without_jobs: Vec<String> = least
        .iter()
        .filter(|word| *word != "&job:*")
        .map(|word| rename(word, "no-jobs"))
        .collect();
    command(&redis, &without_jobs).await;
    let jobless = bridge_as(&redis, "no-jobs", PASSWORD);
    let line = refused(&jobless, "denied").await;
    assert!(error_of(&line).contains("PSUBSCRIBE `job:*`"), "{line}");
    let grant = ["ACL", "SETUSER", "no-jobs", "&job:*"].map(String::from);
    command(&redis, &grant).await;
    jobless.wait_readyz(200, WAIT).await;

    // A wrong password.
    let wrong = bridge_as(&redis, "redis-ws-bridge", "not-the-password");
    let line = refused(&wrong, "auth").await;
    assert!(!wrong.logs().contains("not-the-password"), "{line}");
}
