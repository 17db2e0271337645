//! A checkpoint's archives as an attacker with write access to the image dir (or the bucket)
//! would forge them (#23, 6): a manifest that names archives and deletions the configuration
//! never asked for, entries outside the configured paths, through symlinks, over hardlinks,
//! setuid files. Before, all of it was put back over `/` as root before the restore.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;

/// A tar whose entries are written raw (an attacker's tool does not refuse `..` or `/`):
/// (absolute or relative path, kind, data or link target, mode).
fn forged_tar(path: &Path, entries: &[(&str, tar::EntryType, &str, u32)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (p, kind, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        let name = p.trim_start_matches('/').as_bytes();
        assert!(name.len() < 100, "{p}");
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if kind.is_symlink() || kind.is_hard_link() {
            h.set_link_name(data).unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, std::io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
    }
    b.finish().unwrap();
}

/// Adds `files` (names in the checkpoint dir) to its manifest with their sizes and CRC-32s,
/// and lets `edit` change the rest: what an attacker re-sealing a checkpoint does.
fn reseal(ckpt: &Path, files: &[&str], edit: impl FnOnce(&mut serde_json::Value)) {
    let path = ckpt.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for f in files {
        let bytes = std::fs::read(ckpt.join(f)).unwrap();
        let entry = serde_json::json!({"path": f, "size": bytes.len(), "crc32": crc32fast::hash(&bytes)});
        m["files"].as_array_mut().unwrap().push(entry);
    }
    edit(&mut m);
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
}

/// A forged entry: path, kind, data or link target, mode.
type Entry = (String, tar::EntryType, String, u32);

fn only_checkpoint(s: &Scratch) -> PathBuf {
    let ids = s.checkpoints();
    assert_eq!(ids.len(), 1, "{ids:?}");
    s.images().join("checkpoints").join(&ids[0])
}

#[test]
fn archives_the_configuration_never_asked_for_are_not_put_back() {
    let s = Scratch::new("forged-unasked");
    let victim = s.path("victim");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    std::fs::write(victim.join("keep"), "keep").unwrap();
    std::fs::write(victim.join("sub/keep"), "keep").unwrap();
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));

    // Neither additionalPaths nor captureRootfsDiff is configured: the forged checkpoint says
    // it has both, plants a setuid-root file and deletes and empties the victim's dirs.
    let ckpt = only_checkpoint(&s);
    let planted = s.path("planted");
    let suid = s.path("suid");
    forged_tar(&ckpt.join("files.tar"), &[(planted.to_str().unwrap(), tar::EntryType::Regular, "owned", 0o644)]);
    forged_tar(&ckpt.join("rootfs.tar"), &[(suid.to_str().unwrap(), tar::EntryType::Regular, "#!/bin/sh\n", 0o4755)]);
    let (keep, sub) = (victim.join("keep").display().to_string(), victim.join("sub").display().to_string());
    reseal(&ckpt, &["files.tar", "rootfs.tar"], |m| {
        m["has_files_archive"] = true.into();
        m["rootfs"] = serde_json::json!({"deleted": [keep], "opaque": [sub], "archived": 1});
    });

    let mut c = Container::start(Spec::run(Some(&cfg), &[]));
    c.expect_count_after(last);
    let err = c.stderr();
    assert!(err.contains("additionalPaths, but none are configured: not put back"), "{err}");
    assert!(err.contains("captureRootfsDiff is off: not put back"), "{err}");
    assert!(!planted.exists() && !suid.exists(), "nothing planted\n{err}");
    assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"keep");
    assert_eq!(std::fs::read(victim.join("sub/keep")).unwrap(), b"keep");
}

#[test]
fn an_archive_that_reaches_outside_its_paths_is_refused_and_quarantined() {
    let s = Scratch::new("forged-outside");
    let data = s.path("data");
    let outside = s.path("outside");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), "root:x:0:0").unwrap();
    std::fs::write(data.join("state"), "1").unwrap();
    let cfg = s.config(&format!("additionalPaths: [{}]\n", data.display()));
    let (d, o) = (data.to_str().unwrap().to_string(), outside.to_str().unwrap().to_string());
    let attacks: Vec<(&str, Vec<Entry>)> = vec![
        ("outside the configured path", vec![(format!("{o}/passwd"), tar::EntryType::Regular, "owned".into(), 0o644)]),
        ("`..` out of it", vec![(format!("{d}/../outside/passwd"), tar::EntryType::Regular, "owned".into(), 0o644)]),
        (
            "through a symlink the archive plants",
            vec![
                (format!("{d}/evil"), tar::EntryType::Symlink, o.clone(), 0o777),
                (format!("{d}/evil/passwd"), tar::EntryType::Regular, "owned".into(), 0o644),
            ],
        ),
        ("a hardlink", vec![(format!("{d}/h"), tar::EntryType::Link, format!("{o}/passwd"), 0o644)]),
    ];
    for (what, entries) in attacks {
        let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
        c.expect_line(SHORT, "count 3", |l| l == "count 3");
        checkpoint(&mut c);
        let ckpt = only_checkpoint(&s);
        let entries: Vec<(&str, tar::EntryType, &str, u32)> =
            entries.iter().map(|(p, k, t, m)| (p.as_str(), *k, t.as_str(), *m)).collect();
        forged_tar(&ckpt.join("files.tar"), &entries);
        let files_tar = ckpt.join("files.tar");
        let bytes = std::fs::read(&files_tar).unwrap();
        let path = ckpt.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == "files.tar" {
                f["size"] = bytes.len().into();
                f["crc32"] = crc32fast::hash(&bytes).into();
            }
        }
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();

        // Refused, quarantined; the app starts fresh; nothing outside changed.
        let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
        c.expect_line(LONG, "count 1", |l| l == "count 1");
        assert!(c.stderr().contains("refused"), "{what}\n{}", c.stderr());
        assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0", "{what}");
        assert_eq!(s.area("quarantine").len(), 1, "{what}");
        c.kill();
        std::fs::remove_dir_all(s.images().join("quarantine")).unwrap();
        let _ = std::fs::remove_file(data.join("evil"));
        assert!(std::fs::metadata(outside.join("passwd")).unwrap().nlink() == 1, "{what}");
    }
}
