//! The command line: `--version`, `check`, and start-up errors that name file, line and
//! column.

use std::path::Path;

use crate::redis_tls::Certificates;
use crate::support::{Bridge, Exit, dedent, run_binary};

/// The lines of `stderr` that look like `PATH:LINE:COLUMN: rest`, as (line, column, rest).
fn located_errors(stderr: &str, path: &Path) -> Vec<(u32, u32, String)> {
    let prefix = format!("{}:", path.display());
    let mut found = Vec::new();
    for text_line in stderr.lines() {
        // Tolerate a prefix (e.g. a log level) before the path.
        let mut rest = text_line;
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let mut parts = after.splitn(3, ':');
            let line = parts.next().and_then(|s| s.parse::<u32>().ok());
            let col = parts.next().and_then(|s| s.parse::<u32>().ok());
            if let (Some(line), Some(col)) = (line, col) {
                found.push((line, col, parts.next().unwrap_or("").to_owned()));
            }
            rest = after;
        }
    }
    found
}

/// Asserts a user error: exit code 1, no panic, and an error located at
/// `FILE:LINE:COLUMN:` (at `line` when given) whose text contains every needle.
fn assert_located_error(exit: &Exit, what: &str, line: Option<u32>, needles: &[&str]) {
    assert_eq!(
        exit.code,
        Some(1),
        "{what}: exit code; stdout:\n{}\nstderr:\n{}",
        exit.stdout,
        exit.stderr
    );
    assert!(
        !exit.stderr.contains("panicked") && !exit.stderr.contains("RUST_BACKTRACE"),
        "{what}: a user error must not panic:\n{}",
        exit.stderr
    );
    let errors = located_errors(&exit.stderr, &exit.config);
    let hit = errors.iter().find(|(l, c, rest)| {
        line.is_none_or(|want| *l == want) && *c >= 1 && needles.iter().all(|n| rest.contains(n))
    });
    assert!(
        hit.is_some(),
        "{what}: expected `{}:{}:COLUMN: ...` mentioning {needles:?} on stderr; got:\n{}",
        exit.config.display(),
        line.map_or("LINE".to_owned(), |l| l.to_string()),
        exit.stderr
    );
}

/// Both `run` and `check` must refuse `yaml` with a located error.
fn assert_config_rejected(yaml: &str, line: Option<u32>, needles: &[&str]) {
    let yaml = dedent(yaml);
    let run = Bridge::run_to_exit(&yaml, &["run"], &[], &[]);
    assert_located_error(&run, "run", line, needles);
    let check = Bridge::run_to_exit(&yaml, &["check"], &[], &[]);
    assert_located_error(&check, "check", line, needles);
}

#[test]
fn version_flag_prints_the_version() {
    let exit = run_binary(&["--version".into()], &[], Path::new("/"));
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
    assert!(
        exit.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {:?}",
        exit.stdout
    );
}

#[test]
fn keys_lists_every_section_and_key_with_its_default() {
    let exit = run_binary(&["keys".into()], &[], Path::new("/"));
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    for line in [
        "websocket\n",
        "  max_connections_per_user: integer ≥ 1 (default 100): ",
        "  ping_interval: duration > 0 (default 30s): ",
        "  connect_rate_per_ip: rate (absent: no limit): ",
        "auth.jwt\n",
        "  leeway: duration (default 30s): ",
        "routes\n",
        "  audience: audience (default all): ",
    ] {
        assert!(
            exit.stdout.contains(line),
            "no {line:?} in:\n{}",
            exit.stdout
        );
    }
}

/// The route names of a routing file, read the simple way: `- name: X` lines.
fn route_names(yaml: &str) -> Vec<String> {
    yaml.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("- name:"))
        .map(|v| {
            let v = v.split(" #").next().unwrap_or(v).trim();
            v.trim_matches(|c| c == '"' || c == '\'').to_owned()
        })
        .collect()
}

#[test]
fn check_accepts_the_example_file_as_shipped_and_prints_one_line_per_route() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("bridge.example.yaml");
    let text = std::fs::read_to_string(&example).expect("bridge.example.yaml at the repo root");
    let names = route_names(&text);
    assert!(!names.is_empty(), "bridge.example.yaml has no routes");
    // A fresh checkout: the example's `auth.jwt.secret_file` (jwt.secret beside it) is made
    // by scripts/run.sh on its first run and is not in the repository.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("bridge.example.yaml");
    std::fs::write(&copy, &text).unwrap();
    let secret = tmp.path().join("jwt.secret");
    let check = || {
        run_binary(
            &["check".into(), "--config".into(), copy.clone().into()],
            &[],
            tmp.path(),
        )
    };
    let exit = check();
    assert_eq!(
        exit.code,
        Some(0),
        "check bridge.example.yaml; stdout:\n{}\nstderr:\n{}",
        exit.stdout,
        exit.stderr
    );
    let lines: Vec<&str> = exit
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        names.len(),
        "one line per route {names:?}; stdout:\n{}",
        exit.stdout
    );
    for name in &names {
        assert_eq!(
            lines.iter().filter(|l| l.contains(name.as_str())).count(),
            1,
            "route {name} on exactly one line of:\n{}",
            exit.stdout
        );
    }
    // ...but it says what is still missing, where, and how to make it.
    let warning = format!("warning: {}:", copy.display());
    let warned: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| l.starts_with(&warning))
        .collect();
    assert_eq!(warned.len(), 1, "one warning on stderr:\n{}", exit.stderr);
    for needle in [
        "auth.jwt.secret_file",
        &format!("`{}` does not exist yet", secret.display()),
        "the daemon will not start without it",
        &format!("openssl rand -base64 48 > {}", secret.display()),
    ] {
        assert!(warned[0].contains(needle), "{needle} in {}", warned[0]);
    }

    // The daemon does refuse to start without it, naming the line.
    let run = run_binary(
        &["run".into(), "--config".into(), copy.clone().into()],
        &[],
        tmp.path(),
    );
    let mut run = run;
    run.config = copy.clone();
    assert_located_error(
        &run,
        "run without jwt.secret",
        None,
        &["auth.jwt.secret_file", "cannot read"],
    );

    // Made as the warning says (a random secret of 64 characters): no warning any more.
    std::fs::write(&secret, format!("{}\n", "s".repeat(64))).unwrap();
    let exit = check();
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(!exit.stderr.contains("warning"), "{}", exit.stderr);
    assert_eq!(
        exit.stdout.lines().filter(|l| !l.trim().is_empty()).count(),
        names.len()
    );
}

#[test]
fn check_still_refuses_a_secret_file_that_exists_but_is_unusable() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("short.secret"), "too short\n").unwrap();
    let yaml = dedent(
        r#"
        auth:
          mode: required
          jwt: { algorithms: [HS256], secret_file: short.secret }
        admin: { token_file: no-such.token }
        routes:
          - { name: jobs, channel: jobs }
        "#,
    );
    let config = tmp.path().join("bridge.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut exit = run_binary(
        &["check".into(), "--config".into(), config.clone().into()],
        &[],
        tmp.path(),
    );
    exit.config = config;
    assert_located_error(
        &exit,
        "check",
        Some(3),
        &["auth.jwt.secret_file", "the secret is 9 bytes"],
    );
}

#[test]
fn check_summarises_each_route() {
    let yaml = dedent(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        auth: { mode: none }
        routes:
          - name: botrix-jobs
            channel: botrix:jobs:updates
            topic: jobs
            delivery: auto
          - name: job-progress
            pattern: "job:*"
            topic: "job:{1}"
            format: raw
          - name: fanout
            channel: fan
            topic: [fan-all, "fan:{payload.id}"]
        "#,
    );
    let exit = Bridge::check(&yaml);
    assert_eq!(
        exit.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        exit.stdout,
        exit.stderr
    );
    let lines: Vec<&str> = exit
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "one line per route:\n{}", exit.stdout);
    let line_of = |name: &str| -> &str {
        lines
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", exit.stdout))
    };
    let jobs = line_of("botrix-jobs");
    for needle in ["botrix:jobs:updates", "jobs", "auto", "envelope"] {
        assert!(jobs.contains(needle), "{needle:?} in {jobs:?}");
    }
    let progress = line_of("job-progress");
    for needle in ["job:*", "job:{1}", "subscribe", "raw"] {
        assert!(progress.contains(needle), "{needle:?} in {progress:?}");
    }
    let fanout = line_of("fanout");
    for needle in ["fan-all", "fan:{payload.id}"] {
        assert!(fanout.contains(needle), "{needle:?} in {fanout:?}");
    }
}

#[test]
fn unknown_keys_are_rejected_with_file_line_column() {
    // Line 6: a typo in a section.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        websocket:
          path: /ws
          max_conections: 10
        routes:
          - name: a
            channel: a
            topic: a
        "#,
        Some(6),
        &["max_conections"],
    );
    // Line 8: a typo in a route.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: a
            channel: a
            topic: a
            delivry: auto
        "#,
        Some(8),
        &["delivry"],
    );
    // Line 3: a typo at the top level.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis: { url: "redis://127.0.0.1:1/0" }
        shutdown_grase: 5s
        routes:
          - name: a
            channel: a
            topic: a
        "#,
        Some(3),
        &["shutdown_grase"],
    );
}

#[test]
fn a_bad_duration_is_rejected_with_file_line_column() {
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        websocket:
          ping_interval: 30 parsecs
        routes:
          - name: a
            channel: a
            topic: a
        "#,
        Some(5),
        &["ping_interval"],
    );
}

#[test]
fn bad_templates_are_rejected_with_file_line_column() {
    // A capture the pattern does not have.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: a
            pattern: "job:*"
            topic: "job:{2}"
        "#,
        Some(7),
        &["topic"],
    );
    // An unknown placeholder.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: a
            channel: a
            topic: "a:{bogus}"
        "#,
        Some(7),
        &["topic"],
    );
    // An unknown placeholder inside a JSON template format.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: a
            channel: a
            topic: a
            format:
              id: "{payload.id}"
              who: "{nobody.knows}"
        "#,
        None,
        &["format"],
    );
}

#[test]
fn a_missing_environment_variable_is_rejected_with_file_line_column() {
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: "redis://:${RWB_TEST_SURELY_MISSING_VAR}@127.0.0.1:1/0"
        routes:
          - name: a
            channel: a
            topic: a
        "#,
        Some(3),
        &["RWB_TEST_SURELY_MISSING_VAR"],
    );
}

#[test]
fn an_environment_variable_is_interpolated() {
    let yaml = dedent(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: "redis://127.0.0.1:${RWB_TEST_REDIS_PORT}/0"
        routes:
          - name: a
            channel: "${RWB_TEST_CHANNEL}"
            topic: a
        "#,
    );
    let exit = Bridge::run_to_exit(
        &yaml,
        &["check"],
        &[],
        &[
            ("RWB_TEST_REDIS_PORT", "6399"),
            ("RWB_TEST_CHANNEL", "from-env"),
        ],
    );
    assert_eq!(exit.code, Some(0), "stderr:\n{}", exit.stderr);
    assert!(exit.stdout.contains("from-env"), "stdout:\n{}", exit.stdout);
}

#[test]
fn route_rules_are_enforced() {
    // Duplicate route names: the second one is at line 8.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: dup
            channel: a
            topic: a
          - name: dup
            channel: b
            topic: b
        "#,
        None,
        &["dup"],
    );
    // Both channel and pattern.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: both
            channel: a
            pattern: "a:*"
            topic: a
        "#,
        None,
        &["routes"],
    );
    // Neither channel nor pattern.
    assert_config_rejected(
        r#"
        listen: 127.0.0.1:0
        redis:
          url: redis://127.0.0.1:1/0
        routes:
          - name: neither
            topic: a
        "#,
        None,
        &["routes"],
    );
}

#[test]
fn check_reads_and_verifies_the_redis_tls_files() {
    let certificates = Certificates::make();
    let file = |name: &str| certificates.path(name).display().to_string();
    let yaml = |ca: &str, cert: &str, key: &str| {
        format!(
            "redis:\n  url: rediss://localhost:6380/0\n  tls:\n    ca_file: {ca}\n    cert_file: {cert}\n    key_file: {key}\nroutes:\n  - name: jobs\n    channel: jobs\n"
        )
    };
    let valid = Bridge::check(&yaml(
        &file("ca.pem"),
        &file("client.pem"),
        &file("client.key"),
    ));
    assert_eq!(valid.code, Some(0), "stderr:\n{}", valid.stderr);
    assert_config_rejected(
        &yaml(&file("ca.pem"), &file("client.pem"), &file("server.key")),
        Some(6),
        &["redis.tls.key_file", "does not go with `cert_file`"],
    );
    assert_config_rejected(
        &yaml(
            &file("missing-ca.pem"),
            &file("client.pem"),
            &file("client.key"),
        ),
        Some(4),
        &["redis.tls.ca_file", "cannot read", "missing-ca.pem"],
    );
    assert_config_rejected(
        &yaml(
            &file("client.key"),
            &file("client.pem"),
            &file("client.key"),
        ),
        Some(4),
        &["redis.tls.ca_file", "expected PEM certificates"],
    );
    assert_config_rejected(
        &yaml(&file("ca.pem"), &file("client.pem"), &file("client.pem")),
        Some(6),
        &["redis.tls.key_file", "expected a PEM private key"],
    );
}

#[test]
fn check_refuses_bad_sentinel_settings_with_file_line_column() {
    let with_nodes = |nodes: &str| {
        format!(
            "redis:\n  url: redis://unused:1/0\n  sentinel:\n    master: mymaster\n    nodes: {nodes}\nroutes:\n  - name: jobs\n    channel: jobs\n"
        )
    };
    assert_config_rejected(
        &with_nodes("[]"),
        Some(5),
        &["redis.sentinel.nodes", "at least one node"],
    );
    assert_config_rejected(
        &with_nodes("[redis://127.0.0.1:26379, redis://10.0.0.2]"),
        Some(5),
        &["redis.sentinel.nodes[1]", "with the port"],
    );
}
