//! Checkpoint: one linear flow from a running app to a published checkpoint.
//!
//! stage → delete inotifyIncompatiblePaths → archive additionalPaths → note stdio →
//! CRIU dump (bounded) → manifest → publish (atomic rename) → retire older checkpoints.
//! With object storage and `streamPages`, the pages go to storage during the dump and the
//! checkpoint is published there in CRIU's post-dump notification (see [`streamed`]); a
//! storage failure falls back to the flow above.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use nix::unistd::Pid;

use crate::archive::files::{self, FilesError};
use crate::config::Config;
use crate::criu::{self, CriuError};
use crate::host;
use crate::init::supervisor::Signals;
use crate::layout::FAILED_DUMP_LOG;
use crate::lifecycle::plan::Cost;
use crate::lifecycle::status::CheckpointStatus;
use crate::sizes;
use crate::store::manifest::{Manifest, FORMAT};
use crate::store::staging::MemoryStaging;
use crate::store::{self, Checkpoint, Staging, Store, StoreError};

pub mod preflight;
mod streamed;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Rootfs(#[from] crate::archive::rootfs::RootfsError),
    #[error("CRIU finished the dump without its post-dump notification: files were not archived")]
    NoPostDump,
    #[error(transparent)]
    Preflight(#[from] crate::checkpoint::preflight::PreflightError),
    #[error("cannot read the container's stdio links in /proc/{pid}/fd: {source}")]
    Stdio { pid: i32, source: std::io::Error },
    #[error("cannot open images dir {path}: {source}")]
    ImagesDir { path: PathBuf, source: std::io::Error },
    #[error("{source}{}", criu::format_log(log_lines))]
    Criu { source: CriuError, log_lines: Vec<String> },
    /// The dump succeeded, the upload to object storage did not; `kept` says where the
    /// checkpoint is now.
    #[error("checkpoint {id} could not be uploaded to {url}: {source}; {kept}")]
    Upload { id: String, url: String, source: Box<crate::remote::RemoteError>, kept: String },
    /// Object storage failed while a streamed dump was under way: CRIU rolls the dump back.
    #[error("object storage: {0}")]
    Storage(Box<crate::remote::RemoteError>),
    #[error("cannot make a socket for CRIU's page stream: {0}")]
    PageStreamSocket(std::io::Error),
    #[error("cannot read the dump's images: {0}")]
    Images(#[from] crate::criu::images::ImageError),
    /// A TCP connection was opened after crik looked for one and dumped without CRIU's network
    /// lock; CRIU rolled back (the app keeps running) and the dump is taken again with it.
    #[error("the app opened TCP connections during a dump without the network lock: {}", .0.join(", "))]
    Unlocked(Vec<String>),
    /// crik's page server failed (see [`streamed`]).
    #[error("streaming the dump's pages: {0}")]
    PageStream(#[from] crate::criu::pageserver::PageServerError),
}

/// What a checkpoint needs besides the store: the config and the app being checkpointed.
pub struct Target<'a> {
    pub config: &'a Config,
    pub app: Pid,
    pub command: &'a [String],
    /// A periodic checkpoint: the app keeps running afterwards, and nothing of it is deleted
    /// (inotifyIncompatiblePaths are only removed before the final checkpoint).
    pub leave_running: bool,
    /// The overlay upper dir of `/`, when `captureRootfsDiff` is on (found at start).
    pub rootfs_upper: Option<&'a std::path::Path>,
    /// How long CRIU may take (`checkpointTimeout`, or less of a final checkpoint's budget);
    /// the upload to object storage must end within it too.
    pub deadline: std::time::Duration,
    /// Object storage the published checkpoint is uploaded to.
    pub remote: Option<&'a crate::remote::Remote>,
    /// A memory-backed dir to dump into instead of the image dir (with `remote` only).
    pub staging: Option<&'a MemoryStaging>,
    /// Lock the network even when the app holds no TCP connection (set for a second try).
    pub always_lock_network: bool,
}

/// A checkpoint taken: its id, and what it cost (for [`crate::lifecycle::plan`]).
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: String,
    pub cost: Cost,
}

/// Checkpoints the app's whole tree and publishes it. CRIU stops the tree when the dump
/// succeeds; when it fails, CRIU resumes the app and the staging dir is removed. Either way the
/// outcome goes into the image dir's status file.
pub fn checkpoint(signals: &Signals, store: &Store, target: &Target) -> Result<Taken, CheckpointError> {
    let wall = SystemTime::now();
    let kind = if target.leave_running { "periodic" } else { "final" };
    let result = stage_dump_publish(signals, store, target, kind);
    let mut status = CheckpointStatus::new(kind, if result.is_ok() { "complete" } else { "failed" }, wall);
    match &result {
        Ok(p) => (status.id, status.size_bytes) = (Some(p.id.clone()), Some(p.size)),
        Err(e) => status.error = Some(e.to_string()),
    }
    // The status file is current before the event says the checkpoint is done: whoever acts
    // on the event (an operator, a test) reads the outcome it announces.
    crate::lifecycle::status::write(store.root(), status);
    let p = result?;
    log::info!(
        event = "checkpoint_finished", kind, id = p.id.as_str(), duration_ms = p.millis,
        dump_ms = p.cost.dump_millis, size_bytes = p.size, staging = p.staging;
        "{kind} checkpoint {} complete in {} ms (CRIU dump {} ms into {}), {}: {}",
        p.id,
        p.millis,
        p.cost.dump_millis,
        p.staging,
        sizes::human(p.size),
        p.location
    );
    Ok(Taken { id: p.id, cost: p.cost })
}

fn stage_dump_publish(
    signals: &Signals,
    store: &Store,
    target: &Target,
    kind: &str,
) -> Result<Published, CheckpointError> {
    let started = Instant::now();
    let once = |target: &Target| {
        let attempt = Instant::now();
        let stream = target.config.storage.as_ref().is_some_and(|s| s.stream_pages);
        if let (Some(remote), true) = (target.remote, stream) {
            match streamed::checkpoint(signals, store, target, kind, remote, attempt)? {
                streamed::Outcome::Published(p) => return Ok(p),
                // The app kept running: dump it again, the usual way.
                streamed::Outcome::StorageFailed(e) => {
                    log::warn!(
                        "{kind} checkpoint: streaming to {} failed: {e}; dumping into the image dir",
                        remote.url
                    );
                    return in_time_left(target, attempt, |t| {
                        stage_dump_unstreamed(signals, store, t, kind, Instant::now())
                    });
                }
            }
        }
        stage_dump_unstreamed(signals, store, target, kind, attempt)
    };
    match once(target) {
        Err(CheckpointError::Unlocked(connections)) => {
            log::warn!(
                "{kind} checkpoint: the app connected ({}) while it was dumped without CRIU's network lock; \
                 dumping again with it",
                connections.join(", ")
            );
            in_time_left(&Target { always_lock_network: true, ..*target }, started, once)
        }
        r => r,
    }
}

/// Another try at a checkpoint (the app kept running), within what is left of the deadline of
/// the try that started at `started`; its time counts from then.
fn in_time_left(
    target: &Target,
    started: Instant,
    dump: impl FnOnce(&Target) -> Result<Published, CheckpointError>,
) -> Result<Published, CheckpointError> {
    let target = Target { deadline: target.deadline.saturating_sub(started.elapsed()), ..*target };
    let mut p = dump(&target)?;
    p.millis = started.elapsed().as_millis() as u64;
    Ok(p)
}

/// CRIU writes every image (into the image dir or memory staging); the upload, if any, follows.
fn stage_dump_unstreamed(
    signals: &Signals,
    store: &Store,
    target: &Target,
    kind: &str,
    started: Instant,
) -> Result<Published, CheckpointError> {
    let memory = target.staging.filter(|m| match m.fits(crate::init::app::tree_memory(target.app)) {
        Ok(()) => true,
        Err(why) => {
            log::warn!("dumping into the image dir, not {}: {why}", m.dir().display());
            false
        }
    });
    let area: &dyn Staging = match memory {
        Some(m) => m,
        None => store,
    };
    let staged = area.stage()?;
    log::info!(event = "checkpoint_started", kind, pid = target.app.as_raw();
        "{kind} checkpoint of app (pid {}) into {}", target.app, staged.dir.display());
    let dumped =
        dump_into(signals, &staged, target, Dump { writeback: memory.is_none(), page_server: None, on_dumped: None });
    let deadline = started + target.deadline;
    let Some(memory) = memory else {
        let (published, manifest) = match dumped.and_then(|m| Ok(store.publish(&staged, m)?)) {
            Ok(p) => p,
            Err(e) => {
                keep_failed_log(&staged, store);
                store.discard(&staged);
                return Err(e);
            }
        };
        store.retire_where(|other| other.id != published.id, target.config.keep_checkpoints);
        let uploaded = match target.remote {
            Some(remote) => Some(
                upload(remote, &published, &manifest, target, deadline)
                    .map_err(|e| upload_error(&published.id, remote, e, "it is complete in the image dir"))?,
            ),
            None => None,
        };
        return Ok(Published {
            id: published.id.clone(),
            size: sizes::dir_size(&published.dir),
            millis: started.elapsed().as_millis() as u64,
            cost: Cost::of(&manifest, uploaded.map(|u| u.millis)),
            staging: "the image dir",
            location: format!("{}{}", published.dir.display(), if uploaded.is_some() { " and storage" } else { "" }),
        });
    };

    // Memory staging: sealed where it is, uploaded from there, then the memory is freed.
    let manifest = match dumped.and_then(|m| Ok(store::seal(&staged, m)?)) {
        Ok(m) => m,
        Err(e) => {
            keep_failed_log(&staged, store);
            memory.discard(&staged);
            return Err(e);
        }
    };
    let remote = target.remote.expect("stagingDir is part of storage");
    let uploaded = upload(remote, &staged, &manifest, target, deadline);
    let size = manifest.files.iter().map(|f| f.size).sum();
    let result = match uploaded {
        Ok(u) => {
            // The image dir's own checkpoints are older than this one, now in storage only: a
            // start that cannot reach storage must not restore one of them as if it were current.
            store.retire_where(|_| true, target.config.keep_checkpoints);
            Ok(Published {
                id: staged.id.clone(),
                size,
                millis: started.elapsed().as_millis() as u64,
                cost: Cost::of(&manifest, Some(u.millis)),
                staging: "memory",
                location: format!("in storage only ({})", remote.url),
            })
        }
        Err(e) => {
            // Not lost: copied into the image dir, as a dump there would have left it.
            let kept = match store.publish_copy(&staged, &manifest) {
                Ok(c) => {
                    store.retire_where(|other| other.id != c.id, target.config.keep_checkpoints);
                    format!("it is complete in the image dir ({})", c.dir.display())
                }
                Err(ce) => format!("it could not be kept in the image dir either: {ce}"),
            };
            Err(upload_error(&staged.id, remote, e, &kept))
        }
    };
    memory.discard(&staged);
    result
}

/// An upload's failure, once the caller knows where the checkpoint is kept instead.
fn upload_error(
    id: &str,
    remote: &crate::remote::Remote,
    e: crate::remote::RemoteError,
    kept: &str,
) -> CheckpointError {
    CheckpointError::Upload { id: id.into(), url: remote.url.clone(), source: Box::new(e), kept: kept.into() }
}

/// CRIU's whole log of a failed dump outlives the discarded staging dir, for whoever debugs it.
fn keep_failed_log(staged: &Checkpoint, store: &Store) {
    let (log, kept) = (staged.images_dir().join(crate::layout::DUMP_LOG), store.root().join(FAILED_DUMP_LOG));
    // A rename, or a copy from a memory staging dir (another filesystem).
    if std::fs::rename(&log, &kept).is_ok() || std::fs::copy(&log, &kept).is_ok() {
        log::warn!("CRIU's log of the failed dump: {}", kept.display());
    }
}

/// Uploads a sealed checkpoint; after a periodic one, unreferenced chunks are removed (never
/// on the final one: the notice is short, and the next run's first checkpoint does it).
fn upload(
    remote: &crate::remote::Remote,
    sealed: &Checkpoint,
    manifest: &Manifest,
    target: &Target,
    deadline: Instant,
) -> Result<crate::remote::Uploaded, crate::remote::RemoteError> {
    let up = remote.upload(sealed, manifest, target.config.keep_checkpoints, deadline)?;
    after_upload(remote, &sealed.id, &up, target, deadline);
    Ok(up)
}

/// Logs an upload; after a periodic checkpoint, removes the chunks no checkpoint refers to.
fn after_upload(
    remote: &crate::remote::Remote,
    id: &str,
    up: &crate::remote::Uploaded,
    target: &Target,
    deadline: Instant,
) {
    log::info!(
        event = "checkpoint_uploaded", id, chunks = up.chunks, new_chunks = up.new_chunks,
        sent_bytes = up.sent_bytes, bytes = up.bytes, duration_ms = up.millis;
        "uploaded checkpoint {} to {} in {} ms: {} new of {} chunks, {} sent for {}",
        id, remote.url, up.millis, up.new_chunks, up.chunks, sizes::human(up.sent_bytes), sizes::human(up.bytes)
    );
    if target.leave_running {
        match remote.collect_garbage(deadline) {
            Ok(0) => {}
            Ok(n) => log::info!("storage: removed {n} chunk(s) no checkpoint refers to"),
            Err(e) => log::warn!("storage: garbage collection failed (tried again after the next checkpoint): {e}"),
        }
    }
}

/// A checkpoint just taken, with what its `checkpoint_finished` event reports.
struct Published {
    id: String,
    size: u64,
    millis: u64,
    cost: Cost,
    /// Where CRIU dumped: "the image dir" or "memory".
    staging: &'static str,
    /// Where the checkpoint is now, for the log.
    location: String,
}

/// How CRIU dumps, and what crik does once it has.
struct Dump<'h> {
    /// Start the images' writeback while CRIU writes them (a disk, not memory).
    writeback: bool,
    /// The pages go to this socket (crik's page server), not into pages images.
    page_server: Option<std::os::fd::OwnedFd>,
    /// Called in CRIU's post-dump notification with the manifest (the tree is still frozen);
    /// an error makes CRIU roll back, and the app keeps running.
    on_dumped: Option<&'h mut OnDumped<'h>>,
}

type OnDumped<'h> = dyn FnMut(&mut Manifest) -> Result<(), CheckpointError> + 'h;

fn dump_into(signals: &Signals, staged: &Checkpoint, target: &Target, how: Dump) -> Result<Manifest, CheckpointError> {
    let app_tree = crate::checkpoint::preflight::check(target.app, target.config)?;
    let stdio = stdio_links()?;
    if !target.leave_running {
        files::delete_paths(&target.config.inotify_incompatible_paths)?;
    }
    let images = staged.images_dir();
    let dir = File::open(&images).map_err(|e| CheckpointError::ImagesDir { path: images.clone(), source: e })?;
    let criu_version = criu::version(signals).map_err(|e| CheckpointError::Criu { source: e, log_lines: vec![] })?;

    let app_memory_bytes = crate::init::app::memory_of(&app_tree);
    let lock_network = target.always_lock_network || crate::checkpoint::preflight::network_lock_needed(&app_tree);
    if !lock_network {
        log::debug!("the app holds no TCP connection: CRIU dumps it without its network lock");
    }
    let dump_started = Instant::now();
    let mut opts =
        criu::dump_opts(&dir, target.app, target.leave_running, lock_network, &target.config.external_mounts);
    // Files are archived in CRIU's "post-dump" notification: the tree is dumped but still
    // frozen, so a file it holds open matches exactly what CRIU recorded about it (archived
    // before or after, a file the app keeps writing would differ, and CRIU would refuse the
    // restore). If archiving fails, CRIU rolls back: the app keeps running.
    opts.set_notify_scripts(true);
    let mut on_dumped = how.on_dumped;
    let mut dumped_manifest = None;
    let mut on_notify = |script: &str| {
        if script != "post-dump" {
            return true;
        }
        // A connection opened since crik looked, dumped without the lock: roll back, try again.
        if !lock_network {
            if let Some(connections) = crate::criu::images::tcp_connections(&images).ok().filter(|c| !c.is_empty()) {
                dumped_manifest = Some(Err(CheckpointError::Unlocked(connections)));
                return false;
            }
        }
        let dump_millis = dump_started.elapsed().as_millis() as u64;
        let r = archive_files(staged, target).and_then(|a| {
            let mut m = manifest_of(a, target, &stdio, &images, &criu_version, dump_millis, app_memory_bytes);
            if let Some(hook) = on_dumped.as_mut() {
                hook(&mut m)?;
            }
            Ok(m)
        });
        let ok = r.is_ok();
        dumped_manifest = Some(r);
        ok
    };
    for tty in stdio.iter().filter(|s| s.starts_with("tty[")) {
        if !opts.external.contains(tty) {
            opts.external.push(tty.clone());
        }
    }
    let req = criu::Request {
        page_server: how.page_server,
        writeback: how.writeback.then(|| images.clone()),
        on_notify: Some(&mut on_notify),
        ..criu::Request::new(criu::rpc::Criu_req_type::DUMP, Some(opts), target.deadline)
    };
    let dumped = criu::call(signals, req);
    // An archive (or hook) failure is the reason, whatever CRIU answered after rolling back.
    if let Some(Err(e)) = dumped_manifest.take_if(|a| a.is_err()) {
        return Err(e);
    }
    if let Err(e) = dumped {
        let mut log_lines = criu::log_errors(&images.join(crate::layout::DUMP_LOG), 8);
        if let Some(full) = volume_full(&images) {
            // CRIU cannot even write its log then: say it ourselves.
            log_lines.push(full);
        }
        return Err(CheckpointError::Criu { source: e, log_lines });
    }
    match dumped_manifest {
        Some(r) => r,
        None => Err(CheckpointError::NoPostDump),
    }
}

/// The manifest of a dump just done (its files are filled in when it is sealed).
fn manifest_of(
    archived: Archived,
    target: &Target,
    stdio: &[String; 3],
    images: &std::path::Path,
    criu_version: &str,
    dump_millis: u64,
    app_memory_bytes: u64,
) -> Manifest {
    let Archived { has_files_archive, rootfs, runtime_tmpfs } = archived;
    Manifest {
        format: FORMAT,
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        command: target.command.to_vec(),
        root_pid: target.app.as_raw(),
        stdio: stdio.clone(),
        addresses: host::addresses(),
        cgroups: crate::host::cgroup::own_cgroup_dirs(),
        rootfs,
        has_files_archive,
        runtime_tmpfs,
        cpu: match crate::criu::cpu::record(images) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("cannot read the CPU record CRIU wrote: {e}; a restore will not check the CPU");
                None
            }
        },
        crik_version: env!("CARGO_PKG_VERSION").to_string(),
        criu_version: criu_version.to_string(),
        kernel: host::kernel_release(),
        dump_millis,
        seal_millis: 0, // measured by the store when it publishes
        app_memory_bytes,
        files: Vec::new(), // filled in by the store when it publishes
    }
}

/// What was archived beside CRIU's images, while the dumped tree was frozen.
struct Archived {
    has_files_archive: bool,
    rootfs: Option<crate::archive::rootfs::RootfsDiff>,
    runtime_tmpfs: Vec<String>,
}

/// additionalPaths into files.tar, the writable layer into rootfs.tar when captured, and the
/// app's files on tmpfs mounts into tmpfs.tar.
fn archive_files(staged: &Checkpoint, target: &Target) -> Result<Archived, CheckpointError> {
    let has_files_archive = if target.config.additional_paths.is_empty() {
        false
    } else {
        files::archive_paths(&target.config.additional_paths, &staged.files_archive())?;
        true
    };
    let rootfs = match target.rootfs_upper {
        Some(upper) => {
            let skip = own_dirs(target);
            let diff = crate::archive::rootfs::capture(upper, &staged.dir.join(crate::layout::ROOTFS_ARCHIVE), &skip)?;
            log::info!(
                "container's writable layer: {} entries archived, {} deletions, {} replaced dirs",
                diff.archived,
                diff.deleted.len(),
                diff.opaque.len()
            );
            Some(diff)
        }
        None => None,
    };
    let runtime_tmpfs = archive_runtime_tmpfs(staged, &own_dirs(target))?;
    Ok(Archived { has_files_archive, rootfs, runtime_tmpfs })
}

/// crik's own dirs (the image dir, the memory staging dir): never part of what is archived.
fn own_dirs<'a>(target: &Target<'a>) -> Vec<&'a std::path::Path> {
    let mut dirs: Vec<&std::path::Path> = target.config.image_dir.iter().map(|d| d.as_path()).collect();
    dirs.extend(target.staging.map(|m| m.dir()));
    dirs
}

/// The files the app holds (open or mapped) on tmpfs mounts: /dev/shm (POSIX shared memory,
/// named semaphores), the /tmp and /run of a `--read-only` container, memory-backed volumes.
/// A runtime makes them afresh, empty, for every container, and CRIU records such files by path
/// only: without their contents the restore in a new container would fail. Only the app's own
/// files are taken (CRIU's file table says which), never the rest of the mount.
fn archive_runtime_tmpfs(staged: &Checkpoint, own: &[&std::path::Path]) -> Result<Vec<String>, CheckpointError> {
    let open = crate::criu::images::regular_files(&staged.images_dir())?;
    let mounts = crate::host::mountinfo::read().unwrap_or_default();
    let mut paths: Vec<String> = open
        .into_iter()
        .map(|f| f.path)
        .filter(|p| {
            let p = std::path::Path::new(p);
            // The mount a path is on: the deepest mount point above it (the last such in mount order).
            let mount = mounts.iter().filter(|m| p.starts_with(&m.point)).max_by_key(|m| m.point.components().count());
            mount.is_some_and(|m| m.fstype == "tmpfs") && !own.iter().any(|d| p.starts_with(d)) && p.is_file()
            // deleted ones are CRIU's ghosts
        })
        .collect();
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return Ok(paths);
    }
    let abs: Vec<crate::config::AbsPath> = paths.iter().filter_map(|p| crate::config::AbsPath::new(p).ok()).collect();
    files::archive_paths(&abs, &staged.dir.join(crate::layout::TMPFS_ARCHIVE))?;
    log::info!("{} file(s) of the app on tmpfs mounts archived: {}", paths.len(), paths.join(", "));
    Ok(paths)
}

/// "No space left on device" when the image dir's filesystem is (nearly) full.
fn volume_full(dir: &std::path::Path) -> Option<String> {
    let free = crate::host::free_space(dir).ok()?;
    (free < 1024 * 1024)
        .then(|| format!("No space left on device: the image dir's filesystem has {} free", sizes::human(free)))
}

/// Where the container's stdio — crik's own fds 0-2, which the app inherited — points
/// (`pipe:[123]`, `/dev/null`, `socket:[9]`, a file), and for a terminal (`tty: true`) CRIU's
/// key for it, `tty[rdev:dev]` (its master is outside the tree: dumped as external). Whatever
/// fd of the app refers to one of these is re-wired to the new container's stdio at restore.
/// crik's own fds, not the app's: the app may be in the middle of redirecting its stdout.
fn stdio_links() -> Result<[String; 3], CheckpointError> {
    let link = |fd: i32| -> Result<String, CheckpointError> {
        let path = format!("/proc/self/fd/{fd}");
        let err = |e: std::io::Error| CheckpointError::Stdio { pid: std::process::id() as i32, source: e };
        let target = match std::fs::read_link(&path) {
            Ok(t) => t.to_string_lossy().into_owned(),
            // crik was started with this fd closed: nothing to re-wire.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(err(e)),
        };
        if target.starts_with("/dev/pts/") {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(&path).map_err(err)?;
            return Ok(format!("tty[{:x}:{:x}]", md.rdev(), md.dev()));
        }
        Ok(target)
    };
    Ok([link(0)?, link(1)?, link(2)?])
}
