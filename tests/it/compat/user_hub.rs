//! user-hub (seed 001): services publish account events with their type; the event table
//! decides who gets each (everyone, the user on all tabs, the admins, the user and the
//! admins); the welcome frame is `connection.established`; an expired token closes with 1008.

use serde_json::{Value, json};

use super::{Profile, expect_frames, publish_python, stamped, worker};
use crate::support::tokens::{hs256, now};
use crate::support::{WAIT, WsClient};

/// An access token of the API: a numeric user id and one role.
fn token(user_id: u64, role: &str, ttl: u64) -> String {
    hs256(&json!({"user_id": user_id, "role": role, "exp": now() + ttl}))
}

/// The old hub's frame for a published event, timestamp replaced by `"<ts>"`.
fn frame(event: &str) -> Value {
    let event: Value = serde_json::from_str(event).expect("event JSON");
    json!({"type": event["type"], "data": event["data"], "timestamp": "<ts>"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_hub_delivers_its_event_table_and_nothing_more() {
    let p = Profile::start("user-hub").await;
    // Carol's token runs out during the test: the bridge closes her with 1008.
    let mut carol = p.connect_token(&token(45, "user", 3)).await;
    let mut alice_tab1 = p.connect_token(&token(42, "user", 600)).await;
    let mut alice_tab2 = p.connect_token(&token(42, "user", 600)).await;
    let mut bob = p.connect_token(&token(43, "user", 600)).await;
    let mut admin = p.connect_token(&token(1, "admin", 600)).await;
    let mut root = p.connect_token(&token(2, "superadmin", 600)).await;
    // No token, no connection (as the old GET /ws?token=).
    assert_eq!(p.refused("/ws", &[]).await, 401);

    // The welcome frame: connection.established with the client id, user id and role.
    for (client, user_id, role) in [
        (&alice_tab1, 42, "user"),
        (&bob, 43, "user"),
        (&admin, 1, "admin"),
        (&root, 2, "superadmin"),
    ] {
        let welcome = stamped(client.welcome.clone(), "timestamp");
        let client_id = welcome["data"]["client_id"].as_str().unwrap_or_default();
        assert_eq!(client_id.len(), 36, "a UUID: {welcome}");
        assert_eq!(
            welcome,
            json!({"type": "connection.established", "data": {
                "client_id": client_id,
                "message": "Welcome to WebSocket real-time updates",
                "role": role, "user_id": user_id}, "timestamp": "<ts>"}),
        );
    }
    assert_ne!(
        alice_tab1.welcome["data"]["client_id"],
        alice_tab2.welcome["data"]["client_id"]
    );

    // What a service publishes: the old hub's Message without its timestamp, type first,
    // as the Go structs serialise.
    let event = |ty: &str, data: &str| format!(r#"{{"type":"{ty}","data":{data}}}"#);
    let alert = event(
        "system.alert",
        r#"{"message":"System maintenance in 5 minutes","priority":"high"}"#,
    );
    let profile_42 = event(
        "profile.updated",
        r#"{"user_id":42,"changes":["name","email"]}"#,
    );
    let password_43 = event("password.changed", r#"{"user_id":43}"#);
    let created_44 = event(
        "user.created",
        r#"{"user_id":44,"name":"Dan","email":"dan@example.com"}"#,
    );
    // An admin event about Alice is still for the admins only.
    let deleted_42 = event("user.deleted", r#"{"user_id":42}"#);
    let health = event(
        "health.status.changed",
        r#"{"status":"degraded","checks":{"db":"slow"}}"#,
    );
    let updated_42 = event(
        "user.updated",
        r#"{"user_id":42,"changes":["name","email"],"updated_at":"2025-01-06T10:30:00Z"}"#,
    );
    let role_43 = event(
        "user.role.changed",
        r#"{"user_id":43,"new_role":"admin","changed_by":1,"changed_at":"2025-01-06T10:31:00Z"}"#,
    );
    // Not in the event table: nobody.
    let unknown = event("user.logged_in", r#"{"user_id":42}"#);
    let marker = event("system.alert", r#"{"message":"marker"}"#);
    let events = [
        &alert,
        &profile_42,
        &password_43,
        &created_44,
        &deleted_42,
        &health,
        &updated_42,
        &role_43,
        &unknown,
        &marker,
    ];
    let messages: Vec<Value> = events
        .iter()
        .map(|e| worker("user-hub:events", e))
        .collect();
    publish_python(&p.redis.url(), &messages).await;

    let f = |events: &[&String]| events.iter().map(|e| frame(e)).collect::<Vec<_>>();
    let alice = f(&[&alert, &profile_42, &updated_42, &marker]);
    expect_frames(&mut alice_tab1, "alice tab 1", "timestamp", &alice).await;
    expect_frames(&mut alice_tab2, "alice tab 2", "timestamp", &alice).await;
    let bobs = f(&[&alert, &password_43, &role_43, &marker]);
    expect_frames(&mut bob, "bob", "timestamp", &bobs).await;
    let admins = f(&[
        &alert,
        &created_44,
        &deleted_42,
        &health,
        &updated_42,
        &role_43,
        &marker,
    ]);
    expect_frames(&mut admin, "admin", "timestamp", &admins).await;
    expect_frames(&mut root, "superadmin", "timestamp", &admins).await;
    for client in [
        &mut alice_tab1,
        &mut alice_tab2,
        &mut bob,
        &mut admin,
        &mut root,
    ] {
        client.assert_pong(1).await;
    }

    // Carol (a user) got at most the two system alerts, then the expiry: an error frame
    // and close code 1008, which tells the page to refresh its token and reconnect.
    expect_expiry(&mut carol, &[frame(&alert), frame(&marker)]).await;

    // /ws/stats is for admins and superadmins, and counts by role as the old one did.
    let admin_bearer = format!("Bearer {}", token(1, "admin", 60));
    crate::support::wait_until_async(WAIT, "carol's connection gone from /ws/stats", || async {
        p.stats_as(&admin_bearer).await.1["connections"] == 5
    })
    .await;
    let (status, stats) = p.stats_as(&admin_bearer).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["by_role"]["user"], 3, "{stats}");
    assert_eq!(stats["by_role"]["admin"], 1, "{stats}");
    assert_eq!(stats["by_role"]["superadmin"], 1, "{stats}");
    let (status, _) = p
        .stats_as(&format!("Bearer {}", token(42, "user", 60)))
        .await;
    assert_eq!(status, 403);
}

/// Reads `client` until its token expires: any frames before are a prefix of `allowed`,
/// then `token_expired` and the close 1008.
async fn expect_expiry(client: &mut WsClient, allowed: &[Value]) {
    let mut seen = 0;
    loop {
        let f = client.recv_json(std::time::Duration::from_secs(10)).await;
        if f["type"] == "error" {
            assert_eq!(f["code"], "token_expired", "{f}");
            break;
        }
        assert!(seen < allowed.len(), "carol got more than the alerts: {f}");
        assert_eq!(stamped(f, "timestamp"), allowed[seen], "carol frame {seen}");
        seen += 1;
    }
    assert_eq!(
        client.expect_close(WAIT).await,
        (1008, "token expired".to_owned())
    );
}
