//! The container's writable layer (`captureRootfsDiff`): files the app created, changed or
//! deleted in its own root filesystem, outside volumes, are lost when the pod moves. The root is
//! an overlay; its upper dir holds exactly those changes: new and changed files as they are,
//! deletions as whiteouts (0:0 character devices), replaced directories marked opaque.
//!
//! At checkpoint the changes are archived (`rootfs.tar`, read through the merged view) and the
//! deletions and opaque dirs recorded in the manifest; at restore they are applied to the new
//! container's root before CRIU runs. Volumes, bind mounts and the image dir are skipped: they
//! are mounts, not part of the root's upper dir.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::mountinfo::Mount;

/// What the archive cannot carry: paths deleted from the image's root, and directories that
/// replaced the image's (their old contents must go first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsDiff {
    pub deleted: Vec<String>,
    pub opaque: Vec<String>,
    pub archived: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("captureRootfsDiff: {0}")]
    Setup(String),
    #[error("cannot archive the container's writable layer ({path}): {source}")]
    Archive { path: PathBuf, source: io::Error },
    #[error("cannot apply the container's writable layer: {0}")]
    Extract(#[from] crate::archive::confined::ConfinedError),
}

/// The overlay upper dir of `/`, checked to be reachable from here. Called at start, so that a
/// misconfiguration is found before any SIGTERM.
pub fn upper_dir() -> Result<PathBuf, RootfsError> {
    let mounts =
        crate::host::mountinfo::read().map_err(|e| RootfsError::Setup(format!("cannot read mountinfo: {e}")))?;
    upper_dir_of(&mounts)
}

fn upper_dir_of(mounts: &[Mount]) -> Result<PathBuf, RootfsError> {
    // The last mount on "/" is the one in effect.
    let root = mounts
        .iter()
        .rfind(|m| m.point == Path::new("/"))
        .ok_or_else(|| RootfsError::Setup("no mount on / in mountinfo".into()))?;
    if root.fstype != "overlay" {
        return Err(RootfsError::Setup(format!(
            "the root filesystem is {}, not an overlay: there is no writable layer to capture",
            root.fstype
        )));
    }
    let upper = crate::host::mountinfo::option(&root.super_options, "upperdir")
        .ok_or_else(|| RootfsError::Setup("the root overlay has no upperdir (read-only root?)".into()))?;
    let upper = PathBuf::from(upper);
    if !upper.is_dir() {
        return Err(RootfsError::Setup(format!(
            "the root overlay's upper dir {} is not reachable from inside the container \
             (mount the runtime's storage at the same path, e.g. a hostPath of /var/lib/containerd)",
            upper.display()
        )));
    }
    Ok(upper)
}

/// Mount points other than `/`: volumes, bind mounts, /proc, /dev, ... (never captured).
fn other_mounts() -> Vec<PathBuf> {
    crate::host::mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.point)
        .filter(|p| p != Path::new("/"))
        .collect()
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let mut v = [0u8; 1];
    ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|name| {
        let n = CString::new(*name).unwrap();
        // SAFETY: valid C strings and a 1-byte buffer.
        let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), v.as_mut_ptr().cast(), 1) };
        r == 1 && v[0] == b'y'
    })
}

/// Archives the changes in `upper` (read through the merged root `/`) into `archive`.
pub fn capture(upper: &Path, archive: &Path, skip: &[&Path]) -> Result<RootfsDiff, RootfsError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Archive { path, source }
    };
    let mounts = other_mounts();
    let out = File::create(archive).map_err(err(archive))?;
    let mut b = super::tar_builder(out);
    let mut diff = RootfsDiff::default();
    let mut walk = walkdir::WalkDir::new(upper).min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| RootfsError::Archive { path: upper.into(), source: e.into() })?;
        let rel = entry.path().strip_prefix(upper).unwrap_or(entry.path()).to_path_buf();
        let abs = Path::new("/").join(&rel);
        let under_mount = mounts.iter().any(|m| abs.starts_with(m)) || skip.iter().any(|s| abs.starts_with(s));
        if under_mount {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        let md = entry.metadata().map_err(|e| RootfsError::Archive { path: entry.path().into(), source: e.into() })?;
        if is_whiteout(&md) {
            diff.deleted.push(abs.to_string_lossy().into_owned());
            continue;
        }
        if md.is_dir() && is_opaque(entry.path()) {
            diff.opaque.push(abs.to_string_lossy().into_owned());
        }
        // Through the merged view: the upper copy may hold only metadata (metacopy).
        let r = if md.is_dir() { b.append_dir(&rel, &abs) } else { b.append_path_with_name(&abs, &rel) };
        r.map_err(err(&abs))?;
        diff.archived += 1;
    }
    let f = b.into_inner().map_err(err(archive))?;
    f.sync_all().map_err(err(archive))?;
    Ok(diff)
}

/// Where a writable layer's changes may land: the root filesystem, outside every other mount
/// (volumes, /proc, /dev, ...) and crik's own dirs (`skip`).
pub fn scope(skip: &[&Path]) -> super::confined::Scope {
    super::confined::Scope {
        roots: vec![PathBuf::from("/")],
        excluded: other_mounts().into_iter().chain(skip.iter().map(|p| p.to_path_buf())).collect(),
        keep_special_bits: false,
    }
}

/// Applies a captured diff to this container's root: opaque dirs emptied, deletions done, then
/// the archive unpacked over `/`, all confined to `scope` (the manifest's lists and the
/// archive are read as an adversary may have written them).
pub fn apply(diff: &RootfsDiff, archive: &Path, scope: &super::confined::Scope) -> Result<(), RootfsError> {
    let root = Path::new("/");
    for dir in &diff.opaque {
        super::confined::remove_in_scope(dir, root, scope, true)?;
    }
    for p in &diff.deleted {
        super::confined::remove_in_scope(p, root, scope, false)?;
    }
    super::confined::extract(archive, root, scope)?;
    log::info!(
        "container's writable layer put back: {} entries, {} deletions, {} replaced dirs",
        diff.archived,
        diff.deleted.len(),
        diff.opaque.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_dir_is_read_from_the_root_mount() {
        let of = |text: &str| upper_dir_of(&crate::host::mountinfo::parse(text));
        let mi = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                  40 22 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/,workdir=/w\n";
        assert_eq!(of(mi).unwrap(), PathBuf::from("/"));
        let e = of("22 1 0:21 / / rw - ext4 /dev/vda rw\n").unwrap_err().to_string();
        assert!(e.contains("not an overlay"), "{e}");
        let e = of("40 1 0:40 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/nonexistent/up,workdir=/w\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not reachable"), "{e}");
    }
}
