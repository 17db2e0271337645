//! Real OCI containers: crik as the ENTRYPOINT of a podman container (runc or crun), its image
//! dir on a volume, its config bind-mounted read-only, the crik binary under test bind-mounted
//! over the image's. Images come from scripts/images/test_images.py (built there, never pulled).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{eventually, CRIK};

pub const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// The least privilege crik's checkpoints work with (README, security model): every other
/// capability dropped, an unconfined seccomp profile. (No AppArmor or SELinux on this host.)
pub const LEAST_PRIVILEGE: [&str; 6] = [
    "--cap-drop",
    "ALL",
    "--cap-add",
    "SYS_ADMIN,NET_ADMIN,SYS_TIME,SETPCAP,SYS_CHROOT",
    "--security-opt",
    "seccomp=unconfined",
];

/// The image for `app` (`base`, ...), built by scripts/images/test_images.py if missing. Fails (never
/// skips) when podman or a runtime is missing: scripts/setup.sh installs them.
pub fn image(app: &str) -> String {
    for tool in ["podman", "runc", "crun"] {
        assert!(Command::new(tool).arg("--version").output().is_ok(), "{tool} is not installed: run scripts/setup.sh");
    }
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/images/test_images.py"))
        .arg(app)
        .output()
        .expect("run scripts/images/test_images.py");
    assert!(out.status.success(), "building the {app} image failed:\n{}", String::from_utf8_lossy(&out.stderr));
    // The name is the last line (a build may print more before it).
    String::from_utf8(out.stdout).unwrap().lines().last().expect("an image name").trim().to_string()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().expect("run podman")
}

/// (open files, processes): the hard limits this machine allows, as containers' ulimits
/// (podman's defaults exceed them here, and the runtime may not raise a limit). conmon runs with
/// at most 32768 processes.
pub fn hard_limits() -> (u64, u64) {
    let hard = |r| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_max
    };
    (hard(libc::RLIMIT_NOFILE).min(1 << 20), hard(libc::RLIMIT_NPROC).min(32768))
}

/// [`hard_limits`] as `podman run` flags.
fn ulimits() -> Vec<String> {
    let (nofile, nproc) = hard_limits();
    vec!["--ulimit".into(), format!("nofile={nofile}:{nofile}"), "--ulimit".into(), format!("nproc={nproc}:{nproc}")]
}

/// What the README tells users to add to their runtime's default capabilities (which include
/// SETPCAP and SYS_CHROOT, and what apps need themselves: SETUID, NET_BIND_SERVICE, ...).
pub const DEFAULTS_PLUS: [&str; 4] =
    ["--cap-add", "SYS_ADMIN,NET_ADMIN,SYS_TIME", "--security-opt", "seccomp=unconfined"];

/// How one container is run: the volume and config every start of "the pod" shares.
#[derive(Clone)]
pub struct Pod {
    pub image: String,
    pub runtime: String,
    /// Host dir mounted at /var/lib/crik (imageDir is /var/lib/crik/images).
    pub volume: PathBuf,
    pub config: PathBuf,
    /// Extra `podman run` arguments (privileges, network, mounts).
    pub run_args: Vec<String>,
    /// The image's ENTRYPOINT is crik (the bundle's): the container's command is only crik's
    /// arguments. Otherwise the tested binary, bind-mounted, is the command.
    pub own_entrypoint: bool,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Pod {
    /// A pod on `runtime` with its volume and config under `dir`; `config` is YAML added to
    /// `imageDir: /var/lib/crik/images` and `logFormat: json`.
    pub fn new(image: &str, runtime: &str, dir: &Path, config: &str) -> Pod {
        let volume = dir.join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        let cfg = dir.join("crik.yaml");
        std::fs::write(&cfg, format!("imageDir: /var/lib/crik/images\nlogFormat: json\n{config}")).unwrap();
        Pod {
            image: image.into(),
            runtime: runtime.into(),
            volume,
            config: cfg,
            run_args: vec!["--privileged".into()],
            own_entrypoint: false,
        }
    }

    /// `podman run -d` of crik with `args` (`run -- CMD...`).
    pub fn start(&self, args: &[&str]) -> Container {
        let name = format!("crik-it-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        let mut cmd: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
        cmd.extend(["--runtime".into(), self.runtime.clone()]);
        cmd.extend(ulimits());
        cmd.extend(self.run_args.iter().cloned());
        cmd.extend(["-v".into(), format!("{}:/var/lib/crik", self.volume.display())]);
        cmd.extend(["-v".into(), format!("{}:/etc/crik/config.yaml:ro", self.config.display())]);
        cmd.extend(["-v".into(), format!("{CRIK}:/usr/local/bin/crik:ro")]);
        cmd.extend(["-v".into(), format!("{}/tests/workloads:/workloads:ro", env!("CARGO_MANIFEST_DIR"))]);
        cmd.push(self.image.clone());
        if !self.own_entrypoint {
            cmd.push("crik".into());
        }
        cmd.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = podman(&refs);
        assert!(out.status.success(), "podman run failed: {}", String::from_utf8_lossy(&out.stderr));
        Container { name }
    }

    /// Published checkpoints on the volume.
    pub fn checkpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.volume.join("images/checkpoints"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A podman container, removed (forcibly) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// (stdout, stderr) of the container so far: the app's output and crik's log.
    pub fn logs(&self) -> (String, String) {
        let out = podman(&["logs", &self.name]);
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The app's stdout lines (a terminal's `\r` removed).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.logs().0.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()
    }

    /// Waits until a stdout line satisfies `pred`; panics with the logs after `timeout`.
    pub fn expect_line(&self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stdout_lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() > deadline {
                let (out, err) = self.logs();
                panic!(
                    "no stdout line {what} within {timeout:?}\nstdout:\n{out}\ncrik's log:\n{err}\n{}",
                    self.state()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// crik's logged events (JSON lines on the container's stderr).
    pub fn event(&self, name: &str) -> Option<serde_json::Value> {
        // With a terminal (`-t`), crik's log shares the app's one stream.
        let (out, err) = self.logs();
        super::events(&err).into_iter().chain(super::events(&out)).find(|e| e["event"] == name)
    }

    /// Waits up to `timeout` for the event to be logged.
    pub fn expect_event_eventually_in(&self, timeout: Duration, name: &str) -> serde_json::Value {
        assert!(eventually(timeout, || self.event(name).is_some()), "no {name} event\ncrik's log:\n{}", self.logs().1);
        self.expect_event(name)
    }

    pub fn expect_event(&self, name: &str) -> serde_json::Value {
        self.event(name).unwrap_or_else(|| panic!("no {name} event\ncrik's log:\n{}", self.logs().1))
    }

    fn state(&self) -> String {
        String::from_utf8_lossy(
            &podman(&["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", &self.name]).stdout,
        )
        .into_owned()
    }

    /// `podman stop` (SIGTERM to crik, SIGKILL after `grace`); crik's exit code.
    pub fn stop(&self, grace: Duration) -> i32 {
        let out = podman(&["stop", "-t", &grace.as_secs().to_string(), &self.name]);
        assert!(out.status.success(), "podman stop failed: {}", String::from_utf8_lossy(&out.stderr));
        self.exit_code()
    }

    /// Waits for the container to exit by itself; its exit code.
    pub fn wait(&self, timeout: Duration) -> i32 {
        assert!(
            eventually(timeout, || self.state().starts_with("exited")),
            "container did not exit: {}\n{}",
            self.state(),
            self.logs().1
        );
        self.exit_code()
    }

    fn exit_code(&self) -> i32 {
        let out = podman(&["inspect", "--format", "{{.State.ExitCode}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("exit code")
    }

    /// The container's IP address on its network.
    pub fn ip(&self) -> String {
        let out = podman(&["inspect", "--format", "{{.NetworkSettings.IPAddress}}", &self.name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs a command inside the container; its stdout (panics if it fails).
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "podman exec {argv:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs().1
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the container (`podman exec`).
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(argv);
        podman(&args)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}
