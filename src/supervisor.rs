//! PID-1 duties: start the app, forward signals, reap every zombie, pass the exit code on.
//!
//! Like tini, crik blocks every signal it cares about and takes them synchronously with
//! `sigtimedwait`: no handlers, no threads. Crash signals stay unblocked so a bug in crik still
//! kills it. Children get the original mask and default dispositions back before `exec`.

use std::ffi::OsString;
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

/// Where PIDs of a freshly started app begin, so that they are free again at restore time,
/// when crik, CRIU and its helpers take the low ones.
pub const APP_PID_BASE: u32 = 9000;

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
                reset_signals(&original)?;
                if new_session && libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Mark (not close) every fd above 2 close-on-exec: std's own exec-error pipe
                // must stay open until exec. A stray fd from another mount namespace would
                // make a later CRIU dump fail.
                if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &keep_fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
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

/// Pushes the namespace's next PID up to `APP_PID_BASE`, so the app's PIDs are free again at
/// restore time. Writing `ns_last_pid` needs a writable /proc/sys (privileged containers); where
/// it is read-only and crik is PID 1 of its own namespace, crik instead burns through the low
/// PIDs with short-lived children (under a second, once per container start). Elsewhere it
/// leaves the PIDs alone.
pub fn reserve_low_pids() {
    let path = "/proc/sys/kernel/ns_last_pid";
    let current: u32 = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    if current >= APP_PID_BASE {
        return;
    }
    match std::fs::write(path, APP_PID_BASE.to_string()) {
        Ok(()) => log::debug!("set {path} to {APP_PID_BASE}"),
        Err(e) if std::process::id() == 1 => {
            let started = std::time::Instant::now();
            let reached = burn_pids(APP_PID_BASE);
            log::info!(
                "{path} is not writable ({e}): advanced PIDs to {reached} with throwaway children in {} ms",
                started.elapsed().as_millis()
            );
        }
        Err(e) => log::debug!("not setting {path}: {e}"),
    }
}

/// Forks and reaps children that exit at once until the kernel hands out a PID >= `target`.
fn burn_pids(target: u32) -> u32 {
    loop {
        // SAFETY: the vfork child shares our memory and only calls _exit, which is allowed;
        // vfork skips copying page tables, which makes this four times faster than fork.
        #[allow(deprecated)]
        let pid = unsafe { libc::vfork() };
        match pid {
            0 => unsafe { libc::_exit(0) },
            p if p < 0 => return 0,
            p => {
                let _ = waitpid(Pid::from_raw(p), None);
                if p as u32 >= target {
                    return p as u32;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("command not executable: {0}")]
    NotExecutable(String),
    #[error("cannot start {0}: {1}")]
    Other(String, io::Error),
}

impl SpawnError {
    /// The exit code a shell would give (127 not found, 126 not executable).
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            SpawnError::NotExecutable(_) => 126,
            SpawnError::Other(..) => 126,
        }
    }
}

/// Starts the app in its own session with stdin, stdout and stderr passed through.
pub fn spawn_app(signals: &Signals, argv: &[OsString]) -> Result<Pid, SpawnError> {
    let name = argv[0].to_string_lossy().into_owned();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let [stdin, stdout, stderr] = stdio_reopened_here();
    if let Some(f) = stdin {
        cmd.stdin(f);
    }
    if let Some(f) = stdout {
        cmd.stdout(f);
    }
    if let Some(f) = stderr {
        cmd.stderr(f);
    }
    signals.prepare_child(&mut cmd, true, Vec::new());
    match cmd.spawn() {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpawnError::NotFound(name)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(SpawnError::NotExecutable(name)),
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => Err(SpawnError::NotExecutable(name)),
        Err(e) => Err(SpawnError::Other(name, e)),
    }
}

/// crik's stdin/stdout/stderr that are files on a mount outside this mount namespace (e.g.
/// /dev/null opened by whoever started crik, before `unshare`), reopened here by path. CRIU
/// cannot dump an fd whose mount it cannot see ("Can't lookup mount"), so the app must not
/// inherit them. Pipes, sockets and files on visible mounts are passed through untouched.
pub fn stdio_reopened_here() -> [Option<std::fs::File>; 3] {
    let mounts: Vec<u64> = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect())
        .unwrap_or_default();
    [0, 1, 2].map(|fd| {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_owned));
        let mnt_id: u64 = field("mnt_id:")?.parse().ok()?;
        if mounts.contains(&mnt_id) {
            return None;
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        if !path.is_absolute() {
            return None; // pipe:[..], socket:[..], anon_inode:..: not tied to a mount we can reopen
        }
        let flags = i32::from_str_radix(&field("flags:")?, 8).ok()?;
        let mut opts = std::fs::OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => opts.write(true),
            libc::O_RDWR => opts.read(true).write(true),
            _ => opts.read(true),
        };
        if flags & libc::O_APPEND != 0 {
            opts.append(true);
        }
        match opts.open(&path) {
            Ok(f) => {
                log::debug!(
                    "fd {fd} ({}) is on a mount outside this namespace; the app gets it reopened",
                    path.display()
                );
                Some(f)
            }
            Err(e) => {
                log::warn!(
                    "fd {fd} ({}) is on a mount outside this namespace and cannot be reopened: {e}",
                    path.display()
                );
                None
            }
        }
    })
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

/// SIGKILLs every descendant of crik (used when a CRIU restore failed half-way: the partly
/// restored tree hangs off crik, in process groups of its own).
pub fn kill_descendants() {
    signal_descendants(Signal::SIGKILL);
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Sends `sig` to every descendant of crik (the whole app tree, whatever its process groups).
pub fn signal_descendants(sig: Signal) {
    let me = std::process::id() as i32;
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // The command name may contain spaces and parentheses: parse after the last ')'.
                if let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)) {
                    if let Ok(ppid) = ppid.parse() {
                        parents.push((pid, ppid));
                    }
                }
            }
        }
    }
    let mut tree = vec![me];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    for pid in tree.into_iter().skip(1) {
        log::debug!("sending {sig} to {pid}");
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// What to do with a SIGTERM, decided by the caller (checkpointing lives elsewhere).
pub enum TermAction {
    /// Pass SIGTERM on to the app and keep supervising.
    Forward,
    /// The app's tree was checkpointed and stopped: exit with this code.
    Exit(i32),
}

/// Supervises the app until it exits (returns its exit code) or a SIGTERM handler asks to exit.
/// Something to run every `every` while the app runs (periodic checkpoints).
pub struct Periodic<'a> {
    pub every: Duration,
    pub run: &'a mut dyn FnMut(Pid),
}

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

    #[test]
    fn spawn_errors_map_to_126_and_127() {
        assert_eq!(SpawnError::NotFound("x".into()).exit_code(), 127);
        assert_eq!(SpawnError::NotExecutable("x".into()).exit_code(), 126);
    }
}
