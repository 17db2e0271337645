//! Every name crik gives a file, a directory or an object: the image dir on a volume, one
//! checkpoint inside it, and the bucket prefix in object storage. Nothing else names them.
//!
//! ```text
//! imageDir/                          0700, owned by crik's user
//! ├── lock                           flock()ed by the crik using this image dir
//! ├── status.json                    the last checkpoint's and restore's outcome (for operators)
//! ├── failed-dump.log                CRIU's whole log of the last failed dump
//! ├── generation.json                the newest generation written or restored here (MAC'd
//! │                                  with a key: what a rollback is judged by)
//! ├── staging/<id>/                  a checkpoint being written; never restored
//! ├── checkpoints/<id>/              published, complete checkpoints (newest id wins)
//! ├── retired/<id>/                  restored once, or superseded (keepCheckpoints of them)
//! └── quarantine/<id>/               failed to restore, with CRIU's log; never retried
//!
//! <id>/                              one checkpoint (the same in memory staging)
//! ├── images/                        CRIU's image files
//! │   ├── *.img                      written by CRIU (pages-*.img and pagemap-*.img by crik's
//! │   │                              page server when the pages are streamed)
//! │   ├── cpuinfo.img                the CPU it was dumped on (checked before a restore)
//! │   ├── dump.log, restore.log      CRIU's logs (cpuinfo.log: its CPU check)
//! │   └── lazy-pages.socket, .log    CRIU's lazy-pages daemon, during a lazy restore
//! ├── files.tar                      additionalPaths
//! ├── tmpfs.tar                      the app's files on tmpfs mounts
//! ├── rootfs.tar                     the container's writable layer (captureRootfsDiff)
//! ├── manifest.mac                   with a key: the manifest's MAC (the manifest lists each
//! │                                  file's digest), checked before anything is read
//! └── manifest.json                  written last (fsynced): its presence marks completeness
//!
//! s3://bucket/prefix/                storage.url
//! ├── lease.json                     names the one crik that may write the prefix (renewed),
//! │                                  and the newest generation written there (MAC'd with a key)
//! ├── chunks/<blake3>                zstd of one chunk, shared by every checkpoint that has it
//! ├── checkpoints/<id>.json          a complete checkpoint: its manifest + each file's chunks
//! ├── retired/<id>.json              restored once, or superseded (keepCheckpoints of them)
//! └── quarantine/<id>.json           failed to restore; never retried
//! ```

/// A checkpoint id: its UTC creation time, which sorts in time order ("20261125T152416.123Z").
pub fn new_id(t: std::time::SystemTime) -> String {
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// Whether `id` can be a checkpoint id: what [`new_id`] makes (and its `-N` suffix), never a
/// path. Ids read from a volume or object storage are checked before they name a directory.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !id.starts_with('.')
}

// The image dir.
pub const LOCK: &str = "lock";
pub const STATUS_FILE: &str = "status.json";
pub const FAILED_DUMP_LOG: &str = "failed-dump.log";
pub const GENERATION_FILE: &str = "generation.json";
pub const STAGING: &str = "staging";
pub const CHECKPOINTS: &str = "checkpoints";
pub const RETIRED: &str = "retired";
pub const QUARANTINE: &str = "quarantine";

// One checkpoint.
pub const IMAGES_DIR: &str = "images";
pub const CPUINFO_IMAGE: &str = "cpuinfo.img";
pub const DUMP_LOG: &str = "dump.log";
pub const RESTORE_LOG: &str = "restore.log";
pub const CPUINFO_LOG: &str = "cpuinfo.log";
pub const LAZY_PAGES_SOCKET: &str = "lazy-pages.socket";
pub const LAZY_PAGES_LOG: &str = "lazy-pages.log";
pub const FILES_ARCHIVE: &str = "files.tar";
pub const TMPFS_ARCHIVE: &str = "tmpfs.tar";
pub const ROOTFS_ARCHIVE: &str = "rootfs.tar";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_MAC_FILE: &str = "manifest.mac";
/// The largest manifest crik reads, local or in storage (a larger one is damage).
pub const MAX_MANIFEST: usize = 16 << 20;

/// The bucket prefix (each area ends with its `/`).
pub mod bucket {
    /// Not an area: the object itself.
    pub const LEASE: &str = "lease.json";
    pub const CHUNKS: &str = "chunks/";
    pub const CHECKPOINTS: &str = "checkpoints/";
    pub const RETIRED: &str = "retired/";
    pub const QUARANTINE: &str = "quarantine/";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_never_paths() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        let id = new_id(t);
        assert!(is_valid_id(&id), "{id}");
        assert!(new_id(t + std::time::Duration::from_millis(1)) > id);
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
