use std::io::Write;

use clap::Parser;
use crik::cli::{Cli, Command};

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            writeln!(buf, "{} crik {}: {}", buf.timestamp_seconds(), record.level(), record.args())
        })
        .target(env_logger::Target::Stderr)
        .init();
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and exit 0; usage errors exit 2.
            e.exit();
        }
    };
    init_logging();
    let result = match cli.command {
        Command::Run(args) => crik::run::run(args),
        Command::Restore(args) => crik::run::restore_cmd(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crik: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
