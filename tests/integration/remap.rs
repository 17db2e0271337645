//! Files the app holds open on runtime-provided mounts and in its own cgroup point at the new
//! container's copies after a restore.

use crate::common::*;
use std::path::{Path, PathBuf};

const LOOP: &str = "i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done";

/// The app's host PID (crik's only child).
fn app_pid(c: &mut Container) -> i32 {
    let crik = c.crik_pid();
    assert!(eventually(SHORT, || children_of(crik).len() == 1), "{:?}", children_of(crik));
    children_of(crik)[0].0
}

#[test]
fn runtime_files_and_configured_mounts_point_to_the_new_pods_copies() {
    let s = Scratch::new("extmounts");
    // What the "runtime" mounts into each pod: /etc/hosts and a secret volume, with other
    // contents (and sizes) in the second pod.
    for (pod, hosts, token) in
        [("a", "10.0.0.1 pod-a\n", "token-a"), ("b", "10.0.0.2 pod-b.namespace.svc\n", "a-longer-token-b")]
    {
        std::fs::create_dir_all(s.path(&format!("secrets-{pod}"))).unwrap();
        std::fs::write(s.path(&format!("secrets-{pod}/token")), token).unwrap();
        std::fs::write(s.path(&format!("hosts-{pod}")), hosts).unwrap();
    }
    let mnt = s.path("mnt/secrets");
    std::fs::create_dir_all(&mnt).unwrap();
    let setup = |pod: &str| {
        format!(
            "mount --bind {d}/hosts-{pod} /etc/hosts && mount --bind {d}/secrets-{pod} {m}",
            d = s.dir.display(),
            m = mnt.display()
        )
    };
    let app = format!("exec 3</etc/hosts 4<{}/token; {LOOP}", mnt.display());
    let run = |cfg: &Path, pod: &str| {
        let mut spec = Spec::run(Some(cfg), &["sh", "-c", &app]);
        spec.setup = Some(setup(pod));
        Container::start(spec)
    };

    // Without externalMounts, the secret's new size makes CRIU refuse the restore (control).
    let plain = s.config("");
    let mut c = run(&plain, "a");
    c.expect_line(SHORT, "count 2", |l| l == "count 2");
    checkpoint(&mut c);
    let mut c = run(&plain, "b");
    assert_eq!(c.expect_line(LONG, "a count", |l| count_of(l).is_some()), "count 1", "expected a cold start");
    assert!(c.stderr().contains("bad size"), "{}", c.stderr());
    drop(c);

    // With it, both files follow the pod.
    let cfg = s.path("with-mounts.yaml");
    std::fs::write(
        &cfg,
        format!("imageDir: {}/images2\nlogFormat: json\nexternalMounts: [{}]\n", s.dir.display(), mnt.display()),
    )
    .unwrap();
    let mut c = run(&cfg, "a");
    c.expect_line(SHORT, "count 2", |l| l == "count 2");
    checkpoint(&mut c);
    let last = c.stdout_seen.iter().rev().find_map(|l| count_of(l)).unwrap();
    let mut c = run(&cfg, "b");
    c.expect_count_after(last);
    let app = app_pid(&mut c);
    assert_eq!(std::fs::read_to_string(format!("/proc/{app}/fd/3")).unwrap(), "10.0.0.2 pod-b.namespace.svc\n");
    assert_eq!(std::fs::read_to_string(format!("/proc/{app}/fd/4")).unwrap(), "a-longer-token-b");
}

/// The cgroup v2 mount point of this machine.
fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi.lines().find(|l| l.contains(" - cgroup2 ")).expect("cgroup v2 is mounted");
    PathBuf::from(line.split_whitespace().nth(4).unwrap())
}

/// A cgroup made for the test, removed (once empty) on drop.
struct Cgroup(PathBuf);
impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn open_files_in_the_containers_cgroup_follow_it_to_the_new_cgroup() {
    let s = Scratch::new("cgroup");
    let root = cgroup2_root();
    let cg_a = Cgroup(root.join(format!("crik-test-{}-a", std::process::id())));
    let cg_b = Cgroup(root.join(format!("crik-test-{}-b", std::process::id())));
    std::fs::create_dir_all(&cg_a.0).unwrap();
    std::fs::create_dir_all(&cg_b.0).unwrap();
    let cfg = s.config("");
    // The app holds a file of its own cgroup open, as apps that watch their memory limit do.
    let app = format!("cg=$(sed -n 's/^0:://p' /proc/self/cgroup); exec 3<{}$cg/cgroup.procs; {LOOP}", root.display());
    let run = |cg: &Path| {
        let mut spec = Spec::run(Some(&cfg), &["sh", "-c", &app]);
        spec.setup = Some(format!("echo $$ > {}/cgroup.procs", cg.display()));
        Container::start(spec)
    };
    let mut c = run(&cg_a.0);
    c.expect_line(SHORT, "count 2", |l| l == "count 2");
    let app_a = app_pid(&mut c);
    assert_eq!(std::fs::read_link(format!("/proc/{app_a}/fd/3")).unwrap(), cg_a.0.join("cgroup.procs"));
    checkpoint(&mut c);
    drop(cg_a); // the old pod's cgroup is gone

    let mut c = run(&cg_b.0);
    let first = c.expect_line(LONG, "a count", |l| count_of(l).is_some());
    assert_ne!(first, "count 1", "must restore, not start fresh\n{}", c.stderr());
    let app_b = app_pid(&mut c);
    assert_eq!(std::fs::read_link(format!("/proc/{app_b}/fd/3")).unwrap(), cg_b.0.join("cgroup.procs"));
    c.kill();
}

/// A Secret volume as the kubelet writes it (its atomic writer): the files in a version
/// directory named for the time, `..data` linking to the current one, each name linking through
/// `..data` (made, or rotated to `version`).
fn kubelet_volume(dir: &Path, version: &str, token: &str) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("token"), token).unwrap();
    // Swapped atomically, as the kubelet does: a new link renamed over `..data`.
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("token").exists() {
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
    }
}

/// The app opened its Secret's `token`; the kubelet then rotated the Secret (a new version
/// directory, `..data` swapped, the old one deleted) while the app held the file open, and the
/// pod moved. The restored app's file is the new pod's current `token`, reached through `..data`
/// (the version directory the app's file was in exists nowhere any more). Before, the restored
/// app held the rotated-away token: CRIU had saved the deleted file's contents and put them back.
#[test]
fn a_rotated_secret_held_open_is_restored_onto_the_new_pods_copy() {
    let s = Scratch::new("rotated-secret");
    let (vol_a, vol_b) = (s.path("secret-a"), s.path("secret-b"));
    kubelet_volume(&vol_a, "..2026_12_07_10_00_00.1111111", "token-a1");
    kubelet_volume(&vol_b, "..2026_12_07_11_30_00.2222222", "the-new-pods-token-b");
    let mnt = s.path("mnt/secret");
    std::fs::create_dir_all(&mnt).unwrap();
    let cfg = s.path("crik.yaml");
    std::fs::write(
        &cfg,
        format!("imageDir: {}/images\nlogFormat: json\nexternalMounts: [{}]\n", s.dir.display(), mnt.display()),
    )
    .unwrap();
    let app = format!("exec 4<{}/token; {LOOP}", mnt.display());
    let run = |vol: &Path| {
        let mut spec = Spec::run(Some(&cfg), &["sh", "-c", &app]);
        spec.setup = Some(format!("mount --bind {} {}", vol.display(), mnt.display()));
        Container::start(spec)
    };

    let mut c = run(&vol_a);
    c.expect_line(SHORT, "count 2", |l| l == "count 2");
    let held = std::fs::read_link(format!("/proc/{}/fd/4", app_pid(&mut c))).unwrap();
    assert!(held.ends_with("..2026_12_07_10_00_00.1111111/token"), "{}", held.display());
    // The rotation, with the file held open: the old version is deleted.
    kubelet_volume(&vol_a, "..2026_12_07_10_05_00.3333333", "token-a2");
    std::fs::remove_dir_all(vol_a.join("..2026_12_07_10_00_00.1111111")).unwrap();
    c.expect_line(SHORT, "count 4", |l| l == "count 4");
    checkpoint(&mut c);
    let last = c.stdout_seen.iter().rev().find_map(|l| count_of(l)).unwrap();

    let mut c = run(&vol_b);
    c.expect_count_after(last);
    let app = app_pid(&mut c);
    assert_eq!(std::fs::read_to_string(format!("/proc/{app}/fd/4")).unwrap(), "the-new-pods-token-b");
    assert!(
        c.stderr().contains("..2026_12_07_10_00_00.1111111/token of the app now points to")
            && c.stderr().contains("..data/token"),
        "{}",
        c.stderr()
    );
    c.kill();
}
