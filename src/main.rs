//! The binary: command line → logging → routing file → daemon. The only place that exits.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use redis_ws_bridge::cli::{Cli, Command};
use redis_ws_bridge::config::Config;
use redis_ws_bridge::{daemon, logging};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        "{}: valid, {} route(s)",
        path.display(),
        checked.routes.len()
    );
    for absent in &checked.absent {
        eprintln!("warning: {absent}");
    }
    for route in &checked.routes {
        println!("{route}");
    }
    ExitCode::SUCCESS
}
