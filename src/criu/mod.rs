//! CRIU itself: a small client for its swrk RPC (messages from [`criu_proto::rpc`]), the options
//! crik gives it, its logs, its lazy-pages daemon; beside it, crik's page server
//! ([`pageserver`]), CRIU's images read ([`images`]) and its CPU records ([`cpu`]).
//!
//! CRIU can hang for ever on a damaged image, so every call here has a deadline: past it CRIU's
//! whole process group is SIGKILLed.

pub mod cpu;
pub mod images;
pub mod pageserver;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use criu_proto::rpc;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use protobuf::Message;

use crate::config::AbsPath;
use crate::init::supervisor::Signals;
use crate::layout::{CPUINFO_LOG, DUMP_LOG, LAZY_PAGES_LOG, LAZY_PAGES_SOCKET, RESTORE_LOG};

pub const CRIU_BIN: &str = "criu";
/// Where the bundle (scripts/bundle/build_bundle.py) keeps CRIU in an image.
pub const BUNDLE_CRIU: &str = "/opt/crik/bin/criu";

/// The CRIU crik runs: the one next to crik's own binary (the bundle's `bin/`), else
/// [`BUNDLE_CRIU`] (crik installed elsewhere beside a bundle), else `criu` on PATH. Asked once.
pub fn binary() -> &'static Path {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| {
        let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(CRIU_BIN)));
        beside
            .into_iter()
            .chain([PathBuf::from(BUNDLE_CRIU)])
            .find(|p| is_executable(p))
            .unwrap_or_else(|| PathBuf::from(CRIU_BIN))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("cannot start `{bin} swrk`: {source}")]
    Spawn { bin: String, source: io::Error },
    /// No CRIU anywhere crik looks.
    #[error(
        "cannot start `criu swrk`: CRIU is not next to crik, nor in /opt/crik/bin (the bundle), nor on PATH \
         ({source}): install CRIU 4.2 or newer, or copy the crik bundle to /opt/crik"
    )]
    NotFound { source: io::Error },
    #[error("talking to CRIU failed: {0}")]
    Io(#[from] io::Error),
    #[error("bad message from CRIU: {0}")]
    Protocol(String),
    #[error("CRIU did not finish within {0:?} and was killed")]
    Timeout(Duration),
    /// CRIU answered that the request failed, with its errno and message when it sent them.
    #[error("CRIU {op} failed{}", failure_detail(*errno, message.as_deref()))]
    Failed { op: &'static str, errno: Option<nix::errno::Errno>, message: Option<String> },
    #[error("CRIU exited without answering")]
    Vanished,
    /// CRIU was SIGKILLed while the container's memory cgroup counted a new OOM kill: its own
    /// memory is charged to the container, and the limit did not leave enough.
    #[error(
        "CRIU was killed by the OOM killer: its memory counts against the container's limit{}",
        limit.map_or(String::new(), |l| format!(" of {}", crate::sizes::human(l)))
    )]
    OomKilled { limit: Option<u64> },
}

fn failure_detail(errno: Option<nix::errno::Errno>, message: Option<&str>) -> String {
    let mut s = String::new();
    if let Some(e) = errno {
        s.push_str(&format!(" ({})", e.desc()));
    }
    if let Some(m) = message {
        s.push_str(&format!(": {m}"));
    }
    s
}

impl From<protobuf::Error> for CriuError {
    fn from(e: protobuf::Error) -> Self {
        CriuError::Protocol(e.to_string())
    }
}

/// A file descriptor lent to CRIU for the call, and the key CRIU knows it by (`pipe:[123]`).
pub struct InheritFd {
    pub fd: OwnedFd,
    pub key: String,
}

/// One RPC exchange with a fresh `criu swrk`.
pub struct Request<'a> {
    pub kind: rpc::Criu_req_type,
    /// Options; `None` for requests that take none (VERSION: its opts would lack required fields).
    pub opts: Option<rpc::Criu_opts>,
    /// File descriptors CRIU must inherit (for `inherit_fd`).
    pub inherit: Vec<InheritFd>,
    /// A dump's pages go to this socket (CRIU's page-server protocol, see
    /// [`crate::criu::pageserver`]) instead of into pages images.
    pub page_server: Option<OwnedFd>,
    pub deadline: Duration,
    /// While CRIU writes images into this dir, start their writeback to disk every 100 ms, so
    /// that the fsync after the dump has little left to wait for.
    pub writeback: Option<PathBuf>,
    /// Called for each of CRIU's notifications (with `notify_scripts` set), e.g. "post-dump",
    /// sent while the dumped tree is still frozen; returning false makes CRIU roll back (the
    /// tree is resumed, not killed).
    pub on_notify: Option<&'a mut dyn FnMut(&str) -> bool>,
}

impl<'a> Request<'a> {
    /// A request with nothing lent to CRIU and no notification handler.
    pub fn new(kind: rpc::Criu_req_type, opts: Option<rpc::Criu_opts>, deadline: Duration) -> Request<'a> {
        Request { kind, opts, inherit: Vec::new(), page_server: None, deadline, writeback: None, on_notify: None }
    }
}

/// CRIU's final answer and the fds it sent along (the orphan pts master).
pub struct Response {
    pub resp: rpc::Criu_resp,
    pub received_fds: Vec<OwnedFd>,
}

/// Runs one request with a fresh `criu swrk`, within `req.deadline`.
pub fn call(signals: &Signals, mut req: Request) -> Result<Response, CriuError> {
    let op = op_name(req.kind);
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| CriuError::Io(e.into()))?;

    let mut opts = req.opts;
    let mut keep = vec![theirs.as_raw_fd()];
    for inh in &req.inherit {
        let Some(opts) = opts.as_mut() else { break };
        keep.push(inh.fd.as_raw_fd());
        let mut i = rpc::Inherit_fd::new();
        i.set_key(inh.key.clone());
        i.set_fd(inh.fd.as_raw_fd());
        opts.inherit_fd.push(i);
    }
    if let (Some(sock), Some(opts)) = (&req.page_server, opts.as_mut()) {
        keep.push(sock.as_raw_fd());
        let mut ps = rpc::Criu_page_server_info::new();
        ps.set_fd(sock.as_raw_fd());
        opts.ps = protobuf::MessageField::some(ps);
    }

    let oom_kills_before = crate::host::cgroup::oom_kills();
    let child = spawn_criu(signals, &["swrk".into(), theirs.as_raw_fd().to_string()], keep)?;
    drop(theirs);
    drop(req.inherit);
    drop(req.page_server);
    let pid = Pid::from_raw(child.id() as i32);

    let result = exchange(&ours, req.kind, opts, req.deadline, req.writeback.as_deref(), req.on_notify.take());
    if result.is_err() {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    drop(ours);
    // CRIU exits once the socket closes; reap it (and only it) so it never lingers as a zombie.
    // It has a few seconds for that, and is killed past them: no wait on CRIU is unbounded.
    let exit = reap_or_kill(pid, EXIT_GRACE);
    let oom_killed = matches!(exit, Some(WaitStatus::Signaled(_, Signal::SIGKILL, _)))
        && crate::host::cgroup::oom_kills().zip(oom_kills_before).is_some_and(|(now, before)| now > before);
    let resp = match result {
        Err(CriuError::Vanished | CriuError::Io(_)) if oom_killed => {
            return Err(CriuError::OomKilled { limit: crate::host::cgroup::memory_limit() })
        }
        r => r?,
    };
    if !resp.resp.success() {
        let errno = (resp.resp.cr_errno() != 0).then(|| nix::errno::Errno::from_raw(resp.resp.cr_errno()));
        let message =
            Some(resp.resp.cr_errmsg().trim()).filter(|m| !m.is_empty() && !m.contains(HARMLESS)).map(str::to_owned);
        return Err(CriuError::Failed { op, errno, message });
    }
    Ok(resp)
}

/// How long a request that dumps and restores nothing (version, CPU record) may take.
const SMALL_REQUEST: Duration = Duration::from_secs(30);

/// How long CRIU may take to exit after its last answer, or after SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Waits for `pid` to exit, at most `limit`; `None` if it is still running then.
pub fn wait_bounded(pid: Pid, limit: Duration) -> Option<WaitStatus> {
    let started = Instant::now();
    // SAFETY: pidfd_open with a PID and no flags returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) } as RawFd;
    // SAFETY: a fresh fd we own (when the call succeeded).
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return Some(status),
            Err(nix::errno::Errno::EINTR) => continue,
            // Not our child (any more): nothing to wait for.
            Err(_) => return None,
        }
        let left = limit.checked_sub(started.elapsed())?;
        match &pidfd {
            // Readable once the process has exited: no polling latency on the checkpoint path.
            Some(fd) => {
                let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
            }
            None => std::thread::sleep(left.min(Duration::from_millis(5))),
        }
    }
}

/// Reaps `pid` within `grace`; past it, SIGKILLs its process group and waits `grace` again.
/// A process that survives even that (stuck in the kernel) is left to the supervisor's reaping.
/// Returns how it ended, when it was reaped here.
pub fn reap_or_kill(pid: Pid, grace: Duration) -> Option<WaitStatus> {
    if let Some(status) = wait_bounded(pid, grace) {
        return Some(status);
    }
    log::warn!("CRIU (pid {pid}) did not exit within {grace:?}: killing it");
    let _ = killpg(pid, Signal::SIGKILL);
    let status = wait_bounded(pid, grace);
    if status.is_none() {
        log::error!("CRIU (pid {pid}) survived SIGKILL for {grace:?}; leaving it to be reaped later");
    }
    status
}

/// Starts CRIU with crik's original signal mask, keeping only `keep` of crik's fds.
fn spawn_criu(signals: &Signals, args: &[String], keep: Vec<RawFd>) -> Result<std::process::Child, CriuError> {
    let bin = binary();
    let mut cmd = Command::new(bin);
    cmd.args(args);
    // CRIU's own chatter goes to crik's stderr: stdout belongs to the app.
    cmd.stdin(Stdio::null()).stdout(io::stderr()).stderr(Stdio::inherit());
    // Its own process group, so a deadline can kill CRIU and every helper it forked.
    cmd.process_group(0);
    signals.prepare_child(&mut cmd, false, keep);
    cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound if bin == Path::new(CRIU_BIN) => CriuError::NotFound { source: e },
        _ => CriuError::Spawn { bin: bin.display().to_string(), source: e },
    })
}

fn exchange(
    sock: &OwnedFd,
    kind: rpc::Criu_req_type,
    opts: Option<rpc::Criu_opts>,
    deadline: Duration,
    writeback: Option<&Path>,
    mut on_notify: Option<&mut dyn FnMut(&str) -> bool>,
) -> Result<Response, CriuError> {
    let started = Instant::now();
    let mut req = rpc::Criu_req::new();
    req.set_type(kind);
    req.opts = protobuf::MessageField::from_option(opts);
    send(sock, &req)?;
    let mut received_fds = Vec::new();
    loop {
        let left = deadline.checked_sub(started.elapsed()).ok_or(CriuError::Timeout(deadline))?;
        let wait = if writeback.is_some() { left.min(WRITEBACK_TICK) } else { left };
        let (bytes, fds) = match recv(sock, wait) {
            Ok(r) => r,
            Err(RecvError::Timeout) if started.elapsed() < deadline => {
                if let Some(dir) = writeback {
                    start_writeback(dir);
                }
                continue;
            }
            Err(RecvError::Timeout) => return Err(CriuError::Timeout(deadline)),
            Err(RecvError::Closed) => return Err(CriuError::Vanished),
            Err(RecvError::Io(e)) => return Err(CriuError::Io(e)),
        };
        received_fds.extend(fds);
        let resp = rpc::Criu_resp::parse_from_bytes(&bytes)?;
        if resp.type_() == rpc::Criu_req_type::NOTIFY && resp.success() {
            let script = resp.notify.script();
            log::debug!("CRIU notify: {script}");
            let ok = on_notify.as_mut().map_or(true, |f| f(script));
            let mut ack = rpc::Criu_req::new();
            ack.set_type(rpc::Criu_req_type::NOTIFY);
            ack.set_notify_success(ok);
            send(sock, &ack)?;
            continue;
        }
        if resp.success() && resp.type_() != kind {
            return Err(CriuError::Protocol(format!("expected a {:?} answer, got {:?}", kind, resp.type_())));
        }
        return Ok(Response { resp, received_fds });
    }
}

const WRITEBACK_TICK: Duration = Duration::from_millis(100);

/// Asks the kernel to start writing the dir's dirty pages to disk, without waiting for it.
fn start_writeback(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if let Ok(f) = File::open(e.path()) {
            // SAFETY: a valid fd; SYNC_FILE_RANGE_WRITE only initiates writeback.
            unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
    }
}

fn send(sock: &OwnedFd, msg: &rpc::Criu_req) -> Result<(), CriuError> {
    let bytes = msg.write_to_bytes()?;
    let n = nix::unistd::write(sock, &bytes).map_err(|e| CriuError::Io(e.into()))?;
    if n != bytes.len() {
        return Err(CriuError::Protocol("short write to CRIU".into()));
    }
    Ok(())
}

enum RecvError {
    Timeout,
    Closed,
    Io(io::Error),
}

/// Receives one datagram (with any fds passed alongside) within `timeout`.
fn recv(sock: &OwnedFd, timeout: Duration) -> Result<(Vec<u8>, Vec<OwnedFd>), RecvError> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut pfd = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(0) => return Err(RecvError::Timeout),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    }
    // Peek at the size first: CRIU's answers can exceed any fixed buffer.
    let mut probe = [0u8; 0];
    // SAFETY: zero-length buffer; MSG_TRUNC makes the kernel report the real length.
    let len = unsafe { libc::recv(sock.as_raw_fd(), probe.as_mut_ptr().cast(), 0, libc::MSG_PEEK | libc::MSG_TRUNC) };
    if len < 0 {
        return Err(RecvError::Io(io::Error::last_os_error()));
    }
    if len == 0 {
        return Err(RecvError::Closed);
    }
    let mut buf = vec![0u8; len as usize];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| RecvError::Io(e.into()))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| RecvError::Io(e.into()))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds for us.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Err(RecvError::Closed);
    }
    buf.truncate(n);
    Ok((buf, fds))
}

fn op_name(kind: rpc::Criu_req_type) -> &'static str {
    match kind {
        rpc::Criu_req_type::DUMP => "dump",
        rpc::Criu_req_type::RESTORE => "restore",
        rpc::Criu_req_type::VERSION => "version",
        rpc::Criu_req_type::CHECK => "check",
        rpc::Criu_req_type::CPUINFO_DUMP => "cpuinfo dump",
        rpc::Criu_req_type::CPUINFO_CHECK => "cpuinfo check",
        _ => "request",
    }
}

/// CRIU's version as "major.minor[.sublevel]", asked once per crik (periodic checkpoints
/// would otherwise start an extra CRIU each time).
pub fn version(signals: &Signals) -> Result<String, CriuError> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let r = call(signals, Request::new(rpc::Criu_req_type::VERSION, None, SMALL_REQUEST))?;
    let v = &r.resp.version;
    let mut s = format!("{}.{}", v.major_number(), v.minor_number());
    if v.has_sublevel() {
        s.push_str(&format!(".{}", v.sublevel()));
    }
    Ok(VERSION.get_or_init(|| s).clone())
}

/// (major, minor) of a version string from [`version`]; (0, 0) when it cannot be read.
pub fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `cpuinfo dump` (record this CPU into `dir`, as cpuinfo.img) or `cpuinfo check` (can the CPU
/// recorded in `dir` run here?), with crik's CPU capabilities ([`crate::criu::cpu::CPU_CAPS`]).
pub fn cpuinfo(signals: &Signals, kind: rpc::Criu_req_type, dir: &File) -> Result<(), CriuError> {
    let mut o = base_opts();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.set_log_level(4);
    o.set_log_file(CPUINFO_LOG.into());
    o.set_cpu_cap(crate::criu::cpu::CPU_CAPS);
    call(signals, Request::new(kind, Some(o), SMALL_REQUEST)).map(|_| ())
}

/// Mounts CRIU treats as external: the runtime provides them in every container.
pub const EXTERNAL_MOUNTS: [(&str, &str); 7] = [
    ("/dev/null", "null"),
    ("/dev/random", "random"),
    ("/dev/urandom", "urandom"),
    ("/dev/tty", "tty"),
    ("/dev/zero", "zero"),
    ("/dev/full", "full"),
    ("/usr/share/zoneinfo", "zoneinfo"),
];

/// Ghost (deleted but open) files up to this size are saved into the image (as the original).
pub const GHOST_LIMIT: u32 = 500 * 1024 * 1024;

/// Options every request with options carries.
fn base_opts() -> rpc::Criu_opts {
    let mut o = rpc::Criu_opts::new();
    // crik running as another user than root (with the capabilities CRIU needs, e.g. ambient
    // ones): CRIU then accepts the limits of its non-root mode.
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        o.set_unprivileged(true);
    }
    o
}

/// Options shared by dump and restore.
fn common_opts(images_dir: &File, log_file: &str) -> rpc::Criu_opts {
    let mut o = base_opts();
    o.set_images_dir_fd(images_dir.as_raw_fd());
    o.set_log_level(4);
    o.set_log_file(log_file.into());
    o.set_file_locks(true);
    o.set_shell_job(false);
    // The pod's cgroups belong to the runtime: neither dump nor restore them.
    o.set_manage_cgroups(true);
    o.set_manage_cgroups_mode(rpc::Criu_cg_mode::IGNORE);
    o.set_ghost_limit(GHOST_LIMIT);
    // The default (iptables) needs iptables-restore, which slim images lack.
    o.set_network_lock(rpc::Criu_network_lock_method::NFTABLES);
    o
}

/// CRIU's name for an external mount: the default seven, then the configured ones.
fn external_mounts(extra: &[AbsPath]) -> Vec<(String, String)> {
    EXTERNAL_MOUNTS
        .iter()
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .chain(extra.iter().map(|p| {
            let path = p.as_path().to_string_lossy().into_owned();
            let name = path.trim_start_matches('/').replace('/', "-");
            (path, name)
        }))
        .collect()
}

/// Dump options for the tree rooted at `pid`; `leave_running` for periodic checkpoints;
/// `lock_network` unless the tree holds no TCP connection
/// ([`crate::checkpoint::preflight::network_lock_needed`]).
pub fn dump_opts(
    images_dir: &File,
    pid: Pid,
    leave_running: bool,
    lock_network: bool,
    extra_mounts: &[AbsPath],
) -> rpc::Criu_opts {
    let mut o = common_opts(images_dir, DUMP_LOG);
    if !lock_network {
        o.set_network_lock(rpc::Criu_network_lock_method::SKIP);
    }
    o.set_pid(pid.as_raw());
    o.set_leave_running(leave_running);
    // Record the CPU (cpuinfo.img), so a restore elsewhere can be checked against it first.
    o.set_cpu_cap(crate::criu::cpu::CPU_CAPS);
    // A connected client must never make the checkpoint fail.
    o.set_tcp_established(true);
    o.set_ext_unix_sk(true);
    // `mnt[PATH]:NAME` at dump.
    push_ext_mounts(&mut o, external_mounts(extra_mounts));
    // An inotify watch is dumped as a path. On overlayfs (every container's root) CRIU cannot
    // reopen the watched inode by handle and searches known dirs instead ("irmap": /etc, /,
    // ...); these are watched too (a browser watches the time zone) and are added to them.
    o.irmap_scan_paths.extend(IRMAP_SCAN_PATHS.iter().map(|p| p.to_string()));
    o
}

/// Where CRIU also looks for the paths of inotify watches, besides its own list.
pub const IRMAP_SCAN_PATHS: [&str; 1] = ["/usr/share/zoneinfo"];

fn push_ext_mounts(o: &mut rpc::Criu_opts, pairs: impl IntoIterator<Item = (String, String)>) {
    for (key, val) in pairs {
        let mut m = rpc::Ext_mount_map::new();
        m.set_key(key);
        m.set_val(val);
        o.ext_mnt.push(m);
    }
}

/// For a tree in a mount namespace of its own (`isolatePids`), at dump and at restore. Its
/// mounts are copies of crik's, made when the reaper started, but for its own /proc: CRIU finds
/// each in crik's namespace and records it as external (`auto_ext_mnt`, keyed by its path
/// there), and at restore binds this container's mount at that path again. The new namespace's
/// root is crik's root. The tree's /proc is dumped and mounted anew, for the restored PID
/// namespace.
pub fn own_mount_namespace(o: &mut rpc::Criu_opts, restore: bool) {
    o.set_auto_ext_mnt(true);
    o.set_ext_sharing(true);
    o.set_ext_masters(true);
    if restore {
        o.set_root("/".into());
    }
}

/// Restore options; the tree becomes a child of the caller (restore-sibling mode).
pub fn restore_opts(
    images_dir: &File,
    tcp_established: bool,
    lazy_pages: bool,
    extra_mounts: &[AbsPath],
) -> rpc::Criu_opts {
    let mut o = common_opts(images_dir, RESTORE_LOG);
    if lazy_pages {
        o.set_lazy_pages(true);
    }
    o.set_rst_sibling(true);
    o.set_orphan_pts_master(true);
    o.set_ext_unix_sk(true);
    // CRIU's restore: tcp_close wins over tcp_established (sockets come back shut down), so
    // only one of them is ever set.
    if tcp_established {
        o.set_tcp_established(true);
    } else {
        o.set_tcp_close(true);
    }
    // `mnt[NAME]:PATH` at restore.
    push_ext_mounts(&mut o, external_mounts(extra_mounts).into_iter().map(|(path, name)| (name, path)));
    o
}

/// Starts CRIU's lazy-pages daemon for a lazy restore from `images`, and returns its PID once
/// it listens. It serves the restored app's page faults from the images (userfaultfd), then
/// copies the rest in the background and exits; crik reaps it like any other child.
pub fn start_lazy_pages(signals: &Signals, images: &Path, wait: Duration) -> Result<Pid, CriuError> {
    let socket = images.join(LAZY_PAGES_SOCKET);
    let _ = std::fs::remove_file(&socket);
    let args = [
        "lazy-pages".into(),
        "--images-dir".into(),
        images.to_string_lossy().into_owned(),
        "-o".into(),
        LAZY_PAGES_LOG.into(),
        "-v4".into(),
    ];
    let mut child = spawn_criu(signals, &args, Vec::new())?;
    let pid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CriuError::Protocol(format!("the lazy-pages daemon exited at start ({status})")));
        }
        if started.elapsed() > wait {
            let _ = killpg(pid, Signal::SIGKILL);
            reap_or_kill(pid, EXIT_GRACE);
            return Err(CriuError::Timeout(wait));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(pid)
}

/// Renders CRIU's own error lines under a failure, so the user sees why, not just "failed".
pub fn format_log(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nCRIU's log says:");
    for l in lines {
        s.push_str("\n  ");
        s.push_str(l);
    }
    s
}

/// The error lines of a CRIU log (lines starting with "Error" or containing "Error ("),
/// at most `max` of the last ones, to show the user why CRIU failed.
pub fn log_errors(log: &Path, max: usize) -> Vec<String> {
    let mut text = String::new();
    if File::open(log).and_then(|mut f| f.read_to_string(&mut text)).is_err() {
        return Vec::new();
    }
    error_lines(&text, max)
}

/// CRIU logs this as an error whenever it lacks CAP_SYS_RESOURCE, and carries on: it is never
/// the reason a dump or restore failed, and showing it first would mislead.
const HARMLESS: &str = "Can't setup RLIMIT_NOFILE";

fn error_lines(text: &str, max: usize) -> Vec<String> {
    let errs: Vec<String> = text
        .lines()
        .filter(|l| l.contains("Error (") || l.trim_start().starts_with("Error") || l.contains("): Error"))
        .filter(|l| !l.contains(HARMLESS))
        .map(|l| l.trim().to_string())
        .collect();
    let skip = errs.len().saturating_sub(max);
    errs.into_iter().skip(skip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_picked_from_a_criu_log() {
        let log =
            "(00.000) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   (00.001) Dumping task 9001\n(00.002) Error (criu/files.c:123): Can't lookup mount=55 for fd=3\n\
                   (00.003) unrelated\n(00.004) Error (criu/cr-dump.c:2093): Dumping FAILED.\n";
        let e = error_lines(log, 5);
        assert_eq!(e.len(), 2);
        assert!(e[0].contains("Can't lookup mount"));
        assert_eq!(error_lines(log, 1).len(), 1);
        assert!(error_lines(log, 1)[0].contains("Dumping FAILED"));
    }

    #[test]
    fn failures_keep_criu_errno_and_message() {
        let e = CriuError::Failed { op: "dump", errno: Some(nix::errno::Errno::EPERM), message: Some("no".into()) };
        assert_eq!(e.to_string(), "CRIU dump failed (Operation not permitted): no");
        assert!(matches!(e, CriuError::Failed { errno: Some(nix::errno::Errno::EPERM), .. }));
        assert_eq!(CriuError::Failed { op: "restore", errno: None, message: None }.to_string(), "CRIU restore failed");
    }

    #[test]
    fn waits_on_a_process_are_bounded() {
        // Reaped by the functions under test, not by Child::wait.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let started = Instant::now();
        assert_eq!(wait_bounded(pid, Duration::from_millis(100)), None, "still running");
        assert!(started.elapsed() < Duration::from_secs(2));
        reap_or_kill(pid, Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(3), "killed and reaped within the grace");
        assert!(waitpid(pid, Some(WaitPidFlag::WNOHANG)).is_err(), "already reaped");
        #[allow(clippy::zombie_processes)]
        let quick = Command::new("true").spawn().unwrap();
        let status = wait_bounded(Pid::from_raw(quick.id() as i32), Duration::from_secs(5));
        assert!(matches!(status, Some(WaitStatus::Exited(_, 0))), "{status:?}");
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("4.2.1"), (4, 2));
        assert_eq!(major_minor("4.10"), (4, 10));
        assert!(major_minor("3.17.1") < (4, 2) && major_minor("4.1") < (4, 2) && major_minor("4.10") >= (4, 2));
        assert_eq!(major_minor("garbage"), (0, 0));
    }

    #[test]
    fn restore_sets_exactly_one_tcp_mode() {
        let f = File::open("/").unwrap();
        let o = restore_opts(&f, false, false, &[]);
        assert!(o.tcp_close() && !o.tcp_established());
        let o = restore_opts(&f, true, false, &[AbsPath::new("/var/run/secrets").unwrap()]);
        assert!(!o.tcp_close() && o.tcp_established());
        assert_eq!(o.ext_mnt.len(), EXTERNAL_MOUNTS.len() + 1);
        assert_eq!(o.ext_mnt[0].key(), "null");
        assert_eq!((o.ext_mnt[7].key(), o.ext_mnt[7].val()), ("var-run-secrets", "/var/run/secrets"));
        let d = dump_opts(&f, Pid::from_raw(7), false, true, &[]);
        assert_eq!(d.ext_mnt[0].key(), "/dev/null");
        assert_eq!(d.pid(), 7);
        assert_eq!(d.network_lock(), rpc::Criu_network_lock_method::NFTABLES);
        let d = dump_opts(&f, Pid::from_raw(7), false, false, &[]);
        assert_eq!(d.network_lock(), rpc::Criu_network_lock_method::SKIP);
    }
}
