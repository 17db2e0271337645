//! Putting an archive back, confined to where it belongs. An archive (and the manifest that
//! says what to delete) comes from the image dir or from storage: written, for all crik knows,
//! by whoever can write there. So, whatever it holds:
//!
//! - every entry lands under one of the scope's roots (`additionalPaths`, a tmpfs mount the app
//!   had, or the root filesystem outside its mounts), never under an excluded path (volumes,
//!   /proc, the image dir), never at an absolute or `..` path;
//! - below a root nothing is followed: each directory is opened one component at a time with
//!   `O_NOFOLLOW`, so a symlink (the container's own, or one the archive planted a moment
//!   earlier) never leads a write outside; a root itself is the operator's path and resolves as
//!   the container's filesystem says (`/var/run` → `/run`);
//! - a file is written as a new inode (what was at its path is unlinked first), so a hardlink
//!   to a file elsewhere is never written through; hardlink entries, device nodes and FIFOs are
//!   not put back (crik's own archives never hold the first two);
//! - setuid and setgid bits are dropped unless the scope keeps them (`additionalPaths` only: the
//!   operator's own files).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    #[error("cannot read archive {archive}: {source}")]
    Read { archive: PathBuf, source: io::Error },
    /// An entry (or a path to delete) that would land outside the scope: the archive was not
    /// written by crik for this configuration.
    #[error("{archive}: refused {path:?}: {why}")]
    Refused { archive: PathBuf, path: String, why: String },
    #[error("cannot put back {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Where an archive's entries may land.
pub struct Scope {
    /// Absolute paths an entry must equal or lie under.
    pub roots: Vec<PathBuf>,
    /// Absolute paths nothing may equal or lie under (checked after `roots`).
    pub excluded: Vec<PathBuf>,
    /// Keep setuid/setgid bits (else dropped).
    pub keep_special_bits: bool,
}

impl Scope {
    /// The root an absolute path falls under, unless it is excluded.
    fn root_of(&self, abs: &Path) -> Option<&Path> {
        if self.excluded.iter().any(|e| abs.starts_with(e)) {
            return None;
        }
        self.roots.iter().filter(|r| abs.starts_with(r)).max_by_key(|r| r.as_os_str().len()).map(|r| r.as_path())
    }
}

/// `rel` (an archive's path, or an absolute one without its `/`) as plain components only.
fn plain(rel: &Path) -> Result<(), String> {
    if rel.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    match rel.components().find(|c| !matches!(c, Component::Normal(_))) {
        Some(_) => Err("not a plain relative path (absolute, `.` or `..`)".into()),
        None => Ok(()),
    }
}

/// Why a directory could not be opened below a root.
enum DirError {
    /// A component is a symlink (or not a directory): never followed.
    NotADir(String),
    Io(io::Error),
}

impl From<io::Error> for DirError {
    fn from(e: io::Error) -> Self {
        DirError::Io(e)
    }
}

impl From<Errno> for DirError {
    fn from(e: Errno) -> Self {
        DirError::Io(e.into())
    }
}

/// Opens the directory at absolute `dir`, which lies under `root`: `root` as the filesystem
/// resolves it (the operator's path: created with its parents when `create` and missing), then
/// each further component with `O_NOFOLLOW`, created (0755) when `create` and missing.
fn open_dir_below(root: &Path, dir: &Path, create: bool) -> Result<OwnedFd, DirError> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    if create && !root.exists() {
        std::fs::create_dir_all(root)?;
    }
    let mut fd: OwnedFd = File::open(root)?.into();
    let below = dir.strip_prefix(root).map_err(|_| DirError::NotADir("outside its root".into()))?;
    for c in below.components() {
        let Component::Normal(name) = c else { return Err(DirError::NotADir("not a plain path".into())) };
        let next = match openat(fd.as_fd(), name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                openat(fd.as_fd(), name, flags | OFlag::O_NOFOLLOW, Mode::empty())
            }
            r => r,
        };
        fd = next.map_err(|e| match e {
            // O_NOFOLLOW on a symlink: ELOOP (or ENOTDIR with O_DIRECTORY).
            Errno::ELOOP | Errno::ENOTDIR => {
                DirError::NotADir(format!("{} is a symlink or not a directory: never followed", name.to_string_lossy()))
            }
            e => e.into(),
        })?;
    }
    Ok(fd)
}

/// Whether `name` in `dir` is a directory itself (not a symlink to one); `None`: nothing there
/// (or it cannot be looked at).
fn is_dir_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<Option<bool>, Errno> {
    match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives what was just created through `fd` the entry's owner, mode and time. The owner first:
/// chown clears setuid/setgid, the mode sets them again where they are kept.
fn set_metadata(fd: impl AsFd, uid: Option<Uid>, gid: Option<Gid>, mode: u32, mtime: &TimeSpec) -> nix::Result<()> {
    fchown(fd.as_fd(), uid, gid)?;
    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
    futimens(fd.as_fd(), mtime, mtime)
}

/// Removes whatever is at `name` in `dir` (a directory with all it holds, never following a
/// symlink); nothing there is fine.
fn remove_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> io::Result<()> {
    match is_dir_at(dir, name)? {
        None => Ok(()),
        Some(true) => {
            // Through the directory fd just checked: std's remove_dir_all never follows a
            // symlink inside it.
            std::fs::remove_dir_all(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
        }
        Some(false) => unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from),
    }
}

/// What [`extract`] put back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    pub entries: usize,
    /// Entries not put back (FIFOs, devices), each logged.
    pub skipped: usize,
}

/// Unpacks `archive` under `root` (normally `/`; the scope is in the container's absolute paths,
/// the root only moves where they land, for tests).
pub fn extract(archive: &Path, root: &Path, scope: &Scope) -> Result<Extracted, ConfinedError> {
    let read = |source| ConfinedError::Read { archive: archive.into(), source };
    let mut a = tar::Archive::new(File::open(archive).map_err(read)?);
    let mut done = Extracted::default();
    // Roots this archive made symlinks: nothing of it may land below them (the root itself
    // resolves as the filesystem says, and it would say "through the archive's link").
    let mut linked_roots: Vec<PathBuf> = Vec::new();
    for entry in a.entries().map_err(read)? {
        let mut entry = entry.map_err(read)?;
        let rel = entry.path().map_err(read)?.into_owned();
        let refused = |why: String| ConfinedError::Refused {
            archive: archive.into(),
            path: rel.to_string_lossy().into_owned(),
            why,
        };
        plain(&rel).map_err(refused)?;
        let abs = Path::new("/").join(&rel);
        let Some(scope_root) = scope.root_of(&abs) else {
            return Err(refused("outside what this configuration puts back".into()));
        };
        if linked_roots.iter().any(|l| abs.starts_with(l) && abs != *l) {
            return Err(refused("below a symlink this archive made".into()));
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_hard_link() {
            return Err(refused("a hardlink (crik never archives one)".into()));
        }
        // tar writes files with holes (a browser's caches) as GNU sparse entries; reading one
        // gives its whole contents, holes as zeros.
        let is_file = kind.is_file() || kind.is_gnu_sparse();
        if !(is_file || kind.is_dir() || kind.is_symlink()) {
            log::warn!("{}: {} is a {kind:?}: not put back", archive.display(), abs.display());
            done.skipped += 1;
            continue;
        }
        let target = root.join(&rel);
        let write = |source: io::Error| ConfinedError::Write { path: abs.clone(), source };
        let (here_root, parent) = (root.join(scope_root.strip_prefix("/").unwrap_or(scope_root)), target.parent());
        let name = target.file_name().ok_or_else(|| refused("no name".into()))?.to_owned();
        let parent = parent.ok_or_else(|| refused("no parent".into()))?;
        // The root's own entry (e.g. the additional path itself) is made in the root's parent,
        // which resolves as the container says; below it nothing is followed.
        let opened = if target == here_root {
            let up = here_root.parent().unwrap_or(Path::new("/"));
            open_dir_below(up, up, true)
        } else {
            open_dir_below(&here_root, parent, true)
        };
        let dir = match opened {
            Ok(fd) => fd,
            Err(DirError::NotADir(why)) => return Err(refused(why)),
            Err(DirError::Io(e)) => return Err(write(e)),
        };
        let uid = header.uid().ok().map(|u| Uid::from_raw(u as u32));
        let gid = header.gid().ok().map(|g| Gid::from_raw(g as u32));
        let mut mode = header.mode().map_err(read)? & 0o7777;
        if !scope.keep_special_bits {
            mode &= 0o1777;
        }
        let mtime = TimeSpec::new(header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64, 0);
        if kind.is_dir() {
            let exists = match is_dir_at(&dir, &name) {
                Ok(Some(true)) => true,
                Ok(Some(false)) => {
                    remove_at(&dir, &name).map_err(write)?;
                    false
                }
                Ok(None) | Err(_) => false,
            };
            if !exists {
                mkdirat(dir.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o700)).map_err(|e| write(e.into()))?;
            }
            let fd = openat(
                dir.as_fd(),
                name.as_os_str(),
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| write(e.into()))?;
            set_metadata(fd, uid, gid, mode, &mtime).map_err(|e| write(e.into()))?;
        } else if kind.is_symlink() {
            let link = entry.link_name().map_err(read)?.ok_or_else(|| refused("a symlink without a target".into()))?;
            remove_at(&dir, &name).map_err(write)?;
            symlinkat(link.as_ref(), dir.as_fd(), name.as_os_str()).map_err(|e| write(e.into()))?;
            if target == here_root {
                linked_roots.push(abs.clone());
            }
            fchownat(dir.as_fd(), name.as_os_str(), uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| write(e.into()))?;
        } else {
            // A new inode: whatever was there (a hardlink to a file elsewhere, a symlink) is
            // unlinked, never written through.
            remove_at(&dir, &name).map_err(write)?;
            let fd = openat(
                dir.as_fd(),
                name.as_os_str(),
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| write(e.into()))?;
            let mut f = File::from(fd);
            copy_keeping_holes(&mut entry, &mut f).map_err(write)?;
            set_metadata(&f, uid, gid, mode, &mtime).map_err(|e| write(e.into()))?;
        }
        done.entries += 1;
    }
    Ok(done)
}

/// Copies `from` into the new file `to`, leaving a hole wherever a whole block is zeros: a
/// sparse file stays sparse (and a file of declared zeros costs no disk).
fn copy_keeping_holes(from: &mut impl io::Read, to: &mut File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().all(|b| *b == 0) {
            to.seek(SeekFrom::Current(n as i64))?;
        } else {
            to.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    to.set_len(len)
}

/// Removes `abs` (deleted from the writable layer) or, with `empty_only`, what the directory
/// at `abs` holds (replaced by an opaque one), within `scope`, following nothing below its root.
pub fn remove_in_scope(abs: &str, root: &Path, scope: &Scope, empty_only: bool) -> Result<(), ConfinedError> {
    let refused =
        |why: &str| ConfinedError::Refused { archive: "the manifest".into(), path: abs.into(), why: why.into() };
    let path = Path::new(abs);
    let rel = path.strip_prefix("/").map_err(|_| refused("not absolute"))?;
    plain(rel).map_err(|why| refused(&why))?;
    let scope_root = scope.root_of(path).ok_or_else(|| refused("outside what this configuration puts back"))?;
    let write = |source: io::Error| ConfinedError::Write { path: path.into(), source };
    let here_root = root.join(scope_root.strip_prefix("/").unwrap_or(scope_root));
    let target = root.join(rel);
    if target == here_root {
        return Err(refused("a root of the scope itself"));
    }
    let name = target.file_name().ok_or_else(|| refused("no name"))?.to_owned();
    let parent = target.parent().ok_or_else(|| refused("no parent"))?;
    let dir = match open_dir_below(&here_root, parent, false) {
        Ok(fd) => fd,
        Err(DirError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(DirError::NotADir(why)) => return Err(refused(&why)),
        Err(DirError::Io(e)) => return Err(write(e)),
    };
    if !empty_only {
        return remove_at(&dir, &name).map_err(write);
    }
    let inner = match openat(
        dir.as_fd(),
        name.as_os_str(),
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r.map_err(|e| write(e.into()))?,
    };
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", inner.as_raw_fd())).map_err(write)?;
    for e in listing {
        let e = e.map_err(write)?;
        remove_at(&inner, &e.file_name()).map_err(write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// A tar with the given entries: (path, kind, data or link target, mode).
    fn tar_of(path: &Path, entries: &[(&str, tar::EntryType, &str, u32)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (p, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            // Written raw: the tar crate's set_path refuses `..`, an attacker's tool does not.
            let name = p.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name(data).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.finish().unwrap();
    }

    fn scope(roots: &[&str], excluded: &[&str], keep: bool) -> Scope {
        Scope {
            roots: roots.iter().map(PathBuf::from).collect(),
            excluded: excluded.iter().map(PathBuf::from).collect(),
            keep_special_bits: keep,
        }
    }

    #[test]
    fn entries_land_only_inside_the_scope() {
        let t = TempDir::new("confined");
        let root = t.join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        let a = t.join("a.tar");
        let s = scope(&["/data"], &[], true);
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        // A legitimate archive: the path, a dir, a file, a symlink; setuid kept (configured path).
        tar_of(
            &a,
            &[
                ("data", Directory, "", 0o755),
                ("data/sub", Directory, "", 0o750),
                ("data/sub/x", Regular, "x!", 0o4755),
                ("data/l", Symlink, "/etc/passwd", 0o777),
            ],
        );
        assert_eq!(extract(&a, &root, &s).unwrap(), Extracted { entries: 4, skipped: 0 });
        assert_eq!(std::fs::read(root.join("data/sub/x")).unwrap(), b"x!");
        assert_eq!(std::fs::metadata(root.join("data/sub/x")).unwrap().permissions().mode() & 0o7777, 0o4755);
        assert_eq!(std::fs::read_link(root.join("data/l")).unwrap(), Path::new("/etc/passwd"));
        // Outside the scope, absolute or `..`: refused before anything is written.
        for bad in ["etc/passwd", "../etc/passwd", "data/../etc/passwd", "/etc/passwd", "datax/y"] {
            tar_of(&a, &[(bad, Regular, "owned", 0o644)]);
            let e = extract(&a, &root, &s).unwrap_err().to_string();
            assert!(e.contains("refused"), "{bad}: {e}");
        }
        // Through a symlink the archive planted (or the container had): never followed.
        tar_of(&a, &[("data/evil", Symlink, "/etc", 0o777), ("data/evil/passwd", Regular, "owned", 0o644)]);
        let e = extract(&a, &root, &s).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("never followed"), "{e}");
        let real_etc = root.join("etc");
        std::fs::remove_file(root.join("data/evil")).unwrap();
        symlink(&real_etc, root.join("data/evil")).unwrap();
        assert!(extract(&a, &root, &s).is_err());
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0");
        // A hardlink entry: refused; a file hardlinked to one outside: replaced, not written through.
        tar_of(&a, &[("data/h", Link, "etc/passwd", 0o644)]);
        assert!(extract(&a, &root, &s).unwrap_err().to_string().contains("hardlink"));
        std::fs::hard_link(root.join("etc/passwd"), root.join("data/hl")).unwrap();
        tar_of(&a, &[("data/hl", Regular, "new", 0o644)]);
        extract(&a, &root, &s).unwrap();
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0");
        assert_eq!(std::fs::read(root.join("data/hl")).unwrap(), b"new");
        // Devices are not put back; setuid dropped where the scope does not keep it.
        tar_of(&a, &[("data/dev", tar::EntryType::Char, "", 0o666), ("data/suid", Regular, "s", 0o6755)]);
        let done = extract(&a, &root, &scope(&["/data"], &[], false)).unwrap();
        assert_eq!(done, Extracted { entries: 1, skipped: 1 });
        assert!(!root.join("data/dev").exists());
        assert_eq!(std::fs::metadata(root.join("data/suid")).unwrap().mode() & 0o7777, 0o755);
        // A root made a symlink by the archive: nothing below it.
        tar_of(&a, &[("data", Symlink, "/etc", 0o777), ("data/passwd", Regular, "owned", 0o644)]);
        std::fs::remove_dir_all(root.join("data")).unwrap();
        assert!(extract(&a, &root, &s).unwrap_err().to_string().contains("below a symlink"));
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0");
        std::fs::remove_file(root.join("data")).unwrap();
        // Excluded paths (other mounts) inside a root.
        tar_of(&a, &[("data/vol/x", Regular, "x", 0o644)]);
        assert!(extract(&a, &root, &scope(&["/"], &["/data/vol"], false)).is_err());
    }

    #[test]
    fn sparse_files_come_back_whole_and_sparse() {
        use std::io::{Seek, SeekFrom, Write};
        let t = TempDir::new("confined-sparse");
        let src = t.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut f = File::create(src.join("cache")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
        drop(f);
        let a = t.join("a.tar");
        let mut b = crate::archive::tar_builder(File::create(&a).unwrap());
        b.append_path_with_name(src.join("cache"), "data/cache").unwrap();
        b.into_inner().unwrap();
        let root = t.join("root");
        extract(&a, &root, &scope(&["/data"], &[], false)).unwrap();
        let back = std::fs::read(root.join("data/cache")).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(&back[4 << 20..(4 << 20) + 18], b"data in the middle");
        assert!(back[..4 << 20].iter().all(|b| *b == 0));
        let blocks = std::fs::metadata(root.join("data/cache")).unwrap().blocks();
        assert!(blocks * 512 < 1 << 20, "holes kept: {blocks} blocks");
    }

    #[test]
    fn deletions_stay_inside_the_scope_and_follow_nothing() {
        let t = TempDir::new("confined-rm");
        let root = t.join("root");
        std::fs::create_dir_all(root.join("app/opaque/in")).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        std::fs::write(root.join("outside/keep"), "k").unwrap();
        std::fs::write(root.join("app/gone"), "g").unwrap();
        symlink(root.join("outside"), root.join("app/link")).unwrap();
        let s = scope(&["/"], &["/vol"], false);
        remove_in_scope("/app/gone", &root, &s, false).unwrap();
        assert!(!root.join("app/gone").exists());
        remove_in_scope("/app/opaque", &root, &s, true).unwrap();
        assert!(root.join("app/opaque").is_dir() && !root.join("app/opaque/in").exists());
        // Through a symlink: refused; the link itself may go, never what it points to.
        assert!(remove_in_scope("/app/link/keep", &root, &s, false).is_err());
        remove_in_scope("/app/link", &root, &s, true).unwrap_err();
        remove_in_scope("/app/link", &root, &s, false).unwrap();
        assert_eq!(std::fs::read(root.join("outside/keep")).unwrap(), b"k");
        for bad in ["/", "relative", "/app/../outside", "/vol/x"] {
            assert!(remove_in_scope(bad, &root, &s, false).is_err(), "{bad}");
        }
    }
}
