//! Sealed checkpoints (#23, 1-4, in object storage): with `encryption.keyFiles`, nothing of the
//! app's memory is readable in the bucket, an altered chunk or a manifest moved to another
//! prefix is refused, a checkpoint sealed with a key crik was not given stops it at start
//! (kept), and keys rotate. Real CRIU, a real S3 server (s3s-fs).

use std::path::Path;

use crate::common::s3::S3Server;
use crate::common::*;

fn keygen(path: &Path) {
    let out = std::process::Command::new(CRIK).arg("keygen").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(path, &out.stdout).unwrap();
}

fn spec(cfg: &Path, s3: &S3Server, cmd: &[&str], marker: &str) -> Spec {
    let mut spec = Spec::run(Some(cfg), cmd);
    spec.env.extend(s3.env());
    // In the app's environment, hence in its memory, hence in every checkpoint of it.
    spec.env.push(("CRIK_TEST_MARKER".into(), marker.into()));
    spec
}

fn storage(s3: &S3Server, prefix: &str, keys: &[&Path]) -> String {
    let list: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    let enc = if keys.is_empty() { String::new() } else { format!("encryption:\n  keyFiles: [{}]\n", list.join(", ")) };
    format!("{}{enc}", s3.config(prefix))
}

/// Whether any object under `dir` holds `marker`, as stored or once decompressed (chunks are
/// zstd, whose entropy coding hides a string that is there in the clear).
fn holds(dir: &Path, marker: &str) -> bool {
    let has = |b: &[u8]| b.windows(marker.len()).any(|w| w == marker.as_bytes());
    files_under(dir).iter().any(|f| {
        let raw = std::fs::read(f).unwrap_or_default();
        has(&raw) || zstd::bulk::decompress(&raw, 4 << 20).is_ok_and(|d| has(&d))
    })
}

#[test]
fn sealed_checkpoints_hide_the_apps_memory_restore_with_the_key_and_rotate() {
    let s = Scratch::new("sealed");
    let s3 = S3Server::start(&s.path("s3"));
    let (key, other) = (s.path("crik.key"), s.path("other.key"));
    keygen(&key);
    keygen(&other);
    let marker = format!("crik-marker-{:032x}", std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15);

    // Control, without a key: the app's memory is readable in the bucket.
    let mut c = Container::start(spec(&s.config(&storage(&s3, "plain", &[])), &s3, &COUNTER, &marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    assert!(c.stderr().contains("neither encrypted nor authenticated"), "{}", c.stderr());
    checkpoint(&mut c);
    assert!(holds(&s3.object("plain"), &marker), "the control must see the marker");

    // Sealed: nowhere in the bucket; another node with the key carries on.
    let mut c = Container::start(spec(&s.config(&storage(&s3, "app", &[&key])), &s3, &COUNTER, &marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    assert!(!holds(&s3.object("app"), &marker), "the bucket holds the app's memory in the clear");
    let node2 = Scratch::new("sealed-node2");
    let mut c = Container::start(spec(&node2.config(&storage(&s3, "app", &[&key])), &s3, &[], &marker));
    let last = {
        c.expect_count_after(last);
        last_count(&checkpoint(&mut c))
    };

    // inspect without the key says what it cannot open; with it, what the checkpoint holds.
    let inspect = |cfg: &Path| s3.inspect_json(cfg)["storage"]["checkpoints"][0].clone();
    let without = inspect(&s.config(&storage(&s3, "app", &[])));
    assert!(without["error"].as_str().unwrap().contains("is sealed with key"), "{without}");
    let with = inspect(&s.config(&storage(&s3, "app", &[&key])));
    assert!(with["error"].is_null() && with["chunks"].as_u64().unwrap() > 0, "{with}");

    // Without the key, or with another one: crik stops at start naming the key; the
    // checkpoint stays in storage.
    let published = s3.objects("app/checkpoints");
    assert_eq!(published.len(), 1);
    let node3 = Scratch::new("sealed-node3");
    for keys in [vec![], vec![other.as_path()]] {
        let env = s3.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.push(("CRIK_TEST_MARKER", &marker));
        let (code, err) = refused_at_start(&node3.config(&storage(&s3, "app", &keys)), &env);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("is sealed with key") && err.contains("not among encryption.keyFiles"), "{err}");
        assert_eq!(s3.objects("app/checkpoints"), published, "kept");
    }

    // Rotation: the new key first seals, the old one still opens.
    let node4 = Scratch::new("sealed-node4");
    let mut c = Container::start(spec(&node4.config(&storage(&s3, "app", &[&other, &key])), &s3, &[], &marker));
    c.expect_count_after(last);
    let last = last_count(&checkpoint(&mut c));
    let node5 = Scratch::new("sealed-node5");
    let mut c = Container::start(spec(&node5.config(&storage(&s3, "app", &[&other])), &s3, &[], &marker));
    c.expect_count_after(last);
}

#[test]
fn an_altered_sealed_chunk_or_a_manifest_moved_to_another_prefix_is_refused() {
    let s = Scratch::new("sealed-altered");
    let s3 = S3Server::start(&s.path("s3"));
    let key = s.path("crik.key");
    keygen(&key);
    let marker = "unused";
    let cfg = s.config(&storage(&s3, "app", &[&key]));
    let mut c = Container::start(spec(&cfg, &s3, &COUNTER, marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    let manifest = s3.objects("app/checkpoints").pop().unwrap();

    // The manifest and its chunks copied under another app's prefix: bound to its place.
    copy_object(&s3, &format!("app/checkpoints/{manifest}"), &format!("other/checkpoints/{manifest}"));
    let node2 = Scratch::new("sealed-altered-node2");
    let mut c = Container::start(spec(&node2.config(&storage(&s3, "other", &[&key])), &s3, &COUNTER, marker));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("sealed with another key or for another place"), "{failed}");
    assert_eq!(s3.objects("other/quarantine"), std::slice::from_ref(&manifest));
    drop(c);

    // A manifest written without the key (a forger has none) where a key is configured:
    // refused as unsealed, quarantined.
    let plain = s.config(&storage(&s3, "forged", &[]));
    let mut c = Container::start(spec(&plain, &s3, &COUNTER, marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    let forged = s3.objects("forged/checkpoints");
    let node4 = Scratch::new("sealed-altered-node4");
    let mut c = Container::start(spec(&node4.config(&storage(&s3, "forged", &[&key])), &s3, &COUNTER, marker));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("not sealed"), "{failed}");
    assert_eq!(s3.objects("forged/quarantine"), forged);
    drop(c);
    // A key file that is not one: refused at start, its content never shown.
    let bad = s.path("bad.key");
    std::fs::write(&bad, "crik-key-v1:s3cr3t-not-hex\n").unwrap();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = refused_at_start(&node4.config(&storage(&s3, "forged", &[&bad])), &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a crik key") && !err.contains("s3cr3t"), "{err}");
    // A key file that is missing (a Secret not mounted): refused at start too.
    let (code, err) = refused_at_start(&node4.config(&storage(&s3, "forged", &[&s.path("missing.key")])), &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot read encryption key") && err.contains("missing.key"), "{err}");

    // One byte of one chunk altered: refused before a byte is written, quarantined.
    let chunk = s3
        .objects("app/chunks")
        .into_iter()
        .max_by_key(|c| std::fs::metadata(s3.object(&format!("app/chunks/{c}"))).unwrap().len())
        .unwrap();
    let path = s3.object(&format!("app/chunks/{chunk}"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let node3 = Scratch::new("sealed-altered-node3");
    let mut c = Container::start(spec(&node3.config(&storage(&s3, "app", &[&key])), &s3, &COUNTER, marker));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains(&format!("chunk {chunk}: altered")), "{failed}");
    assert_eq!(s3.objects("app/quarantine"), [manifest]);
}

/// Copies the object `from` to `to` in the bucket (as an attacker with write access would).
fn copy_object(s3: &S3Server, from: &str, to: &str) {
    let to = s3.object(to);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(s3.object(from), to).unwrap();
}

#[test]
fn a_forged_newest_checkpoint_is_skipped_for_the_genuine_one_and_a_rollback_is_refused() {
    let s = Scratch::new("sealed-rollback");
    let s3 = S3Server::start(&s.path("s3"));
    let key = s.path("crik.key");
    keygen(&key);
    let marker = "unused";
    let node = |n: &str| Scratch::new(&format!("sealed-rollback-{n}"));
    let cfg = |node: &Scratch| node.config(&storage(&s3, "app", &[&key]));

    // Generation 1, restored elsewhere, then generation 2: storage holds 2, retired/ holds 1.
    let node1 = node("1");
    let mut c = Container::start(spec(&cfg(&node1), &s3, &COUNTER, marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let first = s3.objects("app/checkpoints").pop().unwrap();
    let node2 = node("2");
    let mut c = Container::start(spec(&cfg(&node2), &s3, &[], marker));
    c.expect_count_after(last);
    let last = last_count(&checkpoint(&mut c));
    let second = s3.objects("app/checkpoints").pop().unwrap();
    assert_eq!(s3.objects("app/retired"), std::slice::from_ref(&first));

    // A bucket writer puts the older manifest back under a newer id: it does not open (its id
    // is sealed in), it is quarantined, and the genuine newest is restored at the same start
    // (before, the start quarantined it and began the app afresh).
    let forged = "99991231T235959.999Z.json";
    copy_object(&s3, &format!("app/retired/{first}"), &format!("app/checkpoints/{forged}"));
    let node3 = node("3");
    let mut c = Container::start(spec(&cfg(&node3), &s3, &COUNTER, marker));
    c.expect_count_after(last);
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("sealed with another key or for another place"), "{failed}");
    assert_eq!(s3.objects("app/quarantine"), [forged]);
    let last = last_count(&checkpoint(&mut c));
    let third = s3.objects("app/checkpoints").pop().unwrap();
    assert_eq!(s3.objects("app/retired"), std::slice::from_ref(&second));

    // Rollback: the newest withheld, an older genuine one put back under its own id. The lease
    // vouches for generation 3: generation 2 is refused, quarantined, and the app starts fresh
    // rather than run an old state (before, it was restored).
    std::fs::remove_file(s3.object(&format!("app/checkpoints/{third}"))).unwrap();
    copy_object(&s3, &format!("app/retired/{second}"), &format!("app/checkpoints/{second}"));
    let node4 = node("4");
    let mut c = Container::start(spec(&cfg(&node4), &s3, &COUNTER, marker));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    let msg = failed["msg"].as_str().unwrap();
    assert!(msg.contains("is older than the newest this app has written") && msg.contains("rollback"), "{failed}");
    assert!(s3.objects("app/quarantine").contains(&second), "{:?}", s3.objects("app/quarantine"));
    assert!(last > 3, "{last}");
}

/// The marker in a checkpoint's page images replaced by `to` (same length), and the manifest's
/// CRC-32 of that file recomputed: what an attacker with write access to the volume does.
fn alter_pages(ckpt: &Path, marker: &str, to: &str) -> bool {
    let manifest = ckpt.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mut altered = false;
    for f in m["files"].as_array_mut().unwrap() {
        let path = ckpt.join(f["path"].as_str().unwrap());
        if !path.file_name().unwrap().to_string_lossy().starts_with("pages-") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let mut hit = false;
        for i in 0..bytes.len().saturating_sub(marker.len()) {
            if &bytes[i..i + marker.len()] == marker.as_bytes() {
                bytes[i..i + marker.len()].copy_from_slice(to.as_bytes());
                hit = true;
            }
        }
        if hit {
            std::fs::write(&path, &bytes).unwrap();
            f["crc32"] = crc32fast::hash(&bytes).into();
            altered = true;
        }
    }
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    altered
}

/// The app's environment as the kernel shows it (read from its memory).
fn environ_of(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()).into_owned()
}

#[test]
fn the_image_dirs_checkpoints_are_authenticated_and_a_rollback_there_is_refused() {
    let s = Scratch::new("sealed-local");
    let (key, other) = (s.path("crik.key"), s.path("other.key"));
    keygen(&key);
    keygen(&other);
    let marker = "crik-marker-genuine-0123456789";
    let forged = "crik-marker-FORGED!-0123456789";
    let with = |keys: &[&Path]| {
        let list: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
        let enc =
            if keys.is_empty() { String::new() } else { format!("encryption:\n  keyFiles: [{}]\n", list.join(", ")) };
        s.config(&enc)
    };
    let start = |cfg: &Path, cmd: &[&str]| {
        let mut spec = Spec::run(Some(cfg), cmd);
        spec.env.push(("CRIK_TEST_MARKER".into(), marker.into()));
        Container::start(spec)
    };
    let app_pid = |c: &mut Container| {
        let crik = c.crik_pid();
        children_of(crik).into_iter().find(|(_, _, comm)| comm == "sh").map(|(p, _, _)| p).unwrap()
    };

    // Control, without a key: the altered pages (CRC-32 recomputed) are restored, and the app
    // runs on the attacker's memory.
    let mut c = start(&with(&[]), &COUNTER);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    assert!(c.stderr().contains("neither encrypted nor authenticated"), "{}", c.stderr());
    let last = last_count(&checkpoint(&mut c));
    let ckpt = s.images().join("checkpoints").join(s.checkpoints().pop().unwrap());
    assert!(alter_pages(&ckpt, marker, forged), "the marker must be in the pages");
    let mut c = start(&with(&[]), &[]);
    c.expect_count_after(last);
    let pid = app_pid(&mut c);
    assert!(environ_of(pid).contains(forged), "the control must run on the altered memory");
    c.kill();
    drop(c);
    for area in ["checkpoints", "retired", "quarantine"] {
        let _ = std::fs::remove_dir_all(s.images().join(area));
    }

    // With a key: refused as altered, quarantined, the app starts fresh.
    let mut c = start(&with(&[&key]), &COUNTER);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let id = s.checkpoints().pop().unwrap();
    let ckpt = s.images().join("checkpoints").join(&id);
    assert!(ckpt.join("manifest.mac").is_file());
    // Another key only: a configuration matter, said at start; the checkpoint is kept.
    let (code, err) = refused_at_start(&with(&[&other]), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not among encryption.keyFiles"), "{err}");
    assert_eq!(s.checkpoints(), std::slice::from_ref(&id));
    // Untouched, it restores; then generation 2 is taken.
    let mut c = start(&with(&[&key]), &[]);
    c.expect_count_after(last);
    assert!(environ_of(app_pid(&mut c)).contains(marker));
    let last = last_count(&checkpoint(&mut c));
    let second = s.checkpoints().pop().unwrap();
    assert_eq!(s.area("retired"), std::slice::from_ref(&id));

    // Altered like the control: refused before CRIU reads a byte.
    let ckpt = s.images().join("checkpoints").join(&second);
    let pristine = std::fs::read(ckpt.join("manifest.json")).unwrap();
    assert!(alter_pages(&ckpt, marker, forged));
    let mut c = start(&with(&[&key]), &COUNTER);
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("altered"), "{failed}");
    assert_eq!(s.area("quarantine"), std::slice::from_ref(&second));
    c.kill();
    drop(c);

    // The pages alone altered (the manifest as it was): their digests refuse them, and CRIU,
    // held before the app resumes, never lets it run.
    std::fs::rename(s.images().join("quarantine").join(&second), &ckpt).unwrap();
    std::fs::write(ckpt.join("manifest.json"), &pristine).unwrap();
    let mut c = start(&with(&[&key]), &COUNTER);
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("digest"), "{failed}");
    assert_eq!(s.area("quarantine"), std::slice::from_ref(&second));
    c.kill();
    drop(c);

    // Rollback: generation 2 withheld, generation 1 put back from retired/. The image dir's
    // record vouches for 2: refused, quarantined, the app starts fresh.
    assert_eq!(s.checkpoints(), Vec::<String>::new());
    std::fs::rename(s.images().join("retired").join(&id), s.images().join("checkpoints").join(&id)).unwrap();
    let mut c = start(&with(&[&key]), &COUNTER);
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    let failed = c.expect_event("restore_failed", &[]);
    let msg = failed["msg"].as_str().unwrap();
    assert!(msg.contains("is older than the newest this app has written") && msg.contains("rollback"), "{failed}");
    assert!(s.area("quarantine").contains(&id));
    assert!(last > 3);
}

#[test]
fn with_no_plaintext_on_disk_neither_the_bucket_nor_the_image_dir_holds_the_apps_secrets() {
    let s = Scratch::new("sealed-offdisk");
    let s3 = S3Server::start(&s.path("s3"));
    let key = s.path("crik.key");
    keygen(&key);
    let marker = format!("crik-marker-offdisk-{:016x}", std::process::id() as u64 * 0x9e37_79b9);
    let config = |node: &Scratch, staging: &Path, stream: bool| {
        node.config(&format!(
            "{}  stagingDir: {}\n  streamPages: {stream}\nencryption:\n  keyFiles: [{}]\n  noPlaintextOnDisk: true\n",
            s3.config(if stream { "streamed" } else { "staged" }),
            staging.display(),
            key.display()
        ))
    };
    // What must be found nowhere on a disk: the app's secret, and crik's storage key (in the
    // app's environment here, hence in its memory).
    let secrets = [marker.as_str(), crate::common::s3::SECRET_KEY];
    let clean = |dir: &Path| secrets.iter().all(|m| !holds(dir, m));
    let empty = |d: &Path| std::fs::read_dir(d).unwrap().next().is_none();

    // Control: with a key alone, the image dir holds the app's memory in the clear.
    let node = Scratch::new("sealed-offdisk-0");
    let plain = node.config(&format!(
        "{}  streamPages: false\nencryption:\n  keyFiles: [{}]\n",
        s3.config("control"),
        key.display()
    ));
    let mut c = Container::start(spec(&plain, &s3, &COUNTER, &marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    checkpoint(&mut c);
    assert!(secrets.iter().all(|m| holds(&node.images(), m)), "the control must find both in the image dir");
    assert!(clean(&s3.object("control")));

    for (n, stream) in [(1, false), (2, true)] {
        let node = Scratch::new(&format!("sealed-offdisk-{n}"));
        let staging = Tmpfs::mount(node.path("shm"), "256m");
        let mut c = Container::start(spec(&config(&node, &staging.0, stream), &s3, &COUNTER, &marker));
        c.expect_line(SHORT, "count 3", |l| l == "count 3");
        let last = last_count(&checkpoint(&mut c));
        assert!(node.checkpoints().is_empty(), "nothing in the image dir: {:?}", node.checkpoints());
        assert!(empty(&staging.0), "memory freed");
        let prefix = s3.object(if stream { "streamed" } else { "staged" });
        assert!(clean(&node.images()) && clean(&prefix), "a secret in the clear on a disk");

        // Another node restores it through memory: nothing lands in its image dir either.
        let node2 = Scratch::new(&format!("sealed-offdisk-{n}b"));
        let staging2 = Tmpfs::mount(node2.path("shm"), "256m");
        let mut c = Container::start(spec(&config(&node2, &staging2.0, stream), &s3, &[], &marker));
        c.expect_count_after(last);
        assert!(c.stderr().contains(&format!("into {}", staging2.0.display())), "{}", c.stderr());
        assert!(empty(&staging2.0), "memory freed after the restore");
        assert!(clean(&node2.images()), "the restore wrote a secret to the image dir");
        checkpoint(&mut c);
        assert!(clean(&node2.images()) && clean(&prefix));
    }

    // A dump that does not fit memory staging fails rather than land in the image dir.
    let node = Scratch::new("sealed-offdisk-small");
    let small = Tmpfs::mount(node.path("shm"), "32m");
    let mut c = Container::start(spec(&config(&node, &small.0, false), &s3, &COUNTER, &marker));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    c.signal(libc::SIGTERM);
    c.wait(LONG);
    let failed = c.expect_event("checkpoint_failed", &[]);
    assert!(failed["msg"].as_str().unwrap().contains("noPlaintextOnDisk keeps it off the image dir"), "{failed}");
    assert!(node.checkpoints().is_empty() && clean(&node.images()));
    drop(small);

    // Without a memory-backed stagingDir the setting is refused at start.
    let node = Scratch::new("sealed-offdisk-3");
    std::fs::create_dir_all(node.path("disk")).unwrap();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, err) = refused_at_start(&config(&node, &node.path("disk"), false), &env);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not tmpfs or ramfs"), "{err}");
}

/// A run that could not read storage at start (so did not know the newest generation) and
/// cold-started: its newer checkpoint must not be taken for a rollback by the next start, with
/// a key. Its generations are no less than the time, and its uploads are numbered above the
/// lease's newest. (With generations counted from what each run knew, the first run's several
/// checkpoints outnumbered this run's one: refused, the older state restored instead.)
#[test]
fn a_run_that_could_not_read_storage_is_not_taken_for_a_rollback() {
    let s = Scratch::new("sealed-unread");
    let mut s3 = S3Server::start(&s.path("s3"));
    let key = s.path("crik.key");
    keygen(&key);
    let enc = format!("encryption:\n  keyFiles: [{}]\n", key.display());
    let mut c = Container::start(spec(
        &s.config(&format!("checkpointInterval: 0.3\n{}{enc}", s3.config("app"))),
        &s3,
        &COUNTER,
        "-",
    ));
    let uploads = |c: &Container| events(&c.stderr()).iter().filter(|e| e["event"] == "checkpoint_uploaded").count();
    assert!(eventually(LONG, || uploads(&c) >= 4), "{}", c.stderr());
    checkpoint(&mut c);
    // Another node starts while storage is down, and starts fresh (as asked).
    s3.stop();
    let node2 = Scratch::new("sealed-unread-node2");
    let storage = format!("{}  retryAtStart: 1\n  onUnreadable: coldStart\n{enc}", s3.config("app"));
    let mut c = Container::start(spec(&node2.config(&storage), &s3, &COUNTER, "-"));
    c.expect_line(LONG, "count 1", |l| l == "count 1");
    s3.resume();
    c.expect_line(SHORT, "count 5", |l| l == "count 5");
    let last = last_count(&checkpoint(&mut c));
    // The next start restores that newer state.
    let node3 = Scratch::new("sealed-unread-node3");
    let mut c = Container::start(spec(&node3.config(&format!("{}{enc}", s3.config("app"))), &s3, &[], "-"));
    c.expect_count_after(last);
}
