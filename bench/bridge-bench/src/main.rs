//! bridge-bench: the load tool of BENCHMARKS.md.
//!
//! It opens N WebSocket clients against any server that speaks a configurable subscribe
//! frame (the bridge, or a peer), spreading their source addresses over 127.0.0.0/8 and
//! their sockets over several worker processes (each has its own open-file limit), publishes
//! through Redis or an HTTP publisher with a sequence number and a send time in every
//! payload, and reports deliveries/s, publish→receive latency, lost and duplicated messages,
//! and the server's CPU per delivered frame and RSS per connection, read from /proc.
//!
//! Every run prints one JSON line per measurement on stdout (and appends it to `--json-out`)
//! and a human summary on stderr. It is a tool, not a test: nothing in CI runs it.

mod jwt;
mod publish;
mod stats;
mod target;
mod worker;
mod wsclient;

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::publish::{Outgoing, Publisher};
use crate::stats::{Histogram, cpu_seconds, now_ns, rss_kib, sum_over};
use crate::worker::{ConnectReport, FromWorker, PhaseReport, ToWorker};

/// The environment variable through which a worker process receives its settings.
const WORKER_ENV: &str = "BRIDGE_BENCH_WORKER";

/// Sockets per worker process, under the 20,000 open-file limit of this kind of machine.
const CLIENTS_PER_PROCESS: usize = 18_000;

#[derive(Parser)]
#[command(
    name = "bridge-bench",
    version,
    about = "Load tool for redis-ws-bridge and its peers (see BENCHMARKS.md)",
    // A later occurrence of an option replaces an earlier one, so that bench/run.sh's
    // extra arguments override a scenario's.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open N connections and hold them idle: the server's RSS per connection.
    Idle {
        #[command(flatten)]
        clients: ClientArgs,
        #[command(flatten)]
        measure: MeasureArgs,
        /// How long to hold the connections after they are all open (server CPU while idle).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Open N subscribers and publish at one or more rates: deliveries/s, latency, loss,
    /// server CPU per delivered frame.
    Publish {
        #[command(flatten)]
        clients: ClientArgs,
        #[command(flatten)]
        measure: MeasureArgs,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Open N connections as fast as the server takes them: connections per second.
    Storm {
        #[command(flatten)]
        clients: ClientArgs,
        #[command(flatten)]
        measure: MeasureArgs,
    },
    /// (internal) a worker process holding a share of the clients.
    #[command(hide = true)]
    Worker,
}

/// Who the clients are and what they subscribe to; handed to the worker processes as is.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct ClientArgs {
    /// WebSocket URL (several, comma-separated: client i connects to URL i mod their
    /// number); placeholders: {token}, {i} (client number), {topic} (its first topic),
    /// {topics_csv} (its topics, comma-separated; Nchan's multiplexed channels).
    #[arg(long, default_value = "ws://127.0.0.1:18080/ws")]
    pub url: String,
    /// Number of WebSocket clients.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Worker processes holding the clients (default: one per 18,000 clients, so each stays
    /// under its own open-file limit).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Source addresses to spread the clients over (127.1.0.1, 127.1.0.2, …); 0 lets the
    /// kernel choose 127.0.0.1.
    #[arg(long, default_value_t = 250)]
    pub source_ips: u32,
    /// The subscribe frame: {topics} is the client's topics as a JSON array, {topic} one
    /// topic (one frame per topic), {topics_csv} the topics comma-separated; `none` sends
    /// nothing (servers that deliver without subscribing, or subscribe by URL).
    #[arg(long, default_value = r#"{"type":"subscribe","topics":{topics}}"#)]
    pub subscribe: String,
    /// A subscription counts once a frame containing this text arrives for each subscribe
    /// frame sent; `none` counts it as soon as it is sent (then use --settle).
    #[arg(long, default_value = r#""subscribed""#)]
    pub ack: String,
    /// Number of distinct topics.
    #[arg(long, default_value_t = 1)]
    pub topics: u64,
    /// Topics each client subscribes to: client i takes topics i·k … i·k+k−1 (mod --topics).
    #[arg(long, default_value_t = 1)]
    pub topics_per_client: usize,
    /// Topic name template; {id} is the topic number.
    #[arg(long, default_value = "job:{id}")]
    pub topic: String,
    /// Handshakes in flight at once, over all worker processes.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for subscription acks once every client is connected.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// Sign one HS256 JWT per client with this secret (sub = user{i}); use {token} in --url.
    #[arg(long, env = "BENCH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Extra claims merged into every token, as a JSON object (e.g. '{"roles":["user"]}').
    #[arg(long)]
    pub jwt_claims: Option<String>,
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub jwt_ttl: Duration,
    /// One fixed token for every client instead of --jwt-secret.
    #[arg(long)]
    pub token: Option<String>,
    /// Offer permessage-deflate (no context takeover either way) and inflate what comes
    /// compressed.
    #[arg(long)]
    pub deflate: bool,
}

/// What fills a published payload.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PayloadShape {
    /// One repeated byte.
    Pad,
    /// JSON analytics events, which compress like real traffic.
    Events,
}

/// What is measured about the server, and where results go.
#[derive(Args, Clone, Debug)]
struct MeasureArgs {
    /// The server's process id(s), comma-separated (nginx: master and workers): CPU and RSS
    /// are summed over them.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    server_pid: Vec<u32>,
    /// The CPU core the server is pinned to: its whole busy time (softirq included, which
    /// the kernel may hand to ksoftirqd and so not charge to the server) and steal are
    /// reported too.
    #[arg(long)]
    server_core: Option<u32>,
    /// redis-server's process id, to report its CPU next to the server's.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Name of the target in the results (bridge, node, python, nchan, …).
    #[arg(long, default_value = "server")]
    label: String,
    /// Name of the scenario in the results.
    #[arg(long, default_value = "")]
    scenario: String,
    /// Append each JSON result line to this file as well.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Quiet time after connecting, before measuring (lets RSS and subscriptions settle).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// The bridge's /metrics URL: reload, drop and slow-client counters are reported.
    #[arg(long)]
    metrics_url: Option<String>,
}

#[derive(Args, Clone, Debug)]
struct PublishArgs {
    /// redis://HOST:PORT, or an HTTP publisher URL with {channel} (Nchan:
    /// http://127.0.0.1:18083/pub?id={channel}).
    #[arg(long, default_value = "redis://127.0.0.1:16379")]
    publish: String,
    /// Channel template; {id} is the topic number (default: the topic template).
    #[arg(long)]
    channel: Option<String>,
    /// Messages per second, or a comma-separated list of steps (each step is measured on
    /// the same connections, one JSON line each).
    #[arg(long, value_delimiter = ',', default_value = "100", action = clap::ArgAction::Set)]
    rate: Vec<f64>,
    /// How long each step publishes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Publish at the first rate for this long before measuring (JIT, caches, allocator).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// What fills the payload: `pad` (one repeated byte) or `events` (JSON analytics events,
    /// which compress like real traffic).
    #[arg(long, value_enum, default_value_t = PayloadShape::Pad)]
    payload_shape: PayloadShape,
    /// After publishing, wait this long without progress before counting what is missing as
    /// lost.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Give up the drain after this long in any case.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain_max: Duration,
    /// A step fails when its p99 latency is above this (besides loss, duplicates,
    /// disconnections and a publish rate under 95 % of the target).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    max_p99: Duration,
    /// Stop at the first failed step (the search for the highest rate without loss).
    #[arg(long)]
    stop_on_fail: bool,
    /// Rewrite this file (atomically, by rename) every --reload-every while publishing.
    #[arg(long)]
    reload_file: Option<PathBuf>,
    /// Send SIGHUP to the server every --reload-every while publishing.
    #[arg(long)]
    reload_sighup: bool,
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    reload_every: Duration,
}

fn main() -> ExitCode {
    if let Ok(settings) = std::env::var(WORKER_ENV) {
        return match run_worker(&settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bridge-bench worker: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    stats::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bridge-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Mode::Idle {
                clients,
                measure,
                hold,
            } => idle(clients, measure, hold).await,
            Mode::Publish {
                clients,
                measure,
                publish,
            } => run_publish(clients, measure, publish).await,
            Mode::Storm { clients, measure } => storm(clients, measure).await,
            Mode::Worker => Err(format!("workers are started with {WORKER_ENV} set")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bridge-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WorkerSettings {
    clients: ClientArgs,
    index: usize,
    processes: usize,
}

fn run_worker(settings: &str) -> Result<(), String> {
    let settings: WorkerSettings = serde_json::from_str(settings).map_err(|e| e.to_string())?;
    worker::run(settings.clients, settings.index, settings.processes)
}

fn validate(clients: &ClientArgs) -> Result<(), String> {
    target::Target::parse(&clients.url)?;
    if let Some(claims) = &clients.jwt_claims
        && !matches!(serde_json::from_str(claims), Ok(Value::Object(_)))
    {
        return Err("--jwt-claims must be a JSON object".into());
    }
    if clients.url.contains("{token}") && clients.token.is_none() && clients.jwt_secret.is_none() {
        return Err("--url has {token}: give --jwt-secret or --token".into());
    }
    if clients.topics == 0 || clients.topics_per_client == 0 {
        return Err("--topics and --topics-per-client must be at least 1".into());
    }
    Ok(())
}

/// The worker processes and the pipes to them (their answers are read by one plain thread
/// per worker and handed over).
struct Workers {
    children: Vec<(Child, ChildStdin, UnboundedReceiver<String>)>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Workers {
    fn spawn(clients: &ClientArgs) -> Result<Workers, String> {
        let processes = clients
            .processes
            .unwrap_or_else(|| clients.clients.div_ceil(CLIENTS_PER_PROCESS))
            .clamp(1, clients.clients.max(1));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut children = Vec::new();
        for index in 0..processes {
            let settings = serde_json::to_string(&WorkerSettings {
                clients: clients.clone(),
                index,
                processes,
            })
            .map_err(|e| e.to_string())?;
            let mut child = Command::new(&exe)
                .env(WORKER_ENV, settings)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start a worker: {e}"))?;
            let stdin = child.stdin.take().ok_or("no worker stdin")?;
            let stdout = child.stdout.take().ok_or("no worker stdout")?;
            let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            });
            children.push((child, stdin, lines));
        }
        Ok(Workers { children })
    }

    fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(|(child, _, _)| child.id())
            .collect()
    }

    /// Sends `command` to every worker and collects one answer from each.
    async fn ask(&mut self, command: &ToWorker) -> Result<Vec<FromWorker>, String> {
        let mut line = serde_json::to_string(command).map_err(|e| e.to_string())?;
        line.push('\n');
        for (_, stdin, _) in &mut self.children {
            // A short line into a pipe: does not block in practice.
            stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("worker gone: {e}"))?;
        }
        let mut answers = Vec::new();
        for (_, _, lines) in &mut self.children {
            let answer = lines
                .recv()
                .await
                .ok_or("a worker exited (see its error above)")?;
            answers.push(serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?);
        }
        Ok(answers)
    }

    async fn connect(&mut self) -> Result<ConnectReport, String> {
        let mut total = ConnectReport {
            first_start_ns: u64::MAX,
            ..ConnectReport::default()
        };
        for answer in self.ask(&ToWorker::Connect).await? {
            let FromWorker::Connected(report) = answer else {
                return Err("unexpected worker answer".into());
            };
            total.attempted += report.attempted;
            total.connected += report.connected;
            total.subscribed += report.subscribed;
            for (reason, count) in report.failures {
                *total.failures.entry(reason).or_default() += count;
            }
            total.latency.merge(&report.latency);
            total.first_start_ns = total.first_start_ns.min(report.first_start_ns);
            total.last_end_ns = total.last_end_ns.max(report.last_end_ns);
            total.last_ack_ns = total.last_ack_ns.max(report.last_ack_ns);
            total.fd_limit = report.fd_limit;
        }
        Ok(total)
    }

    async fn count(&mut self, last_seq: u64) -> Result<(u64, u64), String> {
        let mut received = 0;
        let mut expected = 0;
        for answer in self.ask(&ToWorker::Count { last_seq }).await? {
            if let FromWorker::Count {
                received: r,
                expected: e,
                ..
            } = answer
            {
                received += r;
                expected += e;
            }
        }
        Ok((received, expected))
    }

    async fn report(&mut self, last_seq: u64) -> Result<PhaseReport, String> {
        let mut total = PhaseReport::default();
        for answer in self.ask(&ToWorker::Report { last_seq }).await? {
            let FromWorker::Report(report) = answer else {
                return Err("unexpected worker answer".into());
            };
            total.received += report.received;
            total.expected += report.expected;
            total.duplicates += report.duplicates;
            total.late += report.late;
            total.other_frames += report.other_frames;
            total.wire_bytes += report.wire_bytes;
            total.open += report.open;
            for (reason, count) in report.closed {
                *total.closed.entry(reason).or_default() += count;
            }
            total.latency.merge(&report.latency);
            total.last_rx_ns = total.last_rx_ns.max(report.last_rx_ns);
        }
        Ok(total)
    }

    async fn exit(mut self) {
        let line = serde_json::to_string(&ToWorker::Exit).unwrap_or_default() + "\n";
        for (_, stdin, _) in &mut self.children {
            let _ = stdin
                .write_all(line.as_bytes())
                .and_then(|()| stdin.flush());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for (child, _, _) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// CPU seconds of the server, Redis and the tool (this process and its workers) at an instant.
#[derive(Clone, Copy, Default)]
struct Cpu {
    server: Option<f64>,
    /// The same, split into user and system time, with the page faults.
    server_times: Option<stats::ProcessTimes>,
    core: Option<stats::CoreTimes>,
    redis: Option<f64>,
    tool: f64,
    at_ns: u64,
}

fn cpu_now(measure: &MeasureArgs, workers: &[u32]) -> Cpu {
    let tool = cpu_seconds(std::process::id()).unwrap_or(0.0)
        + workers
            .iter()
            .filter_map(|pid| cpu_seconds(*pid))
            .sum::<f64>();
    let server_times = if measure.server_pid.is_empty() {
        None
    } else {
        sum_over(&measure.server_pid, stats::process_times)
    };
    Cpu {
        server: server_times.map(|times| times.user + times.system),
        server_times,
        redis: measure.redis_pid.and_then(cpu_seconds),
        core: measure.server_core.and_then(stats::core_times),
        tool,
        at_ns: now_ns(),
    }
}

fn server_rss(measure: &MeasureArgs) -> Option<u64> {
    if measure.server_pid.is_empty() {
        None
    } else {
        sum_over(&measure.server_pid, rss_kib)
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn latency_json(histogram: &Histogram) -> Value {
    json!({
        "p50": round(ms(histogram.quantile(0.5)), 3),
        "p99": round(ms(histogram.quantile(0.99)), 3),
        "p999": round(ms(histogram.quantile(0.999)), 3),
        "max": round(ms(histogram.max), 3),
        "mean": round(histogram.mean() / 1e6, 3),
    })
}

/// The facts every result line carries.
fn header(
    kind: &str,
    clients: &ClientArgs,
    measure: &MeasureArgs,
) -> serde_json::Map<String, Value> {
    let mut line = serde_json::Map::new();
    line.insert("tool".into(), json!("bridge-bench"));
    line.insert("kind".into(), json!(kind));
    line.insert("scenario".into(), json!(measure.scenario));
    line.insert("target".into(), json!(measure.label));
    line.insert(
        "time".into(),
        json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
    );
    line.insert("loadavg_1m".into(), json!(stats::loadavg()));
    line.insert("clients".into(), json!(clients.clients));
    line.insert("topics".into(), json!(clients.topics));
    line.insert("topics_per_client".into(), json!(clients.topics_per_client));
    line
}

fn emit(measure: &MeasureArgs, line: serde_json::Map<String, Value>) -> Result<(), String> {
    let text = Value::Object(line).to_string();
    println!("{text}");
    if let Some(path) = &measure.json_out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(file, "{text}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn connect_json(report: &ConnectReport) -> Value {
    let seconds = report.last_end_ns.saturating_sub(report.first_start_ns) as f64 / 1e9;
    let acked = (report.last_ack_ns > 0).then(|| {
        round(
            report.last_ack_ns.saturating_sub(report.first_start_ns) as f64 / 1e9,
            3,
        )
    });
    json!({
        "attempted": report.attempted,
        "connected": report.connected,
        "subscribed": report.subscribed,
        "failures": report.failures,
        "seconds": round(seconds, 3),
        // From the first connect to the last acknowledgement (the subscribe's answer, or the
        // frame that --ack names).
        "all_acked_s": acked,
        "per_second": if seconds > 0.0 { round(report.connected as f64 / seconds, 1) } else { 0.0 },
        "latency_ms": latency_json(&report.latency),
        "worker_fd_limit": report.fd_limit,
    })
}

fn describe_connect(label: &str, report: &ConnectReport) {
    let seconds = report.last_end_ns.saturating_sub(report.first_start_ns) as f64 / 1e9;
    eprintln!(
        "[{label}] connected {}/{} (subscribed {}) in {seconds:.2}s{}",
        report.connected,
        report.attempted,
        report.subscribed,
        if report.failures.is_empty() {
            String::new()
        } else {
            format!(", failures {:?}", report.failures)
        }
    );
}

async fn open_clients(
    clients: &ClientArgs,
    measure: &MeasureArgs,
) -> Result<(Workers, ConnectReport), String> {
    validate(clients)?;
    let mut workers = Workers::spawn(clients)?;
    let report = workers.connect().await?;
    describe_connect(&measure.label, &report);
    if report.connected == 0 {
        workers.exit().await;
        return Err(format!(
            "no client could connect to {} ({:?})",
            clients.url, report.failures
        ));
    }
    Ok((workers, report))
}

async fn idle(clients: ClientArgs, measure: MeasureArgs, hold: Duration) -> Result<(), String> {
    let rss_before = server_rss(&measure);
    let (mut workers, connected) = open_clients(&clients, &measure).await?;
    tokio::time::sleep(measure.settle).await;
    let worker_pids = workers.pids();
    let rss_open = server_rss(&measure);
    let cpu_start = cpu_now(&measure, &worker_pids);
    tokio::time::sleep(hold).await;
    let cpu_end = cpu_now(&measure, &worker_pids);
    let rss_end = server_rss(&measure);
    let phase = workers.report(0).await?;
    workers.exit().await;
    let n = connected.connected.max(1) as f64;
    let per_connection = |rss: Option<u64>| {
        rss.zip(rss_before)
            .map(|(after, before)| round((after as f64 - before as f64) / n, 2))
    };
    let mut line = header("idle", &clients, &measure);
    line.insert("connect".into(), connect_json(&connected));
    line.insert("open_at_end".into(), json!(phase.open));
    line.insert("closed".into(), json!(phase.closed));
    line.insert("hold_s".into(), json!(hold.as_secs_f64()));
    line.insert(
        "server".into(),
        json!({
            "rss_before_kib": rss_before,
            "rss_open_kib": rss_open,
            "rss_end_kib": rss_end,
            "rss_per_conn_kib": per_connection(rss_end),
            "rss_per_conn_kib_after_settle": per_connection(rss_open),
            "idle_cpu_s": cpu_end.server.zip(cpu_start.server).map(|(a, b)| round(a - b, 3)),
        }),
    );
    eprintln!(
        "[{}] idle: {} open, server RSS {:?} → {:?} KiB: {:?} KiB per connection",
        measure.label,
        phase.open,
        rss_before,
        rss_end,
        per_connection(rss_end)
    );
    emit(&measure, line)
}

async fn storm(clients: ClientArgs, measure: MeasureArgs) -> Result<(), String> {
    let rss_before = server_rss(&measure);
    let cpu_start = cpu_now(&measure, &[]);
    let (workers, connected) = open_clients(&clients, &measure).await?;
    let cpu_end = cpu_now(&measure, &workers.pids());
    let rss_after = server_rss(&measure);
    workers.exit().await;
    let n = connected.connected.max(1) as f64;
    let mut line = header("storm", &clients, &measure);
    line.insert("connect".into(), connect_json(&connected));
    line.insert(
        "server".into(),
        json!({
            "cpu_s": cpu_end.server.zip(cpu_start.server).map(|(a, b)| round(a - b, 3)),
            "cpu_us_per_connection": cpu_end.server.zip(cpu_start.server).map(|(a, b)| round((a - b) * 1e6 / n, 1)),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
        }),
    );
    let seconds = connected
        .last_end_ns
        .saturating_sub(connected.first_start_ns) as f64
        / 1e9;
    eprintln!(
        "[{}] storm: {} connections in {seconds:.2}s = {:.0}/s, handshake p50 {:.2} ms p99 {:.2} ms",
        measure.label,
        connected.connected,
        connected.connected as f64 / seconds.max(1e-9),
        ms(connected.latency.quantile(0.5)),
        ms(connected.latency.quantile(0.99)),
    );
    emit(&measure, line)
}

/// Messages published in one step.
struct Published {
    first_seq: u64,
    last_seq: u64,
    errors: u64,
    started_ns: u64,
    ended_ns: u64,
}

/// Publishes at `rate` for `duration`, numbering messages from `next_seq`; a message is
/// stamped when its batch leaves, so a publisher that falls behind shows as a lower
/// achieved rate, not as latency.
async fn publish_for(
    publisher: &mut Publisher,
    args: &PublishArgs,
    topic_template: &str,
    topics: u64,
    rate: f64,
    duration: Duration,
    next_seq: &mut u64,
) -> Published {
    let channel_template = args.channel.as_deref().unwrap_or(topic_template);
    let started = tokio::time::Instant::now();
    let started_ns = now_ns();
    let first_seq = *next_seq;
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut sent = 0u64;
    let mut errors = 0;
    let mut batch = Vec::new();
    while sent < total {
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate).floor() as u64 + 1).min(total);
        if due <= sent {
            let next = started + Duration::from_secs_f64((sent as f64) / rate);
            tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
            continue;
        }
        let stamp = now_ns();
        batch.clear();
        for _ in sent..due {
            let seq = *next_seq;
            *next_seq += 1;
            let topic = stats::topic_of(seq, topics);
            batch.push(Outgoing {
                channel: channel_template.replace("{id}", &topic.to_string()),
                payload: if args.payload_shape == PayloadShape::Events {
                    publish::events_payload(seq, stamp, args.payload_bytes)
                } else {
                    publish::payload(seq, stamp, args.payload_bytes)
                },
            });
        }
        if let Err(err) = publisher.publish(&batch).await {
            if errors == 0 {
                eprintln!("publish failed: {err}");
            }
            errors += batch.len() as u64;
        }
        sent = due;
        if started.elapsed() > duration * 3 {
            eprintln!("publisher far behind: stopping the step early");
            break;
        }
    }
    Published {
        first_seq,
        last_seq: *next_seq - 1,
        errors,
        started_ns,
        ended_ns: now_ns(),
    }
}

/// Rewrites the routing file (and/or sends SIGHUP) every `every` until cancelled; returns how
/// many times. The original text is restored at the end.
async fn reloader(
    file: Option<PathBuf>,
    sighup: Vec<u32>,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let original = file.as_ref().and_then(|f| std::fs::read(f).ok());
    let mut done = 0;
    let mut stop = stop;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        if let (Some(path), Some(original)) = (&file, &original) {
            let mut text = original.clone();
            text.extend_from_slice(format!("\n# bridge-bench reload {done}\n").as_bytes());
            let temporary = path.with_extension(format!("bench-tmp-{done}"));
            if std::fs::write(&temporary, &text).is_ok() {
                let _ = std::fs::rename(&temporary, path);
            }
        }
        for pid in &sighup {
            // SAFETY: kill(2) with a pid given on the command line.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGHUP) };
        }
        done += 1;
    }
    if let (Some(path), Some(original)) = (&file, &original) {
        let temporary = path.with_extension("bench-tmp-restore");
        if std::fs::write(&temporary, original).is_ok() {
            let _ = std::fs::rename(&temporary, path);
        }
    }
    done
}

/// Fetches a Prometheus text page over plain HTTP.
async fn scrape(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

/// The sum of the samples of `name` (with any labels containing `label`).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let matches = series == name
                || (series.starts_with(name)
                    && series[name.len()..].starts_with('{')
                    && series.contains(label));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

const WATCHED_METRICS: &[(&str, &str, &str)] = &[
    ("reloads_ok", "bridge_config_reloads_total", "result=\"ok\""),
    (
        "reloads_error",
        "bridge_config_reloads_total",
        "result=\"error\"",
    ),
    ("dropped", "bridge_messages_dropped_total", ""),
    (
        "slow_client_disconnects",
        "bridge_slow_client_disconnects_total",
        "",
    ),
];

fn metrics_delta(before: Option<&str>, after: Option<&str>) -> Option<Value> {
    let (before, after) = (before?, after?);
    let mut delta = serde_json::Map::new();
    for (key, name, label) in WATCHED_METRICS {
        delta.insert(
            (*key).into(),
            json!(metric(after, name, label) - metric(before, name, label)),
        );
    }
    Some(Value::Object(delta))
}

async fn run_publish(
    clients: ClientArgs,
    measure: MeasureArgs,
    args: PublishArgs,
) -> Result<(), String> {
    if args.rate.iter().any(|rate| *rate <= 0.0) {
        return Err("--rate must be positive".into());
    }
    let rss_before = server_rss(&measure);
    let mut publisher = Publisher::connect(&args.publish).await?;
    let (mut workers, connected) = open_clients(&clients, &measure).await?;
    tokio::time::sleep(measure.settle).await;
    let rss_open = server_rss(&measure);
    let worker_pids = workers.pids();
    let mut next_seq = 1u64;
    if !args.warmup.is_zero() {
        let first = next_seq;
        workers.ask(&ToWorker::Phase { first_seq: first }).await?;
        let published = publish_for(
            &mut publisher,
            &args,
            &clients.topic,
            clients.topics,
            args.rate[0],
            args.warmup,
            &mut next_seq,
        )
        .await;
        drain(&mut workers, published.last_seq, &args).await?;
        eprintln!("[{}] warm-up done", measure.label);
    }
    let mut best: Option<Value> = None;
    for (step, rate) in args.rate.iter().copied().enumerate() {
        workers
            .ask(&ToWorker::Phase {
                first_seq: next_seq,
            })
            .await?;
        let metrics_before = match &measure.metrics_url {
            Some(url) => scrape(url).await,
            None => None,
        };
        let cpu_start = cpu_now(&measure, &worker_pids);
        let reloading = args.reload_file.is_some() || args.reload_sighup;
        let (stop_reloads, stop_rx) = tokio::sync::watch::channel(false);
        let reloads = reloading.then(|| {
            tokio::task::spawn(reloader(
                args.reload_file.clone(),
                if args.reload_sighup {
                    measure.server_pid.clone()
                } else {
                    Vec::new()
                },
                args.reload_every,
                stop_rx,
            ))
        });
        let published = publish_for(
            &mut publisher,
            &args,
            &clients.topic,
            clients.topics,
            rate,
            args.duration,
            &mut next_seq,
        )
        .await;
        let _ = stop_reloads.send(true);
        let reload_count = match reloads {
            Some(task) => Some(task.await.unwrap_or(0)),
            None => None,
        };
        let drained = drain(&mut workers, published.last_seq, &args).await?;
        let cpu_end = cpu_now(&measure, &worker_pids);
        let metrics_after = match &measure.metrics_url {
            Some(url) => scrape(url).await,
            None => None,
        };
        let report = workers.report(published.last_seq).await?;
        let line = step_result(
            &clients,
            &measure,
            &args,
            StepFacts {
                step,
                rate,
                published: &published,
                report: &report,
                drained,
                cpu_start,
                cpu_end,
                connected: &connected,
                rss_before,
                rss_open,
                reloads: reload_count,
                metrics: metrics_delta(metrics_before.as_deref(), metrics_after.as_deref()),
            },
        );
        let ok = line.get("ok") == Some(&json!(true));
        if ok {
            best = Some(Value::Object(line.clone()));
        }
        emit(&measure, line)?;
        if !ok && args.stop_on_fail {
            break;
        }
    }
    if args.rate.len() > 1 {
        let mut line = header("max_rate", &clients, &measure);
        let field = |name: &str| best.as_ref().and_then(|b| b.get(name)).cloned();
        line.insert("rate".into(), json!(field("rate_target")));
        line.insert("deliveries_per_s".into(), json!(field("deliveries_per_s")));
        line.insert("latency_ms".into(), json!(field("latency_ms")));
        line.insert("server".into(), json!(field("server")));
        eprintln!(
            "[{}] highest rate without loss: {} msg/s ({} deliveries/s)",
            measure.label,
            field("rate_target").unwrap_or(Value::Null),
            field("deliveries_per_s").unwrap_or(Value::Null)
        );
        emit(&measure, line)?;
    }
    workers.exit().await;
    Ok(())
}

/// Waits until every expected delivery arrived, or nothing arrived for `--drain`; returns
/// whether everything arrived.
async fn drain(workers: &mut Workers, last_seq: u64, args: &PublishArgs) -> Result<bool, String> {
    let started = tokio::time::Instant::now();
    let mut last_progress = started;
    let mut last_received = u64::MAX;
    loop {
        let (received, expected) = workers.count(last_seq).await?;
        if received >= expected {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if received != last_received {
            last_received = received;
            last_progress = now;
        } else if now - last_progress >= args.drain {
            return Ok(false);
        }
        if now - started >= args.drain_max {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct StepFacts<'a> {
    step: usize,
    rate: f64,
    published: &'a Published,
    report: &'a PhaseReport,
    drained: bool,
    cpu_start: Cpu,
    cpu_end: Cpu,
    connected: &'a ConnectReport,
    rss_before: Option<u64>,
    rss_open: Option<u64>,
    reloads: Option<u64>,
    metrics: Option<Value>,
}

fn step_result(
    clients: &ClientArgs,
    measure: &MeasureArgs,
    args: &PublishArgs,
    facts: StepFacts<'_>,
) -> serde_json::Map<String, Value> {
    let StepFacts {
        step,
        rate,
        published,
        report,
        drained,
        cpu_start,
        cpu_end,
        connected,
        rss_before,
        rss_open,
        reloads,
        metrics,
    } = facts;
    let count = published.last_seq + 1 - published.first_seq;
    let publish_s = published.ended_ns.saturating_sub(published.started_ns) as f64 / 1e9;
    let achieved = count as f64 / args.duration.as_secs_f64().max(publish_s);
    let wall_s = report
        .last_rx_ns
        .max(published.ended_ns)
        .saturating_sub(published.started_ns) as f64
        / 1e9;
    let delivered = report.received;
    let lost = report.expected.saturating_sub(report.received);
    let deliveries_per_s = if wall_s > 0.0 {
        delivered as f64 / wall_s
    } else {
        0.0
    };
    let measured_s = (cpu_end.at_ns - cpu_start.at_ns) as f64 / 1e9;
    let server_cpu = cpu_end.server.zip(cpu_start.server).map(|(a, b)| a - b);
    let redis_cpu = cpu_end.redis.zip(cpu_start.redis).map(|(a, b)| a - b);
    let tool_cpu = cpu_end.tool - cpu_start.tool;
    let per_frame = |cpu: f64| {
        if delivered > 0 {
            round(cpu * 1e6 / delivered as f64, 3)
        } else {
            0.0
        }
    };
    let closed: u64 = report.closed.values().sum();
    let p99 = report.latency.quantile(0.99);
    let mut reasons = Vec::new();
    if lost > 0 {
        reasons.push(format!("lost {lost}"));
    }
    if report.duplicates > 0 {
        reasons.push(format!("{} duplicates", report.duplicates));
    }
    if closed > 0 {
        reasons.push(format!("{closed} connections closed"));
    }
    if published.errors > 0 {
        reasons.push(format!("{} publish errors", published.errors));
    }
    if p99 > args.max_p99.as_nanos() as u64 {
        reasons.push(format!("p99 {:.1} ms", ms(p99)));
    }
    if achieved < 0.95 * rate {
        reasons.push(format!("published only {achieved:.0}/s"));
    }
    if !drained && lost == 0 {
        reasons.push("drain timed out".into());
    }
    let tool_busy = if measured_s > 0.0 {
        tool_cpu / measured_s
    } else {
        0.0
    };
    let n = connected.connected.max(1) as f64;
    let mut line = header("publish", clients, measure);
    line.insert("step".into(), json!(step));
    line.insert("ok".into(), json!(reasons.is_empty()));
    line.insert("fail_reasons".into(), json!(reasons));
    line.insert("connected".into(), json!(connected.connected));
    line.insert("subscribed".into(), json!(connected.subscribed));
    line.insert("rate_target".into(), json!(rate));
    line.insert("rate_achieved".into(), json!(round(achieved, 1)));
    line.insert("duration_s".into(), json!(args.duration.as_secs_f64()));
    line.insert("payload_bytes".into(), json!(args.payload_bytes));
    line.insert(
        "payload_shape".into(),
        json!(match args.payload_shape {
            PayloadShape::Pad => "pad",
            PayloadShape::Events => "events",
        }),
    );
    line.insert("published".into(), json!(count));
    line.insert("publish_errors".into(), json!(published.errors));
    line.insert("expected".into(), json!(report.expected));
    line.insert("received".into(), json!(delivered));
    line.insert("lost".into(), json!(lost));
    line.insert("duplicates".into(), json!(report.duplicates));
    // What a delivered frame cost on the wire (the measurement phase's bytes, compressed or
    // not, pings and other frames included).
    line.insert(
        "wire_bytes_per_frame".into(),
        json!((report.wire_bytes as f64 / delivered.max(1) as f64).round()),
    );
    line.insert("late".into(), json!(report.late));
    line.insert("closed".into(), json!(report.closed));
    line.insert("deliveries_per_s".into(), json!(round(deliveries_per_s, 1)));
    line.insert("latency_ms".into(), latency_json(&report.latency));
    line.insert(
        "server".into(),
        json!({
            "cpu_s": server_cpu.map(|c| round(c, 3)),
            "cpu_us_per_frame": server_cpu.map(per_frame),
            "cpu_busy": server_cpu.map(|c| round(c / measured_s.max(1e-9), 3)),
            // The delivery rate one full core would sustain at this cost per frame.
            "capacity_est_per_s": server_cpu
                .filter(|c| *c > 0.0 && delivered > 0)
                .map(|c| round(delivered as f64 / c, 0)),
            "rss_kib": rss_open,
            "rss_per_conn_kib": rss_open.zip(rss_before).map(|(a, b)| round((a as f64 - b as f64) / n, 2)),
        }),
    );
    if let (Some(end), Some(start), Some(server)) = (
        cpu_end.server_times,
        cpu_start.server_times,
        line.get_mut("server").and_then(Value::as_object_mut),
    ) {
        // Where a cost lies: a heap that grows is paid in system time, a page fault each.
        server.insert(
            "user_us_per_frame".into(),
            json!(per_frame(end.user - start.user)),
        );
        server.insert(
            "system_us_per_frame".into(),
            json!(per_frame(end.system - start.system)),
        );
        server.insert(
            "minor_faults_per_frame".into(),
            json!(round(
                (end.minor_faults - start.minor_faults) / delivered.max(1) as f64,
                4
            )),
        );
    }
    if let (Some(end), Some(start)) = (cpu_end.core, cpu_start.core) {
        let busy = end.busy - start.busy;
        line.insert(
            "server_core".into(),
            json!({
                "busy_s": round(busy, 3),
                "us_per_frame": per_frame(busy),
                "busy": round(busy / measured_s.max(1e-9), 3),
                "softirq_s": round(end.softirq - start.softirq, 3),
                "steal_s": round(end.steal - start.steal, 3),
            }),
        );
    }
    line.insert("redis_cpu_s".into(), json!(redis_cpu.map(|c| round(c, 3))));
    line.insert(
        "tool".into(),
        json!({
            "cpu_s": round(tool_cpu, 3),
            "cpu_us_per_frame": per_frame(tool_cpu),
            "cpu_busy": round(tool_busy, 3),
            "saturated": tool_busy > 0.9,
        }),
    );
    if let Some(reloads) = reloads {
        line.insert("reloads_sent".into(), json!(reloads));
    }
    if let Some(metrics) = metrics {
        line.insert("server_metrics".into(), metrics);
    }
    eprintln!(
        "[{}] step {step}: {rate} msg/s → {achieved:.0}/s published, {delivered}/{} delivered \
         ({:.0}/s), lost {lost}, dup {}, p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms max {:.2} ms, \
         server {} µs/frame (busy {}), core {} µs/frame, tool {:.2} µs/frame (busy {tool_busy:.2}){}{}",
        measure.label,
        report.expected,
        deliveries_per_s,
        report.duplicates,
        ms(report.latency.quantile(0.5)),
        ms(p99),
        ms(report.latency.quantile(0.999)),
        ms(report.latency.max),
        server_cpu.map_or("?".into(), |c| format!("{:.2}", per_frame(c))),
        server_cpu.map_or("?".into(), |c| format!("{:.2}", c / measured_s.max(1e-9))),
        cpu_end
            .core
            .zip(cpu_start.core)
            .map_or("?".into(), |(e, s)| format!(
                "{:.2}",
                per_frame(e.busy - s.busy)
            )),
        per_frame(tool_cpu),
        reloads.map_or(String::new(), |r| format!(", {r} reloads")),
        if line.get("ok") == Some(&json!(true)) {
            String::new()
        } else {
            format!(" FAILED: {}", line["fail_reasons"])
        },
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_label() {
        let text = "# HELP x\nbridge_config_reloads_total{result=\"ok\"} 3\n\
                    bridge_config_reloads_total{result=\"error\"} 1\n\
                    bridge_messages_dropped_total{reason=\"slow_client\"} 2\n\
                    bridge_messages_dropped_total{reason=\"queue_full\"} 5\n";
        assert_eq!(
            metric(text, "bridge_config_reloads_total", "result=\"ok\""),
            3.0
        );
        assert_eq!(metric(text, "bridge_messages_dropped_total", ""), 7.0);
        assert_eq!(metric(text, "bridge_connections", ""), 0.0);
    }
}
