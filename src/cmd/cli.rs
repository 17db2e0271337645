//! Command line: `crik run`, `crik restore`, `--version`, `help`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

const ABOUT: &str = "crik runs your app as a container's init (PID 1). When the container gets SIGTERM \
because its node is going away, crik checkpoints the app's whole process tree with CRIU into an \
image directory on a persistent volume; on the next container start it restores the app from there, \
memory and all, and the app carries on where it stopped.";

const RUN_AFTER: &str = "\
Configuration (YAML) is read from --config, else from $CRIK_CONFIG, else from
/etc/crik/config.yaml. Without a configuration file at the default path crik is
a plain init: it forwards signals (SIGTERM included), reaps zombies and exits
with the app's exit code. With `imageDir` set, SIGTERM checkpoints the app
instead, and the next `crik run` restores it from the newest checkpoint (CMD is
then only used when there is no checkpoint to restore).

Examples:
  crik run -- python3 worker.py --queue jobs
  crik run --config ./crik.yaml -- ./server
  ENTRYPOINT [\"crik\", \"run\", \"--\", \"app\"]     (in a Dockerfile)

Exit status: the app's exit code, or 128+N when it died of signal N; 0 after a
complete checkpoint; 127 when CMD is not found, 126 when it cannot be executed;
2 for bad usage or configuration; 1 for other failures. Logs go to stderr (level
from RUST_LOG, default info).";

const RESTORE_AFTER: &str = "\
Restores the newest checkpoint in the image dir in the foreground and supervises
the app exactly like `crik run` (signals forwarded, zombies reaped, exit code
passed on, SIGTERM checkpoints again). Meant for debugging a checkpoint locally.
The checkpoint is left where it is (not retired or quarantined), so it can be
restored again. Its PIDs must be free, so run it as PID 1 of a fresh PID
namespace:

  unshare --pid --fork --mount-proc crik restore --image-dir /var/lib/crik

CRIU's log is written to <checkpoint>/images/restore.log; crik prints its path.";

#[derive(Debug, Parser)]
#[command(name = "crik", version, about = ABOUT, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD as the container's init; checkpoint it on SIGTERM, restore it on the next start
    #[command(after_help = RUN_AFTER)]
    Run(RunArgs),
    /// Restore the newest checkpoint in the foreground (for debugging a checkpoint)
    #[command(after_help = RESTORE_AFTER)]
    Restore(RestoreArgs),
    /// Show what the checkpoints in an image dir hold (read-only)
    #[command(after_help = INSPECT_AFTER)]
    Inspect(InspectArgs),
    /// Print a new random key for encryption.keyFiles (keep it out of the image and the bucket)
    #[command(after_help = KEYGEN_AFTER)]
    Keygen,
    /// Copy the bundle crik runs from (/opt/crik) into DEST (an init container filling an emptyDir)
    #[command(after_help = COPY_BUNDLE_AFTER)]
    CopyBundle {
        /// An existing directory, mounted at /opt/crik in the app's container
        dest: PathBuf,
    },
    /// The init of the app's own PID namespace (`isolatePids`), started by `crik run`
    #[command(hide = true)]
    Reap {
        /// The app and its arguments
        #[arg(value_name = "CMD", trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

const COPY_BUNDLE_AFTER: &str = "\
For Kubernetes without rebuilding the app's image: an init container of the crik
image runs `/opt/crik/bin/crik copy-bundle /bundle` with an emptyDir mounted at
/bundle; the app's container mounts the same emptyDir at /opt/crik and runs
`/opt/crik/bin/crik run -- <its command>`. See docs/bundle.md.";

const KEYGEN_AFTER: &str = "\
Writes one line to stdout: `crik-key-v1:` and 64 hex digits (256 random bits).
Store it as a Kubernetes Secret mounted as a file and name that file in
encryption.keyFiles: checkpoints are then sealed with it (in object storage
encrypted with AES-256-GCM under keyed chunk names; in the image dir MAC'd) and
refused if altered, sealed elsewhere, or older than the newest on record.

Example:
  crik keygen > crik.key && kubectl create secret generic crik-key --from-file=crik.key";

const INSPECT_AFTER: &str = "\
Lists every checkpoint in the image dir (complete, retired, quarantined or
partial) and shows one in detail: its manifest (command, stdio, crik/CRIU/kernel
versions, time), whether its files are intact (sizes and checksums), the process
tree with command lines, open files and sockets per process, and memory and
image sizes. CRIU's image files are decoded by crik itself.

Examples:
  crik inspect --image-dir /var/lib/crik/images
  crik inspect --image-dir /var/lib/crik/images --checkpoint 20261125T152416.123Z --json";

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Configuration file (default: $CRIK_CONFIG, else /etc/crik/config.yaml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Image directory (default: imageDir from the configuration)
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
    /// Checkpoint to show in detail (default: the newest complete one)
    #[arg(long, value_name = "ID")]
    pub checkpoint: Option<String>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (default: $CRIK_CONFIG, else /etc/crik/config.yaml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The app to run and its arguments (may be omitted when a checkpoint will be restored)
    #[arg(value_name = "CMD", trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Configuration file (default: $CRIK_CONFIG, else /etc/crik/config.yaml)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Image directory to restore from (default: imageDir from the configuration)
    #[arg(long, value_name = "DIR")]
    pub image_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_takes_everything_after_double_dash() {
        let cli =
            Cli::try_parse_from(["crik", "run", "--config", "/c.yaml", "--", "sh", "-c", "echo --config"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert_eq!(r.config, Some(PathBuf::from("/c.yaml")));
        assert_eq!(r.command, vec!["sh", "-c", "echo --config"]);
    }

    #[test]
    fn run_without_command_parses_and_restore_takes_image_dir() {
        let cli = Cli::try_parse_from(["crik", "run"]).unwrap();
        let Command::Run(r) = cli.command else { panic!() };
        assert!(r.command.is_empty());
        let cli = Cli::try_parse_from(["crik", "restore", "--image-dir", "/x"]).unwrap();
        let Command::Restore(r) = cli.command else { panic!() };
        assert_eq!(r.image_dir, Some(PathBuf::from("/x")));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
