//! `crik inspect` on real checkpoints made with real CRIU.

use crate::common::*;
use serde_json::Value;

fn inspect(images: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(CRIK)
        .args(["inspect", "--image-dir", images.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn inspect_shows_tree_command_lines_files_sockets_and_state() {
    let s = Scratch::new("inspect");
    let cfg = s.config("");
    let script = format!("{}/tests/workloads/pipes.py", env!("CARGO_MANIFEST_DIR"));
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(SHORT, "round 3", |l| l.starts_with("round 3 "));
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 0, "{}", c.stderr());

    let (code, json) = inspect(&s.images(), &["--json"]);
    assert_eq!(code, 0, "{json}");
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["checkpoints"].as_array().unwrap().len(), 1);
    assert_eq!(r["checkpoints"][0]["state"], "complete");
    let d = &r["detail"];
    assert_eq!(d["integrity"], "intact");
    assert_eq!(d["manifest"]["command"][1], script.as_str());
    let procs = d["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 3, "parent, child, grandchild: {procs:?}");
    let root = &procs[0];
    assert!(root["pid"].as_u64().unwrap() > 9000);
    assert_eq!(root["pid"], root["sid"], "the root leads its session");
    assert_eq!(root["cmdline"], serde_json::json!([PYTHON, script.as_str()]));
    assert!(root["memory_bytes"].as_u64().unwrap() > 1 << 20);
    assert_eq!(procs[1]["ppid"], root["pid"]);
    assert_eq!(procs[2]["ppid"], procs[1]["pid"]);
    let kinds: Vec<&str> = root["files"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"pipe"), "{kinds:?}");
    assert!(d["memory_bytes"].as_u64().unwrap() >= root["memory_bytes"].as_u64().unwrap());

    // The human form says the same things.
    let (_, text) = inspect(&s.images(), &[]);
    assert!(text.contains("integrity:  intact") && text.contains("pipe:[") && text.contains(&script), "{text}");
    // The CPU the checkpoint needs, as CRIU recorded it.
    let cpu = &d["manifest"]["cpu"];
    assert_eq!(cpu["arch"], std::env::consts::ARCH, "{cpu}");
    assert!(cpu["features"].as_array().unwrap().iter().any(|f| f == "sse2"), "{cpu}");
    assert!(text.contains("cpu:        x86_64") && text.contains("features checked at restore:"), "{text}");

    // After a restore the checkpoint shows as retired; a damaged one as damaged.
    let mut c = Container::start(Spec::run(Some(&cfg), &[PYTHON, &script]));
    c.expect_line(LONG, "a round", |l| l.starts_with("round "));
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 0);
    let r: Value = serde_json::from_str(&inspect(&s.images(), &["--json"]).1).unwrap();
    let states: Vec<&str> = r["checkpoints"].as_array().unwrap().iter().map(|c| c["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["retired", "complete"]);
    let id = r["detail"]["id"].as_str().unwrap().to_string();
    let pages = std::fs::read_dir(s.images().join("checkpoints").join(&id).join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pages-"))
        .unwrap();
    std::fs::OpenOptions::new().write(true).open(&pages).unwrap().set_len(1).unwrap();
    let r: Value = serde_json::from_str(&inspect(&s.images(), &["--json", "--checkpoint", &id]).1).unwrap();
    assert!(r["detail"]["integrity"].as_str().unwrap().contains("damaged"), "{}", r["detail"]["integrity"]);

    let (code, _) = inspect(&s.images(), &["--checkpoint", "nope"]);
    assert_eq!(code, 1);
}
