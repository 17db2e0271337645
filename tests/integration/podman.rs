//! crik as the ENTRYPOINT of real podman containers, under runc and crun: `podman stop`
//! checkpoints, `podman rm` removes the container, a new `podman run` on the same volume
//! restores, and the app's state carries on.

use crate::common::podman::{image, Pod, LEAST_PRIVILEGE, RUNTIMES};
use crate::common::*;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(60);

fn count_lines(c: &crate::common::podman::Container) -> Vec<u64> {
    c.stdout_lines().iter().filter_map(|l| count_of(l)).collect()
}

/// start → stop (checkpoint) → rm → run (restore) three times, with the least privilege the
/// README gives; the counter never resets.
fn three_cycles(runtime: &str) {
    let s = Scratch::new(&format!("podman-{runtime}"));
    let mut pod = Pod::new(&image("base"), runtime, &s.dir, "");
    pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
    let mut c = pod.start(&["run", "--", COUNTER[0], COUNTER[1], COUNTER[2]]);
    c.expect_line(LONG, "count 3", |l| l == "count 3");
    for cycle in 1..=3 {
        assert_eq!(c.stop(GRACE), 0, "cycle {cycle}: podman stop must checkpoint\n{}", c.logs().1);
        c.expect_event("checkpoint_finished");
        let last = *count_lines(&c).last().unwrap();
        assert_eq!(pod.checkpoints().len(), 1, "cycle {cycle}");
        drop(c); // podman rm
                 // A new container on the same volume: the same command line, as a pod would have.
        c = pod.start(&["run", "--", COUNTER[0], COUNTER[1], COUNTER[2]]);
        c.expect_line(LONG, "a count after the restore", |l| count_of(l).is_some_and(|n| n >= last + 3));
        assert_eq!(count_lines(&c)[0], last + 1, "cycle {cycle}: the count carries on\n{}", c.logs().1);
        c.expect_event("restore_finished");
    }
}

#[test]
fn runc_container_is_checkpointed_by_podman_stop_and_restored_by_a_new_run_three_times() {
    three_cycles(RUNTIMES[0]);
}

#[test]
fn crun_container_is_checkpointed_by_podman_stop_and_restored_by_a_new_run_three_times() {
    three_cycles(RUNTIMES[1]);
}

/// The runtime's default privileges are not enough: crik says which are missing at start, and
/// neither starts the app nor waits for a SIGTERM to find out.
#[test]
fn missing_privileges_are_named_at_start() {
    let s = Scratch::new("podman-caps");
    let mut pod = Pod::new(&image("base"), RUNTIMES[0], &s.dir, "");
    for (args, expect) in [
        (vec![], vec!["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_TIME", "seccomp"]),
        (vec!["--cap-add", "SYS_ADMIN,NET_ADMIN,SYS_TIME"], vec!["seccomp"]),
        (
            vec![
                "--cap-drop",
                "SYS_CHROOT",
                "--cap-add",
                "SYS_ADMIN,NET_ADMIN,SYS_TIME",
                "--security-opt",
                "seccomp=unconfined",
            ],
            vec!["CAP_SYS_CHROOT"],
        ),
    ] {
        pod.run_args = args.iter().map(|a| a.to_string()).collect();
        let c = pod.start(&["run", "--", "sh", "-c", "echo started; sleep 60"]);
        assert_eq!(c.wait(LONG), 1, "{args:?}\n{}", c.logs().1);
        let (out, err) = c.logs();
        assert!(!out.contains("started"), "the app must not start: {out}");
        assert!(err.contains("crik: checkpointing is on (imageDir) but CRIU would lack privileges"), "{err}");
        for e in expect {
            assert!(err.contains(e), "{args:?}: {e} not named in {err}");
        }
    }
}

/// kvserver.py in a pod on podman's bridge network, its port published on 127.0.0.1; 300 keys
/// written and a client left connected across `podman stop`, then a new container restores.
/// Returns (the idle client, the restored container, the IPs before and after).
fn kv_across_containers(
    runtime: &str,
    s: &Scratch,
    ip: Option<&str>,
) -> (Client, crate::common::podman::Container, String, String) {
    let port = free_port();
    let mut pod = Pod::new(&image("base"), runtime, &s.dir, "");
    pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
    pod.run_args.extend(["-p".into(), format!("127.0.0.1:{port}:7000")]);
    if let Some(ip) = ip {
        pod.run_args.extend(["--ip".into(), ip.into()]);
    }
    let cmd = ["run", "--", "python3", "/workloads/kvserver.py", "7000", "0.0.0.0"];
    let c = pod.start(&cmd);
    c.expect_line(LONG, "listening", |l| l.starts_with("listening"));
    let mut writer = Client::connect(port);
    for i in 0..300 {
        assert_eq!(writer.ask(&format!("SET key{i} value-{}", i * 7)).unwrap(), "OK");
    }
    drop(writer);
    let mut idle = Client::connect(port);
    assert_eq!(idle.ask("COUNT").unwrap(), "300");
    let before = c.ip();
    assert_eq!(c.stop(GRACE), 0, "{}", c.logs().1);
    drop(c);
    let c = pod.start(&cmd);
    c.expect_event_eventually_in(LONG, "restore_finished");
    // Listening again, on the same published port; the data is all there.
    let mut fresh = Client::connect(port);
    assert_eq!(fresh.ask("COUNT").unwrap(), "300", "{}", c.logs().1);
    for i in (0..300).step_by(7) {
        assert_eq!(fresh.ask(&format!("GET key{i}")).unwrap(), format!("value-{}", i * 7));
    }
    assert_eq!(fresh.ask("SET after restore").unwrap(), "OK");
    assert_eq!(Client::connect(port).ask("GET after").unwrap(), "restore");
    let after = c.ip();
    (idle, c, before, after)
}

#[test]
fn bridge_network_with_a_new_ip_listening_socket_and_state_come_back_old_connection_closed() {
    let s = Scratch::new("podman-newip");
    let (mut idle, c, before, after) = kv_across_containers(RUNTIMES[0], &s, None);
    assert_ne!(before, after, "podman gave the new container another address");
    assert!(c.logs().1.contains("restored closed (the container's address changed)"), "{}", c.logs().1);
    // The connection to the old address could not survive; it does not hang the server either.
    idle.set_timeout(Duration::from_secs(2));
    assert!(idle.ask("GET key42").is_err());
}

#[test]
fn bridge_network_with_the_same_ip_keeps_the_connection() {
    let s = Scratch::new("podman-sameip");
    let (mut idle, c, before, after) = kv_across_containers(RUNTIMES[1], &s, Some("10.88.0.77"));
    assert_eq!((before.as_str(), after.as_str()), ("10.88.0.77", "10.88.0.77"));
    assert!(c.logs().1.contains("will be re-established"), "{}", c.logs().1);
    assert_eq!(
        idle.ask("GET key42").unwrap(),
        "value-294",
        "the connection made before the checkpoint works\n{}",
        c.logs().1
    );
}

/// POSIX shared memory and a semaphore in the container's own /dev/shm (a fresh, empty tmpfs
/// in every container): the app's files there travel with the checkpoint.
#[test]
fn posix_shared_memory_and_semaphores_in_dev_shm_come_back() {
    let s = Scratch::new("podman-shm");
    let mut pod = Pod::new(&image("base"), RUNTIMES[1], &s.dir, "");
    pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
    let shm = |l: &str| l.strip_prefix("shm ").and_then(|n| n.parse::<u64>().ok());
    let cmd = ["run", "--", "python3", "/workloads/shm.py"];
    let c = pod.start(&cmd);
    c.expect_line(LONG, "shm 5", |l| l == "shm 5");
    assert_eq!(c.stop(GRACE), 0, "{}", c.logs().1);
    assert!(c.logs().1.contains("on tmpfs mounts archived: /dev/shm/crik-shm"), "{}", c.logs().1);
    let last = c.stdout_lines().iter().filter_map(|l| shm(l)).next_back().unwrap();
    drop(c);
    let c = pod.start(&cmd);
    c.expect_line(LONG, "the counter going on", |l| shm(l).is_some_and(|n| n >= last + 3));
    let first = c.stdout_lines().iter().find_map(|l| shm(l)).unwrap();
    // As with System V memory: an increment the parent had not printed (last + 1), then the
    // child's expired sleep before the parent's first print (last + 2). Lost memory restarts at 0.
    assert!((last..=last + 2).contains(&first), "restored at {first}, checkpointed at {last}\n{}", c.logs().1);
    c.expect_event("restore_finished");
}

/// A counter app in `pod`, checkpointed by `podman stop` and restored by a new `podman run`
/// of `cmd`; checks that the count carried on. Returns the restored container.
fn counter_round_trip(pod: &Pod, cmd: &[&str]) -> crate::common::podman::Container {
    let c = pod.start(cmd);
    c.expect_line(LONG, "count 3", |l| l == "count 3");
    assert_eq!(c.stop(GRACE), 0, "{}", c.logs().1);
    let last = *count_lines(&c).last().unwrap();
    drop(c);
    let c = pod.start(cmd);
    c.expect_line(LONG, "counts after the restore", |l| count_of(l).is_some_and(|n| n >= last + 2));
    assert_eq!(count_lines(&c)[0], last + 1, "{}", c.logs().1);
    c.expect_event("restore_finished");
    c
}

fn least_privilege_pod(s: &Scratch, runtime: &str, config: &str, extra: &[&str]) -> Pod {
    let mut pod = Pod::new(&image("base"), runtime, &s.dir, config);
    pod.run_args = LEAST_PRIVILEGE.iter().chain(extra).map(|a| a.to_string()).collect();
    pod
}

const LOOP: &str = "i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.2; done";

/// The runtime bind-mounts its own /etc/hosts into each container, with that container's name
/// and address (another size): the app's open /etc/hosts points to the new one after restore.
#[test]
fn an_open_etc_hosts_points_to_the_new_containers_copy() {
    let s = Scratch::new("podman-hosts");
    let pod = least_privilege_pod(&s, RUNTIMES[0], "", &[]);
    let script = format!("exec 3</etc/hosts; {LOOP}");
    let c = counter_round_trip(&pod, &["run", "--", "sh", "-c", &script]);
    assert!(c.logs().1.contains("open file /etc/hosts of the app now points to /etc/hosts"), "{}", c.logs().1);
    let app = c.expect_event("restore_finished")["pid"].as_u64().unwrap();
    let hosts = c.exec_ok(&["cat", &format!("/proc/{app}/fd/3")]);
    assert_eq!(hosts, c.exec_ok(&["cat", "/etc/hosts"]), "fd 3 reads the new /etc/hosts");
}

/// The same with `isolatePids`: the /etc/hosts crik lends at a restore is open on a mount of
/// crik's namespace, not the app's; the next checkpoint dumps it as an external file instead of
/// failing ("Can't lookup mount"), and every restore lends the new container's copy again.
#[test]
fn an_open_etc_hosts_follows_the_app_in_its_own_namespace_across_three_containers() {
    let s = Scratch::new("podman-hosts-isolated");
    let pod = least_privilege_pod(&s, RUNTIMES[1], "isolatePids: true\n", &[]);
    let script = format!("exec 3</etc/hosts; {LOOP}");
    let cmd = ["run", "--", "sh", "-c", &script];
    let c = counter_round_trip(&pod, &cmd);
    let last = *count_lines(&c).last().unwrap();
    assert_eq!(c.stop(GRACE), 0, "the checkpoint after a restore\n{}", c.logs().1);
    let last_checkpointed = *count_lines(&c).last().unwrap();
    assert!(last_checkpointed >= last);
    drop(c);
    let c = pod.start(&cmd);
    c.expect_line(LONG, "counts after the restore", |l| count_of(l).is_some_and(|n| n >= last_checkpointed + 2));
    assert_eq!(count_lines(&c)[0], last_checkpointed + 1, "{}", c.logs().1);
    let reaper = c.expect_event("restore_finished")["pid"].as_u64().unwrap();
    assert!(c.logs().1.contains("lent again"), "{}", c.logs().1);
    let app = c.exec_ok(&["cat", &format!("/proc/{reaper}/task/{reaper}/children")]);
    let hosts = c.exec_ok(&["cat", &format!("/proc/{}/fd/3", app.trim())]);
    assert_eq!(hosts, c.exec_ok(&["cat", "/etc/hosts"]), "fd 3 reads the third container's /etc/hosts");
}

/// `podman run -t`: the app writes to the container's terminal; the restored app writes to the
/// new container's terminal.
#[test]
fn an_app_on_the_containers_terminal_is_restored_onto_the_new_terminal() {
    let s = Scratch::new("podman-tty");
    let pod = least_privilege_pod(&s, RUNTIMES[1], "", &["-t"]);
    let c = counter_round_trip(&pod, &["run", "--", "sh", "-c", LOOP]);
    let app = c.expect_event("restore_finished")["pid"].as_u64().unwrap();
    let tty = c.exec_ok(&["readlink", &format!("/proc/{app}/fd/1")]);
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
}

/// `--read-only`: the root is read-only, /tmp a tmpfs (empty in every container). A file the
/// app keeps open there travels with the checkpoint.
#[test]
fn a_read_only_container_with_an_open_file_on_its_tmpfs_is_restored() {
    let s = Scratch::new("podman-ro");
    let pod = least_privilege_pod(&s, RUNTIMES[0], "", &["--read-only"]);
    let script = "exec 3>/tmp/state; i=0; while :; do i=$((i+1)); echo \"count $i\"; echo $i >&3; sleep 0.2; done";
    let c = counter_round_trip(&pod, &["run", "--", "sh", "-c", script]);
    assert!(c.logs().1.contains("on tmpfs mounts put back: /tmp/state"), "{}", c.logs().1);
    let numbers: Vec<u64> = c.exec_ok(&["cat", "/tmp/state"]).lines().filter_map(|l| l.parse().ok()).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1) && numbers[0] == 1,
        "one file, written before and after: {numbers:?}"
    );
    assert!(c.exec(&["touch", "/etc/x"]).status.code() != Some(0), "the root is read-only");
}

/// POSIX message queues: CRIU cannot dump them. The checkpoint fails before the app is even
/// frozen, naming the queue; the app runs until it gets the SIGTERM.
#[test]
fn a_posix_message_queue_fails_the_checkpoint_cleanly_naming_it() {
    let s = Scratch::new("podman-mq");
    let pod = least_privilege_pod(&s, RUNTIMES[1], "", &[]);
    let c = pod.start(&["run", "--", "python3", "/workloads/mqueue.py"]);
    c.expect_line(LONG, "count 3", |l| l == "count 3");
    assert_eq!(c.stop(GRACE), 128 + libc::SIGTERM, "the app shut down on SIGTERM\n{}", c.logs().1);
    let failed = c.expect_event("checkpoint_failed");
    let msg = failed["msg"].as_str().unwrap();
    assert!(msg.contains("POSIX message queue /crikq") && msg.contains("which CRIU cannot checkpoint"), "{msg}");
    assert!(pod.checkpoints().is_empty(), "no checkpoint that could not be restored");
    assert!(c.event("checkpoint_started").is_some());
}

/// captureRootfsDiff with podman's overlay storage: the container's writable layer (a new file,
/// a file the app appends to, a deleted file) follows the app into the new container. The layer's
/// upper dir is a host path: podman's storage is mounted at the same path (README).
#[test]
fn the_writable_layer_of_podmans_overlay_follows_the_app() {
    let s = Scratch::new("podman-rootfs");
    let storage = "/var/lib/containers/storage";
    let pod =
        least_privilege_pod(&s, RUNTIMES[0], "captureRootfsDiff: true\n", &["-v", &format!("{storage}:{storage}")]);
    let script =
        "mkdir -p /srv/data && echo made-here > /srv/data/new && rm /etc/debian_version && exec 3>>/srv/data/log; \
         i=0; while :; do i=$((i+1)); echo \"count $i\"; echo \"tick $i\" >&3; sleep 0.2; done";
    let c = counter_round_trip(&pod, &["run", "--", "sh", "-c", script]);
    assert_eq!(c.exec_ok(&["cat", "/srv/data/new"]), "made-here\n");
    assert!(c.exec(&["test", "-e", "/etc/debian_version"]).status.code() == Some(1), "the deletion was replayed");
    let log = c.exec_ok(&["cat", "/srv/data/log"]);
    assert!(log.starts_with("tick 1\n") && log.lines().count() > 5, "{log}");
}

/// The flags the README's Chromium recipe gives.
const CHROMIUM: [&str; 10] = [
    "chromium",
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--remote-debugging-port=9222",
    "--user-data-dir=/tmp/profile",
];

/// Evaluates `expr` in the browser's page over a new DevTools connection (tests/workloads/cdp.py
/// inside the container), retrying while the browser is not answering yet.
fn devtools(c: &crate::common::podman::Container, expr: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let out = c.exec(&["python3", "/workloads/cdp.py", "9222", expr]);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "DevTools does not answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.logs().1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Headless Chromium with a page whose JavaScript keeps a counter in memory: after each restore
/// the same tab (same heap: its first tick's timestamp) keeps counting, and DevTools answers a
/// new connection. Two cycles, with the least privilege.
#[test]
fn headless_chromium_keeps_its_tab_counting_across_two_cycles() {
    let s = Scratch::new("podman-chromium");
    chromium_two_cycles(|_| chromium_pod(&s.dir, ""), |_| {}, |_| {});
}

/// The same tab through object storage with pages streamed (the default): each checkpoint goes
/// to the real S3 server only, and each new container, with an empty volume (another node),
/// downloads it. Chromium's memory is mostly memfd and shared memory, which CRIU streams as
/// shmem pages through crik's page server.
#[test]
fn headless_chromium_streams_to_storage_and_comes_back_on_another_node() {
    let s = Scratch::new("podman-chromium-s3");
    let s3 = crate::common::s3::S3Server::start_for_containers(&s.path("s3"));
    let node = |n: u32| {
        let mut pod = chromium_pod(&s.path(&format!("node{n}")), &s3.container_config("chromium"));
        for (k, v) in s3.env() {
            pod.run_args.extend(["-e".into(), format!("{k}={v}")]);
        }
        pod
    };
    let streamed = |c: &crate::common::podman::Container| {
        let done = c.expect_event("checkpoint_finished");
        assert_eq!(done["staging"], "storage (streamed)", "{done}");
    };
    chromium_two_cycles(node, streamed, |c| drop(c.expect_event("download_finished")));
}

/// Issue #25's case: headless Chromium under tini, whose crashpad handler daemonizes. With
/// `isolatePids` (and tini not registering as a subreaper: crik's reaper adopts orphans), the
/// tab counts on across three cycles and nothing is killed (no `onEscapedProcesses: kill`).
#[test]
fn headless_chromium_under_tini_keeps_its_daemonized_helpers_across_three_cycles() {
    let s = Scratch::new("podman-chromium-tini");
    let pod = || {
        let mut pod = Pod::new(&image("chromium"), RUNTIMES[1], &s.dir, "additionalPaths: [/tmp]\nisolatePids: true\n");
        pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
        pod
    };
    let nothing_killed = |c: &crate::common::podman::Container| {
        let log = c.logs().1;
        assert!(!log.contains("escaped_killed") && !log.contains("left its tree"), "{log}");
    };
    chromium_cycles(3, &["tini", "--"], |_| pod(), nothing_killed, nothing_killed);
}

/// Chromium's pod (least privilege) with its volume and config under `dir`.
fn chromium_pod(dir: &std::path::Path, config: &str) -> Pod {
    let config = format!("additionalPaths: [/tmp]\nonEscapedProcesses: kill\n{config}");
    let mut pod = Pod::new(&image("chromium"), RUNTIMES[1], dir, &config);
    pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
    pod
}

/// Two cycles of the counting tab, each restore in a new container of `pod_for(cycle)`;
/// `stopped` and `restored` check each checkpointed and each restored container's log too.
fn chromium_two_cycles(
    pod_for: impl Fn(u32) -> Pod,
    stopped: impl Fn(&crate::common::podman::Container),
    restored: impl Fn(&crate::common::podman::Container),
) {
    chromium_cycles(2, &[], pod_for, stopped, restored);
}

/// `cycles` cycles of the counting tab, Chromium started by `init` (e.g. tini) if given.
fn chromium_cycles(
    cycles: u32,
    init: &[&str],
    pod_for: impl Fn(u32) -> Pod,
    stopped: impl Fn(&crate::common::podman::Container),
    restored: impl Fn(&crate::common::podman::Container),
) {
    let mut cmd = vec!["run", "--"];
    cmd.extend(init);
    cmd.extend(CHROMIUM);
    cmd.push("file:///workloads/counter.html");
    let mut c = pod_for(0).start(&cmd);
    assert!(eventually(LONG, || devtools(&c, "window.counter").as_u64().unwrap_or(0) >= 10), "{}", c.logs().1);
    let first_tick = devtools(&c, "window.ticks[0]");
    for cycle in 1..=cycles {
        let before = devtools(&c, "window.counter").as_u64().unwrap();
        assert_eq!(c.stop(GRACE), 0, "cycle {cycle}: {}", c.logs().1);
        c.expect_event("checkpoint_finished");
        stopped(&c);
        drop(c);
        c = pod_for(cycle).start(&cmd);
        c.expect_event_eventually_in(LONG, "restore_finished");
        restored(&c);
        let after = devtools(&c, "[window.counter, window.ticks.length, window.ticks[0]]");
        let n = after[0].as_u64().unwrap();
        assert!(n >= before, "cycle {cycle}: the counter went back from {before} to {n}");
        assert_eq!(after[1].as_u64(), Some(n), "cycle {cycle}: one tick per count, none lost");
        assert_eq!(after[2], first_tick, "cycle {cycle}: the same tab, the same heap");
        assert!(eventually(SHORT, || devtools(&c, "window.counter").as_u64().unwrap() > n + 5), "keeps counting");
    }
}

/// The Chromium recipe of docs/hooks.md: a preCheckpoint hook (examples/hooks/chromium_gc.py)
/// asks the browser through DevTools to collect its pages' garbage and release what it can. The
/// page (tests/workloads/garbage.html) builds and drops a report of about 40 MiB every second:
/// its checkpoint with the hook against without, each restored and counting on.
#[test]
fn recipe_chromium_collects_its_garbage_before_the_checkpoint() {
    let s = Scratch::new("podman-chromium-gc");
    let hooks_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hooks");
    let mut cmd = vec!["run", "--"];
    cmd.extend(CHROMIUM);
    cmd.push("file:///workloads/garbage.html");
    let checkpoint_of = |with_hook: bool| -> (u64, u64) {
        let hooks = if with_hook { "hooks:\n  preCheckpoint: [python3, /hooks/chromium_gc.py, '9222']\n" } else { "" };
        let mut pod = chromium_pod(&s.path(if with_hook { "gc" } else { "plain" }), hooks);
        pod.run_args.extend(["-v".into(), format!("{hooks_dir}:/hooks:ro")]);
        let c = pod.start(&cmd);
        assert!(eventually(LONG, || devtools(&c, "window.reports").as_u64().unwrap_or(0) >= 8), "{}", c.logs().1);
        assert_eq!(c.stop(GRACE), 0, "{}", c.logs().1);
        let done = c.expect_event("checkpoint_finished");
        if with_hook {
            let log = c.logs().1;
            assert!(log.contains("garbage collected in 1 page(s), memory pressure signalled"), "{log}");
        }
        drop(c);
        let c = pod.start(&cmd);
        c.expect_event_eventually_in(LONG, "restore_finished");
        let n = devtools(&c, "window.counter").as_u64().unwrap();
        assert!(eventually(SHORT, || devtools(&c, "window.counter").as_u64().unwrap() > n + 5), "keeps counting");
        (done["size_bytes"].as_u64().unwrap(), done["duration_ms"].as_u64().unwrap())
    };
    let ((plain, plain_ms), (gc, gc_ms)) = (checkpoint_of(false), checkpoint_of(true));
    eprintln!(
        "Chromium checkpoint: {} MiB in {plain_ms} ms without the hook, {} MiB in {gc_ms} ms with it",
        plain >> 20,
        gc >> 20
    );
    assert!(gc < plain, "the collection made the checkpoint no smaller: {gc} vs {plain} bytes");
}

/// `isolatePids` in real containers, under runc and crun with the least privilege: the app
/// (tests/workloads/daemonizing.sh) daemonizes a helper whose session leader exits; the reaper's
/// own /proc agrees with the app's PIDs and keeps the runtime's read-only /proc/sys; the app's
/// and the helper's counts carry on exactly across three cycles, nothing killed.
#[test]
fn isolated_pids_keep_a_daemonized_helper_across_three_cycles_under_runc_and_crun() {
    for runtime in RUNTIMES {
        let s = Scratch::new(&format!("podman-isolated-{runtime}"));
        let mut pod = Pod::new(&image("base"), runtime, &s.dir, "isolatePids: true\n");
        pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
        let cmd = ["run", "--", "sh", "/workloads/daemonizing.sh"];
        let mut c = pod.start(&cmd);
        c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
        for cycle in 0..=3 {
            let lines = c.stdout_lines();
            assert!(lines.iter().any(|l| l == "proc agrees"), "{runtime} cycle {cycle}: {lines:?}");
            assert!(!lines.iter().any(|l| l == "proc disagrees"), "{runtime} cycle {cycle}: {lines:?}");
            let masked = |l: &String| l.starts_with("proc/sys read-only: ");
            let masks: Vec<&String> = lines.iter().filter(|l| masked(l)).collect();
            assert!(!masks.is_empty() && masks.iter().all(|l| *l == "proc/sys read-only: 1"), "{runtime}: {masks:?}");
            if cycle == 3 {
                break;
            }
            assert_eq!(c.stop(GRACE), 0, "{runtime} cycle {cycle}: podman stop must checkpoint\n{}", c.logs().1);
            c.expect_event("checkpoint_finished");
            let lines = c.stdout_lines();
            let (last, last_daemon) = (last_count(&lines), last_daemon_count(&lines));
            drop(c);
            c = pod.start(&cmd);
            c.expect_line(LONG, "the daemon", |l| daemon_count(l).is_some_and(|n| n >= last_daemon + 3));
            c.expect_event("restore_finished");
            let lines = c.stdout_lines();
            assert_eq!(lines.iter().find_map(|l| count_of(l)), Some(last + 1), "{runtime} cycle {cycle}");
            assert_eq!(lines.iter().find_map(|l| daemon_count(l)), Some(last_daemon + 1), "{runtime} cycle {cycle}");
            assert!(!c.logs().1.contains("killed"), "{}", c.logs().1);
        }
    }
}
