//! Checkpoint on SIGTERM and restore on the next start, with real CRIU and real workloads.
//! Each test proves that state survived, not merely that a process is alive.

use crate::common::*;
use std::path::Path;

/// Restores in a fresh container and checks the counter carries on from `last`, exactly.
fn restore_counter(cfg: &Path, last: u64) -> Container {
    let mut c = Container::start(Spec::run(Some(cfg), &COUNTER));
    c.expect_count_after(last);
    c.expect_event("restore_finished", &[]);
    c.expect_line(SHORT, "three more counts", |l| count_of(l) == Some(last + 4));
    c
}

#[test]
fn counter_continues_after_restore_and_output_reaches_the_new_stdout() {
    let s = Scratch::new("counter");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 5", |l| l == "count 5");
    let last = last_count(&checkpoint(&mut c));
    assert_eq!(s.checkpoints().len(), 1);

    let mut c = restore_counter(&cfg, last);
    // The used checkpoint is retired, so a crash now would not replay stale state.
    assert!(s.checkpoints().is_empty(), "{:?}", s.checkpoints());
    assert_eq!(s.area("retired").len(), 1);
    // The restored app is supervised like a fresh one: its exit code is passed on.
    c.signal(libc::SIGINT);
    assert_eq!(c.wait_code(SHORT), 128 + libc::SIGINT);
}

#[test]
fn three_full_cycles_in_a_row() {
    let s = Scratch::new("cycles");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let mut last = last_count(&checkpoint(&mut c));
    for cycle in 1..=3 {
        let mut c = restore_counter(&cfg, last);
        last = last_count(&checkpoint(&mut c));
        assert_eq!(s.checkpoints().len(), 1, "cycle {cycle}: {:?}", s.checkpoints());
    }
    let mut c = restore_counter(&cfg, last);
    c.kill();
}

#[test]
fn large_memory_program_gives_exactly_the_uninterrupted_output() {
    let s = Scratch::new("memory");
    let script = workload("memory.py");
    let reference = memory_reference(&[]);
    assert_eq!(reference.len(), 42);

    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(LONG, "step 8", |l| l.starts_with("step 8 "));
    let before = checkpoint(&mut c);
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    c.expect_line(LONG, "done", |l| l.starts_with("done "));
    assert_eq!(c.wait_code(SHORT), 0);
    let mut all = before;
    all.extend(c.stdout_seen.clone());
    assert_eq!(all, reference, "restored run differs from an uninterrupted one\n{}", c.stderr());
}

#[test]
fn multi_process_tree_over_pipes_keeps_going() {
    let s = Scratch::new("pipes");
    let cfg = s.config("");
    let script = workload("pipes.py");
    let parse = |l: &str| -> Option<(u64, u64)> {
        let f: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        (l.starts_with("round ") && f.len() == 2).then(|| (f[0], f[1]))
    };
    let expected_total = |n: u64| (1..=n).map(|k| (k + 1) * (k + 1)).sum::<u64>();
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(SHORT, "round 5", |l| l.starts_with("round 5 "));
    let before = checkpoint(&mut c);
    let (last, total) = before.iter().rev().find_map(|l| parse(l)).unwrap();
    assert_eq!(total, expected_total(last));

    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    let first = c.expect_line(LONG, "a round", |l| parse(l).is_some());
    assert_eq!(parse(&first), Some((last + 1, expected_total(last + 1))), "{}", c.stderr());
    let later = c.expect_line(SHORT, "5 more rounds", |l| parse(l).map(|p| p.0) == Some(last + 5));
    assert_eq!(parse(&later).unwrap().1, expected_total(last + 5));
    assert_eq!(children_of(c.crik_pid()).len(), 1, "the restored tree hangs off crik");
}

fn tcp_server_keeps_its_data(name: &str, tcp_restore: &str) -> (Client, Container, Scratch) {
    let s = Scratch::new(name);
    let cfg = s.config(&format!("tcpRestore: {tcp_restore}\n"));
    let port = free_port();
    let script = workload("kvserver.py");
    let cmd = [PYTHON, script.as_str(), &port.to_string()];
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_line(SHORT, "listening", |l| l.starts_with("listening"));
    let mut writer = Client::connect(port);
    for i in 0..500 {
        assert_eq!(writer.ask(&format!("SET key{i} value-{}", i * 7)).unwrap(), "OK");
    }
    drop(writer);
    // A client stays connected across the checkpoint: it must not make the dump fail.
    let mut idle = Client::connect(port);
    assert_eq!(idle.ask("COUNT").unwrap(), "500");
    checkpoint(&mut c);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server should be gone");

    let c = Container::start(Spec::run(Some(&cfg), &cmd));
    let mut fresh = Client::connect(port);
    assert_eq!(fresh.ask("COUNT").unwrap(), "500");
    for i in 0..500 {
        assert_eq!(fresh.ask(&format!("GET key{i}")).unwrap(), format!("value-{}", i * 7));
    }
    assert_eq!(fresh.ask("SET after restore").unwrap(), "OK");
    let mut another = Client::connect(port);
    assert_eq!(another.ask("GET after").unwrap(), "restore");
    (idle, c, s)
}

#[test]
fn tcp_server_keeps_data_and_connection_when_the_address_survived() {
    let (mut idle, c, _s) = tcp_server_keeps_its_data("tcp-auto", "auto");
    // Same host, same address: crik re-establishes the connection (tcpRestore: auto).
    assert_eq!(idle.ask("GET key42").unwrap(), "value-294", "{}", c.stderr());
    assert!(c.stderr().contains("re-established"), "{}", c.stderr());
}

#[test]
fn tcp_connections_restored_closed_on_request() {
    let (mut idle, c, _s) = tcp_server_keeps_its_data("tcp-close", "close");
    // Restored closed: the old client sees the connection end, new ones work (checked above).
    assert!(idle.ask("GET key42").is_err(), "old connection should be closed\n{}", c.stderr());
}

#[test]
fn additional_paths_come_back_before_restore() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = Scratch::new("files");
    let data = s.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/settings"), "mode=fast\n").unwrap();
    std::fs::set_permissions(data.join("sub/settings"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(data.join("sub/settings"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::symlink("sub/settings", data.join("current")).unwrap();
    let watched = s.path("watched");
    std::fs::create_dir_all(&watched).unwrap();
    let cfg = s.config(&format!(
        "additionalPaths: [{}]\ninotifyIncompatiblePaths: [{}]\n",
        data.display(),
        watched.display()
    ));
    let app = format!(
        "i=0; while :; do i=$((i+1)); echo \"tick $i\" >> {log}; echo \"count $i\"; sleep 0.1; done",
        log = data.join("log").display()
    );
    let cmd = ["sh", "-c", app.as_str()];
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_line(SHORT, "count 5", |l| l == "count 5");
    let last = last_count(&checkpoint(&mut c));
    let log_at_checkpoint = std::fs::read_to_string(data.join("log")).unwrap();
    assert!(!watched.exists(), "inotifyIncompatiblePaths must be deleted before the dump");

    // The new node has none of it.
    std::fs::remove_dir_all(&data).unwrap();
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_count_after(last);
    c.expect_line(SHORT, "count +3", |l| count_of(l) == Some(last + 3));
    let settings = data.join("sub/settings");
    assert_eq!(std::fs::read_to_string(&settings).unwrap(), "mode=fast\n");
    let md = std::fs::metadata(&settings).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    assert_eq!(std::fs::read_link(data.join("current")).unwrap(), Path::new("sub/settings"));
    let log = std::fs::read_to_string(data.join("log")).unwrap();
    assert!(log.starts_with(&log_at_checkpoint), "the log file must come back as it was");
    assert!(log.contains(&format!("tick {}\n", last + 2)), "and the app keeps appending to it");
}

#[test]
fn crik_restore_command_restores_in_the_foreground() {
    let s = Scratch::new("restorecmd");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 4", |l| l == "count 4");
    let last = last_count(&checkpoint(&mut c));

    let images = s.images();
    let (cfg, images) = (cfg.to_str().unwrap(), images.to_str().unwrap());
    let mut c = Container::start(Spec::args(&["restore", "--config", cfg, "--image-dir", images]));
    c.expect_count_after(last);
    assert!(c.stderr().contains("restore.log"), "must say where CRIU's log is: {}", c.stderr());
    // Left in place for another debugging round.
    assert_eq!(s.checkpoints().len(), 1);
    // And SIGTERM checkpoints it again.
    checkpoint(&mut c);
    assert_eq!(s.checkpoints().len(), 1);
    assert_eq!(s.area("retired").len(), 1);

    // A mistyped dir is named as missing, and not created.
    let typo = s.path("nothing");
    let mut c = Container::start(Spec::args(&["restore", "--image-dir", typo.to_str().unwrap()]));
    assert_eq!(c.wait_code(SHORT), 1);
    assert!(
        c.stderr().contains("crik: nothing to restore: image dir") && c.stderr().contains("does not exist"),
        "{}",
        c.stderr()
    );
    assert!(!typo.exists(), "crik restore must not create the image dir");
}

/// Parses crik's stderr as JSON lines; every line must be one object.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect()
}

#[test]
fn json_logs_carry_checkpoint_and_restore_events() {
    let s = Scratch::new("jsonlog");
    let cfg = s.config("logFormat: json\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let lines = json_lines(&c.stderr());
    let done = lines.iter().find(|l| l["event"] == "checkpoint_finished").expect("checkpoint_finished event");
    assert!(done["duration_ms"].is_u64() && done["size_bytes"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(done["level"], "info");
    assert!(lines.iter().any(|l| l["event"] == "checkpoint_started"));

    let mut c = restore_counter(&cfg, last);
    c.kill();
    let lines = json_lines(&c.stderr());
    let restored = lines.iter().find(|l| l["event"] == "restore_finished").expect("restore_finished event");
    assert!(restored["pid"].as_u64().unwrap() > 9000, "{restored}");
}

#[test]
fn hard_kill_after_a_periodic_checkpoint_restores_from_it() {
    let s = Scratch::new("periodic");
    let cfg = s.config("checkpointInterval: 0.5\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    // Wait for a periodic checkpoint, and see the app keep running after it.
    assert!(eventually(SHORT, || c.event("checkpoint_finished", &[("kind", "periodic")]).is_some()), "{}", c.stderr());
    let published = s.checkpoints();
    assert_eq!(published.len(), 1, "{published:?}");
    let seen_at_checkpoint = c.stdout_seen.len();
    c.expect_line(SHORT, "more counts after the checkpoint", |l| count_of(l).is_some());
    assert!(c.stdout_seen.len() > seen_at_checkpoint);
    // A host crash: no SIGTERM, crik and the app die at once.
    c.kill();
    c.wait(SHORT); // collects what the app printed before it died
    let last_seen = last_count(&c.stdout_seen);
    assert!(!s.checkpoints().is_empty());

    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    let first = count_of(&c.expect_line(LONG, "a count", |l| count_of(l).is_some())).unwrap();
    assert!(first > 1 && first <= last_seen + 1, "restored {first}, last seen {last_seen}\n{}", c.stderr());
    let next = count_of(&c.expect_line(SHORT, "the next count", |l| count_of(l).is_some())).unwrap();
    assert_eq!(next, first + 1);
    c.expect_event("restore_finished", &[]);
}

#[test]
fn app_exiting_on_its_own_retires_periodic_checkpoints() {
    let s = Scratch::new("periodic-exit");
    let cfg = s.config("checkpointInterval: 0.3\n");
    let app = "i=0; while [ $i -lt 15 ]; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done; exit 3";
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", app]));
    assert_eq!(c.wait_code(LONG), 3);
    c.expect_event("checkpoint_finished", &[("kind", "periodic")]);
    assert!(s.checkpoints().is_empty(), "a finished app must not be restored: {:?}", s.checkpoints());
    // So the next start runs the command fresh.
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", app]));
    assert_eq!(c.expect_line(SHORT, "count 1", |l| count_of(l).is_some()), "count 1");
}

fn ask_tcp(port: u16, what: &str) -> String {
    let mut c = Client::connect(port);
    c.ask(what).unwrap()
}

#[test]
fn lazily_restored_app_has_its_memory_intact() {
    let s = Scratch::new("lazy");
    let cfg = s.config("lazyPages: true\n");
    let port = free_port();
    let app = workload("bench_app.py");
    let cmd = [PYTHON, app.as_str(), &port.to_string(), "96", "1"];
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_line(LONG, "ready", |l| l == "ready");
    let before = ask_tcp(port, "CHECK");
    assert_eq!(before.len(), 64, "{before}");
    checkpoint(&mut c);

    let c = Container::start(Spec::run(Some(&cfg), &cmd));
    assert_eq!(ask_tcp(port, "PING"), "PONG", "{}", c.stderr());
    assert_eq!(ask_tcp(port, "CHECK"), before, "memory differs after a lazy restore\n{}", c.stderr());
    assert!(c.stderr().contains("lazy-pages daemon"), "{}", c.stderr());
}

#[test]
fn app_on_a_terminal_is_checkpointed_and_restored_onto_the_new_terminal() {
    // As in a container with `tty: true`: stdio is a pty whose master (here `script`) is outside
    // the app's tree; CRIU dumps it as external and crik lends the new terminal at restore.
    let s = Scratch::new("tty");
    let cfg = s.config("");
    let app = s.write_script("app.sh", "#!/bin/sh\ni=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done\n");
    let cmd = [app.to_str().unwrap()];
    let on_a_terminal = |with_cmd: bool| {
        let mut spec = Spec::run(Some(&cfg), if with_cmd { &cmd[..] } else { &[] });
        // `exec`: whatever $SHELL script picks (dash when it is unset) must not stay in between.
        spec.setup = Some("exec script -qfec \"exec $0 $*\" /dev/null".into());
        Container::start(spec)
    };
    let crik_under_script = |c: &mut Container| {
        let script = c.crik_pid();
        let crik = || children_of(script).into_iter().find(|(_, _, name)| name == "crik");
        assert!(eventually(SHORT, || crik().is_some()), "{:?}", children_of(script));
        crik().unwrap().0
    };
    let mut c = on_a_terminal(true);
    c.expect_line(SHORT, "count 3", |l| l.trim_end() == "count 3");
    unsafe { libc::kill(crik_under_script(&mut c), libc::SIGTERM) };
    assert_eq!(c.wait_code(LONG), 0, "{:?}", c.stdout_seen);
    let last = c.stdout_seen.iter().rev().find_map(|l| count_of(l.trim_end())).unwrap();

    let mut c = on_a_terminal(false);
    let first = c.expect_line(LONG, "a count", |l| count_of(l.trim_end()).is_some());
    assert_eq!(count_of(first.trim_end()), Some(last + 1), "{:?}", c.stdout_seen);
    c.expect_line(SHORT, "more counts on the new terminal", |l| count_of(l.trim_end()) == Some(last + 3));
    // And it can be checkpointed again.
    unsafe { libc::kill(crik_under_script(&mut c), libc::SIGTERM) };
    assert_eq!(c.wait_code(LONG), 0, "{:?}", c.stdout_seen);
}

#[test]
fn file_the_app_keeps_appending_to_is_archived_consistent_with_the_dump() {
    // The app writes to an open file in additionalPaths as fast as it can: archived before the
    // dump, the file would be shorter than the open fd's view and CRIU would refuse it.
    let s = Scratch::new("appending");
    let data = s.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = s.config(&format!("additionalPaths: [{}]\ncheckpointInterval: 0.3\n", data.display()));
    let app = format!(
        "exec 3>>{log}; i=0; while :; do i=$((i+1)); echo \"line $i\" >&3; \
         if [ $((i % 200)) -eq 0 ]; then echo \"count $((i / 200))\"; fi; done",
        log = data.join("log").display()
    );
    let cmd = ["sh", "-c", app.as_str()];
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_line(LONG, "count 5", |l| l == "count 5");
    // A periodic checkpoint happened meanwhile and the app went on writing after it.
    assert!(eventually(SHORT, || c.event("checkpoint_finished", &[("kind", "periodic")]).is_some()), "{}", c.stderr());
    c.expect_line(LONG, "more counts", |l| count_of(l).is_some());
    let last = last_count(&checkpoint(&mut c));
    std::fs::remove_dir_all(&data).unwrap();

    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_count_after(last);
    c.kill();
    c.wait(SHORT);
    // The log is whole: every line once, in order, from 1 on.
    let log = std::fs::read_to_string(data.join("log")).unwrap();
    for (n, line) in log.lines().enumerate() {
        assert_eq!(line, format!("line {}", n + 1));
    }
}

#[test]
fn established_connection_keeps_working_across_periodic_checkpoints() {
    let s = Scratch::new("tcp-periodic");
    let cfg = s.config("checkpointInterval: 0.3\n");
    let port = free_port();
    let script = workload("kvserver.py");
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, script.as_str(), &port.to_string()]));
    c.expect_line(SHORT, "listening", |l| l.starts_with("listening"));
    let mut client = Client::connect(port);
    assert_eq!(client.ask("SET k v0").unwrap(), "OK");
    for round in 1..=3 {
        let periodic = |c: &Container| {
            crate::common::events(&c.stderr())
                .iter()
                .filter(|e| e["event"] == "checkpoint_finished" && e["kind"] == "periodic")
                .count()
        };
        let before = periodic(&c);
        assert!(eventually(SHORT, || periodic(&c) > before), "{}", c.stderr());
        // The same connection, after the app was stopped, dumped and resumed.
        assert_eq!(client.ask(&format!("SET k v{round}")).unwrap(), "OK", "{}", c.stderr());
        assert_eq!(client.ask("GET k").unwrap(), format!("v{round}"));
    }
}

/// System V shared memory lives in the IPC namespace: without one of the app's own the
/// checkpoint is refused before the dump, naming it; with `isolateIpc` CRIU saves the namespace
/// with the app and the counter in the segment carries on.
#[test]
fn system_v_shared_memory_needs_isolate_ipc_and_then_comes_back() {
    let s = Scratch::new("sysv");
    let sysv = |l: &str| l.strip_prefix("sysv ").and_then(|n| n.parse::<u64>().ok());
    let script = workload("sysv.py");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(SHORT, "sysv 3", |l| l == "sysv 3");
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 128 + libc::SIGTERM, "{}", c.stderr());
    let failed = c.expect_event("checkpoint_failed", &[]);
    assert!(
        failed["msg"].as_str().unwrap().contains("System V shared memory")
            && failed["msg"].as_str().unwrap().contains("isolateIpc"),
        "{failed}"
    );
    assert!(s.checkpoints().is_empty());

    let cfg = s.config("isolateIpc: true\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(SHORT, "sysv 3", |l| l == "sysv 3");
    let last = checkpoint(&mut c).iter().filter_map(|l| sysv(l)).next_back().unwrap();
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    let first = sysv(&c.expect_line(LONG, "the counter", |l| sysv(l).is_some())).unwrap();
    // The dump may catch the child's increment before the parent printed it (last + 1), and on
    // restore the child, whose sleep ran out while it was frozen, may increment again before the
    // parent's first print (last + 2). A lost segment would start again near 0.
    assert!((last..=last + 2).contains(&first), "restored at {first}, checkpointed at {last}\n{}", c.stderr());
    c.expect_line(SHORT, "it goes on", |l| sysv(l).is_some_and(|n| n >= last + 3));
    c.expect_event("restore_finished", &[]);
}

/// Issue #25: under tini (a subreaper) the orphan stays in the app's tree for one cycle only:
/// at restore CRIU re-creates its dead session leader as a helper that exits before tini is a
/// subreaper again, so the orphan lands on crik and the next checkpoint refuses. With
/// `isolatePids` the app's PID namespace has crik's reaper as its init, which adopts it at every
/// restore: three cycles, the app's and the daemon's counts carry on exactly, nothing killed.
/// There tini must not register as a subreaper (no `-s`): CRIU cannot restore an orphan with a
/// dead session leader below the tree's root, and crik refuses that checkpoint, saying so.
#[test]
fn a_daemonized_helper_stays_in_the_tree_across_three_cycles_with_isolate_pids() {
    let s = Scratch::new("isolate-pids");
    let app = workload("daemonizing.sh");
    let app = app.as_str();
    let (subreaper, plain_tini) = (["tini", "-s", "--", "sh", app], ["tini", "--", "sh", app]);

    // Without: the second checkpoint fails, naming the orphan.
    let plain = s.config("");
    let mut c = Container::start(Spec::run(Some(&plain), &subreaper));
    c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
    checkpoint(&mut c);
    let mut c = Container::start(Spec::run(Some(&plain), &subreaper));
    c.expect_event_eventually("restore_finished");
    c.expect_line(LONG, "the daemon", |l| daemon_count(l).is_some());
    c.signal(libc::SIGTERM);
    c.wait(LONG);
    assert!(c.stderr().contains("left its tree"), "the old way should refuse the second checkpoint\n{}", c.stderr());
    let _ = std::fs::remove_dir_all(s.images());

    // restoreSignal reaches the app through the reaper (and tini).
    let cfg = s.config("isolatePids: true\nrestoreSignal: SIGALRM\n");
    // tini -s under the reaper: refused before the dump rather than written unrestorable.
    let mut c = Container::start(Spec::run(Some(&cfg), &subreaper));
    c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
    c.signal(libc::SIGTERM);
    c.wait(LONG);
    assert!(
        c.stderr().contains("a subreaper inside the app") && c.stderr().contains("tini without -s"),
        "{}",
        c.stderr()
    );
    assert!(s.checkpoints().is_empty());

    // Three cycles.
    let mut c = Container::start(Spec::run(Some(&cfg), &plain_tini));
    c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
    assert_eq!(c.expect_line(SHORT, "proc", |l| l.starts_with("proc ")), "proc agrees", "{}", c.stderr());
    for cycle in 1..=3 {
        let seen = checkpoint(&mut c);
        let (last, last_daemon) = (last_count(&seen), last_daemon_count(&seen));
        c = Container::start(Spec::run(Some(&cfg), &plain_tini));
        c.expect_event_eventually("restore_finished");
        c.expect_line(LONG, "a daemon count", |l| daemon_count(l).is_some());
        c.expect_line(LONG, "a count", |l| count_of(l).is_some());
        let first_count = c.stdout_seen.iter().find_map(|l| count_of(l));
        let first_daemon = c.stdout_seen.iter().find_map(|l| daemon_count(l));
        assert_eq!(first_count, Some(last + 1), "cycle {cycle}: the app's count\n{}", c.stderr());
        assert_eq!(first_daemon, Some(last_daemon + 1), "cycle {cycle}: the daemon's count\n{}", c.stderr());
        assert_eq!(c.expect_line(SHORT, "proc", |l| l.starts_with("proc ")), "proc agrees");
        if !c.stdout_seen.iter().any(|l| l == "restore signal") {
            c.expect_line(SHORT, "the restore signal", |l| l == "restore signal");
        }
        assert!(!c.stderr().contains("escaped") && !c.stderr().contains("killed"), "{}", c.stderr());
    }
    c.kill();
}

/// `isolatePids` with periodic checkpoints and a lazy restore: after a hard kill (no final
/// checkpoint) the newest periodic one comes back, namespaces and daemonized helper included,
/// served by CRIU's lazy-pages daemon; the next final checkpoint and lazy restore carry on
/// exactly.
#[test]
fn isolated_pids_work_with_periodic_checkpoints_and_a_lazy_restore() {
    let s = Scratch::new("isolate-pids-periodic");
    let app = workload("daemonizing.sh");
    let cmd = ["sh", app.as_str()];
    let cfg = s.config("isolatePids: true\ncheckpointInterval: 0.5\nlazyPages: true\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
    let periodic = |c: &Container| c.event("checkpoint_finished", &[("kind", "periodic")]).is_some();
    assert!(eventually(LONG, || periodic(&c)), "{}", c.stderr());
    c.expect_line(LONG, "the daemon", |l| daemon_count(l).is_some());
    c.kill();

    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_event_eventually("restore_finished");
    let first = c.expect_line(LONG, "a daemon count", |l| daemon_count(l).is_some());
    assert!(daemon_count(&first).unwrap() > 1, "the periodic checkpoint's helper, not a fresh one: {first}");
    assert!(c.stderr().contains("lazy-pages daemon"), "{}", c.stderr());
    c.expect_line(LONG, "a count", |l| count_of(l).is_some());
    let seen = checkpoint(&mut c);
    let (last, last_daemon) = (last_count(&seen), last_daemon_count(&seen));
    let mut c = Container::start(Spec::run(Some(&cfg), &cmd));
    c.expect_event_eventually("restore_finished");
    c.expect_line(LONG, "a daemon count", |l| daemon_count(l).is_some());
    c.expect_line(LONG, "a count", |l| count_of(l).is_some());
    assert_eq!(c.stdout_seen.iter().find_map(|l| count_of(l)), Some(last + 1), "{}", c.stderr());
    assert_eq!(c.stdout_seen.iter().find_map(|l| daemon_count(l)), Some(last_daemon + 1), "{}", c.stderr());
    c.kill();
}
