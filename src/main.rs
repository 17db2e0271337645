use clap::Parser;
use crik::cmd::cli::{Cli, Command};

fn main() {
    // --help and --version print to stdout and exit 0; usage errors exit 2.
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    // Logging starts once the configuration (and so the log format) is known.
    let result = match cli.command {
        Command::Run(args) => crik::cmd::run::run(args),
        Command::Restore(args) => crik::cmd::restore::restore(args),
        Command::Inspect(args) => crik::cmd::inspect::run(args),
        Command::Keygen => crik::cmd::keygen(),
        Command::CopyBundle { dest } => crik::cmd::copy_bundle::copy_bundle(&dest),
        Command::Reap { command } => crik::cmd::reap(&command),
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
