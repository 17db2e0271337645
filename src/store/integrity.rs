//! Sizes and CRC-32 checksums of a checkpoint's files: recorded when it is published, checked
//! before CRIU reads anything (CRIU spins for ever on a truncated image) and, for the page
//! images, while CRIU restores.
//!
//! Files are read with `pread`, never memory-mapped: a mapped file truncated behind crik's back
//! (a damaged volume, someone cleaning up) raises SIGBUS, which would kill PID 1 — and
//! `crik inspect` reads checkpoints without the store's lock. A file that shrinks or grows
//! while it is read is reported as damaged instead.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::manifest::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("{step} {path}: {source}")]
    Io { step: &'static str, path: PathBuf, source: io::Error },
    #[error("checkpoint {path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

/// What [`verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Presence, size and checksum of every file.
    Everything,
    /// Presence and size of every file; checksums of all but the page images.
    AllButPageContents,
    /// Checksums of the page images only (presence and sizes checked before).
    PageContents,
}

/// Checks that the files the manifest lists are in `dir`, with their sizes and checksums, as
/// far as `scope` says. A damaged checkpoint must never reach CRIU, nor a restored app run on it.
pub fn verify(dir: &Path, manifest: &Manifest, scope: Scope) -> Result<(), IntegrityError> {
    let damaged = |why: String| IntegrityError::Damaged { path: dir.to_path_buf(), why };
    if manifest.files.is_empty() {
        return Err(damaged("its manifest lists no files".into()));
    }
    // Page contents are checked while CRIU (single-threaded) restores: leave it a core.
    let threads = if scope == Scope::PageContents { cores().saturating_sub(1) } else { cores() };
    for f in &manifest.files {
        if !is_safe_relative(&f.path) {
            return Err(damaged(format!("manifest names an unsafe path {:?}", f.path)));
        }
        let p = dir.join(&f.path);
        let md = match fs::metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(damaged(format!("{} is missing", f.path))),
            Err(e) => return Err(IntegrityError::Io { step: "stat", path: p, source: e }),
        };
        if md.len() != f.size {
            return Err(damaged(format!("{} has {} bytes, {} were written", f.path, md.len(), f.size)));
        }
        let is_pages = f.path.rsplit('/').next().is_some_and(|n| n.starts_with("pages-"));
        let crc_wanted = match scope {
            Scope::Everything => true,
            Scope::AllButPageContents => !is_pages,
            Scope::PageContents => is_pages,
        };
        if !crc_wanted {
            continue;
        }
        let (_, crc) = checksum_on(&p, threads).map_err(|e| match e {
            IntegrityError::Damaged { why, .. } => damaged(format!("{}: {why}", f.path)),
            e => e,
        })?;
        if crc != f.crc32 {
            return Err(damaged(format!("{} has checksum {crc:08x}, {:08x} was written", f.path, f.crc32)));
        }
    }
    Ok(())
}

/// A manifest path that stays inside the checkpoint: relative, no `..`, no empty component.
pub(crate) fn is_safe_relative(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|c| c == ".." || c.is_empty())
}

/// Size and CRC-32 of a file, read on all cores.
pub fn checksum(p: &Path) -> Result<(u64, u32), IntegrityError> {
    checksum_on(p, cores())
}

/// Below this, a file is hashed on one thread (a thread costs more than it saves).
const MIN_SLICE: u64 = 32 << 20;
/// Each thread reads its slice in buffers of this size (large reads: few syscalls).
const READ_BUF: usize = 4 << 20;

fn checksum_on(p: &Path, threads: usize) -> Result<(u64, u32), IntegrityError> {
    let io_err = |step| move |source| IntegrityError::Io { step, path: p.to_path_buf(), source };
    let f = File::open(p).map_err(io_err("open"))?;
    let size = f.metadata().map_err(io_err("stat"))?.len();
    // SAFETY: advice only; a valid fd.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let parts = (size / MIN_SLICE).clamp(1, threads.max(1) as u64);
    let slice = size.div_ceil(parts).max(1);
    let ranges: Vec<(u64, u64)> = (0..parts).map(|i| (i * slice, ((i + 1) * slice).min(size))).collect();
    let hashers: Vec<Result<crc32fast::Hasher, SliceError>> = if ranges.len() == 1 {
        vec![crc_of_range(&f, ranges[0])]
    } else {
        // Short-lived threads; they inherit crik's blocked signal mask.
        std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&r| {
                    s.spawn({
                        let f = &f;
                        move || crc_of_range(f, r)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(SliceError::Panicked))).collect()
        })
    };
    let mut total: Option<crc32fast::Hasher> = None;
    for h in hashers {
        let h = match h {
            Ok(h) => h,
            Err(SliceError::Io(e)) => return Err(io_err("read")(e)),
            Err(SliceError::Shrank(at)) => {
                return Err(IntegrityError::Damaged {
                    path: p.to_path_buf(),
                    why: format!("it ended at byte {at} while being read ({size} bytes at the start)"),
                })
            }
            Err(SliceError::Panicked) => return Err(io_err("read")(io::Error::other("checksum thread panicked"))),
        };
        match total.as_mut() {
            Some(t) => t.combine(&h),
            None => total = Some(h),
        }
    }
    // A file that grew while it was read was not the file that was measured.
    let after = f.metadata().map_err(io_err("stat"))?.len();
    if after != size {
        return Err(IntegrityError::Damaged {
            path: p.to_path_buf(),
            why: format!("its size changed from {size} to {after} bytes while being read"),
        });
    }
    Ok((size, total.unwrap_or_default().finalize()))
}

enum SliceError {
    Io(io::Error),
    /// The file ended at this offset, before the size it had when it was opened.
    Shrank(u64),
    Panicked,
}

fn crc_of_range(f: &File, (start, end): (u64, u64)) -> Result<crc32fast::Hasher, SliceError> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; READ_BUF.min((end - start) as usize).max(1)];
    let mut at = start;
    while at < end {
        let want = buf.len().min((end - at) as usize);
        match f.read_at(&mut buf[..want], at) {
            Ok(0) => return Err(SliceError::Shrank(at)),
            Ok(n) => {
                h.update(&buf[..n]);
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SliceError::Io(e)),
        }
    }
    Ok(h)
}

/// Cores to hash on, asked once: available_parallelism reads cgroup files on every call.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::FileSum;
    use crate::testing::TempDir;

    fn tmp(name: &str) -> TempDir {
        TempDir::new(&format!("integrity-{name}"))
    }

    #[test]
    fn parallel_crc_equals_the_plain_one() {
        let dir = tmp("parallel");
        let data: Vec<u8> = (0..(100u32 << 20) / 4).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        let p = dir.join("pages-1.img");
        fs::write(&p, &data).unwrap();
        for threads in [0, 1, 2, 3, 8] {
            assert_eq!(checksum_on(&p, threads).unwrap(), (data.len() as u64, crc32fast::hash(&data)), "{threads}");
        }
        fs::write(&p, &data[..1000]).unwrap();
        assert_eq!(checksum_on(&p, 2).unwrap(), (1000, crc32fast::hash(&data[..1000])));
        fs::write(&p, b"").unwrap();
        assert_eq!(checksum_on(&p, 2).unwrap(), (0, crc32fast::hash(&[])));
    }

    /// With memory-mapped checksums this killed the process (SIGBUS); now it is an error, or
    /// a verdict on a file that was read whole before it was cut.
    #[test]
    fn a_file_truncated_during_verification_is_damage_not_a_crash() {
        let dir = tmp("truncate");
        let p = dir.join("pages-1.img");
        let size = 64u64 << 20;
        let mut errors = 0;
        for round in 0..8 {
            let f = File::create(&p).unwrap();
            f.set_len(size).unwrap(); // sparse: quick to make, read at memory speed
            let cutter = {
                let p = p.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(round));
                    fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(4096).unwrap();
                })
            };
            let r = checksum_on(&p, 2);
            cutter.join().unwrap();
            match r {
                Ok((n, _)) => assert_eq!(n, size, "a whole read must report the size it read"),
                Err(IntegrityError::Damaged { why, .. }) => {
                    assert!(why.contains("while being read"), "{why}");
                    errors += 1;
                }
                Err(e) => panic!("expected damage, got {e}"),
            }
        }
        assert!(errors > 0, "no round truncated the file mid-read: the test proves nothing");
    }

    #[test]
    fn paths_that_leave_the_checkpoint_are_refused() {
        let dir = tmp("traversal");
        fs::write(dir.join("ok"), b"x").unwrap();
        for bad in ["../outside", "images/../../etc/passwd", "/etc/passwd", "images//x", ""] {
            let m = Manifest { files: vec![FileSum { path: bad.into(), size: 1, crc32: 0 }], ..Manifest::for_tests() };
            let e = verify(&dir, &m, Scope::Everything).unwrap_err().to_string();
            assert!(e.contains("unsafe path"), "{bad:?}: {e}");
        }
        let good = FileSum { path: "ok".into(), size: 1, crc32: crc32fast::hash(b"x") };
        verify(&dir, &Manifest { files: vec![good], ..Manifest::for_tests() }, Scope::Everything).unwrap();
    }
}
