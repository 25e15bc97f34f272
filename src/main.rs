//! The binary: command line → logging → routing file → daemon. The only place that exits.

use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};
use redis_ws_bridge::cli::{Cli, Command};
use redis_ws_bridge::config::Config;
use redis_ws_bridge::{cli, daemon, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command == Some(Command::Man) {
        return man();
    }
    if cli.command == Some(Command::Keys) {
        print!("{}", Config::keys());
        return ExitCode::SUCCESS;
    }
    let path = cli.config_path();
    if cli.command == Some(Command::Check) {
        return check(&path);
    }
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("redis-ws-bridge: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("redis-ws-bridge: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("redis-ws-bridge: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `check`: the routes of a valid file on stdout, what is wrong or still missing on stderr.
fn check(path: &Path) -> ExitCode {
    let checked = match Config::check(path) {
        Ok(checked) => checked,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "{}: valid, {} route(s), {} inbound route(s)",
        path.display(),
        checked.routes.len(),
        checked.inbound.len()
    );
    for absent in &checked.absent {
        eprintln!("warning: {absent}");
    }
    for warning in &checked.warnings {
        eprintln!("{}: warning: {warning}", path.display());
    }
    for route in checked.routes.iter().chain(&checked.inbound) {
        println!("{route}");
    }
    ExitCode::SUCCESS
}

/// `man`: redis-ws-bridge(1) from the definition `--help` is made of: clap's sections, the
/// commands, then [`cli::AFTER_HELP`]'s.
fn man() -> ExitCode {
    let command = Cli::command();
    let page = clap_mangen::Man::new(command.clone()).manual("redis-ws-bridge manual");
    let mut out = Vec::new();
    let rendered = page
        .render_title(&mut out)
        .and_then(|()| page.render_name_section(&mut out))
        .and_then(|()| page.render_synopsis_section(&mut out))
        .and_then(|()| page.render_description_section(&mut out))
        .and_then(|()| page.render_options_section(&mut out));
    if let Err(err) = rendered {
        eprintln!("redis-ws-bridge: cannot render the manual page: {err}");
        return ExitCode::FAILURE;
    }
    let mut roff = String::from(".SH COMMANDS\n");
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        roff.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            sub.get_name(),
            roff_text(&about)
        ));
    }
    for line in cli::AFTER_HELP
        .lines()
        .filter(|line| !line.trim().is_empty())
    {
        if let Some(heading) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            roff.push_str(&format!(".SH {}\n", heading.to_uppercase()));
        } else if let Some((name, text)) = line.trim().split_once("  ") {
            let (name, text) = (roff_text(name), roff_text(text.trim()));
            roff.push_str(&format!(".TP\n\\fB{name}\\fR\n{text}\n"));
        } else {
            roff.push_str(&format!("{}\n", roff_text(line.trim())));
        }
    }
    out.extend_from_slice(roff.as_bytes());
    match std::io::Write::write_all(&mut std::io::stdout(), &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redis-ws-bridge: cannot write the manual page: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Text for roff: backslashes and hyphens escaped, no line taken for a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
