//! The upload that follows a checkpoint written whole, and what every upload is followed by.

use std::time::Instant;

use super::{CheckpointError, Target};
use crate::sizes;
use crate::store::manifest::Manifest;
use crate::store::Checkpoint;

/// Uploads a sealed checkpoint; after a periodic one, unreferenced chunks are removed (never
/// on the final one: the notice is short, and the next run's first checkpoint does it).
pub(super) fn upload(
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
pub(super) fn after_upload(
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

/// An upload's failure, once the caller knows where the checkpoint is kept instead.
pub(super) fn upload_error(
    id: &str,
    remote: &crate::remote::Remote,
    e: crate::remote::RemoteError,
    kept: &str,
) -> CheckpointError {
    CheckpointError::Upload { id: id.into(), url: remote.url.clone(), source: Box::new(e), kept: kept.into() }
}
