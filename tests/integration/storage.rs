//! Object storage (`storage:`): checkpoints uploaded as content-addressed chunks to a real S3
//! server (s3s-fs) and restored on "another node" (a fresh image dir), with the faults a
//! careful user meets: server down, an upload cut short, damaged or missing chunks, wrong keys.

use crate::common::s3::S3Server;
use crate::common::*;

fn spec(cfg: &std::path::Path, s3: &S3Server, cmd: &[&str]) -> Spec {
    let mut spec = Spec::run(Some(cfg), cmd);
    spec.env.extend(s3.env());
    spec
}

#[test]
fn checkpoints_are_uploaded_incrementally_and_restored_on_another_node() {
    let s = Scratch::new("s3-cycle");
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&format!("checkpointInterval: 1\n{}", s3.config("app")));
    let mut c = Container::start(spec(&cfg, &s3, &COUNTER));
    let periodic = c.expect_event_eventually("checkpoint_uploaded");
    assert!(periodic["new_chunks"].as_u64().unwrap() > 0, "{periodic}");
    let last = last_count(&checkpoint(&mut c));
    let finals: Vec<_> =
        crate::common::events(&c.stderr()).into_iter().filter(|e| e["event"] == "checkpoint_uploaded").collect();
    let fin = finals.last().unwrap();
    // The final checkpoint shares most chunks with the periodic ones before it.
    assert!(
        fin["new_chunks"].as_u64().unwrap() < fin["chunks"].as_u64().unwrap(),
        "an incremental upload sends only changed chunks: {fin}"
    );
    assert!(fin["sent_bytes"].as_u64().unwrap() < fin["bytes"].as_u64().unwrap(), "{fin}");
    let id = fin["id"].as_str().unwrap().to_string();
    assert_eq!(s3.objects("app/checkpoints"), [format!("{id}.json")], "older ones are retired");

    // Another node: an empty image dir, the same storage.
    let node2 = Scratch::new("s3-cycle-node2");
    let cfg2 = node2.config(&s3.config("app"));
    let mut c = Container::start(spec(&cfg2, &s3, &[]));
    c.expect_count_after(last);
    // crik's log is read as it comes: wait for the lines, then check them.
    assert!(eventually(SHORT, || c.event("restore_finished", &[("id", &id)]).is_some()), "{}", c.stderr());
    c.expect_event("download_finished", &[("id", &id)]);
    // Retired right after the restore (restore_finished is logged before that).
    let retired = [format!("{id}.json")];
    assert!(
        eventually(SHORT, || s3.objects("app/checkpoints").is_empty() && s3.objects("app/retired") == retired),
        "restored once: retired in storage\n{}",
        c.stderr()
    );
    // A second cycle from the second node, back to the first one's (now stale) image dir.
    let last = last_count(&checkpoint(&mut c));
    let mut c = Container::start(spec(&cfg, &s3, &[]));
    c.expect_count_after(last);
}

#[test]
fn server_down_keeps_the_app_running_and_the_previous_checkpoint() {
    let s = Scratch::new("s3-down");
    let mut s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&format!("checkpointInterval: 1\n{}", s3.config("app")));
    let mut c = Container::start(spec(&cfg, &s3, &COUNTER));
    let first = c.expect_event_eventually("checkpoint_uploaded");
    let first_id = first["id"].as_str().unwrap().to_string();
    s3.stop();
    // Periodic checkpoints fail to upload; the app keeps counting.
    assert!(
        eventually(LONG, || c.event("checkpoint_failed", &[("kind", "periodic"), ("uploaded", "false")]).is_some()),
        "{}",
        c.stderr()
    );
    let now = c.expect_line(SHORT, "a count", |l| count_of(l).is_some());
    c.expect_line(SHORT, "a later count", |l| count_of(l) > count_of(&now));
    // The final checkpoint cannot be uploaded either: it stays in the image dir, exit 1.
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 1, "{}", c.stderr());
    c.expect_event("checkpoint_failed", &[("kind", "final"), ("uploaded", "false")]);
    let local_last = last_count(&c.stdout_seen);

    s3.resume();
    assert_eq!(s3.objects("app/checkpoints"), [format!("{first_id}.json")], "the previous one stands");
    // Another node restores that previous checkpoint...
    let node2 = Scratch::new("s3-down-node2");
    let mut c2 = Container::start(spec(&node2.config(&s3.config("other")), &s3, &COUNTER));
    c2.expect_line(SHORT, "count 1", |l| l == "count 1"); // another prefix: nothing there
    drop(c2);
    let mut c2 = Container::start(spec(&node2.config(&s3.config("app")), &s3, &[]));
    c2.expect_event_eventually("restore_finished");
    c2.expect_event("download_finished", &[("id", &first_id)]);
    drop(c2);
    // ...while this node, whose image dir kept the final one, restores that.
    let mut c = Container::start(spec(&cfg, &s3, &[]));
    c.expect_count_after(local_last);
}

#[test]
fn a_crik_killed_mid_upload_leaves_nothing_restorable_and_its_chunks_are_collected() {
    let s = Scratch::new("s3-killed");
    let s3 = S3Server::start(&s.path("s3"));
    // Killed (crik, and the namespace with it) once some chunks are up, before the manifest.
    let (_, mut c) = final_checkpoint_under_way(&s, &s3, 3);
    c.kill();
    assert!(s3.objects("app/checkpoints").is_empty(), "killed before its manifest\n{}", c.stderr());
    assert!(c.event("checkpoint_uploaded", &[]).is_none(), "{}", c.stderr());
    let orphans = s3.objects("app/chunks");

    // A new node finds nothing to restore: the app starts fresh.
    let node2 = Scratch::new("s3-killed-node2");
    let mut c = Container::start(spec_of(&node2.config(&s3.config("app")), &s3));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    assert!(c.event("download_started", &[]).is_none(), "{}", c.stderr());
    drop(c);
    // The next periodic checkpoint's garbage collection removes the orphaned chunks (once a
    // ttl and two requests have passed since the lease was taken over from the killed crik).
    let cfg2 = node2.config(&format!("checkpointInterval: 1\n{}", s3.config("app")));
    let mut c = Container::start(spec_of(&cfg2, &s3));
    c.expect_event_eventually("checkpoint_uploaded");
    let collected = |c: &Container| c.stderr().contains("no checkpoint refers to");
    assert!(eventually(LONG, || collected(&c)), "{}", c.stderr());
    // Stopped (its final checkpoint collects nothing), so that storage stands still.
    checkpoint(&mut c);
    let mut referenced: Vec<String> = Vec::new();
    for area in ["checkpoints", "retired", "quarantine"] {
        for name in s3.objects(&format!("app/{area}")) {
            let m = std::fs::read(s3.object(&format!("app/{area}/{name}"))).unwrap();
            let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
            let files = m["files"].as_array().unwrap().iter();
            referenced.extend(files.flat_map(|f| f["chunks"].as_array().unwrap()).map(|c| c["h"].to_string()));
        }
    }
    let referenced: Vec<String> = referenced.into_iter().map(|h| h.trim_matches('"').to_string()).collect();
    let now = s3.objects("app/chunks");
    let left: Vec<&String> = orphans.iter().filter(|h| now.contains(h) && !referenced.contains(h)).collect();
    assert!(left.is_empty(), "orphaned chunks left: {left:?}\n{}", c.stderr());
    assert!(orphans.iter().any(|h| !now.contains(h)), "some were collected");
}

/// An app with 64 MiB of random memory, uploaded one request at a time (so it takes a while),
/// SIGTERMed: returns its config and container once `chunks` chunks are in storage.
fn final_checkpoint_under_way(s: &Scratch, s3: &S3Server, chunks: usize) -> (std::path::PathBuf, Container) {
    let cfg = s.config(&format!("{}  concurrency: 1\n", s3.config("app")));
    let mut app = spec(&cfg, s3, &[PYTHON, &workload("memory.py")]);
    app.env.push(("STEPS".into(), "100000".into()));
    let mut c = Container::start(app);
    c.expect_line(LONG, "step 2", |l| l.starts_with("step 2 "));
    c.signal(libc::SIGTERM);
    assert!(eventually(LONG, || s3.objects("app/chunks").len() >= chunks), "{}", c.stderr());
    (cfg, c)
}

fn spec_of(cfg: &std::path::Path, s3: &S3Server) -> Spec {
    spec(cfg, s3, &COUNTER)
}

fn damaged_chunk_is_quarantined(name: &str, damage: impl Fn(&std::path::Path)) {
    let s = Scratch::new(name);
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&s3.config("app"));
    let mut c = Container::start(spec(&cfg, &s3, &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    let id = s3.objects("app/checkpoints")[0].trim_end_matches(".json").to_string();
    let chunks = s3.objects("app/chunks");
    // The largest chunk: the page image.
    let biggest = chunks.iter().max_by_key(|h| std::fs::metadata(s3.object(&format!("app/chunks/{h}"))).unwrap().len());
    damage(&s3.object(&format!("app/chunks/{}", biggest.unwrap())));

    let node2 = Scratch::new(&format!("{name}-node2"));
    let mut c = Container::start(spec(&node2.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    assert!(eventually(SHORT, || c.event("restore_failed", &[("id", &id)]).is_some()), "{}", c.stderr());
    let failed = c.expect_event("restore_failed", &[("id", &id)]);
    assert!(failed["msg"].as_str().unwrap().contains("damaged"), "{failed}");
    assert!(s3.objects("app/checkpoints").is_empty());
    assert_eq!(s3.objects("app/quarantine"), [format!("{id}.json")]);
    assert!(node2.checkpoints().is_empty(), "nothing partial is left published");
}

#[test]
fn a_corrupted_chunk_quarantines_the_checkpoint_and_the_app_starts_fresh() {
    damaged_chunk_is_quarantined("s3-corrupt", |p| {
        let mut b = std::fs::read(p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(p, b).unwrap();
    });
}

#[test]
fn a_missing_chunk_quarantines_the_checkpoint_and_the_app_starts_fresh() {
    damaged_chunk_is_quarantined("s3-missing", |p| std::fs::remove_file(p).unwrap());
}

#[test]
fn wrong_credentials_are_a_clear_error_at_start() {
    let s = Scratch::new("s3-creds");
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&s3.config("app"));
    let mut spec = Spec::run(Some(&cfg), &COUNTER);
    spec.env.push(("AWS_ACCESS_KEY_ID".into(), crate::common::s3::ACCESS_KEY.into()));
    spec.env.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let mut c = Container::start(spec);
    assert_eq!(c.wait_code(SHORT), 1, "{}", c.stderr());
    let err = c.stderr();
    assert!(err.contains("crik: cannot use storage s3://crik-test/app") && err.contains("HTTP 403"), "{err}");
    assert!(c.stdout_seen.is_empty(), "the app was not started");

    // No credentials at all: said at start, naming the variables.
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    assert_eq!(c.wait_code(SHORT), 1, "{}", c.stderr());
    assert!(c.stderr().contains("AWS_ACCESS_KEY_ID"), "{}", c.stderr());
}

#[test]
fn memory_staging_dumps_into_memory_and_falls_back_to_the_image_dir_without_room() {
    let s = Scratch::new("s3-memory");
    let mut s3 = S3Server::start(&s.path("s3"));
    let staging = Tmpfs::mount(s.path("shm"), "512m");
    // CRIU writes the pages (into memory staging), not crik's page server.
    let with_staging =
        |dir: &std::path::Path| format!("{}  stagingDir: {}\n  streamPages: false\n", s3.config("app"), dir.display());
    let cfg = s.config(&format!("checkpointInterval: 1\n{}", with_staging(&staging.0)));
    let mut c = Container::start(spec(&cfg, &s3, &COUNTER));
    // A periodic checkpoint: dumped into memory, uploaded, freed; nothing in the image dir.
    assert!(
        eventually(LONG, || c.event("checkpoint_finished", &[("kind", "periodic"), ("staging", "memory")]).is_some()),
        "{}",
        c.stderr()
    );
    let empty = |d: &std::path::Path| std::fs::read_dir(d).unwrap().next().is_none();
    assert!(eventually(SHORT, || empty(&staging.0)), "the memory is freed after the upload");
    let last = last_count(&checkpoint(&mut c));
    c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "memory")]);
    assert!(s.checkpoints().is_empty(), "in storage only: {:?}", s.checkpoints());
    assert!(empty(&staging.0));
    // `crik inspect` lists it there.
    let report = s3.inspect_json(&cfg);
    let listed = &report["storage"]["checkpoints"];
    let fin = c.expect_event("checkpoint_finished", &[("kind", "final")]);
    assert_eq!(listed.as_array().unwrap().iter().filter(|c| c["state"] == "complete").count(), 1, "{report}");
    let complete = listed.as_array().unwrap().iter().find(|c| c["state"] == "complete").unwrap();
    assert_eq!(complete["id"], fin["id"], "{report}");
    assert!(complete["chunks"].as_u64().unwrap() > 0 && complete["size_bytes"].as_u64().unwrap() > 0, "{report}");

    // Node 2 restores it; its staging tmpfs is too small for a dump: the image dir is used.
    let node2 = Scratch::new("s3-memory-node2");
    let small = Tmpfs::mount(node2.path("shm"), "32m");
    let mut c = Container::start(spec(&node2.config(&with_staging(&small.0)), &s3, &[]));
    c.expect_count_after(last);
    let last = last_count(&checkpoint(&mut c));
    c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "the image dir")]);
    assert!(c.stderr().contains("dumping into the image dir, not"), "{}", c.stderr());
    assert_eq!(node2.checkpoints().len(), 1);
    c.expect_event_eventually("checkpoint_uploaded");

    // Node 3: room on the tmpfs, not under the container's memory limit (cgroup v1 here).
    let node3 = Scratch::new("s3-memory-node3");
    let cfg3 = node3.config(&with_staging(&staging.0));
    let mut c = Container::start(spec(&cfg3, &s3, &[]));
    c.expect_count_after(last);
    // (A 64 MiB limit: under the 64 MiB margin a dump needs, and ample for crik and CRIU.)
    let c = match MemoryCgroup::limited(64 << 20) {
        Some(cg) => {
            cg.enter(c.crik_pid());
            let lines = checkpoint(&mut c);
            c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "the image dir")]);
            assert!(c.stderr().contains("the container's memory limit leaves"), "{}", c.stderr());
            drop(c);
            drop(cg);
            let mut c = Container::start(spec(&cfg3, &s3, &[]));
            let last = last_count(&lines);
            c.expect_count_after(last);
            // Storage down: the dump in memory is not lost, but copied into the image dir.
            s3.stop();
            c.signal(libc::SIGTERM);
            assert_eq!(c.wait_code(LONG), 1, "{}", c.stderr());
            c
        }
        None => {
            eprintln!("memory is not a cgroup v1 controller here: the memory-limit fallback is not exercised");
            s3.stop();
            c.signal(libc::SIGTERM);
            assert_eq!(c.wait_code(LONG), 1, "{}", c.stderr());
            c
        }
    };
    let failed = c.expect_event("checkpoint_failed", &[("kind", "final"), ("uploaded", "false")]);
    let report = s3.inspect_json(&cfg3);
    assert!(report["storage"]["error"].as_str().is_some_and(|e| !e.is_empty()), "unreachable: said\n{report}");
    assert_eq!(report["checkpoints"].as_array().unwrap().iter().filter(|c| c["state"] == "complete").count(), 1);
    assert!(failed["msg"].as_str().unwrap().contains("it is complete in the image dir"), "{failed}");
    assert!(empty(&staging.0));
    let kept = last_count(&c.stdout_seen);
    s3.resume();
    let mut c = Container::start(spec(&cfg3, &s3, &[]));
    c.expect_count_after(kept);
}

#[test]
fn an_app_that_exits_on_its_own_leaves_no_periodic_checkpoint_in_storage_to_replay() {
    let s = Scratch::new("s3-exit");
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&format!("checkpointInterval: 1\n{}", s3.config("app")));
    let finite = [
        "sh",
        "-c",
        "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo \"count $i\"; sleep 0.1; [ -e \"$STOP\" ] && exit 0; done",
    ];
    let mut spec = spec(&cfg, &s3, &finite);
    let stop = s.path("stop");
    spec.env.push(("STOP".into(), stop.display().to_string()));
    let mut c = Container::start(spec);
    c.expect_event_eventually("checkpoint_uploaded");
    assert_eq!(s3.objects("app/checkpoints").len(), 1);
    std::fs::write(&stop, "").unwrap();
    assert_eq!(c.wait_code(LONG), 0, "{}", c.stderr());
    assert!(s3.objects("app/checkpoints").is_empty(), "{}", c.stderr());
    // Another node starts the command fresh: the job's finished state is not replayed.
    let node2 = Scratch::new("s3-exit-node2");
    let mut c = Container::start(spec_of(&node2.config(&s3.config("app")), &s3));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    assert!(c.event("download_started", &[]).is_none(), "{}", c.stderr());
}

/// `crik inspect --json` with this config and the server's credentials.
#[test]
fn streamed_pages_never_touch_the_image_dir_and_restore_exactly() {
    let s = Scratch::new("s3-stream");
    let s3 = S3Server::start(&s.path("s3"));
    // 64 MiB of app memory, an image dir with room for CRIU's small images only: a dump whose
    // pages went there could not succeed.
    let _images = Tmpfs::mount(s.images(), "24m");
    let script = workload("memory.py");
    let steps = ("STEPS".to_string(), "100".to_string());
    let reference = memory_reference(&[(&steps.0, &steps.1)]);

    let cfg = s.config(&format!("checkpointInterval: 2\n{}", s3.config("app")));
    let mut app = spec(&cfg, &s3, &[PYTHON, &script]);
    app.env.push(steps);
    let mut c = Container::start(app);
    assert!(
        eventually(LONG, || c
            .event("checkpoint_finished", &[("kind", "periodic"), ("staging", "storage (streamed)")])
            .is_some()),
        "{}",
        c.stderr()
    );
    let before = checkpoint(&mut c);
    let fin = c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "storage (streamed)")]);
    assert!(fin["size_bytes"].as_u64().unwrap() > 64 << 20, "{fin}");
    assert!(s.checkpoints().is_empty(), "in storage only: {:?}", s.checkpoints());
    assert!(s.area("staging").is_empty(), "the small images are removed: {:?}", s.area("staging"));
    // Another node: the same output as a run never interrupted.
    let node2 = Scratch::new("s3-stream-node2");
    let mut c = Container::start(spec(&node2.config(&s3.config("app")), &s3, &[]));
    c.expect_line(LONG, "done", |l| l.starts_with("done "));
    assert_eq!(c.wait_code(SHORT), 0, "{}", c.stderr());
    c.expect_event("download_finished", &[("id", fin["id"].as_str().unwrap())]);
    let mut all = before;
    all.extend(c.stdout_seen.clone());
    assert_eq!(all, reference, "restored run differs from an uninterrupted one\n{}", c.stderr());
}

#[test]
fn storage_lost_mid_stream_rolls_the_dump_back_and_keeps_it_in_the_image_dir() {
    let s = Scratch::new("s3-stream-lost");
    let mut s3 = S3Server::start(&s.path("s3"));
    // Storage goes away while the pages stream.
    let (cfg, mut c) = final_checkpoint_under_way(&s, &s3, 2);
    s3.stop();
    // CRIU rolled back, the app went on, and was dumped again into the image dir; the upload
    // of that one fails too: kept there, exit 1.
    assert_eq!(c.wait_code(LONG), 1, "{}", c.stderr());
    assert!(c.stderr().contains("streaming to s3://crik-test/app failed"), "{}", c.stderr());
    let failed = c.expect_event("checkpoint_failed", &[("kind", "final"), ("uploaded", "false")]);
    assert!(failed["msg"].as_str().unwrap().contains("it is complete in the image dir"), "{failed}");
    assert_eq!(s.checkpoints().len(), 1);
    let steps = |lines: &[String]| lines.iter().filter(|l| l.starts_with("step ")).count();
    let seen = steps(&c.stdout_seen);

    s3.resume();
    assert!(s3.objects("app/checkpoints").is_empty(), "nothing half-streamed is published");
    // The image dir's checkpoint comes back (and is uploaded by its next checkpoint).
    let mut c = Container::start(spec(&cfg, &s3, &[]));
    c.expect_event_eventually("restore_finished");
    c.expect_line(LONG, "a later step", |l| {
        l.split_whitespace().nth(1).and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n >= seen)
    });
}

#[test]
fn web_identity_credentials_come_from_sts_and_sign_every_request() {
    let s = Scratch::new("s3-web-identity");
    let s3 = S3Server::start(&s.path("s3"));
    // As EKS mounts it for IRSA: a JWT in a file (its contents are STS's business).
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.c2lnbmF0dXJl";
    let token_file = s.path("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let sts = crate::common::s3::Sts::start(token);
    let cfg = s.config(&s3.config("app"));
    let with_identity = |cmd: &[&str]| {
        let mut spec = Spec::run(Some(&cfg), cmd);
        spec.env.extend(sts.env(&token_file));
        spec
    };
    let mut c = Container::start(with_identity(&COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    c.expect_event("checkpoint_uploaded", &[]);
    assert_eq!(s3.objects("app/checkpoints").len(), 1);
    assert_eq!(sts.requests.lock().unwrap().len(), 1, "one exchange; the keys are kept until near expiry");
    // Another node, the same identity: restored from storage.
    let node2 = Scratch::new("s3-web-identity-node2");
    let mut spec = Spec::run(Some(&node2.config(&s3.config("app"))), &[]);
    spec.env.extend(sts.env(&token_file));
    let mut c = Container::start(spec);
    c.expect_count_after(last);
    c.expect_event("download_finished", &[]);
    drop(c);

    // A token STS does not accept: said at start, in STS's words; the app is not started.
    std::fs::write(&token_file, "not-a-token").unwrap();
    let mut c = Container::start(with_identity(&COUNTER));
    assert_eq!(c.wait_code(SHORT), 1, "{}", c.stderr());
    let err = c.stderr();
    assert!(err.contains("refused the web identity token: HTTP 403") && err.contains("InvalidIdentityToken"), "{err}");
    assert!(c.stdout_seen.is_empty(), "the app was not started");
}

#[test]
fn shared_anonymous_memory_streams_as_shmem_pages_and_comes_back() {
    let s = Scratch::new("s3-stream-shmem");
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&s3.config("app"));
    let mut c = Container::start(spec(&cfg, &s3, &[PYTHON, &workload("shared_anon.py")]));
    let first = c.expect_line(LONG, "anon 3", |l| l.starts_with("anon 3 "));
    let sum = first.split_whitespace().nth(2).unwrap().to_string();
    let lines = checkpoint(&mut c);
    c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "storage (streamed)")]);
    let manifest = s3.object(&format!("app/checkpoints/{}", s3.objects("app/checkpoints")[0]));
    let manifest = std::fs::read_to_string(manifest).unwrap();
    assert!(manifest.contains("pagemap-shmem-"), "the shared memory went through crik's page server");
    let last: u64 = lines.iter().rev().find_map(|l| l.strip_prefix("anon ")?.split(' ').next()?.parse().ok()).unwrap();

    let node2 = Scratch::new("s3-stream-shmem-node2");
    let mut c = Container::start(spec(&node2.config(&s3.config("app")), &s3, &[]));
    let later = c.expect_line(LONG, "a later count", |l| {
        l.strip_prefix("anon ").and_then(|r| r.split(' ').next()?.parse::<u64>().ok()).is_some_and(|n| n > last)
    });
    assert!(later.ends_with(&sum), "the shared memory's contents came back: {later} (before: {sum})");
    assert!(c.stdout_seen.iter().all(|l| l.ends_with(&sum)), "{:?}", c.stdout_seen);
}

/// Inputs that once killed PID 1 (and the app with it) with a panic: credentials or a region
/// no HTTP header can carry, a concurrency no machine has. Each now stops crik at start with
/// `crik: …` naming the setting (never a secret's value), before the app starts; a Secret made
/// from a file, with its trailing newline, simply works.
#[test]
fn settings_no_request_can_carry_stop_crik_at_start_and_a_trailing_newline_is_trimmed() {
    let s = Scratch::new("s3-bad-inputs");
    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&s3.config("app"));
    let started = |cfg: &std::path::Path, env: Vec<(String, String)>| {
        let mut spec = Spec::run(Some(cfg), &COUNTER);
        spec.env.extend(env);
        Container::start(spec)
    };
    // A Secret made from a file: its trailing newline is trimmed, the checkpoint goes up.
    let newline: Vec<(String, String)> = s3.env().into_iter().map(|(k, v)| (k, format!("{v}\n"))).collect();
    let mut c = started(&cfg, newline);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    c.expect_event("checkpoint_uploaded", &[]);

    let refused = |cfg: &std::path::Path, env: Vec<(String, String)>, code: i32, says: &str| {
        let mut c = started(cfg, env);
        assert_eq!(c.wait_code(SHORT), code, "{says}: {}", c.stderr());
        let err = c.stderr();
        assert!(err.lines().any(|l| l.starts_with("crik: ") && l.contains(says)), "{says}: {err}");
        assert!(c.stdout_seen.is_empty(), "{says}: the app was not started");
        err
    };
    let mut token = s3.env();
    token.push(("AWS_SESSION_TOKEN".into(), "IQoJb3Jp\nZ2luX2Vj".into()));
    let err = refused(&cfg, token, 1, "AWS_SESSION_TOKEN holds a character an HTTP header cannot carry");
    assert!(!err.contains("IQoJb3Jp"), "the token is never shown: {err}");
    let mut key = s3.env();
    key[0].1 = format!("{}\u{7f}", key[0].1);
    refused(&cfg, key, 1, "AWS_ACCESS_KEY_ID holds a character");
    let no_region = s.config(&s3.config("app").replace("  region: us-east-1\n", ""));
    let mut region = s3.env();
    region.push(("AWS_REGION".into(), "us east 1".into()));
    refused(&no_region, region, 1, "the region must be letters, digits and dashes");
    let cfg_region = s.config(&s3.config("app").replace("us-east-1", "\"us-east-1\\n\""));
    refused(&cfg_region, s3.env(), 2, "storage.region must be letters, digits and dashes");
    let cfg_concurrency = s.config(&format!("{}  concurrency: 18446744073709551615\n", s3.config("app")));
    refused(&cfg_concurrency, s3.env(), 2, "storage.concurrency must be between 1 and 64");
}

/// With RUST_LOG=trace, the HTTP and TLS stacks would log every request's headers and STS's
/// answer: the storage credentials, in the container's log. They say no more than info.
#[test]
fn trace_logging_never_shows_the_storage_credentials() {
    let s = Scratch::new("s3-trace");
    let s3 = S3Server::start(&s.path("s3"));
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0cmFjZSJ9.c2ln";
    let token_file = s.path("token");
    std::fs::write(&token_file, token).unwrap();
    let sts = crate::common::s3::Sts::start(token);
    let mut spec = Spec::run(Some(&s.config(&s3.config("app"))), &COUNTER);
    spec.env.extend(sts.env(&token_file));
    spec.env.push(("RUST_LOG".into(), "trace".into()));
    let mut c = Container::start(spec);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    c.expect_event("checkpoint_uploaded", &[]);
    let err = c.stderr();
    assert!(err.contains("\"level\":\"debug\"") || err.contains(" DEBUG:"), "debug is on:\n{err}");
    for secret in [crate::common::s3::SECRET_KEY, "FwoGZXIvYXdzEXAMPLE", token, "Signature="] {
        assert!(!err.contains(secret), "{secret:?} is in crik's log");
    }
}

/// Storage that cannot be used as configured stops crik at start, in the server's words, and
/// the app is not started (#22, 3 and 6): an endpoint that answers 200 with a web page (before,
/// an empty bucket: a cold start, then "complete in storage only" for nothing stored), a bucket
/// that does not exist (before, "unreadable storage" and a cold start).
#[test]
fn storage_that_is_not_s3_or_has_no_bucket_stops_crik_at_start() {
    use crate::common::s3::{Answer, FakeHttp};
    let s = Scratch::new("s3-not-s3");
    let page = FakeHttp::start(|_, _| Answer {
        status: "200 OK",
        headers: vec![("content-type", "text/html".into())],
        body: "<html><body>Welcome to the proxy</body></html>".into(),
    });
    let cfg = s.config(&format!(
        "storage:\n  url: s3://crik-test/app\n  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n",
        page.port
    ));
    let (code, err) = refused_at_start(&cfg, &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("crik: cannot use storage s3://crik-test/app") && err.contains("not an S3 answer"), "{err}");

    let s3 = S3Server::start(&s.path("s3"));
    let cfg = s.config(&s3.config("app").replace("s3://crik-test/", "s3://no-such-bucket/"));
    let env: Vec<(String, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = refused_at_start(&cfg, &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot use storage s3://no-such-bucket/app") && err.contains("404 NoSuchBucket"), "{err}");
}

/// A PUT answered 200 but without an ETag stored nothing: the upload fails, and the checkpoint
/// stays complete in the image dir (never "complete in storage only").
#[test]
fn a_put_answered_without_an_etag_is_not_a_stored_checkpoint() {
    use crate::common::s3::{Answer, FakeHttp};
    let s = Scratch::new("s3-no-etag");
    // Lists like S3 (an empty bucket), has no object, takes every PUT with a bare 200, as a
    // careless proxy would.
    let sink = FakeHttp::start(|line, _| {
        if line.starts_with("GET") && line.contains("/lease.json") {
            Answer::no_such_key()
        } else if line.starts_with("GET") {
            Answer::empty_listing()
        } else {
            Answer { status: "200 OK", headers: vec![], body: String::new() }
        }
    });
    let storage = format!(
        "storage:\n  url: s3://crik-test/app\n  endpoint: http://127.0.0.1:{}\n  region: us-east-1\n  requestTimeout: 2\n",
        sink.port
    );
    // Taking the prefix's lease is the first PUT: refused at start.
    let (code, err) =
        refused_at_start(&s.config(&storage), &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot use storage") && err.contains("PUT answered without an ETag"), "{err}");
    // Without the lease, the first PUT is the checkpoint's.
    let cfg = s.config(&format!("{storage}  lease:\n    enabled: false\n"));
    let mut spec = Spec::run(Some(&cfg), &COUNTER);
    spec.env.extend([("AWS_ACCESS_KEY_ID".to_string(), "a".to_string()), ("AWS_SECRET_ACCESS_KEY".into(), "b".into())]);
    let mut c = Container::start(spec);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 1, "{}", c.stderr());
    let failed = c.expect_event("checkpoint_failed", &[("kind", "final"), ("uploaded", "false")]);
    let msg = failed["msg"].as_str().unwrap();
    assert!(msg.contains("without an ETag") && msg.contains("it is complete in the image dir"), "{msg}");
    assert_eq!(s.checkpoints().len(), 1, "kept where it can be restored from");
}

/// A manifest that declares more than a node could hold (a few bytes of chunk repeated: a file
/// of a terabyte) is refused before a byte is written and kept in storage for a node with room;
/// one whose chunks are larger than chunks ever are is damage, quarantined (#22, 4). Before, the
/// download wrote until the disk was full, at every start.
#[test]
fn a_size_bomb_is_refused_before_writing_and_a_lying_chunk_is_quarantined() {
    let s = Scratch::new("s3-bomb");
    let s3 = S3Server::start(&s.path("s3"));
    let mut c = Container::start(spec(&s.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    let name = s3.objects("app/checkpoints").pop().unwrap();
    let manifest_path = s3.object(&format!("app/checkpoints/{name}"));
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let forge = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut m = original.clone();
        edit(&mut m);
        std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    // A file with chunks: its first chunk, listed 150,000 times as 2 MiB (its real length is
    // only checked when it is read): the file declares 293 GiB, more than this disk holds.
    let with_chunks =
        original["files"].as_array().unwrap().iter().position(|f| !f["chunks"].as_array().unwrap().is_empty()).unwrap();
    forge(&|m| {
        let f = &mut m["files"][with_chunks];
        let mut chunk = f["chunks"][0].clone();
        chunk["n"] = (2u64 << 20).into();
        f["chunks"] = serde_json::Value::Array(vec![chunk; 150_000]);
        f["size"] = (150_000u64 * (2 << 20)).into();
    });
    let node2 = Scratch::new("s3-bomb-node2");
    let free = nix::sys::statvfs::statvfs(&node2.dir).map(|s| s.blocks_available() * s.fragment_size());
    assert!(free.unwrap() < 290 << 30, "the bomb must declare more than this disk has free");
    let cfg2 = node2.config(&s3.config("app"));
    let mut c = Container::start(spec(&cfg2, &s3, &COUNTER));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    let err = c.stderr();
    assert!(err.contains("and the image dir has") && err.contains("free: kept in storage"), "{err}");
    assert!(crate::common::dir_bytes(&node2.images()) < 64 << 20, "nothing large was written");
    assert_eq!(s3.objects("app/checkpoints"), std::slice::from_ref(&name), "kept, not quarantined");
    drop(c);

    // A chunk listed as larger than chunks ever are: damage, quarantined.
    forge(&|m| m["files"][with_chunks]["chunks"][0]["n"] = (64u64 << 20).into());
    let node3 = Scratch::new("s3-bomb-node3");
    let mut c = Container::start(spec(&node3.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    c.expect_event("restore_failed", &[]);
    assert!(c.stderr().contains("more than chunks ever are"), "{}", c.stderr());
    assert!(s3.objects("app/checkpoints").is_empty());
    assert_eq!(s3.objects("app/quarantine"), [name]);
}

/// Storage unreachable at start: the app starts fresh (storage.onUnreadable: coldStart), and once
/// storage is back, its uploads publish beside the checkpoint it never restored instead of
/// retiring it (#22, 2: before, the first periodic upload retired it and keepCheckpoints: 1
/// deleted it a cycle later).
#[test]
fn a_run_that_could_not_read_storage_never_retires_the_checkpoint_it_did_not_restore() {
    let s = Scratch::new("s3-unread");
    let mut s3 = S3Server::start(&s.path("s3"));
    let mut c = Container::start(spec(&s.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    let kept = s3.objects("app/checkpoints");
    assert_eq!(kept.len(), 1);
    // Another node starts while storage is down: it cannot read it, and starts fresh.
    s3.stop();
    let node2 = Scratch::new("s3-unread-node2");
    let storage = format!("{}  retryAtStart: 1\n  onUnreadable: coldStart\n", s3.config("app"));
    let mut c = Container::start(spec(&node2.config(&format!("checkpointInterval: 1\n{storage}")), &s3, &COUNTER));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    c.expect_event("store_unreadable", &[]);
    s3.resume();
    // Its periodic checkpoints go up beside the one it never restored.
    let mut uploads = 0;
    assert!(
        eventually(LONG, || {
            uploads = events(&c.stderr()).iter().filter(|e| e["event"] == "checkpoint_uploaded").count();
            uploads >= 2
        }),
        "{}",
        c.stderr()
    );
    let now = s3.objects("app/checkpoints");
    assert!(now.contains(&kept[0]), "the unrestored checkpoint stays published: {now:?}\n{}", c.stderr());
    assert!(s3.objects("app/retired").iter().all(|r| *r != kept[0]), "never retired");
    // Its own older checkpoints are superseded as usual: only its newest stands beside it.
    let last = last_count(&checkpoint(&mut c));
    assert_eq!(s3.objects("app/checkpoints").len(), 2, "{}", c.stderr());
    // A later run restores the newest (the fresh app's) and, through its manifest, knows the
    // unrestored one is spared: its uploads never retire it either (before, its first did).
    let node3 = Scratch::new("s3-unread-node3");
    let mut c =
        Container::start(spec(&node3.config(&format!("checkpointInterval: 1\n{}", s3.config("app"))), &s3, &[]));
    c.expect_count_after(last);
    assert!(
        eventually(LONG, || events(&c.stderr()).iter().filter(|e| e["event"] == "checkpoint_uploaded").count() >= 2)
    );
    assert!(c.stderr().contains("never restored"), "{}", c.stderr());
    let now = s3.objects("app/checkpoints");
    assert!(now.contains(&kept[0]), "still spared: {now:?}\n{}", c.stderr());
    assert!(s3.objects("app/retired").iter().all(|r| *r != kept[0]), "never retired");
}

/// TLS by default (#23, 7): plain http:// to anything but this host's loopback would carry the
/// app's memory and signed requests in the clear; refused at start unless allowed. Before, any
/// http:// endpoint was used as is.
#[test]
fn plain_http_to_another_host_is_refused_at_start_unless_allowed() {
    let s = Scratch::new("s3-plain-http");
    let storage =
        "storage:\n  url: s3://crik-test/app\n  endpoint: http://crik-storage.invalid:9000\n  retryAtStart: 0.1\n";
    let env = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")];
    let (code, err) = refused_at_start(&s.config(storage), &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in the clear") && err.contains("allowPlainHttp"), "{err}");
    // Allowed: crik goes on to use it (here, a host that does not exist: storage unreadable).
    let (code, err) = refused_at_start(&s.config(&format!("{storage}  allowPlainHttp: true\n")), &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read storage s3://crik-test/app"), "{err}");
    // The STS endpoint too: it answers with secret keys.
    let token = s.path("token");
    std::fs::write(&token, "t").unwrap();
    let local = "storage:\n  url: s3://crik-test/app\n  endpoint: http://127.0.0.1:9\n";
    let sts = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/r"),
        ("AWS_ENDPOINT_URL_STS", "http://sts.crik.invalid"),
    ];
    let (code, err) = refused_at_start(&s.config(local), &sts);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("AWS_ENDPOINT_URL_STS") && err.contains("in the clear"), "{err}");
}

/// Storage keys in the environment are inherited by the app, so every checkpoint of its memory
/// holds them (#23, 5). From `credentialsFile`, crik alone reads them: they are nowhere in the
/// checkpoint, and a restore on another node works the same. Keys in the environment are
/// warned about (and, as the control, found in the checkpoint).
#[test]
fn storage_keys_from_a_credentials_file_stay_out_of_the_checkpoint() {
    use crate::common::s3::{ACCESS_KEY, SECRET_KEY};
    let s = Scratch::new("s3-credentials-file");
    let s3 = S3Server::start(&s.path("s3"));
    let creds = s.path("aws-credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    // Pages written into the image dir (not streamed): what the checkpoint holds can be read.
    let storage = format!("{}  streamPages: false\n", s3.config("app"));
    let holds_secret = |dir: &std::path::Path| {
        files_under(dir).iter().any(|f| {
            let b = std::fs::read(f).unwrap_or_default();
            b.windows(SECRET_KEY.len()).any(|w| w == SECRET_KEY.as_bytes())
        })
    };
    // Control: keys in the environment are warned about, and land in the checkpoint.
    let mut c = Container::start(spec(&s.config(&storage), &s3, &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    c.expect_event("credentials_in_environment", &[]);
    checkpoint(&mut c);
    assert!(holds_secret(&s.images()), "the app's environment is in its checkpoint");
    drop(c);
    std::fs::remove_dir_all(s.images()).unwrap();

    // Another prefix: the control's checkpoint stays where it is.
    let storage = storage.replace("crik-test/app", "crik-test/app2");
    let cfg = s.config(&format!("{storage}  credentialsFile: {}\n", creds.display()));
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    assert!(c.event("credentials_in_environment", &[]).is_none(), "{}", c.stderr());
    let last = last_count(&checkpoint(&mut c));
    assert!(!holds_secret(&s.images()), "crik's keys are not in the checkpoint");
    let node2 = Scratch::new("s3-credentials-file-node2");
    let cfg2 = node2.config(&format!("{}  credentialsFile: {}\n", s3.config("app2"), creds.display()));
    let mut c = Container::start(Spec::run(Some(&cfg2), &[]));
    c.expect_count_after(last);
    drop(c);
    // A file without the keys: refused at start, its content never shown.
    std::fs::write(&creds, "[default]\naws_access_key_id = AKIDONLY\n").unwrap();
    let (code, err) = refused_at_start(&cfg2, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no aws_secret_access_key") && !err.contains("AKIDONLY"), "{err}");
}

/// A final dump that took CRIU's network lock leaves its table in the network namespace it ran
/// in; in one that outlives the container (`hostNetwork`, as these tests run), a checkpoint
/// restored on another node left it there for ever (#22, 9). Now the next start of the same app
/// in this namespace removes it, found through storage's manifests (the image dir of a new pod
/// is empty). "Restored on another node" is what that node's crik leaves in storage: the
/// manifest moved to retired/ (a restore here, in this namespace, would have CRIU remove the
/// table itself).
#[test]
fn the_network_lock_of_a_checkpoint_restored_on_another_node_is_removed_by_the_next_start_here() {
    let s = Scratch::new("s3-lock");
    let s3 = S3Server::start(&s.path("s3"));
    let before = criu_nft_tables();
    let mut c = Container::start(spec(&s.config(&s3.config("app")), &s3, &[PYTHON, "-c", CONNECTED]));
    c.expect_line(SHORT, "connected", |l| l == "connected");
    checkpoint(&mut c);
    let left: Vec<String> = criu_nft_tables().into_iter().filter(|t| !before.contains(t)).collect();
    assert_eq!(left.len(), 1, "the final dump's lock stays until a restore: {left:?}");
    assert!(s.checkpoints().is_empty(), "streamed: in storage only");
    let [manifest] = &s3.objects("app/checkpoints")[..] else { panic!("{:?}", s3.objects("app/checkpoints")) };
    std::fs::create_dir_all(s3.object("app/retired")).unwrap();
    std::fs::rename(s3.object(&format!("app/checkpoints/{manifest}")), s3.object(&format!("app/retired/{manifest}")))
        .unwrap();

    // A new pod of the app on this node: a fresh image dir, nothing to restore.
    let node2 = Scratch::new("s3-lock-node2");
    let mut c = Container::start(spec(&node2.config(&s3.config("app")), &s3, &COUNTER));
    c.expect_line(SHORT, "count 1", |l| l == "count 1");
    assert!(eventually(SHORT, || !criu_nft_tables().contains(&left[0])), "{}", c.stderr());
    c.expect_event("network_lock_released", &[("table", left[0].as_str())]);
    // Another app's table in this namespace is not crik's to remove.
    let _ = std::process::Command::new("nft").args(["add", "table", "inet", "CRIU-not-this-apps"]).status();
    drop(c);
    let node3 = Scratch::new("s3-lock-node3");
    let mut c = Container::start(spec(&node3.config(&s3.config("app")), &s3, &COUNTER));
    // (The killed crik's lease expires first.)
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    assert!(criu_nft_tables().contains(&"CRIU-not-this-apps".to_string()));
    let _ = std::process::Command::new("nft").args(["delete", "table", "inet", "CRIU-not-this-apps"]).status();
}

/// `isolatePids` through object storage: the reaper, the app's namespaces (its mounts recorded
/// as external) and its daemonized helper travel as streamed checkpoints to another node and on
/// to a third, the app's and the helper's counts carrying on exactly.
#[test]
fn an_isolated_app_streams_to_storage_and_comes_back_on_other_nodes() {
    let s = Scratch::new("s3-isolated");
    let s3 = S3Server::start(&s.path("s3"));
    let app = workload("daemonizing.sh");
    let cmd = ["sh", app.as_str()];
    let nodes: Vec<Scratch> = (0..3).map(|n| Scratch::new(&format!("s3-isolated-node{n}"))).collect();
    let extra = format!("isolatePids: true\n{}", s3.config("app"));
    let mut c = Container::start(spec(&nodes[0].config(&extra), &s3, &cmd));
    c.expect_line(LONG, "the daemon", |l| daemon_count(l) == Some(3));
    for node in &nodes[1..] {
        let seen = checkpoint(&mut c);
        c.expect_event("checkpoint_finished", &[("kind", "final"), ("staging", "storage (streamed)")]);
        let (last, last_daemon) = (last_count(&seen), last_daemon_count(&seen));
        c = Container::start(spec(&node.config(&extra), &s3, &cmd));
        c.expect_event_eventually("restore_finished");
        c.expect_line(LONG, "a daemon count", |l| daemon_count(l).is_some());
        c.expect_line(LONG, "a count", |l| count_of(l).is_some());
        assert_eq!(c.stdout_seen.iter().find_map(|l| count_of(l)), Some(last + 1), "{}", c.stderr());
        assert_eq!(c.stdout_seen.iter().find_map(|l| daemon_count(l)), Some(last_daemon + 1), "{}", c.stderr());
        assert!(c.event("download_finished", &[]).is_some(), "{}", c.stderr());
    }
    c.kill();
}
