//! A checkpoint taken on a CPU with features this one lacks is refused before CRIU restores
//! anything, named, and kept for a node that has them.

use crate::common::*;
use criu_proto::cpuinfo::Cpuinfo_entry;
use protobuf::Message;
use std::path::{Path, PathBuf};

/// Instruction features CRIU checks (word, bit, name): the test claims the first one this CPU
/// lacks (Xeon Phi's AVX-512 PF/ER, AMD's old 3DNow!/XOP: no current CPU has them all).
const CANDIDATES: [(usize, u32, &str); 5] =
    [(9, 26, "avx512pf"), (9, 27, "avx512er"), (1, 31, "3dnow"), (6, 11, "xop"), (6, 21, "tbm")];

fn lacking_feature() -> (usize, u32, &'static str) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = info.lines().find(|l| l.starts_with("flags")).unwrap().split_whitespace().collect();
    *CANDIDATES.iter().find(|(_, _, n)| !flags.contains(n)).expect("this CPU has every candidate feature")
}

/// Rewrites the checkpoint's cpuinfo.img to claim `feature`, as taken on another type of node
/// (another CPU fingerprint), keeping the manifest's size and checksum of it true (so only the
/// CPU is wrong). Returns the original bytes and fingerprint.
fn claim_feature(ckpt: &Path, (word, bit, _): (usize, u32, &str)) -> (Vec<u8>, serde_json::Value) {
    let img = ckpt.join("images/cpuinfo.img");
    let original = std::fs::read(&img).unwrap();
    // Two magics, a length, one cpuinfo_entry.
    let len = u32::from_le_bytes(original[8..12].try_into().unwrap()) as usize;
    let mut entry = Cpuinfo_entry::parse_from_bytes(&original[12..12 + len]).unwrap();
    entry.x86_entry[0].capability[word] |= 1 << bit;
    let body = entry.write_to_bytes().unwrap();
    let mut edited = original[..8].to_vec();
    edited.extend_from_slice(&(body.len() as u32).to_le_bytes());
    edited.extend_from_slice(&body);
    let fingerprint = write_with_manifest(ckpt, &edited, "another-node".into());
    (original, fingerprint)
}

/// Writes cpuinfo.img and the manifest's record of it; returns the fingerprint it replaced.
fn write_with_manifest(ckpt: &Path, cpuinfo: &[u8], fingerprint: serde_json::Value) -> serde_json::Value {
    std::fs::write(ckpt.join("images/cpuinfo.img"), cpuinfo).unwrap();
    let manifest = ckpt.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let old = std::mem::replace(&mut m["cpu"]["fingerprint"], fingerprint);
    let f = m["files"].as_array_mut().unwrap().iter_mut().find(|f| f["path"] == "images/cpuinfo.img").unwrap();
    f["size"] = cpuinfo.len().into();
    f["crc32"] = crc32fast::hash(cpuinfo).into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    old
}

fn only_checkpoint(s: &Scratch) -> PathBuf {
    let ids = s.checkpoints();
    assert_eq!(ids.len(), 1, "{ids:?}");
    s.images().join("checkpoints").join(&ids[0])
}

#[test]
fn a_checkpoint_needing_missing_cpu_features_is_refused_named_and_kept() {
    let s = Scratch::new("cpu");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let ckpt = only_checkpoint(&s);
    let feature = lacking_feature();
    let (original, fingerprint) = claim_feature(&ckpt, feature);

    // coldStart (the default): refused before CRIU restores, the app starts fresh, the
    // checkpoint stays published (it is not damaged).
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    assert_eq!(c.expect_line(LONG, "a count", |l| count_of(l).is_some()), "count 1", "{}", c.stderr());
    let refused = c.expect_event("restore_refused", &[]);
    assert!(refused["msg"].as_str().unwrap().contains(feature.2), "names the missing feature: {refused}");
    assert!(c.event("restore_failed", &[]).is_none(), "{}", c.stderr());
    c.kill();
    assert_eq!(s.checkpoints().len(), 1, "kept for a compatible node");
    assert!(s.area("quarantine").is_empty(), "not quarantined: {:?}", s.area("quarantine"));

    // onRestoreFailure: fail: the same refusal ends crik.
    let strict = s.path("strict.yaml");
    std::fs::write(&strict, format!("imageDir: {}\nlogFormat: json\nonRestoreFailure: fail\n", s.images().display()))
        .unwrap();
    let (code, log) = refused_at_start(&strict, &[]);
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("crik: restore refused: the checkpoint needs CPU features this node lacks"), "{log}");
    assert!(log.contains(feature.2), "{log}");

    // On a node with the features (the record as CRIU wrote it), the same checkpoint restores.
    write_with_manifest(&ckpt, &original, fingerprint);
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_count_after(last);
    c.expect_event("restore_finished", &[]);
}

/// On a node of the same type (the same CPU fingerprint), CRIU's CPU check is skipped: it would
/// cost the restore a CRIU start.
#[test]
fn the_same_cpu_type_is_not_checked_again() {
    let s = Scratch::new("cpu-same");
    let cfg = s.config("");
    let mut c = Container::start(Spec::run(Some(&cfg), &COUNTER));
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    let last = last_count(&checkpoint(&mut c));
    let ckpt = only_checkpoint(&s);
    let mut c =
        Container::start(Spec { env: vec![("RUST_LOG".into(), "debug".into())], ..Spec::run(Some(&cfg), &COUNTER) });
    c.expect_count_after(last);
    assert!(c.stderr().contains("CRIU's CPU check is not needed"), "{}", c.stderr());
    assert!(
        !ckpt.join("images/cpuinfo.log").exists()
            && !s
                .images()
                .join("retired")
                .read_dir()
                .unwrap()
                .flatten()
                .any(|e| e.path().join("images/cpuinfo.log").exists()),
        "CRIU was not asked"
    );
}
