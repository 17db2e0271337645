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
    std::fs::create_dir_all(s3.object("other/checkpoints")).unwrap();
    std::fs::copy(
        s3.object(&format!("app/checkpoints/{manifest}")),
        s3.object(&format!("other/checkpoints/{manifest}")),
    )
    .unwrap();
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
