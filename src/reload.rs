//! Live reload: a change of the routing file (saved in place, replaced by rename, or a
//! symlink swapped as Kubernetes does with ConfigMaps), of a key or token file it names, or
//! SIGHUP → a fully validated new configuration → one switch, made by the subscriber task at
//! a precise point of the Redis stream (see `pubsub`).
//!
//! Directories are watched, not files: a watch on a file ends at the first rename-over. They
//! are the directories of every file the configuration in force was built from, plus those
//! holding each symlink on the way to it (a ConfigMap swap renames `..data` next to the
//! configured path; an edit through a symlink happens in the target's directory). Events are
//! debounced, then the files are compared with the digests the configuration in force
//! recorded when it was loaded: a reload happens only when some file holds other bytes, so one
//! save is one reload, and the bytes compared are the bytes loaded. A save in place caught
//! between its truncation and its write is waited for, not rejected.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

use crate::auth::{Authenticator, Rejection};
use crate::config::{AuthMode, Config, ConfigErrors, Input};
use crate::protocol::Reply;
use crate::pubsub::Subscriber;
use crate::router::Routing;
use crate::state::Shared;

/// Quiet time after the last file event before the files are read: editors write in several
/// steps (truncate, write, rename, chmod).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The longest a stream of events can hold a reload back: a directory that never goes quiet
/// (a log file written next to the routing file) must not postpone it forever.
const MAX_SETTLE: Duration = Duration::from_secs(1);

/// Symlinks followed on the way to a file, as the kernel's own limit (ELOOP).
const MAX_LINKS: usize = 40;

/// What set a reload off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP: always reloads.
    Hangup,
    /// Events in a watched directory: reloads when a file changed.
    Change,
}

/// The last rejected attempt, so that one bad save is reported once however many events
/// (an editor's swap file, a touch) the directory sees until it is fixed.
#[derive(Debug, PartialEq, Eq)]
struct Rejected {
    routing_file: Option<Input>,
    errors: String,
}

/// Watches the routing file and SIGHUP until shutdown.
pub async fn run(shared: Arc<Shared>, subscriber: Subscriber, path: PathBuf, mut hangup: Signal) {
    let (events, mut changed) = mpsc::channel::<()>(1);
    let mut watch = Watch::start(events);
    let mut rejected = None;
    loop {
        // Watch first, compare after: a change made before a directory was watched (since
        // the load at start-up, or since a reload named a new key file) has no event, so a
        // comparison follows every new watch; a change made after it has an event.
        let trigger = if watch.follow(&path, &shared.config()) {
            Trigger::Change
        } else {
            match next_trigger(&shared, &mut changed, &mut hangup).await {
                Some(trigger) => trigger,
                None => break,
            }
        };
        respond(trigger, &shared, &subscriber, &path, &mut rejected).await;
    }
}

/// Waits for SIGHUP or a file event; `None` at shutdown. After an event it waits for
/// DEBOUNCE of quiet (at most MAX_SETTLE in all), so that a save made of several steps is one
/// reload; a SIGHUP meanwhile reloads at once (it reads the files anyway).
async fn next_trigger(
    shared: &Shared,
    changed: &mut mpsc::Receiver<()>,
    hangup: &mut Signal,
) -> Option<Trigger> {
    tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        Some(()) = hangup.recv() => return Some(Trigger::Hangup),
        Some(()) = changed.recv() => {}
    }
    let settled = tokio::time::sleep(MAX_SETTLE);
    tokio::pin!(settled);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            Some(()) = hangup.recv() => return Some(Trigger::Hangup),
            _ = &mut settled => return Some(Trigger::Change),
            Some(()) = changed.recv() => {}
            _ = tokio::time::sleep(DEBOUNCE) => return Some(Trigger::Change),
        }
    }
}

/// Reloads when `trigger` calls for it: SIGHUP always; file events when a file the
/// configuration in force was built from holds other bytes, unless they are those of the
/// last rejected attempt and fail the same way.
async fn respond(
    trigger: Trigger,
    shared: &Shared,
    subscriber: &Subscriber,
    path: &Path,
    rejected: &mut Option<Rejected>,
) {
    if trigger == Trigger::Hangup {
        tracing::info!(path = %path.display(), "SIGHUP: reloading");
    }
    // Read once: the bytes compared are the bytes loaded, so a change made in between is
    // either in this load or seen by the next comparison.
    let read = match trigger {
        Trigger::Hangup => std::fs::read(path),
        Trigger::Change => read_past_truncation(path).await,
    };
    if trigger == Trigger::Change {
        match &read {
            // Mid-replacement by a tool that deletes first: the new file's creation is an
            // event of its own.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Ok(bytes) if unchanged(&shared.config(), bytes) => {
                if rejected.take().is_some() {
                    tracing::info!(path = %path.display(), "the routing file is back to the configuration in force");
                    shared.set_config_status(None, None);
                }
                return;
            }
            _ => {}
        }
    }
    let routing_file = read.as_ref().ok().map(|bytes| Input::new(path, bytes));
    let attempt = Config::from_read(path, read);
    let failure = attempt.as_ref().err().map(|errors| Rejected {
        routing_file,
        errors: errors.to_string(),
    });
    if trigger == Trigger::Change {
        if failure.is_some() && failure == *rejected {
            return;
        }
        tracing::info!(path = %path.display(), "a configuration file changed: reloading");
    }
    reload(shared, subscriber, path, attempt).await;
    *rejected = failure;
}

/// Reads the routing file after a file event. An empty file there is most often a save in
/// place caught between its truncation and its write (a writer descheduled for longer than
/// DEBOUNCE): no valid routing file is empty, so it is read again until it holds bytes, for
/// at most MAX_SETTLE, before it is taken for what the operator meant.
async fn read_past_truncation(path: &Path) -> io::Result<Vec<u8>> {
    let settled = tokio::time::Instant::now() + MAX_SETTLE;
    loop {
        let read = std::fs::read(path);
        match &read {
            Ok(bytes) if bytes.is_empty() && tokio::time::Instant::now() < settled => {
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ => return read,
        }
    }
}

/// Whether every file `config` was built from still holds the bytes it was built from;
/// `routing_file` is the routing file as just read.
fn unchanged(config: &Config, routing_file: &[u8]) -> bool {
    config.inputs.iter().all(|input| {
        if input.path == config.source {
            Input::new(&input.path, routing_file) == *input
        } else {
            std::fs::read(&input.path).is_ok_and(|bytes| Input::new(&input.path, &bytes) == *input)
        }
    })
}

/// The directory watcher and the directories it watches.
struct Watch {
    /// `None` without inotify (or out of instances): SIGHUP still reloads.
    watcher: Option<RecommendedWatcher>,
    directories: BTreeSet<PathBuf>,
}

impl Watch {
    fn start(events: mpsc::Sender<()>) -> Watch {
        let handler = move |event: notify::Result<notify::Event>| {
            // Opening and reading change nothing; and the bridge's own reads would wake it up
            // again and again.
            if let Ok(event) = &event
                && is_read_only(&event.kind)
            {
                return;
            }
            // A full channel already holds a pending "changed": nothing is lost.
            let _ = events.try_send(());
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the routing file; reload with SIGHUP");
                None
            }
        };
        Watch {
            watcher,
            directories: BTreeSet::new(),
        }
    }

    /// Watches the directories that decide what `path` and the other files of `config` read,
    /// and no others: the chain of symlinks can change with every swap. True when it watches
    /// a directory it did not before.
    fn follow(&mut self, path: &Path, config: &Config) -> bool {
        let Some(watcher) = &mut self.watcher else {
            return false;
        };
        let mut wanted = directories(path);
        for input in &config.inputs {
            wanted.extend(directories(&input.path));
        }
        for gone in self.directories.difference(&wanted) {
            // Fails when the directory went away, and its watch with it (a ConfigMap's
            // previous folder): nothing left to undo then.
            let _ = watcher.unwatch(gone);
        }
        let mut watched = BTreeSet::new();
        let mut widened = false;
        for directory in wanted {
            if self.directories.contains(&directory) {
                watched.insert(directory);
                continue;
            }
            match watcher.watch(&directory, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(directory);
                    widened = true;
                }
                Err(err) => {
                    tracing::warn!(directory = %directory.display(), error = %err, "cannot watch a directory of the routing file; changes there need SIGHUP");
                }
            }
        }
        self.directories = watched;
        widened
    }
}

/// Opening, reading, and closing without writing.
fn is_read_only(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// The directories whose entries decide what `file` reads: the one holding each symlink met
/// on the way to it, and the one holding the file itself. For a ConfigMap
/// (`bridge.yaml -> ..data/bridge.yaml`, `..data -> ..2026_11_25_xxx`) that is the mounted
/// directory, where `..data` is swapped, and the timestamped one.
fn directories(file: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let Ok(file) = std::path::absolute(file) else {
        return found;
    };
    let mut resolved = PathBuf::from("/");
    let mut rest: VecDeque<OsString> = names(&file).into();
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let next = resolved.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(meta) if meta.file_type().is_symlink() && links < MAX_LINKS => {
                links += 1;
                found.insert(resolved.clone());
                let Ok(target) = std::fs::read_link(&next) else {
                    return found;
                };
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for name in names(&target).into_iter().rev() {
                    rest.push_front(name);
                }
            }
            Ok(_) => resolved = next,
            // Missing from here on: its creation is an event in the last directory reached.
            Err(_) => {
                found.insert(resolved);
                return found;
            }
        }
    }
    if let Some(parent) = resolved.parent() {
        found.insert(parent.to_path_buf());
    }
    found
}

/// The names along `path`, `..` included; the root is implied.
fn names(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Applies a loaded configuration, or reports why there is none: the previous configuration
/// stays in force then. True when the new one is in force.
pub async fn reload(
    shared: &Shared,
    subscriber: &Subscriber,
    path: &Path,
    attempt: Result<Config, ConfigErrors>,
) -> bool {
    let _reloading = shared.systemd.reloading();
    let config = match attempt {
        Ok(config) => config,
        Err(errors) => {
            let message = errors.to_string();
            tracing::error!(path = %path.display(), error = %message, "reload rejected; the previous configuration stays in force");
            shared.metrics.reload(false);
            shared.set_config_status(None, Some(message));
            return false;
        }
    };
    for warning in config.warnings() {
        tracing::warn!(path = %path.display(), "{warning}");
    }
    let old = shared.config();
    if config.listen != old.listen {
        tracing::warn!(old = %old.listen, new = %config.listen, "`listen` changed: takes effect at the next restart");
    }
    if config.instance != old.instance {
        let new = config.instance.as_deref().unwrap_or("(the host name)");
        tracing::warn!(new, "`instance` changed: takes effect at the next restart");
    }
    if config.websocket.path != old.websocket.path {
        tracing::warn!(old = %old.websocket.path, new = %config.websocket.path, "`websocket.path` changed: takes effect at the next restart");
    }
    let routes = config.routes.len();
    let routing = Arc::new(Routing::new(Arc::new(config), &shared.metrics));
    subscriber.apply(routing.clone()).await;
    shared.history.configure(&routing.config, &old);
    let orphaned = shared.hub.retain_topics(|topic| routing.produces(topic));
    for (connection, topics) in &orphaned {
        let notice = Reply::Unsubscribed {
            id: None,
            topics,
            reason: Some("route_removed"),
        };
        connection.outbox.send(notice.to_frame(), &shared.metrics);
    }
    let revoked = verify_connections_again(shared, &routing.config).await;
    let max_connections =
        i64::try_from(routing.config.websocket.max_connections).unwrap_or(i64::MAX);
    shared.metrics.connections_max.set(max_connections);
    shared.metrics.reload(true);
    shared.set_config_status(Some(SystemTime::now()), None);
    tracing::info!(path = %path.display(), routes, connections_notified = orphaned.len(), connections_revoked = revoked, "reloaded");
    true
}

/// Connections verified between two yields to the runtime: verifying an RSA signature takes
/// tens of microseconds, and a reload must not hold a worker thread for all connections.
const VERIFY_BATCH: usize = 256;

/// Verifies every open connection's credential with the keys of the configuration now in
/// force, as a new connection would be: a removed API key, a rotated secret or public key, a
/// changed issuer, or `auth.mode: required` for an anonymous connection closes it with 1008.
/// An identity that still verifies takes its new roles and claims (an API key's roles may
/// have changed). Returns how many were closed.
async fn verify_connections_again(shared: &Shared, config: &Config) -> usize {
    let authenticator = Authenticator::new(&config.auth);
    let mut revoked = 0;
    for (done, connection) in shared.hub.connections().into_iter().enumerate() {
        if done % VERIFY_BATCH == VERIFY_BATCH - 1 {
            tokio::task::yield_now().await;
        }
        if connection.outbox.is_closing() {
            continue;
        }
        let current = connection.identity.load_full();
        let verdict = match config.auth.mode {
            AuthMode::None => continue,
            AuthMode::Optional | AuthMode::Required => connection.credential.verify(&authenticator),
        };
        let still = match verdict {
            None => config.auth.mode == AuthMode::Optional,
            // Its session closes it at `exp` with `token_expired`.
            Some(Err(Rejection::Expired)) => true,
            Some(Err(_)) => false,
            Some(Ok(identity)) if identity.user == current.user => {
                if identity != *current {
                    shared.hub.set_identity(&connection, identity);
                }
                true
            }
            Some(Ok(_)) => false,
        };
        if !still {
            connection.outbox.close(1008, "credential revoked");
            revoked += 1;
        }
    }
    if revoked > 0 {
        shared.metrics.connections_revoked.inc_by(revoked as u64);
        tracing::warn!(
            connections = revoked,
            "closed connections whose credential no longer verifies"
        );
    }
    revoked
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A directory with its symlinks resolved, as the watcher is given them.
    fn real(path: &Path) -> PathBuf {
        path.canonicalize().expect("canonicalize")
    }

    #[test]
    fn a_plain_file_is_watched_in_its_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("bridge.yaml");
        std::fs::write(&file, "x").expect("write");
        assert_eq!(directories(&file), BTreeSet::from([real(dir.path())]));
    }

    #[test]
    fn a_configmap_is_watched_where_data_is_swapped_and_where_the_file_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("..2026_11_25_03_56_07.1");
        std::fs::create_dir(&folder).expect("folder");
        std::fs::write(folder.join("bridge.yaml"), "x").expect("write");
        symlink("..2026_11_25_03_56_07.1", dir.path().join("..data")).expect("..data");
        symlink("..data/bridge.yaml", dir.path().join("bridge.yaml")).expect("link");
        assert_eq!(
            directories(&dir.path().join("bridge.yaml")),
            BTreeSet::from([real(dir.path()), real(&folder)])
        );
    }

    #[test]
    fn a_link_elsewhere_is_watched_on_both_ends() {
        let here = tempfile::tempdir().expect("temp dir");
        let there = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(there.path().join("conf")).expect("conf");
        std::fs::write(there.path().join("conf/real.yaml"), "x").expect("write");
        // Relative, with `..`: resolved from the link's own directory (both temp dirs are
        // in the same parent).
        let target = Path::new("..")
            .join(there.path().file_name().expect("name"))
            .join("conf/real.yaml");
        symlink(&target, here.path().join("bridge.yaml")).expect("link");
        assert_eq!(
            std::fs::read_to_string(here.path().join("bridge.yaml")).expect("read"),
            "x"
        );
        assert_eq!(
            directories(&here.path().join("bridge.yaml")),
            BTreeSet::from([real(here.path()), real(&there.path().join("conf"))])
        );
    }

    #[test]
    fn a_missing_file_is_watched_for_in_the_last_directory_that_exists() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            directories(&dir.path().join("not/yet.yaml")),
            BTreeSet::from([real(dir.path())])
        );
    }

    #[test]
    fn reading_is_not_a_change_and_writing_is() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        assert!(is_read_only(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_only(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_only(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_only(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(!is_read_only(&EventKind::Create(CreateKind::Any)));
    }
}
