//! What operators monitor with: the alert rules of packaging/prometheus/ (promtool's checks
//! and unit tests on synthetic series, then a real Prometheus scraping a real bridge and
//! evaluating the shipped rules, their `for:` shortened to seconds: killing Redis fires the
//! Redis alert) and the Grafana dashboard of packaging/grafana/ (every
//! query's metrics exist in what a running bridge exports, and a real Prometheus accepts
//! every query).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    Bridge, RedisServer, WAIT, config, http_get, pick_port, repo, wait_until_async,
};

const ALERTS: &str = "packaging/prometheus/alerts.yml";
const ALERT_TESTS: &str = "tests/prometheus/alerts.test.yml";
const DASHBOARD: &str = "packaging/grafana/redis-ws-bridge.json";

const ROUTES: &str = r#"
    - name: jobs
      pattern: "job:*"
      topic: "job:{1}"
    - name: events
      channel: app:events
      delivery: auto
    "#;

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); scripts/test.sh installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{text}",
        output.status
    );
    text
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).expect(path);
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The alerting rules of the shipped file.
fn alert_rules() -> Vec<Value> {
    let file = yaml(ALERTS);
    let rules: Vec<Value> = file["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").clone())
        .collect();
    assert!(rules.len() >= 9, "{rules:?}");
    rules
}

fn alert_names() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .map(|rule| rule["alert"].as_str().expect("an alerting rule").to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join(ALERTS)));
    assert!(checked.contains("SUCCESS"), "{checked}");
    // Relative paths in the test file are taken from its directory.
    let tested = run(Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(repo().join("tests/prometheus")));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a summary and a runbook entry that exists, and a unit test in which it
    // fires (promtool passes a file that tests nothing).
    let tests = yaml(ALERT_TESTS);
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let runbook = readme
        .split_once("\n### Alerts\n")
        .map(|(_, rest)| rest.split("\n### ").next().unwrap_or(rest))
        .expect("a `### Alerts` section in README.md");
    let firing: BTreeSet<&str> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|test| test["alert_rule_test"].as_array().expect("alert_rule_test"))
        .filter(|case| {
            case["exp_alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        })
        .map(|case| case["alertname"].as_str().expect("alertname"))
        .collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().expect("alert");
        let summary = rule["annotations"]["summary"].as_str().unwrap_or("");
        assert!(!summary.is_empty(), "{name} has no summary");
        assert_eq!(
            rule["annotations"]["runbook"].as_str(),
            Some(format!("README.md, Alerts: {name}").as_str()),
            "{name}'s runbook annotation"
        );
        assert!(
            runbook.contains(&format!("- **{name}**")),
            "README.md's Alerts section has no `- **{name}**` entry"
        );
        assert!(
            firing.contains(name),
            "{ALERT_TESTS} never expects {name} to fire"
        );
        assert!(
            ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}'s severity"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------

/// A Prometheus server on its own port and storage, evaluating the shipped rules every
/// second; killed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    /// Holds the configuration and the storage.
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `targets` (job `redis-ws-bridge`, as in the README) every second.
    async fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        // The intervals are the test's; the rules are the shipped file with only their `for:`
        // shortened to 2s, so that an alert fires within seconds of its cause (promtool's
        // unit tests run the shipped file as it is, `for:` included).
        let shipped = std::fs::read_to_string(repo().join(ALERTS)).expect("the alert rules");
        let rules: String = shipped
            .lines()
            .map(|line| match line.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s\n", &line[..line.len() - line.trim_start().len()]),
                None => format!("{line}\n"),
            })
            .collect();
        assert!(
            rules.contains("for: 2s"),
            "the shipped rules have no `for:` any more"
        );
        let rules_path = dir.path().join("alerts.yml");
        std::fs::write(&rules_path, rules).expect("write the rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: redis-ws-bridge\n    \
             static_configs: [{{ targets: [{}] }}]\n",
            rules_path.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run prometheus; scripts/test.sh installs it");
        let prometheus = Prometheus { child, addr, dir };
        wait_until_async(WAIT, "prometheus to be ready", || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_get(addr, "/-/ready", &[]).await.0 == 200
        })
        .await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/...`; the `data` of a successful answer.
    async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = http_get(self.addr, &format!("/api/v1/{path_and_query}"), &[]).await;
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path_and_query}: {e}: {body}"));
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("success")),
            "{path_and_query}: {body}\n{}",
            self.log()
        );
        answer["data"].clone()
    }

    /// The active alerts (pending or firing): name → the alert.
    async fn alerts(&self) -> Vec<Value> {
        self.api("alerts").await["alerts"]
            .as_array()
            .expect("alerts")
            .clone()
    }

    /// Polls `what` until `cond` holds of the API's answer at `path_and_query`; returns it.
    async fn wait(&self, path_and_query: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let data = self.api(path_and_query).await;
            if cond(&data) {
                return data;
            }
            if std::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}; last answer: {data:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `query` with what the URL needs escaped.
fn escape(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An RFC 3339 time of the API; `None` for what it says before the first evaluation
/// (`0001-01-01T00:00:00Z`), which is no time at all.
fn parse_time(text: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_loads_the_rules_scrapes_the_bridge_and_alerts_when_redis_dies() {
    let mut redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config("", ROUTES));
    bridge.wait_ready().await;
    let prometheus = Prometheus::start(&[bridge.addr()]).await;
    let instance = bridge.addr().to_string();

    // The target is up, and its series are there.
    let targets = prometheus
        .wait("targets", "the bridge scraped", |data| {
            data["activeTargets"]
                .as_array()
                .is_some_and(|t| t.len() == 1 && t[0]["health"] == "up")
        })
        .await;
    assert_eq!(targets["activeTargets"][0]["labels"]["instance"], instance);
    let last_scrape = targets["activeTargets"][0]["lastScrape"]
        .as_str()
        .and_then(parse_time)
        .unwrap_or_else(|| panic!("no lastScrape time in {targets}"));
    let connected = prometheus
        .api(&format!("query?query={}", escape("bridge_redis_connected")))
        .await;
    assert_eq!(connected["result"][0]["value"][1], "1", "{connected}");

    // Every rule of the shipped file is loaded and evaluates without error, with the
    // scraped series.
    let rules = prometheus
        .wait(
            "rules",
            "every rule evaluated after the first scrape",
            |data| {
                data["groups"].as_array().is_some_and(|groups| {
                    groups.iter().all(|group| {
                        group["lastEvaluation"]
                            .as_str()
                            .and_then(parse_time)
                            .is_some_and(|t| t > last_scrape)
                    })
                })
            },
        )
        .await;
    let loaded: BTreeSet<String> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").clone())
        .map(|rule| {
            assert_eq!(rule["health"], "ok", "{rule:#}");
            rule["name"].as_str().expect("name").to_owned()
        })
        .collect();
    assert_eq!(loaded, alert_names());
    // A healthy bridge raises nothing.
    assert_eq!(prometheus.alerts().await, Vec::<Value>::new());

    // Redis dies: RedisWsBridgeNotReady fires for this instance, with its summary; the bridge
    // itself is still up.
    redis.kill();
    let data = prometheus
        .wait("alerts", "RedisWsBridgeNotReady firing", |data| {
            data["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "RedisWsBridgeNotReady" && a["state"] == "firing"
                })
            })
        })
        .await;
    let alerts = data["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "only the Redis alert: {alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["state"], "firing", "{alert:#}");
    assert_eq!(alert["labels"]["instance"], instance);
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(
        alert["annotations"]["summary"],
        format!(
            "redis-ws-bridge {instance} has not been subscribed to Redis for 1 minute: \
             /readyz is 503, clients receive nothing"
        )
    );

    // Redis is back: the alert goes away by itself.
    redis.restart();
    prometheus
        .wait("alerts", "no alert once Redis is back", |data| {
            data["alerts"].as_array().is_some_and(Vec::is_empty)
        })
        .await;

    // An alert without `for` fires at the next evaluation: a rejected reload.
    std::fs::write(bridge.config_path(), "routes: [oops\n").expect("break the file");
    bridge.signal("HUP");
    let data = prometheus
        .wait("alerts", "RedisWsBridgeReloadFailed firing", |data| {
            data["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "RedisWsBridgeReloadFailed"
                        && a["state"] == "firing"
                })
            })
        })
        .await;
    let alerts = data["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "only the reload alert: {alerts:#?}");
    assert_eq!(alerts[0]["labels"]["instance"], instance);
    assert_eq!(
        alerts[0]["annotations"]["summary"],
        format!(
            "redis-ws-bridge {instance} rejected a reload of its routing file: the previous \
             configuration is still in force"
        )
    );

    // Every query of the dashboard is valid PromQL for this Prometheus.
    for expr in dashboard_queries() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*");
        let result = prometheus
            .api(&format!("query?query={}", escape(&expr)))
            .await;
        assert!(result["resultType"].is_string(), "{expr}: {result}");
    }
}

// ---------------------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------------------

/// Every PromQL query of the dashboard: the panels' `expr`s and the variables' queries.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(DASHBOARD)).expect(DASHBOARD);
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().expect("query");
            // label_values(METRIC, LABEL): the metric is what must exist.
            let metric = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split_once(','))
                .map(|(metric, _)| metric.trim())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            queries.push(metric.to_owned());
        }
    }
    queries
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(field, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// PromQL keywords that may be followed by a list of labels in parentheses.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other PromQL words that are not metric names.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The end of the string literal that starts at `i` (the index after its closing quote).
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names a PromQL expression reads: identifiers that are not functions,
/// aggregations or keywords, outside strings, label matchers, grouping lists and ranges.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let word_at = |mut i: usize| {
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
            i += 1;
        }
        (chars[start..i].iter().collect::<String>(), i)
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut grouping = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_string(&chars, i);
        } else if c == '{' || c == '[' || (c == '(' && grouping) {
            let close = match c {
                '{' => '}',
                '[' => ']',
                _ => ')',
            };
            while i < chars.len() && chars[i] != close {
                i = if chars[i] == '"' || chars[i] == '\'' {
                    skip_string(&chars, i)
                } else {
                    i + 1
                };
            }
            i += 1;
            grouping = false;
        } else if c == '$' {
            // A Grafana variable: $__rate_interval, $instance.
            let (_, end) = word_at(i + 1);
            i = end;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (word, end) = word_at(i);
            i = end;
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (le) (...)`: an aggregation, whatever comes between it and its `(`.
            let (next_word, _) = word_at(next);
            let call = chars.get(next) == Some(&'(')
                || ["by", "without"].contains(&next_word.to_ascii_lowercase().as_str());
            grouping = GROUPING.contains(&lower.as_str());
            if !call && !grouping && !KEYWORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number, possibly with an exponent or a unit: 1e3, 0.99, 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_metric_name_reader_skips_what_is_not_a_metric() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{instance=~\"$instance\", x=\"y{z}\"}[$__rate_interval]))) / on (instance) group_left b_total offset 5m > 1e3"
        ),
        BTreeSet::from(["a_bucket".to_owned(), "b_total".to_owned()])
    );
    assert_eq!(
        metric_names("sum(rate(x[5m])) and on() vector(1)"),
        BTreeSet::from(["x".to_owned()])
    );
}

/// The sample names of a real bridge's `/metrics` (histograms as `_bucket`, `_sum`,
/// `_count`, as Prometheus stores them).
async fn exported_names(bridge: &Bridge) -> BTreeSet<String> {
    let (status, text) = bridge.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            line.split(['{', ' '])
                .next()
                .expect("a sample name")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_reads_metrics_the_bridge_exports() {
    let redis = RedisServer::start();
    let bridge = Bridge::start(&redis, &config("", ROUTES));
    bridge.wait_ready().await;
    let exported = exported_names(&bridge).await;
    assert!(
        exported.contains("bridge_delivery_seconds_bucket"),
        "{exported:?}"
    );

    let queries = dashboard_queries();
    let mut used = BTreeSet::new();
    for expr in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in `{expr}`");
        for name in names {
            assert!(
                exported.contains(&name),
                "`{expr}` reads {name}, which the bridge does not export; it exports {exported:#?}"
            );
            used.insert(name);
        }
    }
    // What the dashboard promises to show.
    for needed in [
        "bridge_connections",
        "bridge_messages_delivered_total",
        "bridge_messages_dropped_total",
        "bridge_delivery_seconds_bucket",
        "bridge_redis_connected",
        "bridge_config_reloads_total",
    ] {
        assert!(used.contains(needed), "no panel reads {needed}: {used:?}");
    }

    // The alert rules read exported metrics too (`up` is Prometheus's own).
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().expect("expr");
        for name in metric_names(expr) {
            assert!(
                name == "up" || exported.contains(&name),
                "alert {} reads {name}, which the bridge does not export",
                rule["alert"]
            );
        }
    }
}
