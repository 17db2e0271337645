//! The image store: crik's on-disk layout inside `imageDir`, and atomic publishing.
//!
//! Its layout is drawn in [`crate::layout`].
//!
//! A checkpoint is built in `staging/`, every file and directory fsynced, the manifest written
//! last, then `rename(2)`d into `checkpoints/` and the parent fsynced. A crash at any point
//! leaves either the previous good checkpoint or the new one published, never a partial one.

pub mod integrity;
pub mod manifest;
pub mod staging;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use crate::layout::{is_valid_id, new_id};
use crate::layout::{CHECKPOINTS, FILES_ARCHIVE, IMAGES_DIR, LOCK, MANIFEST_FILE, QUARANTINE, RETIRED, STAGING};
use crate::store::manifest::{FileSum, Manifest};
use integrity::IntegrityError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: io::Error },
    #[error("image dir {path} is in use by another crik (lock held on {path}/lock)")]
    Locked { path: PathBuf },
    #[error("image dir {path} is unsafe: {why} (a forged checkpoint would run as crik's user)")]
    Unsafe { path: PathBuf, why: String },
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { step, path: path.to_path_buf(), source }
}

/// Where a checkpoint is written before it is published or uploaded: the image dir's
/// `staging/` ([`Store`]) or a memory-backed dir ([`staging::MemoryStaging`]).
pub trait Staging {
    /// A new, empty checkpoint dir (with its images dir) under a fresh id.
    fn stage(&self) -> Result<Checkpoint, StoreError>;
    /// Removes a staged checkpoint that failed or is no longer needed.
    fn discard(&self, staged: &Checkpoint);
}

/// A new checkpoint dir in `dir`, 0700, with its images dir, under an id made of the current
/// time (and a `-N` suffix when `taken` says the id is in use).
fn stage_in(dir: &Path, taken: impl Fn(&str) -> bool) -> Result<Checkpoint, StoreError> {
    let base = new_id(SystemTime::now());
    let (mut id, mut n) = (base.clone(), 1);
    while taken(&id) {
        n += 1;
        id = format!("{base}-{n}");
    }
    let dir = dir.join(&id);
    let images = dir.join(IMAGES_DIR);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&images).map_err(io_err("create", &images))?;
    Ok(Checkpoint { id, dir })
}

/// Removes what a crik killed while staging left in `dir`: never restorable. Only checkpoint
/// dirs (valid ids) are crik's to remove.
fn discard_leftovers(dir: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for e in entries {
        let e = e.map_err(io_err("list", dir))?;
        if is_valid_id(&e.file_name().to_string_lossy()) && e.path().is_dir() {
            log::warn!("discarding unfinished checkpoint {} (crik stopped while writing it)", e.path().display());
            remove_or_warn(&e.path());
        }
    }
    Ok(())
}

fn remove_or_warn(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        log::warn!("cannot remove {}: {e}", dir.display());
    }
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
        self.images_dir().join(crate::layout::RESTORE_LOG)
    }
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
}

impl Staging for Store {
    /// A new checkpoint in staging/.
    fn stage(&self) -> Result<Checkpoint, StoreError> {
        let root = &self.root;
        stage_in(&root.join(STAGING), |id| {
            root.join(STAGING).join(id).exists() || root.join(CHECKPOINTS).join(id).exists()
        })
    }

    fn discard(&self, staged: &Checkpoint) {
        remove_or_warn(&staged.dir);
    }
}

impl Store {
    /// Opens (creating it 0700 if needed) and locks the image dir. Refuses a dir another user
    /// owns or others can write to.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io_err("create", root))?;
        check_ownership(root)?;
        for sub in [STAGING, CHECKPOINTS, RETIRED, QUARANTINE] {
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
        discard_leftovers(&root.join(STAGING))?;
        Ok(Store { root: root.to_path_buf(), _lock: lock })
    }

    /// Makes a staged checkpoint durable and publishes it with one rename. The manifest, with
    /// the size and checksum of every file, is written last: a published checkpoint always has
    /// one. Returns it as written (with the files' sums).
    pub fn publish(&self, staged: &Checkpoint, manifest: Manifest) -> Result<(Checkpoint, Manifest), StoreError> {
        let manifest = seal(staged, manifest)?;
        let target = self.root.join(CHECKPOINTS).join(&staged.id);
        fs::rename(&staged.dir, &target).map_err(io_err("publish (rename)", &target))?;
        sync_dir(&self.root.join(CHECKPOINTS))?;
        sync_dir(&self.root.join(STAGING))?;
        Ok((Checkpoint { id: staged.id.clone(), dir: target }, manifest))
    }

    /// Starts a staged checkpoint under a given id: one downloaded from object storage keeps
    /// the id it has there.
    pub fn stage_as(&self, id: &str) -> Result<Checkpoint, StoreError> {
        if !is_valid_id(id) {
            return Err(StoreError::Unsafe {
                path: self.root.join(STAGING),
                why: format!("{id:?} is not a checkpoint id"),
            });
        }
        let dir = self.root.join(STAGING).join(id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err("create", &dir))?;
        Ok(Checkpoint { id: id.into(), dir })
    }

    /// Publishes a staged checkpoint whose files were written durably with their manifest's
    /// sums already known (a download: checked against it before the restore, like any other).
    /// A published checkpoint of the same id (an older local copy) is replaced.
    pub fn publish_as_is(&self, staged: &Checkpoint, manifest: &Manifest) -> Result<Checkpoint, StoreError> {
        write_file_durably(&staged.manifest_path(), manifest.to_json().as_bytes())?;
        for sub in walkdir::WalkDir::new(&staged.dir).into_iter().filter_map(Result::ok) {
            if sub.file_type().is_dir() {
                sync_dir(sub.path())?;
            }
        }
        let target = self.root.join(CHECKPOINTS).join(&staged.id);
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_err("remove", &target))?;
        }
        fs::rename(&staged.dir, &target).map_err(io_err("publish (rename)", &target))?;
        sync_dir(&self.root.join(CHECKPOINTS))?;
        sync_dir(&self.root.join(STAGING))?;
        Ok(Checkpoint { id: staged.id.clone(), dir: target })
    }

    /// Copies a checkpoint sealed outside the image dir (memory staging, see
    /// [`crate::store::staging`]) into it, durably, and publishes it.
    pub fn publish_copy(&self, sealed: &Checkpoint, manifest: &Manifest) -> Result<Checkpoint, StoreError> {
        let staged = self.stage_as(&sealed.id)?;
        let copied = (|| {
            for f in &manifest.files {
                let (from, to) = (sealed.dir.join(&f.path), staged.dir.join(&f.path));
                if let Some(parent) = to.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(io_err("create", parent))?;
                }
                fs::copy(&from, &to).map_err(io_err("copy", &from))?;
                File::open(&to).and_then(|f| f.sync_all()).map_err(io_err("fsync", &to))?;
            }
            self.publish_as_is(&staged, manifest)
        })();
        if copied.is_err() {
            self.discard(&staged);
        }
        copied
    }

    /// The image dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Manifests of the published and retired checkpoints, newest first: what earlier
    /// checkpoints of this app cost (see [`crate::lifecycle::plan`]). Unreadable ones are skipped.
    pub fn history(&self) -> Vec<Manifest> {
        let mut all: Vec<Checkpoint> = self.list_or_warn(CHECKPOINTS);
        all.extend(self.list_or_warn(RETIRED));
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all.iter().filter_map(|c| Manifest::load(&c.manifest_path()).ok()).collect()
    }

    /// The newest published checkpoint, if any. A store that cannot be read is an error, never
    /// "no checkpoint": starting the app fresh would replace the state that is there.
    pub fn latest(&self) -> Result<Option<Checkpoint>, StoreError> {
        for c in self.list(CHECKPOINTS)?.into_iter().rev() {
            let manifest = c.manifest_path();
            match fs::metadata(&manifest) {
                Ok(md) if md.is_file() => return Ok(Some(c)),
                Ok(_) => log::warn!("{} is not a file: skipping checkpoint {}", manifest.display(), c.id),
                // Published without a manifest cannot happen (it is written before the rename);
                // a copy made by hand might. Not restorable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::warn!("checkpoint {} has no manifest: skipping it", c.dir.display())
                }
                Err(e) => return Err(StoreError::Io { step: "stat", path: manifest, source: e }),
            }
        }
        Ok(None)
    }

    /// Retires the published checkpoints `which` picks, keeping `history` retired ones;
    /// returns how many it moved. Housekeeping after a checkpoint already made: a failure is
    /// logged, never returned. (Older ones once a newer one is published, all of them once a
    /// newer one is in object storage only, a run's own periodic ones once its app exited.)
    pub fn retire_where(&self, which: impl Fn(&Checkpoint) -> bool, history: usize) -> usize {
        let mut n = 0;
        for c in self.list_or_warn(CHECKPOINTS).iter().filter(|c| which(c)) {
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
        let all = self.list_or_warn(area);
        let extra = all.len().saturating_sub(keep);
        for c in &all[..extra] {
            if let Err(e) = fs::remove_dir_all(&c.dir) {
                log::warn!("cannot remove old checkpoint {}: {e}", c.dir.display());
            }
        }
    }

    /// Checkpoints in one area, oldest first (ids sort by time).
    fn list(&self, area: &str) -> Result<Vec<Checkpoint>, StoreError> {
        list_area(&self.root, area)
    }

    /// For housekeeping (retiring, pruning) that must not fail a checkpoint already made:
    /// an unreadable area is logged and left alone.
    fn list_or_warn(&self, area: &str) -> Vec<Checkpoint> {
        self.list(area).unwrap_or_else(|e| {
            log::warn!("cannot list {area}/ for housekeeping: {e}");
            Vec::new()
        })
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
pub fn list_all(root: &Path) -> Result<Vec<(State, Checkpoint)>, StoreError> {
    let areas = [
        (STAGING, State::Partial),
        (CHECKPOINTS, State::Complete),
        (RETIRED, State::Retired),
        (QUARANTINE, State::Quarantined),
    ];
    let mut v = Vec::new();
    for (area, state) in areas {
        v.extend(list_area(root, area)?.into_iter().map(|c| (state, c)));
    }
    v.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(v)
}

/// Checkpoints in one area of an image dir, oldest first (ids sort by time). An area that
/// does not exist (yet) is empty; one that cannot be read is an error.
fn list_area(root: &Path, area: &str) -> Result<Vec<Checkpoint>, StoreError> {
    let dir = root.join(area);
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::Io { step: "list", path: dir, source: e }),
    };
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("list", &dir))?;
        if e.file_type().map_err(io_err("stat", &e.path()))?.is_dir() {
            v.push(Checkpoint { id: e.file_name().to_string_lossy().into_owned(), dir: e.path() });
        }
    }
    v.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(v)
}

/// A checkpoint holds the app's whole memory, secrets included, and restoring it runs code as
/// crik's user: refuse a dir that another user owns or that others can write.
pub(crate) fn check_ownership(root: &Path) -> Result<(), StoreError> {
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

/// Seals a staged checkpoint where it is (every file's sum, everything fsynced) and writes its
/// manifest, last; returns the manifest as written.
pub fn seal(staged: &Checkpoint, mut manifest: Manifest) -> Result<Manifest, StoreError> {
    let sealing = std::time::Instant::now();
    manifest.files = seal_tree(&staged.dir, true)?;
    manifest.seal_millis = sealing.elapsed().as_millis() as u64;
    write_file_durably(&staged.manifest_path(), manifest.to_json().as_bytes())?;
    Ok(manifest)
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

/// Drops the page cache of every file under `dir` (their pages are clean: fsynced, or only
/// ever read). A dump into the image dir writes as much page cache as the app has memory, and
/// a restore reads as much: charged to the container's memory cgroup, it would press the app
/// toward its limit until the kernel reclaims it. Best effort: a file that cannot be opened
/// keeps its cache.
pub fn drop_page_cache(dir: &Path) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        if let Ok(f) = File::open(entry.path()) {
            let _ = posix_fadvise(&f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
    }
}

/// The sums of every file under `dir`, sorted by path, without making them durable: for files
/// that are uploaded, never kept (a streamed checkpoint's small images).
pub fn sums(dir: &Path) -> Result<Vec<FileSum>, StoreError> {
    seal_tree(dir, false)
}

/// Seals a staged checkpoint: every file made 0600 and every directory 0700 (CRIU creates
/// images 0644; they hold the app's secrets), each file checksummed, everything fsynced
/// (CRIU writes without fsync). Returns the files' sums, sorted by path. Not `durable`: the
/// sums only.
fn seal_tree(dir: &Path, durable: bool) -> Result<Vec<FileSum>, StoreError> {
    let mut sums = Vec::new();
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry.map_err(|e| StoreError::Io { step: "walk", path: dir.to_path_buf(), source: e.into() })?;
        let p = entry.path();
        if entry.file_type().is_file() {
            if durable {
                fs::set_permissions(p, fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", p))?;
            }
            let (size, crc32) = integrity::checksum(p)?;
            if durable {
                let f = File::open(p).map_err(io_err("open", p))?;
                f.sync_all().map_err(io_err("fsync", p))?;
            }
            let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
            sums.push(FileSum { path: rel, size, crc32 });
        } else if entry.file_type().is_dir() && durable {
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", p))?;
            File::open(p).and_then(|f| f.sync_all()).map_err(io_err("fsync", p))?;
        }
    }
    sums.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::integrity::{verify, Scope};
    use crate::store::manifest::Manifest;
    use crate::testing::TempDir;
    use std::time::{Duration, UNIX_EPOCH};

    fn tmp(name: &str) -> TempDir {
        TempDir::new(&format!("store-{name}"))
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
        assert!(store.latest().unwrap().is_none());
        let staged = store.stage().unwrap();
        fs::write(staged.images_dir().join("x.img"), b"data").unwrap();
        assert!(store.latest().unwrap().is_none(), "a staged checkpoint must not be restorable");
        let published = store.publish(&staged, Manifest::for_tests()).unwrap().0;
        assert_eq!(store.latest().unwrap(), Some(published.clone()));
        assert!(published.manifest_path().is_file());
        assert!(!staged.dir.exists());
        let md = fs::metadata(&root).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        drop(store);
    }

    #[test]
    fn published_files_are_private_and_verified() {
        let root = tmp("verify");
        let store = Store::open(&root).unwrap();
        let staged = store.stage().unwrap();
        fs::write(staged.images_dir().join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        fs::write(staged.images_dir().join("core-1.img"), b"core").unwrap();
        let c = store.publish(&staged, Manifest::for_tests()).unwrap().0;
        let m = Manifest::load(&c.manifest_path()).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[1].path, "images/pages-1.img");
        assert_eq!(m.files[1].size, 10_000);
        for f in &m.files {
            let mode = fs::metadata(c.dir.join(&f.path)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.path);
        }
        verify(&c.dir, &m, Scope::Everything).unwrap();

        // Truncated, flipped, missing: each refused with a reason.
        let pages = c.images_dir().join("pages-1.img");
        fs::write(&pages, vec![7u8; 5_000]).unwrap();
        assert!(verify(&c.dir, &m, Scope::Everything).unwrap_err().to_string().contains("5000 bytes"));
        assert!(
            verify(&c.dir, &m, Scope::AllButPageContents).unwrap_err().to_string().contains("5000 bytes"),
            "sizes are always checked"
        );
        let mut flipped = vec![7u8; 10_000];
        flipped[1234] = 8;
        fs::write(&pages, flipped).unwrap();
        assert!(verify(&c.dir, &m, Scope::Everything).unwrap_err().to_string().contains("checksum"));
        assert!(verify(&c.dir, &m, Scope::PageContents).unwrap_err().to_string().contains("checksum"));
        verify(&c.dir, &m, Scope::AllButPageContents).unwrap();
        fs::remove_file(&pages).unwrap();
        assert!(verify(&c.dir, &m, Scope::Everything).unwrap_err().to_string().contains("missing"));
        let no_files = Manifest { files: vec![], ..m };
        assert!(verify(&c.dir, &no_files, Scope::Everything).is_err());
        drop(store);
    }

    #[test]
    fn leftover_staging_is_discarded_and_previous_checkpoint_kept() {
        let root = tmp("leftover");
        let store = Store::open(&root).unwrap();
        let first = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap().0;
        let partial = store.stage().unwrap();
        drop(store);
        let store = Store::open(&root).unwrap();
        assert!(!partial.dir.exists());
        assert_eq!(store.latest().unwrap(), Some(first));
        drop(store);
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
    }

    #[test]
    fn retire_keeps_history_and_quarantine_hides() {
        let root = tmp("retire");
        let store = Store::open(&root).unwrap();
        let a = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap().0;
        std::thread::sleep(Duration::from_millis(2));
        let b = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap().0;
        assert_eq!(store.latest().unwrap(), Some(b.clone()));
        store.retire_where(|c| c.id != b.id, 1);
        assert_eq!(store.list(RETIRED).unwrap().len(), 1);
        assert_eq!(store.list(RETIRED).unwrap()[0].id, a.id);
        store.retire(&b, 1).unwrap();
        assert_eq!(store.list(RETIRED).unwrap().len(), 1);
        assert_eq!(store.list(RETIRED).unwrap()[0].id, b.id);
        assert!(store.latest().unwrap().is_none());
        let c = store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap().0;
        store.quarantine(&c).unwrap();
        assert!(store.latest().unwrap().is_none());
        assert_eq!(store.list(QUARANTINE).unwrap().len(), 1);
        drop(store);
    }

    #[test]
    fn an_unreadable_area_is_an_error_not_an_empty_store() {
        let root = tmp("unreadable");
        let store = Store::open(&root).unwrap();
        store.publish(&store.stage().unwrap(), Manifest::for_tests()).unwrap();
        // A loop where checkpoints/ was: listing fails (ELOOP), as on a flaky volume.
        fs::rename(root.join(CHECKPOINTS), root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(CHECKPOINTS, root.join(CHECKPOINTS)).unwrap();
        let e = store.latest().unwrap_err().to_string();
        assert!(e.contains("list") && e.contains("checkpoints"), "{e}");
        // A published checkpoint whose manifest cannot be examined is an error too.
        fs::remove_file(root.join(CHECKPOINTS)).unwrap();
        fs::rename(root.join("elsewhere"), root.join(CHECKPOINTS)).unwrap();
        let c = store.latest().unwrap().unwrap();
        fs::remove_file(c.manifest_path()).unwrap();
        std::os::unix::fs::symlink(MANIFEST_FILE, c.manifest_path()).unwrap();
        let e = store.latest().unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        drop(store);
    }
}
