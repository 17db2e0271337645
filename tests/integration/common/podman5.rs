//! podman 5.8 (Debian testing's, with crun and netavark) for the `podman kube play` tests:
//! bookworm's podman 4.3 takes a pod down without its grace period (podman 5.1 sends the stop
//! signal and waits each container's stop timeout, which `kube play` sets from
//! `terminationGracePeriodSeconds` since 4.7) and cannot play a Secret.
//!
//! It lives in a Debian testing root of its own (scripts/images/test_images.py `podman5`), run
//! chrooted beside the machine's podman: the root is bound on itself (crun wants `/` to be a
//! mount), with this machine's /proc, /sys and /dev, and a fresh /run and /tmp, so its runtime
//! state starts empty for each test; its store, subnet (10.99.0.0/16) and firewall tables are its
//! own. Mounted for one test, unmounted on drop.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Podman5 {
    root: PathBuf,
    /// Images a test copied in, removed on drop (the cached test images, `crik-test-*`, stay,
    /// as they do in this machine's podman).
    taken: RefCell<Vec<String>>,
}

impl Podman5 {
    pub fn start() -> Podman5 {
        let root = PathBuf::from(super::podman::image("podman5"));
        let mounted = |p: &Path| Command::new("mountpoint").arg("-q").arg(p).status().unwrap().success();
        if mounted(&root) {
            // A test killed at its timeout leaves its mounts; one still running has processes
            // chrooted there (podman, conmon).
            let users = chrooted_in(&root);
            assert!(users.is_empty(), "{} is in use by processes {users:?} (another test's)", root.display());
            let _ = Command::new("umount").arg("--lazy").arg(&root).output();
        }
        let podman5 = Podman5 { root, taken: RefCell::new(Vec::new()) };
        let r = podman5.root.to_str().unwrap();
        for mount in [
            vec!["--bind", r, r],
            vec!["-t", "proc", "proc", &format!("{r}/proc")],
            vec!["--rbind", "/sys", &format!("{r}/sys")],
            vec!["--rbind", "/dev", &format!("{r}/dev")],
            vec!["-t", "tmpfs", "tmpfs", &format!("{r}/run")],
            vec!["-t", "tmpfs", "tmpfs", &format!("{r}/tmp")],
        ] {
            let out = Command::new("mount").args(&mount).output().unwrap();
            assert!(out.status.success(), "mount {mount:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // This machine's hard limits as the containers' ulimits (`kube play` has no flag).
        let (nofile, nproc) = super::podman::hard_limits();
        podman5.write(
            "ulimits.conf",
            &format!("[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n"),
        );
        podman5
    }

    /// `podman ARGS` of podman 5, in its root.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("chroot")
            .arg(&self.root)
            .arg("podman")
            .args(args)
            .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1")
            .env("CONTAINERS_CONF_OVERRIDE", "/tmp/ulimits.conf")
            .output()
            .expect("run chroot podman")
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "podman 5 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes a file podman 5 can read (in its /tmp); its path there.
    pub fn write(&self, name: &str, contents: &str) -> String {
        std::fs::write(self.in_tmp(name), contents).unwrap();
        format!("/tmp/{name}")
    }

    /// Opens a file of the root (PATH as podman 5 sees it).
    pub fn open(&self, path: &str) -> std::fs::File {
        std::fs::File::open(self.root.join(path.trim_start_matches('/'))).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Where the root's /tmp/NAME is on this machine.
    pub fn in_tmp(&self, name: &str) -> PathBuf {
        self.root.join("tmp").join(name)
    }

    /// Copies an image from this machine's podman into podman 5's store, unless it is there.
    pub fn take(&self, image: &str) {
        if self.run(&["image", "exists", image]).status.success() {
            return;
        }
        if !image.starts_with("localhost/crik-test-") {
            self.taken.borrow_mut().push(image.to_string());
        }
        let archive = "image.tar";
        let out = Command::new("podman")
            .args(["save", "-q", "--format", "oci-archive", "-o"])
            .arg(self.root.join("tmp").join(archive))
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "podman save {image}: {}", String::from_utf8_lossy(&out.stderr));
        self.ok(&["load", "-q", "-i", &format!("/tmp/{archive}")]);
        std::fs::remove_file(self.root.join("tmp").join(archive)).unwrap();
        assert!(self.run(&["image", "exists", image]).status.success(), "{image} not loaded as itself");
    }
}

/// PIDs of the processes whose root directory is `root`.
fn chrooted_in(root: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root))
        .collect()
}

impl Drop for Podman5 {
    fn drop(&mut self) {
        for image in self.taken.borrow().iter() {
            self.run(&["rmi", "-f", image]);
        }
        // Lazily: a container a failed test left may still hold something below it.
        let _ = Command::new("umount").arg("--lazy").arg(&self.root).output();
    }
}
