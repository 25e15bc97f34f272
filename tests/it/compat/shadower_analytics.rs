//! shadower-analytics (seed 002): workers publish to `workspace:{id}`; a client only ever
//! gets the events of the workspaces its token lists, unchanged, narrowed to some event
//! types by a filter; client frames up to 1 MiB; a per-connection command rate.

use serde_json::{Value, json};

use super::{Profile, Published, expect_raw, publish_python, stamped, worker};
use crate::support::tokens::token;
use crate::support::{Frame, WAIT, WsClient};

const W123: &str = "workspace:workspace-123";
const W456: &str = "workspace:workspace-456";

/// A dashboard token for `user` who may see `workspaces`.
fn dashboard_token(user: &str, workspaces: &[&str]) -> String {
    token(user, &["member"], json!({"workspaces": workspaces}))
}

/// Connects as the dashboard does, with the old URL shape `?token=…&workspace_id=…` (the
/// extra parameter is ignored).
async fn dashboard(p: &Profile, user: &str, workspaces: &[&str]) -> WsClient {
    let path = format!(
        "/ws?token={}&workspace_id={}",
        dashboard_token(user, workspaces),
        workspaces[0]
    );
    p.connect(&path, &[]).await
}

/// A worker's event (the broadcaster's JSON).
fn event(workspace: &str, ty: &str, data: &str) -> Value {
    worker(
        workspace,
        &format!(r#"{{"event":"{ty}","data":{data},"timestamp":"2025-11-09T12:00:00Z"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadower_clients_see_their_workspaces_only_and_filter_event_types() {
    let p = Profile::start("shadower-analytics").await;
    let mut one = dashboard(&p, "user-789", &["workspace-123"]).await;
    let mut narrow = dashboard(&p, "user-789", &["workspace-123"]).await;
    let mut other = dashboard(&p, "user-555", &["workspace-456"]).await;
    let mut both = dashboard(&p, "user-900", &["workspace-123", "workspace-456"]).await;
    assert_eq!(p.refused("/ws?workspace_id=workspace-123", &[]).await, 401);

    // The old `connected` event.
    let welcome = stamped(one.welcome.clone(), "timestamp");
    let connection_id = welcome["connection_id"].as_str().unwrap_or_default();
    assert_eq!(connection_id.len(), 36, "{welcome}");
    assert_eq!(
        welcome,
        json!({"event": "connected", "connection_id": connection_id,
               "workspaces": ["workspace-123"], "timestamp": "<ts>"})
    );

    one.subscribe(1, &[W123]).await;
    // Another workspace than the token's: refused, whatever the client asks.
    one.send_json(&json!({"type": "subscribe", "id": 2, "topics": [W456]}))
        .await;
    let refused = one.next_json().await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["topic"], W456, "{refused}");
    // The old {"type":"subscribe","event_types":[…]} is a filter on `event` now.
    narrow
        .subscribe_filtered(
            1,
            &[W123],
            json!({"event": ["execution_started", "execution_completed"]}),
        )
        .await;
    other.subscribe(1, &[W456]).await;
    both.subscribe(1, &[W123, W456]).await;

    // The broadcaster's events, as the document shows them.
    let sent = publish_python(
        &p.redis.url(),
        &[
            worker(
                W123,
                r#"{"event":"execution_started","data":{"agent_id":"agent-123","run_id":"run-456","user_id":"user-789","started_at":"2025-11-09T12:00:00Z"},"timestamp":"2025-11-09T12:00:00Z"}"#,
            ),
            worker(
                W456,
                r#"{"event":"execution_completed","data":{"agent_id":"agent-9","run_id":"run-9","success":true,"runtime_seconds":45.2,"credits_consumed":0.15,"completed_at":"2025-11-09T12:00:45Z"},"timestamp":"2025-11-09T12:00:45Z"}"#,
            ),
            worker(
                W123,
                r#"{"event":"metrics_update","data":{"total_executions":1234,"active_agents":5,"credits_consumed":123.45,"avg_runtime":32.5},"timestamp":"2025-11-09T12:00:00Z"}"#,
            ),
            worker(
                W123,
                r#"{"event":"alert","data":{"type":"credit_limit","message":"Credit limit approaching","priority":"high"},"priority":"high","timestamp":"2025-11-09T12:00:00Z"}"#,
            ),
            event(W456, "metrics_update", r#"{"total_executions":7,"active_agents":1}"#),
            // Markers: the last message of each workspace.
            event(
                W123,
                "execution_completed",
                r#"{"agent_id":"agent-123","run_id":"run-456","success":true}"#,
            ),
            event(W456, "alert", r#"{"type":"marker"}"#),
        ],
    )
    .await;
    // json.dumps, as the Python broadcaster serialises: the dashboard gets these bytes.
    assert!(
        sent[0]
            .payload
            .starts_with(r#"{"event": "execution_started", "data": {"agent_id": "#),
        "{}",
        sent[0].payload
    );
    let s: Vec<&Published> = sent.iter().collect();
    expect_raw(&mut one, "workspace-123", &[s[0], s[2], s[3], s[5]]).await;
    expect_raw(&mut narrow, "workspace-123, executions only", &[s[0], s[5]]).await;
    expect_raw(&mut other, "workspace-456", &[s[1], s[4], s[6]]).await;
    expect_raw(
        &mut both,
        "both workspaces",
        &[s[0], s[1], s[2], s[3], s[4], s[5], s[6]],
    )
    .await;
    for c in [&mut one, &mut narrow, &mut other, &mut both] {
        c.assert_pong(3).await;
    }

    // Subscribing again replaces the filter (the old unsubscribe of some event types).
    one.subscribe_filtered(4, &[W123], json!({"event": ["alert"]}))
        .await;
    let sent = publish_python(
        &p.redis.url(),
        &[
            event(W123, "execution_started", r#"{"run_id":"run-7"}"#),
            event(W123, "alert", r#"{"type":"marker-2"}"#),
        ],
    )
    .await;
    expect_raw(&mut one, "alerts only", &[&sent[1]]).await;
    one.assert_pong(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadower_limits_frames_to_1_mib_and_commands_per_connection() {
    let p = Profile::start("shadower-analytics").await;
    let token = dashboard_token("user-789", &["workspace-123"]);

    // A frame of exactly 1 MiB is read (and refused as a command, connection kept)...
    let mut c = p.connect_token(&token).await;
    let mut big = String::from(r#"{"type":"ping","pad":""#);
    big.push_str(&"x".repeat(1_048_576 - big.len() - 2));
    big.push_str(r#""}"#);
    assert_eq!(big.len(), 1_048_576);
    c.send_text(&big).await;
    let f = c.next_json().await;
    assert_eq!(f["code"], "bad_request", "{f}");
    c.assert_pong(1).await;
    // ...one byte more closes the connection with 1009.
    big.insert(1, ' ');
    c.send_text(&big).await;
    assert_eq!(
        c.expect_close(WAIT).await,
        (1009, "frame too big".to_owned())
    );

    // 10 commands a second, a burst of 10: past it `rate_limited`, the connection stays...
    let mut c = p.connect_token(&token).await;
    let burst: Vec<String> = (0..20)
        .map(|i| json!({"type": "ping", "id": i}).to_string())
        .collect();
    assert!(c.send_burst(&burst).await);
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..20 {
        let f = c.next_json().await;
        match f["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if f["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected answer {f}"),
        }
    }
    assert!(
        pongs >= 10 && limited >= 1,
        "{pongs} pongs, {limited} refused"
    );
    // ...and a client that keeps flooding is closed with 1008.
    let flood: Vec<String> = (0..100).map(|_| r#"{"type":"ping"}"#.to_owned()).collect();
    let _ = c.send_burst(&flood).await;
    loop {
        match c.recv_frame(WAIT).await {
            Frame::Text(_) => continue,
            Frame::Close(Some((code, reason))) => {
                assert_eq!((code, reason.as_str()), (1008, "rate limit"));
                break;
            }
            other => panic!("expected the 1008 close, got {other:?}"),
        }
    }
}

/// The metrics worker (`tests/publishers/metrics_worker.py`, redis-py), killed when dropped.
struct MetricsWorker {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl MetricsWorker {
    /// Starts the worker on the example's channels and waits until it is subscribed.
    fn start(redis_url: &str) -> MetricsWorker {
        use std::io::BufRead;
        let script = crate::support::repo().join("tests/publishers/metrics_worker.py");
        let mut child = std::process::Command::new(super::python())
            .arg(script)
            .args([redis_url, "metrics:requests:*", "metrics:replies"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the metrics worker");
        let stdout = child.stdout.take().expect("the worker's stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let worker = MetricsWorker { child, lines };
        assert_eq!(worker.next_line(), "ready");
        worker
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(super::PUBLISHER_WAIT)
            .expect("the metrics worker printed nothing in time")
    }
}

impl Drop for MetricsWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadower_request_metrics_is_answered_by_the_worker_to_the_requester_only() {
    let p = Profile::start("shadower-analytics").await;
    let worker = MetricsWorker::start(&p.redis.url());
    let mut asking = dashboard(&p, "user-789", &["workspace-123"]).await;
    // The same user and workspace in another tab, and another workspace's dashboard.
    let mut other_tab = dashboard(&p, "user-789", &["workspace-123"]).await;
    let mut other = dashboard(&p, "user-555", &["workspace-456"]).await;

    // The dashboard's frame, unchanged.
    asking
        .send_json(&json!({"type": "request_metrics", "metric_type": "executions"}))
        .await;
    let published: Value =
        serde_json::from_str(&worker.next_line()).expect("the worker prints its reply");
    assert_eq!(
        published["connection_id"], asking.welcome["connection_id"],
        "{published}"
    );
    assert_eq!(
        asking.next_json().await,
        json!({"event": "metrics_update",
               "data": {"workspace_id": "workspace-123", "metric_type": "executions",
                        "requested_by": "user-789", "total_executions": 1234},
               "timestamp": "2025-11-09T12:00:00Z"})
    );
    // Nobody else got it: their next frames are their pongs.
    other_tab.assert_pong(1).await;
    other.assert_pong(1).await;

    // The other workspace's request goes to its own channel and back to it alone.
    other
        .send_json(&json!({"type": "request_metrics", "metric_type": "credits"}))
        .await;
    let published: Value =
        serde_json::from_str(&worker.next_line()).expect("the worker prints its reply");
    assert_eq!(published["data"]["workspace_id"], "workspace-456");
    let reply = other.next_json().await;
    assert_eq!(reply["data"]["metric_type"], "credits", "{reply}");
    asking.assert_pong(2).await;
    other_tab.assert_pong(2).await;
}
