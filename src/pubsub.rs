//! The one module that talks to Redis: a subscriber connection that SUBSCRIBEs the routes'
//! channels and PSUBSCRIBEs their patterns, reconnects with capped exponential backoff,
//! applies new routing tables by subscription difference, and hands every message to the
//! dispatcher. Also the short-lived connections `/api/publish` uses. Every connection it
//! makes (subscriber, heartbeats, switch markers, `/api/publish`) is built by [`client`] from
//! the same `redis` settings: URL, credentials, TLS roots and client certificate.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use redis::IntoConnectionInfo;
use redis::aio::{PubSubSink, PubSubStream};
use redis::io::tcp::{TcpSettings, socket2};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Interval;

use crate::config::{RESERVED_PREFIX, RedisSettings};
use crate::dispatch::Dispatcher;
use crate::metrics::RedisErrorReason;
use crate::router::Routing;
use crate::state::Shared;

mod presence;
mod requests;

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
    requests::spawn(shared.clone());
    presence::spawn(shared.clone());
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

/// The subscriber task: one subscribed connection at a time, replaced when it is lost.
struct Task {
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Control>,
    dispatcher: Dispatcher,
    /// The wait before the next connection attempt (capped exponential backoff).
    retry: Duration,
    /// Whether a connection was ever made: the next one is a reconnect, with gap notices.
    ever_connected: bool,
    /// The last connection error logged, so that a Redis that stays down (or a certificate
    /// that stays wrong) is logged once, not once per retry.
    last_error: String,
    /// Numbers the switch markers of this process.
    switches: u64,
    /// When the last subscriber connection was lost, for the gap notices.
    lost_at: String,
    /// The master a sentinel announced with `+switch-master`: the next connection goes there
    /// rather than asking again a sentinel that may not have learnt of the switch yet.
    switched_to: Option<(String, u16)>,
}

/// One subscribed connection, and the work in flight on it.
struct Link {
    /// The settings it was made with, to tell whether a reload changes the server.
    redis: RedisSettings,
    /// The server's URL (the master the sentinels named, with `redis.sentinel`).
    server: String,
    /// Makes the connections that publish heartbeats and markers, as this one was made.
    client: redis::Client,
    sink: PubSubSink,
    stream: PubSubStream,
    subscribed: Subscriptions,
    /// This process's heartbeat channel, subscribed with the routes.
    heartbeat_channel: String,
    /// The task that PUBLISHes the heartbeats.
    heartbeats: JoinHandle<()>,
    last_heartbeat: Instant,
    watchdog: Interval,
    heartbeat_timeout: Duration,
    /// A reload waiting for its marker.
    pending: Option<Pending>,
    /// With `redis.sentinel`: resolves with the new master's address when a sentinel
    /// announces a failover (`+switch-master`).
    switch: Option<JoinHandle<(String, u16)>>,
}

/// What woke the task while connected.
enum Event {
    Shutdown,
    /// The pending switch gave up on its marker, for this reason.
    GaveUp(String),
    Request(Option<Control>),
    WatchdogTick,
    Message(Option<redis::Msg>),
    /// A sentinel announced that the master moved to this address.
    Switched((String, u16)),
}

/// Why a connection is dropped and replaced.
type Lost = &'static str;

async fn run(shared: Arc<Shared>, requests: mpsc::Receiver<Control>) {
    let mut task = Task {
        dispatcher: Dispatcher::new(shared.clone()),
        shared,
        requests,
        retry: FIRST_RETRY,
        ever_connected: false,
        last_error: String::new(),
        switches: 0,
        lost_at: String::new(),
        switched_to: None,
    };
    while let Some(mut link) = task.connect().await {
        let Some(reason) = task.serve(&mut link).await else {
            return;
        };
        task.lose(link, reason);
    }
}

impl Task {
    /// Connects and subscribes, retrying with backoff until it works; `None` on shutdown.
    async fn connect(&mut self) -> Option<Link> {
        // With `redis.sentinel`, between attempts: a new master announced ends the wait (a
        // killed master is replaced while the backoff may have grown to its longest).
        let mut switch: Option<JoinHandle<(String, u16)>> = None;
        loop {
            let settings = self.shared.config().redis.clone();
            let switched_to = self.switched_to.take();
            let connected = tokio::select! {
                _ = self.shared.shutdown.cancelled() => return None,
                connected = connect(&settings, switched_to) => connected,
            };
            let subscribed = match connected {
                Ok((server, client, pubsub)) => {
                    self.subscribe_all(settings.clone(), server, client, pubsub)
                        .await
                }
                Err(failure) => Err(failure),
            };
            match subscribed {
                Ok(link) => {
                    if let Some(watch) = switch.take() {
                        watch.abort();
                    }
                    self.announce(&link);
                    return Some(link);
                }
                Err(Failure {
                    reason,
                    message: err,
                }) => {
                    self.shared.metrics.redis_error(reason);
                    // Compared without digits: some errors count something that changes at
                    // every attempt (an expired certificate's "N seconds ago").
                    let same: String = err.chars().filter(|c| !c.is_ascii_digit()).collect();
                    if same != self.last_error {
                        tracing::warn!(
                            redis = %redact(&settings.url),
                            reason = reason.label(),
                            error = %err,
                            retry_in = ?self.retry,
                            "redis unavailable"
                        );
                        self.last_error = same;
                    }
                    if switch.is_none() && settings.sentinel.is_some() {
                        switch = Some(tokio::spawn(watch_switch(settings.clone())));
                    }
                    let (shared, requests) = (&self.shared, &mut self.requests);
                    let waited = wait_retry(shared, requests, self.retry, &mut switch);
                    match waited.await {
                        Retry::Now(master) => self.switched_to = master,
                        Retry::Shutdown => {
                            if let Some(watch) = switch.take() {
                                watch.abort();
                            }
                            return None;
                        }
                    }
                    self.retry = (self.retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Subscribes the routing table in force and the heartbeat on a new connection, and
    /// starts the heartbeats.
    async fn subscribe_all(
        &self,
        redis: RedisSettings,
        server: String,
        client: redis::Client,
        pubsub: redis::aio::PubSub,
    ) -> Result<Link, Failure> {
        let (mut sink, stream) = pubsub.split();
        let mut subscribed = Subscriptions::default();
        let routing = self.shared.routing.load_full();
        let heartbeat_channel = format!("{RESERVED_PREFIX}heartbeat:{}", self.shared.epoch);
        subscribe_difference(
            &mut sink,
            &mut subscribed,
            &routing,
            Some(&heartbeat_channel),
        )
        .await?;
        subscribe(&mut sink, false, &[presence::EVENTS]).await?;
        // The first heartbeat now, so that an ACL user that may not PUBLISH on the bridge's
        // own channels is reported as such rather than, later, as a stalled subscription.
        if let Err(err) = publish_with(&client, &heartbeat_channel, b"").await {
            return Err(match is_denied(&err) {
                true => Failure::denied("PUBLISH on", &heartbeat_channel),
                false => err.into(),
            });
        }
        let settings = &routing.config.redis;
        let heartbeats = tokio::spawn(send_heartbeats(
            client.clone(),
            heartbeat_channel.clone(),
            settings.heartbeat_interval,
        ));
        let switch = redis
            .sentinel
            .is_some()
            .then(|| tokio::spawn(watch_switch(redis.clone())));
        Ok(Link {
            redis,
            server,
            client,
            sink,
            stream,
            subscribed,
            heartbeat_channel,
            heartbeats,
            last_heartbeat: Instant::now(),
            watchdog: tokio::time::interval(settings.heartbeat_interval),
            heartbeat_timeout: settings.heartbeat_timeout,
            pending: None,
            switch,
        })
    }

    /// A connection is subscribed: ready, and after a loss, the gap notices.
    fn announce(&mut self, link: &Link) {
        let shared = &self.shared;
        self.retry = FIRST_RETRY;
        self.last_error.clear();
        let recovered = self.ever_connected;
        if recovered {
            shared.metrics.redis_reconnects.inc();
        }
        self.ever_connected = true;
        shared.set_redis_ready(true);
        if recovered {
            // Whatever was published meanwhile is lost: clients are told to refetch, and
            // those away now by the history when they resume.
            shared.history.interrupted();
            let notified = shared.hub.notify_gap(&self.lost_at, &shared.metrics);
            tracing::info!(connections = notified, "gap notices sent");
        }
        tracing::info!(
            redis = %redact(&link.server),
            channels = link.subscribed.channels.len(),
            patterns = link.subscribed.patterns.len(),
            "redis subscribed"
        );
    }

    /// Serves a connection until it is lost (and why), or `None` when the task must end.
    async fn serve(&mut self, link: &mut Link) -> Option<Lost> {
        loop {
            let handled = match self.next_event(link).await {
                Event::Shutdown | Event::Request(None) => return None,
                Event::GaveUp(reason) => self.switch_without_marker(link, reason).await,
                Event::Request(Some(Control::Apply { routing, done })) => {
                    self.begin_switch(link, routing, done).await
                }
                Event::WatchdogTick => self.check_heartbeat(link),
                Event::Message(None) => Err("connection closed"),
                Event::Message(Some(message)) => self.dispatch_batch(link, message).await,
                Event::Switched(master) => {
                    self.switched_to = Some(master);
                    Err("the sentinels switched the master")
                }
            };
            if let Err(reason) = handled {
                return Some(reason);
            }
        }
    }

    async fn next_event(&mut self, link: &mut Link) -> Event {
        // Reload requests before messages: a sustained flood must not hold a reload back.
        tokio::select! {
            biased;
            _ = self.shared.shutdown.cancelled() => Event::Shutdown,
            reason = gave_up(&mut link.pending) => Event::GaveUp(reason),
            master = switched(&mut link.switch) => Event::Switched(master),
            request = self.requests.recv(), if link.pending.is_none() => Event::Request(request),
            _ = link.watchdog.tick() => Event::WatchdogTick,
            message = link.stream.next() => Event::Message(message),
        }
    }

    /// A reload: subscribes what the new table adds with a marker channel, and publishes the
    /// marker; the switch happens where it comes back (see [`Pending`]).
    async fn begin_switch(
        &mut self,
        link: &mut Link,
        routing: Arc<Routing>,
        done: oneshot::Sender<()>,
    ) -> Result<(), Lost> {
        if !routing.config.redis.same_server(&link.redis) {
            // The next connection subscribes the new table from scratch.
            self.shared.routing.store(routing);
            let _ = done.send(());
            return Err("redis.url or redis.tls changed");
        }
        self.switches += 1;
        let marker = format!(
            "{RESERVED_PREFIX}switch:{}:{}",
            self.shared.epoch, self.switches
        );
        let added = subscribe_difference(
            &mut link.sink,
            &mut link.subscribed,
            &routing,
            Some(&marker),
        );
        if let Err(Failure { reason, message }) = added.await {
            tracing::warn!(reason = reason.label(), error = %message, "redis subscription change failed");
            // In force all the same: the next connection subscribes it.
            self.shared.routing.store(routing);
            let _ = done.send(());
            return Err("subscription change failed");
        }
        let give_up = tokio::spawn(publish_marker(link.client.clone(), marker.clone()));
        link.pending = Some(Pending {
            routing,
            done,
            marker,
            give_up,
        });
        Ok(())
    }

    async fn switch_without_marker(&mut self, link: &mut Link, reason: String) -> Result<(), Lost> {
        let Some(pending) = link.pending.take() else {
            return Ok(());
        };
        tracing::warn!(reason = %reason, "switching without a marker: messages published during this reload may be routed by either configuration");
        self.finish(link, pending).await
    }

    async fn finish(&mut self, link: &mut Link, pending: Pending) -> Result<(), Lost> {
        let finished = finish_switch(&self.shared, &mut link.sink, &mut link.subscribed, pending);
        finished.await.map_err(|err| {
            tracing::warn!(error = %err, "redis subscription change failed");
            "subscription change failed"
        })
    }

    fn check_heartbeat(&self, link: &Link) -> Result<(), Lost> {
        let silent = link.last_heartbeat.elapsed();
        if silent <= link.heartbeat_timeout {
            return Ok(());
        }
        self.shared.metrics.redis_stalls.inc();
        tracing::error!(
            silent_ms = silent.as_millis() as u64,
            timeout = ?link.heartbeat_timeout,
            "redis subscription stalled: the heartbeat did not come back; replacing the connection"
        );
        Err("subscription stalled")
    }

    /// Dispatches `message` and everything else Redis has already delivered (up to a batch)
    /// before anything is written, so that a backlog leaves in few writes per connection.
    async fn dispatch_batch(&mut self, link: &mut Link, first: redis::Msg) -> Result<(), Lost> {
        let mut message = first;
        let mut batch = 0;
        let ended = loop {
            if let Err(reason) = self.take_message(link, &message).await {
                break Err(reason);
            }
            batch += 1;
            if batch == MAX_BATCH_MESSAGES || self.dispatcher.pending() >= MAX_BATCH_FRAMES {
                break Ok(());
            }
            match link.stream.next().now_or_never() {
                Some(Some(next)) => message = next,
                Some(None) => break Err("connection closed"),
                None => break Ok(()),
            }
        };
        self.dispatcher.flush();
        ended
    }

    /// One message: a heartbeat, a switch's marker, or one for the routes.
    async fn take_message(&mut self, link: &mut Link, message: &redis::Msg) -> Result<(), Lost> {
        let channel = message.get_channel_name();
        if channel == link.heartbeat_channel {
            link.last_heartbeat = Instant::now();
        } else if channel == presence::EVENTS {
            crate::presence::deliver_event(&self.shared, message.get_payload_bytes());
        } else if channel.starts_with(RESERVED_PREFIX) {
            if let Some(pending) = link.pending.take_if(|p| p.marker == channel) {
                // The switch changes the routing: what was routed by the old one leaves first.
                self.dispatcher.flush();
                self.finish(link, pending).await?;
            }
        } else {
            let received_at = Instant::now();
            let pattern: Option<String> = message.get_pattern().ok().flatten();
            let payload = message.get_payload_bytes();
            self.dispatcher
                .dispatch(channel, pattern.as_deref(), payload, received_at);
        }
        Ok(())
    }

    /// The connection is gone: a pending reload is put in force for the next one.
    fn lose(&mut self, link: Link, reason: Lost) {
        if let Some(pending) = link.pending {
            // No connection to switch on: the next one subscribes what is in force.
            pending.give_up.abort();
            self.shared.routing.store(pending.routing);
            let _ = pending.done.send(());
        }
        link.heartbeats.abort();
        if let Some(switch) = link.switch {
            switch.abort();
        }
        self.lost_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        self.shared.set_redis_ready(false);
        tracing::warn!(reason, "redis connection lost; reconnecting");
    }
}

/// A client for the configured server: its credentials, and for `rediss://` the configured
/// CA (else the system roots) and client certificate. Its TCP connections probe an idle peer
/// and give up on unacknowledged writes, so that a half-open connection (a vanished host, a
/// NAT or proxy that forgot it) ends on its own; the heartbeat catches what TCP cannot see.
fn client(settings: &RedisSettings) -> redis::RedisResult<redis::Client> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT);
    let info = settings
        .url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(tcp);
    match &settings.tls {
        None => redis::Client::open(info),
        Some(tls) => {
            let certificates = redis::TlsCertificates {
                client_tls: tls.client.as_ref().map(|identity| redis::ClientTlsConfig {
                    client_cert: identity.cert.clone(),
                    client_key: identity.key.clone(),
                }),
                root_cert: tls.ca.clone(),
            };
            redis::Client::build_with_tls(info, certificates)
        }
    }
}

/// Connects a subscriber to the server (with `redis.sentinel`, the master a sentinel just
/// announced, else the one the sentinels name now); with its URL and the client that made it.
async fn connect(
    settings: &RedisSettings,
    switched_to: Option<(String, u16)>,
) -> Result<(String, redis::Client, redis::aio::PubSub), Failure> {
    let server = match switched_to {
        Some((host, port)) if settings.sentinel.is_some() => RedisSettings {
            url: with_address(&settings.url, &host, port),
            sentinel: None,
            ..settings.clone()
        },
        _ => resolve(settings).await?,
    };
    let client = client(&server)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(result) => Ok((server.url, client, result?)),
        Err(_) => Err(timed_out().into()),
    }
}

fn timed_out() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into()
}

/// The settings of the server to connect to: `settings` themselves; with `redis.sentinel`,
/// the master the sentinels name now; with `redis.cluster`, the first node that answers.
/// Asked at every connection, so that the reconnect after a failover finds the new master,
/// or another node.
async fn resolve(settings: &RedisSettings) -> Result<RedisSettings, Failure> {
    if let Some(nodes) = &settings.cluster {
        return first_answering(settings, nodes).await;
    }
    let Some(sentinel) = &settings.sentinel else {
        return Ok(settings.clone());
    };
    let mut errors = Vec::new();
    for node in &sentinel.nodes {
        match ask_sentinel(settings, node).await {
            Ok(Some((host, port))) => {
                let mut master = settings.clone();
                master.url = with_address(&settings.url, &host, port);
                master.sentinel = None;
                return Ok(master);
            }
            Ok(None) => {
                let message = format!(
                    "the sentinel {node} knows no master named `{}` (redis.sentinel.master)",
                    sentinel.master
                );
                return Err(Failure {
                    reason: RedisErrorReason::Sentinel,
                    message,
                });
            }
            Err(err) => errors.push(format!("{node}: {err}")),
        }
    }
    Err(Failure {
        reason: RedisErrorReason::Sentinel,
        message: format!("no sentinel answered ({})", errors.join("; ")),
    })
}

/// The first cluster node that answers PING, with the credentials and TLS of `settings`:
/// classic PUBLISH reaches the subscribers of every node of a cluster, so any one will do.
async fn first_answering(
    settings: &RedisSettings,
    nodes: &[String],
) -> Result<RedisSettings, Failure> {
    let mut errors = Vec::new();
    for node in nodes {
        let address = node.split_once("://").map_or(node.as_str(), |(_, a)| a);
        let Some((host, Ok(port))) = address.rsplit_once(':').map(|(h, p)| (h, p.parse())) else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let candidate = RedisSettings {
            url: with_address(&settings.url, host, port),
            cluster: None,
            ..settings.clone()
        };
        let ping = async {
            let mut connection = client(&candidate)?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => return Ok(candidate),
            Ok(Err(err)) => errors.push(format!("{node}: {err}")),
            Err(_) => errors.push(format!("{node}: {}", timed_out())),
        }
    }
    Err(Failure {
        reason: RedisErrorReason::Unreachable,
        message: format!("no cluster node answered ({})", errors.join("; ")),
    })
}

/// `SENTINEL get-master-addr-by-name` on the sentinel at `node`, with the sentinels'
/// password and the TLS settings of `settings`.
async fn ask_sentinel(
    settings: &RedisSettings,
    node: &str,
) -> redis::RedisResult<Option<(String, u16)>> {
    let Some(sentinel) = &settings.sentinel else {
        return Ok(None);
    };
    let client = sentinel_client(settings, node)?;
    let ask = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&sentinel.master)
            .query_async::<Option<(String, u16)>>(&mut connection)
            .await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, ask).await {
        Ok(answer) => answer,
        Err(_) => Err(timed_out()),
    }
}

/// A client for the sentinel at `node`, with the sentinels' password and, when the node's own
/// scheme says TLS, the TLS settings of `settings`.
fn sentinel_client(settings: &RedisSettings, node: &str) -> redis::RedisResult<redis::Client> {
    let url = match settings.sentinel.as_ref().and_then(|s| s.password.as_ref()) {
        Some(password) => with_password(node, password),
        None => node.to_owned(),
    };
    let tls = match url.starts_with("rediss://") {
        true => settings.tls.clone(),
        false => None,
    };
    client(&RedisSettings {
        url,
        tls,
        sentinel: None,
        ..settings.clone()
    })
}

/// Resolves with the new master's address once a sentinel announces that the master of
/// `settings` moved (`+switch-master`). A planned failover leaves the old master up and
/// serving its subscribers until the sentinels demote it, up to their 10 s INFO period later,
/// while the workers already publish on the new one: without this the bridge would hear
/// nothing meanwhile. A sentinel that cannot be reached or drops the subscription is replaced
/// by the next one; the watch only ends with an announcement (or when aborted).
async fn watch_switch(settings: RedisSettings) -> (String, u16) {
    let Some(sentinel) = settings.sentinel.clone() else {
        return std::future::pending().await;
    };
    loop {
        for node in &sentinel.nodes {
            let subscribed = async {
                let mut pubsub = sentinel_client(&settings, node)?.get_async_pubsub().await?;
                pubsub.subscribe("+switch-master").await?;
                redis::RedisResult::Ok(pubsub)
            };
            let Ok(Ok(mut pubsub)) = tokio::time::timeout(CONNECT_TIMEOUT, subscribed).await else {
                continue;
            };
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(text) = message.get_payload::<String>() else {
                    continue;
                };
                // `<name> <old ip> <old port> <new ip> <new port>`
                let words: Vec<&str> = text.split_whitespace().collect();
                if let [name, _, _, host, port] = words[..]
                    && name == sentinel.master
                    && let Ok(port) = port.parse()
                {
                    return (host.to_owned(), port);
                }
            }
        }
        tokio::time::sleep(MAX_RETRY).await;
    }
}

/// The address a sentinel announced, from the watch of `switch`; pending forever without one.
async fn switched(switch: &mut Option<JoinHandle<(String, u16)>>) -> (String, u16) {
    let Some(watch) = switch.as_mut() else {
        return std::future::pending().await;
    };
    let ended = watch.await;
    // A finished task must not be polled again.
    *switch = None;
    match ended {
        Ok(master) => master,
        Err(_) => std::future::pending().await,
    }
}

/// `url` with its host and port replaced (scheme, credentials, database and options kept).
fn with_address(url: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let credentials = match authority.rfind('@') {
        Some(at) => &authority[..=at],
        None => "",
    };
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_owned(),
    };
    format!("{scheme}://{credentials}{host}:{port}{tail}")
}

/// `redis://HOST:PORT` with `password` for the default user, percent-encoded.
fn with_password(node: &str, password: &str) -> String {
    let (scheme, address) = node.split_once("://").unwrap_or(("redis", node));
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{scheme}://:{encoded}@{address}")
}

/// Why connecting or subscribing failed: the kind (for the metric) and what to log.
struct Failure {
    reason: RedisErrorReason,
    message: String,
}

impl From<redis::RedisError> for Failure {
    fn from(err: redis::RedisError) -> Failure {
        let reason = classify(&err);
        let message = match reason {
            RedisErrorReason::Auth => {
                format!("{err}: check the user name and password of redis.url")
            }
            RedisErrorReason::Tls => match tls_hint(&err.to_string()) {
                Some(hint) => format!("{err}: {hint}"),
                None => err.to_string(),
            },
            _ => err.to_string(),
        };
        Failure { reason, message }
    }
}

impl Failure {
    /// The ACL user may not run `command` on `channel`.
    fn denied(command: &str, channel: &str) -> Failure {
        let grant = match channel.starts_with(RESERVED_PREFIX) {
            true => format!("&{RESERVED_PREFIX}*"),
            false => format!("&{channel}"),
        };
        Failure {
            reason: RedisErrorReason::Denied,
            message: format!(
                "NOPERM: the ACL user may not {command} `{channel}`; allow it with `{grant}` in its ACL"
            ),
        }
    }
}

/// What to do about the usual certificate verification failures, after rustls's own words.
fn tls_hint(error: &str) -> Option<&'static str> {
    if error.contains("Expired") || error.contains("certificate expired") {
        Some("the Redis server's certificate (or its CA's) has expired: renew it on the server")
    } else if error.contains("NotValidYet") || error.contains("not valid yet") {
        Some("the Redis server's certificate is not valid yet: check the clocks")
    } else if error.contains("UnknownIssuer") {
        Some("no trusted CA signed the server's certificate: name its CA in redis.tls.ca_file")
    } else if error.contains("not valid for name") || error.contains("NotValidForName") {
        Some("the certificate does not name the host of the URL: connect by a name it holds")
    } else {
        None
    }
}

fn is_denied(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
}

/// What kind of failure `err` is, for `bridge_redis_connect_errors_total` and the log line.
fn classify(err: &redis::RedisError) -> RedisErrorReason {
    if is_tls_error(err) {
        return RedisErrorReason::Tls;
    }
    match err.kind() {
        redis::ErrorKind::AuthenticationFailed => RedisErrorReason::Auth,
        redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => RedisErrorReason::Denied,
        _ if matches!(err.code(), Some("WRONGPASS" | "NOAUTH")) => RedisErrorReason::Auth,
        _ if err.is_io_error() || err.is_connection_dropped() => RedisErrorReason::Unreachable,
        _ => RedisErrorReason::Other,
    }
}

/// Whether a rustls error is behind `err`: tokio-rustls hands them over inside an I/O error,
/// which the redis crate keeps behind an `Arc`.
fn is_tls_error(err: &redis::RedisError) -> bool {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(mut error) = next {
        if let Some(shared) = error.downcast_ref::<Shared>() {
            error = shared.as_ref();
        }
        if error.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// How a wait before a reconnect ended.
enum Retry {
    /// Connect now; to this master if a sentinel announced it meanwhile.
    Now(Option<(String, u16)>),
    Shutdown,
}

/// Sleeps before a reconnect while still applying routing changes (there is no connection
/// to change subscriptions on: the next connect subscribes what is in force); ends early when
/// the sentinels' watch of `switch` announces a new master.
async fn wait_retry(
    shared: &Shared,
    requests: &mut mpsc::Receiver<Control>,
    retry: Duration,
    switch: &mut Option<JoinHandle<(String, u16)>>,
) -> Retry {
    // Spread reconnects of many bridges after a Redis restart.
    let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
    let deadline = tokio::time::sleep(retry + jitter);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Retry::Shutdown,
            _ = &mut deadline => return Retry::Now(None),
            master = switched(switch) => return Retry::Now(Some(master)),
            request = requests.recv() => match request {
                Some(Control::Apply { routing, done }) => {
                    shared.routing.store(routing);
                    let _ = done.send(());
                }
                None => return Retry::Shutdown,
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
) -> Result<(), Failure> {
    let channels: Vec<&str> = routing
        .channels()
        .filter(|c| !subscribed.channels.contains(*c))
        .collect();
    if !channels.is_empty() || marker.is_some() {
        let mut command = channels.clone();
        command.extend(marker);
        subscribe(sink, false, &command).await?;
        subscribed
            .channels
            .extend(channels.iter().map(|c| c.to_string()));
    }
    let patterns: Vec<&str> = routing
        .patterns()
        .filter(|p| !subscribed.patterns.contains(*p))
        .collect();
    if !patterns.is_empty() {
        subscribe(sink, true, &patterns).await?;
        subscribed
            .patterns
            .extend(patterns.iter().map(|p| p.to_string()));
    }
    Ok(())
}

/// SUBSCRIBEs `names` (PSUBSCRIBEs with `patterns`); an ACL denial names the first one the
/// user may not have, since Redis does not say which.
async fn subscribe(sink: &mut PubSubSink, patterns: bool, names: &[&str]) -> Result<(), Failure> {
    let command = if patterns { "PSUBSCRIBE" } else { "SUBSCRIBE" };
    let all = match patterns {
        true => sink.psubscribe(names).await,
        false => sink.subscribe(names).await,
    };
    let Err(err) = all else {
        return Ok(());
    };
    if !is_denied(&err) {
        return Err(err.into());
    }
    // One at a time: the connection is dropped after a denial, whatever these subscribe.
    for name in names {
        let one = match patterns {
            true => sink.psubscribe(name).await,
            false => sink.subscribe(name).await,
        };
        if one.is_err_and(|err| is_denied(&err)) {
            return Err(Failure::denied(command, name));
        }
    }
    Err(err.into())
}

/// Publishes a switch's marker (the subscriber connection cannot PUBLISH); resolves only with
/// a reason to stop waiting for the marker to come back.
async fn publish_marker(client: redis::Client, marker: String) -> String {
    let deadline = tokio::time::Instant::now() + MARKER_TIMEOUT;
    match tokio::time::timeout(MARKER_TIMEOUT, publish_with(&client, &marker, b"")).await {
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
async fn send_heartbeats(client: redis::Client, channel: String, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        ticks.tick().await;
        if connection.is_none() {
            let connect = client.get_multiplexed_async_connection();
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
pub async fn publish(
    settings: &RedisSettings,
    channel: &str,
    payload: &[u8],
) -> redis::RedisResult<i64> {
    let server = resolve(settings)
        .await
        .map_err(|failure| std::io::Error::other(failure.message))?;
    publish_with(&client(&server)?, channel, payload).await
}

async fn publish_with(
    client: &redis::Client,
    channel: &str,
    payload: &[u8],
) -> redis::RedisResult<i64> {
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
    use super::{redact, with_address, with_password};

    #[test]
    fn the_master_takes_the_place_of_the_host_only() {
        assert_eq!(
            with_address("rediss://bridge:pw@unused:1/2", "10.0.0.7", 6380),
            "rediss://bridge:pw@10.0.0.7:6380/2"
        );
        assert_eq!(
            with_address("redis://unused", "::1", 6379),
            "redis://[::1]:6379"
        );
        assert_eq!(
            with_password("redis://10.0.0.1:26379", "a b@c"),
            "redis://:a%20b%40c@10.0.0.1:26379"
        );
    }

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
