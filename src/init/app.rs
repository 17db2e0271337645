//! The app's processes: starting it (a session of its own, stdio that CRIU can dump, PIDs that
//! will be free at restore time) and killing its whole tree.

use std::ffi::OsString;
use std::io;
use std::process::Command;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::init::supervisor::Signals;

use crate::host::procfs::{FdInfo, Stat};

/// Where PIDs of a freshly started app begin, so that they are free again at restore time,
/// when crik, CRIU and its helpers take the low ones.
pub const APP_PID_BASE: u32 = 9000;

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

/// Starts and reaps children that exit at once until the kernel hands out a PID >= `target`.
/// Each child is a `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own that only calls
/// `_exit`: no page tables copied (four times faster than fork), and unlike `vfork()` nothing
/// ever returns twice on crik's own stack.
fn burn_pids(target: u32) -> u32 {
    extern "C" fn exit_at_once(_: *mut libc::c_void) -> libc::c_int {
        // SAFETY: _exit is async-signal-safe and touches no shared state.
        unsafe { libc::_exit(0) }
    }
    // CLONE_VFORK suspends crik until the child has exited: one stack serves every child.
    let mut stack = vec![0u128; 1024]; // 16 KiB, 16-byte aligned
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    loop {
        // SAFETY: the child runs `exit_at_once` on `stack` (alive for the whole loop) and
        // exits; crik resumes only after that (CLONE_VFORK).
        let pid = unsafe {
            libc::clone(exit_at_once, top, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, std::ptr::null_mut())
        };
        if pid < 0 {
            return 0;
        }
        let _ = waitpid(Pid::from_raw(pid), None);
        if pid as u32 >= target {
            return pid as u32;
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

/// Namespaces of its own the app is started in, which CRIU then checkpoints with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Isolation {
    /// An IPC namespace: System V shared memory, semaphores, message queues (`isolateIpc`).
    pub ipc: bool,
    /// A PID and mount namespace under crik's reaper (`isolatePids`, [`crate::init::reaper`]).
    pub pids: bool,
}

/// Starts the app in its own session with stdin, stdout and stderr passed through; with
/// `isolation.pids`, under `crik reap` as the init of a PID namespace of its own.
pub fn spawn_app(signals: &Signals, argv: &[OsString], isolation: Isolation) -> Result<Pid, SpawnError> {
    if isolation.pids {
        spawn_reaper(signals, argv, isolation.ipc)
    } else {
        spawn_command(signals, argv, isolation.ipc)
    }
}

/// Starts `argv` in its own session (the reaper starting the app).
pub fn spawn_plain(signals: &Signals, argv: &[OsString]) -> Result<Pid, SpawnError> {
    spawn_command(signals, argv, false)
}

fn spawn_command(signals: &Signals, argv: &[OsString], isolate_ipc: bool) -> Result<Pid, SpawnError> {
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
    if isolate_ipc {
        use std::os::unix::process::CommandExt;
        // SAFETY: unshare is async-signal-safe; runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWIPC) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpawnError::NotFound(name)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(SpawnError::NotExecutable(name)),
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => Err(SpawnError::NotExecutable(name)),
        Err(e) => Err(SpawnError::Other(name, e)),
    }
}

/// What the child of [`spawn_reaper`] needs, all prepared before `clone`: it only calls
/// async-signal-safe functions (crik may have threads; the child has one).
struct ReaperExec<'a> {
    signals: &'a Signals,
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Close-on-exec: the child writes its errno here when it cannot exec.
    error_fd: libc::c_int,
}

/// Starts `crik reap -- argv` (this binary) as the init of a new PID and mount namespace (and
/// IPC namespace with `isolate_ipc`). `clone` rather than fork + `unshare`: `unshare(NEWPID)`
/// would put only the reaper's children in the new namespace.
fn spawn_reaper(signals: &Signals, argv: &[OsString], isolate_ipc: bool) -> Result<Pid, SpawnError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let failed = |e: io::Error| SpawnError::Other("crik reap (isolatePids)".into(), e);
    let c = |s: &[u8]| CString::new(s).map_err(|_| failed(io::Error::from(io::ErrorKind::InvalidInput)));
    let exe = c(std::env::current_exe().map_err(failed)?.as_os_str().as_bytes())?;
    let mut args = vec![c(b"crik")?, c(b"reap")?, c(b"--")?];
    for a in argv {
        args.push(c(a.as_bytes())?);
    }
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        env.push(c(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    let null_terminated = |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
    let (argv_p, envp_p) = (null_terminated(&args), null_terminated(&env));
    let (error_r, error_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed(e.into()))?;
    let exec = ReaperExec {
        signals,
        exe: exe.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: envp_p.as_ptr(),
        error_fd: std::os::fd::AsRawFd::as_raw_fd(&error_w),
    };
    extern "C" fn start(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the ReaperExec below, in this child's copy of crik's memory.
        let exec = unsafe { &*(arg as *const ReaperExec) };
        let errno = match exec.signals.setup_in_child() {
            Err(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            Ok(()) => {
                // SAFETY: NUL-terminated strings and NULL-terminated arrays, prepared above.
                unsafe { libc::execve(exec.exe, exec.argv, exec.envp) };
                nix::errno::Errno::last_raw()
            }
        };
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(exec.error_fd, (&errno as *const i32).cast(), 4);
            libc::_exit(127)
        }
    }
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD;
    if isolate_ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    // Without CLONE_VM the child runs on its own copy of this stack.
    let mut stack = vec![0u128; 4096]; // 64 KiB, 16-byte aligned
    let top = stack.as_mut_ptr_range().end.cast::<libc::c_void>();
    // SAFETY: `start` only reads `exec` and calls async-signal-safe functions before exec.
    let pid = unsafe { libc::clone(start, top, flags, (&exec as *const ReaperExec).cast_mut().cast()) };
    if pid < 0 {
        return Err(failed(io::Error::last_os_error()));
    }
    drop(error_w);
    let mut errno = [0u8; 4];
    match nix::unistd::read(&error_r, &mut errno) {
        Ok(4) => {
            let _ = waitpid(Pid::from_raw(pid), None);
            Err(failed(io::Error::from_raw_os_error(i32::from_ne_bytes(errno))))
        }
        _ => Ok(Pid::from_raw(pid)),
    }
}

/// crik's stdin/stdout/stderr that are files on a mount outside this mount namespace (e.g.
/// /dev/null opened by whoever started crik, before `unshare`), reopened here by path. CRIU
/// cannot dump an fd whose mount it cannot see ("Can't lookup mount"), so the app must not
/// inherit them. Pipes, sockets and files on visible mounts are passed through untouched.
pub fn stdio_reopened_here() -> [Option<std::fs::File>; 3] {
    let mounts: Vec<u64> = crate::host::mountinfo::read().unwrap_or_default().iter().map(|m| m.id).collect();
    [0, 1, 2].map(|fd| {
        let info = FdInfo::read(std::path::Path::new(&format!("/proc/self/fdinfo/{fd}")))?;
        if mounts.contains(&info.mnt_id) {
            return None;
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
        if !path.is_absolute() {
            return None; // pipe:[..], socket:[..], anon_inode:..: not tied to a mount we can reopen
        }
        match crate::host::procfs::reopen_options(info.flags).open(&path) {
            Ok(f) => {
                // Where the original was: an app appending to crik's log file must not
                // overwrite it from the start (a device or pipe has no offset: ignored).
                // SAFETY: lseek on fds this function owns or borrows.
                unsafe {
                    let at = libc::lseek(fd, 0, libc::SEEK_CUR);
                    if at > 0 {
                        libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&f), at, libc::SEEK_SET);
                    }
                }
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
    for pid in descendants_of(std::process::id() as i32) {
        log::debug!("sending {sig} to {pid}");
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Every process below `root` (children first-level first), from /proc.
pub fn descendants_of(root: i32) -> Vec<i32> {
    ProcessTable::read().descendants(root)
}

/// The `stat` of every process (its parent, session, state), read from /proc once: several
/// questions about the tree (the app's processes, those outside it) answered from one scan.
pub struct ProcessTable(Vec<(i32, Stat)>);

impl ProcessTable {
    pub fn read() -> ProcessTable {
        let mut stats: Vec<(i32, Stat)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                if let Some(stat) = Stat::of(pid) {
                    stats.push((pid, stat));
                }
            }
        }
        ProcessTable(stats)
    }

    /// What the scan read of `pid`.
    pub fn stat(&self, pid: i32) -> Option<Stat> {
        self.0.iter().find(|(p, _)| *p == pid).map(|(_, s)| *s)
    }

    /// Every process below `root`, children first-level first.
    pub fn descendants(&self, root: i32) -> Vec<i32> {
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            tree.extend(self.0.iter().filter(|(_, s)| s.ppid == p).map(|(c, _)| *c));
            i += 1;
        }
        tree.remove(0);
        tree
    }

    /// The app's tree: `app` and its descendants.
    pub fn tree(&self, app: Pid) -> Vec<i32> {
        let mut pids = vec![app.as_raw()];
        pids.extend(self.descendants(app.as_raw()));
        pids
    }

    /// Processes below crik that are outside the app's tree (daemonized helpers re-parented to
    /// crik), as (pid, command name); CRIU's own processes are not counted.
    pub fn escaped_from(&self, app: Pid) -> Vec<(i32, String)> {
        let in_app = self.tree(app);
        self.descendants(std::process::id() as i32)
            .into_iter()
            .filter(|p| !in_app.contains(p))
            // A zombie waiting to be reaped (a hook's killed helper, say) is no process to lose.
            .filter(|p| !Stat::of(*p).is_some_and(Stat::exited))
            .filter_map(|p| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?.trim().to_string();
                (comm != "criu").then_some((p, comm))
            })
            .collect()
    }
}

/// SIGKILLs `pids` and waits (at most `limit`) until each has exited (gone, or a zombie: its
/// files are closed then). The supervisor reaps them.
pub fn kill_and_wait(pids: &[i32], limit: std::time::Duration) {
    for p in pids {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + limit;
    let exited = |p: &i32| Stat::of(*p).map_or(true, Stat::exited);
    while !pids.iter().all(exited) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Anonymous memory of the app's tree (`root` and its descendants), in bytes: about what a
/// CRIU dump of it writes.
pub fn tree_memory(root: Pid) -> u64 {
    memory_of(&ProcessTable::read().tree(root))
}

/// Anonymous memory of these processes, in bytes.
pub fn memory_of(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|t| {
            let kib = crate::host::procfs::field(&t, "Anonymous:")?.strip_suffix("kB")?.trim();
            kib.parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_map_to_126_and_127() {
        assert_eq!(SpawnError::NotFound("x".into()).exit_code(), 127);
        assert_eq!(SpawnError::NotExecutable("x".into()).exit_code(), 126);
    }

    #[test]
    fn tree_memory_counts_the_anonymous_memory_of_a_tree() {
        // A child holding 32 MiB (touched), under a shell: the tree's root is the shell.
        let mut sh = std::process::Command::new("sh")
            .args([
                "-c",
                "python3 -c 'import time; b = bytearray(32 << 20); print(1, flush=True); time.sleep(30)'; true",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(sh.stdout.take().unwrap()), &mut line).unwrap();
        let root = Pid::from_raw(sh.id() as i32);
        let kids = descendants_of(root.as_raw());
        let mem = tree_memory(root);
        for k in &kids {
            let _ = kill(Pid::from_raw(*k), Signal::SIGKILL);
        }
        let _ = sh.kill();
        let _ = sh.wait();
        assert_eq!(kids.len(), 1, "{kids:?}");
        assert!(((32 << 20)..(128 << 20)).contains(&mem), "{mem}");
    }

    #[test]
    fn burnt_pids_reach_the_target() {
        let mut probe = std::process::Command::new("true").spawn().unwrap();
        let first = probe.id();
        probe.wait().unwrap();
        let reached = burn_pids(first + 50);
        assert!(reached >= first + 50, "{reached} < {}", first + 50);
        // Each child was reaped by its own PID: none is left as a zombie of this process.
        let zombies = std::fs::read_dir("/proc").unwrap().flatten().filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r.to_string()).unwrap_or_default();
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 1 && f[0] == "Z" && f[1] == std::process::id().to_string()
        });
        assert_eq!(zombies.count(), 0);
    }
}
