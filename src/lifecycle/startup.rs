//! What a start restores: the newest checkpoint of the image dir or of object storage (downloaded
//! first), and what becomes of the others: a restored checkpoint is retired (its state now runs,
//! and a crash must not replay it), one that failed is quarantined (never retried), one this
//! node's CPU cannot run is kept for a node that can. When nothing can be restored,
//! `onRestoreFailure` says whether the app starts fresh.

use std::time::Duration;

use crate::config::{Config, OnRestoreFailure};
use crate::init::supervisor::Signals;
use crate::remote::{Remote, RemoteError, RemoteManifest};
use crate::restore::{self, RestoreError, Restored};
use crate::store::{Checkpoint, Staging, Store, StoreError};

/// Why a start stops crik instead of restoring or starting the app.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StartError {
    pub what: String,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StartError {
    /// `why` is kept as the source: an error type, or a sentence.
    pub fn stop(what: impl Into<String>, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StartError {
        StartError { what: what.into(), source: why.into() }
    }
}

/// Restores the newest checkpoint there is (storage's, downloaded, when newer than the image
/// dir's). `None`: nothing to restore, or nothing could be, and the app starts fresh
/// (`can_start_fresh`: a command was given).
pub fn restore_newest(
    signals: &Signals,
    config: &Config,
    store: Option<&Store>,
    remote: Option<&Remote>,
    can_start_fresh: bool,
) -> Result<Option<Restored>, StartError> {
    let mut latest = match store {
        Some(store) => match latest_checkpoint(store) {
            Ok(found) => found.map(|c| (store, c)),
            Err(e) => {
                log::error!(event = "store_unreadable"; "cannot read the image dir after {STORE_READ_TRIES} tries: {e}");
                log::warn!("whatever checkpoint the image dir holds is left as it is");
                cold_start_or_fail(config, can_start_fresh, || StartError::stop("cannot read image dir", e))?;
                None
            }
        },
        None => None,
    };
    // The id of storage's newest checkpoint, retired once a restore succeeds.
    let mut remote_newest = None;
    if let (Some(store), Some(remote)) = (store, remote) {
        let local = latest.as_ref().map(|(_, c)| c.id.clone());
        match from_storage(store, remote, config, local.as_deref()) {
            Ok(Pick::Local { remote_id }) => remote_newest = remote_id,
            Ok(Pick::Downloaded(c)) => {
                remote_newest = Some(c.id.clone());
                latest = Some((store, c));
            }
            // Storage answered that it cannot be used as configured: said now, at start, in its
            // words; nothing is decided about the state it may hold.
            Err(e @ RemoteError::S3(_)) if definitive(&e) => {
                return Err(StartError::stop(format!("cannot use storage {}", remote.url), e))
            }
            Err(e) => {
                if let RemoteError::Damaged { id, .. } = &e {
                    log::error!(event = "restore_failed", id = id.as_str(); "cannot restore from {}: {e}", remote.url);
                    match remote.quarantine(id) {
                        Ok(()) => log::warn!(
                            "moved checkpoint {id} to quarantine/ in {} (it will not be retried)",
                            remote.url
                        ),
                        Err(qe) => log::error!("cannot quarantine checkpoint {id} in storage: {qe}"),
                    }
                } else {
                    log::error!(event = "store_unreadable"; "cannot read storage {}: {e}", remote.url);
                    log::warn!("whatever checkpoint storage holds is left as it is, also by this run's uploads");
                    remote.keep_older_checkpoints();
                }
                if latest.is_none() {
                    cold_start_or_fail(config, can_start_fresh, || StartError::stop("no checkpoint restored", e))?;
                } else {
                    log::warn!("restoring the image dir's own (older) checkpoint instead");
                }
            }
        }
    }
    let restored = match latest {
        Some((store, ckpt)) => match restore::restore(signals, config, &ckpt) {
            Ok(r) => {
                if let (Some(remote), Some(id)) = (remote, &remote_newest) {
                    match remote.retire(id, config.keep_checkpoints) {
                        Ok(()) => log::info!("checkpoint {id} retired in {}", remote.url),
                        Err(e) => log::warn!("cannot retire checkpoint {id} in storage: {e}"),
                    }
                }
                // Retire it: if the restored app crashes later, the next start must not replay
                // this (by then stale) state.
                match store.retire(&ckpt, config.keep_checkpoints) {
                    Ok(r) => log::info!(
                        "checkpoint retired to {} (CRIU's log: {})",
                        r.dir.display(),
                        r.restore_log().display()
                    ),
                    Err(e) => log::warn!("cannot retire restored checkpoint: {e}"),
                }
                Some(r)
            }
            Err(e @ RestoreError::IncompatibleCpu { .. }) => {
                // Sound, just not for this node: kept (not quarantined) for one that can run it.
                log::error!(event = "restore_refused", id = ckpt.id.as_str();
                    "checkpoint {} cannot be restored on this node: {e}", ckpt.dir.display());
                log::warn!("the checkpoint is kept: a start on a node with a compatible CPU restores it");
                cold_start_or_fail(config, can_start_fresh, || StartError::stop("restore refused", e))?;
                None
            }
            Err(e) => {
                log::error!(event = "restore_failed", id = ckpt.id.as_str(); "restore of {} failed: {e}", ckpt.dir.display());
                match store.quarantine(&ckpt) {
                    Ok(q) => log::warn!("moved the checkpoint to {} (it will not be retried)", q.dir.display()),
                    Err(qe) => log::error!("cannot quarantine the checkpoint: {qe}"),
                }
                if let (Some(remote), Some(id)) = (remote, remote_newest.as_ref().filter(|id| **id == ckpt.id)) {
                    if let Err(qe) = remote.quarantine(id) {
                        log::error!("cannot quarantine checkpoint {id} in storage: {qe}");
                    }
                }
                cold_start_or_fail(config, can_start_fresh, || {
                    StartError::stop("restore failed", "onRestoreFailure is fail")
                })?;
                None
            }
        },
        None => None,
    };
    Ok(restored)
}

/// `onRestoreFailure` once no checkpoint could be restored: `fail` gives `on_fail`; `coldStart`
/// starts CMD fresh (an error too when there is no CMD: `can_start_fresh` false).
fn cold_start_or_fail(
    config: &Config,
    can_start_fresh: bool,
    on_fail: impl FnOnce() -> StartError,
) -> Result<(), StartError> {
    if config.on_restore_failure == OnRestoreFailure::Fail {
        return Err(on_fail());
    }
    if !can_start_fresh {
        return Err(StartError::stop("no checkpoint restored", "no command was given to start fresh instead"));
    }
    log::warn!("starting the command fresh (onRestoreFailure: coldStart)");
    Ok(())
}

fn definitive(e: &RemoteError) -> bool {
    matches!(e, RemoteError::S3(s) if s.is_definitive())
}

/// Which checkpoint to restore when storage is configured.
pub enum Pick {
    /// The image dir's own (newest, or as new as storage's; `remote_id`: storage's newest).
    Local { remote_id: Option<String> },
    /// Storage's newest, downloaded into the image dir.
    Downloaded(Checkpoint),
}

/// Storage's newest checkpoint, downloaded unless the image dir already holds it (or a newer
/// one: its upload failed, and the volume came back with it).
pub fn from_storage(store: &Store, remote: &Remote, config: &Config, local: Option<&str>) -> Result<Pick, RemoteError> {
    let Some((id, manifest)) = remote.latest()? else { return Ok(Pick::Local { remote_id: None }) };
    if local.is_some_and(|l| l >= id.as_str()) {
        log::info!(
            "the image dir holds checkpoint {} (storage's newest: {id}): no download",
            local.unwrap_or_default()
        );
        return Ok(Pick::Local { remote_id: Some(id) });
    }
    let manifest = manifest?;
    download(store, remote, &manifest, config).map(Pick::Downloaded)
}

fn download(store: &Store, remote: &Remote, m: &RemoteManifest, config: &Config) -> Result<Checkpoint, RemoteError> {
    let staged = store.stage_as(&m.id)?;
    log::info!(event = "download_started", id = m.id.as_str(); "downloading checkpoint {} from {}", m.id, remote.url);
    let deadline = std::time::Instant::now() + config.restore_timeout;
    let done = remote.download(m, &staged.dir, deadline).and_then(|d| {
        let c = store.publish_as_is(&staged, &m.manifest)?;
        Ok((c, d))
    });
    match done {
        Ok((c, d)) => {
            log::info!(event = "download_finished", id = m.id.as_str(), duration_ms = d.millis,
                received_bytes = d.received_bytes, bytes = d.bytes, chunks = d.fetched_chunks;
                "downloaded checkpoint {} in {} ms: {} chunks, {} received for {}", m.id, d.millis,
                d.fetched_chunks, crate::sizes::human(d.received_bytes), crate::sizes::human(d.bytes));
            Ok(c)
        }
        Err(e) => {
            store.discard(&staged);
            Err(e)
        }
    }
}

/// How often the store is read at start before crik gives up on it (about 2 s in all).
const STORE_READ_TRIES: u32 = 4;

/// The newest complete checkpoint. A network volume may fail briefly as the container starts,
/// so a failed read is retried (250 ms, 500 ms, 1 s apart) before it is reported.
pub fn latest_checkpoint(store: &Store) -> Result<Option<Checkpoint>, StoreError> {
    let (mut attempt, mut delay) = (1, Duration::from_millis(250));
    loop {
        match store.latest() {
            Err(e) if attempt < STORE_READ_TRIES => {
                log::warn!("cannot read the image dir (attempt {attempt} of {STORE_READ_TRIES}): {e}; retrying");
                std::thread::sleep(delay);
                (attempt, delay) = (attempt + 1, delay * 2);
            }
            r => return r,
        }
    }
}
