//! Redis Cluster: three masters made with `redis-cli --cluster create`. Classic PUBLISH on
//! any node reaches the subscribers of every node, so the bridge subscribes on the first node
//! that answers; when that node is killed it moves to the next one, with `gap` notices.

use serde_json::{Value, json};
use std::process::{Command, Stdio};

use crate::support::{
    ADMIN_TOKEN, Bridge, JOB_ROUTE, RedisServer, WAIT, config, http_post, log_field, publish,
    wait_until, wait_until_async,
};

fn cluster_node() -> RedisServer {
    RedisServer::start_with_args(&[
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ])
}

/// The `redis subscribed` log lines' `redis` fields, in order.
fn subscribed_to(bridge: &Bridge) -> Vec<Value> {
    bridge
        .log_values()
        .into_iter()
        .filter(|v| log_field(v, "message").and_then(Value::as_str) == Some("redis subscribed"))
        .filter_map(|v| log_field(&v, "redis").cloned())
        .collect()
}

#[tokio::test]
async fn the_bridge_subscribes_on_one_node_and_moves_when_it_dies() {
    let mut nodes: Vec<RedisServer> = (0..3).map(|_| cluster_node()).collect();
    let addresses: Vec<String> = nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port()))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&created.stdout)
    );
    for node in &nodes {
        let url = node.url();
        wait_until_async(WAIT, "cluster_state:ok", || async {
            let client = redis::Client::open(url.as_str()).expect("url");
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            info.contains("cluster_state:ok")
        })
        .await;
    }

    let list = addresses
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = config("", JOB_ROUTE).replacen(
        "  url: {redis_url}\n",
        &format!(
            "  url: redis://unused:1/0\n  cluster:\n    nodes: [{list}]\n  heartbeat_interval: 200ms\n  heartbeat_timeout: 1s\n"
        ),
        1,
    );
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    assert_eq!(
        subscribed_to(&bridge),
        [json!(format!("redis://{}/0", addresses[0]))]
    );
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:c"]).await;
    // Published on another node, received through the first.
    publish(&nodes[1].url(), "job:c", r#"{"n":1}"#).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": 1}), "{frame}");

    // The subscribed node dies: the bridge moves to the next, and says what may be lost.
    nodes[0].kill();
    let gap = client.recv_json(WAIT).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    bridge.wait_readyz(200, WAIT).await;
    // Ready comes before the log line that names the node.
    wait_until(WAIT, "the second `redis subscribed` line", || {
        subscribed_to(&bridge).len() >= 2
    })
    .await;
    assert_eq!(
        subscribed_to(&bridge)[1],
        json!(format!("redis://{}/0", addresses[1]))
    );
    publish(&nodes[2].url(), "job:c", r#"{"n":2}"#).await;
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": 2}), "{frame}");
    // /api/publish goes to a node that answers too.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http_post(
        bridge.addr(),
        "/api/publish",
        &[("Authorization", bearer.as_str())],
        r#"{"channel": "job:c", "payload": {"n": 3}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let frame = client.recv_json(WAIT).await;
    assert_eq!(frame["data"], json!({"n": 3}), "{frame}");
    assert_eq!(
        bridge.metric("bridge_redis_reconnects_total").await,
        Some(1)
    );
}
