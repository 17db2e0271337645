//! The app's part (#25): hooks before a checkpoint, after a restore and after a failed
//! checkpoint, their timeout and failure policy, the control directory and the restore signal,
//! with real CRIU and a real app that reacts to them.

use crate::common::*;

/// A counter that reacts to crik: it prints the `restored` file when it appears (and removes
/// it), and says so when it gets SIGUSR1.
fn watching_app(ctl: &std::path::Path) -> String {
    let ctl = ctl.display();
    format!(
        "trap 'echo got USR1' USR1; i=0; while :; do i=$((i+1)); echo \"count $i\"; \
         if [ -f {ctl}/restored ]; then echo \"restored file: $(cat {ctl}/restored)\"; rm {ctl}/restored; fi; \
         sleep 0.1; done"
    )
}

#[test]
fn hooks_run_around_a_checkpoint_and_a_restore_and_the_app_sees_the_control_dir() {
    let s = Scratch::new("hooks");
    let ctl = s.path("ctl");
    let log = s.path("hooks.log");
    let cfg = s.config(&format!(
        "controlDir: {ctl}\nrestoreSignal: SIGUSR1\nhooks:\n  \
         preCheckpoint: [sh, -c, 'echo pre $CRIK_CHECKPOINT_KIND; echo pre >> {log}']\n  \
         postRestore: [sh, -c, 'echo post $CRIK_CHECKPOINT_ID; echo post >> {log}']\n",
        ctl = ctl.display(),
        log = log.display()
    ));
    let app = watching_app(&ctl);
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", &app]));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    c.expect_event("hook_finished", &[("hook", "preCheckpoint")]);
    assert!(c.stderr().contains("hook preCheckpoint stdout: pre final"), "{}", c.stderr());
    let said: serde_json::Value = serde_json::from_slice(&std::fs::read(ctl.join("checkpointing")).unwrap()).unwrap();
    assert_eq!(said["kind"], "final", "{said}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "pre\n", "before the dump, once");

    // Restored: the app finds `restored` (whole JSON), gets SIGUSR1, and postRestore runs.
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    c.expect_count_after(last);
    // Seen already (while waiting for the first count), or still to come.
    let line = match c.stdout_seen.iter().find(|l| l.starts_with("restored file: ")).cloned() {
        Some(l) => l,
        None => c.expect_line(SHORT, "the restored file", |l| l.starts_with("restored file: ")),
    };
    let file: serde_json::Value = serde_json::from_str(line.trim_start_matches("restored file: ")).unwrap();
    let restored = c.expect_event("restore_finished", &[]);
    assert_eq!(file["checkpoint"], restored["id"], "{file}");
    assert!(file["downtimeMs"].as_u64().is_some(), "{file}");
    if !c.stdout_seen.iter().any(|l| l == "got USR1") {
        c.expect_line(SHORT, "the restore signal", |l| l == "got USR1");
    }
    assert!(eventually(SHORT, || c.event("hook_finished", &[("hook", "postRestore")]).is_some()), "{}", c.stderr());
    let id = restored["id"].as_str().unwrap();
    assert!(c.stderr().contains(&format!("hook postRestore stdout: post {id}")), "{}", c.stderr());
    assert!(!ctl.join("checkpointing").exists(), "withdrawn once restored");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "pre\npost\n");
}

#[test]
fn a_hook_that_hangs_or_fails_is_logged_and_the_policy_decides() {
    let s = Scratch::new("hooks-fail");
    // Hangs: killed at hooks.timeout, its whole session; the checkpoint is taken anyway.
    let hang = s.config("hooks:\n  preCheckpoint: [sh, -c, 'sleep 30 & sleep 30']\n  timeout: 1\n");
    let mut c = Container::start(Spec::run(Some(&hang), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let failed = c.expect_event("hook_failed", &[("hook", "preCheckpoint")]);
    assert!(failed["msg"].as_str().unwrap().contains("did not finish within 1 s"), "{failed}");
    assert!(c.stderr().contains("checkpointing anyway"), "{}", c.stderr());
    let mut c = Container::start(Spec::run(Some(&hang), &[]));
    c.expect_count_after(last);
    drop(c);

    // Fails, with onPreCheckpointFailure: skip: no checkpoint; the app gets SIGTERM and ends.
    let s = Scratch::new("hooks-skip");
    let skip = s.config("hooks:\n  preCheckpoint: [sh, -c, 'echo no room; exit 3']\n  onPreCheckpointFailure: skip\n");
    let mut c = Container::start(Spec::run(Some(&skip), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    c.signal(libc::SIGTERM);
    let code = c.wait_code(LONG);
    assert_ne!(code, 0, "the state was not saved\n{}", c.stderr());
    let failed = c.expect_event("hook_failed", &[("hook", "preCheckpoint")]);
    assert!(failed["msg"].as_str().unwrap().contains("exit status: 3"), "{failed}");
    assert!(c.stderr().contains("hook preCheckpoint stdout: no room"), "{}", c.stderr());
    assert!(s.checkpoints().is_empty(), "{:?}", s.checkpoints());
}

/// A checkpoint that fails (here: a process left the app's tree) runs checkpointFailed, told
/// why; preCheckpoint runs before periodic checkpoints only when asked.
#[test]
fn a_failed_checkpoint_runs_its_hook_and_periodic_ones_run_pre_checkpoint_when_asked() {
    let s = Scratch::new("hooks-failed");
    let log = s.path("hooks.log");
    let cfg = s.config(&format!(
        "checkpointInterval: 0.5\nhooks:\n  beforePeriodic: true\n  \
         preCheckpoint: [sh, -c, 'echo $CRIK_CHECKPOINT_KIND >> {log}']\n  \
         checkpointFailed: [sh, -c, 'echo \"failed: $CRIK_ERROR\"']\n",
        log = log.display()
    ));
    // The app daemonizes a helper (it escapes the tree): every checkpoint fails.
    let app = "(sleep 1000 &); i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done";
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", app]));
    assert!(eventually(LONG, || c.event("hook_finished", &[("hook", "checkpointFailed")]).is_some()), "{}", c.stderr());
    assert!(
        c.stderr().contains("hook checkpointFailed stdout: failed: ") && c.stderr().contains("left"),
        "{}",
        c.stderr()
    );
    assert!(std::fs::read_to_string(&log).unwrap().starts_with("periodic\n"));
    c.kill();
}

/// The recipe of docs/hooks.md: a Python worker drops the cache it can rebuild when
/// preCheckpoint asks (examples/hooks/): the checkpoint is far smaller, and the restored worker
/// carries on without it.
#[test]
fn recipe_a_worker_drops_its_cache_before_the_checkpoint() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let app = format!("{repo}/examples/hooks/cache_app.py");
    let hook = format!("{repo}/examples/hooks/drop_cache.py");
    let size_of = |with_hook: bool| {
        let s = Scratch::new(if with_hook { "hooks-recipe-drop" } else { "hooks-recipe-keep" });
        let port = free_port().to_string();
        let hooks =
            if with_hook { format!("hooks:\n  preCheckpoint: [{PYTHON}, {hook}, '{port}']\n") } else { String::new() };
        let cfg = s.config(&hooks);
        let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &app, &port]));
        c.expect_line(LONG, "ready", |l| l == "ready");
        c.expect_line(SHORT, "count 3", |l| l == "count 3");
        let last = last_count(&checkpoint(&mut c));
        if with_hook {
            assert!(c.stderr().contains("hook preCheckpoint stdout: cache dropped: True"), "{}", c.stderr());
        }
        let bytes = dir_bytes(&s.images().join("checkpoints"));
        let mut c = Container::start(Spec::run(Some(&cfg), &[]));
        c.expect_count_after(last);
        bytes
    };
    let (kept, dropped) = (size_of(false), size_of(true));
    eprintln!("checkpoint with the cache: {} MiB; dropped first: {} MiB", kept >> 20, dropped >> 20);
    assert!(kept > 128 << 20, "{kept}");
    assert!(dropped < kept / 4, "{dropped} of {kept}");
}

/// Two cycles, periodic and final checkpoints, fresh and restored apps: each checkpoint gets its
/// preCheckpoint (with its kind), each restore its `restored` file and postRestore.
#[test]
fn hooks_follow_the_app_over_two_cycles_with_periodic_checkpoints() {
    let s = Scratch::new("hooks-cycles");
    let ctl = s.path("ctl");
    let log = s.path("hooks.log");
    let cfg = s.config(&format!(
        "checkpointInterval: 1\ncontrolDir: {ctl}\nhooks:\n  beforePeriodic: true\n  \
         preCheckpoint: [sh, -c, 'echo pre-$CRIK_CHECKPOINT_KIND >> {log}']\n  \
         postRestore: [sh, -c, 'echo post >> {log}']\n",
        ctl = ctl.display(),
        log = log.display()
    ));
    let app = watching_app(&ctl);
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", &app]));
    for cycle in 1..=2 {
        assert!(
            eventually(LONG, || c.event("checkpoint_finished", &[("kind", "periodic")]).is_some()),
            "{}",
            c.stderr()
        );
        // Between checkpoints the app runs on: no `checkpointing` file is left to mislead it.
        assert!(eventually(SHORT, || !ctl.join("checkpointing").exists()), "cycle {cycle}");
        let last = last_count(&checkpoint(&mut c));
        c = Container::start(Spec::run(Some(&cfg), &[]));
        c.expect_count_after(last);
        let seen = c.stdout_seen.iter().any(|l| l.starts_with("restored file: "));
        if !seen {
            c.expect_line(SHORT, "the restored file", |l| l.starts_with("restored file: "));
        }
        assert!(eventually(SHORT, || c.event("hook_finished", &[("hook", "postRestore")]).is_some()), "{}", c.stderr());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == "post").count(), 2, "{text}");
    assert_eq!(lines.iter().filter(|l| **l == "pre-final").count(), 2, "{text}");
    assert!(lines.iter().filter(|l| **l == "pre-periodic").count() >= 2, "{text}");
    c.kill();
}

/// The reconnect recipe of docs/hooks.md (examples/hooks/reconnecting_client.py): a client's
/// connection comes back closed from a restore (`tcpRestore: close`, as on another node); it
/// sees `restored` in the control dir and reconnects at once.
#[test]
fn recipe_a_client_reconnects_when_the_control_dir_says_it_was_restored() {
    use std::io::{BufRead, BufReader, Write};
    let s = Scratch::new("hooks-reconnect");
    let ctl = s.path("ctl");
    // The server, outside the container: answers "pong N" to "ping N", counts connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines().map_while(Result::ok) {
                    if w.write_all(format!("{}\n", line.replace("ping", "pong")).as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let cfg = s.config(&format!("tcpRestore: close\ncontrolDir: {}\n", ctl.display()));
    let client = format!("{}/examples/hooks/reconnecting_client.py", env!("CARGO_MANIFEST_DIR"));
    let ctl_arg = ctl.display().to_string();
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &client, "127.0.0.1", &port, &ctl_arg]));
    c.expect_line(SHORT, "connected", |l| l == "connected");
    c.expect_line(SHORT, "pong 3", |l| l == "pong 3");
    checkpoint(&mut c);
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    let line = c.expect_line(LONG, "the reconnect", |l| l.starts_with("reconnected after restore of "));
    assert!(line.contains("(away "), "{line}");
    c.expect_line(SHORT, "a pong on the new connection", |l| l.starts_with("pong "));
    // (The app resumes a moment before the file appears: its first read may already have seen
    // the closed connection, and reconnected on its own; the file still arrives.)
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2, "a new connection after the restore");
}
