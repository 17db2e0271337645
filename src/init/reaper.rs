//! `crik reap`: the init of the app's own PID namespace (`isolatePids`).
//!
//! A process the app daemonizes (forks twice, the middle one exits: Chromium's crashpad
//! handler) is re-parented to the nearest subreaper above it, else to its PID namespace's init.
//! Without a namespace of its own that is crik, outside the tree CRIU dumps. A subreaper inside
//! the app (tini) is not enough either: at restore CRIU re-creates the orphan's dead session
//! leader as a helper that exits before the subreaper flag is restored (`wait_helpers()` before
//! `restore_child_subreaper()` in CRIU's restorer), so after the first restore the orphan lands
//! on crik. The init of a PID namespace adopts every orphan in it, always, restores included.
//!
//! crik starts `crik reap -- CMD` as the init of a new PID and mount namespace
//! ([`crate::init::app::spawn_app`]); CRIU dumps it as the root of the app's tree, namespaces
//! and all, and restores it the same way. The reaper
//! 1. gives the namespace a /proc of its own, so that what the app reads there agrees with its
//!    `getpid()`; the runtime's masks over parts of /proc (`/proc/kcore`, read-only
//!    `/proc/sys`, ...) are moved onto the new /proc, not dropped;
//! 2. reopens stdio that is a file on a mount of crik's namespace (CRIU could not dump it);
//! 3. starts CMD in a session of its own, passes signals on to it, reaps every orphan, and exits
//!    with CMD's exit code (128 + the signal when it was killed): then the kernel kills whatever
//!    is left in the namespace.
//!
//! It is crik's own binary, so it costs one more small process (its memory is in
//! docs/performance.md) and keeps no state but CMD's PID.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::host::mountinfo;
use crate::init::app;
use crate::init::supervisor::{self, Signals};

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("crik reap runs only as the init of the app's PID namespace (started by `crik run` with isolatePids)")]
    NotInit,
    #[error("cannot read this namespace's mounts: {0}")]
    Mounts(std::io::Error),
    #[error("no /proc is mounted in the container")]
    NoProc,
    #[error("cannot {what}: {source}")]
    Mount { what: String, source: nix::Error },
    #[error("cannot make a scratch directory for the new /proc in /dev, /tmp or /run: {0}")]
    Scratch(std::io::Error),
    #[error("cannot block signals: {0}")]
    Signals(nix::Error),
}

/// The reaper's whole life; returns the exit code.
pub fn run(command: &[OsString]) -> i32 {
    if std::process::id() != 1 {
        eprintln!("crik: {}", ReaperError::NotInit);
        return 2;
    }
    if let Err(e) = own_proc() {
        eprintln!("crik: preparing the app's PID namespace failed: {e}");
        return 1;
    }
    reopen_stdio();
    let signals = match Signals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("crik: {}", ReaperError::Signals(e));
            return 1;
        }
    };
    let main = match app::spawn_plain(&signals, command) {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("crik: {e}");
            return e.exit_code();
        }
    };
    // As crik does: the start-up code is not needed again.
    supervisor::release_startup_text();
    pass_on(&signals, main)
}

/// Every signal but SIGCHLD goes to the app: crik sends the reaper only what is meant for the
/// app (forwarded signals, SIGTERM when it does not checkpoint, `restoreSignal`).
fn pass_on(signals: &Signals, main: nix::unistd::Pid) -> i32 {
    loop {
        match signals.wait(None) {
            Ok(Some(nix::sys::signal::Signal::SIGCHLD)) => {
                if let Some(code) = supervisor::reap_all(main) {
                    return code;
                }
            }
            Ok(Some(sig)) => supervisor::forward(main, sig),
            Ok(None) => {}
            Err(e) => {
                eprintln!("crik: warning: waiting for signals failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Mounts a /proc of this PID namespace over the container's, with the container's submounts
/// of /proc (the runtime's masks) moved onto it.
fn own_proc() -> Result<(), ReaperError> {
    let failed = |what: String| move |source| ReaperError::Mount { what, source };
    // A private copy: nothing done here reaches the container's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(failed("make this mount namespace private".into()))?;
    let mounts = mountinfo::read().map_err(ReaperError::Mounts)?;
    // The /proc in effect: the last mounted there.
    let old = mounts.iter().rev().find(|m| m.point == Path::new("/proc")).ok_or(ReaperError::NoProc)?;
    let options = proc_options(&old.super_options);
    let scratch = scratch_dir()?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let result = (|| {
        mount(Some("proc"), &scratch, Some("proc"), flags, options.as_deref())
            .map_err(failed(format!("mount a new proc on {}", scratch.display())))?;
        for sub in mounts.iter().filter(|m| m.parent == old.id) {
            let Ok(rel) = sub.point.strip_prefix("/proc") else { continue };
            let target = scratch.join(rel);
            // A mount on a path the new /proc lacks (a process of the old namespace) goes with it.
            if let Err(e) = mount(Some(&sub.point), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>) {
                eprintln!("crik: warning: {} is not carried over to the app's /proc: {e}", sub.point.display());
            }
        }
        umount2("/proc", MntFlags::MNT_DETACH).map_err(failed("unmount the container's /proc".into()))?;
        mount(Some(&scratch), "/proc", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(failed("move the new proc onto /proc".into()))
    })();
    let _ = std::fs::remove_dir(&scratch);
    result
}

/// The options of the container's proc mount that a new one must repeat (who may see which
/// processes).
fn proc_options(super_options: &str) -> Option<String> {
    let kept: Vec<&str> =
        super_options.split(',').filter(|o| ["hidepid=", "gid=", "subset="].iter().any(|k| o.starts_with(k))).collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// An empty directory to mount the new proc on before it replaces /proc: /dev is a writable
/// tmpfs in every container runtime, even with a read-only root.
fn scratch_dir() -> Result<PathBuf, ReaperError> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut last = std::io::Error::from(std::io::ErrorKind::NotFound);
    for base in ["/dev", "/tmp", "/run"] {
        let dir = Path::new(base).join(format!(".crik-proc-{nanos}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = e,
        }
    }
    Err(ReaperError::Scratch(last))
}

/// Puts stdio files that live on mounts of crik's namespace (every path-named one: this
/// namespace's mounts are copies) back as the same paths opened here.
fn reopen_stdio() {
    use std::os::fd::AsRawFd;
    for (fd, file) in app::stdio_reopened_here().into_iter().enumerate() {
        if let Some(f) = file {
            // SAFETY: dup2 onto 0-2 of this single-threaded process.
            if unsafe { libc::dup2(f.as_raw_fd(), fd as i32) } < 0 {
                eprintln!("crik: warning: cannot reopen fd {fd}: {}", std::io::Error::last_os_error());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_visibility_options_of_proc_are_repeated() {
        assert_eq!(proc_options("rw"), None);
        assert_eq!(proc_options("rw,hidepid=invisible,gid=5"), Some("hidepid=invisible,gid=5".into()));
        assert_eq!(proc_options("rw,subset=pid"), Some("subset=pid".into()));
    }
}
