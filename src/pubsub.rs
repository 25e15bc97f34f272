//! The one module that talks to Redis: a subscriber connection that SUBSCRIBEs the routes'
//! channels and PSUBSCRIBEs their patterns, reconnects with capped exponential backoff,
//! applies new routing tables by subscription difference, and hands every message to the
//! dispatcher. Also the short-lived connections `/api/publish` uses.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};

use crate::dispatch::Dispatcher;
use crate::router::Routing;
use crate::state::Shared;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the subscriber task.
pub enum Control {
    /// Make `routing` the table in force: subscribe what it adds, switch, then unsubscribe
    /// what it drops. Answered once the switch is made.
    Apply {
        routing: Arc<Routing>,
        done: oneshot::Sender<()>,
    },
}

/// The handle through which other modules ask the subscriber task for changes.
#[derive(Debug, Clone)]
pub struct Subscriber {
    control: mpsc::Sender<Control>,
}

impl Subscriber {
    /// Switches to `routing` between two messages; returns once it is in force.
    pub async fn apply(&self, routing: Arc<Routing>) {
        let (done, applied) = oneshot::channel();
        if self
            .control
            .send(Control::Apply { routing, done })
            .await
            .is_ok()
        {
            let _ = applied.await;
        }
    }
}

/// Starts the subscriber task.
pub fn spawn(shared: Arc<Shared>) -> Subscriber {
    let (control, requests) = mpsc::channel(8);
    tokio::spawn(run(shared, requests));
    Subscriber { control }
}

#[derive(Default)]
struct Subscriptions {
    channels: HashSet<String>,
    patterns: HashSet<String>,
}

async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Control>) {
    let mut dispatcher = Dispatcher::new(shared.clone());
    let mut retry = FIRST_RETRY;
    let mut ever_connected = false;
    let mut last_error = String::new();
    loop {
        let url = shared.config().redis.url.clone();
        let connected = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            connected = connect(&url) => connected,
        };
        let (mut sink, mut stream) = match connected {
            Ok(pubsub) => pubsub.split(),
            Err(err) => {
                let err = err.to_string();
                if err != last_error {
                    tracing::warn!(redis = %redact(&url), error = %err, retry_in = ?retry, "redis unavailable");
                    last_error = err;
                }
                if !wait_retry(&shared, &mut requests, retry).await {
                    return;
                }
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        let mut subscribed = Subscriptions::default();
        let routing = shared.routing.load_full();
        if let Err(err) = subscribe_difference(&mut sink, &mut subscribed, &routing).await {
            tracing::warn!(error = %err, "redis subscribe failed");
            if !wait_retry(&shared, &mut requests, retry).await {
                return;
            }
            retry = (retry * 2).min(MAX_RETRY);
            continue;
        }
        retry = FIRST_RETRY;
        last_error.clear();
        if ever_connected {
            shared
                .metrics
                .redis_reconnects
                .fetch_add(1, Ordering::Relaxed);
        }
        ever_connected = true;
        shared.redis_ready.store(true, Ordering::Release);
        shared.metrics.redis_connected.store(1, Ordering::Relaxed);
        tracing::info!(
            redis = %redact(&url),
            channels = subscribed.channels.len(),
            patterns = subscribed.patterns.len(),
            "redis subscribed"
        );
        let reason = loop {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return,
                message = stream.next() => {
                    let Some(message) = message else { break "connection closed" };
                    let received_at = Instant::now();
                    let pattern: Option<String> = message.get_pattern().ok().flatten();
                    dispatcher.dispatch(message.get_channel_name(), pattern.as_deref(), message.get_payload_bytes(), received_at);
                }
                request = requests.recv() => {
                    let Some(Control::Apply { routing, done }) = request else { return };
                    let url_changed = routing.config.redis.url != url;
                    let switched = switch(&shared, &mut sink, &mut subscribed, routing).await;
                    let _ = done.send(());
                    if let Err(err) = switched {
                        tracing::warn!(error = %err, "redis subscription change failed");
                        break "subscription change failed";
                    }
                    if url_changed {
                        break "redis.url changed";
                    }
                }
            }
        };
        shared.redis_ready.store(false, Ordering::Release);
        shared.metrics.redis_connected.store(0, Ordering::Relaxed);
        tracing::warn!(reason, "redis connection lost; reconnecting");
    }
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

/// Sleeps before a reconnect while still applying routing changes (there is no connection
/// to change subscriptions on: the next connect subscribes what is in force). False on
/// shutdown.
async fn wait_retry(
    shared: &Shared,
    requests: &mut mpsc::Receiver<Control>,
    retry: Duration,
) -> bool {
    // Spread reconnects of many bridges after a Redis restart.
    let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
    let deadline = tokio::time::sleep(retry + jitter);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return false,
            _ = &mut deadline => return true,
            request = requests.recv() => match request {
                Some(Control::Apply { routing, done }) => {
                    shared.routing.store(routing);
                    let _ = done.send(());
                }
                None => return false,
            },
        }
    }
}

/// Subscribes what `routing` needs and `subscribed` lacks.
async fn subscribe_difference(
    sink: &mut PubSubSink,
    subscribed: &mut Subscriptions,
    routing: &Routing,
) -> redis::RedisResult<()> {
    let channels: Vec<&str> = routing
        .channels()
        .filter(|c| !subscribed.channels.contains(*c))
        .collect();
    if !channels.is_empty() {
        sink.subscribe(&channels).await?;
        subscribed
            .channels
            .extend(channels.iter().map(|c| c.to_string()));
    }
    let patterns: Vec<&str> = routing
        .patterns()
        .filter(|p| !subscribed.patterns.contains(*p))
        .collect();
    if !patterns.is_empty() {
        sink.psubscribe(&patterns).await?;
        subscribed
            .patterns
            .extend(patterns.iter().map(|p| p.to_string()));
    }
    Ok(())
}

/// Subscribes the new, switches the routing table, unsubscribes the dropped. Runs between two
/// messages, so each message is routed entirely by one table.
async fn switch(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut Subscriptions,
    routing: Arc<Routing>,
) -> redis::RedisResult<()> {
    subscribe_difference(sink, subscribed, &routing).await?;
    let channels: HashSet<&str> = routing.channels().collect();
    let patterns: HashSet<&str> = routing.patterns().collect();
    let dropped_channels: Vec<String> = subscribed
        .channels
        .iter()
        .filter(|c| !channels.contains(c.as_str()))
        .cloned()
        .collect();
    let dropped_patterns: Vec<String> = subscribed
        .patterns
        .iter()
        .filter(|p| !patterns.contains(p.as_str()))
        .cloned()
        .collect();
    shared.routing.store(routing);
    if !dropped_channels.is_empty() {
        sink.unsubscribe(&dropped_channels).await?;
        for channel in &dropped_channels {
            subscribed.channels.remove(channel);
        }
    }
    if !dropped_patterns.is_empty() {
        sink.punsubscribe(&dropped_patterns).await?;
        for pattern in &dropped_patterns {
            subscribed.patterns.remove(pattern);
        }
    }
    Ok(())
}

/// PUBLISHes on a short-lived connection; returns Redis's count of receivers.
pub async fn publish(url: &str, channel: &str, payload: &[u8]) -> redis::RedisResult<i64> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut connection)
        .await
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_credentials_only() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
