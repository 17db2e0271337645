//! Crash safety: every way a checkpoint or a restore can go wrong, and in each case proof that
//! nothing that should survive was lost.

use crate::common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A published checkpoint of the counter, stopped at the returned count.
fn counter_checkpoint(s: &Scratch, cfg: &Path) -> u64 {
    let mut c = Container::start(Spec::run(Some(cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    assert_eq!(s.checkpoints().len(), 1);
    last
}

fn images_of(s: &Scratch, area: &str) -> PathBuf {
    let ids = s.area(area);
    assert_eq!(ids.len(), 1, "{area}: {ids:?}");
    s.images().join(area).join(&ids[0]).join("images")
}

fn largest_pages_image(images: &Path) -> PathBuf {
    std::fs::read_dir(images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("pages-"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("no pages image")
}

/// Fills the (small tmpfs) volume under `dir` with a file; returns its path.
fn fill_volume(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=1M", "count=64"])
        .stderr(std::process::Stdio::null())
        .status();
    filler
}

#[test]
fn full_disk_dump_fails_app_shuts_down_gracefully_previous_checkpoint_kept() {
    let s = Scratch::new("enospc");
    let _fs = Tmpfs::mount(s.images(), "8m");
    let cfg = s.config("");
    let last = counter_checkpoint(&s, &cfg);

    // Restore it for debugging (`crik restore` leaves it published), then fill the volume.
    let images = s.images();
    let (cfg_arg, images_arg) = (cfg.to_str().unwrap(), images.to_str().unwrap());
    let mut c = Container::start(Spec::args(&["restore", "--config", cfg_arg, "--image-dir", images_arg]));
    c.expect_line(LONG, "restored count", |l| count_of(l) == Some(last + 2));
    let filler = fill_volume(&images);
    c.signal(libc::SIGTERM);
    // The dump fails; the app keeps running until crik passes SIGTERM on (sh dies of it).
    let code = c.wait_code(LONG);
    let log = c.stderr();
    assert_eq!(code, 128 + libc::SIGTERM, "{log}");
    c.expect_event("checkpoint_failed", &[]);
    assert!(log.contains("No space left on device") || log.contains("CRIU's log says"), "must say why: {log}");
    assert!(log.contains("passing SIGTERM on"), "{log}");
    assert!(s.area("staging").is_empty(), "staging must be cleaned: {:?}", s.area("staging"));

    // The previous good checkpoint is intact and still restores.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(s.checkpoints().len(), 1);
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_count_after(last);
}

#[test]
fn failed_dump_with_app_exiting_zero_still_exits_non_zero() {
    let s = Scratch::new("dumpfail");
    let _fs = Tmpfs::mount(s.images(), "1m");
    let cfg = s.config("");
    let app = String::from(
        "import signal, sys, time\n\
         def bye(*_):\n    print('graceful shutdown', flush=True)\n    sys.exit(0)\n\
         signal.signal(signal.SIGTERM, bye)\n\
         data = bytearray(range(256)) * (16 * 4096)\n\
         print('ready', flush=True)\n\
         while True:\n    time.sleep(0.05)\n",
    );
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, "-c", &app]));
    c.expect_line(SHORT, "ready", |l| l == "ready");
    c.signal(libc::SIGTERM);
    c.expect_line(LONG, "graceful shutdown", |l| l == "graceful shutdown");
    assert_eq!(c.wait_code(LONG), 1, "state was not saved: crik must not exit 0\n{}", c.stderr());
    assert!(s.checkpoints().is_empty() && s.area("staging").is_empty());
}

#[test]
fn crik_killed_mid_dump_never_restores_the_partial_checkpoint() {
    let s = Scratch::new("midkill");
    let cfg = s.config("");
    let script = format!("{}/tests/workloads/memory.py", env!("CARGO_MANIFEST_DIR"));
    let mut spec = Spec::run(Some(&cfg), &[PYTHON, &script]);
    spec.env.push(("MIB".into(), "256".into()));
    spec.env.push(("STEPS".into(), "1000".into()));
    let mut c = Container::start(spec);
    c.expect_line(LONG, "step 2", |l| l.starts_with("step 2 "));
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 0, "{}", c.stderr());
    let good = s.checkpoints();

    // Restore the good one (left published by `crik restore`), then kill crik while it dumps.
    let images = s.images();
    let mut c = Container::start(Spec::args(&["restore", "--image-dir", images.to_str().unwrap()]));
    let first_after_good = c.expect_line(LONG, "a step", |l| l.starts_with("step "));
    c.expect_line(LONG, "two more steps", |l| l.starts_with("step 5 "));
    c.signal(libc::SIGTERM);
    let staging = images.join("staging");
    let caught = eventually(LONG, || {
        std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_dir(e.path().join("images")).map(|mut d| d.next().is_some()).unwrap_or(false))
    });
    c.kill();
    assert!(caught, "never saw the dump in progress\n{}", c.stderr());
    assert!(!s.area("staging").is_empty(), "the kill must leave a partial checkpoint behind");
    assert_eq!(s.checkpoints(), good, "a partial checkpoint must never be published");

    // Next start: the partial one is discarded, the previous good one restored.
    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    let first = c.expect_line(LONG, "a step", |l| l.starts_with("step "));
    assert_eq!(first, first_after_good, "must restore the previous good checkpoint\n{}", c.stderr());
    assert!(c.stderr().contains("discarding unfinished checkpoint"), "{}", c.stderr());
    assert!(s.area("staging").is_empty());
}

/// Damages the published checkpoint, then starts again: it must be quarantined (never
/// retried) and the app started fresh.
fn damaged_checkpoint_is_quarantined(name: &str, damage: impl FnOnce(&Path)) {
    let s = Scratch::new(name);
    let cfg = s.config("");
    counter_checkpoint(&s, &cfg);
    damage(&images_of(&s, "checkpoints"));

    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    let first = c.expect_line(LONG, "a count", |l| count_of(l).is_some());
    assert_eq!(first, "count 1", "must start fresh\n{}", c.stderr());
    let log = c.stderr();
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("is damaged"), "{failed}");
    assert!(log.contains("quarantine"), "{log}");
    assert_eq!(s.area("quarantine").len(), 1);
    assert!(s.checkpoints().is_empty());
    drop(c);

    // A restarting pod does not retry it.
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    assert_eq!(c.expect_line(LONG, "a count", |l| count_of(l).is_some()), "count 1");
    assert!(!c.stderr().contains("restoring"), "{}", c.stderr());
    assert!(c.event("restore_failed", &[]).is_none(), "{}", c.stderr());
    assert_eq!(s.area("quarantine").len(), 1, "the bad checkpoint is kept for inspection");
}

#[test]
fn truncated_pages_image_is_quarantined_and_app_starts_fresh() {
    damaged_checkpoint_is_quarantined("truncated", |images| {
        let p = largest_pages_image(images);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
    });
}

#[test]
fn deleted_image_file_is_quarantined_and_app_starts_fresh() {
    damaged_checkpoint_is_quarantined("deleted", |images| {
        std::fs::remove_file(images.join("pstree.img")).unwrap();
    });
}

#[test]
fn on_restore_failure_fail_exits_without_starting_the_app() {
    let s = Scratch::new("failmode");
    let cfg = s.config("onRestoreFailure: fail\n");
    counter_checkpoint(&s, &cfg);
    std::fs::remove_file(images_of(&s, "checkpoints").join("pstree.img")).unwrap();
    let marker = s.path("started");
    let app = format!("touch {}", marker.display());
    let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", &app]));
    assert_eq!(c.wait_code(LONG), 1);
    assert!(c.stderr().contains("crik: restore failed"), "{}", c.stderr());
    assert!(!marker.exists(), "the app must not start");
    assert_eq!(s.area("quarantine").len(), 1);
}

#[test]
fn criu_restore_that_hangs_is_killed_at_the_deadline() {
    let s = Scratch::new("hang");
    let cfg = s.config("restoreTimeout: 3\n");
    counter_checkpoint(&s, &cfg);
    // Damage the checksums cannot see (the manifest is rewritten to match): CRIU then meets a
    // truncated pages image, on which it spins for ever.
    let ckpt = images_of(&s, "checkpoints").parent().unwrap().to_path_buf();
    let pages = largest_pages_image(&ckpt.join("images"));
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(len / 2).unwrap();
    let manifest_path = ckpt.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let rel = format!("images/{}", pages.file_name().unwrap().to_string_lossy());
    let bytes = std::fs::read(&pages).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == rel.as_str() {
            f["size"] = (bytes.len() as u64).into();
            f["crc32"] = crc32(&bytes).into();
        }
    }
    std::fs::write(&manifest_path, serde_json::to_string(&m).unwrap()).unwrap();

    let t = Instant::now();
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    let first = c.expect_line(LONG, "a count", |l| count_of(l).is_some());
    assert_eq!(first, "count 1", "{}", c.stderr());
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    assert!(c.stderr().contains("did not finish within"), "{}", c.stderr());
    assert_eq!(s.area("quarantine").len(), 1);
    // Nothing of CRIU or the half-restored tree is left: crik's only child is the fresh app.
    let crik = c.crik_pid();
    assert!(eventually(SHORT, || children_of(crik).len() == 1), "{:?}", children_of(crik));
}

fn crc32(bytes: &[u8]) -> u32 {
    // Plain bitwise CRC-32 (IEEE), independent of crik's implementation.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn checkpoint_files_are_private() {
    let s = Scratch::new("modes");
    let cfg = s.config("");
    counter_checkpoint(&s, &cfg);
    assert_eq!(std::fs::metadata(s.images()).unwrap().permissions().mode() & 0o777, 0o700);
    let ckpt = s.images().join("checkpoints").join(&s.checkpoints()[0]);
    for e in walk(&ckpt) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        let mode = md.permissions().mode() & 0o777;
        if md.is_dir() {
            assert_eq!(mode, 0o700, "{}", e.display());
        } else {
            assert_eq!(mode, 0o600, "{}", e.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            v.extend(walk(&e.path()));
        } else {
            v.push(e.path());
        }
    }
    v
}

#[test]
fn unsafe_image_dir_is_refused_before_the_app_starts() {
    let s = Scratch::new("unsafe");
    let cfg = s.config("");
    let marker = s.path("started");
    let app = format!("touch {}", marker.display());
    std::fs::create_dir_all(s.images()).unwrap();
    for (why, prep) in [
        (
            "write",
            Box::new(|p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap())
                as Box<dyn Fn(&Path)>,
        ),
        (
            "owned by uid 1234",
            Box::new(|p: &Path| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
                std::os::unix::fs::chown(p, Some(1234), None).unwrap();
            }),
        ),
    ] {
        prep(&s.images());
        let mut c = Container::start(Spec::run(Some(&cfg), &["sh", "-c", &app]));
        assert_eq!(c.wait_code(SHORT), 1);
        let log = c.stderr();
        assert!(log.contains("crik: cannot use image dir") && log.contains("unsafe") && log.contains(why), "{log}");
        assert!(!marker.exists());
    }
    assert_eq!(std::fs::metadata(s.images()).unwrap().uid(), 1234, "crik must not touch a foreign dir");
}

#[test]
fn second_crik_on_the_same_image_dir_fails_clearly_and_harms_nothing() {
    let s = Scratch::new("lock");
    let cfg = s.config("");
    let mut first = Container::start(Spec::run(Some(&cfg), &COUNTER));
    first.expect_line(SHORT, "count 2", |l| l == "count 2");
    let mut second = Container::start(Spec::run(Some(&cfg), &["sh", "-c", "echo second-started"]));
    assert_eq!(second.wait_code(SHORT), 1);
    assert!(second.stderr().contains("in use by another crik"), "{}", second.stderr());
    assert!(second.stdout_seen.is_empty(), "the second app must not start");
    // The first one is unaffected: it still checkpoints and restores.
    let last = last_count(&checkpoint(&mut first));
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_count_after(last);
}

#[test]
fn failed_final_checkpoint_keeps_the_periodic_one() {
    let s = Scratch::new("periodic-enospc");
    let _fs = Tmpfs::mount(s.images(), "8m");
    let cfg = s.config("checkpointInterval: 0.5\n");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    assert!(eventually(SHORT, || s.checkpoints().len() == 1), "no periodic checkpoint\n{}", c.stderr());
    let filler = fill_volume(&s.images());
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 128 + libc::SIGTERM, "{}", c.stderr());
    c.expect_event("checkpoint_failed", &[]);
    // The periodic checkpoint is now the only saved state: it must survive.
    assert_eq!(s.checkpoints().len(), 1, "{}", c.stderr());
    let last = c.stdout_seen.iter().rev().find_map(|l| count_of(l)).unwrap();
    std::fs::remove_file(&filler).unwrap();
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    let first = count_of(&c.expect_line(LONG, "a count", |l| count_of(l).is_some())).unwrap();
    // The periodic checkpoint may be the state right after `last` was printed: then the
    // restored counter prints last + 1 first.
    assert!(first > 1 && first <= last + 1, "restored {first} (last seen {last})\n{}", c.stderr());
}

#[test]
fn unusable_image_dir_is_a_clear_error_before_the_app_starts() {
    let s = Scratch::new("unusable");
    let not_a_dir = s.path("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let cfg = s.path("c.yaml");
    std::fs::write(&cfg, format!("imageDir: {}\n", not_a_dir.display())).unwrap();
    let (code, log) = refused_at_start(&cfg, &[]);
    assert_eq!(code, 1);
    assert!(log.starts_with("crik: cannot open image dir:") && log.contains(&not_a_dir.display().to_string()), "{log}");
}

#[test]
fn missing_criu_is_a_clear_error_before_the_app_starts() {
    // Found at start, not when the node is going away and the app's state with it.
    let s = Scratch::new("nocriu");
    let cfg = s.config("");
    let (code, log) = refused_at_start(&cfg, &[("PATH", "/usr/bin:/bin")]); // CRIU lives in /usr/sbin
    assert_eq!(code, 1);
    assert!(
        log.contains("crik: checkpointing is on (imageDir) but CRIU cannot run: cannot start `criu swrk`"),
        "{log}"
    );
    // Where it looked: beside crik, the bundle's place, PATH.
    assert!(log.contains("nor in /opt/crik/bin (the bundle), nor on PATH"), "{log}");
}

#[test]
fn flipped_byte_in_pages_is_caught_before_the_app_resumes() {
    // Same size, other contents: only the checksum sees it. It is checked while CRIU restores,
    // and CRIU is held before resuming the app: the damaged app must never run.
    damaged_checkpoint_is_quarantined("flipped", |images| {
        use std::os::unix::fs::FileExt;
        let p = largest_pages_image(images);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 100).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 100).unwrap();
    });
}

/// crik as root but without the capabilities that let root read any directory, so that a
/// directory's mode 000 makes reading it fail, as a flaky network volume would.
fn without_dac_override(mut spec: Spec) -> Spec {
    let caps = "-dac_override,-dac_read_search";
    spec.wrap = ["setpriv", "--bounding-set", caps, "--inh-caps", caps].map(String::from).to_vec();
    spec
}

/// A published checkpoint, then its `checkpoints/` made unreadable (mode 000); returns that dir.
fn unreadable_store(s: &Scratch, cfg: &Path) -> PathBuf {
    counter_checkpoint(s, cfg);
    let published = s.images().join("checkpoints");
    std::fs::set_permissions(&published, std::fs::Permissions::from_mode(0o000)).unwrap();
    published
}

#[test]
fn an_unreadable_store_at_start_is_retried_then_fails_and_never_silently_starts_fresh() {
    let s = Scratch::new("unreadable-fail");
    let cfg = s.config("onRestoreFailure: fail\n");
    let published = unreadable_store(&s, &cfg);
    let mut c = Container::start(without_dac_override(Spec::run(Some(&cfg), &COUNTER)));
    let code = c.wait_code(LONG);
    let log = c.stderr();
    assert_eq!(code, 1, "{log}");
    assert!(c.stdout_seen.is_empty(), "the app must not start\n{log}");
    assert!(log.contains("attempt 3 of 4"), "retried within a bound: {log}");
    c.expect_event("store_unreadable", &[]);
    assert!(log.contains("crik: cannot read image dir: list") && log.contains("Permission denied"), "{log}");

    // Readable again (the volume is back): the checkpoint was left alone and restores.
    std::fs::set_permissions(&published, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(s.checkpoints().len(), 1);
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_event_eventually("restore_finished");
}

#[test]
fn an_unreadable_store_with_cold_start_starts_fresh_and_says_so() {
    let s = Scratch::new("unreadable-cold");
    let cfg = s.config("");
    let published = unreadable_store(&s, &cfg);
    let mut c = Container::start(without_dac_override(Spec::run(Some(&cfg), &COUNTER)));
    assert_eq!(c.expect_line(LONG, "a count", |l| count_of(l).is_some()), "count 1", "{}", c.stderr());
    c.expect_event("store_unreadable", &[]);
    assert!(c.stderr().contains("starting the command fresh (onRestoreFailure: coldStart)"), "{}", c.stderr());
    c.kill();
    std::fs::set_permissions(&published, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(s.checkpoints().len(), 1, "the checkpoint that could not be read is still there");
}

/// CRIU's network lock loads the network namespace's whole nftables ruleset (libnftables), and
/// CRIU's memory, charged to the container, grows with it. An app without a TCP connection is
/// dumped without the lock: the dump fits a tight memory limit whatever the node's ruleset,
/// and leaves no lock table behind. (Before: CRIU was OOM-killed here, "exited without answering".)
#[test]
fn an_app_without_connections_is_dumped_without_the_network_lock_within_a_tight_memory_limit() {
    let s = Scratch::new("no-lock");
    let _rules = NftTables::add(200);
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let tables = criu_nft_tables();
    let Some(cg) = MemoryCgroup::limited(64 << 20) else {
        eprintln!("memory is not a cgroup v1 controller here: the memory limit is not exercised");
        return;
    };
    cg.enter(c.crik_pid());
    let last = last_count(&checkpoint(&mut c));
    assert!(c.event("memory_tight", &[]).is_none(), "without the lock it fits\n{}", c.stderr());
    drop(c);
    drop(cg);
    assert_eq!(criu_nft_tables(), tables, "no network lock taken, none left behind");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_count_after(last);
}

/// An app with a TCP connection is dumped with the lock. Where CRIU's memory for it does not fit
/// the limit, the OOM killer ends CRIU: crik says so (not "exited without answering"), keeps
/// no half checkpoint, and the app, still running, gets SIGTERM and shuts down cleanly.
#[test]
fn criu_killed_by_the_oom_killer_is_named_and_the_app_shuts_down_cleanly() {
    let s = Scratch::new("oom");
    let _rules = NftTables::add(200);
    let cfg = s.config("");
    let app = "import signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print('shutting down', flush=True), sys.exit(0)))
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
print('connected', flush=True)
while True: time.sleep(0.1)
";
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, "-c", app]));
    c.expect_line(SHORT, "connected", |l| l == "connected");
    let Some(cg) = MemoryCgroup::limited(64 << 20) else {
        eprintln!("memory is not a cgroup v1 controller here: the OOM kill is not exercised");
        return;
    };
    cg.enter(c.crik_pid());
    c.signal(libc::SIGTERM);
    c.expect_line(LONG, "shutting down", |l| l == "shutting down");
    assert_eq!(c.wait_code(LONG), 1, "state was not saved: crik must not exit 0\n{}", c.stderr());
    let failed = c.expect_event("checkpoint_failed", &[]);
    let msg = failed["msg"].as_str().unwrap();
    assert!(
        msg.contains("CRIU was killed by the OOM killer: its memory counts against the container's limit of 64.0 MiB"),
        "{msg}"
    );
    // Said before the dump too, with the cause: the ruleset the lock loads (#22, 8).
    let tight = c.expect_event("memory_tight", &[]);
    assert!(tight["msg"].as_str().unwrap().contains("nftables ruleset"), "{tight}");
    assert!(s.checkpoints().is_empty(), "{:?}", s.checkpoints());
}

/// Settings that would make every checkpoint fail, or delete crik's own state, are refused at
/// start (#22): a timeout no dump can meet, inotifyIncompatiblePaths above the image dir (it is
/// deleted before every final checkpoint), a stagingDir that others can write (it holds dumps of
/// the app's memory, like the image dir). The image dir's checkpoint is left as it was.
#[test]
fn settings_that_would_lose_every_checkpoint_are_refused_at_start() {
    let s = Scratch::new("refused-settings");
    let last = counter_checkpoint(&s, &s.config(""));
    let parent = s.images().parent().unwrap().display().to_string();
    for (extra, says) in [
        ("checkpointTimeout: 1e-12\n".to_string(), "checkpointTimeout must be at least 1 s".to_string()),
        ("restoreTimeout: 0.01\n".to_string(), "restoreTimeout must be at least 1 s".to_string()),
        (
            format!("inotifyIncompatiblePaths: [{parent}]\n"),
            format!("inotifyIncompatiblePaths: {parent} would delete imageDir"),
        ),
    ] {
        let (code, err) = refused_at_start(&s.config(&extra), &[]);
        assert_eq!(code, 2, "{extra}{err}");
        assert!(err.contains(&says), "{extra}{err}");
    }
    // A stagingDir others can write, owned by another user: refused like such an image dir.
    let staging = s.path("shared-staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&staging, Some(65534), Some(65534)).unwrap();
    let cfg = s.config(&format!(
        "storage:\n  url: s3://crik-test/app\n  endpoint: http://127.0.0.1:9\n  streamPages: false\n  stagingDir: {}\n",
        staging.display()
    ));
    let (code, err) = refused_at_start(&cfg, &[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot use storage.stagingDir") && err.contains("owned by uid 65534"), "{err}");
    // Nothing was deleted: the checkpoint restores.
    let mut c = Container::start(Spec::run(Some(&s.config("")), &[]));
    c.expect_count_after(last);
}

/// CRIU's network lock outlives a final dump (it keeps the saved connections' peers from seeing
/// a reset until a restore here). Once a start decides that checkpoint will not be restored in
/// this network namespace (here: it is damaged, and quarantined), crik removes the table (#22,
/// 9). Before, it stayed for ever, dropping new connections that reused a saved 4-tuple.
#[test]
fn the_network_lock_of_a_checkpoint_never_restored_here_is_removed_at_the_next_start() {
    let s = Scratch::new("lock-released");
    let cfg = s.config("");
    let before = criu_nft_tables();
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, "-c", CONNECTED]));
    c.expect_line(SHORT, "connected", |l| l == "connected");
    checkpoint(&mut c);
    let left: Vec<String> = criu_nft_tables().into_iter().filter(|t| !before.contains(t)).collect();
    assert_eq!(left.len(), 1, "the final dump's lock stays until a restore: {left:?}");
    // Damaged: the next start quarantines it and starts fresh; the lock goes with it.
    let pages = largest_pages_image(&images_of(&s, "checkpoints"));
    let mut bytes = std::fs::read(&pages).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&pages, bytes).unwrap();
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    assert_eq!(s.area("quarantine").len(), 1);
    assert!(!criu_nft_tables().contains(&left[0]), "{}", c.stderr());
    c.expect_event("network_lock_released", &[("table", left[0].as_str())]);
}

/// A dump into the image dir writes as much page cache as the app has memory, charged to the
/// container's memory cgroup (#22, 8): crik drops it once the checkpoint is sealed. Before, a
/// 64 MiB app's checkpoint left about 64 MiB of cache charged to the container after every
/// periodic checkpoint, pressing the app toward its limit.
#[test]
fn a_checkpoint_leaves_no_page_cache_charged_to_the_container() {
    let s = Scratch::new("page-cache");
    // Far enough apart that the next one has not begun when the cache is read.
    let cfg = s.config("checkpointInterval: 3\n");
    let app = "import os, time
data = os.urandom(64 << 20)
print('ready', flush=True)
while True: time.sleep(0.1)
";
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, "-c", app]));
    c.expect_line(LONG, "ready", |l| l == "ready");
    let Some(cg) = MemoryCgroup::limited(4 << 30) else {
        eprintln!("memory is not a cgroup v1 controller here: not exercised");
        return;
    };
    // From now on, what crik and CRIU write is charged to this cgroup.
    cg.enter(c.crik_pid());
    let finished = |c: &Container| events(&c.stderr()).iter().filter(|e| e["event"] == "checkpoint_finished").count();
    let seen = finished(&c);
    assert!(eventually(LONG, || finished(&c) > seen), "{}", c.stderr());
    let cache = cg.stat("cache");
    assert!(cache < 16 << 20, "{} MiB of page cache left charged", cache >> 20);
    c.kill();
}
