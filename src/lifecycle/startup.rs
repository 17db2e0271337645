//! What a start restores: the newest checkpoint of the image dir or of object storage (downloaded
//! first, once this crik holds the prefix's lease), and what becomes of the others: a restored
//! checkpoint is retired (its state now runs, and a crash must not replay it), one that failed
//! is quarantined (never retried), one this node's CPU cannot run is kept for a node that can.
//! Storage that cannot be read is tried again for `storage.retryAtStart`, then
//! `storage.onUnreadable` decides (stop, by default: the state is kept). When nothing can be
//! restored, `onRestoreFailure` says whether the app starts fresh.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{Config, OnRestoreFailure, OnUnreadable};
use crate::init::supervisor::Signals;
use crate::remote::lease::LeaseError;
use crate::remote::{Remote, RemoteError, RemoteManifest};
use crate::restore::{self, RestoreError, Restored};
use crate::store::staging::{room_needed, MemoryStaging};
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

/// What a start restores from, and whether it may start the app fresh instead.
#[derive(Clone, Copy)]
pub struct Start<'a> {
    pub signals: &'a Signals,
    pub config: &'a Config,
    /// The image dir, when `imageDir` is set.
    pub store: Option<&'a Store>,
    pub remote: Option<&'a Remote>,
    /// Memory staging (`storage.stagingDir` on tmpfs), where a download may be restored from.
    pub memory: Option<&'a MemoryStaging>,
    /// A command was given: the app can start fresh when there is nothing to restore.
    pub can_start_fresh: bool,
}

/// Restores the newest checkpoint there is (storage's, downloaded, when newer than the image
/// dir's). `None`: nothing to restore, or nothing could be, and the app starts fresh
/// (`can_start_fresh`: a command was given). A checkpoint refused before anything of it was
/// used (damaged, altered, a rollback) is quarantined and the next newest is tried, so that a
/// forged or damaged newest checkpoint never costs the genuine state behind it.
pub fn restore_newest(start: Start) -> Result<Option<Restored>, StartError> {
    let Start { config, can_start_fresh, .. } = start;
    for refused in 0..MAX_REFUSED_AT_START {
        match restore_newest_once(start)? {
            // Nothing left after a refusal: no checkpoint was restored, onRestoreFailure decides.
            Attempt::Done(None) if refused > 0 => {
                cold_start_or_fail(config, can_start_fresh, || {
                    StartError::stop(
                        "restore failed",
                        format!("{refused} checkpoint(s) refused (quarantined), none left; onRestoreFailure is fail"),
                    )
                })?;
                return Ok(None);
            }
            Attempt::Done(r) => return Ok(r.map(|r| *r)),
            Attempt::Refused => continue,
        }
    }
    log::error!(event = "restore_failed";
        "{MAX_REFUSED_AT_START} checkpoints in a row were refused (each is in quarantine/): no more are tried");
    cold_start_or_fail(config, can_start_fresh, || {
        StartError::stop("no checkpoint restored", format!("{MAX_REFUSED_AT_START} checkpoints in a row were refused"))
    })?;
    Ok(None)
}

/// At most this many checkpoints are refused (and quarantined) at one start before it gives up.
const MAX_REFUSED_AT_START: usize = 8;

/// What one pass of [`restore_newest`] came to.
enum Attempt {
    /// Restored, or decided: nothing is restored (the app starts fresh).
    Done(Option<Box<Restored>>),
    /// The newest checkpoint was refused and quarantined before anything of it was used.
    Refused,
}

fn restore_newest_once(start: Start) -> Result<Attempt, StartError> {
    let Start { signals, config, store, remote, memory, can_start_fresh } = start;
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
    // Where the checkpoint to restore comes from.
    let mut from = Source::ImageDir;
    if let (Some(store), Some(remote)) = (store, remote) {
        let local = latest.as_ref().map(|(_, c)| c.id.clone());
        match read_storage(signals, store, remote, config, memory, local.as_deref())? {
            Ok(Pick::Local { remote_id }) => remote_newest = remote_id,
            Ok(Pick::Downloaded(c, source)) => {
                remote_newest = Some(c.id.clone());
                latest = Some((store, c));
                from = source;
            }
            // Storage answered that it cannot be used as configured, or another crik holds it:
            // said now, at start; nothing is decided about the state it may hold.
            Err(e) if stops_at_start(&e) => {
                return Err(StartError::stop(format!("cannot use storage {}", remote.url), e))
            }
            Err(e @ (RemoteError::Damaged { .. } | RemoteError::Stale { .. })) => {
                let (RemoteError::Damaged { id, .. } | RemoteError::Stale { id, .. }) = &e else { unreachable!() };
                log::error!(event = "restore_failed", id = id.as_str(); "cannot restore from {}: {e}", remote.url);
                match remote.quarantine(id) {
                    Ok(()) => {
                        log::warn!("moved checkpoint {id} to quarantine/ in {} (it will not be retried)", remote.url)
                    }
                    Err(qe) => log::error!("cannot quarantine checkpoint {id} in storage: {qe}"),
                }
                log::warn!("trying the next newest checkpoint");
                return Ok(Attempt::Refused);
            }
            Err(e) if e.is_passing() => {
                let tried = config.storage.as_ref().map_or(Duration::ZERO, |s| s.retry_at_start).as_secs();
                log::error!(event = "store_unreadable"; "cannot read storage {} (tried for {tried} s): {e}", remote.url);
                if config.storage.as_ref().is_some_and(|s| s.on_unreadable == OnUnreadable::Fail) {
                    return Err(StartError::stop(
                        format!(
                            "cannot read storage {} (tried for {tried} s; storage.onUnreadable: fail keeps its \
                             checkpoints for the next start)",
                            remote.url
                        ),
                        e,
                    ));
                }
                log::warn!(
                    "storage.onUnreadable: coldStart: whatever checkpoint storage holds is left as it is, also by \
                     this run's uploads"
                );
                remote.keep_older_checkpoints();
                if latest.is_none() {
                    if !can_start_fresh {
                        return Err(StartError::stop(
                            "no checkpoint restored",
                            "no command was given to start fresh instead",
                        ));
                    }
                    log::warn!("starting the command fresh (storage.onUnreadable: coldStart)");
                } else {
                    log::warn!("restoring the image dir's own (maybe older) checkpoint instead");
                }
            }
            // Not damage, not storage's fault (no room here, the image dir failing): the
            // checkpoint stays in storage, and no upload of this run supersedes it.
            Err(e) => {
                log::error!(event = "restore_failed"; "cannot restore from {}: {e}", remote.url);
                log::warn!("storage's checkpoints are left as they are, also by this run's uploads");
                remote.keep_older_checkpoints();
                if latest.is_none() {
                    cold_start_or_fail(config, can_start_fresh, || StartError::stop("no checkpoint restored", e))?;
                } else {
                    log::warn!("restoring the image dir's own (older) checkpoint instead");
                }
            }
        }
    }
    let restored = match latest {
        Some((store, ckpt)) => match restore_from(signals, config, store, &ckpt, from, memory) {
            Ok(r) => {
                store.adopt_generation(r.manifest.generation, true);
                if let Some(remote) = remote {
                    remote.record_generation(r.manifest.generation);
                }
                if let (Some(remote), Some(id)) = (remote, &remote_newest) {
                    match remote.retire(id, config.keep_checkpoints) {
                        Ok(()) => log::info!("checkpoint {id} retired in {}", remote.url),
                        Err(e) => log::warn!("cannot retire checkpoint {id} in storage: {e}"),
                    }
                }
                // Retire it: if the restored app crashes later, the next start must not replay
                // this (by then stale) state. (From memory: already freed.)
                if from == Source::Memory {
                    return Ok(Attempt::Done(Some(Box::new(r))));
                }
                match store.retire(&ckpt, config.keep_checkpoints) {
                    Ok(r) => {
                        // CRIU read every image: the page cache need not stay charged to the
                        // restored app's container.
                        crate::store::drop_page_cache(&r.dir);
                        log::info!(
                            "checkpoint retired to {} (CRIU's log: {})",
                            r.dir.display(),
                            r.restore_log().display()
                        )
                    }
                    Err(e) => log::warn!("cannot retire restored checkpoint: {e}"),
                }
                Some(r)
            }
            // Sealed with a key crik was not given: a configuration matter, said at start; the
            // checkpoint is kept.
            Err(e @ RestoreError::Store(StoreError::Key { .. })) => {
                return Err(StartError::stop("cannot restore the image dir's checkpoint", e))
            }
            Err(e @ RestoreError::IncompatibleCpu { .. }) => {
                // Sound, just not for this node: kept (not quarantined) for one that can run it.
                log::error!(event = "restore_refused", id = ckpt.id.as_str();
                    "checkpoint {} cannot be restored on this node: {e}", ckpt.dir.display());
                log::warn!("the checkpoint is kept: a start on a node with a compatible CPU restores it");
                if let Some(remote) = remote.filter(|_| remote_newest.as_ref() == Some(&ckpt.id)) {
                    remote.keep_older_checkpoints();
                }
                cold_start_or_fail(config, can_start_fresh, || StartError::stop("restore refused", e))?;
                None
            }
            Err(e) => {
                log::error!(event = "restore_failed", id = ckpt.id.as_str(); "restore of {} failed: {e}", ckpt.dir.display());
                if from != Source::Memory {
                    match store.quarantine(&ckpt) {
                        Ok(q) => log::warn!("moved the checkpoint to {} (it will not be retried)", q.dir.display()),
                        Err(qe) => log::error!("cannot quarantine the checkpoint: {qe}"),
                    }
                }
                // Refused before anything of it was used, and only the image dir's copy: the
                // next newest is tried (storage's copy of this one, if it has one).
                if refused_before_use(&e) && from == Source::ImageDir {
                    log::warn!("trying the next newest checkpoint");
                    return Ok(Attempt::Refused);
                }
                let remote = remote.filter(|_| remote_newest.as_ref() == Some(&ckpt.id));
                return after_failed_download(config, remote, &ckpt.id, &e, can_start_fresh);
            }
        },
        None => None,
    };
    Ok(Attempt::Done(restored.map(Box::new)))
}

/// Restores `ckpt`; one downloaded into memory is freed whatever came of it, never kept (nor
/// written to a disk): storage's copy is what is retired or quarantined.
pub fn restore_from(
    signals: &Signals,
    config: &Config,
    store: &Store,
    ckpt: &Checkpoint,
    from: Source,
    memory: Option<&MemoryStaging>,
) -> Result<Restored, RestoreError> {
    let result = restore::restore(signals, config, store, ckpt);
    if let (Source::Memory, Some(memory)) = (from, memory) {
        memory.discard(ckpt);
    }
    result
}

/// Where the checkpoint a start restores comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The image dir's own.
    ImageDir,
    /// Storage's, downloaded into the image dir.
    Downloaded,
    /// Storage's, downloaded into memory staging (`encryption.noPlaintextOnDisk`).
    Memory,
}

/// After a failed restore of checkpoint `id`, which `remote` (when given) holds too: storage's
/// copy is quarantined; the next newest is tried when the failure came before anything of it
/// was used, else `onRestoreFailure` decides.
fn after_failed_download(
    config: &Config,
    remote: Option<&Remote>,
    id: &str,
    e: &RestoreError,
    can_start_fresh: bool,
) -> Result<Attempt, StartError> {
    if let Some(remote) = remote {
        match remote.quarantine(id) {
            Ok(()) => log::warn!("moved checkpoint {id} to quarantine/ in {} (it will not be retried)", remote.url),
            Err(qe) => log::error!("cannot quarantine checkpoint {id} in storage: {qe}"),
        }
    }
    if refused_before_use(e) {
        log::warn!("trying the next newest checkpoint");
        return Ok(Attempt::Refused);
    }
    cold_start_or_fail(config, can_start_fresh, || StartError::stop("restore failed", "onRestoreFailure is fail"))?;
    Ok(Attempt::Done(None))
}

/// A restore that failed before CRIU or anything else used the checkpoint: it is damaged,
/// altered, or stale (the manifest, its MAC, its generation, a file's size or sums).
fn refused_before_use(e: &RestoreError) -> bool {
    matches!(e, RestoreError::Store(_) | RestoreError::Stale { .. })
        || matches!(e, RestoreError::Integrity(crate::store::integrity::IntegrityError::Damaged { .. }))
}

/// Removes the network-lock tables CRIU left in this network namespace for this app's
/// checkpoints, in the image dir and in storage (see [`crate::host::nft`]). Called once a start
/// has restored one or started the app fresh: none of them will be restored here any more (the
/// one restored had its table removed by CRIU; the others are older, retired, quarantined, or
/// for another node). A network namespace that outlives the container (`hostNetwork`) keeps the
/// tables of checkpoints restored on other nodes until a start of the same app here removes
/// them. Tables of other apps' checkpoints are left alone.
pub fn release_network_locks(store: &Store, remote: Option<&Remote>) {
    let present = match crate::host::nft::criu_tables() {
        Ok(p) if p.is_empty() => return,
        Ok(p) => p,
        Err(e) => return log::debug!("cannot list this network namespace's tables: {e}"),
    };
    let mut run_ids: Vec<(String, String)> = Vec::new();
    for (_, c) in crate::store::list_all(store.root()).unwrap_or_default() {
        if let Ok(Some(run_id)) = crate::criu::images::dump_run_id(&c.images_dir()) {
            run_ids.push((run_id, c.id));
        }
    }
    if let Some(remote) = remote {
        match remote.network_locks() {
            Ok(ids) => run_ids.extend(ids),
            Err(e) => log::debug!("cannot read storage's manifests for their network locks: {e}"),
        }
    }
    for (run_id, which) in run_ids {
        for name in crate::host::nft::lock_table_names(&run_id).into_iter().filter(|n| present.contains(n)) {
            match crate::host::nft::delete_inet_table(&name) {
                Ok(true) => log::info!(event = "network_lock_released", table = name.as_str();
                    "removed CRIU's network-lock table inet {name}: checkpoint {which} will not be restored here"),
                Ok(false) => {}
                Err(e) => log::debug!("cannot remove table inet {name}: {e}"),
            }
        }
    }
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

/// Errors that stop crik at start whatever the policies say: storage cannot be used as
/// configured, or the prefix is another crik's.
fn stops_at_start(e: &RemoteError) -> bool {
    match e {
        RemoteError::S3(s) | RemoteError::Lease(LeaseError::S3(s)) => s.is_definitive(),
        RemoteError::Lease(_) | RemoteError::Key { .. } => true,
        _ => false,
    }
}

/// The lease, then storage's newest checkpoint; a failure that may pass (storage unreachable
/// or busy, a download cut off) is tried again, with backoff, for `storage.retryAtStart`.
/// The outer `Err`: a signal stopped crik meanwhile.
fn read_storage(
    signals: &Signals,
    store: &Store,
    remote: &Remote,
    config: &Config,
    memory: Option<&MemoryStaging>,
    local: Option<&str>,
) -> Result<Result<Pick, RemoteError>, StartError> {
    let retry_for = config.storage.as_ref().map_or(Duration::ZERO, |s| s.retry_at_start);
    let started = Instant::now();
    let (mut attempt, mut delay) = (1, Duration::from_millis(500));
    loop {
        let read = remote
            .acquire_lease(&mut |d| pause(signals, d))
            .and_then(|()| from_storage(store, remote, config, memory, local));
        match read {
            Err(e) if e.is_passing() && started.elapsed() + delay < retry_for => {
                log::warn!(event = "storage_retry";
                    "cannot read storage {} (attempt {attempt}; trying again in {} ms, for {} s more): {e}",
                    remote.url, delay.as_millis(), retry_for.saturating_sub(started.elapsed()).as_secs());
                pause(signals, delay).map_err(|why| StartError::stop("stopped while waiting for storage", why))?;
                (attempt, delay) = (attempt + 1, (delay * 2).min(Duration::from_secs(15)));
            }
            r => return Ok(r),
        }
    }
}

/// Sleeps `d` unless a signal asks crik to stop first (the container is being stopped):
/// `Err` names it.
fn pause(signals: &Signals, d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match signals.wait(Some(left)) {
            Ok(Some(s @ (Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP))) => {
                return Err(format!("{s} received"))
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(_) => {
                std::thread::sleep(left);
                return Ok(());
            }
        }
    }
}

/// Which checkpoint to restore when storage is configured.
pub enum Pick {
    /// The image dir's own (newest, or as new as storage's; `remote_id`: storage's newest).
    Local { remote_id: Option<String> },
    /// Storage's newest, downloaded into the image dir or into memory.
    Downloaded(Checkpoint, Source),
}

/// Storage's newest checkpoint, downloaded unless the image dir already holds it (or a newer
/// one: its upload failed, and the volume came back with it).
pub fn from_storage(
    store: &Store,
    remote: &Remote,
    config: &Config,
    memory: Option<&MemoryStaging>,
    local: Option<&str>,
) -> Result<Pick, RemoteError> {
    // What the lease vouches for is what a rollback is judged by, here and in the image dir.
    if let Some(g) = remote.lease_generation() {
        store.adopt_generation(g, true);
    }
    let Some((id, manifest)) = remote.latest()? else { return Ok(Pick::Local { remote_id: None }) };
    if let Ok(m) = &manifest {
        remote.inherit(m);
    }
    if local.is_some_and(|l| l >= id.as_str()) {
        log::info!(
            "the image dir holds checkpoint {} (storage's newest: {id}): no download",
            local.unwrap_or_default()
        );
        return Ok(Pick::Local { remote_id: Some(id) });
    }
    let manifest = manifest?;
    // Never downloaded when it is older than the newest on record.
    store.check_fresh(&manifest.manifest).map_err(|source| RemoteError::Stale { id: id.clone(), source })?;
    match memory.filter(|_| config.plaintext_off_disk()) {
        Some(memory) => download_into_memory(store, remote, &manifest, config, memory),
        None => download(store, remote, &manifest, config).map(|c| Pick::Downloaded(c, Source::Downloaded)),
    }
}

/// Downloads into memory staging, where it is restored from (`encryption.noPlaintextOnDisk`).
fn download_into_memory(
    store: &Store,
    remote: &Remote,
    m: &RemoteManifest,
    config: &Config,
    memory: &MemoryStaging,
) -> Result<Pick, RemoteError> {
    let (needs, free) = (room_needed(m.size()), memory.room().map_err(crate::remote::local("statvfs", memory.dir()))?);
    if needs > free {
        return Err(RemoteError::NoRoom { id: m.id.clone(), needs, free });
    }
    let staged = memory.stage_as(&m.id)?;
    fetch(store, remote, m, config, &staged, |c, manifest| {
        store.write_manifest(c, manifest)?;
        Ok(c.clone())
    })
    .inspect_err(|_| memory.discard(&staged))
    .map(|c| Pick::Downloaded(c, Source::Memory))
}

fn download(store: &Store, remote: &Remote, m: &RemoteManifest, config: &Config) -> Result<Checkpoint, RemoteError> {
    let staged = store.stage_as(&m.id)?;
    fetch(store, remote, m, config, &staged, |c, manifest| Ok(store.publish_as_is(c, manifest)?))
        .inspect_err(|_| store.discard(&staged))
}

/// Downloads `m` into `staged`, then `finish`es it with its manifest (publishes it, or writes
/// the manifest). With a key, files that have no digest yet (streamed ones: they never landed
/// on the node that dumped them) get one now, from what was just downloaded and authenticated
/// chunk by chunk: the checkpoint is then checked like any other before CRIU reads it.
fn fetch(
    store: &Store,
    remote: &Remote,
    m: &RemoteManifest,
    config: &Config,
    staged: &Checkpoint,
    finish: impl FnOnce(&Checkpoint, &crate::store::manifest::Manifest) -> Result<Checkpoint, RemoteError>,
) -> Result<Checkpoint, RemoteError> {
    log::info!(event = "download_started", id = m.id.as_str(); "downloading checkpoint {} from {} into {}", m.id,
        remote.url, staged.dir.display());
    let deadline = std::time::Instant::now() + config.restore_timeout;
    let done = remote.download(m, &staged.dir, deadline).and_then(|d| {
        let manifest = store.with_digests(staged, &m.manifest).map_err(|e| match e {
            // Storage's manifest does not describe its own (authenticated) chunks: damage.
            StoreError::Integrity(crate::store::integrity::IntegrityError::Damaged { why, .. }) => {
                RemoteError::Damaged { id: m.id.clone(), why }
            }
            e => e.into(),
        })?;
        Ok((finish(staged, &manifest)?, d))
    });
    match done {
        Ok((c, d)) => {
            log::info!(event = "download_finished", id = m.id.as_str(), duration_ms = d.millis,
                received_bytes = d.received_bytes, bytes = d.bytes, chunks = d.fetched_chunks;
                "downloaded checkpoint {} in {} ms: {} chunks, {} received for {}", m.id, d.millis,
                d.fetched_chunks, crate::sizes::human(d.received_bytes), crate::sizes::human(d.bytes));
            Ok(c)
        }
        Err(e) => Err(e),
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
