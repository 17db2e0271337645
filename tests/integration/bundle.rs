//! The bundle (#24): crik, CRIU and every library CRIU loads, with their own loader, in
//! /opt/crik (scripts/bundle/build_bundle.py), copied with one `COPY --from=crik` line into app
//! images that cannot run CRIU themselves: one with nothing but busybox-static (no libc: the
//! distroless case), one whose libc is musl (the Alpine case) with a C app linked against it, and
//! Debian bullseye (glibc 2.31, whose CRIU is too old) with a Python app; the latter two count
//! through a TCP connection. Real podman, runc and crun, the least privilege the README gives.

use std::path::Path;
use std::process::Command;

use crate::common::podman::{Pod, LEAST_PRIVILEGE, RUNTIMES};
use crate::common::*;

const GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Images made by a test, removed on drop.
pub(crate) struct Images(pub(crate) Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for name in self.0.iter().rev() {
            let _ = Command::new("podman").args(["rmi", "-f", name]).output();
        }
    }
}

pub(crate) fn podman_ok(args: &[&str]) {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The `crik` image (Dockerfile.crik: the bundle, built now from this crik, and nothing else).
pub(crate) fn crik_image(s: &Scratch, images: &mut Images) -> String {
    let context = s.path("crik-image");
    let built = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bundle/build_bundle.py"))
        .args(["--crik", CRIK])
        .arg(context.join("opt/crik"))
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let contents = std::fs::read_to_string(context.join("opt/crik/CONTENTS")).unwrap();
    assert!(contents.contains("bin/criu") && contents.contains("lib/libc.so.6"), "{contents}");
    let crik = tag("crik");
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile.crik");
    podman_ok(&["build", "-q", "-f", dockerfile, "-t", &crik, context.to_str().unwrap()]);
    images.0.push(crik.clone());
    crik
}

pub(crate) fn tag(what: &str) -> String {
    format!("localhost/crik-it-{what}:{}", std::process::id())
}

/// An app image with nothing but busybox-static: no libc, no /lib.
fn busybox_image(s: &Scratch, images: &mut Images) -> String {
    let root = s.path("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static (scripts/setup.sh)");
    for applet in ["sh", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    import_root(s, images, &root, "busybox")
}

/// An image of `root` (what a container needs mounted added), named after `name`.
fn import_root(s: &Scratch, images: &mut Images, root: &Path, name: &str) -> String {
    for dir in ["proc", "sys", "dev", "tmp", "etc", "var/lib/crik"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let tar = s.path(&format!("{name}-root.tar"));
    assert!(Command::new("tar").arg("-C").arg(root).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    let image = tag(name);
    podman_ok(&["import", "-q", tar.to_str().unwrap(), &image]);
    images.0.push(image.clone());
    image
}

/// An app image whose only libc is musl (Debian's, as Alpine's): the loader, and two C apps
/// linked against it (tests/workloads/counter.c and tcp_counter.c, built now with musl-gcc). No
/// glibc, no shell.
fn musl_image(s: &Scratch, images: &mut Images) -> String {
    let root = s.path("musl-root");
    for dir in ["lib", "app"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/lib/ld-musl-x86_64.so.1", root.join("lib/ld-musl-x86_64.so.1")).expect("musl (scripts/setup.sh)");
    for app in ["counter", "tcp_counter"] {
        let built = Command::new("musl-gcc")
            .args(["-O2", "-o"])
            .arg(root.join("app").join(app))
            .arg(workload(&format!("{app}.c")))
            .output()
            .expect("musl-gcc (musl-tools, scripts/setup.sh)");
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    }
    import_root(s, images, &root, "musl")
}

/// The app's Dockerfile, as the docs tell it: its base, one `COPY --from` line, the entrypoint.
fn user_image(s: &Scratch, images: &mut Images, base: &str, crik: &str, name: &str) -> String {
    let app = s.path(name);
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("Dockerfile"),
        format!("FROM {base}\nCOPY --from={crik} /opt/crik /opt/crik\nENTRYPOINT [\"/opt/crik/bin/crik\"]\n"),
    )
    .unwrap();
    let user = tag(name);
    podman_ok(&["build", "-q", "-t", &user, app.to_str().unwrap()]);
    images.0.push(user.clone());
    user
}

/// Whether the image's filesystem has `path`.
fn image_has(image: &str, paths: &[&str]) -> Vec<bool> {
    let out = Command::new("podman").args(["image", "mount", image]).output().unwrap();
    assert!(out.status.success(), "podman image mount: {}", String::from_utf8_lossy(&out.stderr));
    let fs = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let found = paths.iter().map(|p| fs.join(p).exists()).collect();
    let _ = Command::new("podman").args(["image", "unmount", image]).output();
    found
}

fn count_lines(c: &crate::common::podman::Container) -> Vec<u64> {
    c.stdout_lines().iter().filter_map(|l| count_of(l)).collect()
}

/// start → podman stop (checkpoint) → rm → run (restore), twice, of `app` in `image`.
fn two_cycles(image: &str, runtime: &str, dir: &Path, app: &[&str], extra: &[&str]) {
    let mut pod = Pod::new(image, runtime, dir, "");
    pod.run_args = LEAST_PRIVILEGE.iter().chain(extra).map(|a| a.to_string()).collect();
    pod.own_entrypoint = true;
    let cmd: Vec<&str> = ["run", "--"].into_iter().chain(app.iter().copied()).collect();
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

/// An app to run through the cycles, and podman's extra flags for it.
type App<'a> = (&'a [&'a str], &'a [&'a str]);

/// The app's image made from `base` (by `base_image`) with the crik image, checked to have (or
/// not) each of `paths`, then each of `apps` through two cycles on each runtime.
fn cycles_in(
    name: &str,
    base_image: impl FnOnce(&Scratch, &mut Images) -> String,
    paths: &[(&str, bool)],
    apps: &[App],
) {
    let s = Scratch::new(&format!("bundle-{name}"));
    let mut images = Images(Vec::new());
    let crik = crik_image(&s, &mut images);
    let base = base_image(&s, &mut images);
    let image = user_image(&s, &mut images, &base, &crik, &format!("{name}-app"));
    let found = image_has(&image, &paths.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    assert_eq!(found, paths.iter().map(|(_, has)| *has).collect::<Vec<_>>(), "{paths:?}");
    for (i, (app, extra)) in apps.iter().enumerate() {
        for runtime in RUNTIMES {
            let dir = s.path(&format!("{runtime}-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            two_cycles(&image, runtime, &dir, app, extra);
        }
    }
}

/// Nothing of a libc in the image but the bundle's own.
#[test]
fn the_bundle_checkpoints_and_restores_in_an_image_without_a_libc_under_runc_and_crun() {
    let paths = [("lib", false), ("usr/lib", false), ("lib64", false), ("opt/crik/bin/criu", true)];
    cycles_in("busybox", busybox_image, &paths, &[(&COUNTER, &[])]);
}

/// musl, as in Alpine: the bundle's CRIU runs on its own glibc beside the image's musl. The
/// counter, and a C app whose TCP connection comes back established (no network but loopback:
/// its addresses survive the move).
#[test]
fn the_bundle_restores_a_musl_app_with_a_tcp_connection_under_runc_and_crun() {
    let paths = [("lib/ld-musl-x86_64.so.1", true), ("lib/libc.so.6", false), ("lib64", false), ("usr/lib", false)];
    let apps: [App; 2] = [(&["/app/counter"], &[]), (&["/app/tcp_counter"], &["--network", "none"])];
    cycles_in("musl", musl_image, &paths, &apps);
}

/// Debian bullseye: glibc 2.31 (older than the bundle's), and no CRIU it could use; the counter,
/// and a Python app counting through a TCP connection, as above.
#[test]
fn the_bundle_restores_a_python_app_with_a_tcp_connection_on_an_old_glibc_under_runc_and_crun() {
    let paths = [("usr/sbin/criu", false), ("usr/bin/python3", true)];
    let bullseye = |_: &Scratch, _: &mut Images| crate::common::podman::image("bullseye");
    let apps: [App; 2] = [(&COUNTER, &[]), (&["python3", "/workloads/tcp_counter.py"], &["--network", "none"])];
    cycles_in("bullseye", bullseye, &paths, &apps);
}

/// `crik copy-bundle` outside a bundle says so.
#[test]
fn copy_bundle_outside_a_bundle_says_so() {
    let s = Scratch::new("bundle-copy");
    let out = Command::new(CRIK).arg("copy-bundle").arg(s.path("")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crik: nothing to copy") && err.contains("which is not a bundle"), "{err}");
}

/// The arm64 bundle (#24): crik cross-built for aarch64 (scripts/test.sh builds it), CRIU and
/// every library it loads from Debian's arm64 packages. CRIU cannot run under qemu-user, so
/// what is checked here is the layout: every ELF is aarch64, every library any of them needs is
/// in lib/, CRIU's loader and RPATH are the bundle's; and that qemu-user can load the bundle's
/// CRIU with nothing but the bundle (it prints its version) and run crik.
#[test]
fn the_arm64_bundle_is_aarch64_throughout_and_complete() {
    const EM_AARCH64: u16 = 183;
    let crik = concat!(env!("CARGO_MANIFEST_DIR"), "/target/aarch64-unknown-linux-gnu/release/crik");
    assert!(
        Path::new(crik).exists(),
        "no arm64 crik: cargo build --release --target aarch64-unknown-linux-gnu (scripts/test.sh does)"
    );
    let s = Scratch::new("bundle-arm64");
    let bundle = s.path("root/opt/crik");
    let built = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bundle/build_bundle.py"))
        .args(["--arch", "arm64", "--crik", crik])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let readelf = |flag: &str, p: &Path| {
        let out = Command::new("readelf").args([flag, "-W"]).arg(p).output().unwrap();
        assert!(out.status.success(), "readelf {flag} {}", p.display());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let between = |text: &str, start: &str| -> Vec<String> {
        text.lines().filter_map(|l| l.split(start).nth(1)).map(|r| r.split(']').next().unwrap().to_string()).collect()
    };
    let libs: Vec<String> =
        std::fs::read_dir(bundle.join("lib")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(libs.iter().any(|l| l == "libc.so.6") && libs.iter().any(|l| l == "ld-linux-aarch64.so.1"), "{libs:?}");
    let mut elves = vec![bundle.join("bin/crik"), bundle.join("bin/criu")];
    elves.extend(libs.iter().map(|l| bundle.join("lib").join(l)));
    for elf in &elves {
        let head = std::fs::read(elf).unwrap();
        assert_eq!(&head[..4], b"\x7fELF", "{} is not ELF", elf.display());
        assert_eq!(u16::from_le_bytes([head[18], head[19]]), EM_AARCH64, "{} is not aarch64", elf.display());
        let dynamic = readelf("-d", elf);
        for needed in between(&dynamic, "Shared library: [") {
            assert!(libs.contains(&needed), "{} needs {needed}, which the bundle lacks", elf.display());
        }
        let is_loader = elf.ends_with("lib/ld-linux-aarch64.so.1");
        if elf.ends_with("bin/crik") {
            assert!(!readelf("-l", elf).contains("program interpreter"), "crik must be static");
        } else if !is_loader {
            assert_eq!(between(&dynamic, "Library rpath: ["), ["/opt/crik/lib"], "{}", elf.display());
        }
    }
    assert_eq!(
        between(&readelf("-l", &bundle.join("bin/criu")), "program interpreter: "),
        ["/opt/crik/lib/ld-linux-aarch64.so.1"]
    );
    let contents = std::fs::read_to_string(bundle.join("CONTENTS")).unwrap();
    assert!(contents.contains("arm64") && contents.contains("criu:arm64 4.2"), "{contents}");

    // qemu-user with the scratch root as /: the bundle's loader loads CRIU and its libraries.
    let qemu = |bin: &str| {
        let out = Command::new("qemu-aarch64-static")
            .arg("-L")
            .arg(s.path("root"))
            .arg(bundle.join(bin))
            .arg("--version")
            .output()
            .expect("qemu-user-static (scripts/setup.sh)");
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(qemu("bin/criu").starts_with("Version: 4.2"));
    assert!(qemu("bin/crik").starts_with("crik "));
}
