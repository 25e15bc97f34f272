//! intelligent-workflows (seed 003): everything is published to ONE channel,
//! `ws:broadcast:all`, each message naming its WebSocket channel; the bridge fans it out to
//! `executions`, `executions:{id}`, `workflows:{id}`, `approvals`, with subscription
//! filters; Bearer, API key and `?token=` authenticate; a user may subscribe to its own user
//! channel only.

use serde_json::{Value, json};

use super::{Profile, expect_frames, publish_python, worker};
use crate::support::WsClient;
use crate::support::tokens::{SERVICE_KEY, token};

/// A message of the executor on `ws:broadcast:all`: its WebSocket channel, type and data.
fn broadcast(channel: &str, ty: &str, data: &str) -> Value {
    worker(
        "ws:broadcast:all",
        &format!(r#"{{"channel":"{channel}","type":"{ty}","data":{data}}}"#),
    )
}

/// A message for one user's channel: it also names the user (the old BroadcastMessage's
/// UserID, "only broadcast to this user").
fn to_user(user: &str, ty: &str, data: &str) -> Value {
    worker(
        "ws:broadcast:all",
        &format!(r#"{{"channel":"user:{user}","user_id":"{user}","type":"{ty}","data":{data}}}"#),
    )
}

/// The old Message frame of a published message, timestamp replaced by `"<ts>"`.
fn frame(message: &Value) -> Value {
    let m: Value = serde_json::from_str(message["json"].as_str().expect("worker message"))
        .expect("message JSON");
    json!({"type": m["type"], "timestamp": "<ts>", "data": m["data"]})
}

/// The next frame must be an `error` with `code` and `id`.
async fn expect_error(c: &mut WsClient, code: &str, id: u64) {
    let f = c.next_json().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], code, "{f}");
    assert_eq!(f["id"], id, "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intelligent_workflows_fans_one_channel_out_to_the_subscribed_channels() {
    let p = Profile::start("intelligent-workflows").await;
    let alice = token("alice", &["user"], json!({}));
    let bob = token("bob", &["user"], json!({}));
    let bearer = |t: &str| format!("Bearer {t}");
    // Each credential the old handler took: Authorization: Bearer, X-API-Key, ?token=.
    let mut all = p
        .connect("/ws", &[("Authorization", bearer(&alice).as_str())])
        .await;
    let mut one_execution = p.connect_token(&bob).await;
    let mut one_workflow = p.connect("/ws", &[("X-API-Key", SERVICE_KEY)]).await;
    let mut approvals = p.connect_token(&alice).await;
    let mut failed_of_wf2 = p
        .connect("/ws", &[("Authorization", bearer(&bob).as_str())])
        .await;
    let mut everything = p.connect_token(&alice).await;
    let mut alice_inbox = p.connect_token(&alice).await;
    for c in [&all, &one_workflow, &alice_inbox] {
        assert_eq!(c.welcome["type"], "connected", "{}", c.welcome);
    }
    assert_eq!(
        one_workflow.welcome["user"], "svc-reporting",
        "{}",
        one_workflow.welcome
    );
    assert_eq!(p.refused("/ws", &[]).await, 401);
    assert_eq!(p.refused("/ws", &[("X-API-Key", "not-a-key")]).await, 401);

    all.subscribe(1, &["executions"]).await;
    one_execution
        .subscribe(1, &["executions:exec-1", "user:bob"])
        .await;
    one_workflow.subscribe(1, &["workflows:wf-1"]).await;
    approvals.subscribe(1, &["approvals"]).await;
    // The old filters: workflow_ids → data.workflow_id, statuses → data.status.
    failed_of_wf2
        .subscribe_filtered(
            1,
            &["executions"],
            json!({"data.workflow_id": ["wf-2", "wf-3"], "data.status": ["failed"]}),
        )
        .await;
    everything
        .subscribe(
            1,
            &[
                "executions",
                "executions:exec-1",
                "workflows:wf-1",
                "approvals",
            ],
        )
        .await;
    alice_inbox.subscribe(1, &["user:alice"]).await;

    // A user's channel is that user's alone; the service (svc) has none of its own.
    alice_inbox
        .send_json(&json!({"type": "subscribe", "id": 2, "topics": ["user:bob"]}))
        .await;
    expect_error(&mut alice_inbox, "forbidden", 2).await;
    one_workflow
        .send_json(&json!({"type": "subscribe", "id": 2, "topics": ["user:alice"]}))
        .await;
    expect_error(&mut one_workflow, "forbidden", 2).await;
    // Invalid commands get an `error` frame and change nothing: the old subscribe shape, an
    // unknown type, a channel nothing produces.
    all.send_json(&json!({"type": "subscribe", "id": 3, "data": {"channel": "approvals"}}))
        .await;
    expect_error(&mut all, "bad_request", 3).await;
    all.send_json(&json!({"type": "dance", "id": 4})).await;
    expect_error(&mut all, "bad_request", 4).await;
    all.send_json(&json!({"type": "subscribe", "id": 5, "topics": ["agents"]}))
        .await;
    expect_error(&mut all, "unknown_topic", 5).await;

    let started = broadcast(
        "executions",
        "execution.started",
        r#"{"execution_id":"exec-1","workflow_id":"wf-1","status":"running"}"#,
    );
    // A step event goes to its execution's channel only (it names no workflow).
    let step = broadcast(
        "executions:exec-1",
        "step.completed",
        r#"{"execution_id":"exec-1","step_id":"step-1","status":"completed"}"#,
    );
    let approval = broadcast(
        "approvals",
        "approval.required",
        r#"{"approval_id":"apr-1","execution_id":"exec-2","workflow_id":"wf-2","status":"pending"}"#,
    );
    let failed = broadcast(
        "executions",
        "execution.failed",
        r#"{"execution_id":"exec-2","workflow_id":"wf-2","status":"failed"}"#,
    );
    let running_wf2 = broadcast(
        "executions",
        "execution.resumed",
        r#"{"execution_id":"exec-2","workflow_id":"wf-2","status":"running"}"#,
    );
    let to_alice = to_user(
        "alice",
        "approval.required",
        r#"{"approval_id":"apr-2","execution_id":"exec-2","assignee":"alice"}"#,
    );
    let to_bob = to_user(
        "bob",
        "approval.required",
        r#"{"approval_id":"apr-3","execution_id":"exec-3","assignee":"bob"}"#,
    );
    // A channel the bridge does not serve: nobody.
    let stray = broadcast("agents", "agent.updated", r#"{"agent_id":"a1"}"#);
    // Markers: an approval of exec-1/wf-1 reaches four channels, a failure of wf-3 the
    // executions channel (and the filtered client), one message per user channel.
    let granted = broadcast(
        "approvals",
        "approval.granted",
        r#"{"approval_id":"apr-9","execution_id":"exec-1","workflow_id":"wf-1","status":"granted"}"#,
    );
    let failed_wf3 = broadcast(
        "executions",
        "execution.failed",
        r#"{"execution_id":"exec-3","workflow_id":"wf-3","status":"failed"}"#,
    );
    let alice_marker = to_user("alice", "approval.expired", r#"{"approval_id":"apr-2"}"#);
    publish_python(
        &p.redis.url(),
        &[
            started.clone(),
            step.clone(),
            approval.clone(),
            failed.clone(),
            running_wf2.clone(),
            to_alice.clone(),
            to_bob.clone(),
            stray,
            granted.clone(),
            failed_wf3.clone(),
            alice_marker.clone(),
        ],
    )
    .await;

    let f = |messages: &[&Value]| messages.iter().map(|m| frame(m)).collect::<Vec<_>>();
    expect_frames(
        &mut all,
        "executions",
        "timestamp",
        &f(&[&started, &failed, &running_wf2, &failed_wf3]),
    )
    .await;
    expect_frames(
        &mut one_execution,
        "executions:exec-1 + user:bob",
        "timestamp",
        &f(&[&started, &step, &to_bob, &granted]),
    )
    .await;
    expect_frames(
        &mut one_workflow,
        "workflows:wf-1",
        "timestamp",
        &f(&[&started, &granted]),
    )
    .await;
    expect_frames(
        &mut approvals,
        "approvals",
        "timestamp",
        &f(&[&approval, &granted]),
    )
    .await;
    expect_frames(
        &mut failed_of_wf2,
        "failed executions of wf-2/wf-3",
        "timestamp",
        &f(&[&failed, &failed_wf3]),
    )
    .await;
    // Subscribed to four channels that several events reach: each event once.
    expect_frames(
        &mut everything,
        "all four channels",
        "timestamp",
        &f(&[
            &started,
            &step,
            &approval,
            &failed,
            &running_wf2,
            &granted,
            &failed_wf3,
        ]),
    )
    .await;
    expect_frames(
        &mut alice_inbox,
        "user:alice",
        "timestamp",
        &f(&[&to_alice, &alice_marker]),
    )
    .await;
    for c in [
        &mut all,
        &mut one_execution,
        &mut one_workflow,
        &mut approvals,
        &mut failed_of_wf2,
        &mut everything,
        &mut alice_inbox,
    ] {
        c.assert_pong(9).await;
    }

    // unsubscribe answers `unsubscribed`, and the channel goes quiet.
    one_execution
        .send_json(&json!({"type": "unsubscribe", "id": 10, "topics": ["executions:exec-1"]}))
        .await;
    assert_eq!(
        one_execution.next_json().await,
        json!({"type": "unsubscribed", "id": 10, "topics": ["executions:exec-1"]})
    );
    let bob_marker = to_user("bob", "approval.expired", r#"{"approval_id":"apr-3"}"#);
    publish_python(&p.redis.url(), &[step.clone(), bob_marker.clone()]).await;
    expect_frames(
        &mut one_execution,
        "after unsubscribe",
        "timestamp",
        &f(&[&bob_marker]),
    )
    .await;
}
