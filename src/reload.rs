//! Live reload: a change of the routing file (saved in place, replaced by rename, or a
//! symlink swapped as Kubernetes does with ConfigMaps) or SIGHUP → a fully validated new
//! configuration → one switch, made by the subscriber task between two messages.
//!
//! The directory is watched, not the file: a watch on the file itself ends at the first
//! rename-over. Any event in the directory triggers a debounced re-read, and a reload happens
//! only when the bytes differ, so one save is one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;
use crate::protocol::Reply;
use crate::pubsub::Subscriber;
use crate::router::Routing;
use crate::state::Shared;

/// Quiet time after the last file event before the file is read: editors write in several
/// steps (truncate, write, rename, chmod).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Watches the routing file and SIGHUP until shutdown.
pub async fn run(shared: Arc<Shared>, subscriber: Subscriber, path: PathBuf, mut hangup: Signal) {
    let (events, mut changed) = mpsc::channel::<()>(1);
    let watcher = watch(&path, events);
    let mut last_text = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = hangup.recv() => {
                tracing::info!(path = %path.display(), "SIGHUP: reloading");
                last_text = std::fs::read(&path).ok();
                reload(&shared, &subscriber, &path).await;
            }
            Some(()) = changed.recv() => {
                loop {
                    tokio::select! {
                        Some(()) = changed.recv() => continue,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
                let text = std::fs::read(&path).ok();
                if text.is_some() && text != last_text {
                    last_text = text;
                    tracing::info!(path = %path.display(), "routing file changed: reloading");
                    reload(&shared, &subscriber, &path).await;
                }
            }
        }
    }
    drop(watcher);
}

/// Starts the directory watcher; without one (no inotify) SIGHUP still works.
fn watch(path: &Path, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |_event: notify::Result<notify::Event>| {
        // A full channel already holds a pending "changed": nothing is lost.
        let _ = events.try_send(());
    };
    match notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher.watch(&directory, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(directory = %directory.display(), error = %err, "cannot watch the routing file; reload with SIGHUP");
            None
        }
    }
}

/// Loads, validates and applies the routing file; the old configuration stays in force when
/// the new one is invalid.
pub async fn reload(shared: &Shared, subscriber: &Subscriber, path: &Path) -> bool {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            let message = errors.to_string();
            tracing::error!(path = %path.display(), error = %message, "reload rejected; the previous configuration stays in force");
            shared.metrics.reload(false);
            shared.set_config_status(None, Some(message));
            return false;
        }
    };
    let old = shared.config();
    if config.listen != old.listen {
        tracing::warn!(old = %old.listen, new = %config.listen, "`listen` changed: takes effect at the next restart");
    }
    if config.websocket.path != old.websocket.path {
        tracing::warn!(old = %old.websocket.path, new = %config.websocket.path, "`websocket.path` changed: takes effect at the next restart");
    }
    let routes = config.routes.len();
    let routing = Arc::new(Routing::new(Arc::new(config), &shared.metrics));
    subscriber.apply(routing.clone()).await;
    let orphaned = shared.hub.retain_topics(|topic| routing.produces(topic));
    for (connection, topics) in &orphaned {
        let notice = Reply::Unsubscribed {
            id: None,
            topics,
            reason: Some("route_removed"),
        }
        .to_json();
        connection.outbox.push_reply(Message::text(notice));
    }
    shared.metrics.reload(true);
    shared.set_config_status(Some(SystemTime::now()), None);
    tracing::info!(path = %path.display(), routes, connections_notified = orphaned.len(), "reloaded");
    true
}
