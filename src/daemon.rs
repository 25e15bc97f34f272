//! The daemon's life: bind, subscribe, serve, reload, shut down within the grace.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::state::Shared;
use crate::{http, logging, pubsub, reload, systemd};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Pending connections the kernel queues before `accept`: a reconnect storm (every client of a
/// restarted bridge at once) overflows a short queue into SYN retransmissions, seconds each.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), StartError> {
    let addr = config.listen;
    let path = config.source.clone();
    let warnings = config.warnings();
    let shared = Shared::new(config);
    logging::name_instance(&shared.instance);
    let listener = listen(addr).map_err(|source| StartError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let hangup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    for warning in warnings {
        tracing::warn!(path = %path.display(), "{warning}");
    }

    let subscriber = pubsub::spawn(shared.clone());
    tokio::spawn(reload::run(shared.clone(), subscriber, path, hangup));
    let server = tokio::spawn(http::serve(shared.clone(), listener));
    tokio::spawn(expire_history(shared.clone()));
    // Started after the bind: its READY=1 needs "listening" as well as "subscribed".
    let follower = shared.clone();
    tokio::spawn(async move {
        systemd::follow(&follower.systemd, follower.redis_changes.subscribe()).await
    });
    tracing::info!(addr = %local, epoch = %shared.epoch, version = env!("CARGO_PKG_VERSION"), "listening");

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    // The grace of the configuration in force: a reload may have changed it.
    let grace = shared.config().shutdown_grace;
    shutdown(&shared, signal_name, grace).await;
    let _ = server.await;
    Ok(())
}

/// How often retained frames past their route's `ttl` are dropped (a replay never sends
/// one, whenever this runs: it drops them first).
const HISTORY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Releases expired retained frames, so that a topic nobody publishes to any more does not
/// hold its frames until the bound pushes them out.
async fn expire_history(shared: Arc<Shared>) {
    let mut sweep = tokio::time::interval(HISTORY_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = sweep.tick() => shared.history.expire(std::time::Instant::now()),
        }
    }
}

/// Stops accepting, closes every client with 1001 after what is queued for it, and waits for
/// the sessions up to `grace`.
async fn shutdown(shared: &Arc<Shared>, signal_name: &str, grace: std::time::Duration) {
    let connections = shared.hub.read().connection_count();
    tracing::info!(signal = signal_name, connections, grace = ?grace, "shutting down");
    shared.systemd.stopping();
    shared.shutdown.cancel();
    shared.hub.close_all(1001, "server shutting down");
    shared.sessions.close();
    if tokio::time::timeout(grace, shared.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = shared.sessions.len(),
            "grace period over; dropping the remaining connections"
        );
    }
    tracing::info!("stopped");
}
