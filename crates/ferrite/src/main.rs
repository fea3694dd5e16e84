//! `ferrite`: one binary, many roles. `ferrite up` runs the whole platform in one process;
//! `ferrite broker|ingester|fleet` run one service each, for compose and Kubernetes.
//!
//! # Layout
//! - `cli`: the command line (every flag also an environment variable), validated before anything binds.
//! - `run`: one function per subcommand, composing the services' `bind` / `run`.
//! - `shutdown`: SIGINT and SIGTERM in one place, and the bounded drain.
//! - `database`: `DATABASE_URL`, or a private PostgreSQL cluster under the data directory.
//! - `policy`: API tokens for browser publishes through the gateway, checked against the registry.

/// Prints a line of the banner or the goodbye to stdout, and carries on if stdout is gone (a closed terminal,
/// `ferrite up | head`): `println!` would panic there, and a service must not stop because nobody reads its banner.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod apis;
mod cli;
mod database;
mod policy;
mod ready;
mod run;
mod shutdown;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if let Err(error) = cli.validate() {
        eprintln!("error: {error}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One clear line first, the chain of causes after it.
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
