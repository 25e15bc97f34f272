//! The command line (README and `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The end of `--help` and of the manual page: where things are, and where to read on.
/// `Heading:` lines open a section of the manual page, `  NAME  text` lines are its items.
pub const AFTER_HELP: &str = "\
Files:
  /etc/redis-ws-bridge/bridge.yaml  The routing file, redis-ws-bridge.yaml(5)
  /etc/redis-ws-bridge/environment  Variables for ${VAR} in it, read by the systemd unit

Signals:
  SIGHUP  Reload the routing file (saving it does too)
  SIGTERM, SIGINT  Close every client with 1001 and exit within shutdown_grace

See also:
  redis-ws-bridge.yaml(5), /usr/share/doc/redis-ws-bridge/README.md
";

#[derive(Debug, Parser)]
#[command(
    name = "redis-ws-bridge",
    version,
    about = "Bridges Redis pub/sub to WebSocket clients, routed and authorised by one YAML file",
    long_about = "Bridges Redis pub/sub to WebSocket clients, routed and authorised by one YAML \
                  file: it subscribes to the channels and patterns the file's routes name, turns \
                  every message into a frame per route and topic, and delivers it to the \
                  connected clients that subscribed to the topic (or to every client, for \
                  `delivery: auto` routes) and that the route's audience admits.",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// The routing file [default: ./bridge.yaml if present, else /etc/redis-ws-bridge/bridge.yaml]
    #[arg(
        long,
        global = true,
        env = "REDIS_WS_BRIDGE_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// Log line format; text has no timestamps under journald, which adds its own
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `redis_ws_bridge=debug` [default: $RUST_LOG, else info]
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the daemon (the default)
    Run,
    /// Validate the routing file and print its routes; exit 0 when valid (a key or secret
    /// file it names that does not exist yet is a warning), 1 otherwise
    Check,
    /// List every key of the routing file, section by section: its type, its default and
    /// what it means
    Keys,
    /// Write the manual page redis-ws-bridge(1) to stdout, in roff (for packages)
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The routing file: `--config`, else `$REDIS_WS_BRIDGE_CONFIG`, else `./bridge.yaml` when
    /// it exists, else `/etc/redis-ws-bridge/bridge.yaml`.
    pub fn config_path(&self) -> PathBuf {
        if let Some(path) = &self.config {
            return path.clone();
        }
        let local = PathBuf::from("bridge.yaml");
        if local.exists() {
            local
        } else {
            PathBuf::from("/etc/redis-ws-bridge/bridge.yaml")
        }
    }
}
