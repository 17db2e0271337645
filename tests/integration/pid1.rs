//! crik as a container's init: each PID-1 duty, with the real binary as PID 1 of a fresh PID
//! namespace (and, where it matters, outside one as a child subreaper).

use crate::common::*;
use std::time::Duration;

#[test]
fn app_gets_its_own_session_high_pid_and_only_stdio_fds() {
    let _s = Scratch::new("session");
    let mut spec = Spec::run(
        None,
        &[
            PYTHON,
            "-c",
            "import os; print('pid', os.getpid(), 'sid', os.getsid(0), 'pgid', os.getpgid(0)); \
          fds = sorted(int(f) for f in os.listdir('/proc/self/fd')); print('fds', fds)",
        ],
    );
    spec.stray_fd = true;
    let mut c = Container::start(spec);
    let ids = c.expect_line(SHORT, "with pid/sid", |l| l.starts_with("pid "));
    let f: Vec<i64> = ids.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(f.len(), 3, "{ids}");
    assert!(f[0] > 9000, "app PID {} should come after ns_last_pid=9000", f[0]);
    assert_eq!(f[0], f[1], "app must be a session leader: {ids}");
    assert_eq!(f[0], f[2], "app must lead its process group: {ids}");
    let fds = c.expect_line(SHORT, "with fds", |l| l.starts_with("fds "));
    // fd 3 is listdir's own directory handle; the stray fd 7 given to crik must not be there.
    assert_eq!(fds, "fds [0, 1, 2, 3]", "app inherited more than stdio");
    assert_eq!(c.wait_code(SHORT), 0);
}

#[test]
fn stdin_stdout_and_stderr_pass_through() {
    let _s = Scratch::new("stdio");
    let mut spec = Spec::run(None, &["sh", "-c", "read line; echo \"out:$line\"; echo \"err:$line\" >&2"]);
    spec.stdin = Some(b"hello crik\n".to_vec());
    let mut c = Container::start(spec);
    assert_eq!(c.expect_line(SHORT, "echoed", |_| true), "out:hello crik");
    assert_eq!(c.wait_code(SHORT), 0);
    assert!(c.stderr().contains("err:hello crik"), "stderr: {}", c.stderr());
}

const TRAP_ALL: &str = r#"
import signal, sys, time
names = ["SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT", "SIGTERM"]
def got(n, _):
    print("got", signal.Signals(n).name, flush=True)
    if n == signal.SIGTERM:
        sys.exit(7)
for n in names:
    signal.signal(getattr(signal, n), got)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"#;

#[test]
fn signals_are_forwarded_and_sigterm_too_when_checkpointing_is_off() {
    let _s = Scratch::new("forward");
    assert!(!std::path::Path::new("/etc/crik/config.yaml").exists(), "test assumes no default config");
    let mut c = Container::start(Spec::run(None, &[PYTHON, "-c", TRAP_ALL]));
    c.expect_line(SHORT, "ready", |l| l == "ready");
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGCONT, "SIGCONT"),
    ] {
        c.signal(sig);
        c.expect_line(SHORT, name, |l| l == format!("got {name}"));
    }
    c.signal(libc::SIGTERM);
    c.expect_line(SHORT, "SIGTERM", |l| l == "got SIGTERM");
    assert_eq!(c.wait_code(SHORT), 7, "crik must exit with the app's code");
}

/// Orphans re-parented to crik must be reaped: none may stay a zombie.
fn assert_no_zombies_pile_up(pid1: bool) {
    let _s = Scratch::new(if pid1 { "reap1" } else { "reap2" });
    // 20 orphans that outlive their parent shell briefly, then a long-lived orphan to prove
    // re-parenting to crik happened at all.
    let script =
        "for i in $(seq 20); do sh -c 'sleep 0.2 &'; done; sh -c 'exec sleep 30 &'; echo spawned; exec sleep 30";
    let mut spec = Spec::run(None, &["sh", "-c", script]);
    spec.pid1 = pid1;
    let mut c = Container::start(spec);
    c.expect_line(SHORT, "spawned", |l| l == "spawned");
    let crik = c.crik_pid();
    assert!(
        eventually(SHORT, || children_of(crik).iter().any(|(_, _, n)| n == "sleep")),
        "orphans were not re-parented to crik: {:?}",
        children_of(crik)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        eventually(SHORT, || children_of(crik).iter().all(|(_, st, _)| *st != 'Z')),
        "zombies left under crik: {:?}",
        children_of(crik)
    );
    // Clean up what this test started: the whole tree goes with crik's app.
    c.signal(libc::SIGINT);
    let code = c.wait_code(SHORT);
    assert_eq!(code, 128 + libc::SIGINT, "sh killed by SIGINT");
    if !pid1 {
        // Outside a namespace the long-lived orphan survives crik: kill it ourselves.
        for (p, _, n) in children_of(1) {
            if n == "sleep"
                && std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default() == "sleep\u{0}30\u{0}"
            {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn zombies_are_reaped_as_pid1() {
    assert_no_zombies_pile_up(true);
}

#[test]
fn zombies_are_reaped_as_subreaper_outside_pid1() {
    assert_no_zombies_pile_up(false);
}

#[test]
fn exit_code_is_passed_on() {
    let _s = Scratch::new("exitcode");
    let mut c = Container::start(Spec::run(None, &["sh", "-c", "exit 42"]));
    assert_eq!(c.wait_code(SHORT), 42);
}

#[test]
fn death_by_signal_becomes_128_plus_signal() {
    let _s = Scratch::new("exitsig");
    let mut c = Container::start(Spec::run(None, &["sh", "-c", "kill -9 $$"]));
    assert_eq!(c.wait_code(SHORT), 137);
}

#[test]
fn exits_promptly_when_an_orphan_still_holds_stdout() {
    let _s = Scratch::new("prompt");
    let mut c = Container::start(Spec::run(None, &["sh", "-c", "sleep 60 & echo started; exit 3"]));
    c.expect_line(SHORT, "started", |l| l == "started");
    let t = std::time::Instant::now();
    assert_eq!(c.wait_code(SHORT), 3);
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[test]
fn missing_command_exits_127_and_non_executable_126() {
    let s = Scratch::new("execfail");
    let mut c = Container::start(Spec::run(None, &["/nonexistent/app"]));
    assert_eq!(c.wait_code(SHORT), 127);
    assert!(c.stderr().contains("crik: command not found: /nonexistent/app"), "{}", c.stderr());

    let script = s.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut c = Container::start(Spec::run(None, &[script.to_str().unwrap()]));
    assert_eq!(c.wait_code(SHORT), 126);
    assert!(c.stderr().contains("crik: command not executable"), "{}", c.stderr());
}

#[test]
fn run_without_command_is_a_usage_error() {
    let s = Scratch::new("nocmd");
    let mut c = Container::start(Spec::run(None, &[]));
    assert_eq!(c.wait_code(SHORT), 2);
    assert!(c.stderr().contains("no command given"), "{}", c.stderr());
    // Also with checkpointing on but nothing to restore.
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    assert_eq!(c.wait_code(SHORT), 2);
    assert!(c.stderr().contains("no checkpoint to restore"), "{}", c.stderr());
}

#[test]
fn bad_configuration_fails_before_the_app_starts() {
    let s = Scratch::new("badcfg");
    let marker = s.path("started");
    let app = format!("touch {}", marker.display());
    for (yaml, expect) in [
        ("imageDir: /x\n  additionalPaths: [\n", "line"),
        ("imageDri: /var/crik\n", "unknown field `imageDri`"),
        ("imageDir: relative/dir\n", "imageDir: path must be absolute"),
        ("additionalPaths: /not-a-list\n", "additionalPaths: invalid type"),
        ("nodeStateServerURL: ftp://x\n", "nodeStateServerURL: must be an http"),
    ] {
        let cfg = s.path("bad.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", &app]));
        assert_eq!(c.wait_code(SHORT), 2, "{yaml}");
        let err = c.stderr();
        assert!(err.contains(&cfg.display().to_string()), "error must name the file: {err}");
        assert!(err.contains(expect), "{yaml:?}: expected {expect:?} in {err}");
        assert!(err.contains(" line "), "error must give the line: {err}");
        assert!(err.starts_with("crik: "), "{err}");
        assert!(!marker.exists(), "the app must not start with a bad config");
    }
    // A config file named explicitly must exist; CRIK_CONFIG counts as explicit too.
    let mut c = Container::start(Spec::run(Some(&s.path("missing.yaml")), &["true"]));
    assert_eq!(c.wait_code(SHORT), 2);
    assert!(c.stderr().contains("missing.yaml"), "{}", c.stderr());
    let mut spec = Spec::run(None, &["true"]);
    spec.env.push(("CRIK_CONFIG".into(), s.path("missing2.yaml").display().to_string()));
    let mut c = Container::start(spec);
    assert_eq!(c.wait_code(SHORT), 2);
    assert!(c.stderr().contains("missing2.yaml"), "{}", c.stderr());
}

#[test]
fn version_and_help_are_written_for_people() {
    let out = std::process::Command::new(CRIK).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("crik {}", env!("CARGO_PKG_VERSION")));
    let out = std::process::Command::new(CRIK).arg("help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("checkpoints the app") && text.contains("run") && text.contains("restore"), "{text}");
    let out = std::process::Command::new(CRIK).args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/etc/crik/config.yaml") && text.contains("CRIK_CONFIG") && text.contains("Exit status"),
        "{text}"
    );
    let out = std::process::Command::new(CRIK).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn app_pids_start_high_even_with_a_read_only_proc_sys() {
    let _s = Scratch::new("rosys");
    let mut spec = Spec::run(None, &["sh", "-c", "echo pid $$"]);
    // As in an unprivileged container: ns_last_pid cannot be written.
    spec.setup = Some("mount --bind -o ro /proc/sys /proc/sys && mount -o remount,ro,bind /proc/sys".into());
    let mut c = Container::start(spec);
    let line = c.expect_line(SHORT, "pid", |l| l.starts_with("pid "));
    let pid: u32 = line[4..].parse().unwrap();
    assert!(pid > 9000, "app got pid {pid}\n{}", c.stderr());
    assert!(c.stderr().contains("not writable"), "{}", c.stderr());
    assert_eq!(c.wait_code(SHORT), 0);
}
