//! Test harness: the real crik binary as PID 1 of a fresh PID namespace ("a container"),
//! with every wait bounded and only the processes a test started cleaned up.

pub mod podman;
pub mod podman5;
pub mod s3;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CRIK: &str = env!("CARGO_BIN_EXE_crik");
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails (never skips) when the machine lacks what the tests need: a skipped test would hide a
/// broken install. `scripts/setup.sh` installs all of it.
pub fn require_tools() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "integration tests must run as root (CRIU, namespaces)");
    for tool in ["criu", "unshare", "nft"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(found, "{tool} is not installed: run scripts/setup.sh");
    }
    assert!(Path::new(PYTHON).is_file(), "{PYTHON} missing: run scripts/setup.sh");
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
    /// CRIU's network-lock tables that existed before the test (tests run one at a time).
    nft_before: Vec<String>,
}

/// CRIU leaves its nftables lock table behind after a dump (the restore removes it); on the
/// host network of these tests, the tables of checkpoints never restored would pile up.
pub fn criu_nft_tables() -> Vec<String> {
    let out = Command::new("nft").args(["list", "tables"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter(|t| t.starts_with("CRIU-"))
        .map(String::from)
        .collect()
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        require_tools();
        let dir = std::env::temp_dir().join(format!("crik-it-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch { dir, nft_before: criu_nft_tables() }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    pub fn images(&self) -> PathBuf {
        self.dir.join("images")
    }
    /// Writes a config file with `imageDir` pointing into the scratch dir plus `extra` YAML.
    /// crik logs JSON lines (unless `extra` sets `logFormat`), so tests can check its events.
    pub fn config(&self, extra: &str) -> PathBuf {
        let p = self.dir.join("config.yaml");
        let format = if extra.contains("logFormat:") { "" } else { "logFormat: json\n" };
        fs::write(&p, format!("imageDir: {}\n{format}{extra}", self.images().display())).unwrap();
        p
    }
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
    /// Published checkpoints (ids).
    pub fn checkpoints(&self) -> Vec<String> {
        list(&self.images().join("checkpoints"))
    }
    pub fn area(&self, name: &str) -> Vec<String> {
        list(&self.images().join(name))
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for t in criu_nft_tables() {
            if !self.nft_before.contains(&t) {
                let _ = Command::new("nft").args(["delete", "table", "inet", &t]).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a container is started.
pub struct Spec {
    /// Arguments to crik (`run --config X -- cmd`).
    pub args: Vec<String>,
    /// Run crik as PID 1 of fresh PID/mount/IPC/UTS namespaces (host network kept).
    pub pid1: bool,
    pub env: Vec<(String, String)>,
    /// Extra inheritable fd given to crik (to prove the app does not inherit it).
    pub stray_fd: bool,
    pub stdin: Option<Vec<u8>>,
    /// Shell commands run inside the fresh namespaces just before crik is exec'ed as PID 1
    /// (e.g. to make /proc/sys read-only as in an unprivileged container).
    pub setup: Option<String>,
    /// A command crik is exec'ed through (e.g. `setpriv` dropping capabilities).
    pub wrap: Vec<String>,
}

impl Spec {
    pub fn run(config: Option<&Path>, cmd: &[&str]) -> Spec {
        let mut args = vec!["run".to_string()];
        if let Some(c) = config {
            args.push("--config".into());
            args.push(c.display().to_string());
        }
        if !cmd.is_empty() {
            args.push("--".into());
            args.extend(cmd.iter().map(|s| s.to_string()));
        }
        Spec { args, pid1: true, env: Vec::new(), stray_fd: false, stdin: None, setup: None, wrap: Vec::new() }
    }
    pub fn args(args: &[&str]) -> Spec {
        Spec {
            args: args.iter().map(|s| s.to_string()).collect(),
            pid1: true,
            env: Vec::new(),
            stray_fd: false,
            stdin: None,
            setup: None,
            wrap: Vec::new(),
        }
    }
}

/// A running crik (in its own namespaces unless `pid1` is false).
pub struct Container {
    child: Child,
    lines: Receiver<String>,
    pub stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    pid1: bool,
    crik_pid: Option<i32>,
}

impl Container {
    pub fn start(spec: Spec) -> Container {
        let mut cmd = if spec.pid1 {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", "--ipc", "--uts"]);
            if let Some(setup) = &spec.setup {
                c.args(["sh", "-c", &format!("{setup}\nexec \"$0\" \"$@\"")]);
            }
            c.args(&spec.wrap).arg(CRIK);
            c
        } else if let Some((first, rest)) = spec.wrap.split_first() {
            let mut c = Command::new(first);
            c.args(rest).arg(CRIK);
            c
        } else {
            Command::new(CRIK)
        };
        cmd.args(&spec.args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.env_remove("CRIK_CONFIG");
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if spec.stray_fd {
            let f = fs::File::open("/etc/hostname").unwrap();
            use std::os::fd::IntoRawFd;
            let raw = f.into_raw_fd();
            use std::os::unix::process::CommandExt;
            unsafe {
                cmd.pre_exec(move || {
                    // An inheritable fd 7, as a careless container runtime might leave.
                    if libc::dup2(raw, 7) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start crik");
        if let Some(input) = spec.stdin {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let s = String::from_utf8_lossy(&buf[..n]);
                        if std::env::var_os("CRIK_TEST_VERBOSE").is_some() {
                            eprint!("{s}");
                        }
                        err_sink.lock().unwrap().push_str(&s);
                    }
                }
            }
        });
        Container { child, lines, stdout_seen: Vec::new(), stderr, pid1: spec.pid1, crik_pid: None }
    }

    /// crik's PID as seen from the host.
    pub fn crik_pid(&mut self) -> i32 {
        if let Some(p) = self.crik_pid {
            return p;
        }
        let outer = self.child.id() as i32;
        if !self.pid1 {
            self.crik_pid = Some(outer);
            return outer;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let kids = fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|s| s.parse().ok()) {
                self.crik_pid = Some(p);
                return p;
            }
            assert!(Instant::now() < deadline, "crik did not start under unshare\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&mut self, sig: i32) {
        let pid = self.crik_pid();
        unsafe { libc::kill(pid, sig) };
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => {
                self.stdout_seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for the app's first "count N" line and checks that the counter carried on from
    /// `last`: no reset, no jump.
    pub fn expect_count_after(&mut self, last: u64) {
        let first = self.expect_line(LONG, "a count", |l| count_of(l).is_some());
        assert_eq!(count_of(&first), Some(last + 1), "the counter must carry on from {last}\n{}", self.stderr());
    }

    /// Reads stdout until a line satisfies `pred`; panics (with crik's log) after `timeout`.
    pub fn expect_line(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(l) if pred(&l) => return l,
                Some(_) => continue,
                None => panic!(
                    "no stdout line {what} within {timeout:?}\nstdout so far: {:?}\ncrik's stderr:\n{}",
                    self.stdout_seen,
                    self.stderr()
                ),
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for crik to exit (panics after `timeout`), then collects the rest of stdout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Drain what is left in the pipe (bounded: crik and its namespace are gone).
                while self.next_line(Duration::from_millis(500)).is_some() {}
                // Give the stderr reader a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            if Instant::now() >= deadline {
                let log = self.stderr();
                self.kill();
                panic!("crik did not exit within {timeout:?}\ncrik's stderr:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit code of crik (as passed on by unshare).
    pub fn wait_code(&mut self, timeout: Duration) -> i32 {
        let st = self.wait(timeout);
        st.code().unwrap_or_else(|| panic!("crik ended by a signal: {st:?}\n{}", self.stderr()))
    }

    /// SIGKILLs crik: as PID 1 that takes the whole namespace down with it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let outer = self.child.id();
            let crik = self.crik_pid.or_else(|| {
                let kids = fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).ok()?;
                kids.split_whitespace().next()?.parse().ok()
            });
            if let (Some(p), true) = (crik, self.pid1) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            // unshare can be gone before its namespace is: wait for crik itself, so that what it
            // held (the image dir's lock) is free when this returns.
            if let (Some(p), true) = (crik, self.pid1) {
                // Gone, or a zombie: either way its files are closed.
                eventually(SHORT, || {
                    let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    stat.rsplit_once(')').map_or(true, |(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
                });
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Children of `pid` on the host, with their state letter.
pub fn children_of(pid: i32) -> Vec<(i32, char, String)> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map(|x| x.1).unwrap_or("").to_string();
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if ppid == pid {
            v.push((p, state, name));
        }
    }
    v
}

/// Starts crik with config `cfg` (and extra `env`) on an app that would print "started", and
/// checks crik refuses before the app starts. Returns crik's exit code and stderr.
pub fn refused_at_start(cfg: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut spec = Spec::run(Some(cfg), &["sh", "-c", "echo started"]);
    spec.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut c = Container::start(spec);
    let code = c.wait_code(SHORT);
    assert!(
        c.stdout_seen.is_empty(),
        "the app must not start
{}",
        c.stderr()
    );
    (code, c.stderr())
}

/// crik's JSON log lines that carry an `event` (lines that are not JSON objects, such as a
/// fatal `crik: ...` message, are skipped).
pub fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some())
        .collect()
}

impl Container {
    /// The first logged event named `name` whose fields include every pair of `fields`.
    pub fn event(&self, name: &str, fields: &[(&str, &str)]) -> Option<serde_json::Value> {
        events(&self.stderr()).into_iter().find(|e| {
            e["event"] == name
                && fields
                    .iter()
                    .all(|(k, v)| e[*k].as_str().map(str::to_owned).unwrap_or_else(|| e[*k].to_string()) == *v)
        })
    }

    /// Waits (up to `LONG`) for the event named `name` to be logged.
    pub fn expect_event_eventually(&mut self, name: &str) -> serde_json::Value {
        assert!(eventually(LONG, || self.event(name, &[]).is_some()), "no {name} event\n{}", self.stderr());
        self.expect_event(name, &[])
    }

    /// Panics (with crik's log) unless the event was logged.
    pub fn expect_event(&self, name: &str, fields: &[(&str, &str)]) -> serde_json::Value {
        self.event(name, fields)
            .unwrap_or_else(|| panic!("no {name} event with {fields:?}\ncrik's stderr:\n{}", self.stderr()))
    }
}

/// SIGTERM → crik must complete a final checkpoint and exit 0. Returns the stdout lines the
/// app printed.
pub fn checkpoint(c: &mut Container) -> Vec<String> {
    c.signal(libc::SIGTERM);
    let code = c.wait_code(LONG);
    assert_eq!(code, 0, "checkpoint failed:\n{}", c.stderr());
    c.expect_event("checkpoint_finished", &[("kind", "final")]);
    c.stdout_seen.clone()
}

/// The output of an uninterrupted run of workloads/memory.py (FAST=1, with `env`).
pub fn memory_reference(env: &[(&str, &str)]) -> Vec<String> {
    let out =
        Command::new(PYTHON).arg(workload("memory.py")).env("FAST", "1").envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

/// The last "count N" the app printed.
pub fn last_count(lines: &[String]) -> u64 {
    lines.iter().rev().find_map(|l| count_of(l)).expect("no count printed")
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const SHORT: Duration = Duration::from_secs(10);
pub const LONG: Duration = Duration::from_secs(60);

/// A shell loop counter: its state lives only in the shell's memory.
/// A Python app holding a TCP connection (to itself): its dumps take CRIU's network lock.
/// Prints "connected" once it does.
pub const CONNECTED: &str = "import socket, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
print('connected', flush=True)
while True: time.sleep(0.1)
";

pub const COUNTER: [&str; 3] = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done"];

/// The number in a "count N" line.
pub fn count_of(line: &str) -> Option<u64> {
    line.strip_prefix("count ")?.parse().ok()
}

/// Path of a workload script in tests/workloads/.
pub fn workload(name: &str) -> String {
    format!("{}/tests/workloads/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A line-protocol client of tests/workloads/kvserver.py on 127.0.0.1.
pub struct Client {
    w: std::net::TcpStream,
    r: BufReader<std::net::TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let mut last = None;
        for _ in 0..250 {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    return Client { r: BufReader::new(s.try_clone().unwrap()), w: s };
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cannot connect to 127.0.0.1:{port}: {last:?}");
    }
    pub fn set_timeout(&self, t: Duration) {
        self.w.set_read_timeout(Some(t)).unwrap();
    }
    pub fn ask(&mut self, line: &str) -> std::io::Result<String> {
        use std::io::Write;
        self.w.write_all(format!("{line}\n").as_bytes())?;
        let mut s = String::new();
        if self.r.read_line(&mut s)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(s.trim_end().to_string())
    }
}

/// A tmpfs of its own, unmounted (and its mount point removed, when empty) on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: impl AsRef<Path>, size: &str) -> Tmpfs {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "crik-test", dir.to_str().unwrap()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", dir.display());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// A cgroup v1 memory cgroup with a limit, beside the test's own; removed on drop. `None` where
/// memory is not a v1 controller (cgroup v2 keeps processes out of a parent with controllers).
pub struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    pub fn limited(bytes: u64) -> Option<MemoryCgroup> {
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))?;
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(rel.trim_start_matches('/'))
            .join(format!("crik-test-{}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
        Some(MemoryCgroup(dir))
    }
    /// Moves `pid` in; what it allocates from now on counts against the limit.
    pub fn enter(&self, pid: i32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    /// A value of its memory.stat (`cache`: page cache charged to it, in bytes).
    pub fn stat(&self, key: &str) -> u64 {
        let text = fs::read_to_string(self.0.join("memory.stat")).unwrap();
        text.lines().find_map(|l| l.strip_prefix(&format!("{key} "))).and_then(|v| v.parse().ok()).unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = eventually(SHORT, || fs::remove_dir(&self.0).is_ok());
    }
}

/// nftables tables in the host network namespace, each shaped like CRIU's network lock (two
/// sets, two hooked chains), as a node's own rules or locks left behind would be; deleted on
/// drop. A process that loads the namespace's ruleset (libnftables) pays memory for each.
pub struct NftTables(Vec<String>);

impl NftTables {
    pub fn add(count: usize) -> NftTables {
        let names: Vec<String> = (0..count).map(|i| format!("crik-test-{}-{i}", std::process::id())).collect();
        let rules = [
            "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop",
            "ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop",
        ];
        let mut script = String::new();
        for t in &names {
            script.push_str(&format!("table inet {t} {{\n"));
            for (set, addr) in [("conns4", "ipv4_addr"), ("conns6", "ipv6_addr")] {
                script.push_str(&format!(
                    "  set {set} {{\n    type {addr} . inet_service . {addr} . inet_service\n  }}\n"
                ));
            }
            for hook in ["output", "input"] {
                script.push_str(&format!(
                    "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n"
                ));
                for r in rules {
                    script.push_str(&format!("    {r}\n"));
                }
                script.push_str("  }\n");
            }
            script.push_str("}\n");
        }
        let tables = NftTables(names);
        assert!(nft_script(&script), "nft -f failed");
        tables
    }
}

impl Drop for NftTables {
    fn drop(&mut self) {
        let script: String = self.0.iter().map(|t| format!("delete table inet {t}\n")).collect();
        nft_script(&script);
    }
}

/// Runs an nft script (one transaction); whether it succeeded.
fn nft_script(script: &str) -> bool {
    let file = std::env::temp_dir().join(format!("crik-test-nft-{}", std::process::id()));
    fs::write(&file, script).unwrap();
    let ok = Command::new("nft").arg("-f").arg(&file).status().is_ok_and(|s| s.success());
    let _ = fs::remove_file(&file);
    ok
}

/// Bytes the files under `dir` take on disk (sparse files count what is written).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    files_under(dir).iter().filter_map(|f| fs::symlink_metadata(f).ok()).map(|md| md.blocks() * 512).sum()
}

/// Every file below `dir` (not directories), at any depth; none when it cannot be read.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out
}

/// The number in a "daemon N" line (tests/workloads/daemonizing.sh).
pub fn daemon_count(line: &str) -> Option<u64> {
    line.strip_prefix("daemon ")?.parse().ok()
}

pub fn last_daemon_count(lines: &[String]) -> u64 {
    lines.iter().rev().find_map(|l| daemon_count(l)).expect("the daemon printed nothing")
}
