//! crik as the ENTRYPOINT of real podman containers, under runc and crun: `podman stop`
//! checkpoints, `podman rm` removes the container, a new `podman run` on the same volume
//! restores, and the app's state carries on.

mod common;
use common::podman::{image, Pod, LEAST_PRIVILEGE, RUNTIMES};
use common::*;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(60);

fn count_lines(c: &common::podman::Container) -> Vec<u64> {
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
) -> (Client, common::podman::Container, String, String) {
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
    assert!(c.logs().1.contains("runtime's tmpfs archived: /dev/shm/crik-shm"), "{}", c.logs().1);
    let last = c.stdout_lines().iter().filter_map(|l| shm(l)).last().unwrap();
    drop(c);
    let c = pod.start(&cmd);
    c.expect_line(LONG, "the counter going on", |l| shm(l).is_some_and(|n| n >= last + 3));
    let first = c.stdout_lines().iter().find_map(|l| shm(l)).unwrap();
    assert!(first == last || first == last + 1, "restored at {first}, checkpointed at {last}\n{}", c.logs().1);
    c.expect_event("restore_finished");
}
