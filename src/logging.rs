//! Log output: text or JSON lines on stderr, filtered like `RUST_LOG`, each naming the
//! bridge's instance.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// The instance name every line carries once [`name_instance`] has set it: several bridges
/// write to one journal or log collector, and a line must say which one wrote it without
/// every call site repeating it.
static INSTANCE: OnceLock<String> = OnceLock::new();

/// Names the instance on every line from now on (the first call only counts).
pub fn name_instance(instance: &str) {
    let _ = INSTANCE.set(instance.to_owned());
}

/// Installs the global subscriber. Under the journal (`JOURNAL_STREAM` is set by systemd),
/// text lines carry no timestamp, since journald stamps every line itself, and start with
/// the `<N>` syslog priority that journald turns into the entry's priority, so that
/// `journalctl -p warning` works.
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
            .map_event_format(JsonInstance)
            .try_init(),
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => builder
            .with_ansi(false)
            .fmt_fields(TextInstance(DefaultFields::new()))
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .try_init(),
        // Colours only on a terminal: not in files, pipes or log collectors.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(TextInstance(DefaultFields::new()))
            .try_init(),
    };
    result.map_err(|err| err.to_string())
}

/// Writes the syslog priority of the event's level (sd-daemon(3)) before the line `F` writes.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Text lines: `instance=NAME` after the event's own fields. The text formatters write an
/// event's fields through this, so the field lands inside the line, before its end, with the
/// colours of a terminal kept (the crate has no spans, whose fields would come here too).
struct TextInstance<N>(N);

impl<'writer, N: for<'a> FormatFields<'a>> FormatFields<'writer> for TextInstance<N> {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        self.0.format_fields(writer.by_ref(), fields)?;
        match INSTANCE.get() {
            Some(instance) => write!(writer, " instance={instance}"),
            None => Ok(()),
        }
    }
}

/// JSON lines: an `instance` member in the object `F` writes. The object is made in a buffer
/// and the member put before its closing brace (JSON lines carry no colours to lose).
struct JsonInstance<F>(F);

impl<S, N, F> FormatEvent<S, N> for JsonInstance<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(instance) = INSTANCE.get() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end();
        match body.strip_suffix('}') {
            Some(open) => {
                let name = serde_json::to_string(instance).map_err(|_| fmt::Error)?;
                let comma = if open.trim_end().ends_with('{') {
                    ""
                } else {
                    ","
                };
                writeln!(writer, "{open}{comma}\"instance\":{name}}}")
            }
            None => writer.write_str(&line),
        }
    }
}
