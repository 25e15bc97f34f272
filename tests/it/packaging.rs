//! What operators install: the systemd unit (checked by systemd's own analyzer), the Debian
//! package (built by packaging/build-deb.sh from the binary under test, inspected with
//! dpkg-deb and lintian, then installed and purged in a throwaway root by
//! packaging/check-deb-install.sh), and the RPM (built by packaging/build-rpm.sh, inspected
//! with rpm -qp and rpmlint).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::{BIN, repo};

const UNIT: &str = "redis-ws-bridge.service";

fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); scripts/test.sh installs it"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("systemd").join(UNIT)).expect("read the unit")
}

/// The values of `key=` lines of the unit, in order.
fn directive(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = unit_text();
    let exec_start = "/usr/bin/redis-ws-bridge run --config /etc/redis-ws-bridge/bridge.yaml";
    assert_eq!(directive(&unit, "ExecStart"), [exec_start]);
    // verify wants the binary to exist: the same unit, pointing at the binary under test.
    // (The package test verifies the installed unit unchanged, at /usr/bin.)
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join(UNIT);
    std::fs::write(&copy, unit.replace("/usr/bin/redis-ws-bridge", BIN)).expect("write the unit");
    let output = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );

    // What the README promises about it.
    for (key, value) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("User", "redis-ws-bridge"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("EnvironmentFile", "-/etc/redis-ws-bridge/environment"),
    ] {
        assert_eq!(directive(&unit, key), [value], "{key}=");
    }
    assert!(
        directive(&unit, "SystemCallFilter").contains(&"@system-service".to_owned()),
        "SystemCallFilter=@system-service"
    );
    let nofile: u64 = directive(&unit, "LimitNOFILE")[0]
        .parse()
        .expect("a number");
    assert!(nofile > 100_000, "LimitNOFILE={nofile}");
    assert!(!directive(&unit, "WatchdogSec").is_empty(), "WatchdogSec=");
}

#[test]
fn systemd_analyze_security_rates_the_unit_ok_as_the_readme_says() {
    let output = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo().join("systemd").join(UNIT)));
    let report = text(&output);
    // `→ Overall exposure level for redis-ws-bridge.service: 1.1 OK 🙂`
    let overall = report
        .lines()
        .find_map(|l| l.split_once(&format!("Overall exposure level for {UNIT}: ")))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    let mut words = overall.split_whitespace();
    let level: f64 = words.next().and_then(|w| w.parse().ok()).expect("a level");
    let rating = words.next().expect("a rating");
    assert!(
        ["OK", "SAFE", "PERFECT"].contains(&rating),
        "rated {level} {rating}:\n{report}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let promise = format!("exposure level {level:.1} {rating}");
    assert!(
        readme.contains(&promise),
        "README.md should record `{promise}` (systemd-analyze security)"
    );
}

/// Who the test packages name as their maintainer.
const MAINTAINER: &str = "redis-ws-bridge tests <packages@redis-ws-bridge.example.org>";

/// The package built from the binary under test, once per test run.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian");
        let _ = std::fs::remove_dir_all(&out);
        let output = run(Command::new(repo().join("packaging/build-deb.sh"))
            .args(["--binary", BIN, "--compression", "gzip", "--out"])
            .arg(&out)
            .env("PACKAGE_MAINTAINER", MAINTAINER));
        PathBuf::from(text(&output).trim())
    })
}

#[test]
fn the_debian_package_holds_the_daemon_its_unit_its_config_and_scripts() {
    let deb = package();
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()).map(str::to_owned),
        Some(format!(
            "redis-ws-bridge_{}_{}.deb",
            env!("CARGO_PKG_VERSION"),
            text(&run(Command::new("dpkg").arg("--print-architecture"))).trim()
        ))
    );
    let field = |name: &str| {
        text(&run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg(name)))
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "redis-ws-bridge");
    assert_eq!(field("Maintainer"), MAINTAINER);
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    for needed in ["libc6 (>= 2.", "adduser"] {
        assert!(depends.contains(needed), "Depends: {depends}");
    }

    // Files, with owners and modes.
    let listing = text(&run(Command::new("dpkg-deb").arg("--contents").arg(deb)));
    for (mode, path) in [
        ("-rwxr-xr-x root/root", "./usr/bin/redis-ws-bridge"),
        (
            "-rw-r--r-- root/root",
            "./lib/systemd/system/redis-ws-bridge.service",
        ),
        ("-rw-r--r-- root/root", "./etc/redis-ws-bridge/bridge.yaml"),
        ("-rw------- root/root", "./etc/redis-ws-bridge/environment"),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/redis-ws-bridge/copyright",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/redis-ws-bridge/examples/nginx/redis-ws-bridge.conf",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/redis-ws-bridge/examples/prometheus/alerts.yml",
        ),
        (
            "-rw-r--r-- root/root",
            "./usr/share/doc/redis-ws-bridge/examples/grafana/redis-ws-bridge.json",
        ),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{mode} {path} in:\n{listing}"
        );
    }

    // Contents: the unit and the config are the repository's, the binary is the one built.
    let root = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(root.path()));
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(root.path().join("DEBIAN")));
    let read = |path: &str| std::fs::read_to_string(root.path().join(path)).expect(path);
    assert_eq!(
        read("lib/systemd/system/redis-ws-bridge.service"),
        unit_text()
    );
    assert_eq!(
        read("etc/redis-ws-bridge/bridge.yaml"),
        std::fs::read_to_string(repo().join("bridge.example.yaml")).expect("example")
    );
    let version = run(Command::new(root.path().join("usr/bin/redis-ws-bridge")).arg("--version"));
    assert!(text(&version).contains(env!("CARGO_PKG_VERSION")));

    // Control files: conffiles, and maintainer scripts that are valid sh and do their jobs.
    assert_eq!(
        read("DEBIAN/conffiles"),
        "/etc/redis-ws-bridge/bridge.yaml\n/etc/redis-ws-bridge/environment\n"
    );
    for (script, must_do) in [
        (
            "postinst",
            &[
                "adduser --system --group",
                "deb-systemd-helper enable",
                "chmod 0640",
                "systemctl --no-block",
            ][..],
        ),
        ("prerm", &["deb-systemd-invoke stop"][..]),
        (
            "postrm",
            &[
                "deluser --system",
                "delgroup --system",
                "deb-systemd-helper purge",
            ][..],
        ),
    ] {
        let path = root.path().join("DEBIAN").join(script);
        let body = read(&format!("DEBIAN/{script}"));
        assert!(body.starts_with("#!/bin/sh\n"), "{script} shebang");
        run(Command::new("sh").arg("-n").arg(&path));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("metadata").permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{script} mode");
        for step in must_do {
            assert!(body.contains(step), "{script} should `{step}`");
        }
    }
}

#[test]
fn the_debian_package_installs_upgrades_and_purges_cleanly() {
    // Needs root for its throwaway root (mount namespace, overlay, chroot); CI runs as root.
    let uid = text(&run(Command::new("id").arg("-u")));
    if uid.trim() != "0" {
        eprintln!("skipped: installing the package in a throwaway root needs root");
        return;
    }
    let output = run(Command::new(repo().join("packaging/check-deb-install.sh")).arg(package()));
    let report = text(&output);
    assert!(
        report.contains("ok: dpkg -P:"),
        "the install checks did not finish:\n{report}"
    );
}

#[test]
fn the_debian_package_passes_lintian_without_errors() {
    let output = Command::new("lintian")
        .args(["--pedantic", "--no-tag-display-limit"])
        .arg(package())
        .output()
        .expect("cannot run lintian; scripts/test.sh installs it");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    // What remains is overridden in packaging/debian/lintian-overrides, each with its reason;
    // anything else is new and must be fixed or justified there.
    let unexplained: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("I:") || l.starts_with("P:"))
        .collect();
    assert!(unexplained.is_empty(), "lintian:\n{report}");
    assert!(output.status.success(), "lintian failed:\n{report}");
}

#[test]
fn the_manual_pages_are_the_help_and_the_example_file() {
    let root = tempfile::tempdir().expect("temp dir");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(package())
        .arg(root.path()));
    let gunzip = |path: &str| {
        text(&run(Command::new("gzip")
            .args(["-dc"])
            .arg(root.path().join(path))))
    };
    // redis-ws-bridge(1) is what the binary renders from its --help definition.
    let page = gunzip("usr/share/man/man1/redis-ws-bridge.1.gz");
    assert_eq!(page, text(&run(Command::new(BIN).arg("man"))));
    let help = text(&run(Command::new(BIN).arg("--help")));
    let rendered = render_manual(root.path(), "usr/share/man/man1/redis-ws-bridge.1.gz");
    for option in ["--config", "--log-format", "--log-level", "--version"] {
        assert!(help.contains(option), "--help lists {option}");
        assert!(
            rendered.contains(option),
            "man page lists {option}:\n{rendered}"
        );
    }
    for section in ["COMMANDS", "FILES", "SIGNALS", "SEE ALSO"] {
        assert!(rendered.contains(section), "{section} in:\n{rendered}");
    }
    assert!(rendered.contains("check") && rendered.contains("/etc/redis-ws-bridge/bridge.yaml"));
    assert!(
        !rendered.contains("\nman"),
        "the hidden `man` command is not documented"
    );

    // redis-ws-bridge.yaml(5) holds the example file, every line of it.
    let rendered = render_manual(root.path(), "usr/share/man/man5/redis-ws-bridge.yaml.5.gz");
    let example = std::fs::read_to_string(repo().join("bridge.example.yaml")).expect("example");
    for line in example.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            rendered.contains(line.trim()),
            "redis-ws-bridge.yaml(5) lacks `{line}`"
        );
    }
}

/// A manual page as man(1) shows it, unwrapped: one line per source line of its examples.
fn render_manual(root: &Path, page: &str) -> String {
    let output = run(Command::new("man")
        .args(["--warnings", "-l"])
        .arg(root.join(page))
        .env("MANWIDTH", "250")
        .env("LC_ALL", "C.UTF-8"));
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.trim().is_empty(), "{page}: {warnings}");
    text(&output)
}

#[test]
fn a_package_names_who_maintains_it() {
    let out = tempfile::tempdir().expect("temp dir");
    let output = Command::new(repo().join("packaging/build-deb.sh"))
        .args(["--binary", BIN, "--out"])
        .arg(out.path())
        .env_remove("PACKAGE_MAINTAINER")
        .env_remove("DEBEMAIL")
        .output()
        .expect("run build-deb.sh");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("who maintains this package?"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read_dir(out.path()).expect("out").count(), 0);
}

// ---------------------------------------------------------------------------------------
// The RPM
// ---------------------------------------------------------------------------------------

/// The RPM built from the binary under test, once per test run.
fn rpm_package() -> &'static Path {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    RPM.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rpm");
        let _ = std::fs::remove_dir_all(&out);
        let output = run(Command::new(repo().join("packaging/build-rpm.sh"))
            .args(["--binary", BIN, "--out"])
            .arg(&out)
            .env("PACKAGE_MAINTAINER", MAINTAINER));
        PathBuf::from(text(&output).trim())
    })
}

/// `rpm -qp ARGS` on the package.
fn rpm_query(args: &[&str]) -> String {
    text(&run(Command::new("rpm")
        .arg("-qp")
        .args(args)
        .arg(rpm_package())))
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(std::fs::read(path).expect("read"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_rpm_holds_the_same_daemon_unit_config_and_user_as_the_debian_package() {
    // Metadata.
    let info = rpm_query(&["-i"]);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in rpm -qpi:\n{info}"))
    };
    assert_eq!(field("Name"), "redis-ws-bridge");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Release"), "1");
    assert_eq!(field("License"), "MIT OR Apache-2.0");
    assert_eq!(field("Packager"), MAINTAINER);
    assert_eq!(field("Summary"), "Redis pub/sub to WebSocket bridge");
    let requires = rpm_query(&["--requires"]);
    for needed in ["systemd", "shadow-utils", "libc.so.6(GLIBC_2."] {
        assert!(requires.contains(needed), "Requires {needed}:\n{requires}");
    }

    // Files: what the .deb has, at RHEL's paths, with owners, modes and config flags.
    let listed = rpm_query(&["-l"]);
    let modes = rpm_query(&[
        "--qf",
        "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]",
    ]);
    for (expected, path) in [
        ("-rwxr-xr-x root:root ", "/usr/bin/redis-ws-bridge"),
        (
            "-rw-r--r-- root:root ",
            "/usr/lib/systemd/system/redis-ws-bridge.service",
        ),
        // noreplace: an edited file is kept on upgrade (the new one arrives as .rpmnew).
        (
            "-rw-r----- root:redis-ws-bridge cn",
            "/etc/redis-ws-bridge/bridge.yaml",
        ),
        (
            "-rw------- root:root cn",
            "/etc/redis-ws-bridge/environment",
        ),
        (
            "-rw-r--r-- root:root l",
            "/usr/share/licenses/redis-ws-bridge/copyright",
        ),
        (
            "-rw-r--r-- root:root d",
            "/usr/share/man/man1/redis-ws-bridge.1.gz",
        ),
        (
            "-rw-r--r-- root:root d",
            "/usr/share/man/man5/redis-ws-bridge.yaml.5.gz",
        ),
        (
            "-rw-r--r-- root:root d",
            "/usr/share/doc/redis-ws-bridge/examples/prometheus/alerts.yml",
        ),
        (
            "-rw-r--r-- root:root d",
            "/usr/share/doc/redis-ws-bridge/examples/grafana/redis-ws-bridge.json",
        ),
        (
            "-rw-r--r-- root:root d",
            "/usr/share/doc/redis-ws-bridge/examples/nginx/redis-ws-bridge.conf",
        ),
    ] {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} in rpm -qpl:\n{listed}"
        );
        assert!(
            modes.lines().any(|l| l == format!("{expected} {path}")),
            "`{expected} {path}` in:\n{modes}"
        );
    }
    // Nothing else is configuration, and the generated secret is not a packaged file.
    assert_eq!(
        rpm_query(&["-c"]),
        "/etc/redis-ws-bridge/bridge.yaml\n/etc/redis-ws-bridge/environment\n"
    );
    assert!(!listed.contains("jwt.secret"), "{listed}");
    // The unit and the routing file are the repository's, byte for byte.
    let digests = rpm_query(&["--qf", "[%{FILEDIGESTS} %{FILENAMES}\n]"]);
    for (path, source) in [
        (
            "/usr/lib/systemd/system/redis-ws-bridge.service",
            repo().join("systemd").join(UNIT),
        ),
        (
            "/etc/redis-ws-bridge/bridge.yaml",
            repo().join("bridge.example.yaml"),
        ),
    ] {
        let line = format!("{} {path}", sha256_hex(&source));
        assert!(digests.lines().any(|l| l == line), "{line} in:\n{digests}");
    }

    // Scriptlets: valid sh, each doing its job as the Debian maintainer scripts do theirs.
    let scripts = rpm_query(&["--scripts"]);
    for (tag, must_do) in [
        (
            "PREIN",
            &[
                "groupadd -r redis-ws-bridge",
                "useradd -r -g redis-ws-bridge -d /nonexistent -M -s /sbin/nologin",
            ][..],
        ),
        (
            "POSTIN",
            &[
                "/etc/redis-ws-bridge/jwt.secret",
                "chown root:redis-ws-bridge",
                "systemctl --no-reload enable redis-ws-bridge.service",
                "systemctl --no-block start redis-ws-bridge.service",
            ][..],
        ),
        (
            "PREUN",
            &["systemctl --no-reload disable --now redis-ws-bridge.service"][..],
        ),
        (
            "POSTUN",
            &["systemctl try-restart redis-ws-bridge.service"][..],
        ),
    ] {
        let body = rpm_query(&["--qf", &format!("%{{{tag}}}")]);
        for step in must_do {
            assert!(body.contains(step), "{tag} should `{step}`:\n{body}");
            assert!(scripts.contains(step), "rpm -qp --scripts shows `{step}`");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join(tag);
        std::fs::write(&script, &body).expect("write the scriptlet");
        run(Command::new("sh").arg("-n").arg(&script));
    }
    // The erase scriptlets act on an erase only ($1 == 0), the restart on an upgrade only.
    let preun = rpm_query(&["--qf", "%{PREUN}"]);
    assert!(preun.contains("[ \"$1\" -eq 0 ]"), "{preun}");
    let postun = rpm_query(&["--qf", "%{POSTUN}"]);
    assert!(postun.contains("[ \"$1\" -ge 1 ]"), "{postun}");
}

#[test]
fn rpmlint_finds_nothing_but_what_packaging_rpm_rpmlint_toml_explains() {
    let output = Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("packaging/rpm/rpmlint.toml"))
        .arg(rpm_package())
        .output()
        .expect("cannot run rpmlint; scripts/test.sh installs it");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains(" 0 errors, 0 warnings"),
        "rpmlint:\n{report}"
    );
    assert!(output.status.success(), "rpmlint:\n{report}");
}

#[test]
fn the_rpm_installs_upgrades_and_erases_cleanly() {
    // Needs root for its throwaway root (mount namespace, overlay, chroot); CI runs as root.
    let uid = text(&run(Command::new("id").arg("-u")));
    if uid.trim() != "0" {
        eprintln!("skipped: installing the package in a throwaway root needs root");
        return;
    }
    let output =
        run(Command::new(repo().join("packaging/check-rpm-install.sh")).arg(rpm_package()));
    let report = text(&output);
    assert!(
        report.contains("ok: rpm -e:"),
        "the install checks did not finish:\n{report}"
    );
}
