//! crik as the ENTRYPOINT of real podman containers, under runc and crun: `podman stop`
//! checkpoints, `podman rm` removes the container, a new `podman run` on the same volume
//! restores, and the app's state carries on.

mod common;
use common::podman::{image, Pod, RUNTIMES};
use common::*;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(60);

fn count_lines(c: &common::podman::Container) -> Vec<u64> {
    c.stdout_lines().iter().filter_map(|l| count_of(l)).collect()
}

/// start → stop (checkpoint) → rm → run (restore) three times; the counter never resets.
fn three_cycles(runtime: &str) {
    let s = Scratch::new(&format!("podman-{runtime}"));
    let pod = Pod::new(&image("base"), runtime, &s.dir, "");
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
