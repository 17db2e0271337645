//! The image store: crik's on-disk layout inside `imageDir`, and atomic publishing.
//!
//! Its layout is drawn in [`crate::layout`].
//!
//! A checkpoint is built in `staging/`, every file and directory fsynced, the manifest written
//! last, then `rename(2)`d into `checkpoints/` and the parent fsynced. A crash at any point
//! leaves either the previous good checkpoint or the new one published, never a partial one.

pub mod generation;
pub mod integrity;
pub mod manifest;
pub mod staging;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::layout::{is_valid_id, new_id};
use crate::layout::{CHECKPOINTS, FILES_ARCHIVE, IMAGES_DIR, LOCK, MANIFEST_FILE, QUARANTINE, RETIRED, STAGING};
use crate::layout::{GENERATION_FILE, MANIFEST_MAC_FILE};
use crate::seal::{Keys, SealError};
use crate::store::manifest::{FileSum, Manifest};
use generation::Newest;
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
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// A checkpoint sealed with a key crik was not given: a configuration matter (kept), never
    /// damage.
    #[error("checkpoint {path} is {source}")]
    Key { path: PathBuf, source: SealError },
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
    sealing: Option<Sealing>,
    /// The newest generation written or restored here (see [`generation`]).
    newest: Mutex<Newest>,
}

/// What authenticates the image dir's checkpoints (`encryption.keyFiles`): the keys, the
/// identity a checkpoint and the generation record are bound to, and `encryption.maxAge`.
pub struct Sealing {
    pub keys: Arc<Keys>,
    pub identity: String,
    pub max_age: Option<Duration>,
}

/// What a local manifest's MAC is made over (with the identity and the checkpoint's id).
const MANIFEST_MAC_DOMAIN: &str = "crik local manifest v1";
/// A MAC's text is under a hundred bytes.
const MAX_MAC: u64 = 1024;

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
    #[cfg(test)]
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_sealed(root, None)
    }

    /// [`Store::open`], with the image dir's checkpoints authenticated with `sealing`'s keys.
    pub fn open_sealed(root: &Path, sealing: Option<Sealing>) -> Result<Store, StoreError> {
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
        let newest = Mutex::new(newest_recorded(root, sealing.as_ref()));
        Ok(Store { root: root.to_path_buf(), _lock: lock, sealing, newest })
    }

    /// Whether checkpoints here are authenticated (a key is configured): files get digests.
    pub fn is_sealed(&self) -> bool {
        self.sealing.is_some()
    }

    /// What is known of the newest generation (see [`generation`]).
    pub fn newest(&self) -> Newest {
        *self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the next checkpoint: one more than the newest known, and no less than
    /// the time in milliseconds. The time matters where the newest is not known: a run that
    /// could not read storage at start still numbers its checkpoints above the ones already
    /// there (taken earlier), so a later start does not take its newer state for a rollback.
    pub fn next_generation(&self) -> u64 {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.newest().generation.saturating_add(1).max(now)
    }

    /// Takes note of generation `g`, written or restored by this crik, or found in a record
    /// (`authentic`: its MAC checked; with a key, nothing else counts), and records it.
    pub fn adopt_generation(&self, g: u64, authentic: bool) {
        // 0: no generation (a checkpoint from before them, a record without one).
        if g == 0 || (self.sealing.is_some() && !authentic) {
            return;
        }
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let next = Newest { generation: newest.generation.max(g), trusted: newest.trusted || self.sealing.is_some() };
        if next == *newest {
            return;
        }
        *newest = next;
        let mac = self.sealing.as_ref().map(|s| generation::mac(&s.keys, &s.identity, next.generation));
        let record = generation::Record { generation: next.generation, mac };
        let json = serde_json::to_vec(&record).expect("a record serializes");
        // Written whole, then renamed: a crash leaves the old record or the new one.
        let (tmp, p) = (self.root.join(format!("{GENERATION_FILE}.new")), self.root.join(GENERATION_FILE));
        if let Err(e) =
            write_file_durably(&tmp, &json).and_then(|()| fs::rename(&tmp, &p).map_err(io_err("rename", &p)))
        {
            log::warn!("cannot record generation {} in the image dir: {e}", next.generation);
        }
    }

    /// Whether a checkpoint (its manifest authentic) is fresh enough to restore: never older
    /// than the newest generation on trusted record, nor than `encryption.maxAge` without one.
    /// Without a key, anything goes.
    pub fn check_fresh(&self, m: &Manifest) -> Result<(), generation::Stale> {
        match &self.sealing {
            Some(s) => generation::check_fresh(self.newest(), m.generation, &m.created, s.max_age),
            None => Ok(()),
        }
    }

    /// A checkpoint's manifest, authenticated first when a key is configured: its MAC (made
    /// when it was published here) must check, and every file must have a digest. Damage
    /// otherwise; a MAC of a key crik was not given is [`StoreError::Key`].
    pub fn verified_manifest(&self, c: &Checkpoint) -> Result<Manifest, StoreError> {
        let path = c.manifest_path();
        let bytes = manifest::read_bounded(&path)?;
        if let Some(s) = &self.sealing {
            let damaged = |why: String| IntegrityError::Damaged { path: c.dir.clone(), why };
            let mac_path = c.dir.join(MANIFEST_MAC_FILE);
            let mac = match read_small(&mac_path, MAX_MAC) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(damaged("its manifest has no MAC (written without the key, or altered)".into()).into())
                }
                Err(e) => return Err(StoreError::Io { step: "read", path: mac_path, source: e }),
            };
            match s.keys.check_mac(MANIFEST_MAC_DOMAIN, &[s.identity.as_bytes(), c.id.as_bytes(), &bytes], &mac) {
                Ok(()) => {}
                Err(source @ SealError::UnknownKey(_)) => return Err(StoreError::Key { path: c.dir.clone(), source }),
                Err(e) => return Err(damaged(format!("its manifest is {e}")).into()),
            }
            let m = Manifest::parse(&path, &bytes)?;
            if let Some(f) = m.files.iter().find(|f| f.digest.is_none()) {
                return Err(damaged(format!("{} has no digest", f.path)).into());
            }
            return Ok(m);
        }
        Ok(Manifest::parse(&path, &bytes)?)
    }

    /// `m` with a digest for each of `c`'s files that has none (with a key; as it is without):
    /// for a checkpoint just downloaded, whose bytes were authenticated chunk by chunk. Each
    /// file's size and CRC-32 must be the manifest's.
    pub fn with_digests(&self, c: &Checkpoint, m: &Manifest) -> Result<Manifest, StoreError> {
        let mut m = m.clone();
        if self.sealing.is_none() {
            return Ok(m);
        }
        for f in m.files.iter_mut().filter(|f| f.digest.is_none()) {
            if !integrity::is_safe_relative(&f.path) {
                let why = format!("manifest names an unsafe path {:?}", f.path);
                return Err(IntegrityError::Damaged { path: c.dir.clone(), why }.into());
            }
            let sum = integrity::checksum(&c.dir.join(&f.path), true)?;
            if (sum.size, sum.crc32) != (f.size, f.crc32) {
                let why = format!("{} is not what its manifest says after the download", f.path);
                return Err(IntegrityError::Damaged { path: c.dir.clone(), why }.into());
            }
            f.digest = sum.digest;
        }
        Ok(m)
    }

    /// Writes a checkpoint's manifest (and its MAC, with a key) into its dir, durably: when it
    /// is published here, or downloaded into memory staging to be restored from there.
    pub fn write_manifest(&self, c: &Checkpoint, manifest: &Manifest) -> Result<(), StoreError> {
        let json = manifest.to_json();
        if let Some(s) = &self.sealing {
            let mac =
                s.keys.writer().mac(MANIFEST_MAC_DOMAIN, &[s.identity.as_bytes(), c.id.as_bytes(), json.as_bytes()]);
            write_file_durably(&c.dir.join(MANIFEST_MAC_FILE), format!("{mac}\n").as_bytes())?;
        }
        write_file_durably(&c.manifest_path(), json.as_bytes())
    }

    /// Makes a staged checkpoint durable and publishes it with one rename. The manifest, with
    /// the size and checksum of every file, is written last: a published checkpoint always has
    /// one. Returns it as written (with the files' sums).
    pub fn publish(&self, staged: &Checkpoint, manifest: Manifest) -> Result<(Checkpoint, Manifest), StoreError> {
        let manifest = seal_only(staged, manifest, self.is_sealed())?;
        self.write_manifest(staged, &manifest)?;
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
        self.write_manifest(staged, manifest)?;
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

/// Seals a staged checkpoint where it is (every file's sum, with digests when `strong`,
/// everything fsynced) and writes its manifest, last; returns the manifest as written. (A
/// checkpoint staged in memory: published into the image dir with its MAC by
/// [`Store::publish_copy`].)
pub fn seal(staged: &Checkpoint, manifest: Manifest, strong: bool) -> Result<Manifest, StoreError> {
    let manifest = seal_only(staged, manifest, strong)?;
    write_file_durably(&staged.manifest_path(), manifest.to_json().as_bytes())?;
    Ok(manifest)
}

/// The files' sums into the manifest, everything fsynced.
fn seal_only(staged: &Checkpoint, mut manifest: Manifest, strong: bool) -> Result<Manifest, StoreError> {
    let sealing = std::time::Instant::now();
    manifest.files = seal_tree(&staged.dir, true, strong)?;
    manifest.seal_millis = sealing.elapsed().as_millis() as u64;
    Ok(manifest)
}

/// The newest generation the image dir's record holds, as far as it can be trusted.
fn newest_recorded(root: &Path, sealing: Option<&Sealing>) -> Newest {
    match (generation::read(root), sealing) {
        (Ok(None), _) => Newest::default(),
        (Ok(Some(r)), None) => Newest { generation: r.generation, trusted: false },
        (Ok(Some(r)), Some(s)) => {
            match r.mac.as_deref().map(|m| generation::check(&s.keys, &s.identity, r.generation, m)) {
                Some(Ok(())) => Newest { generation: r.generation, trusted: true },
                Some(Err(e)) => {
                    log::error!(
                        "the image dir's record of the newest generation is {e}: ignored (rollback is checked by \
                         the lease, or encryption.maxAge)"
                    );
                    Newest::default()
                }
                None => {
                    log::warn!("the image dir's record of the newest generation was written without a key: ignored");
                    Newest::default()
                }
            }
        }
        (Err(why), _) => {
            log::warn!("the image dir's record of the newest generation {why}: ignored");
            Newest::default()
        }
    }
}

/// A small file's text, at most `max` bytes read.
fn read_small(p: &Path, max: u64) -> io::Result<String> {
    use std::io::Read;
    let mut s = String::new();
    File::open(p)?.take(max).read_to_string(&mut s)?;
    Ok(s)
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
pub fn sums(dir: &Path, strong: bool) -> Result<Vec<FileSum>, StoreError> {
    seal_tree(dir, false, strong)
}

/// Seals a staged checkpoint: every file made 0600 and every directory 0700 (CRIU creates
/// images 0644; they hold the app's secrets), each file checksummed, everything fsynced
/// (CRIU writes without fsync). Returns the files' sums, sorted by path. Not `durable`: the
/// sums only.
fn seal_tree(dir: &Path, durable: bool, strong: bool) -> Result<Vec<FileSum>, StoreError> {
    let mut sums = Vec::new();
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry.map_err(|e| StoreError::Io { step: "walk", path: dir.to_path_buf(), source: e.into() })?;
        let p = entry.path();
        if entry.file_type().is_file() {
            if durable {
                fs::set_permissions(p, fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", p))?;
            }
            let integrity::Sum { size, crc32, digest } = integrity::checksum(p, strong)?;
            if durable {
                let f = File::open(p).map_err(io_err("open", p))?;
                f.sync_all().map_err(io_err("fsync", p))?;
            }
            let rel = p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
            sums.push(FileSum { path: rel, size, crc32, digest });
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

    /// A store's sealing with the key whose file text is `key`.
    fn sealing(key: &str, identity: &str) -> Sealing {
        let keys = Keys::new(vec![crate::seal::Key::parse(key).unwrap()]).unwrap();
        Sealing { keys: Arc::new(keys), identity: identity.into(), max_age: None }
    }

    #[test]
    fn sealed_checkpoints_and_generations_are_authenticated() {
        let root = tmp("sealed");
        let (key, other) = (crate::seal::Key::generate().unwrap(), crate::seal::Key::generate().unwrap());
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/app"))).unwrap();
        assert!(store.is_sealed());
        assert_eq!(store.newest(), Newest::default());
        let staged = store.stage().unwrap();
        fs::write(staged.images_dir().join("pages-1.img"), vec![7u8; 10_000]).unwrap();
        let (c, m) = store.publish(&staged, Manifest { generation: 3, ..Manifest::for_tests() }).unwrap();
        assert!(m.files.iter().all(|f| f.digest.is_some()), "digests with a key");
        assert_eq!(store.verified_manifest(&c).unwrap(), m);
        store.adopt_generation(3, true);
        assert_eq!(store.newest(), Newest { generation: 3, trusted: true });
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(store.next_generation() >= now, "no less than the time");
        // Older is refused, the same or newer is not.
        assert!(store.check_fresh(&Manifest { generation: 2, ..m.clone() }).is_err());
        store.check_fresh(&m).unwrap();
        drop(store);

        // The record outlives the store; a record forged without the key is ignored.
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/app"))).unwrap();
        assert_eq!(store.newest(), Newest { generation: 3, trusted: true });
        drop(store);
        let record = root.join(GENERATION_FILE);
        let real = fs::read(&record).unwrap();
        fs::write(&record, br#"{"generation": 1}"#).unwrap();
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/app"))).unwrap();
        assert_eq!(store.newest(), Newest::default());
        drop(store);
        fs::write(&record, &real).unwrap();
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/other"))).unwrap();
        assert_eq!(store.newest(), Newest::default(), "bound to its identity");
        drop(store);

        // The manifest re-written (say, with a CRC-32 recomputed), its MAC removed, or the
        // checkpoint read as another app's: damage. Another key's: a configuration matter.
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/app"))).unwrap();
        let json = fs::read_to_string(c.manifest_path()).unwrap();
        fs::write(c.manifest_path(), json.replace("\"root_pid\": 9001", "\"root_pid\": 9002")).unwrap();
        let e = store.verified_manifest(&c).unwrap_err().to_string();
        assert!(e.contains("altered"), "{e}");
        fs::write(c.manifest_path(), &json).unwrap();
        store.verified_manifest(&c).unwrap();
        let mac = fs::read(c.dir.join(MANIFEST_MAC_FILE)).unwrap();
        fs::remove_file(c.dir.join(MANIFEST_MAC_FILE)).unwrap();
        let e = store.verified_manifest(&c).unwrap_err().to_string();
        assert!(e.contains("no MAC"), "{e}");
        fs::write(c.dir.join(MANIFEST_MAC_FILE), &mac).unwrap();
        drop(store);
        let store = Store::open_sealed(&root, Some(sealing(&other, "s3://b/app"))).unwrap();
        assert!(matches!(store.verified_manifest(&c), Err(StoreError::Key { .. })));
        drop(store);
        let store = Store::open_sealed(&root, Some(sealing(&key, "s3://b/other"))).unwrap();
        assert!(store.verified_manifest(&c).unwrap_err().to_string().contains("altered"));
        drop(store);
        // Without a key, nothing is checked beyond the sums.
        let store = Store::open(&root).unwrap();
        assert_eq!(store.verified_manifest(&c).unwrap(), m);
        store.check_fresh(&Manifest { generation: 1, ..m }).unwrap();
        // Numbering: one more than the newest, when that is above the time.
        store.adopt_generation(u64::MAX - 1, true);
        assert_eq!(store.next_generation(), u64::MAX);
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
