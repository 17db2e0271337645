//! The bundle (#24): crik, CRIU and every library CRIU loads, with their own loader, in
//! /opt/crik (scripts/bundle/build_bundle.py), run in an image that has nothing else: no libc,
//! no package manager, a shell only from busybox-static (the distroless case). Real podman,
//! runc and crun, the least privilege the README gives.

use std::path::Path;
use std::process::Command;

use crate::common::podman::{Pod, LEAST_PRIVILEGE, RUNTIMES};
use crate::common::*;

const GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Images made by a test, removed on drop.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            let _ = Command::new("podman").args(["rmi", "-f", name]).output();
        }
    }
}

fn podman_ok(args: &[&str]) {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The user's side, as the docs tell it: the `crik` image (Dockerfile.crik: the bundle, built now
/// from this crik, and nothing else), an app image that has nothing but busybox-static (no libc,
/// no /lib), and the app's Dockerfile with one `COPY --from` line and an entrypoint.
fn user_image(s: &Scratch, images: &mut Images) -> String {
    let tag = |what: &str| format!("localhost/crik-it-{what}:{}", std::process::id());
    let context = s.path("crik-image");
    let built = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bundle/build_bundle.py"))
        .args(["--crik", CRIK])
        .arg(context.join("opt/crik"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let crik = tag("crik");
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile.crik");
    podman_ok(&["build", "-q", "-f", dockerfile, "-t", &crik, context.to_str().unwrap()]);
    images.0.push(crik.clone());

    // An app image with nothing but busybox.
    let root = s.path("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static (scripts/setup.sh)");
    for applet in ["sh", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for dir in ["proc", "sys", "dev", "tmp", "etc", "var/lib/crik"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let tar = s.path("root.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    let base = tag("busybox");
    podman_ok(&["import", "-q", tar.to_str().unwrap(), &base]);
    images.0.push(base.clone());

    let app = s.path("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!("FROM {base}\nCOPY --from={crik} /opt/crik /opt/crik\nENTRYPOINT [\"/opt/crik/bin/crik\"]\n"),
    )
    .unwrap();
    let user = tag("app");
    podman_ok(&["build", "-q", "-t", &user, app.to_str().unwrap()]);
    images.0.push(user.clone());
    // Nothing of a libc came with it: only the bundle's own.
    let out = Command::new("podman").args(["image", "mount", &user]).output().unwrap();
    assert!(out.status.success(), "podman image mount: {}", String::from_utf8_lossy(&out.stderr));
    let fs = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let has = |p: &str| fs.join(p).exists();
    let (libc_free, bundled) = (!has("lib") && !has("usr/lib") && !has("lib64"), has("opt/crik/bin/criu"));
    let _ = Command::new("podman").args(["image", "unmount", &user]).output();
    assert!(libc_free && bundled, "the image: no libc but the bundle's, and the bundle ({})", fs.display());
    user
}

fn count_lines(c: &crate::common::podman::Container) -> Vec<u64> {
    c.stdout_lines().iter().filter_map(|l| count_of(l)).collect()
}

/// start → podman stop (checkpoint) → rm → run (restore), twice, in the image with nothing.
fn two_cycles(image: &str, runtime: &str, dir: &Path) {
    let mut pod = Pod::new(image, runtime, dir, "");
    pod.run_args = LEAST_PRIVILEGE.map(String::from).to_vec();
    pod.own_entrypoint = true;
    let cmd = ["run", "--", COUNTER[0], COUNTER[1], COUNTER[2]];
    let mut c = pod.start(&cmd);
    c.expect_line(LONG, "count 3", |l| l == "count 3");
    assert!(c.logs().1.contains("(/opt/crik/bin/criu)"), "the bundle's CRIU: {}", c.logs().1);
    for cycle in 1..=2 {
        assert_eq!(c.stop(GRACE), 0, "cycle {cycle}: podman stop must checkpoint\n{}", c.logs().1);
        c.expect_event("checkpoint_finished");
        let last = *count_lines(&c).last().unwrap();
        drop(c);
        c = pod.start(&cmd);
        c.expect_line(LONG, "a count after the restore", |l| count_of(l).is_some_and(|n| n >= last + 2));
        assert_eq!(count_lines(&c)[0], last + 1, "cycle {cycle}: the count carries on\n{}", c.logs().1);
        c.expect_event("restore_finished");
    }
}

#[test]
fn the_bundle_checkpoints_and_restores_in_an_image_without_a_libc_under_runc_and_crun() {
    let s = Scratch::new("bundle-busybox");
    let mut images = Images(Vec::new());
    let image = user_image(&s, &mut images);
    let contents = std::fs::read_to_string(s.path("crik-image/opt/crik/CONTENTS")).unwrap();
    assert!(contents.contains("bin/criu") && contents.contains("lib/libc.so.6"), "{contents}");
    for runtime in RUNTIMES {
        let dir = s.path(runtime);
        std::fs::create_dir_all(&dir).unwrap();
        two_cycles(&image, runtime, &dir);
    }
}
