//! mangamotion (seed 004): the Node worker publishes progress to `job:{jobId}`; only the
//! job's owner (`userId`) ever receives it, as the worker's JSON unchanged, even when another
//! user subscribes to the same job; stats per user.

use serde_json::json;

use super::{Profile, expect_raw, publish_node, stamped};
use crate::support::ADMIN_TOKEN;
use crate::support::tokens::{hs256, now};

/// An access token of the API: the user id in `userId`.
fn access_token(user_id: &str) -> String {
    hs256(
        &json!({"userId": user_id, "email": format!("{user_id}@example.com"), "exp": now() + 600}),
    )
}

/// One call of the worker's publishJobProgress.
fn progress(job: &str, user: &str, status: &str, percent: u64, stage: &str) -> serde_json::Value {
    json!({"progress": {"jobId": job, "userId": user, "status": status, "progress": percent,
                        "stage": stage, "message": format!("{stage}: {percent}%")}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mangamotion_progress_reaches_the_jobs_owner_only() {
    let p = Profile::start("mangamotion").await;
    let mut owner_tab1 = p.connect_token(&access_token("user-123")).await;
    let mut owner_tab2 = p.connect_token(&access_token("user-123")).await;
    let mut owner_idle = p.connect_token(&access_token("user-123")).await;
    let mut intruder = p.connect_token(&access_token("user-456")).await;
    assert_eq!(p.refused("/ws", &[]).await, 401);
    // The old `connected` frame.
    assert_eq!(
        stamped(owner_tab1.welcome.clone(), "timestamp"),
        json!({"type": "connected", "message": "Connected to live updates", "timestamp": "<ts>"})
    );

    let job = "550e8400-e29b-41d4-a716-446655440000";
    let job_topic = format!("job:{job}");
    owner_tab1.subscribe(1, &[&job_topic]).await;
    owner_tab2.subscribe(1, &[&job_topic]).await;
    owner_idle.subscribe(1, &["job:owner-later"]).await;
    // Another user may subscribe to the owner's job (the job id is no secret)...
    intruder
        .subscribe(1, &[&job_topic, "job:intruder-own"])
        .await;
    // The old subscribe shape is not a command of the bridge: the page's one change.
    intruder
        .send_json(&json!({"type": "subscribe", "id": 2, "data": {"jobId": job}}))
        .await;
    let f = intruder.next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{f}"
    );

    let sent = publish_node(
        &p.redis.url(),
        &[
            progress(job, "user-123", "processing", 45, "inference"),
            progress("intruder-own", "user-456", "processing", 10, "upload"),
            progress(job, "user-123", "completed", 100, "done"),
            // Someone else's progress on the owner's job id: the owner does not get it either.
            progress(job, "user-789", "processing", 5, "queued"),
            // Markers.
            progress("intruder-own", "user-456", "completed", 100, "done"),
            progress("owner-later", "user-123", "processing", 1, "queued"),
        ],
    )
    .await;
    assert_eq!(sent[0].channel, job_topic);
    // The worker's own JSON (node's JSON.stringify, fields in the worker's order).
    assert!(
        sent[0]
            .payload
            .starts_with(&format!(r#"{{"type":"progress","jobId":"{job}","userId":"user-123","status":"processing","progress":45,"stage":"inference","#)),
        "{}",
        sent[0].payload
    );

    // ...but a frame goes to the user named in userId only, byte for byte as published.
    expect_raw(&mut owner_tab1, "owner tab 1", &[&sent[0], &sent[2]]).await;
    expect_raw(&mut owner_tab2, "owner tab 2", &[&sent[0], &sent[2]]).await;
    expect_raw(&mut intruder, "the other user", &[&sent[1], &sent[4]]).await;
    expect_raw(&mut owner_idle, "owner, other job", &[&sent[5]]).await;
    for c in [
        &mut owner_tab1,
        &mut owner_tab2,
        &mut intruder,
        &mut owner_idle,
    ] {
        c.assert_pong(3).await;
    }

    // Stats per user (the old totalUsers and clientsByUser).
    let (status, stats) = p.stats_as(&format!("Bearer {ADMIN_TOKEN}")).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["connections"], 4, "{stats}");
    assert_eq!(stats["users"], 2, "{stats}");
    assert_eq!(
        stats["connections_per_user"],
        json!({"user-123": 3, "user-456": 1}),
        "{stats}"
    );
    // Not for the users themselves.
    let (status, _) = p
        .stats_as(&format!("Bearer {}", access_token("user-123")))
        .await;
    assert_eq!(status, 403);
}
