//! The one module that talks to Redis: a subscriber connection that SUBSCRIBEs the routes'
//! channels and PSUBSCRIBEs their patterns, reconnects with capped exponential backoff,
//! applies new routing tables by subscription difference, and hands every message to the
//! dispatcher. Also the short-lived connections `/api/publish` uses.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use redis::IntoConnectionInfo;
use redis::aio::PubSubSink;
use redis::io::tcp::{TcpSettings, socket2};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::RESERVED_PREFIX;
use crate::dispatch::Dispatcher;
use crate::router::Routing;
use crate::state::Shared;

const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Short: a Redis that is back must not wait long for the bridge (messages published meanwhile
/// reach nobody), and one connection's retries cost Redis nothing.
const MAX_RETRY: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time before TCP keepalive probes start on a Redis connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long written data may stay unacknowledged before the kernel drops the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A batch of messages already delivered by Redis ends at this many messages or this many
/// queued frames, whichever comes first: coalescing must not make the first recipients wait
/// long for the routing of the last message.
const MAX_BATCH_MESSAGES: usize = 64;
const MAX_BATCH_FRAMES: usize = 16_384;

/// How long a switch waits for its marker before switching anyway.
const MARKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the subscriber task.
pub enum Control {
    /// Make `routing` the table in force: subscribe what it adds, switch, then unsubscribe
    /// what it drops. Answered once the switch is made and Redis shows it.
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

/// A routing table waiting for its switch point. What it adds is subscribed, and a marker
/// PUBLISHed after that comes back on the subscriber connection exactly after the last message
/// published before the new subscriptions were in place. Messages before the marker are routed
/// by the old table, those after it by the new one: each PUBLISH is routed entirely by one
/// table, whichever of its subscriptions (a channel, a pattern, both) brought it, so a route
/// that moves from a channel to a pattern (or back) neither loses nor repeats a message.
struct Pending {
    routing: Arc<Routing>,
    done: oneshot::Sender<()>,
    /// A channel of this process and switch only, subscribed for the switch.
    marker: String,
    /// Resolves with a reason to switch without the marker.
    give_up: JoinHandle<String>,
}

async fn run(shared: Arc<Shared>, mut requests: mpsc::Receiver<Control>) {
    let mut dispatcher = Dispatcher::new(shared.clone());
    let mut retry = FIRST_RETRY;
    let mut ever_connected = false;
    let mut last_error = String::new();
    // Numbers the switch markers of this process.
    let mut switches: u64 = 0;
    // When the last subscriber connection was lost, for the gap notices.
    let mut lost_at = String::new();
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
        let heartbeat_channel = format!("{RESERVED_PREFIX}heartbeat:{}", shared.epoch);
        if let Err(err) = subscribe_difference(
            &mut sink,
            &mut subscribed,
            &routing,
            Some(&heartbeat_channel),
        )
        .await
        {
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
        let recovered = ever_connected;
        ever_connected = true;
        shared.set_redis_ready(true);
        if recovered {
            // Whatever was published meanwhile is lost: clients are told to refetch.
            let notified = shared.hub.notify_gap(&lost_at, &shared.metrics);
            tracing::info!(connections = notified, "gap notices sent");
        }
        tracing::info!(
            redis = %redact(&url),
            channels = subscribed.channels.len(),
            patterns = subscribed.patterns.len(),
            "redis subscribed"
        );
        let settings = routing.config.redis.clone();
        let heartbeats = tokio::spawn(send_heartbeats(
            url.clone(),
            heartbeat_channel.clone(),
            settings.heartbeat_interval,
        ));
        let mut last_heartbeat = Instant::now();
        let mut watchdog = tokio::time::interval(settings.heartbeat_interval);
        let mut pending: Option<Pending> = None;
        let reason = loop {
            // Reload requests before messages: a sustained flood must not hold a reload back.
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return,
                reason = gave_up(&mut pending) => {
                    let Some(pending) = pending.take() else { continue };
                    tracing::warn!(reason = %reason, "switching without a marker: messages published during this reload may be routed by either configuration");
                    if let Err(err) = finish_switch(&shared, &mut sink, &mut subscribed, pending).await {
                        tracing::warn!(error = %err, "redis subscription change failed");
                        break "subscription change failed";
                    }
                }
                request = requests.recv(), if pending.is_none() => {
                    let Some(Control::Apply { routing, done }) = request else { return };
                    if routing.config.redis.url != url {
                        // The next connection subscribes the new table from scratch.
                        shared.routing.store(routing);
                        let _ = done.send(());
                        break "redis.url changed";
                    }
                    switches += 1;
                    let marker = format!("{RESERVED_PREFIX}switch:{}:{switches}", shared.epoch);
                    if let Err(err) = subscribe_difference(&mut sink, &mut subscribed, &routing, Some(&marker)).await {
                        tracing::warn!(error = %err, "redis subscription change failed");
                        // In force all the same: the next connection subscribes it.
                        shared.routing.store(routing);
                        let _ = done.send(());
                        break "subscription change failed";
                    }
                    let give_up = tokio::spawn(publish_marker(url.clone(), marker.clone()));
                    pending = Some(Pending { routing, done, marker, give_up });
                }
                _ = watchdog.tick() => {
                    let silent = last_heartbeat.elapsed();
                    if silent > settings.heartbeat_timeout {
                        shared.metrics.redis_stalls.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            silent_ms = silent.as_millis() as u64,
                            timeout = ?settings.heartbeat_timeout,
                            "redis subscription stalled: the heartbeat did not come back; replacing the connection"
                        );
                        break "subscription stalled";
                    }
                }
                message = stream.next() => {
                    let Some(mut message) = message else { break "connection closed" };
                    // Everything Redis has already delivered is dispatched before anything is
                    // written, so that a backlog leaves in few writes per connection.
                    let mut batch = 0;
                    let ended = loop {
                        let channel = message.get_channel_name();
                        if channel == heartbeat_channel {
                            last_heartbeat = Instant::now();
                        } else if channel.starts_with(RESERVED_PREFIX) {
                            if let Some(pending) = pending.take_if(|p| p.marker == channel) {
                                // The switch changes the routing: what was routed by the old
                                // one leaves first.
                                dispatcher.flush();
                                if let Err(err) = finish_switch(&shared, &mut sink, &mut subscribed, pending).await {
                                    tracing::warn!(error = %err, "redis subscription change failed");
                                    break Some("subscription change failed");
                                }
                            }
                        } else {
                            let received_at = Instant::now();
                            let pattern: Option<String> = message.get_pattern().ok().flatten();
                            dispatcher.dispatch(channel, pattern.as_deref(), message.get_payload_bytes(), received_at);
                        }
                        batch += 1;
                        if batch == MAX_BATCH_MESSAGES || dispatcher.pending() >= MAX_BATCH_FRAMES {
                            break None;
                        }
                        match stream.next().now_or_never() {
                            Some(Some(next)) => message = next,
                            Some(None) => break Some("connection closed"),
                            None => break None,
                        }
                    };
                    dispatcher.flush();
                    if let Some(reason) = ended {
                        break reason;
                    }
                }
            }
        };
        if let Some(pending) = pending.take() {
            // No connection to switch on: the next one subscribes what is in force.
            pending.give_up.abort();
            shared.routing.store(pending.routing);
            let _ = pending.done.send(());
        }
        heartbeats.abort();
        lost_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        shared.set_redis_ready(false);
        tracing::warn!(reason, "redis connection lost; reconnecting");
    }
}

/// A client whose TCP connections probe an idle peer and give up on unacknowledged writes, so
/// that a half-open connection (a vanished host, a NAT or proxy that forgot it) ends on its
/// own; the heartbeat catches what TCP cannot see.
fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT);
    redis::Client::open(url.into_connection_info()?.set_tcp_settings(tcp))
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = client(url)?;
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

/// Subscribes what `routing` needs and `subscribed` lacks, and a switch's `marker` channel
/// with the new channels (it is not recorded in `subscribed`).
async fn subscribe_difference(
    sink: &mut PubSubSink,
    subscribed: &mut Subscriptions,
    routing: &Routing,
    marker: Option<&str>,
) -> redis::RedisResult<()> {
    let channels: Vec<&str> = routing
        .channels()
        .filter(|c| !subscribed.channels.contains(*c))
        .collect();
    if !channels.is_empty() || marker.is_some() {
        let mut command = channels.clone();
        command.extend(marker);
        sink.subscribe(&command).await?;
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

/// Publishes a switch's marker (the subscriber connection cannot PUBLISH); resolves only with
/// a reason to stop waiting for the marker to come back.
async fn publish_marker(url: String, marker: String) -> String {
    let deadline = tokio::time::Instant::now() + MARKER_TIMEOUT;
    match tokio::time::timeout(MARKER_TIMEOUT, publish(&url, &marker, b"")).await {
        Ok(Ok(0)) => return "the marker reached no subscriber".to_owned(),
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return format!("cannot publish the marker: {err}"),
        Err(_) => return "publishing the marker timed out".to_owned(),
    }
    tokio::time::sleep_until(deadline).await;
    "the marker did not come back in time".to_owned()
}

/// PUBLISHes a heartbeat on `channel` every `interval` from a connection of its own (a
/// subscribed connection cannot publish), until aborted. A failure is not reported here: the
/// missing heartbeat is what the subscriber notices.
async fn send_heartbeats(url: String, channel: String, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        ticks.tick().await;
        if connection.is_none() {
            let connect = async { client(&url)?.get_multiplexed_async_connection().await };
            connection = tokio::time::timeout(interval, connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(publisher) = connection.as_mut() else {
            continue;
        };
        let mut command = redis::cmd("PUBLISH");
        command.arg(&channel).arg("");
        let sent = command.query_async::<i64>(publisher);
        if !matches!(tokio::time::timeout(interval, sent).await, Ok(Ok(_))) {
            connection = None;
        }
    }
}

/// The pending switch's reason to give up on its marker; pending forever without a switch.
async fn gave_up(pending: &mut Option<Pending>) -> String {
    match pending {
        Some(pending) => (&mut pending.give_up)
            .await
            .unwrap_or_else(|err| format!("the marker task failed: {err}")),
        None => std::future::pending().await,
    }
}

/// Makes the pending table the one in force, then unsubscribes what it dropped and the marker.
async fn finish_switch(
    shared: &Shared,
    sink: &mut PubSubSink,
    subscribed: &mut Subscriptions,
    pending: Pending,
) -> redis::RedisResult<()> {
    let Pending {
        routing,
        done,
        marker,
        give_up,
    } = pending;
    give_up.abort();
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
    let result = unsubscribe(sink, subscribed, dropped_channels, dropped_patterns, marker).await;
    // Answered after the UNSUBSCRIBEs, so that a reload is reported once Redis shows the new
    // subscriptions.
    let _ = done.send(());
    result
}

async fn unsubscribe(
    sink: &mut PubSubSink,
    subscribed: &mut Subscriptions,
    mut channels: Vec<String>,
    patterns: Vec<String>,
    marker: String,
) -> redis::RedisResult<()> {
    for channel in &channels {
        subscribed.channels.remove(channel);
    }
    channels.push(marker);
    sink.unsubscribe(&channels).await?;
    if !patterns.is_empty() {
        for pattern in &patterns {
            subscribed.patterns.remove(pattern);
        }
        sink.punsubscribe(&patterns).await?;
    }
    Ok(())
}

/// PUBLISHes on a short-lived connection; returns Redis's count of receivers.
pub async fn publish(url: &str, channel: &str, payload: &[u8]) -> redis::RedisResult<i64> {
    let client = client(url)?;
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
