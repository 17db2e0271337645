//! PID-1 duties: forward signals, reap every zombie, pass the exit code on. (Starting the app
//! and killing its tree: [`crate::init::app`].)
//!
//! Like tini, crik blocks every signal it cares about and takes them synchronously with
//! `sigtimedwait`: no handlers, no threads. Crash signals stay unblocked so a bug in crik still
//! kills it. Children get the original mask and default dispositions back before `exec`.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals passed on to the app unchanged. SIGTERM is handled separately: it may checkpoint.
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

/// Signals that must keep their default action in crik itself.
const CRASH: [Signal; 9] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// The blocked signal set, and the mask crik started with (given back to children).
pub struct Signals {
    original: SigSet,
}

impl Signals {
    /// Blocks all signals but the crash ones. Call before any thread exists.
    pub fn block() -> nix::Result<Self> {
        let set = handled_set();
        let mut original = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&set), Some(&mut original))?;
        Ok(Signals { original })
    }

    /// Waits for the next signal, at most `timeout` (`None`: forever).
    pub fn wait(&self, timeout: Option<Duration>) -> nix::Result<Option<Signal>> {
        let set = handled_set();
        loop {
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            });
            let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
            // SAFETY: set is a valid sigset; siginfo may be null; tsp is null or valid.
            let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), tsp) };
            if r >= 0 {
                return Ok(Signal::try_from(r).ok());
            }
            match Errno::last() {
                Errno::EAGAIN => return Ok(None),
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    /// Prepares `cmd` to run with crik's original signal mask, default dispositions and no
    /// inherited file descriptor above 2, in a session of its own.
    pub fn prepare_child(&self, cmd: &mut Command, new_session: bool, keep_fds: Vec<i32>) {
        let original = self.original;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                child_setup(&original, new_session)?;
                for &fd in &keep_fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// What [`Signals::prepare_child`] does before `exec`, for a child started otherwise
    /// (`clone`): async-signal-safe.
    pub fn setup_in_child(&self) -> io::Result<()> {
        child_setup(&self.original, true)
    }
}

/// Async-signal-safe: the original mask and default dispositions, a new session if asked, and
/// every fd above 2 marked (not closed) close-on-exec: std's own exec-error pipe must stay open
/// until exec. A stray fd from another mount namespace would make a later CRIU dump fail.
fn child_setup(original: &SigSet, new_session: bool) -> io::Result<()> {
    reset_signals(original)?;
    // SAFETY: plain libc calls with integer arguments.
    unsafe {
        if new_session && libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Every signal but the crash ones: blocked in crik, taken synchronously.
fn handled_set() -> SigSet {
    let mut set = SigSet::all();
    for s in CRASH {
        set.remove(s);
    }
    set
}

/// Async-signal-safe: default dispositions for all catchable signals, then the original mask.
fn reset_signals(original: &SigSet) -> io::Result<()> {
    // SAFETY: plain libc calls on valid arguments.
    unsafe {
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::sigprocmask(libc::SIG_SETMASK, original.as_ref(), std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes crik inherit orphaned descendants when it is not PID 1, so it can reap them.
pub fn become_subreaper() -> io::Result<()> {
    if std::process::id() == 1 {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops crik's mappings of its own program text once start-up is over. Argument parsing,
/// configuration and logging set-up touch (and the kernel's fault-around maps) most of the
/// binary, yet the idle supervision loop runs a few pages of it. The pages stay in the page
/// cache; whatever crik runs later (a checkpoint) is mapped back in on demand. Only executable
/// mappings are dropped: they are never written, so nothing is lost (the relocated read-only
/// data is left alone).
pub fn release_startup_text() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        let path = f.nth(3).unwrap_or("");
        if perms != "r-xp" || std::path::Path::new(path) != exe {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        // SAFETY: a private, never-written file mapping of our own text: dropping its pages
        // only makes the next execution of that code fault them back in from the page cache.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// Exit code for a wait status: the code, or 128 + the signal number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Reaps every exited child without blocking. Returns the main child's exit code if it was
/// among them.
pub fn reap_all(main: Pid) -> Option<i32> {
    let mut main_code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return main_code,
            Ok(status) => {
                if status.pid() == Some(main) {
                    main_code = exit_code(status);
                } else if let Some(pid) = status.pid() {
                    log::debug!("reaped orphan {pid}: {status:?}");
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                return main_code;
            }
        }
    }
}

/// What to do with a SIGTERM, decided by the caller (checkpointing lives elsewhere).
pub enum TermAction {
    /// Pass SIGTERM on to the app and keep supervising.
    Forward,
    /// The app's tree was checkpointed and stopped: exit with this code.
    Exit(i32),
}

/// Something to run every `every` while the app runs (periodic checkpoints).
pub struct Periodic<'a> {
    pub every: Duration,
    pub run: &'a mut dyn FnMut(Pid),
}

/// Supervises the app until it exits (returns its exit code) or the SIGTERM handler asks to
/// exit (returns the code it gave). `periodic` runs between signals, when it is due.
pub fn supervise(
    signals: &Signals,
    main: Pid,
    on_term: &mut dyn FnMut(Pid) -> TermAction,
    mut periodic: Option<Periodic>,
) -> i32 {
    let mut next_due = periodic.as_ref().map(|p| std::time::Instant::now() + p.every);
    // The app may have exited before the loop started; its SIGCHLD is pending then.
    loop {
        let timeout = next_due.map(|t| t.saturating_duration_since(std::time::Instant::now()));
        let sig = match signals.wait(timeout) {
            Ok(Some(sig)) => sig,
            Ok(None) => {
                if let (Some(p), Some(due)) = (periodic.as_mut(), next_due.as_mut()) {
                    if std::time::Instant::now() >= *due {
                        (p.run)(main);
                        // Measured from the end of this run: a slow checkpoint never stacks up.
                        *due = std::time::Instant::now() + p.every;
                    }
                }
                continue;
            }
            Err(e) => {
                log::error!("waiting for signals failed: {e}");
                continue;
            }
        };
        match sig {
            Signal::SIGCHLD => {
                if let Some(code) = reap_all(main) {
                    log::info!("app (pid {main}) exited with code {code}");
                    return code;
                }
            }
            Signal::SIGTERM => match on_term(main) {
                TermAction::Forward => forward(main, sig),
                TermAction::Exit(code) => {
                    reap_all(main);
                    return code;
                }
            },
            s if FORWARDED.contains(&s) => forward(main, s),
            s => log::debug!("ignoring {s}"),
        }
    }
}

/// Sends `sig` to the app's main process only (as tini and Docker do): the app decides what
/// its own children get.
pub fn forward(main: Pid, sig: Signal) {
    log::debug!("forwarding {sig} to pid {main}");
    if let Err(e) = kill(main, sig) {
        if e != Errno::ESRCH {
            log::warn!("forwarding {sig} to pid {main} failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)), Some(137));
        assert_eq!(exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)), Some(143));
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
