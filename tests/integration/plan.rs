//! A final checkpoint that cannot fit `checkpointBudget` is not started: the newest periodic
//! checkpoint is kept instead. The outcome of every checkpoint is in the image dir's status file.

use crate::common::*;

fn status(s: &Scratch) -> serde_json::Value {
    let text = std::fs::read_to_string(s.images().join("status.json")).expect("status.json");
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["last_checkpoint"].clone()
}

#[test]
fn a_final_checkpoint_that_would_not_fit_keeps_the_periodic_one_which_restores() {
    let s = Scratch::new("budget");
    let script = workload("memory.py");
    let reference = std::process::Command::new(PYTHON).arg(&script).env("FAST", "1").output().unwrap();
    let reference: Vec<String> = String::from_utf8(reference.stdout).unwrap().lines().map(String::from).collect();
    // A 64 MiB app, checkpointed every second; a final checkpoint may take 5 ms: it cannot.
    let cfg = s.config("checkpointInterval: 1\ncheckpointBudget: 0.005\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(LONG, "step 2", |l| l.starts_with("step 2 "));
    assert!(eventually(LONG, || c.event("checkpoint_finished", &[("kind", "periodic")]).is_some()), "{}", c.stderr());
    let periodic = s.checkpoints();
    assert_eq!(periodic.len(), 1);
    assert_eq!(status(&s)["result"], "complete");
    assert_eq!(status(&s)["kind"], "periodic");

    c.signal(libc::SIGTERM);
    let code = c.wait_code(LONG);
    let skipped = c.expect_event("checkpoint_skipped", &[("kept", &periodic[0])]);
    assert!(skipped["estimate_ms"].as_u64().unwrap() > 5, "{skipped}");
    assert!(c.event("checkpoint_started", &[("kind", "final")]).is_none(), "no dump was started\n{}", c.stderr());
    assert_eq!(code, 128 + libc::SIGTERM, "the app got SIGTERM and shut down\n{}", c.stderr());
    assert_eq!(s.checkpoints(), periodic, "the periodic checkpoint is kept, not retired");
    let st = status(&s);
    assert_eq!(
        (st["kind"].as_str(), st["result"].as_str(), st["id"].as_str()),
        (Some("final"), Some("skipped"), Some(periodic[0].as_str()))
    );

    // The next start restores the periodic checkpoint, and its memory is intact: the app
    // carries on exactly like an uninterrupted run.
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    let done = c.expect_line(LONG, "done", |l| l.starts_with("done "));
    assert_eq!(&done, reference.last().unwrap(), "{}", c.stderr());
    let restored: Vec<&String> = c.stdout_seen.iter().filter(|l| l.starts_with("step ")).collect();
    let first = reference.iter().position(|l| l == restored[0]).expect("a step of the reference run");
    assert_eq!(restored.len(), reference.len() - 1 - first, "every later step, in order\n{}", c.stderr());
    for (got, want) in restored.iter().zip(&reference[first..]) {
        assert_eq!(*got, want);
    }
    c.expect_event("restore_finished", &[("id", &periodic[0])]);
}

#[test]
fn without_periodic_checkpoints_a_too_small_budget_is_said_at_start_and_the_dump_is_bounded() {
    let s = Scratch::new("budget-warn");
    // A budget that fits: the final checkpoint is taken as usual, and recorded.
    let cfg = s.config("checkpointBudget: 60\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let st = status(&s);
    assert_eq!((st["kind"].as_str(), st["result"].as_str()), (Some("final"), Some("complete")), "{st}");
    assert!(st["size_bytes"].as_u64().unwrap() > 0 && st["duration_ms"].is_u64(), "{st}");
    let (_, text) = inspect(&s);
    assert!(text.contains("last checkpoint: final complete"), "{text}");

    // Restored with a budget no checkpoint of it can meet, and nothing to fall back on.
    let cfg = s.config("checkpointBudget: 0.001\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_count_after(last);
    let warned = c.expect_event("checkpoint_too_slow", &[]);
    assert!(warned["msg"].as_str().unwrap().contains("set checkpointInterval"), "{warned}");
    c.signal(libc::SIGTERM);
    // The dump is tried, bounded by the budget, and fails; the app then gets SIGTERM.
    assert_eq!(c.wait_code(LONG), 128 + libc::SIGTERM, "{}", c.stderr());
    assert!(c.stderr().contains("will probably not fit"), "{}", c.stderr());
    c.expect_event("checkpoint_failed", &[]);
    let st = status(&s);
    assert_eq!(st["result"], "failed", "{st}");
    assert!(st["error"].as_str().unwrap().contains("did not finish within"), "{st}");
    assert!(s.area("staging").is_empty());
}

fn inspect(s: &Scratch) -> (i32, String) {
    let out = std::process::Command::new(CRIK)
        .args(["inspect", "--image-dir", s.images().to_str().unwrap()])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}
