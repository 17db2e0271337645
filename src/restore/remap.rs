//! Open files that must point at the new container's copy after a restore.
//!
//! Files on mounts the runtime provides (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`,
//! secret and configmap volumes: `externalMounts`) exist again in the new pod, but with other
//! contents and sizes, and CRIU refuses a file whose size changed. Files under the container's
//! own cgroup directory (`/sys/fs/cgroup/kubepods.slice/.../<old pod>/...`) exist in the new pod
//! under another path. For each such file the app had open, crik opens the new one and lends it
//! to CRIU under the old file's key (CRIU's inherit-fd), which CRIU uses instead of the path.
//!
//! Kubernetes writes Secret, ConfigMap, projected and downward-API volumes atomically: the files
//! live in a version directory named for the time it was written (`..2026_12_07_10_00_00.123`),
//! `..data` is a symlink to the current one, and each name (`token`) links through `..data`. An
//! open file's path is the resolved one, inside a version directory, which a new pod never has
//! (and which the kubelet deletes when it rotates the contents): crik opens the file through
//! `..data` instead, the new pod's current version.

use std::path::{Path, PathBuf};

use crate::config::AbsPath;
use crate::criu::images::RegFile;
use crate::criu::InheritFd;
use crate::host::cgroup::{own_cgroup_dirs, CgroupDir};

/// Runtime-provided bind mounts of every Kubernetes pod.
pub const RUNTIME_FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// Where an open file of the checkpointed app should point in this container, if elsewhere
/// than its old path or on a runtime-provided mount.
fn new_path(old: &Path, external: &[PathBuf], old_cg: &[CgroupDir], new_cg: &[CgroupDir]) -> Option<PathBuf> {
    // The path comes from the checkpoint: one that climbs out of a mount or cgroup is not in it.
    if old.components().any(|c| c == std::path::Component::ParentDir) {
        return None;
    }
    for o in old_cg {
        if let Ok(rest) = old.strip_prefix(&o.dir) {
            let n = new_cg.iter().find(|n| n.hierarchy == o.hierarchy)?;
            return Some(n.dir.join(rest));
        }
    }
    external.iter().any(|e| old.starts_with(e)).then(|| through_current_version(old))
}

/// `path` with a kubelet version directory (`..<timestamp>`) replaced by `..data`, the link to
/// the current version; unchanged where it has none.
fn through_current_version(path: &Path) -> PathBuf {
    let is_version_dir = |c: &std::ffi::OsStr| {
        let c = c.to_string_lossy();
        c.strip_prefix("..").is_some_and(|ts| {
            ts.starts_with(|ch: char| ch.is_ascii_digit())
                && ts.chars().all(|ch| ch.is_ascii_digit() || ch == '_' || ch == '.')
        })
    };
    path.components()
        .map(|c| match c {
            std::path::Component::Normal(n) if is_version_dir(n) => std::ffi::OsStr::new("..data"),
            c => c.as_os_str(),
        })
        .collect()
}

/// Files to lend to CRIU for a restore: (fd opened here, key of the old file). One that cannot
/// be opened is left out (and logged): CRIU then names it, which says more than crik could.
pub fn remapped_files(files: &[RegFile], external_mounts: &[AbsPath], old_cg: &[CgroupDir]) -> Vec<InheritFd> {
    let external: Vec<PathBuf> = RUNTIME_FILES
        .iter()
        .map(PathBuf::from)
        .chain(external_mounts.iter().map(|p| p.as_path().to_path_buf()))
        .collect();
    let new_cg = own_cgroup_dirs();
    let mut out: Vec<InheritFd> = Vec::new();
    for f in files {
        let old = Path::new(&f.path);
        let Some(path) = new_path(old, &external, old_cg, &new_cg) else { continue };
        let key = f.path.trim_start_matches('/').to_string();
        if out.iter().any(|i| i.key == key) {
            continue;
        }
        match crate::host::procfs::reopen_options(f.flags as i32).open(&path) {
            Ok(file) => {
                log::info!("open file {} of the app now points to {}", f.path, path.display());
                out.push(InheritFd { fd: file.into(), key });
            }
            // Not there: CRIU then reports the file by name, which says more than we could.
            Err(e) => log::warn!("cannot open {} for the restored app's {}: {e}", path.display(), f.path),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_under_the_old_cgroup_move_to_the_new_one_and_runtime_files_stay() {
        let old = vec![CgroupDir { hierarchy: "0:".into(), dir: "/sys/fs/cgroup/pod-a/ctr".into() }];
        let new = vec![CgroupDir { hierarchy: "0:".into(), dir: "/sys/fs/cgroup/pod-b/ctr".into() }];
        let ext = vec![PathBuf::from("/etc/hosts"), PathBuf::from("/var/run/secrets")];
        assert_eq!(
            new_path(Path::new("/sys/fs/cgroup/pod-a/ctr/memory.max"), &ext, &old, &new),
            Some("/sys/fs/cgroup/pod-b/ctr/memory.max".into())
        );
        assert_eq!(new_path(Path::new("/etc/hosts"), &ext, &old, &new), Some("/etc/hosts".into()));
        assert_eq!(
            new_path(Path::new("/var/run/secrets/token"), &ext, &old, &new),
            Some("/var/run/secrets/token".into())
        );
        assert_eq!(
            new_path(Path::new("/var/run/secrets/..2026_12_07_10_00_00.1234567/token"), &ext, &old, &new),
            Some("/var/run/secrets/..data/token".into()),
            "a kubelet version directory is reached through ..data"
        );
        for kept in ["/var/run/secrets/..data/token", "/var/run/secrets/..hidden/x"] {
            assert_eq!(new_path(Path::new(kept), &ext, &old, &new), Some(kept.into()));
        }
        for climbs in ["/var/run/secrets/../../etc/shadow", "/sys/fs/cgroup/pod-a/ctr/../../x"] {
            assert_eq!(new_path(Path::new(climbs), &ext, &old, &new), None, "{climbs}");
        }
        assert_eq!(
            new_path(Path::new("/data/..2026_12_07_10_00_00.1/file"), &ext, &old, &new),
            None,
            "only on external mounts"
        );
        assert_eq!(new_path(Path::new("/data/file"), &ext, &old, &new), None);
        assert_eq!(new_path(Path::new("/etc/hostsx"), &ext, &old, &new), None);
    }
}
