//! The command line (README and `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "redis-ws-bridge",
    version,
    about = "Bridges Redis pub/sub to WebSocket clients, routed and authorised by one YAML file"
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
    /// Validate the routing file and print its routes; exit 0 when valid, 1 otherwise
    Check,
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
