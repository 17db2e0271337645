//! A checkpoint CRIU writes whole (every image, pages included) into the image dir's staging
//! area or into memory staging; it is sealed and published (or, from memory, uploaded and
//! freed), then uploaded when storage is configured.

use std::time::Instant;

use super::dump::{dump_into, Dump};
use super::upload::{upload, upload_error};
use super::{keep_failed_log, CheckpointError, Published, Target};
use crate::init::supervisor::Signals;
use crate::lifecycle::plan::Cost;
use crate::sizes;
use crate::store::{self, Staging, Store};

/// CRIU writes every image (into the image dir or memory staging); the upload, if any, follows.
pub(super) fn checkpoint(
    signals: &Signals,
    store: &Store,
    target: &Target,
    kind: &str,
    started: Instant,
) -> Result<Published, CheckpointError> {
    let off_disk = target.config.plaintext_off_disk();
    let mut no_room = None;
    let memory = target.staging.filter(|m| match m.fits(crate::init::app::tree_memory(target.app)) {
        Ok(()) => true,
        Err(why) if off_disk => {
            no_room = Some(why);
            false
        }
        Err(why) => {
            log::warn!("dumping into the image dir, not {}: {why}", m.dir().display());
            false
        }
    });
    if let Some(why) = no_room {
        return Err(CheckpointError::NoPlaintextOnDisk(why));
    }
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
    let manifest = match dumped.and_then(|m| Ok(store::seal(&staged, m, store.is_sealed())?)) {
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
        Err(e) if off_disk => Err(upload_error(
            &staged.id,
            remote,
            e,
            "encryption.noPlaintextOnDisk keeps it out of the image dir: it is lost",
        )),
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
