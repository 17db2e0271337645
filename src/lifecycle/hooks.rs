//! The app's part in its checkpoints: commands crik runs at the moments that matter to it
//! (`hooks`), and files it can watch (`controlDir`), so that an app can shrink itself before a
//! checkpoint and refresh what moved after a restore without knowing anything of crik.
//!
//! - `hooks.preCheckpoint` runs before a final checkpoint (and before periodic ones with
//!   `hooks.beforePeriodic`), inside the checkpoint's budget; `hooks.postRestore` once the
//!   restored app runs; `hooks.checkpointFailed` after a checkpoint that failed. Each runs in
//!   crik's container with the app's environment, in a session of its own, bounded by
//!   `hooks.timeout` (its whole session killed past it), its output in crik's log.
//! - In `controlDir`, `checkpointing` appears before a checkpoint (removed when the app keeps
//!   running) and `restored` after a restore, each a small JSON file written whole under another
//!   name and renamed into place, so that a reader never sees half of it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, HooksConfig};
use crate::init::supervisor::Signals;

/// The moments a hook runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    PreCheckpoint,
    PostRestore,
    CheckpointFailed,
}

impl Moment {
    pub fn name(self) -> &'static str {
        match self {
            Moment::PreCheckpoint => "preCheckpoint",
            Moment::PostRestore => "postRestore",
            Moment::CheckpointFailed => "checkpointFailed",
        }
    }

    fn command(self, hooks: &HooksConfig) -> &[String] {
        match self {
            Moment::PreCheckpoint => &hooks.pre_checkpoint,
            Moment::PostRestore => &hooks.post_restore,
            Moment::CheckpointFailed => &hooks.checkpoint_failed,
        }
    }
}

/// At most this much of a hook's output goes into crik's log.
const MAX_OUTPUT: usize = 16 << 10;

/// Runs the hook of `moment`, if one is configured, with `vars` added to its environment.
/// `true`: none is configured, or it exited 0 within its timeout. Every outcome is logged.
pub fn run(signals: &Signals, config: &Config, moment: Moment, vars: &[(&str, String)]) -> bool {
    let argv = moment.command(&config.hooks);
    let Some((program, args)) = argv.split_first() else { return true };
    let hook = moment.name();
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).env("CRIK_HOOK", hook);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    // Default signal dispositions, no fd of crik's, and a session of its own: killed whole.
    signals.prepare_child(&mut cmd, true, Vec::new());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::error!(event = "hook_failed", hook; "hook {hook} ({program}) could not start: {e}");
            return false;
        }
    };
    // Read as it comes (a full pipe would block the hook).
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let timeout = config.hooks.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                // Its whole session: a shell's children too.
                let _ =
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                log::error!(event = "hook_failed", hook; "hook {hook}: cannot wait for it: {e}");
                break None;
            }
        }
    };
    // Whatever it left running in its session (a daemon it started) would escape the app's
    // tree and fail the next checkpoint: gone with it.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
    let ms = started.elapsed().as_millis() as u64;
    for (stream, handle) in [("stdout", out), ("stderr", err)] {
        let text = handle.and_then(|h| h.join().ok()).unwrap_or_default();
        for line in String::from_utf8_lossy(&text).lines().filter(|l| !l.trim().is_empty()) {
            log::info!("hook {hook} {stream}: {line}");
        }
    }
    match status {
        Some(s) if s.success() => {
            log::info!(event = "hook_finished", hook, duration_ms = ms; "hook {hook} finished in {ms} ms");
            true
        }
        Some(s) => {
            log::error!(event = "hook_failed", hook, duration_ms = ms; "hook {hook} failed after {ms} ms: {s}");
            false
        }
        None => {
            log::error!(event = "hook_failed", hook, duration_ms = ms;
                "hook {hook} did not finish within {} s (hooks.timeout): killed", timeout.as_secs_f64());
            false
        }
    }
}

/// Reads a hook's output to its end on a thread of its own, keeping the first MAX_OUTPUT bytes.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    })
}

/// The control dir's file that says a checkpoint is under way.
pub const CHECKPOINTING: &str = "checkpointing";
/// The control dir's file that says the app was restored.
pub const RESTORED: &str = "restored";

/// Writes `name` in the control dir, whole: under a temporary name, then renamed into place.
/// Best effort (logged): the app's cooperation must never cost its checkpoint.
pub fn announce(config: &Config, name: &str, body: &serde_json::Value) {
    let Some(dir) = &config.control_dir else { return };
    let dir = dir.as_path();
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("{body}\n"))?;
        std::fs::rename(&tmp, dir.join(name))
    };
    if let Err(e) = write() {
        log::warn!("cannot write {} in controlDir: {e}", dir.join(name).display());
    }
}

/// Removes `name` from the control dir (the checkpoint is over and the app runs on).
pub fn withdraw(config: &Config, name: &str) {
    if let Some(dir) = &config.control_dir {
        let _ = std::fs::remove_file(dir.as_path().join(name));
    }
}

/// What the `checkpointing` file says.
pub fn checkpointing(kind: &str) -> serde_json::Value {
    serde_json::json!({ "kind": kind, "since": now() })
}

/// What the `restored` file says: the checkpoint, when it was taken, how long the app was away,
/// and its addresses then and now.
pub fn restored(id: &str, manifest: &crate::store::manifest::Manifest, lazy: bool) -> serde_json::Value {
    let taken = humantime::parse_rfc3339_weak(&manifest.created).ok();
    let downtime_ms = taken.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_millis() as u64);
    serde_json::json!({
        "checkpoint": id,
        "taken": manifest.created,
        "restored": now(),
        "downtimeMs": downtime_ms,
        "addressesBefore": manifest.addresses,
        "addressesNow": crate::host::addresses(),
        "lazyPages": lazy,
    })
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// After a restore: the `restored` file, `restoreSignal` to the app's root process, then the
/// `postRestore` hook.
pub fn after_restore(
    signals: &Signals,
    config: &Config,
    id: &str,
    pid: nix::unistd::Pid,
    manifest: &crate::store::manifest::Manifest,
) {
    withdraw(config, CHECKPOINTING);
    announce(config, RESTORED, &restored(id, manifest, config.lazy_pages));
    if let Some(sig) = config.restore_signal {
        if let Err(e) = nix::sys::signal::kill(pid, sig) {
            log::warn!("cannot send {sig} to the restored app (pid {pid}): {e}");
        } else {
            log::info!("sent {sig} to the restored app (restoreSignal)");
        }
    }
    let vars = [
        ("CRIK_CHECKPOINT_ID", id.to_string()),
        ("CRIK_APP_PID", pid.to_string()),
        ("CRIK_LAZY_PAGES", if config.lazy_pages { "1".into() } else { "0".into() }),
    ];
    run(signals, config, Moment::PostRestore, &vars);
}
