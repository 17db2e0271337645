//! One writer per prefix (#22, 1) and what a start does when storage cannot be read (#22, 2):
//! two cricks on one prefix against a real S3 server (s3s-fs), a crik cut off past its lease, a
//! server that ignores conditional writes, and storage down at start.
//!
//! Before the lease, two cricks on one prefix both reported success while each one's garbage
//! collection deleted the other's chunks, or the second restored the first one's newest
//! checkpoint and the app ran twice. Before the start policy, a brief outage at start made the
//! app start fresh, and its uploads then superseded the checkpoint it never restored.

use crate::common::s3::{Answer, FakeHttp, S3Server};
use crate::common::*;

fn spec(cfg: &std::path::Path, s3: &S3Server, cmd: &[&str]) -> Spec {
    let mut spec = Spec::run(Some(cfg), cmd);
    spec.env.extend(s3.env());
    spec
}

fn env_of(s3: &S3Server) -> Vec<(String, String)> {
    s3.env()
}

/// A command that says so if it ever starts: the second crik's app, which must not run while
/// the first crik holds the prefix.
const APP_B: [&str; 3] = ["sh", "-c", "echo app B started; sleep 100"];

#[test]
fn a_second_crik_on_a_prefix_stops_or_waits_for_the_first_ones_final_checkpoint() {
    let s = Scratch::new("lease-two");
    let s3 = S3Server::start(&s.path("s3"));
    let mut a =
        Container::start(spec(&s.config(&format!("checkpointInterval: 1\n{}", s3.config("app"))), &s3, &COUNTER));
    a.expect_event_eventually("checkpoint_uploaded");

    // whenHeld: fail: stops at once, naming the holder; its app never starts.
    let node2 = Scratch::new("lease-two-node2");
    let env = env_of(&s3);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = refused_at_start(&node2.config(&format!("{}    whenHeld: fail\n", s3.config("app"))), &env);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("crik: cannot use storage s3://crik-test/app")
            && err.contains("is in use by crik ")
            && err.contains("storage.lease.whenHeld is fail"),
        "{err}"
    );

    // whenHeld: wait (the default): a pod replacing the first one waits, starting nothing...
    let mut b =
        Container::start(spec(&node2.config(&format!("checkpointInterval: 1\n{}", s3.config("app"))), &s3, &APP_B));
    assert!(eventually(SHORT, || b.event("lease_waiting", &[]).is_some()), "{}", b.stderr());
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(b.event("download_started", &[]).is_none() && b.event("lease_acquired", &[]).is_none(), "{}", b.stderr());
    let now = a.expect_line(SHORT, "a count", |l| count_of(l).is_some());
    a.expect_line(SHORT, "a later count", |l| count_of(l) > count_of(&now));
    // ...until the first one's final checkpoint is in storage and its lease released: then it
    // restores that state at once, and only then writes the prefix.
    let last = last_count(&checkpoint(&mut a));
    a.expect_event("lease_released", &[]);
    b.expect_count_after(last);
    let took = b.expect_event("lease_acquired", &[]);
    assert!(took["msg"].as_str().unwrap().contains("released by its holder"), "{took}");
    assert!(!b.stdout_seen.iter().any(|l| l.contains("app B")), "app B never ran");
    b.expect_event_eventually("checkpoint_uploaded");

    // What it leaves in storage is whole: a third node carries on from its final checkpoint.
    let last = last_count(&checkpoint(&mut b));
    let node3 = Scratch::new("lease-two-node3");
    let mut c = Container::start(spec(&node3.config(&s3.config("app")), &s3, &[]));
    c.expect_count_after(last);
}

#[test]
fn a_crik_cut_off_past_its_lease_never_writes_the_prefix_again() {
    let s = Scratch::new("lease-lost");
    let s3 = S3Server::start(&s.path("s3"));
    let periodic = format!("checkpointInterval: 1\n{}", s3.config("app"));
    let mut a = Container::start(spec(&s.config(&periodic), &s3, &COUNTER));
    a.expect_event_eventually("checkpoint_uploaded");
    // Cut off (stopped) for longer than its ttl (5 s): another crik takes the lease over and
    // restores its newest checkpoint.
    let a_pid = a.crik_pid();
    unsafe { libc::kill(a_pid, libc::SIGSTOP) };
    let node2 = Scratch::new("lease-lost-node2");
    let mut b = Container::start(spec(&node2.config(&periodic), &s3, &[]));
    assert!(eventually(LONG, || b.event("lease_acquired", &[]).is_some()), "{}", b.stderr());
    let took = b.expect_event("lease_acquired", &[]);
    assert!(took["msg"].as_str().unwrap().contains("expired"), "{took}");
    b.expect_event_eventually("restore_finished");
    b.expect_event_eventually("checkpoint_uploaded");
    let uploads_before = events(&a.stderr()).iter().filter(|e| e["event"] == "checkpoint_uploaded").count();
    // Back: it finds its lease taken and never writes again; its app keeps running.
    unsafe { libc::kill(a_pid, libc::SIGCONT) };
    assert!(eventually(SHORT, || a.event("lease_lost", &[]).is_some()), "{}", a.stderr());
    let refused = |a: &Container| a.stderr().matches("does not hold the lease on s3://crik-test/app").count();
    assert!(eventually(SHORT, || refused(&a) >= 2), "its periodic uploads are refused\n{}", a.stderr());
    let uploads_after = events(&a.stderr()).iter().filter(|e| e["event"] == "checkpoint_uploaded").count();
    assert_eq!(uploads_before, uploads_after, "{}", a.stderr());
    // Its final checkpoint stays in its own image dir; storage keeps the new holder's.
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_code(LONG), 1, "{}", a.stderr());
    a.expect_event("checkpoint_failed", &[("kind", "final"), ("uploaded", "false")]);
    assert!(a.event("lease_released", &[]).is_none(), "not its lease to release\n{}", a.stderr());
    let last = last_count(&checkpoint(&mut b));
    let node3 = Scratch::new("lease-lost-node3");
    let mut c = Container::start(spec(&node3.config(&s3.config("app")), &s3, &[]));
    c.expect_count_after(last);
}

#[test]
fn a_server_that_ignores_conditional_writes_is_refused_unless_the_lease_is_off() {
    let s = Scratch::new("lease-unconditional");
    // An S3 that stores nothing and says yes to every write, conditional or not.
    let server = FakeHttp::start(|line, _| {
        if line.starts_with("GET") && line.contains("list-type=2") {
            Answer::empty_listing()
        } else if line.starts_with("GET") {
            Answer::no_such_key()
        } else {
            Answer { status: "200 OK", headers: vec![("etag", "\"0123\"".into())], body: String::new() }
        }
    });
    let storage = format!(
        "storage:\n  url: s3://crik-test/app\n  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n",
        server.port
    );
    let env = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")];
    let (code, err) = refused_at_start(&s.config(&storage), &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ignores conditional writes") && err.contains("storage.lease.enabled: false"), "{err}");
    // Off, on purpose: crik goes on, and says what that costs.
    let mut spec = Spec::run(Some(&s.config(&format!("{storage}  lease:\n    enabled: false\n"))), &COUNTER);
    spec.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut c = Container::start(spec);
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    assert!(c.stderr().contains("storage.lease is off: nothing stops another crik"), "{}", c.stderr());
}

#[test]
fn storage_down_at_start_is_waited_for_and_never_cold_started_by_default() {
    let s = Scratch::new("lease-outage");
    let mut s3 = S3Server::start(&s.path("s3"));
    let mut c = Container::start(spec(&s.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));

    // Down for longer than retryAtStart: crik stops, its app never starts, the checkpoint stays.
    s3.stop();
    let node2 = Scratch::new("lease-outage-node2");
    let env = env_of(&s3);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = refused_at_start(&node2.config(&format!("{}  retryAtStart: 2\n", s3.config("app"))), &env);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("crik: cannot read storage s3://crik-test/app") && err.contains("onUnreadable: fail"),
        "{err}"
    );
    assert!(err.contains("\"storage_retry\""), "tried again first\n{err}");

    // Down briefly (the default retryAtStart: 60 s): the start waits, then restores it.
    let mut c = Container::start(spec(&node2.config(&s3.config("app")), &s3, &[]));
    assert!(eventually(SHORT, || c.event("storage_retry", &[]).is_some()), "{}", c.stderr());
    s3.resume();
    c.expect_count_after(last);
    assert!(c.event("store_unreadable", &[]).is_none(), "{}", c.stderr());
}

/// Storage cut off in the middle of a start's download (#22, 2: before, the start gave up after
/// three quick tries and the app started fresh): the download is tried again once storage is
/// back, and the state restored.
#[test]
fn storage_lost_mid_download_is_waited_for_and_the_state_restored() {
    let s = Scratch::new("lease-mid-download");
    let mut s3 = S3Server::start(&s.path("s3"));
    // 192 MiB of random memory: a download that takes a while, one request at a time.
    let storage = format!("{}  concurrency: 1\n", s3.config("app"));
    let app = "import os, time
data = os.urandom(192 << 20)
i = 0
while True:
    i += 1; print(f'count {i}', flush=True); time.sleep(0.1)
";
    let mut c = Container::start(spec(&s.config(&storage), &s3, &[crate::common::PYTHON, "-c", app]));
    c.expect_line(LONG, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));

    let node2 = Scratch::new("lease-mid-download-node2");
    let mut c = Container::start(spec(&node2.config(&storage), &s3, &[]));
    assert!(eventually(LONG, || c.event("download_started", &[]).is_some()), "{}", c.stderr());
    s3.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    s3.resume();
    c.expect_count_after(last);
    c.expect_event("storage_retry", &[]);
    assert!(c.event("store_unreadable", &[]).is_none(), "{}", c.stderr());
}
