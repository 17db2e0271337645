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
