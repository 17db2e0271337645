//! captureRootfsDiff: the container's writable layer follows the app. Each "container" here has
//! a real overlay root (this machine's root as the lower layer, a fresh tmpfs upper) mounted in
//! the test's own mount namespace and pivoted into, as container runtimes do.

use crate::common::*;
use std::path::{Path, PathBuf};

/// Shell commands that give crik an overlay root; the scratch dir stays a "volume" at its path.
fn overlay_root(s: &Scratch) -> String {
    let d = s.dir.display();
    format!(
        "mkdir -p {d}/ovl {d}/merged && mount -t tmpfs tmpfs {d}/ovl && mkdir {d}/ovl/upper {d}/ovl/work && \
         mount -t overlay overlay -o lowerdir=/,upperdir={d}/ovl/upper,workdir={d}/ovl/work {d}/merged && \
         mount --rbind {d} {d}/merged{d} && mount --rbind /dev {d}/merged/dev && \
         cd {d}/merged && pivot_root . mnt && mount -t proc proc /proc && umount -l /mnt"
    )
}

/// A file on this machine's root (the containers' lower layer) that the app deletes.
struct LowerFile(PathBuf);
impl Drop for LowerFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn writable_layer_changes_and_deletions_follow_the_app() {
    let s = Scratch::new("rootfs");
    let lower = LowerFile(PathBuf::from(format!("/var/tmp/crik-rootfs-lower-{}", std::process::id())));
    std::fs::write(&lower.0, "from the image\n").unwrap();
    let cfg = s.config("captureRootfsDiff: true\n");
    let tag = std::process::id();
    let app = format!(
        "echo created > /etc/crik-new-{tag} && echo changed >> /etc/debian_version && rm {lower} && \
         mkdir -p /opt/crik-{tag}/sub && echo nested > /opt/crik-{tag}/sub/f && ln -s sub/f /opt/crik-{tag}/link && \
         echo opened > /var/log/crik-{tag}.log && exec 3>>/var/log/crik-{tag}.log && \
         i=0; while :; do i=$((i+1)); echo \"count $i\"; sleep 0.1; done",
        lower = lower.0.display()
    );
    let start = |with_cmd: bool| {
        let cmd = ["sh", "-c", app.as_str()];
        let mut spec = Spec::run(Some(&cfg), if with_cmd { &cmd[..] } else { &[] });
        spec.setup = Some(overlay_root(&s));
        Container::start(spec)
    };
    let mut c = start(true);
    c.expect_line(SHORT, "count 3", |l| l == "count 3");
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_code(LONG), 0, "{}", c.stderr());
    assert!(c.stderr().contains("writable layer"), "{}", c.stderr());
    let last = c.stdout_seen.iter().rev().find_map(|l| count_of(l)).unwrap();
    // The image (this machine's root) was never touched.
    assert!(lower.0.exists());
    assert!(!Path::new(&format!("/etc/crik-new-{tag}")).exists());

    // A new container: a pristine overlay root. The restore puts the layer back first.
    let mut c = start(true);
    c.expect_count_after(last);
    let crik = c.crik_pid();
    assert!(eventually(SHORT, || children_of(crik).len() == 1));
    let root = format!("/proc/{}/root", children_of(crik)[0].0);
    let inside = |p: &str| format!("{root}{p}");
    assert_eq!(std::fs::read_to_string(inside(&format!("/etc/crik-new-{tag}"))).unwrap(), "created\n");
    assert!(std::fs::read_to_string(inside("/etc/debian_version")).unwrap().ends_with("changed\n"));
    assert!(!Path::new(&inside(&lower.0.display().to_string())).exists(), "the deletion must be replayed");
    assert!(lower.0.exists(), "but only inside the container");
    assert_eq!(std::fs::read_to_string(inside(&format!("/opt/crik-{tag}/sub/f"))).unwrap(), "nested\n");
    assert_eq!(std::fs::read_link(inside(&format!("/opt/crik-{tag}/link"))).unwrap(), Path::new("sub/f"));
    // The app's open file in the writable layer is its own again.
    let app_pid = children_of(crik)[0].0;
    assert_eq!(
        std::fs::read_link(format!("/proc/{app_pid}/fd/3")).unwrap(),
        PathBuf::from(format!("/var/log/crik-{tag}.log"))
    );
    c.kill();
}

#[test]
fn capture_without_an_overlay_root_is_refused_at_start() {
    let s = Scratch::new("rootfs-noovl");
    let cfg = s.config("captureRootfsDiff: true\n");
    let (code, log) = refused_at_start(&cfg, &[]);
    assert_eq!(code, 2);
    assert!(log.contains("captureRootfsDiff") && log.contains("not an overlay"), "{log}");
}
