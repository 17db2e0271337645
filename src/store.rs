//! The image store: crik's on-disk layout inside `imageDir`, and atomic publishing.
//!
//! ```text
//! imageDir/                       0700, owned by crik's user
//! ├── lock                        flock()ed by the crik using this store
//! ├── staging/<id>/               a checkpoint being written; never restored
//! ├── checkpoints/<id>/           published, complete checkpoints (newest id wins)
//! │   ├── images/                 CRIU's image files and its dump/restore logs
//! │   ├── files.tar               additionalPaths, when configured
//! │   ├── rootfs.tar              the container's writable layer (captureRootfsDiff)
//! │   └── manifest.json           written last (fsynced); its presence marks completeness
//! ├── retired/<id>/               checkpoints already restored once (history)
//! └── quarantine/<id>/            checkpoints that failed to restore, with CRIU's log
//! ```
//!
//! A checkpoint is built in `staging/`, every file and directory fsynced, the manifest written
//! last, then `rename(2)`d into `checkpoints/` and the parent fsynced. A crash at any point
//! leaves either the previous good checkpoint or the new one published, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::manifest::{FileSum, Manifest, MANIFEST_FILE};

pub const IMAGES_DIR: &str = "images";
pub const FILES_ARCHIVE: &str = "files.tar";
const STAGING: &str = "staging";
const PUBLISHED: &str = "checkpoints";
const RETIRED: &str = "retired";
const QUARANTINE: &str = "quarantine";
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: io::Error },
    #[error("image dir {path} is in use by another crik (lock held on {path}/lock)")]
    Locked { path: PathBuf },
    #[error("image dir {path} is unsafe: {why} (a forged checkpoint would run as crik's user)")]
    Unsafe { path: PathBuf, why: String },
    #[error("checkpoint {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { step, path: path.to_path_buf(), source }
}

/// An image dir, locked for this crik for as long as the value lives.
pub struct Store {
    root: PathBuf,
    _lock: File,
}

/// A checkpoint directory, staged or published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: String,
    pub dir: PathBuf,
}

impl Checkpoint {
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join(IMAGES_DIR)
    }
    pub fn files_archive(&self) -> PathBuf {
        self.dir.join(FILES_ARCHIVE)
    }
    pub fn restore_log(&self) -> PathBuf {
        self.images_dir().join(crate::criu::RESTORE_LOG)
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
}

impl Store {
    /// Opens (creating it 0700 if needed) and locks the image dir. Refuses a dir another user
    /// owns or others can write to.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io_err("create", root))?;
        check_ownership(root)?;
        for sub in [STAGING, PUBLISHED, RETIRED, QUARANTINE] {
            let p = root.join(sub);
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&p).map_err(io_err("create", &p))?;
        }
        let lock_path = root.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::Locked { path: root.to_path_buf() });
            }
            return Err(StoreError::Io { step: "lock", path: lock_path, source: e });
        }
        let store = Store { root: root.to_path_buf(), _lock: lock };
        store.discard_staging();
        Ok(store)
    }

    /// Leftovers in staging/ are checkpoints a killed crik never finished: never restorable.
    fn discard_staging(&self) {
        for c in self.list(STAGING) {
            log::warn!("discarding unfinished checkpoint {} (crik stopped while writing it)", c.dir.display());
            if let Err(e) = fs::remove_dir_all(&c.dir) {
                log::warn!("cannot remove {}: {e}", c.dir.display());
            }
        }
    }

    /// Starts a new checkpoint in staging/.
    pub fn stage(&self) -> Result<Checkpoint, StoreError> {
        let base = new_id(SystemTime::now());
        let mut id = base.clone();
        let mut n = 1;
        while self.root.join(STAGING).join(&id).exists() || self.root.join(PUBLISHED).join(&id).exists() {
            n += 1;
            id = format!("{base}-{n}");
        }
        let dir = self.root.join(STAGING).join(&id);
        let images = dir.join(IMAGES_DIR);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&images).map_err(io_err("create", &images))?;
        Ok(Checkpoint { id, dir })
    }

    /// Makes a staged checkpoint durable and publishes it with one rename. The manifest, with
    /// the size and checksum of every file, is written last: a published checkpoint always has one.
    pub fn publish(&self, staged: &Checkpoint, mut manifest: Manifest) -> Result<Checkpoint, StoreError> {
        manifest.files = seal_tree(&staged.dir)?;
        write_file_durably(&staged.manifest_path(), manifest.to_json().as_bytes())?;
        let target = self.root.join(PUBLISHED).join(&staged.id);
        fs::rename(&staged.dir, &target).map_err(io_err("publish (rename)", &target))?;
        sync_dir(&self.root.join(PUBLISHED))?;
        sync_dir(&self.root.join(STAGING))?;
        Ok(Checkpoint { id: staged.id.clone(), dir: target })
    }

    /// Removes a staged checkpoint that failed.
    pub fn discard(&self, staged: &Checkpoint) {
        if let Err(e) = fs::remove_dir_all(&staged.dir) {
            log::warn!("cannot remove {}: {e}", staged.dir.display());
        }
    }

    /// The newest published checkpoint, if any.
    pub fn latest(&self) -> Option<Checkpoint> {
        self.list(PUBLISHED).into_iter().rfind(|c| c.manifest_path().is_file())
    }

    /// Older published checkpoints than `keep` are retired once a newer one is published.
    pub fn retire_all_but(&self, keep: &Checkpoint, history: usize) {
        for c in self.list(PUBLISHED) {
            if c.id != keep.id {
                let _ = self.move_to(&c, RETIRED);
            }
        }
        self.prune(RETIRED, history);
    }

    /// Retires the published checkpoints with these ids; returns how many were still published.
    pub fn retire_ids(&self, ids: &[String], history: usize) -> usize {
        let mut n = 0;
        for c in self.list(PUBLISHED).iter().filter(|c| ids.contains(&c.id)) {
            match self.move_to(c, RETIRED) {
                Ok(_) => n += 1,
                Err(e) => log::warn!("cannot retire {}: {e}", c.dir.display()),
            }
        }
        self.prune(RETIRED, history);
        n
    }

    /// Moves a checkpoint that was restored into retired/, keeping `history` of them.
    pub fn retire(&self, c: &Checkpoint, history: usize) -> Result<Checkpoint, StoreError> {
        let moved = self.move_to(c, RETIRED)?;
        self.prune(RETIRED, history);
        Ok(moved)
    }

    /// Moves a checkpoint that failed to restore into quarantine/, so it is never retried.
    pub fn quarantine(&self, c: &Checkpoint) -> Result<Checkpoint, StoreError> {
        self.move_to(c, QUARANTINE)
    }

    pub fn retired(&self) -> Vec<Checkpoint> {
        self.list(RETIRED)
    }
    pub fn quarantined(&self) -> Vec<Checkpoint> {
        self.list(QUARANTINE)
    }

    fn move_to(&self, c: &Checkpoint, area: &str) -> Result<Checkpoint, StoreError> {
        let target = self.root.join(area).join(&c.id);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_err("remove", &target))?;
        }
        fs::rename(&c.dir, &target).map_err(io_err("move", &target))?;
        if let Some(parent) = c.dir.parent() {
            sync_dir(parent)?;
        }
        sync_dir(&self.root.join(area))?;
        Ok(Checkpoint { id: c.id.clone(), dir: target })
    }

    fn prune(&self, area: &str, keep: usize) {
        let all = self.list(area);
        let extra = all.len().saturating_sub(keep);
        for c in &all[..extra] {
            if let Err(e) = fs::remove_dir_all(&c.dir) {
                log::warn!("cannot remove old checkpoint {}: {e}", c.dir.display());
            }
        }
    }

    /// Checkpoints in one area, oldest first (ids sort by time).
    fn list(&self, area: &str) -> Vec<Checkpoint> {
        list_area(&self.root, area)
    }
}

/// Where a checkpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Partial,
    Complete,
    Retired,
    Quarantined,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Partial => "partial",
            State::Complete => "complete",
            State::Retired => "retired",
            State::Quarantined => "quarantined",
        }
    }
}

/// Every checkpoint under an image dir with its state, oldest first. Read-only (no lock):
/// for `crik inspect`.
pub fn list_all(root: &Path) -> Vec<(State, Checkpoint)> {
    let areas = [
        (STAGING, State::Partial),
        (PUBLISHED, State::Complete),
        (RETIRED, State::Retired),
        (QUARANTINE, State::Quarantined),
    ];
    let mut v: Vec<(State, Checkpoint)> =
        areas.iter().flat_map(|(area, state)| list_area(root, area).into_iter().map(move |c| (*state, c))).collect();
    v.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    v
}

/// Checkpoints in one area of an image dir, oldest first (ids sort by time).
fn list_area(root: &Path, area: &str) -> Vec<Checkpoint> {
    let mut v: Vec<Checkpoint> = match fs::read_dir(root.join(area)) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| Checkpoint { id: e.file_name().to_string_lossy().into_owned(), dir: e.path() })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// A checkpoint id: its UTC creation time, which sorts in time order ("20261125T152416.123Z").
pub fn new_id(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// A checkpoint holds the app's whole memory, secrets included, and restoring it runs code as
/// crik's user: refuse a dir that another user owns or that others can write.
fn check_ownership(root: &Path) -> Result<(), StoreError> {
    let md = fs::metadata(root).map_err(io_err("stat", root))?;
    // SAFETY: geteuid never fails.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(StoreError::Unsafe {
            path: root.to_path_buf(),
            why: format!("owned by uid {}, crik runs as uid {me}", md.uid()),
        });
    }
    if md.permissions().mode() & 0o022 != 0 {
        return Err(StoreError::Unsafe {
            path: root.to_path_buf(),
            why: format!("group or others can write to it (mode {:o})", md.permissions().mode() & 0o7777),
        });
    }
    // Read access for others is not forgery, but the images hold secrets: tighten it.
    if md.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", root))?;
    }
    Ok(())
}

/// Writes a whole file, 0600, and fsyncs it.
pub fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err("fsync", dir))
}

/// Seals a staged checkpoint: every file made 0600 and every directory 0700 (CRIU creates
/// images 0644; they hold the app's secrets), each file checksummed, everything fsynced
/// (CRIU writes without fsync). Returns the files' sums, sorted by path.
fn seal_tree(dir: &Path) -> Result<Vec<FileSum>, StoreError> {
    let mut sums = Vec::new();
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry.map_err(|e| StoreError::Io { step: "walk", path: dir.to_path_buf(), source: e.into() })?;
        let p = entry.path();
        if entry.file_type().is_file() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", p))?;
            let (size, crc32) = checksum(p, cores())?;
            let f = File::open(p).map_err(io_err("open", p))?;
            f.sync_all().map_err(io_err("fsync", p))?;
            let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
            sums.push(FileSum { path: rel, size, crc32 });
        } else if entry.file_type().is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", p))?;
            File::open(p).and_then(|f| f.sync_all()).map_err(io_err("fsync", p))?;
        }
    }
    sums.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(sums)
}

/// Size and CRC-32 of a file. Mapped rather than read: no copy through a buffer, several
/// times faster on a GiB of pages (this runs on every checkpoint and restore).
fn checksum(p: &Path, threads: usize) -> Result<(u64, u32), StoreError> {
    let f = File::open(p).map_err(io_err("open", p))?;
    let size = f.metadata().map_err(io_err("stat", p))?.len();
    if size == 0 {
        return Ok((0, crc32fast::hash(&[])));
    }
    // SAFETY: checkpoint files are not modified while crik holds the image dir's lock (CRIU is
    // done with them); a file truncated behind our back would raise SIGBUS, not corrupt data.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err("map", p))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok((size, parallel_crc32(&map, threads)))
}

/// Cores to hash on, asked once: available_parallelism reads cgroup files on every call.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(8))
}

/// CRC-32 of a large buffer on up to `threads` threads: slices hashed side by side, their CRCs
/// combined in order. The threads are short-lived and inherit crik's blocked signal mask.
fn parallel_crc32(data: &[u8], threads: usize) -> u32 {
    const MIN_SLICE: usize = 32 << 20;
    let parts = (data.len() / MIN_SLICE).clamp(1, threads.max(1));
    if parts == 1 {
        return crc32fast::hash(data);
    }
    let slice = data.len().div_ceil(parts);
    let hashers: Vec<crc32fast::Hasher> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(slice)
            .map(|chunk| {
                s.spawn(move || {
                    let mut h = crc32fast::Hasher::new();
                    h.update(chunk);
                    h
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("crc thread")).collect()
    });
    let mut it = hashers.into_iter();
    let mut total = it.next().expect("at least one part");
    for h in it {
        total.combine(&h);
    }
    total.finalize()
}

/// What [`verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Presence, size and checksum of every file.
    Everything,
    /// Presence and size of every file; checksums of all but the page images.
    AllButPageContents,
    /// Checksums of the page images only (presence and sizes checked before).
    PageContents,
}

/// Checks that the files the manifest lists are there, with their sizes and checksums, as far
/// as `scope` says. A damaged checkpoint must never reach CRIU, nor a restored app run on it.
pub fn verify(ckpt: &Checkpoint, manifest: &Manifest, scope: Scope) -> Result<(), StoreError> {
    let damaged = |why: String| StoreError::Damaged { path: ckpt.dir.clone(), why };
    if manifest.files.is_empty() {
        return Err(damaged("its manifest lists no files".into()));
    }
    // Page contents are checked while CRIU (single-threaded) restores: leave it a core.
    let threads = if scope == Scope::PageContents { cores().saturating_sub(1) } else { cores() };
    for f in &manifest.files {
        let p = ckpt.dir.join(&f.path);
        if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(damaged(format!("manifest names an unsafe path {:?}", f.path)));
        }
        let md = match fs::metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(damaged(format!("{} is missing", f.path))),
            Err(e) => return Err(StoreError::Io { step: "stat", path: p, source: e }),
        };
        if md.len() != f.size {
            return Err(damaged(format!("{} has {} bytes, {} were written", f.path, md.len(), f.size)));
        }
        let is_pages = f.path.rsplit('/').next().is_some_and(|n| n.starts_with("pages-"));
        let crc_wanted = match scope {
            Scope::Everything => true,
            Scope::AllButPageContents => !is_pages,
            Scope::PageContents => is_pages,
        };
        if !crc_wanted {
            continue;
        }
        let (_, crc) = checksum(&p, threads)?;
        if crc != f.crc32 {
            return Err(damaged(format!("{} has checksum {crc:08x}, {:08x} was written", f.path, f.crc32)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::time::{Duration, UNIX_EPOCH};

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("crik-store-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn parallel_crc_equals_the_plain_one() {
        let data: Vec<u8> = (0..(100u32 << 20) / 4).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        for threads in [0, 1, 2, 3, 8] {
            assert_eq!(parallel_crc32(&data, threads), crc32fast::hash(&data), "{threads} threads");
        }
        assert_eq!(parallel_crc32(&data[..1000], 2), crc32fast::hash(&data[..1000]));
        assert_eq!(parallel_crc32(&[], 2), crc32fast::hash(&[]));
    }

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000));
        let b = new_id(UNIX_EPOCH + Duration::from_millis(1_700_000_000_001));
        let c = new_id(UNIX_EPOCH + Duration::from_millis(1_800_000_000_000));
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a, "20231114T221320.000Z");
    }

    #[test]
    fn staged_checkpoint_is_invisible_until_published() {
        let root = tmp("publish");
        let store = Store::open(&root).unwrap();
        assert!(store.latest().is_none());
        let staged = store.stage().unwrap();
        fs::write(staged.images_dir().join("x.img"), b"data").unwrap();
        assert!(store.latest().is_none(), "a staged checkpoint must not be restorable");
        let published = store.publish(&staged, Manifest::for_tests()).unwrap();
        assert_eq!(store.latest(), Some(published.clone()));
        assert!(published.manifest_path().is_file());
        assert!(!staged.dir.exists());
        let md = fs::metadata(&root).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn published_files_are_private_and_verified() {
        let root = tmp("verify");
        let store = Store::open(&root).unwrap();
        let staged = store.stage().unwrap();
        fs::write(staged.images_dir().join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        fs::write(staged.images_dir().join("core-1.img"), b"core").unwrap();
        let c = store.publish(&staged, Manifest::for_tests()).unwrap();
        let m = Manifest::load(&c.manifest_path()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[1].path, "images/pages-1.img");
        assert_eq!(m.files[1].size, 10_000);
        for f in &m.files {
            let mode = fs::metadata(c.dir.join(&f.path)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.path);
        }
        verify(&c, &m, Scope::Everything).unwrap();

        // Truncated, flipped, missing: each refused with a reason.
        let pages = c.images_dir().join("pages-1.img");
        fs::write(&pages, vec![7u8; 5_000]).unwrap();
        assert!(verify(&c, &m, Scope::Everything).unwrap_err().to_string().contains("5000 bytes"));
        assert!(
            verify(&c, &m, Scope::AllButPageContents).unwrap_err().to_string().contains("5000 bytes"),
            "sizes are always checked"
        );
        let mut flipped = vec![7u8; 10_000];
        flipped[1234] = 8;
        fs::write(&pages, flipped).unwrap();
        assert!(verify(&c, &m, Scope::Everything).unwrap_err().to_string().contains("checksum"));
        assert!(verify(&c, &m, Scope::PageContents).unwrap_err().to_string().contains("checksum"));
        verify(&c, &m, Scope::AllButPageContents).unwrap();
        fs::remove_file(&pages).unwrap();
        assert!(verify(&c, &m, Scope::Everything).unwrap_err().to_string().contains("missing"));
        let no_files = Manifest { files: vec![], ..m };
        assert!(verify(&c, &no_files, Scope::Everything).is_err());
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn leftover_staging_is_discarded_and_previous_checkpoint_kept() {
        let root = tmp("leftover");
        let store = Store::open(&root).unwrap();
        let first = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap();
        let partial = store.stage().unwrap();
        drop(store);
        let store = Store::open(&root).unwrap();
        assert!(!partial.dir.exists());
        assert_eq!(store.latest(), Some(first));
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn second_store_on_same_dir_is_refused() {
        let root = tmp("lock");
        let store = Store::open(&root).unwrap();
        match Store::open(&root) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        drop(store);
        assert!(Store::open(&root).is_ok());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn world_writable_dir_is_refused() {
        let root = tmp("unsafe");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        match Store::open(&root) {
            Err(StoreError::Unsafe { why, .. }) => assert!(why.contains("write"), "{why}"),
            other => panic!("expected Unsafe, got {:?}", other.err()),
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn retire_keeps_history_and_quarantine_hides() {
        let root = tmp("retire");
        let store = Store::open(&root).unwrap();
        let a = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap();
        assert_eq!(store.latest(), Some(b.clone()));
        store.retire_all_but(&b, 1);
        assert_eq!(store.retired().len(), 1);
        assert_eq!(store.retired()[0].id, a.id);
        store.retire(&b, 1).unwrap();
        assert_eq!(store.retired().len(), 1);
        assert_eq!(store.retired()[0].id, b.id);
        assert!(store.latest().is_none());
        let c = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap();
        store.quarantine(&c).unwrap();
        assert!(store.latest().is_none());
        assert_eq!(store.quarantined().len(), 1);
        drop(store);
        fs::remove_dir_all(&root).unwrap();
    }
}
