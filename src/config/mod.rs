//! The routing file (docs/routing.md): YAML → validated, compiled [`Config`].
//!
//! Loading is pure apart from reading the file and the environment (`${VAR}`): no socket is
//! bound, nothing is spawned. Layout:
//! - `yaml`: the raw layer — the YAML tree with positions, `${VAR}` interpolation, and the
//!   readers that turn nodes into typed values while collecting errors;
//! - `redis`, `websocket`, `auth`, `route`, `proxies` (`trusted_proxies`): one section each, raw
//!   nodes → typed settings (templates and audiences compiled here, so the hot path only
//!   renders);
//! - this file: the top level, the error types and [`Config::load`].
//!
//! Every problem that can be found is reported, each with the file, line, column and key
//! path; a file with any problem gives no `Config`.

mod auth;
mod inbound;
mod presence;
mod proxies;
mod redis;
mod route;
mod schema;
mod websocket;
mod yaml;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{AdminSettings, ApiKey, AuthMode, AuthSettings, JwtSettings};
pub use inbound::InboundRoute;
pub use presence::Presence;
pub use redis::{ClientIdentity, RedisSettings, RedisTls};
pub use route::{Audience, Delivery, Format, PayloadMatch, Retention, Route, Source};
pub use websocket::{Compression, Rate, SlowClient, WebSocketSettings, Welcome};

use sha2::{Digest, Sha256};

use crate::proxy::TrustedProxies;

/// Channels under this prefix belong to the bridge (the switch markers of reloads and the
/// watchdog's heartbeats): they are never dispatched, whatever pattern routes match them, and
/// no route may name one.
pub const RESERVED_PREFIX: &str = "__redis-ws-bridge__:";
use yaml::{Ctx, fields};

/// The validated routing file.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub source: PathBuf,
    /// Every file it was built from (this one first, then key and token files), each with a
    /// digest of the bytes that were read: a reload compares them with the files' current
    /// bytes to tell a change from a touch, and watches their directories.
    pub inputs: Vec<Input>,
    /// Where the HTTP/WebSocket server listens (`listen`, default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// The Redis connection.
    pub redis: RedisSettings,
    /// Client-facing WebSocket limits and behaviour.
    pub websocket: WebSocketSettings,
    /// How connections authenticate.
    pub auth: AuthSettings,
    /// Who may use the admin endpoints (`admin`; absent: nobody).
    pub admin: AdminSettings,
    /// How long a graceful shutdown may take (`shutdown_grace`, default 10s).
    pub shutdown_grace: Duration,
    /// The reverse proxies whose `X-Forwarded-For` is believed (`trusted_proxies`,
    /// default none).
    pub trusted_proxies: TrustedProxies,
    /// Whether `GET /` serves the console page (`console`, default true).
    pub console: bool,
    /// This bridge's name among several (`instance`; absent: the host name), shown in
    /// `/ws/stats` and the logs.
    pub instance: Option<String>,
    /// The routes, in file order (at least one).
    pub routes: Vec<Route>,
    /// The most bytes the frames retained by routes' `history` may take in the process
    /// (`history_max_bytes`, default 64 MiB); past it the oldest are dropped first.
    pub history_max_bytes: usize,
    /// The client frames published to Redis (`inbound`), in file order: the first that
    /// matches a frame takes it.
    pub inbound: Vec<InboundRoute>,
}

/// A file a configuration was built from, and the SHA-256 of the bytes it was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub path: PathBuf,
    pub sha256: [u8; 32],
}

impl Input {
    pub fn new(path: &Path, bytes: &[u8]) -> Input {
        Input {
            path: path.to_path_buf(),
            sha256: Sha256::digest(bytes).into(),
        }
    }
}

const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_HISTORY_MAX_BYTES: usize = 64 * 1024 * 1024;

impl Config {
    /// Every key of the routing file, section by section, with its type, its default and
    /// what it means (`redis-ws-bridge keys`).
    pub fn keys() -> String {
        schema::reference()
    }

    /// What is valid but probably not meant: routes whose frames look private while anyone
    /// may receive them. `check` prints these and the daemon logs them at each load.
    pub fn warnings(&self) -> Vec<String> {
        if self.auth.mode == AuthMode::None {
            // Without authentication every audience is `all` by design.
            return Vec::new();
        }
        self.routes
            .iter()
            .filter_map(Route::exposure_warning)
            .collect()
    }

    /// Reads and validates the routing file at `path`; `${VAR}` in string values is
    /// replaced from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        Config::from_read(path, std::fs::read(path))
    }

    /// Validates the routing file at `path` as [`Config::load`] does, except that a key,
    /// secret or token file that does not exist yet is reported in [`Checked::absent`]
    /// instead of failing: the routing file itself is valid, and a fresh checkout, or a
    /// pipeline that validates the file where the secrets are not, must be able to say so.
    /// The daemon still refuses to start without them.
    pub fn check(path: &Path) -> Result<Checked, ConfigErrors> {
        let text = Config::read_text(path, std::fs::read(path))?;
        let mut ctx = Ctx::new(path, &|name| std::env::var_os(name));
        ctx.tolerate_absent = true;
        let (config, absent) = Config::compile_text(ctx, &text, path)?;
        Ok(Checked {
            routes: config.routes.iter().map(Route::describe).collect(),
            inbound: config.inbound.iter().map(InboundRoute::describe).collect(),
            warnings: config.warnings(),
            absent,
        })
    }

    /// Validates the routing file at `path` from the outcome of reading it, so that a reload,
    /// which compares the bytes with those in force first, loads exactly what it compared.
    pub fn from_read(path: &Path, read: io::Result<Vec<u8>>) -> Result<Config, ConfigErrors> {
        let text = Config::read_text(path, read)?;
        Config::from_str(&text, path)
    }

    /// The routing file's text, or why it cannot be read.
    fn read_text(path: &Path, read: io::Result<Vec<u8>>) -> Result<String, ConfigErrors> {
        let text = read.and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        text.map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                key: String::new(),
                message: format!("cannot read the routing file: {e}"),
            }])
        })
    }

    /// Validates routing-file text; `source` names the file in errors and in
    /// [`Config::source`].
    // Not `FromStr`: it needs the source path, and the name is the one the crate uses.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
        Config::from_str_with_env(text, source, &|name| std::env::var_os(name))
    }

    /// [`Config::from_str`] with the environment given as a lookup function.
    fn from_str_with_env(
        text: &str,
        source: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigErrors> {
        Config::compile_text(Ctx::new(source, env), text, source).map(|(config, _)| config)
    }

    /// Compiles `text` in `ctx`; with the files that `ctx` tolerated being absent.
    fn compile_text(
        mut ctx: Ctx,
        text: &str,
        source: &Path,
    ) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let root = match ctx.load_tree(text) {
            Ok(root) => root,
            Err(syntax) => {
                return Err(ConfigErrors(vec![ConfigError {
                    file: source.to_path_buf(),
                    line: syntax.line,
                    column: syntax.column,
                    key: String::new(),
                    message: syntax.message,
                }]));
            }
        };
        let config = compile(&mut ctx, &root, source);
        let mut errors = ctx.errors;
        match config {
            Some(mut config) if errors.is_empty() => {
                config.inputs.push(Input::new(source, text.as_bytes()));
                config.inputs.append(&mut ctx.inputs);
                Ok((config, ctx.absent))
            }
            _ => {
                errors.sort_by_key(|e| (e.line.unwrap_or(u64::MAX), e.column.unwrap_or(u64::MAX)));
                Err(ConfigErrors(errors))
            }
        }
    }
}

/// What `check` found in a valid routing file.
#[derive(Debug)]
pub struct Checked {
    /// One line per route ([`Route::describe`]).
    pub routes: Vec<String>,
    /// One line per inbound route ([`InboundRoute::describe`]).
    pub inbound: Vec<String>,
    /// What is valid but probably not meant ([`Config::warnings`]).
    pub warnings: Vec<String>,
    /// Key, secret and token files named by the file that do not exist yet, each with how to
    /// make it.
    pub absent: Vec<ConfigError>,
}

/// Builds the config from the tree; `None` (with errors in `ctx`) when some part is invalid.
fn compile(ctx: &mut Ctx, root: &yaml::Node, source: &Path) -> Option<Config> {
    let top = fields(ctx, root, "", &schema::names(schema::TOP))?;
    let listen = match top.get("listen") {
        Some(node) => socket_addr(ctx, node, "listen"),
        None => Some(DEFAULT_LISTEN),
    };
    let redis = match top.get("redis") {
        Some(node) => redis::compile(ctx, node),
        None => Some(RedisSettings::default()),
    };
    let websocket = websocket::compile(ctx, top.get("websocket"));
    let auth = auth::compile(ctx, top.get("auth"));
    let admin = auth::compile_admin(ctx, top.get("admin"), auth.as_ref());
    let shutdown_grace = match top.get("shutdown_grace") {
        Some(node) => yaml::duration(ctx, node, "shutdown_grace"),
        None => Some(DEFAULT_SHUTDOWN_GRACE),
    };
    let trusted_proxies = proxies::compile(ctx, top.get("trusted_proxies"));
    let console = match top.get("console") {
        Some(node) => yaml::boolean(ctx, node, "console"),
        None => Some(true),
    };
    let instance = match top.get("instance") {
        Some(node) => instance(ctx, node).map(Some),
        None => Some(None),
    };
    let routes = match top.get("routes") {
        Some(node) => route::compile_all(ctx, node),
        None => {
            ctx.error(
                root,
                "routes",
                "missing key `routes`: at least one route is required",
            );
            None
        }
    };
    let history_max_bytes = match top.get("history_max_bytes") {
        Some(node) => yaml::number_at_least(ctx, node, "history_max_bytes", 1)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        None => Some(DEFAULT_HISTORY_MAX_BYTES),
    };
    let inbound = match top.get("inbound") {
        Some(node) => inbound::compile_all(ctx, node),
        None => Some(Vec::new()),
    };
    if let (Some(redis), Some(routes), Some(node)) = (&redis, &routes, top.get("routes")) {
        presence::check_cluster(ctx, redis, node, routes);
    }
    if let (Some(auth), Some(routes), Some(node)) = (&auth, &routes, top.get("routes")) {
        auth::check_audiences(ctx, auth, node, routes);
    }
    if let (Some(auth), Some(inbound), Some(node)) = (&auth, &inbound, top.get("inbound")) {
        auth::check_allows(ctx, auth, node, inbound);
    }
    Some(Config {
        source: source.to_path_buf(),
        inputs: Vec::new(),
        listen: listen?,
        redis: redis?,
        websocket: websocket?,
        auth: auth?,
        admin: admin?,
        shutdown_grace: shutdown_grace?,
        trusted_proxies: trusted_proxies?,
        console: console?,
        instance: instance?,
        routes: routes?,
        history_max_bytes: history_max_bytes?,
        inbound: inbound?,
    })
}

/// An instance name: printable, without spaces, short enough for a log field.
fn instance(ctx: &mut Ctx, node: &yaml::Node) -> Option<String> {
    let name = yaml::string(ctx, node, "instance")?;
    let valid = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_graphic());
    if !valid {
        let message = "expected a name of 1 to 64 printable ASCII characters, without spaces";
        ctx.error(node, "instance", message);
        return None;
    }
    Some(name)
}

fn socket_addr(ctx: &mut Ctx, node: &yaml::Node, path: &str) -> Option<SocketAddr> {
    let text = yaml::string(ctx, node, path)?;
    match text.trim().parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let message = format!(
                "invalid address `{text}`: expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
            );
            ctx.error(node, path, message);
            None
        }
    }
}

/// Every problem found in a routing file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One line per error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One problem in a routing file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// The key path, e.g. `routes[1].topic` or `websocket.ping_interval` (route indexes
    /// count from 0); empty for file-level problems (unreadable file, YAML syntax).
    pub key: String,
    /// What is wrong, without a trailing period.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `{file}:{line}:{column}: {key}: {message}`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests;
