//! A real Redis subscriber, as a worker is: it sees what the bridge publishes (or must not).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use super::WAIT;

pub struct Watcher {
    messages: redis::aio::PubSubStream,
}

/// One message the watcher got.
#[derive(Debug)]
pub struct Seen {
    pub channel: String,
    pub payload: Value,
}

impl Watcher {
    /// Subscribes to the channels matching each of `patterns` (PSUBSCRIBE) on `url`.
    pub async fn start(url: &str, patterns: &[&str]) -> Watcher {
        let client = redis::Client::open(url).expect("redis url");
        let mut pubsub = tokio::time::timeout(WAIT, client.get_async_pubsub())
            .await
            .expect("connecting the watcher timed out")
            .expect("connect the watcher");
        for pattern in patterns {
            pubsub.psubscribe(*pattern).await.expect("PSUBSCRIBE");
        }
        Watcher {
            messages: pubsub.into_on_message(),
        }
    }

    /// The next message, within `timeout`, leaving out the bridge's own (heartbeats, reload
    /// markers: a pattern such as `*` takes them too); `None` when none came.
    pub async fn try_next(&mut self, timeout: Duration) -> Option<Seen> {
        let deadline = tokio::time::Instant::now() + timeout;
        let message = loop {
            let message = tokio::time::timeout_at(deadline, self.messages.next())
                .await
                .ok()??;
            if !message
                .get_channel_name()
                .starts_with("__redis-ws-bridge__:")
            {
                break message;
            }
        };
        let payload: Vec<u8> = message.get_payload().expect("a bulk payload");
        Some(Seen {
            channel: message.get_channel_name().to_owned(),
            payload: serde_json::from_slice(&payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned())),
        })
    }

    /// The next message; fails the test when none comes within [`WAIT`].
    pub async fn next(&mut self) -> Seen {
        self.try_next(WAIT)
            .await
            .expect("the watcher got no message in time")
    }
}
