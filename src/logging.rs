//! Log output: text or JSON lines on stderr, filtered like `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. Text lines carry no timestamp when stderr goes to the
/// journal (`JOURNAL_STREAM` is set by systemd), since journald stamps every line itself.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|err| format!("invalid --log-level `{level}`: {err}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            builder.without_time().with_ansi(false).try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|err| err.to_string())
}
