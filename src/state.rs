//! What the tasks of one process share.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::history::{Gauges, History};
use crate::hub::{Connection, Hub};
use crate::metrics::Metrics;
use crate::rate::KeyedBuckets;
use crate::router::Routing;
use crate::systemd::Notifier;

/// The outcome of the last load of the routing file, for `/ws/stats`.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    pub loaded_at: SystemTime,
    pub last_reload_error: Option<String>,
}

#[derive(Debug)]
pub struct Shared {
    /// The routing table in force; swapped whole by a reload, read per message.
    pub routing: ArcSwap<Routing>,
    pub hub: Hub,
    /// The frames of routes with `history`, for replays.
    pub history: History,
    pub metrics: Metrics,
    /// True while Redis is connected and every channel and pattern is subscribed. Set
    /// through [`Shared::set_redis_ready`].
    pub redis_ready: AtomicBool,
    /// The same fact for tasks that wait on it (the systemd notifier): `redis_ready` is the
    /// cheap read for request handlers, this one wakes a task when it changes.
    pub redis_changes: watch::Sender<bool>,
    /// The service manager's notification socket (no-op outside systemd).
    pub systemd: Notifier,
    /// Identifies this process run, so that clients can tell a restart (sequences restart).
    pub epoch: String,
    /// This bridge's name among several: `instance`, else the host name, else one made of
    /// the epoch. Fixed for the process's life.
    pub instance: String,
    /// Cancelled once, when the process starts shutting down.
    pub shutdown: CancellationToken,
    /// Every session task, awaited (within the grace period) at shutdown.
    pub sessions: TaskTracker,
    next_connection: AtomicU64,
    /// Connections admitted and not yet ended, including those still upgrading: the count
    /// `max_connections` is enforced against.
    slots: AtomicUsize,
    pub config_status: Mutex<ConfigStatus>,
    /// New connections per client address, for `websocket.connect_rate_per_ip`.
    pub connects_per_ip: KeyedBuckets<IpAddr>,
    /// Open connections per user, for `websocket.max_connections_per_user`.
    per_user: Counts<Arc<str>>,
    /// Open connections per client address, for `websocket.max_connections_per_ip`.
    per_address: Counts<IpAddr>,
    /// What sessions ask of Redis, served by `pubsub` (the one module that talks to Redis);
    /// set once its task runs.
    pub redis_requests: OnceLock<mpsc::Sender<RedisRequest>>,
    /// Presence changes and queries, served in order by `pubsub`. Unbounded: each change is
    /// one subscription made or ended, which `max_subscriptions` and the client rate bound,
    /// and none may be dropped (a lost leave would keep a user present).
    pub presence_requests: OnceLock<mpsc::UnboundedSender<PresenceRequest>>,
}

/// A presence change or question (a route with `presence`).
#[derive(Debug)]
pub enum PresenceRequest {
    /// `user`'s connection `connection_id` subscribed to `topic`.
    Join {
        topic: String,
        user: Arc<str>,
        connection_id: String,
        /// Whether the route sends join and leave frames.
        events: bool,
    },
    /// That connection unsubscribed or closed.
    Leave {
        topic: String,
        user: Arc<str>,
        connection_id: String,
        events: bool,
    },
    /// Answer `connection` who is subscribed to `topic`.
    Query {
        topic: String,
        connection: Arc<Connection>,
        id: Option<Value>,
    },
}

/// Work for Redis that a layer below `pubsub` asks for.
#[derive(Debug)]
pub enum RedisRequest {
    /// A client's frame through an inbound route.
    Publish(Outgoing),
}

/// One PUBLISH of a client's frame.
#[derive(Debug)]
pub struct Outgoing {
    /// The inbound route's name, for the metrics.
    pub route: Arc<str>,
    pub channel: String,
    pub payload: Vec<u8>,
    /// With `ack`: the connection to answer once Redis took it (or did not), and the `id`
    /// its frame carried.
    pub ack: Option<(Arc<Connection>, Option<Value>)>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections`: the process is full.
    Process,
    /// `max_connections_per_user`.
    User,
    /// `max_connections_per_ip`.
    Address,
}

/// What a new connection asks a slot for: its user (when authenticated) and its address,
/// with the limits in force.
#[derive(Debug)]
pub struct SlotRequest {
    pub max_connections: usize,
    pub user: Option<(Arc<str>, usize)>,
    pub address: (IpAddr, usize),
}

/// Open connections per key; a key whose count drops to zero is forgotten.
#[derive(Debug)]
struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Counts<K> {
    fn default() -> Counts<K> {
        Counts(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash> Counts<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_add(&self, key: K, limit: usize) -> bool {
        let mut counts = self.lock();
        let count = counts.entry(key).or_default();
        if *count >= limit {
            return false;
        }
        *count += 1;
        true
    }

    fn remove(&self, key: &K) {
        let mut counts = self.lock();
        if let Some(count) = counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let metrics = Metrics::default();
        metrics
            .connections_max
            .set(i64::try_from(config.websocket.max_connections).unwrap_or(i64::MAX));
        let epoch = uuid::Uuid::new_v4().to_string();
        let instance = config
            .instance
            .clone()
            .or_else(host_name)
            .unwrap_or_else(|| format!("bridge-{}", &epoch[..8]));
        let gauges = Gauges {
            frames: metrics.history_frames.clone(),
            bytes: metrics.history_bytes.clone(),
        };
        let history = History::new(&epoch, &config, gauges);
        let routing = Routing::new(Arc::new(config), &metrics);
        Arc::new(Shared {
            routing: ArcSwap::from_pointee(routing),
            hub: Hub::default(),
            history,
            metrics,
            redis_ready: AtomicBool::new(false),
            redis_changes: watch::Sender::new(false),
            systemd: Notifier::from_env(),
            epoch,
            instance,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            next_connection: AtomicU64::new(1),
            slots: AtomicUsize::new(0),
            config_status: Mutex::new(ConfigStatus {
                loaded_at: SystemTime::now(),
                last_reload_error: None,
            }),
            connects_per_ip: KeyedBuckets::default(),
            per_user: Counts::default(),
            per_address: Counts::default(),
            redis_requests: OnceLock::new(),
            presence_requests: OnceLock::new(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.routing.load().config.clone()
    }

    /// Records whether Redis is connected with every route subscribed: `/readyz`, the
    /// `bridge_redis_connected` gauge and the systemd notifier all follow it.
    pub fn set_redis_ready(&self, ready: bool) {
        // The gauge first: whoever sees `/readyz` change also finds the gauge changed.
        self.metrics.redis_connected.set(i64::from(ready));
        self.redis_ready.store(ready, Ordering::Release);
        self.redis_changes.send_replace(ready);
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot unless the process, the user or the address is at its limit;
    /// the slot is released on drop.
    pub fn take_slot(self: &Arc<Self>, request: SlotRequest) -> Result<Slot, Full> {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < request.max_connections).then_some(n + 1)
            })
            .map_err(|_| Full::Process)?;
        // From here the slot releases whatever it holds when dropped on a refusal.
        let mut slot = Slot {
            shared: self.clone(),
            user: None,
            address: None,
        };
        let (address, per_address) = request.address;
        if !self.per_address.try_add(address, per_address) {
            return Err(Full::Address);
        }
        slot.address = Some(address);
        if let Some((user, per_user)) = request.user {
            if !self.per_user.try_add(user.clone(), per_user) {
                return Err(Full::User);
            }
            slot.user = Some(user);
        }
        Ok(slot)
    }

    /// Records a reload: the new load time when it succeeded, and its error (or none).
    pub fn set_config_status(&self, loaded_at: Option<SystemTime>, error: Option<String>) {
        let mut status = self
            .config_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(loaded_at) = loaded_at {
            status.loaded_at = loaded_at;
        }
        status.last_reload_error = error;
    }

    pub fn config_status(&self) -> ConfigStatus {
        self.config_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// One of the `max_connections` places, and its user's and address's share of theirs, held
/// from the upgrade until the session ends.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
    user: Option<Arc<str>>,
    address: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(user) = &self.user {
            self.shared.per_user.remove(user);
        }
        if let Some(address) = &self.address {
            self.shared.per_address.remove(address);
        }
        self.shared.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The kernel's host name, when it has one.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}
