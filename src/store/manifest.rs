//! The manifest: what crik records next to CRIU's images so that a restore (possibly on
//! another node, by another crik version) knows what it is looking at.
//!
//! Version rule: a manifest with a higher major `format` than ours is refused; fields added
//! later are optional, so older manifests keep loading.

use crate::layout::MAX_MANIFEST;
use serde::{Deserialize, Serialize};

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version of this checkpoint.
    pub format: u32,
    /// When the checkpoint was taken (RFC 3339, UTC).
    pub created: String,
    /// The app's command line, as crik started it.
    pub command: Vec<String>,
    /// PID of the checkpointed tree's root.
    pub root_pid: i32,
    /// Where the container's stdin, stdout and stderr pointed (`pipe:[123]`, `/dev/null`,
    /// `tty[rdev:dev]`, ...): restore hands crik's own stdio to CRIU under these keys.
    pub stdio: [String; 3],
    /// Non-loopback IP addresses the container had; decides whether TCP connections can be
    /// re-established at restore.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The container's own cgroup directories: open files under them are re-pointed to the new
    /// container's at restore.
    #[serde(default)]
    pub cgroups: Vec<crate::host::cgroup::CgroupDir>,
    /// The container's writable layer, when captured (`rootfs.tar` holds its files).
    #[serde(default)]
    pub rootfs: Option<crate::archive::rootfs::RootfsDiff>,
    /// Whether `files.tar` (additionalPaths) is part of the checkpoint.
    #[serde(default)]
    pub has_files_archive: bool,
    /// The app's open files on tmpfs mounts (/dev/shm, a read-only container's /tmp, ...),
    /// archived in `tmpfs.tar` and put back before CRIU restores.
    #[serde(default)]
    pub runtime_tmpfs: Vec<String>,
    /// The CPU the checkpoint was taken on; checked at restore (see [`crate::criu::cpu`]).
    #[serde(default)]
    pub cpu: Option<crate::criu::cpu::CpuRecord>,
    pub crik_version: String,
    pub criu_version: String,
    pub kernel: String,
    /// How long the CRIU dump took, in milliseconds.
    #[serde(default)]
    pub dump_millis: u64,
    /// How long making it durable took (checksums, fsync), in milliseconds.
    #[serde(default)]
    pub seal_millis: u64,
    /// The app tree's anonymous memory when it was checkpointed: with the two durations, what
    /// a checkpoint of this app costs per byte (see [`crate::lifecycle::plan`]).
    #[serde(default)]
    pub app_memory_bytes: u64,
    /// Every file of the checkpoint (relative path, size, CRC-32), recorded at publish time and
    /// verified before a restore: CRIU can spin for ever on a truncated image.
    #[serde(default)]
    pub files: Vec<FileSum>,
    /// One more than the newest generation this app had written or restored when it was taken
    /// (see [`crate::store::generation`]); 0 in checkpoints from before generations.
    #[serde(default)]
    pub generation: u64,
    /// The CRIU run id of a dump that took the network lock: it left the table
    /// `inet CRIU-<run id>` in the network namespace it ran in, removed once this checkpoint can
    /// no longer be restored there (see [`crate::host::nft`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_lock: Option<String>,
    /// Open files of the app on mounts of crik's namespace, not the app's own (`isolatePids`):
    /// crik lent them at a restore. CRIU dumped them as external files; each restore lends them
    /// again ([`crate::restore::remap::ForeignFile`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_files: Vec<crate::restore::remap::ForeignFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    pub crc32: u32,
    /// With a key: the file's digest (see [`crate::store::integrity`]), which decides instead
    /// of the CRC-32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A manifest file's bytes: manifests are small, so anything absurd is refused unread.
pub fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, ManifestError> {
    use std::io::Read;
    let read_err = |e| ManifestError::Read { path: path.into(), source: e };
    let mut text = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_MANIFEST as u64 + 1).read_to_end(&mut text)).map_err(read_err)?;
    if text.len() > MAX_MANIFEST {
        return Err(read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, "manifest larger than 16 MiB")));
    }
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path} is not a valid manifest: {source}")]
    Parse { path: std::path::PathBuf, source: serde_json::Error },
    #[error("{path} has format {found}, this crik reads format {FORMAT} and older")]
    TooNew { path: std::path::PathBuf, found: u32 },
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serializes");
        s.push('\n');
        s
    }

    pub fn load(path: &std::path::Path) -> Result<Manifest, ManifestError> {
        Manifest::parse(path, &read_bounded(path)?)
    }

    /// A manifest read from `path` (for messages) as `text`.
    pub fn parse(path: &std::path::Path, text: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(text).map_err(|e| ManifestError::Parse { path: path.into(), source: e })?;
        if m.format > FORMAT {
            return Err(ManifestError::TooNew { path: path.into(), found: m.format });
        }
        Ok(m)
    }

    #[cfg(test)]
    pub fn for_tests() -> Manifest {
        Manifest {
            format: FORMAT,
            created: "2026-11-25T00:00:00Z".into(),
            command: vec!["sleep".into(), "1".into()],
            root_pid: 9001,
            stdio: ["/dev/null".into(), "pipe:[1]".into(), "pipe:[1]".into()],
            addresses: vec![],
            cgroups: vec![],
            rootfs: None,
            has_files_archive: false,
            runtime_tmpfs: vec![],
            cpu: None,
            crik_version: env!("CARGO_PKG_VERSION").into(),
            criu_version: "4.2.1".into(),
            kernel: "6.18".into(),
            dump_millis: 1,
            seal_millis: 1,
            app_memory_bytes: 0,
            files: vec![],
            generation: 1,
            network_lock: None,
            foreign_files: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn round_trips_and_rejects_newer_formats() {
        let dir = TempDir::new("manifest");
        let p = dir.join(crate::layout::MANIFEST_FILE);
        let m = Manifest::for_tests();
        std::fs::write(&p, m.to_json()).unwrap();
        assert_eq!(Manifest::load(&p).unwrap(), m);

        let newer = Manifest { format: FORMAT + 1, ..m.clone() };
        std::fs::write(&p, newer.to_json()).unwrap();
        assert!(matches!(Manifest::load(&p), Err(ManifestError::TooNew { .. })));

        std::fs::write(&p, "{ not json").unwrap();
        assert!(matches!(Manifest::load(&p), Err(ManifestError::Parse { .. })));

        // Over the cap: refused without being parsed (it would be valid JSON otherwise).
        let mut huge = m.to_json().into_bytes();
        huge.pop(); // the newline
        huge.resize(MAX_MANIFEST + 1, b' ');
        std::fs::write(&p, &huge).unwrap();
        let e = Manifest::load(&p).unwrap_err().to_string();
        assert!(e.contains("larger than 16 MiB"), "{e}");
    }
}
