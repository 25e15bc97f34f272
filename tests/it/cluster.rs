//! Redis Cluster: three masters made with `redis-cli --cluster create`, plain or over TLS
//! (client connections and the cluster bus). Classic PUBLISH on any node reaches the
//! subscribers of every node, so the bridge subscribes on the first node that answers; when
//! that node is killed it moves to the next one, with `gap` notices.

use serde_json::{Value, json};
use std::process::{Command, Stdio};

use crate::redis_tls::Certificates;
use crate::support::{
    ADMIN_TOKEN, Bridge, JOB_ROUTE, RedisServer, WAIT, config, http_post, log_field, publish,
    wait_until, wait_until_async,
};

const CLUSTER_ARGS: [&str; 4] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
];

/// Three nodes made into a cluster of three masters, every slot covered; with
/// `certificates`, each node also listens on TLS and the nodes speak TLS to one another.
async fn three_masters(certificates: Option<&Certificates>) -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| match certificates {
            None => RedisServer::start_with_args(&CLUSTER_ARGS),
            Some(certificates) => {
                let mut args = CLUSTER_ARGS.to_vec();
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                RedisServer::start_with_tls_and_args(certificates.server_tls(false), &args)
            }
        })
        .collect();
    let mut create = Command::new("redis-cli");
    if let Some(certificates) = certificates {
        create
            .arg("--tls")
            .arg("--cacert")
            .arg(certificates.path("ca.pem"));
    }
    let created = create
        .args(["--cluster", "create"])
        .args(nodes.iter().map(|node| match certificates {
            None => format!("127.0.0.1:{}", node.port()),
            Some(_) => format!("127.0.0.1:{}", node.tls_port()),
        }))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
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
    nodes
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

/// A bridge on the cluster `nodes` (over TLS with `certificates`) subscribes on the first,
/// receives what is published on another, and moves to the second when the first is killed.
async fn subscribes_on_one_node_and_moves_when_it_dies(certificates: Option<&Certificates>) {
    let mut nodes = three_masters(certificates).await;
    let (scheme, tls) = match certificates {
        None => ("redis", String::new()),
        Some(certificates) => (
            "rediss",
            format!(
                "  tls:\n    ca_file: {}\n",
                certificates.path("ca.pem").display()
            ),
        ),
    };
    let addresses: Vec<String> = nodes
        .iter()
        .map(|node| match certificates {
            None => format!("127.0.0.1:{}", node.port()),
            Some(_) => format!("127.0.0.1:{}", node.tls_port()),
        })
        .collect();
    let list = addresses
        .iter()
        .map(|a| format!("{scheme}://{a}"))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = config("", JOB_ROUTE).replacen(
        "  url: {redis_url}\n",
        &format!(
            "  url: {scheme}://unused:1/0\n{tls}  cluster:\n    nodes: [{list}]\n  heartbeat_interval: 200ms\n  heartbeat_timeout: 1s\n"
        ),
        1,
    );
    let bridge = Bridge::start_with(&yaml, &[]);
    bridge.wait_ready().await;
    // Ready comes before the log line that names the server.
    wait_until(WAIT, "the `redis subscribed` line", || {
        !subscribed_to(&bridge).is_empty()
    })
    .await;
    assert_eq!(
        subscribed_to(&bridge),
        [json!(format!("{scheme}://{}/0", addresses[0]))]
    );
    let mut client = bridge.client().await;
    client.subscribe(1, &["job:c"]).await;
    // Published on another node (its plain port), received through the first.
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
        json!(format!("{scheme}://{}/0", addresses[1]))
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
    let tls_errors = "bridge_redis_connect_errors_total{reason=\"tls\"}";
    assert_eq!(
        bridge.metric(tls_errors).await,
        Some(0),
        "{}",
        bridge.logs()
    );
}

#[tokio::test]
async fn the_bridge_subscribes_on_one_node_and_moves_when_it_dies() {
    subscribes_on_one_node_and_moves_when_it_dies(None).await;
}

#[tokio::test]
async fn over_tls_the_bridge_subscribes_on_one_node_and_moves_when_it_dies() {
    let certificates = Certificates::make();
    subscribes_on_one_node_and_moves_when_it_dies(Some(&certificates)).await;
}
