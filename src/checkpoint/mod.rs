//! Checkpoint: one linear flow from a running app to a published checkpoint.
//!
//! stage → [`preflight`] → delete inotifyIncompatiblePaths → CRIU dump, bounded ([`dump`]) →
//! in CRIU's post-dump notification, the tree frozen: archives and the manifest → publish
//! (atomic rename) → retire older checkpoints → upload ([`staged`], [`upload`]). With object
//! storage and `streamPages`, the pages go to storage during the dump and the checkpoint is
//! published there in the post-dump notification ([`streamed`]); a storage failure falls back
//! to the flow above. A TCP connection opened during a dump without CRIU's network lock makes
//! the dump roll back, and it is taken again with the lock (here, in [`checkpoint`]).

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use nix::unistd::Pid;

use crate::archive::files::FilesError;
use crate::config::Config;
use crate::criu::{self, CriuError};
use crate::init::supervisor::Signals;
use crate::layout::FAILED_DUMP_LOG;
use crate::lifecycle::plan::Cost;
use crate::lifecycle::status::CheckpointStatus;
use crate::sizes;
use crate::store::staging::MemoryStaging;
use crate::store::{Checkpoint, Store, StoreError};

mod dump;
pub mod preflight;
mod staged;
mod streamed;
mod upload;

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
    /// `encryption.noPlaintextOnDisk`, and memory staging has no room for the dump.
    #[error(
        "the dump does not fit storage.stagingDir ({0}), and encryption.noPlaintextOnDisk keeps it off the image dir"
    )]
    NoPlaintextOnDisk(String),
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
    /// The checkpoint's generation (see [`crate::store::generation`]).
    pub generation: u64,
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
    store.adopt_generation(target.generation, true);
    // Sealed (and uploaded): its pages are clean, and need not stay charged to the container.
    crate::store::drop_page_cache(&store.root().join(crate::layout::CHECKPOINTS).join(&p.id));
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
                        staged::checkpoint(signals, store, t, kind, Instant::now())
                    });
                }
            }
        }
        staged::checkpoint(signals, store, target, kind, attempt)
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

/// CRIU's whole log of a failed dump outlives the discarded staging dir, for whoever debugs it.
fn keep_failed_log(staged: &Checkpoint, store: &Store) {
    let (log, kept) = (staged.images_dir().join(crate::layout::DUMP_LOG), store.root().join(FAILED_DUMP_LOG));
    // A rename, or a copy from a memory staging dir (another filesystem).
    if std::fs::rename(&log, &kept).is_ok() || std::fs::copy(&log, &kept).is_ok() {
        log::warn!("CRIU's log of the failed dump: {}", kept.display());
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
