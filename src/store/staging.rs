//! Memory staging (`storage.stagingDir`): CRIU dumps into a memory-backed dir instead of
//! imageDir, so the dump costs no disk writes and no fsync, and crik uploads from there.
//!
//! The price is memory: the dump takes about as much as the app's anonymous memory, and on a
//! tmpfs that is charged to the container's cgroup like the app's own. So a dump goes there only
//! when both the dir's free space and the cgroup's headroom (`memory.max` − `memory.current`)
//! exceed the app's memory + 10 % + 64 MiB; otherwise into imageDir, as without it. A checkpoint
//! leaves the dir as soon as it is uploaded (or, when the upload fails, copied into imageDir).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::store::{self, Checkpoint, Staging, StoreError};

pub struct MemoryStaging {
    dir: PathBuf,
}

/// Room a dump of an app holding `memory` bytes needs: its pages, CRIU's other images, margin.
pub fn room_needed(memory: u64) -> u64 {
    memory + memory / 10 + (64 << 20)
}

impl MemoryStaging {
    /// Creates the dir (0700) and removes what a killed crik left there: never restorable.
    pub fn open(dir: &Path) -> Result<MemoryStaging, StoreError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| StoreError::Io {
            step: "create",
            path: dir.to_path_buf(),
            source: e,
        })?;
        // It holds dumps of the app's whole memory, as the image dir does: the same checks.
        store::check_ownership(dir)?;
        store::discard_leftovers(dir)?;
        Ok(MemoryStaging { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the dir is memory (tmpfs or ramfs), as `encryption.noPlaintextOnDisk` needs.
    pub fn is_memory(&self) -> bool {
        // ramfs's magic (linux/magic.h), which nix does not name.
        const RAMFS_MAGIC: i64 = 0x858458f6;
        is_tmpfs(&self.dir)
            // (fs_type_t is not i64 on every target.)
            || nix::sys::statfs::statfs(&self.dir).is_ok_and(|s| {
                #[allow(clippy::unnecessary_cast)]
                let magic = s.filesystem_type().0 as i64;
                magic == RAMFS_MAGIC
            })
    }

    /// A checkpoint dir here under a given id (a download keeps its id), emptied first.
    pub fn stage_as(&self, id: &str) -> Result<Checkpoint, StoreError> {
        if !store::is_valid_id(id) {
            return Err(StoreError::Unsafe { path: self.dir.clone(), why: format!("{id:?} is not a checkpoint id") });
        }
        let dir = self.dir.join(id);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| StoreError::Io { step: "remove", path: dir.clone(), source: e })?;
        }
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| StoreError::Io {
            step: "create",
            path: dir.clone(),
            source: e,
        })?;
        Ok(Checkpoint { id: id.into(), dir })
    }

    /// Whether a dump of an app holding `memory` bytes fits; `Err` says why not.
    pub fn fits(&self, memory: u64) -> Result<(), String> {
        let need = room_needed(memory);
        let free = crate::host::free_space(&self.dir).map_err(|e| format!("statvfs {}: {e}", self.dir.display()))?;
        if free < need {
            return Err(format!(
                "{} has {} free, the dump needs about {}",
                self.dir.display(),
                crate::sizes::human(free),
                crate::sizes::human(need)
            ));
        }
        if is_tmpfs(&self.dir) {
            if let Some(headroom) = crate::host::cgroup::memory_headroom() {
                if headroom < need {
                    return Err(format!(
                        "the container's memory limit leaves {}, the dump needs about {}",
                        crate::sizes::human(headroom),
                        crate::sizes::human(need)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The room here for a download: the dir's free space, and on a tmpfs no more than the
    /// container's memory headroom.
    pub fn room(&self) -> std::io::Result<u64> {
        let free = crate::host::free_space(&self.dir)?;
        let headroom = if is_tmpfs(&self.dir) { crate::host::cgroup::memory_headroom() } else { None };
        Ok(headroom.map_or(free, |h| h.min(free)))
    }
}

impl Staging for MemoryStaging {
    /// A new checkpoint dir here, with a fresh id.
    fn stage(&self) -> Result<Checkpoint, StoreError> {
        store::stage_in(&self.dir, |id| self.dir.join(id).exists())
    }

    /// Frees a checkpoint's memory.
    fn discard(&self, c: &Checkpoint) {
        store::remove_or_warn(&c.dir);
    }
}

fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn room_needed_adds_a_tenth_and_64_mib() {
        assert_eq!(room_needed(1 << 30), (1 << 30) + (1 << 30) / 10 + (64 << 20));
    }

    #[test]
    fn leftovers_are_discarded_and_a_dump_too_large_is_refused() {
        let dir = TempDir::new("staging-test");
        fs::create_dir_all(dir.join("20260101T000000.000000000Z/images")).unwrap();
        fs::create_dir_all(dir.join("lost+found")).unwrap();
        let m = MemoryStaging::open(&dir).unwrap();
        assert!(!dir.join("20260101T000000.000000000Z").exists());
        assert!(dir.join("lost+found").exists(), "only checkpoint dirs are crik's to remove");
        let c = m.stage().unwrap();
        assert!(c.images_dir().is_dir() && c.dir.starts_with(&dir));
        assert!(m.fits(1 << 20).is_ok());
        let e = m.fits(u64::MAX / 4).unwrap_err();
        assert!(e.contains("free"), "{e}");
        m.discard(&c);
        assert!(!c.dir.exists());
    }
}
