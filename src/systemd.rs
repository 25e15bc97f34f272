//! The service manager's notification protocol (sd_notify(3)) for `Type=notify` units:
//! READY=1 once the daemon listens and every route is subscribed in Redis, RELOADING=1 …
//! READY=1 around a reload, STOPPING=1 at shutdown, WATCHDOG=1 at half the watchdog period,
//! and a STATUS= line that `systemctl status` shows.
//!
//! Nothing is sent unless the service manager (or a test) set `NOTIFY_SOCKET`, so the daemon
//! behaves the same outside systemd. Readiness waits for Redis because a bridge that listens
//! but cannot deliver is not yet doing its job: units ordered after it, and `systemctl start`,
//! should wait for that.

use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// The daemon's side of the notification socket.
#[derive(Debug)]
pub struct Notifier {
    /// Whether `NOTIFY_SOCKET` was set at start; nothing is sent otherwise.
    enabled: bool,
    /// Set once READY=1 has been sent. Until then a reload must not say RELOADING/READY:
    /// its READY=1 would announce a bridge that is not subscribed yet.
    ready: AtomicBool,
}

impl Notifier {
    /// A notifier for the socket systemd named in `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ready: AtomicBool::new(false),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            tracing::warn!(error = %err, "cannot notify the service manager");
        }
    }

    /// Announces a reload; READY=1 follows when the returned guard is dropped, whatever the
    /// reload's outcome (a rejected file leaves the previous configuration serving).
    /// `MONOTONIC_USEC` goes with RELOADING=1 because `Type=notify-reload` (systemd 253+)
    /// matches the two by it; plain `Type=notify` ignores it.
    pub fn reloading(&self) -> Reloading<'_> {
        let announced = self.enabled && self.ready.load(Ordering::Acquire);
        if announced {
            match NotifyState::monotonic_usec_now() {
                Ok(now) => self.send(&[NotifyState::Reloading, now]),
                Err(_) => self.send(&[NotifyState::Reloading]),
            }
        }
        Reloading {
            notifier: announced.then_some(self),
        }
    }

    /// Announces the graceful shutdown, so that systemd shows "deactivating" at once.
    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("shutting down: closing connections"),
        ]);
    }
}

/// A reload in progress (see [`Notifier::reloading`]).
#[must_use = "READY=1 is sent when the guard is dropped"]
pub struct Reloading<'a> {
    /// The notifier that said RELOADING=1, if it did.
    notifier: Option<&'a Notifier>,
}

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        if let Some(notifier) = self.notifier {
            notifier.send(&[NotifyState::Ready]);
        }
    }
}

/// Follows the Redis state (`redis`: whether every route is subscribed) until the process
/// exits: READY=1 the first time every route is
/// subscribed, a STATUS= line at each change, and WATCHDOG=1 every half `WATCHDOG_USEC`.
///
/// The watchdog is kept by a task of the runtime on purpose: if the runtime stops running
/// tasks (a deadlock, every worker blocked), the pings stop and systemd restarts the daemon.
pub async fn follow(notifier: &Notifier, mut redis: watch::Receiver<bool>) {
    if !notifier.enabled {
        return;
    }
    notifier.send(&[NotifyState::Status("starting: subscribing to redis")]);
    let mut watchdog = sd_notify::watchdog_enabled().map(|period| {
        let mut ticks = tokio::time::interval(period / 2);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    // The subscriber may have finished before this task started: look at the current value.
    redis.mark_changed();
    loop {
        tokio::select! {
            changed = redis.changed() => {
                if changed.is_err() {
                    return;
                }
                let subscribed = *redis.borrow_and_update();
                if !subscribed {
                    // Before the first READY=1 the "starting" status still says it all.
                    if notifier.ready.load(Ordering::Acquire) {
                        notifier.send(&[NotifyState::Status("redis unavailable: reconnecting; connections stay open")]);
                    }
                } else if notifier.ready.swap(true, Ordering::AcqRel) {
                    notifier.send(&[NotifyState::Status("serving: redis subscribed")]);
                } else {
                    notifier.send(&[NotifyState::Ready, NotifyState::Status("serving: redis subscribed")]);
                    tracing::debug!("told the service manager READY=1");
                }
            }
            _ = tick(&mut watchdog) => notifier.send(&[NotifyState::Watchdog]),
        }
    }
}

/// The next watchdog tick; never, without a watchdog.
async fn tick(watchdog: &mut Option<Interval>) {
    match watchdog {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => pending().await,
    }
}
