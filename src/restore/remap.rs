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
//!
//! With `isolatePids` the app has a mount namespace of its own, and a file crik lends is open on
//! a mount of crik's namespace, which CRIU cannot find in the app's at the next dump ("Can't
//! lookup mount"). Such files ([`ForeignFile`]) are dumped as external (`file[mnt:inode]`), their
//! paths kept in the manifest, and lent again at each restore.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::AbsPath;
use crate::criu::images::RegFile;
use crate::criu::InheritFd;
use crate::host::cgroup::{own_cgroup_dirs, CgroupDir};
use crate::host::procfs::FdInfo;

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

/// An open file of the app on a mount outside its own mount namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignFile {
    /// CRIU's name for it: `file[<mount id>:<inode>]`, both in hex.
    pub key: String,
    /// Its path in crik's namespace when it was dumped.
    pub path: String,
    /// Its open(2) flags.
    pub flags: i32,
}

/// The regular files that processes of the app's tree (`pids`, `root` first) hold open on
/// mounts that are not in the tree's mount namespace, once each.
pub fn foreign_files(pids: &[i32]) -> Vec<ForeignFile> {
    use std::os::unix::fs::MetadataExt;
    let Some(root) = pids.first() else { return Vec::new() };
    let text = std::fs::read_to_string(format!("/proc/{root}/mountinfo")).unwrap_or_default();
    let theirs: Vec<u64> = crate::host::mountinfo::parse(&text).iter().map(|m| m.id).collect();
    let mut out: Vec<ForeignFile> = Vec::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { continue };
        for fd in fds.flatten() {
            let Some(FdInfo { flags, mnt_id }) = FdInfo::read(&fd.path()) else { continue };
            if theirs.contains(&mnt_id) {
                continue;
            }
            let link = format!("/proc/{pid}/fd/{}", fd.file_name().to_string_lossy());
            // Pipes, sockets and anonymous inodes have no path and no mount to find.
            let (Ok(path), Ok(md)) = (std::fs::read_link(&link), std::fs::metadata(&link)) else { continue };
            if !md.is_file() || !path.is_absolute() {
                continue;
            }
            let key = format!("file[{mnt_id:x}:{:x}]", md.ino());
            if out.iter().any(|f| f.key == key) {
                continue;
            }
            out.push(ForeignFile { key, path: path.to_string_lossy().into_owned(), flags });
        }
    }
    out
}

/// Where a foreign file of the checkpoint is opened in this container: only a file crik would
/// lend anyway (a runtime file, one on an external mount, one under the container's cgroup),
/// never a path the checkpoint merely names.
pub fn reopen_foreign(f: &ForeignFile, external_mounts: &[AbsPath], old_cg: &[CgroupDir]) -> Option<PathBuf> {
    new_path(Path::new(&f.path), &external_paths(external_mounts), old_cg, &own_cgroup_dirs())
}

fn external_paths(external_mounts: &[AbsPath]) -> Vec<PathBuf> {
    RUNTIME_FILES.iter().map(PathBuf::from).chain(external_mounts.iter().map(|p| p.as_path().to_path_buf())).collect()
}

/// Files to lend to CRIU for a restore: (fd opened here, key of the old file). One that cannot
/// be opened is left out (and logged): CRIU then names it, which says more than crik could.
pub fn remapped_files(files: &[RegFile], external_mounts: &[AbsPath], old_cg: &[CgroupDir]) -> Vec<InheritFd> {
    let external = external_paths(external_mounts);
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

    #[test]
    fn a_foreign_file_is_reopened_only_where_crik_would_lend_it() {
        let f = |path: &str| ForeignFile { key: "file[2f:1a]".into(), path: path.into(), flags: libc::O_RDONLY };
        let ext = [AbsPath::new("/var/run/secrets").unwrap()];
        assert_eq!(reopen_foreign(&f("/etc/hosts"), &ext, &[]), Some("/etc/hosts".into()));
        assert_eq!(
            reopen_foreign(&f("/var/run/secrets/..2026_12_07_10_00_00.1/token"), &ext, &[]),
            Some("/var/run/secrets/..data/token".into())
        );
        // Named by the checkpoint alone: never opened and lent to it.
        for forged in ["/etc/shadow", "/var/run/secrets/../../etc/shadow", "/root/.ssh/id_ed25519"] {
            assert_eq!(reopen_foreign(&f(forged), &ext, &[]), None, "{forged}");
        }
    }
}
