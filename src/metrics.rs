//! Counters, gauges and the delivery histogram, rendered as Prometheus text.
//!
//! Hand-rolled on atomics: every hot-path update is one relaxed atomic add, and the label
//! sets are bounded by construction (route names from the routing file and a fixed list of
//! reasons; never topics or users).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per-route counters; shared by every configuration generation that has a route of that name,
/// so that a reload does not reset them.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Redis messages this route matched.
    pub messages: AtomicU64,
    /// Frames queued to connections.
    pub delivered: AtomicU64,
    /// Messages skipped because a placeholder had no value.
    pub unroutable: AtomicU64,
}

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectReason {
    Unauthorized,
    Origin,
    Capacity,
    BadRequest,
    /// `connect_rate_per_ip` exceeded.
    RateLimited,
    /// `max_connections_per_user` reached.
    UserLimit,
    /// `max_connections_per_ip` reached.
    AddressLimit,
}

impl RejectReason {
    const ALL: [RejectReason; 7] = [
        Self::Unauthorized,
        Self::Origin,
        Self::Capacity,
        Self::BadRequest,
        Self::RateLimited,
        Self::UserLimit,
        Self::AddressLimit,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Origin => "origin",
            Self::Capacity => "capacity",
            Self::BadRequest => "bad_request",
            Self::RateLimited => "rate_limited",
            Self::UserLimit => "user_limit",
            Self::AddressLimit => "address_limit",
        }
    }
}

/// Why a frame did not reach a connection it was meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `slow_client: drop_oldest` discarded a queued frame.
    QueueFull,
    /// The connection overflowed its queue and is being closed.
    SlowClient,
    /// The connection was already closing for another reason.
    Closing,
}

impl DropReason {
    const ALL: [DropReason; 3] = [Self::QueueFull, Self::SlowClient, Self::Closing];

    fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::SlowClient => "slow_client",
            Self::Closing => "closing",
        }
    }
}

/// Why a connection to Redis could not be made or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorReason {
    /// The server's certificate was not verified (unknown CA, wrong host name, expired), or
    /// the TLS handshake failed otherwise.
    Tls,
    /// A wrong user name or password.
    Auth,
    /// The ACL user may not run a command the bridge needs (NOPERM).
    Denied,
    /// Refused, unreachable, timed out, or closed by the server.
    Unreachable,
    /// No sentinel answered, or they know no master of that name.
    Sentinel,
    /// Anything else Redis answered.
    Other,
}

impl RedisErrorReason {
    const ALL: [RedisErrorReason; 6] = [
        Self::Tls,
        Self::Auth,
        Self::Denied,
        Self::Unreachable,
        Self::Sentinel,
        Self::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::Denied => "denied",
            Self::Unreachable => "unreachable",
            Self::Sentinel => "sentinel",
            Self::Other => "other",
        }
    }
}

/// Upper bounds of `bridge_delivery_seconds`: 50 µs to 5 s, roughly ×2.5 apart, because a
/// healthy bridge delivers in well under a millisecond and an overloaded one in seconds.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DELIVERY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(index) = DELIVERY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// `websocket.max_connections` in force: alerts compare `connections` with it.
    pub connections_max: AtomicU64,
    /// Upgrades completed since start.
    pub connections_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Messages received from Redis on any channel or pattern.
    pub redis_messages: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Connections closed with 4000 because their send queue overflowed.
    pub slow_client_disconnects: AtomicU64,
    /// 1 while the subscriber connection is up and every route is subscribed.
    pub redis_connected: AtomicI64,
    /// Subscriber connections re-established after a loss.
    pub redis_reconnects: AtomicU64,
    /// Subscriber connections replaced because the heartbeat stopped coming back.
    pub redis_stalls: AtomicU64,
    redis_errors: [AtomicU64; RedisErrorReason::ALL.len()],
    /// Open connections closed by a reload because their credential no longer verifies.
    pub connections_revoked: AtomicU64,
    /// Reload outcomes: `[ok, error]`.
    reloads: [AtomicU64; 2],
    delivery: Histogram,
    routes: Mutex<BTreeMap<Arc<str>, Arc<RouteCounters>>>,
}

impl Metrics {
    /// The counters of the route called `name`, created on first use.
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteCounters> {
        let mut routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.entry(name.clone()).or_default().clone()
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, frames: u64) {
        self.dropped[reason as usize].fetch_add(frames, Ordering::Relaxed);
    }

    /// A failed attempt to connect and subscribe.
    pub fn redis_error(&self, reason: RedisErrorReason) {
        self.redis_errors[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Redis receipt to socket write of one frame.
    pub fn observe_delivery(&self, elapsed: Duration) {
        self.delivery.observe(elapsed);
    }

    /// A snapshot of the per-route counters, in name order.
    pub fn route_snapshot(&self) -> Vec<(Arc<str>, u64, u64, u64)> {
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        routes
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c.messages.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                    c.unroutable.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_connections(&mut out);
        self.render_messages(&mut out);
        self.render_redis(&mut out);
        self.render_delivery(&mut out);
        header(
            &mut out,
            "bridge_build_info",
            "gauge",
            "Always 1; the version of the running binary is its label.",
        );
        let _ = writeln!(
            out,
            "bridge_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process(&mut out);
        out
    }

    fn render_connections(&self, out: &mut String) {
        gauge(
            out,
            "bridge_connections",
            "Open WebSocket connections.",
            self.connections.load(Ordering::Relaxed),
        );
        gauge(
            out,
            "bridge_connections_max",
            "Open connections above which upgrades are refused (websocket.max_connections).",
            i64::try_from(load(&self.connections_max)).unwrap_or(i64::MAX),
        );
        counter(
            out,
            "bridge_connections_accepted_total",
            "WebSocket upgrades completed.",
            load(&self.connections_accepted),
        );
        counter(
            out,
            "bridge_connections_revoked_total",
            "Open connections closed by a reload because their credential no longer verifies.",
            load(&self.connections_revoked),
        );
        let rejected = RejectReason::ALL.map(|r| (r.label(), load(&self.rejected[r as usize])));
        family(
            out,
            "bridge_connections_rejected_total",
            "Connections refused before the upgrade, by reason.",
            "reason",
            &rejected,
        );
        counter(
            out,
            "bridge_slow_client_disconnects_total",
            "Connections closed because their send queue overflowed.",
            load(&self.slow_client_disconnects),
        );
    }

    fn render_messages(&self, out: &mut String) {
        counter(
            out,
            "bridge_redis_messages_received_total",
            "Messages received from Redis.",
            load(&self.redis_messages),
        );
        let routes = self.route_snapshot();
        let names: Vec<String> = routes.iter().map(|route| escape_label(&route.0)).collect();
        // Route counters by position: messages, delivered, unroutable.
        let families = [
            (
                "bridge_redis_messages_total",
                "Redis messages matched, by route.",
            ),
            (
                "bridge_messages_delivered_total",
                "Frames queued to connections, by route.",
            ),
            (
                "bridge_messages_unroutable_total",
                "Messages skipped because a placeholder had no value, by route.",
            ),
        ];
        for (position, (name, help)) in families.into_iter().enumerate() {
            let series: Vec<(&str, u64)> = names
                .iter()
                .zip(&routes)
                .map(|(label, route)| (label.as_str(), [route.1, route.2, route.3][position]))
                .collect();
            family(out, name, help, "route", &series);
        }
        let dropped = DropReason::ALL.map(|r| (r.label(), load(&self.dropped[r as usize])));
        family(
            out,
            "bridge_messages_dropped_total",
            "Frames not delivered to a connection, by reason.",
            "reason",
            &dropped,
        );
    }

    fn render_redis(&self, out: &mut String) {
        gauge(
            out,
            "bridge_redis_connected",
            "1 while Redis is connected and every route subscribed.",
            self.redis_connected.load(Ordering::Relaxed),
        );
        counter(
            out,
            "bridge_redis_reconnects_total",
            "Redis subscriber connections re-established.",
            load(&self.redis_reconnects),
        );
        counter(
            out,
            "bridge_redis_stalls_total",
            "Subscriber connections replaced because the heartbeat did not come back in time.",
            load(&self.redis_stalls),
        );
        let errors =
            RedisErrorReason::ALL.map(|r| (r.label(), load(&self.redis_errors[r as usize])));
        family(
            out,
            "bridge_redis_connect_errors_total",
            "Failed attempts to connect to Redis and subscribe, by reason.",
            "reason",
            &errors,
        );
        family(
            out,
            "bridge_config_reloads_total",
            "Routing file reloads, by result.",
            "result",
            &[
                ("ok", load(&self.reloads[0])),
                ("error", load(&self.reloads[1])),
            ],
        );
    }

    fn render_delivery(&self, out: &mut String) {
        header(
            out,
            "bridge_delivery_seconds",
            "histogram",
            "Time from Redis receipt to socket write of a frame.",
        );
        let mut cumulative = 0;
        for (bound, bucket) in DELIVERY_BUCKETS.iter().zip(&self.delivery.buckets) {
            cumulative += load(bucket);
            let _ = writeln!(
                out,
                "bridge_delivery_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.delivery.count);
        let _ = writeln!(out, "bridge_delivery_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = load(&self.delivery.sum_nanos) as f64 / 1e9;
        let _ = writeln!(out, "bridge_delivery_seconds_sum {sum}");
        let _ = writeln!(out, "bridge_delivery_seconds_count {count}");
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A counter with one label: its header, then one series per (label value, value).
fn family(out: &mut String, name: &str, help: &str, label: &str, series: &[(&str, u64)]) {
    header(out, name, "counter", help);
    for (value_label, value) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
    }
}

/// The process's file-descriptor limit and resident memory, from `/proc/self` (left out where
/// there is none): with one descriptor per client, `bridge_connections` close to
/// `process_max_fds` means `LimitNOFILE` is what refuses the next clients.
fn process(out: &mut String) {
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| soft_limit(&limits, "Max open files"));
    if let Some(max_fds) = max_fds {
        header(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (soft limit).",
        );
        let _ = writeln!(out, "process_max_fds {max_fds}");
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_kib(&status, "VmRSS:"));
    if let Some(kib) = rss_kib {
        header(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {}", kib * 1024);
    }
}

/// The soft limit on the `name` line of `/proc/self/limits`; `None` when unlimited.
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The value of a `NAME:   1234 kB` line of `/proc/self/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             127448               127448               processes \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1_048_576));
        assert_eq!(
            soft_limit(
                "Max open files            unlimited            unlimited            files\n",
                "Max open files"
            ),
            None
        );
        let status = "Name:\tredis-ws-bridge\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(12_345));
    }

    #[test]
    fn every_counter_moves_and_labels_are_bounded() {
        let metrics = Metrics::default();
        let route = metrics.route(&Arc::from("jobs"));
        route.messages.fetch_add(3, Ordering::Relaxed);
        metrics.rejected(RejectReason::Capacity);
        metrics.dropped(DropReason::QueueFull, 2);
        metrics.reload(false);
        metrics.redis_error(RedisErrorReason::Tls);
        metrics.observe_delivery(Duration::from_micros(300));
        let text = metrics.render();
        for line in [
            "bridge_redis_messages_total{route=\"jobs\"} 3",
            "bridge_connections_rejected_total{reason=\"capacity\"} 1",
            "bridge_messages_dropped_total{reason=\"queue_full\"} 2",
            "bridge_config_reloads_total{result=\"error\"} 1",
            "bridge_redis_connect_errors_total{reason=\"tls\"} 1",
            "bridge_delivery_seconds_bucket{le=\"0.00025\"} 0",
            "bridge_delivery_seconds_bucket{le=\"0.0005\"} 1",
            "bridge_delivery_seconds_bucket{le=\"+Inf\"} 1",
            "bridge_delivery_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(text.contains("process_max_fds "), "{text}");
    }
}
