//! Sizes and CRC-32 checksums of a checkpoint's files: recorded when it is published, checked
//! before CRIU reads anything (CRIU spins for ever on a truncated image) and, for the page
//! images, while CRIU restores.
//!
//! With a key (`encryption.keyFiles`), each file also gets a digest that no one can forge
//! (CRC-32 can be): BLAKE3 of each 32 MiB segment, and the digest of the file
//! `blake3::derive_key("crik 2026-12 file digest", size | segment hashes...)`, so that
//! segments hash in parallel and a streamed file sums as it goes. The manifest that lists the
//! digests is authenticated with the key ([`crate::store::Store::verified_manifest`]).
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
        let sum_wanted = match scope {
            Scope::Everything => true,
            Scope::AllButPageContents => !is_pages,
            Scope::PageContents => is_pages,
        };
        if !sum_wanted {
            continue;
        }
        let sum = checksum_on(&p, threads, f.digest.is_some()).map_err(|e| match e {
            IntegrityError::Damaged { why, .. } => damaged(format!("{}: {why}", f.path)),
            e => e,
        })?;
        match &f.digest {
            // The digest is what counts where there is one (a CRC-32 is easy to forge).
            Some(d) if sum.digest.as_deref() != Some(d.as_str()) => {
                return Err(damaged(format!("{} does not have the digest that was written (altered)", f.path)))
            }
            Some(_) => {}
            None if sum.crc32 != f.crc32 => {
                return Err(damaged(format!("{} has checksum {:08x}, {:08x} was written", f.path, sum.crc32, f.crc32)))
            }
            None => {}
        }
    }
    Ok(())
}

/// A file's sums: size, CRC-32, and the digest when asked for (`strong`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sum {
    pub size: u64,
    pub crc32: u32,
    pub digest: Option<String>,
}

/// Digests hash the file in segments of this size (a fixed size: the digest must not depend
/// on how many threads computed it).
const SEGMENT: u64 = 32 << 20;

/// Sums bytes as they come: a streamed file, or one range of a file that starts at a multiple
/// of [`SEGMENT`].
pub struct Summer {
    crc: crc32fast::Hasher,
    size: u64,
    /// The segment being hashed and the hashes of those before (when `strong`).
    segment: Option<blake3::Hasher>,
    segments: Vec<[u8; 32]>,
}

impl Summer {
    pub fn new(strong: bool) -> Summer {
        Summer { crc: crc32fast::Hasher::new(), size: 0, segment: strong.then(blake3::Hasher::new), segments: vec![] }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.crc.update(data);
        if let Some(seg) = self.segment.as_mut() {
            while !data.is_empty() {
                let room = (SEGMENT - self.size % SEGMENT) as usize;
                let (now, rest) = data.split_at(room.min(data.len()));
                seg.update(now);
                self.size += now.len() as u64;
                if self.size % SEGMENT == 0 {
                    self.segments.push(*seg.finalize().as_bytes());
                    seg.reset();
                }
                data = rest;
            }
        } else {
            self.size += data.len() as u64;
        }
    }

    /// This range's CRC-32 state and segment hashes (a partial last segment included).
    fn into_parts(mut self) -> (crc32fast::Hasher, u64, Option<Vec<[u8; 32]>>) {
        let segments = self.segment.take().map(|seg| {
            if self.size % SEGMENT != 0 {
                self.segments.push(*seg.finalize().as_bytes());
            }
            self.segments
        });
        (self.crc, self.size, segments)
    }

    pub fn finish(self) -> Sum {
        let (crc, size, segments) = self.into_parts();
        Sum { size, crc32: crc.finalize(), digest: segments.map(|s| file_digest(size, &s)) }
    }
}

/// A file's digest from its size and its segments' hashes.
fn file_digest(size: u64, segments: &[[u8; 32]]) -> String {
    let mut h = blake3::Hasher::new_derive_key("crik 2026-12 file digest");
    h.update(&size.to_le_bytes());
    for s in segments {
        h.update(s);
    }
    h.finalize().to_hex().to_string()
}

/// A manifest path that stays inside the checkpoint: relative, no `..`, no empty component.
pub(crate) fn is_safe_relative(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|c| c == ".." || c.is_empty())
}

/// Sums of a file (its digest too when `strong`), read on all cores.
pub fn checksum(p: &Path, strong: bool) -> Result<Sum, IntegrityError> {
    checksum_on(p, cores(), strong)
}

/// Below this, a file is hashed on one thread (a thread costs more than it saves).
const MIN_SLICE: u64 = 32 << 20;
/// Each thread reads its slice in buffers of this size (large reads: few syscalls).
const READ_BUF: usize = 4 << 20;

fn checksum_on(p: &Path, threads: usize, strong: bool) -> Result<Sum, IntegrityError> {
    let io_err = |step| move |source| IntegrityError::Io { step, path: p.to_path_buf(), source };
    let f = File::open(p).map_err(io_err("open"))?;
    let size = f.metadata().map_err(io_err("stat"))?.len();
    // SAFETY: advice only; a valid fd.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    let parts = (size / MIN_SLICE).clamp(1, threads.max(1) as u64);
    // Each slice starts at a segment's start, so that its segments are the file's.
    let slice = size.div_ceil(parts).next_multiple_of(SEGMENT);
    let ranges: Vec<(u64, u64)> =
        (0..parts).map(|i| (i * slice, ((i + 1) * slice).min(size))).filter(|(a, b)| a < b || *a == 0).collect();
    let hashers: Vec<Result<Summer, SliceError>> = if ranges.len() == 1 {
        vec![sum_of_range(&f, ranges[0], strong)]
    } else {
        // Short-lived threads; they inherit crik's blocked signal mask.
        std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&r| {
                    s.spawn({
                        let f = &f;
                        move || sum_of_range(f, r, strong)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Err(SliceError::Panicked))).collect()
        })
    };
    let mut total: Option<crc32fast::Hasher> = None;
    let mut segments: Option<Vec<[u8; 32]>> = strong.then(Vec::new);
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
        let (h, _, segs) = h.into_parts();
        if let (Some(all), Some(segs)) = (segments.as_mut(), segs) {
            all.extend(segs);
        }
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
    Ok(Sum { size, crc32: total.unwrap_or_default().finalize(), digest: segments.map(|s| file_digest(size, &s)) })
}

enum SliceError {
    Io(io::Error),
    /// The file ended at this offset, before the size it had when it was opened.
    Shrank(u64),
    Panicked,
}

fn sum_of_range(f: &File, (start, end): (u64, u64), strong: bool) -> Result<Summer, SliceError> {
    let mut h = Summer::new(strong);
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
    fn parallel_sums_equal_the_plain_one_and_the_streamed_one() {
        let dir = tmp("parallel");
        let data: Vec<u8> = (0..(100u32 << 20) / 4).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect();
        let p = dir.join("pages-1.img");
        let streamed = |bytes: &[u8], piece: usize| {
            let mut s = Summer::new(true);
            bytes.chunks(piece).for_each(|c| s.update(c));
            s.finish()
        };
        for len in [data.len(), SEGMENT as usize, SEGMENT as usize + 1, 1000, 0] {
            let part = &data[..len];
            fs::write(&p, part).unwrap();
            let whole = streamed(part, 7 << 20);
            assert_eq!(whole, streamed(part, 4096), "{len}: how the bytes arrive does not matter");
            assert_eq!((whole.size, whole.crc32), (len as u64, crc32fast::hash(part)));
            for threads in [0, 1, 2, 3, 8] {
                assert_eq!(checksum_on(&p, threads, true).unwrap(), whole, "{len} on {threads}");
                let weak = checksum_on(&p, threads, false).unwrap();
                assert_eq!((weak.size, weak.crc32, weak.digest), (whole.size, whole.crc32, None));
            }
        }
        // One bit changes the digest.
        let mut flipped = data[..1000].to_vec();
        flipped[999] ^= 1;
        assert_ne!(streamed(&flipped, 100).digest, streamed(&data[..1000], 100).digest);
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
            let r = checksum_on(&p, 2, round % 2 == 0);
            cutter.join().unwrap();
            match r {
                // Read whole before the cut, or (a slow machine: qemu-user) opened after it.
                Ok(sum) => assert!([size, 4096].contains(&sum.size), "a whole read must report the size it read"),
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
            let m = Manifest {
                files: vec![FileSum { path: bad.into(), size: 1, crc32: 0, digest: None }],
                ..Manifest::for_tests()
            };
            let e = verify(&dir, &m, Scope::Everything).unwrap_err().to_string();
            assert!(e.contains("unsafe path"), "{bad:?}: {e}");
        }
        let good = FileSum { path: "ok".into(), size: 1, crc32: crc32fast::hash(b"x"), digest: None };
        verify(&dir, &Manifest { files: vec![good.clone()], ..Manifest::for_tests() }, Scope::Everything).unwrap();
        // With a digest, the digest decides: a matching CRC-32 (easy to forge) is not enough.
        let digest = checksum(&dir.join("ok"), true).unwrap().digest;
        let strong = FileSum { digest, ..good.clone() };
        verify(&dir, &Manifest { files: vec![strong.clone()], ..Manifest::for_tests() }, Scope::Everything).unwrap();
        let forged = FileSum { digest: Some(blake3::hash(b"y").to_hex().to_string()), ..good };
        let e = verify(&dir, &Manifest { files: vec![forged], ..Manifest::for_tests() }, Scope::Everything)
            .unwrap_err()
            .to_string();
        assert!(e.contains("altered"), "{e}");
    }
}
