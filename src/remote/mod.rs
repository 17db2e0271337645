//! The object-storage store: checkpoints mirrored to an S3 bucket as content-addressed,
//! compressed chunks (see [`crate::remote::chunks`]), so that a node in another zone can restore them.
//!
//! Its layout in the bucket is drawn in [`crate::layout`].
//!
//! A checkpoint's chunks are all uploaded before its manifest, so a listed manifest always
//! names chunks that are there: an upload cut short leaves only unlisted chunks, which the
//! next garbage collection removes. One crik writes a prefix at a time (one app per prefix),
//! the one holding its lease ([`lease`]): every write but a chunk's (content-addressed, so
//! harmless) asks the lease first.
//! The local image dir stays the staging area: CRIU dumps there, crik uploads from there,
//! and a restore downloads there first.

pub mod chunks;
pub mod lease;
pub mod s3;
pub mod sigv4;

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{LeaseConfig, StorageConfig, WhenHeld};
use crate::layout::bucket::{CHECKPOINTS, CHUNKS, LEASE, QUARANTINE, RETIRED};
use crate::layout::MAX_MANIFEST;
use crate::remote::s3::{Bucket, S3Error};
use crate::store::manifest::Manifest;
use crate::store::Checkpoint;
use chunks::{ChunkError, ChunkRef};
use lease::{Lease, LeaseError};

const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    S3(#[from] S3Error),
    /// The checkpoint in storage is not restorable (a chunk missing or damaged, a manifest
    /// that does not parse): quarantined, never retried.
    #[error("checkpoint {id} in storage is damaged: {why}")]
    Damaged { id: String, why: String },
    #[error("{step} {path}: {source}")]
    Local { step: &'static str, path: String, source: std::io::Error },
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The upload's queue refused a chunk: a worker failed (its error is the one returned by
    /// [`Upload::finish`]), or the upload is finished.
    #[error(transparent)]
    Stopped(#[from] UploadStopped),
    /// The checkpoint does not fit where it would be downloaded: kept in storage for a node
    /// with room (or this one, once it has some).
    #[error("checkpoint {id} needs {} and the image dir has {} free: kept in storage", crate::sizes::human(*needs), crate::sizes::human(*free))]
    NoRoom { id: String, needs: u64, free: u64 },
    /// The image dir, staging or publishing a download.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The prefix's lease: held by another crik, lost, or not to be had.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A checkpoint sealed with a key crik was not given: a configuration matter (the
    /// checkpoint is kept), never damage.
    #[error("checkpoint {id} in storage is {source}")]
    Key { id: String, source: crate::seal::SealError },
    /// Authentic, but older than the newest this app has written or restored (a rollback),
    /// or than `encryption.maxAge`: refused like damage (quarantined).
    #[error("checkpoint {id} in storage is refused: {source}")]
    Stale { id: String, source: crate::store::generation::Stale },
}

impl RemoteError {
    /// A failure that may pass (storage unreachable, busy, a deadline): worth trying again.
    pub fn is_passing(&self) -> bool {
        match self {
            RemoteError::S3(e) | RemoteError::Lease(LeaseError::S3(e)) => !e.is_definitive(),
            _ => false,
        }
    }
}

pub(crate) fn local<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Local { step, path: path.display().to_string(), source }
}

/// A checkpoint as stored: crik's manifest (with each file's CRC-32, checked again at
/// restore) and the chunks each file is made of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteManifest {
    pub format: u32,
    pub id: String,
    pub manifest: Manifest,
    pub files: Vec<RemoteFile>,
    /// Checkpoints in storage that this one's lineage never restored (it was written beside
    /// them by a run that could not read storage, or that kept them for a node that can run
    /// them): a run that restores this one does not supersede them either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spared: Vec<String>,
}

/// At most this many spared checkpoints are named in a manifest (the newest ones).
const MAX_SPARED: usize = 64;
/// The manifests read in each area when looking for network locks to remove.
const MAX_LOCKS_READ: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl RemoteManifest {
    /// The manifest stored as `<id>.json`, checked before anything is done with it: its size,
    /// its JSON, its format, and that it names itself `id`. `Err` says why it is unusable.
    fn parse(id: &str, body: &[u8]) -> Result<RemoteManifest, String> {
        if body.len() > MAX_MANIFEST {
            return Err("manifest larger than 16 MiB".into());
        }
        let m: RemoteManifest = serde_json::from_slice(body).map_err(|e| format!("manifest does not parse: {e}"))?;
        if m.format > FORMAT {
            return Err(format!("format {} is newer than this crik's {FORMAT}", m.format));
        }
        if m.id != id {
            return Err(format!("manifest says it is {}", m.id));
        }
        if m.spared.len() > MAX_SPARED || !m.spared.iter().all(|i| crate::store::is_valid_id(i)) {
            return Err("its list of spared checkpoints is too long or names something that is no id".into());
        }
        Ok(m)
    }

    /// The checkpoint's size as its manifest declares it (added without overflow: a bomb may
    /// declare u64::MAX twice).
    pub fn size(&self) -> u64 {
        self.files.iter().fold(0u64, |a, f| a.saturating_add(f.size))
    }

    fn chunk_hashes(&self) -> impl Iterator<Item = &str> {
        self.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.hash.as_str()))
    }
}

/// Runs `job` on every item with `workers` threads; the first error stops the others (each
/// finishes the item it holds) and is returned.
fn in_parallel<T: Send, E: Send>(
    items: Vec<T>,
    workers: usize,
    job: impl Fn(T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let work = Mutex::new(items);
    let failed: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                if lock(&failed).is_some() {
                    return;
                }
                let Some(item) = lock(&work).pop() else { return };
                if let Err(e) = job(item) {
                    lock(&failed).get_or_insert(e);
                    return;
                }
            });
        }
    });
    failed.into_inner().unwrap_or_else(|p| p.into_inner()).map_or(Ok(()), Err)
}

/// One checkpoint in storage, as `crik inspect` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteSummary {
    pub id: String,
    /// complete, retired or quarantined.
    pub state: &'static str,
    pub size_bytes: u64,
    pub chunks: usize,
    /// Why its manifest could not be read, if it could not.
    pub error: Option<String>,
}

/// What an upload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Uploaded {
    /// The checkpoint's size, uncompressed.
    pub bytes: u64,
    pub chunks: usize,
    /// Chunks the store did not have yet, and their compressed bytes sent.
    pub new_chunks: usize,
    pub sent_bytes: u64,
    pub millis: u64,
}

/// What a download did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Downloaded {
    pub bytes: u64,
    pub fetched_chunks: usize,
    pub received_bytes: u64,
    pub millis: u64,
}

/// The newest checkpoint's id, and its manifest or why it is unusable.
pub type Latest = (String, Result<RemoteManifest, RemoteError>);

/// A chunk's length and every place it goes: (file index, offset).
type Places = (u32, Vec<(usize, u64)>);

pub struct Remote {
    bucket: Arc<Bucket>,
    /// Key prefix, empty or ending in `/`.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    pub url: String,
    concurrency: usize,
    request_timeout: Duration,
    /// Chunks known to be in the store (listed once, then kept up to date by this crik).
    known: Mutex<Option<HashSet<String>>>,
    /// Storage could not be read at start: its checkpoints, never restored by this run, are
    /// never retired by it either (a newer upload of a fresh app must not supersede them).
    keep_older: std::sync::atomic::AtomicBool,
    /// The checkpoints this run published, oldest first.
    written: Mutex<Vec<String>>,
    /// Checkpoints this run never supersedes (see [`RemoteManifest::spared`]).
    spared: Mutex<Vec<String>>,
    lease_config: LeaseConfig,
    /// `encryption.keyFiles`: what is stored is sealed with the first, opened with any.
    keys: Option<Arc<crate::seal::Keys>>,
    /// What a sealed manifest and the lease's generation are bound to: the url, and
    /// `encryption.identity` when set (`s3://bucket/prefix#identity`).
    identity: String,
    /// The prefix's lease once this crik holds it, with the thread that renews it.
    lease: Mutex<Option<(Arc<Lease>, std::thread::JoinHandle<()>)>>,
}

/// Downloads keep this many times `concurrency` requests in flight: a chunk is small, so a GET
/// is bound by the request's round trip, not by bandwidth (measured: 1 GiB from s3s-fs in 8-9 s
/// with 8 in flight, 3.5-4.5 s with 32).
const DOWNLOAD_FANOUT: usize = 4;

/// One chunk to upload: its file, its place in that file, its bytes.
type Job = (usize, usize, Vec<u8>);

/// An upload in progress: chunks go through a bounded queue to `concurrency` workers, each of
/// which hashes its chunk and, when storage does not hold it yet, compresses and puts it.
pub struct Upload<'r> {
    remote: &'r Remote,
    deadline: Instant,
    started: Instant,
    /// Chunks in storage before this upload began.
    known: HashSet<String>,
    /// Chunks this upload sent (or is sending): each is sent once, however often it appears.
    claimed: Mutex<HashSet<String>>,
    /// Each file's path (relative to the checkpoint dir) and its chunks, in order, filled in
    /// as workers hash them.
    files: Mutex<Vec<(String, Vec<Option<ChunkRef>>)>>,
    /// New chunks sent, and their compressed bytes.
    sent: Mutex<(usize, u64)>,
    failed: Mutex<Option<RemoteError>>,
    tx: Mutex<Option<mpsc::SyncSender<Job>>>,
    rx: Mutex<mpsc::Receiver<Job>>,
}

/// A poisoned lock only means another worker panicked; its data is still consistent here.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'r> Upload<'r> {
    /// Starts the workers; they run until [`Upload::finish`] closes the queue.
    pub fn spawn_workers<'s>(
        &'s self,
        s: &'s std::thread::Scope<'s, '_>,
    ) -> Vec<std::thread::ScopedJoinHandle<'s, ()>> {
        (0..self.remote.concurrency).map(|_| s.spawn(|| self.work())).collect()
    }

    fn work(&self) {
        loop {
            let Ok((file, n, data)) = lock(&self.rx).recv() else { return };
            if self.failed() {
                continue; // drain: the upload already failed
            }
            let key = self.remote.keys.as_ref().map(|k| k.writer());
            let name = key.map_or_else(|| chunks::hash(&data), |k| k.chunk_name(&data));
            let r = ChunkRef { hash: name, len: data.len() as u32 };
            if !self.known.contains(&r.hash) && lock(&self.claimed).insert(r.hash.clone()) {
                let z = chunks::compress(&data);
                let z = match key {
                    Some(k) => k.seal_chunk(&r.hash, &z),
                    None => z,
                };
                if let Err(e) = self.remote.bucket.put(&self.remote.key(CHUNKS, &r.hash), &z, self.deadline) {
                    lock(&self.failed).get_or_insert(e.into());
                    continue;
                }
                let mut s = lock(&self.sent);
                (s.0, s.1) = (s.0 + 1, s.1 + z.len() as u64);
            }
            lock(&self.files)[file].1[n] = Some(r);
        }
    }

    /// The storage this upload goes to.
    pub fn remote(&self) -> &'r Remote {
        self.remote
    }

    /// Whether a chunk failed to upload (the upload cannot succeed any more).
    pub fn failed(&self) -> bool {
        lock(&self.failed).is_some()
    }

    /// A new file of the checkpoint (`path` relative to its dir); its chunks follow in order.
    pub fn add_file(&self, path: &str) -> usize {
        let mut files = lock(&self.files);
        files.push((path.to_string(), Vec::new()));
        files.len() - 1
    }

    /// Queues the next chunk of `file`; waits while the workers are busy. `Err` once the
    /// upload has failed or is finished: stop sending.
    pub fn send(&self, file: usize, data: Vec<u8>) -> Result<(), UploadStopped> {
        if self.failed() {
            return Err(UploadStopped);
        }
        let n = {
            let mut files = lock(&self.files);
            files[file].1.push(None);
            files[file].1.len() - 1
        };
        let tx = lock(&self.tx).clone().ok_or(UploadStopped)?;
        tx.send((file, n, data)).map_err(|_| UploadStopped)
    }

    /// Cuts a file on disk into chunks and queues them.
    pub fn send_file(&self, rel: &str, path: &Path) -> Result<(), RemoteError> {
        let file = File::open(path).map_err(local("open", path))?;
        let i = self.add_file(rel);
        // `split` reads in large blocks itself: no BufReader copy in between.
        let r = chunks::split::<RemoteError>(rel, file, |data| {
            // Stops the cutting; [`Upload::finish`] returns the worker's own error.
            Ok(self.send(i, data)?)
        });
        match r {
            Err(_) if self.failed() => Ok(()),
            r => r,
        }
    }

    /// A sink for one streamed file: chunks are cut as its bytes arrive.
    pub fn stream(&self, rel: &str) -> StreamedFile<'_, 'r> {
        StreamedFile { upload: self, file: self.add_file(rel), chunker: chunks::Chunker::default() }
    }

    /// Closes the queue and waits for the workers: every queued chunk is in storage, or the
    /// first error is returned.
    pub fn finish(&self, workers: Vec<std::thread::ScopedJoinHandle<'_, ()>>) -> Result<(), RemoteError> {
        lock(&self.tx).take();
        for w in workers {
            let _ = w.join();
        }
        // The queue is closed: any later send is refused without this error.
        let failed = lock(&self.failed).take();
        failed.map_or(Ok(()), Err)
    }

    /// After [`Upload::finish`]: puts the checkpoint's manifest, which names the chunks of
    /// every file in `manifest` (all of them uploaded), then retires older checkpoints.
    pub fn publish(&self, id: &str, manifest: &Manifest, keep: usize) -> Result<Uploaded, RemoteError> {
        let deadline = self.deadline;
        let remote = self.remote;
        let mut uploaded = std::mem::take(&mut *lock(&self.files));
        let mut files = Vec::with_capacity(manifest.files.len());
        for f in &manifest.files {
            let missing = || RemoteError::Damaged { id: id.into(), why: format!("{} was not uploaded", f.path) };
            let i = uploaded.iter().position(|(p, _)| *p == f.path).ok_or_else(missing)?;
            let chunks: Option<Vec<ChunkRef>> = std::mem::take(&mut uploaded[i].1).into_iter().collect();
            let chunks = chunks.ok_or_else(missing)?;
            let sum: u64 = chunks.iter().map(|c| c.len as u64).sum();
            if sum != f.size {
                let why = format!("{}: {sum} bytes uploaded, the file has {}", f.path, f.size);
                return Err(RemoteError::Damaged { id: id.into(), why });
            }
            files.push(RemoteFile { path: f.path.clone(), size: f.size, chunks });
        }
        let total = files.iter().map(|f| f.size).sum();
        let chunks = files.iter().map(|f| f.chunks.len()).sum();
        if remote.keep_older.load(std::sync::atomic::Ordering::Relaxed) {
            // Every checkpoint there that this run did not write: spared, by it and by whoever
            // restores this one.
            let listed = remote.ids(CHECKPOINTS, deadline)?;
            let written = lock(&remote.written).clone();
            remote.spare(listed.into_iter().filter(|i| i != id && !written.contains(i)));
        }
        let spared = lock(&remote.spared).clone();
        let mut manifest = manifest.clone();
        // Above the newest the prefix has seen, whatever this crik knew when it numbered the
        // checkpoint (it may not have read storage at start): never taken for a rollback.
        if let Some(newest) = remote.lease_generation() {
            manifest.generation = manifest.generation.max(newest.saturating_add(1));
        }
        let body = RemoteManifest { format: FORMAT, id: id.into(), manifest: manifest.clone(), files, spared };
        let body = serde_json::to_vec(&body).expect("manifest serializes");
        let body = match &remote.keys {
            Some(k) => k
                .writer()
                .seal_manifest(&remote.identity, id, &body)
                .map_err(|source| RemoteError::Key { id: id.into(), source })?,
            None => body,
        };
        let key = remote.key(CHECKPOINTS, &format!("{id}.json"));
        // Renewed right before: a crik that lost the prefix (or cannot reach the lease) never
        // publishes into it.
        if let Some(lease) = remote.writable()? {
            lease.fence()?;
        }
        remote.bucket.put(&key, &body, deadline)?;
        // Read back before the checkpoint is called complete: an endpoint that said yes and
        // kept nothing (or something else) is found now, while the app can still keep running.
        match remote.bucket.get(&key, deadline)? {
            Some(stored) if stored == body => {}
            Some(_) => {
                return Err(RemoteError::Damaged { id: id.into(), why: "its manifest reads back different".into() })
            }
            None => {
                return Err(RemoteError::Damaged {
                    id: id.into(),
                    why: "its manifest is not there after the PUT".into(),
                })
            }
        }

        lock(&remote.written).push(id.to_string());
        remote.record_generation(manifest.generation);
        let claimed = std::mem::take(&mut *lock(&self.claimed));
        if let Some(k) = lock(&remote.known).as_mut() {
            k.extend(claimed);
        }
        let (new_chunks, sent_bytes) = *lock(&self.sent);
        // The checkpoint is published: what follows is housekeeping. A failure there leaves
        // older manifests beside it (a start takes the newest; the next upload retires them),
        // and must not fail a checkpoint that is complete.
        if let Err(e) = remote.retire_older(id, keep, deadline) {
            log::warn!("storage: checkpoint {id} is published, but retiring older ones failed (done next time): {e}");
        }
        let millis = self.started.elapsed().as_millis() as u64;
        Ok(Uploaded { bytes: total, chunks, new_chunks, sent_bytes, millis })
    }
}

/// The upload was stopped (a chunk failed, or the queue is closed).
#[derive(Debug, thiserror::Error)]
#[error("the upload stopped")]
pub struct UploadStopped;

/// One file of a checkpoint uploaded as its bytes arrive.
pub struct StreamedFile<'u, 'r> {
    upload: &'u Upload<'r>,
    file: usize,
    chunker: chunks::Chunker,
}

impl StreamedFile<'_, '_> {
    pub fn write(&mut self, data: &[u8]) -> Result<(), UploadStopped> {
        let (upload, file) = (self.upload, self.file);
        self.chunker.push(data, &mut |c| upload.send(file, c))
    }

    /// The end of the file: its last chunks are queued.
    pub fn end(self) -> Result<(), UploadStopped> {
        let (upload, file) = (self.upload, self.file);
        self.chunker.finish(&mut |c| upload.send(file, c))
    }
}

impl Remote {
    pub fn new(
        cfg: &StorageConfig,
        keys: Option<Arc<crate::seal::Keys>>,
        identity: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Remote, S3Error> {
        let region = cfg
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        crate::config::check_region(&region).map_err(|why| S3Error::Setting(format!("the region {why}")))?;
        let endpoint = cfg.endpoint.as_ref().map(|e| e.as_str().to_string());
        let bucket = Arc::new(Bucket::new(
            &cfg.url.bucket,
            endpoint.as_deref(),
            &region,
            cfg.request_timeout,
            cfg.allow_plain_http,
            cfg.credentials_file.as_ref().map(|p| p.as_path()),
            env,
        )?);
        Ok(Remote {
            bucket,
            prefix: cfg.url.prefix.clone(),
            url: cfg.url.to_string(),
            concurrency: cfg.concurrency.max(1),
            request_timeout: cfg.request_timeout,
            known: Mutex::new(None),
            keep_older: std::sync::atomic::AtomicBool::new(false),
            written: Mutex::new(Vec::new()),
            spared: Mutex::new(Vec::new()),
            lease_config: cfg.lease.clone(),
            keys,
            identity: match identity {
                Some(i) => format!("{}#{i}", cfg.url),
                None => cfg.url.to_string(),
            },
            lease: Mutex::new(None),
        })
    }

    /// Takes the prefix's lease before anything is restored from it or written to it, waiting
    /// for another holder as `storage.lease` says (`wait` sleeps, or says why to stop).
    pub fn acquire_lease(&self, wait: lease::Wait) -> Result<(), RemoteError> {
        if !self.lease_config.enabled {
            log::warn!(
                "storage.lease is off: nothing stops another crik from writing {} (two on one prefix destroy each \
                 other's checkpoints)",
                self.url
            );
            return Ok(());
        }
        if lock(&self.lease).is_none() {
            self.take_lease(&self.lease_config, wait)?;
        }
        Ok(())
    }

    /// Acquires the lease as `cfg` says and starts renewing it.
    fn take_lease(&self, cfg: &LeaseConfig, wait: lease::Wait) -> Result<(), RemoteError> {
        // Read before anything is written: the bucket is there and answers as S3 does (some
        // servers create a missing bucket on a PUT, or answer a GET of a missing one as of a
        // missing key).
        self.ids(CHECKPOINTS, self.soon())?;
        let key = self.key(LEASE, "");
        let seal = lease::Sealing { keys: self.keys.clone(), identity: self.identity.clone() };
        let held = lease::acquire(self.bucket.clone(), key, &self.url, cfg, self.request_timeout, wait, seal)?;
        let renewer = held.keep_renewed();
        lock(&self.lease).get_or_insert((held, renewer));
        Ok(())
    }

    /// The lease, checked, before a write: this crik holds it (taken now, without waiting, if
    /// storage could not be read at start) and its last renewal is recent. `None`: lease off.
    fn writable(&self) -> Result<Option<Arc<Lease>>, RemoteError> {
        if !self.lease_config.enabled {
            return Ok(None);
        }
        if lock(&self.lease).is_none() {
            let now = LeaseConfig { when_held: WhenHeld::Fail, ..self.lease_config.clone() };
            self.take_lease(&now, &mut |_| Err("not waiting while the app runs".into()))?;
        }
        self.still_writable()?;
        Ok(lock(&self.lease).as_ref().map(|(l, _)| l.clone()))
    }

    /// Checked again right before each delete of a long housekeeping pass: a crik stopped or cut
    /// off in the middle of one (for longer than the lease's ttl) deletes nothing more when it
    /// resumes.
    fn still_writable(&self) -> Result<(), RemoteError> {
        if !self.lease_config.enabled {
            return Ok(());
        }
        match lock(&self.lease).as_ref() {
            Some((l, _)) => Ok(l.check()?),
            None => Err(LeaseError::NotHolder { url: self.url.clone(), why: "it never took it".into() }.into()),
        }
    }

    /// The newest generation the lease this crik holds records (see
    /// [`crate::store::generation`]): authentic, as the lease checked it when it was taken over,
    /// or recorded since by this crik. `None` without a lease; 0 where it records none.
    pub fn lease_generation(&self) -> Option<u64> {
        lock(&self.lease).as_ref().map(|(l, _)| l.generation())
    }

    /// Records generation `g` (just written or restored) in the lease. A failure is logged: the
    /// lease then vouches for an older generation, which refuses less, never more.
    pub fn record_generation(&self, g: u64) {
        let lease = lock(&self.lease).as_ref().map(|(l, _)| l.clone());
        if let Some(lease) = lease {
            if let Err(e) = lease.record_generation(g) {
                log::warn!("cannot record generation {g} in the lease on {}: {e}", self.url);
            }
        }
    }

    /// Releases the lease (when crik exits): the next start on the prefix proceeds at once.
    pub fn release_lease(&self) {
        if let Some((held, renewer)) = lock(&self.lease).take() {
            held.release(Some(renewer));
        }
    }

    fn key(&self, area: &str, name: &str) -> String {
        format!("{}{area}{name}", self.prefix)
    }

    fn soon(&self) -> Instant {
        Instant::now() + self.request_timeout * 2
    }

    /// Ids in an area, oldest first.
    fn ids(&self, area: &str, deadline: Instant) -> Result<Vec<String>, S3Error> {
        let base = self.key(area, "");
        let mut ids: Vec<String> = self
            .bucket
            .list(&base, deadline)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&base)?.strip_suffix(".json").map(String::from))
            .filter(|id| crate::store::is_valid_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The newest complete checkpoint in storage: `Ok(None)` when there is none; the inner
    /// error when its manifest is there but unusable.
    pub fn latest(&self) -> Result<Option<Latest>, RemoteError> {
        let deadline = self.soon();
        let Some(id) = self.ids(CHECKPOINTS, deadline)?.pop() else { return Ok(None) };
        let bytes = match self.bucket.get(&self.key(CHECKPOINTS, &format!("{id}.json")), deadline) {
            // No manifest is that large: damage (or a bomb), quarantined like any other.
            Err(S3Error::TooLarge { .. }) => {
                return Ok(Some((
                    id.clone(),
                    Err(RemoteError::Damaged { id, why: "manifest larger than 64 MiB".into() }),
                )))
            }
            r => r?,
        };
        let parsed = match bytes {
            // Listed a moment ago, gone now: retired or quarantined in between.
            None => {
                Err(RemoteError::Damaged { id: id.clone(), why: "its manifest disappeared while being read".into() })
            }
            Some(b) => self.read_manifest(&id, &b),
        };
        Ok(Some((id, parsed)))
    }

    fn known_chunks(&self, deadline: Instant) -> Result<HashSet<String>, S3Error> {
        let mut known = lock(&self.known);
        if known.is_none() {
            let base = self.key(CHUNKS, "");
            let listed = self.bucket.list(&base, deadline)?;
            *known = Some(listed.into_iter().filter_map(|k| k.strip_prefix(&base).map(String::from)).collect());
        }
        Ok(known.clone().unwrap_or_default())
    }

    /// Uploads a published local checkpoint: its new chunks in parallel, then its manifest.
    /// Older checkpoints in storage are retired once it is there.
    pub fn upload(
        &self,
        ckpt: &Checkpoint,
        manifest: &Manifest,
        keep: usize,
        deadline: Instant,
    ) -> Result<Uploaded, RemoteError> {
        let up = self.begin_upload(deadline)?;
        std::thread::scope(|s| {
            let workers = up.spawn_workers(s);
            let sent = manifest.files.iter().try_for_each(|f| up.send_file(&f.path, &ckpt.dir.join(&f.path)));
            up.finish(workers)?;
            sent
        })?;
        up.publish(&ckpt.id, manifest, keep)
    }

    /// Starts an upload: chunks are then sent from files ([`Upload::send_file`]) or as they
    /// arrive ([`Upload::stream`]), and the manifest is put last ([`Upload::publish`]).
    pub fn begin_upload(&self, deadline: Instant) -> Result<Upload<'_>, RemoteError> {
        self.writable()?;
        let known = self.known_chunks(deadline)?;
        let (tx, rx) = mpsc::sync_channel::<Job>(self.concurrency);
        Ok(Upload {
            remote: self,
            deadline,
            started: Instant::now(),
            known,
            claimed: Mutex::new(HashSet::new()),
            files: Mutex::new(Vec::new()),
            sent: Mutex::new((0, 0)),
            failed: Mutex::new(None),
            tx: Mutex::new(Some(tx)),
            rx: Mutex::new(rx),
        })
    }

    /// From now on, uploads leave storage's older checkpoints where they are: this run could not
    /// read storage at start, so it never restored them, and must not supersede them.
    pub fn keep_older_checkpoints(&self) {
        self.keep_older.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Moves every published checkpoint but `id` (and those spared) to retired/, keeping `keep`
    /// of those.
    fn retire_older(&self, id: &str, keep: usize, deadline: Instant) -> Result<(), RemoteError> {
        self.writable()?;
        let spared = lock(&self.spared).clone();
        // Listed again after moving: a listing may lag a write just made (seen with s3s-fs
        // right after the previous upload).
        for pass in 1..=3 {
            let older: Vec<String> =
                self.ids(CHECKPOINTS, deadline)?.into_iter().filter(|i| i != id && !spared.contains(i)).collect();
            if older.is_empty() {
                break;
            }
            if pass == 3 {
                log::warn!("storage: older checkpoints {older:?} still listed in {CHECKPOINTS} after retiring them");
            }
            for old in older {
                self.move_manifest(&old, CHECKPOINTS, RETIRED, deadline)?;
            }
        }
        if !spared.is_empty() {
            log::warn!(
                "storage: checkpoint {id} is published beside {} older one(s) this app's lineage never restored, \
                 which stay in {}{CHECKPOINTS}: {spared:?}",
                spared.len(),
                self.url
            );
        }
        self.prune(RETIRED, keep, deadline)
    }

    /// Adds to the checkpoints this run never supersedes (the newest [`MAX_SPARED`] are kept).
    fn spare(&self, ids: impl Iterator<Item = String>) {
        let mut spared = lock(&self.spared);
        for id in ids {
            if !spared.contains(&id) {
                spared.push(id);
            }
        }
        spared.sort();
        let excess = spared.len().saturating_sub(MAX_SPARED);
        spared.drain(..excess);
    }

    /// The checkpoint this run restores (or found as new in the image dir): the ones its
    /// lineage spared are spared by this run too.
    pub fn inherit(&self, m: &RemoteManifest) {
        if m.spared.is_empty() {
            return;
        }
        log::warn!(
            "storage also holds checkpoint(s) {:?}, which this app's lineage never restored (a run could not read \
             storage, or kept them for another node): they stay in {}{CHECKPOINTS}, never superseded",
            m.spared,
            self.url
        );
        self.spare(m.spared.iter().cloned());
    }

    /// Downloads a checkpoint into `dir` (a staging dir), every chunk checked against its hash.
    pub fn download(&self, m: &RemoteManifest, dir: &Path, deadline: Instant) -> Result<Downloaded, RemoteError> {
        let started = Instant::now();
        let damaged = |why: String| RemoteError::Damaged { id: m.id.clone(), why };
        // What the manifest declares is checked before a byte is written: a chunk larger than
        // chunks ever are is damage; a checkpoint larger than the room here is kept for a node
        // with room (a few bytes of chunk can declare a file of any size: zero pages repeat).
        if let Some(c) = m.files.iter().flat_map(|f| &f.chunks).find(|c| c.len > chunks::MAX_SIZE) {
            return Err(damaged(format!("chunk {} is listed as {} bytes, more than chunks ever are", c.hash, c.len)));
        }
        let needs = m.size();
        let free = crate::host::free_space(dir).map_err(|e| local("statvfs", dir)(e.into()))?;
        if needs > free {
            return Err(RemoteError::NoRoom { id: m.id.clone(), needs, free });
        }
        // Where each distinct chunk goes (a chunk may appear several times: zero pages).
        let mut places: HashMap<&str, Places> = HashMap::new();
        let mut files = Vec::with_capacity(m.files.len());
        for (i, f) in m.files.iter().enumerate() {
            if !crate::store::integrity::is_safe_relative(&f.path) {
                return Err(damaged(format!("unsafe path {:?}", f.path)));
            }
            let sum: u64 = f.chunks.iter().map(|c| c.len as u64).sum();
            if sum != f.size {
                return Err(damaged(format!("{}: chunks add up to {sum} bytes, the file has {}", f.path, f.size)));
            }
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(local("create", parent))?;
            }
            let file = File::create(&path).map_err(local("create", &path))?;
            file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(local("chmod", &path))?;
            file.set_len(f.size).map_err(local("size", &path))?;
            let mut offset = 0;
            for c in &f.chunks {
                places.entry(&c.hash).or_insert((c.len, Vec::new())).1.push((i, offset));
                offset += c.len as u64;
            }
            files.push((file, path));
        }
        let work: Vec<(&str, Places)> = places.into_iter().collect();
        let fetched = work.len();
        let received = Mutex::new(0u64);
        in_parallel(work, self.concurrency * DOWNLOAD_FANOUT, |(hash, (len, at))| -> Result<(), RemoteError> {
            let (stored, data) = self.fetch_chunk(&m.id, hash, len, deadline)?;
            *lock(&received) += stored;
            for (f, off) in at {
                let (file, path) = &files[f];
                file.write_all_at(&data, off).map_err(local("write", path))?;
            }
            Ok(())
        })?;
        for (file, path) in &files {
            file.sync_all().map_err(local("fsync", path))?;
        }
        Ok(Downloaded {
            bytes: needs,
            fetched_chunks: fetched,
            received_bytes: received.into_inner().unwrap_or_else(|p| p.into_inner()),
            millis: started.elapsed().as_millis() as u64,
        })
    }

    fn fetch_chunk(&self, id: &str, hash: &str, len: u32, deadline: Instant) -> Result<(u64, Vec<u8>), RemoteError> {
        let damaged = |why: String| RemoteError::Damaged { id: id.into(), why };
        let stored = self
            .bucket
            .get(&self.key(CHUNKS, hash), deadline)?
            .ok_or_else(|| damaged(format!("chunk {hash} is missing")))?;
        let r = ChunkRef { hash: hash.into(), len };
        let data = match &self.keys {
            // Opened (authenticated) first, then decompressed, then named again with its key.
            Some(keys) => {
                let (compressed, key) =
                    keys.open_chunk(hash, &stored).map_err(|e| damaged(format!("chunk {hash}: {e}")))?;
                let data = chunks::decompress(&compressed, &r).map_err(|e| damaged(e.to_string()))?;
                if key.chunk_name(&data) != hash {
                    return Err(damaged(format!("chunk {hash}: its content is not what its name says")));
                }
                data
            }
            None => chunks::open(&stored, &r).map_err(|e| damaged(e.to_string()))?,
        };
        Ok((stored.len() as u64, data))
    }

    /// A manifest as stored at `id`: opened with the configured keys when sealed (a sealed one
    /// without its key is a configuration matter, [`RemoteError::Key`]; one that does not open,
    /// or a plain one where keys are configured, is damage), then checked.
    fn read_manifest(&self, id: &str, body: &[u8]) -> Result<RemoteManifest, RemoteError> {
        use crate::seal::{Keys, SealError};
        let damaged = |why: String| RemoteError::Damaged { id: id.into(), why };
        let json = match (&self.keys, Keys::sealed_manifest_key(body)) {
            (None, Some(key_id)) => {
                return Err(RemoteError::Key { id: id.into(), source: SealError::UnknownKey(key_id) })
            }
            (None, None) => body.to_vec(),
            (Some(keys), _) => match keys.open_manifest(&self.identity, id, body) {
                Ok(json) => json,
                Err(source @ SealError::UnknownKey(_)) => return Err(RemoteError::Key { id: id.into(), source }),
                Err(e) => return Err(damaged(format!("its manifest is {e}"))),
            },
        };
        RemoteManifest::parse(id, &json).map_err(damaged)
    }

    /// After a restore: the checkpoint goes to retired/ (keeping `keep` of them), so a crash
    /// of the restored app never replays it.
    pub fn retire(&self, id: &str, keep: usize) -> Result<(), RemoteError> {
        self.writable()?;
        let deadline = self.soon();
        self.move_manifest(id, CHECKPOINTS, RETIRED, deadline)?;
        self.prune(RETIRED, keep, deadline)
    }

    /// Every checkpoint in storage, oldest first within each area (complete, retired,
    /// quarantined), each with its size and chunks as its manifest says, for `crik inspect`.
    pub fn summaries(&self) -> Result<Vec<RemoteSummary>, RemoteError> {
        let deadline = self.soon();
        let mut out = Vec::new();
        for (area, state) in [(CHECKPOINTS, "complete"), (RETIRED, "retired"), (QUARANTINE, "quarantined")] {
            for id in self.ids(area, deadline)? {
                let body = self.bucket.get(&self.key(area, &format!("{id}.json")), deadline)?;
                let parsed = body.as_deref().map(|b| self.read_manifest(&id, b).map_err(|e| e.to_string()));
                let (size_bytes, chunks, error) = match parsed {
                    Some(Ok(m)) => (m.size(), m.files.iter().map(|f| f.chunks.len()).sum(), None),
                    Some(Err(why)) => (0, 0, Some(why)),
                    None => (0, 0, Some("manifest disappeared while being read".into())),
                };
                out.push(RemoteSummary { id, state, size_bytes, chunks, error });
            }
        }
        Ok(out)
    }

    /// The CRIU run ids of the dumps that took the network lock, with their checkpoints' ids, as
    /// the manifests in storage name them (complete, retired, quarantined: the newest [`MAX_LOCKS_READ`] of each area).
    /// Unreadable manifests are skipped: this is housekeeping.
    pub fn network_locks(&self) -> Result<Vec<(String, String)>, RemoteError> {
        let deadline = self.soon();
        let mut ids = Vec::new();
        for area in [CHECKPOINTS, RETIRED, QUARANTINE] {
            let listed = self.ids(area, deadline)?;
            for id in listed.iter().rev().take(MAX_LOCKS_READ) {
                let Some(body) = self.bucket.get(&self.key(area, &format!("{id}.json")), deadline)? else { continue };
                if let Ok(m) = self.read_manifest(id, &body) {
                    ids.extend(m.manifest.network_lock.map(|run| (run, id.clone())));
                }
            }
        }
        Ok(ids)
    }

    /// After a failed restore: the checkpoint goes to quarantine/, never retried.
    pub fn quarantine(&self, id: &str) -> Result<(), RemoteError> {
        self.writable()?;
        self.move_manifest(id, CHECKPOINTS, QUARANTINE, self.soon())
    }

    /// S3 has no rename: the manifest is written under its new name, then removed.
    fn move_manifest(&self, id: &str, from: &str, to: &str, deadline: Instant) -> Result<(), RemoteError> {
        let name = format!("{id}.json");
        let Some(body) = self.bucket.get(&self.key(from, &name), deadline)? else { return Ok(()) };
        self.still_writable()?;
        self.bucket.put(&self.key(to, &name), &body, deadline)?;
        self.still_writable()?;
        self.bucket.delete(&self.key(from, &name), deadline)?;
        Ok(())
    }

    fn prune(&self, area: &str, keep: usize, deadline: Instant) -> Result<(), RemoteError> {
        let ids = self.ids(area, deadline)?;
        for id in &ids[..ids.len().saturating_sub(keep)] {
            self.still_writable()?;
            self.bucket.delete(&self.key(area, &format!("{id}.json")), deadline)?;
        }
        Ok(())
    }

    /// Removes the chunks no manifest (published, retired or quarantined) refers to: those of
    /// pruned checkpoints and of uploads cut short. Returns how many were removed.
    pub fn collect_garbage(&self, deadline: Instant) -> Result<usize, RemoteError> {
        if let Some(lease) = self.writable()? {
            if !lease.may_collect() {
                log::debug!(
                    "storage: no garbage collected yet: the lease was taken over from a crik that died, whose last \
                     upload may still land"
                );
                return Ok(0);
            }
        }
        let mut referenced: HashSet<String> = HashSet::new();
        for area in [CHECKPOINTS, RETIRED, QUARANTINE] {
            for id in self.ids(area, deadline)? {
                let Some(body) = self.bucket.get(&self.key(area, &format!("{id}.json")), deadline)? else { continue };
                match self.read_manifest(&id, &body).map_err(|e| e.to_string()) {
                    Ok(m) => referenced.extend(m.chunk_hashes().map(String::from)),
                    // A manifest this crik cannot read may still be restorable by another:
                    // nothing is collected rather than a chunk it needs.
                    Err(why) => {
                        log::warn!("storage: {area}{id}.json is unusable ({why}): no garbage collected");
                        return Ok(0);
                    }
                }
            }
        }
        let base = self.key(CHUNKS, "");
        let garbage: Vec<String> = self
            .bucket
            .list(&base, deadline)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(&base).map(String::from))
            .filter(|h| !referenced.contains(h))
            .collect();
        let deleted = in_parallel(garbage.clone(), self.concurrency, |h| -> Result<(), RemoteError> {
            self.still_writable()?;
            Ok(self.bucket.delete(&self.key(CHUNKS, &h), deadline)?)
        });
        if let Some(k) = lock(&self.known).as_mut() {
            for h in &garbage {
                k.remove(h);
            }
        }
        deleted?;
        Ok(garbage.len())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.release_lease();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_manifest_is_checked_before_use() {
        let m = RemoteManifest {
            format: FORMAT,
            id: "20261207T000000.000Z".into(),
            manifest: Manifest::for_tests(),
            files: vec![],
            spared: vec![],
        };
        let body = serde_json::to_vec(&m).unwrap();
        assert_eq!(RemoteManifest::parse(&m.id, &body).unwrap().id, m.id);
        let e = RemoteManifest::parse("20261207T000001.000Z", &body).unwrap_err();
        assert!(e.contains("manifest says it is 20261207T000000.000Z"), "{e}");
        let newer = serde_json::to_vec(&RemoteManifest { format: FORMAT + 1, ..m.clone() }).unwrap();
        assert!(RemoteManifest::parse(&m.id, &newer).unwrap_err().contains("newer"));
        assert!(RemoteManifest::parse(&m.id, b"<html>").unwrap_err().contains("does not parse"));
        let spared = serde_json::to_vec(&RemoteManifest { spared: vec!["../x".into()], ..m.clone() }).unwrap();
        assert!(RemoteManifest::parse(&m.id, &spared).unwrap_err().contains("spared"));
        let many = RemoteManifest { spared: vec![m.id.clone(); MAX_SPARED + 1], ..m.clone() };
        assert!(RemoteManifest::parse(&m.id, &serde_json::to_vec(&many).unwrap()).is_err());
        let mut huge = body.clone();
        huge.resize(MAX_MANIFEST + 1, b' ');
        assert!(RemoteManifest::parse(&m.id, &huge).unwrap_err().contains("larger than 16 MiB"));
    }

    #[test]
    fn parallel_jobs_do_every_item_or_stop_at_the_first_error() {
        let done = Mutex::new(Vec::new());
        in_parallel((0..100).collect(), 4, |i| -> Result<(), String> {
            lock(&done).push(i);
            Ok(())
        })
        .unwrap();
        let mut done = done.into_inner().unwrap();
        done.sort();
        assert_eq!(done, (0..100).collect::<Vec<_>>());
        // One worker takes the items from the end: the first it takes fails, and it stops.
        let tried = Mutex::new(0);
        let e = in_parallel((0..100).collect(), 1, |i: u32| {
            *lock(&tried) += 1;
            if i == 99 {
                Err(format!("item {i} failed"))
            } else {
                Ok(())
            }
        });
        assert_eq!(e, Err("item 99 failed".into()));
        assert_eq!(*lock(&tried), 1, "no item after the failed one");
        assert_eq!(in_parallel(Vec::<u32>::new(), 0, |_| Err(())), Ok(()));
    }
}
