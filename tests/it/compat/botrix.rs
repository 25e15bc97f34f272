//! botrix (seed 000): Python workers publish job updates to `botrix:jobs:updates`; every
//! page, without a token, gets `{"type":"job_update","job_id","status","data"}`.

use serde_json::{Value, json};

use super::{Profile, by_hand, publish_python, worker};
use crate::support::{ADMIN_TOKEN, WsClient};

/// The Go server's frame.
fn job_update(job_id: &str, status: &str, data: Value) -> Value {
    json!({"type": "job_update", "job_id": job_id, "status": status, "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botrix_pages_get_every_job_update_in_the_go_servers_frame() {
    let p = Profile::start("botrix").await;
    // Three pages, as the browser opens them: no token, no subscribe.
    let mut pages: Vec<WsClient> = Vec::new();
    for _ in 0..3 {
        let page = p.connect("/ws", &[]).await;
        assert_eq!(page.welcome["type"], "connected", "{}", page.welcome);
        assert_eq!(page.welcome["topics"], json!(["jobs"]), "{}", page.welcome);
        pages.push(page);
    }
    // The page's heartbeat is answered, never an error.
    pages[0].send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(pages[0].next_json().await, json!({"type": "pong"}));

    let job = "550e8400-e29b-41d4-a716-446655440000";
    let channel = "botrix:jobs:updates";
    let sent = publish_python(
        &p.redis.url(),
        &[
            // The worker's message while processing (docs: "Job Update Message").
            worker(
                channel,
                r#"{"event":"job_update","job_id":"550e8400-e29b-41d4-a716-446655440000","timestamp":1699369800,"data":{"job_id":"550e8400-e29b-41d4-a716-446655440000","status":"processing","progress":50,"accounts_processed":3,"timestamp":1699369800}}"#,
            ),
            // ...and when done (docs: "Redis Message Format").
            worker(
                channel,
                r#"{"event":"job_update","job_id":"550e8400-e29b-41d4-a716-446655440000","timestamp":1699369800,"data":{"job_id":"550e8400-e29b-41d4-a716-446655440000","status":"completed","result":{"accounts_created":5,"success":true}}}"#,
            ),
            // Not a job update (no status anywhere): skipped, reaches no page.
            by_hand(channel, r#"{"job_id":"noise","data":{}}"#),
            // What an operator types into redis-cli: the bare form, status at the top.
            by_hand(
                channel,
                r#"{"job_id":"test-123","status":"completed","data":{"success":true}}"#,
            ),
        ],
    )
    .await;
    // The workers' serialiser is json.dumps: `{"event": "job_update", ...}`.
    assert!(
        sent[0]
            .payload
            .starts_with(r#"{"event": "job_update", "job_id": "#),
        "{sent:?}"
    );

    let expected = [
        job_update(
            job,
            "processing",
            json!({"job_id": job, "status": "processing", "progress": 50,
                   "accounts_processed": 3, "timestamp": 1699369800}),
        ),
        job_update(
            job,
            "completed",
            json!({"job_id": job, "status": "completed",
                   "result": {"accounts_created": 5, "success": true}}),
        ),
        job_update("test-123", "completed", json!({"success": true})),
    ];
    for (i, page) in pages.iter_mut().enumerate() {
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(&page.next_json().await, want, "page {i}, frame {n}");
        }
        // Nothing else was queued: the ping's answer comes next (with or without an id).
        page.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(page.next_json().await, json!({"type": "pong"}), "page {i}");
        page.assert_pong(7).await;
    }
    assert_eq!(p.bridge.route_stat("botrix-jobs", "unroutable").await, 1);

    // /ws/stats tells how many pages are connected, to the ops token only.
    let (status, stats) = p.stats_as(&format!("Bearer {ADMIN_TOKEN}")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["connections"], 3, "{stats}");
    assert_eq!(stats["anonymous"], 3, "{stats}");
    assert_eq!(
        crate::support::route_stat(&stats, "botrix-jobs", "delivered"),
        9
    );
    assert_eq!(p.stats_as("Bearer not-the-token-at-all").await.0, 401);
}
