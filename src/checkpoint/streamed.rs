//! A streamed checkpoint (`storage.streamPages`): crik is CRIU's page server, so the app's
//! pages are chunked, hashed and uploaded while CRIU dumps them, and never written to a disk.
//! CRIU writes only its small images (into memory staging or the image dir); they are uploaded
//! in CRIU's post-dump notification, then the manifest. CRIU answers that notification only
//! after the manifest is in storage: a final checkpoint's app is stopped only once its
//! checkpoint is complete there. Any storage failure rolls the dump back (the app keeps
//! running) and the caller dumps again the usual way.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::dump::{dump_into, Dump};
use super::upload::after_upload;
use super::{keep_failed_log, CheckpointError, Published, Target};
use crate::criu::pageserver::{self, PageServerError, PageSink, SinkError};
use crate::init::supervisor::Signals;
use crate::layout::IMAGES_DIR;
use crate::lifecycle::plan::Cost;
use crate::remote::{Remote, StreamedFile, Upload, Uploaded};
use crate::sizes;
use crate::store::integrity::{Sum, Summer};
use crate::store::manifest::{FileSum, Manifest};
use crate::store::{self, Checkpoint, Staging, Store};

pub(super) enum Outcome {
    Published(Published),
    /// Storage failed before the checkpoint was complete there (why); CRIU rolled back (or
    /// never started) and the app keeps running.
    StorageFailed(String),
}

/// Whether a page-stream failure is crik's side of it (the upload, the server, its images),
/// not CRIU's: worth a dump the usual way. A CRIU failure would only repeat.
fn storage_side(e: &CheckpointError) -> bool {
    matches!(
        e,
        CheckpointError::PageStream(
            PageServerError::Sink(_) | PageServerError::Protocol(_) | PageServerError::Image { .. }
        ) | CheckpointError::PageStreamSocket(_)
    )
}

pub(super) fn checkpoint(
    signals: &Signals,
    store: &Store,
    target: &Target,
    kind: &str,
    remote: &Remote,
    started: Instant,
) -> Result<Outcome, CheckpointError> {
    let deadline = started + target.deadline;
    let up = match remote.begin_upload(deadline) {
        Ok(up) => up,
        Err(e) => return Ok(Outcome::StorageFailed(e.to_string())),
    };
    // Only the small images land here: memory staging needs little room for them.
    let memory = target.staging.filter(|m| m.fits(0).is_ok());
    let area: &dyn Staging = match memory {
        Some(m) => m,
        None if target.config.plaintext_off_disk() => {
            return Ok(Outcome::StorageFailed("storage.stagingDir has no room for the small images".into()))
        }
        None => store,
    };
    let staged = area.stage()?;
    log::info!(event = "checkpoint_started", kind, pid = target.app.as_raw();
        "{kind} checkpoint of app (pid {}), its pages streamed to {}, its other images into {}",
        target.app, remote.url, staged.dir.display());

    let result = dump_streamed(signals, &staged, target, &up);
    let result = match result {
        Ok((manifest, uploaded, tail)) => {
            // The image dir's checkpoints are older than this one, in storage only: a start
            // that cannot reach storage must not restore one of them as if it were current.
            store.retire_where(|_| true, target.config.keep_checkpoints);
            after_upload(remote, &staged.id, &uploaded, target, deadline);
            Ok(Outcome::Published(Published {
                id: staged.id.clone(),
                size: manifest.files.iter().map(|f| f.size).sum(),
                millis: started.elapsed().as_millis() as u64,
                cost: Cost::of(&manifest, Some(tail.as_millis() as u64)),
                staging: "storage (streamed)",
                location: format!("in storage only ({})", remote.url),
            }))
        }
        Err(CheckpointError::Storage(e)) => Ok(Outcome::StorageFailed(e.to_string())),
        Err(e) if storage_side(&e) => Ok(Outcome::StorageFailed(e.to_string())),
        Err(e) => {
            keep_failed_log(&staged, store);
            Err(e)
        }
    };
    area.discard(&staged);
    result
}

/// The dump, with crik's page server and the upload's workers running beside it. Returns the
/// manifest as uploaded, the upload, and how long the post-dump part took (the app frozen).
fn dump_streamed(
    signals: &Signals,
    staged: &Checkpoint,
    target: &Target,
    up: &Upload,
) -> Result<(Manifest, Uploaded, Duration), CheckpointError> {
    let (ours, theirs) = UnixStream::pair().map_err(CheckpointError::PageStreamSocket)?;
    let images = staged.images_dir();
    std::thread::scope(|s| {
        let mut workers = Some(up.spawn_workers(s));
        let mut server = Some(s.spawn(|| {
            let mut sink = UploadSink { upload: up, file: None };
            pageserver::serve(ours, &images, IMAGES_DIR, &mut sink)
        }));
        let mut uploaded = None;
        let mut on_dumped = |m: &mut Manifest| -> Result<(), CheckpointError> {
            let tail = Instant::now();
            // CRIU closed the stream before this notification: the server has returned.
            let streamed = join(server.take())?;
            m.files = upload_small_images(staged, up)?;
            m.files.extend(streamed);
            m.files.sort_by(|a, b| a.path.cmp(&b.path));
            let fail = |e| CheckpointError::Storage(Box::new(e));
            up.finish(workers.take().unwrap_or_default()).map_err(fail)?;
            let u = up.publish(&staged.id, m, target.config.keep_checkpoints).map_err(fail)?;
            uploaded = Some((u, tail.elapsed()));
            Ok(())
        };
        let how = Dump { writeback: false, page_server: Some(OwnedFd::from(theirs)), on_dumped: Some(&mut on_dumped) };
        let dumped = dump_into(signals, staged, target, how);
        // Whatever happened, the threads end: CRIU is gone, so the stream is closed.
        let served = join(server.take());
        let finished = workers.take().map(|w| up.finish(w));
        let manifest = match dumped {
            Ok(m) => m,
            // The upload's own error says more than the sink's "upload stopped".
            Err(e) => {
                return Err(match (finished, served) {
                    (Some(Err(up_err)), _) => CheckpointError::Storage(Box::new(up_err)),
                    (_, Err(s @ (PageServerError::Sink(_) | PageServerError::Protocol(_)))) => s.into(),
                    _ => e,
                })
            }
        };
        let (u, tail) = uploaded.ok_or(CheckpointError::NoPostDump)?;
        Ok((manifest, u, tail))
    })
}

/// The page server's result, once it has returned; `Ok(vec![])` when already joined.
fn join(
    server: Option<std::thread::ScopedJoinHandle<'_, Result<Vec<FileSum>, PageServerError>>>,
) -> Result<Vec<FileSum>, PageServerError> {
    match server {
        Some(h) => h.join().unwrap_or_else(|_| Err(PageServerError::Protocol("the page server panicked".into()))),
        None => Ok(Vec::new()),
    }
}

/// Uploads CRIU's other images and the archives, and returns their sums (no digests: like the
/// pages, these files only live in storage, where their chunks are authenticated). CRIU still writes its
/// log after this notification: what it holds so far is uploaded (all of the dump itself).
fn upload_small_images(staged: &Checkpoint, up: &Upload) -> Result<Vec<FileSum>, CheckpointError> {
    let log = format!("{IMAGES_DIR}/{}", crate::layout::DUMP_LOG);
    let mut sums = store::sums(&staged.dir, false)?;
    sums.retain(|f| f.path != log);
    let fail = |e| CheckpointError::Storage(Box::new(e));
    for f in &sums {
        up.send_file(&f.path, &staged.dir.join(&f.path)).map_err(fail)?;
    }
    if let Ok(bytes) = std::fs::read(staged.dir.join(&log)) {
        let mut file = up.stream(&log);
        let sent = file.write(&bytes).and_then(|()| file.end());
        if sent.is_ok() {
            let mut sum = Summer::new(false);
            sum.update(&bytes);
            let Sum { size, crc32, digest } = sum.finish();
            sums.push(FileSum { path: log, size, crc32, digest });
        }
    }
    log::debug!(
        "checkpoint {}: {} other file(s), {}",
        staged.id,
        sums.len(),
        sizes::human(sums.iter().map(|f| f.size).sum())
    );
    Ok(sums)
}

/// The page server's sink: each pages image is one streamed file of the upload.
struct UploadSink<'u, 'r> {
    upload: &'u Upload<'r>,
    file: Option<StreamedFile<'u, 'r>>,
}

impl PageSink for UploadSink<'_, '_> {
    fn begin(&mut self, path: &str) -> Result<(), SinkError> {
        self.file = Some(self.upload.stream(path));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let file = self.file.as_mut().ok_or("pages before their image began")?;
        Ok(file.write(data)?)
    }

    fn end(&mut self) -> Result<(), SinkError> {
        match self.file.take() {
            Some(f) => Ok(f.end()?),
            None => Ok(()),
        }
    }
}
