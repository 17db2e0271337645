//! Content-addressed chunks: a checkpoint's files cut at content-defined boundaries
//! (FastCDC), each named by its BLAKE3 hash and stored zstd-compressed. Two checkpoints of
//! the same app share every chunk whose bytes did not change, wherever those bytes moved in
//! the page images, so only changed memory is uploaded: incremental checkpoints without the
//! kernel's dirty-page tracking.
//!
//! Measured on this project's reference machine (2 cores) on a 315 MB CRIU page image of a
//! Python heap: FastCDC 1.5 GB/s, BLAKE3 2.3 GB/s; zstd level 1 compresses 12.7x at 480 MB/s
//! per core (level 3: 13.1x at 380 MB/s; lz4: 4.7x at 770 MB/s). zstd 1 sends 2.7x fewer bytes
//! than lz4 for 40 % less speed, and random bytes pass through it at 2.9 GB/s.

use serde::{Deserialize, Serialize};
use std::io::Read;

/// Boundaries: no chunk under 128 KiB or over 2 MiB, 512 KiB on average. Small enough that a
/// changed page costs half a MiB, big enough that a GiB is ~2000 requests.
pub const MIN_SIZE: u32 = 128 << 10;
pub const AVG_SIZE: u32 = 512 << 10;
pub const MAX_SIZE: u32 = 2 << 20;
const ZSTD_LEVEL: i32 = 1;

/// One chunk of a file, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes, hex.
    #[serde(rename = "h")]
    pub hash: String,
    /// Uncompressed length.
    #[serde(rename = "n")]
    pub len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {hash}: {why}")]
    Damaged { hash: String, why: String },
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

pub fn hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Cuts what `r` yields into chunks, calling `each` with every chunk's bytes in order.
pub fn split<E: From<ChunkError>>(
    path: &str,
    mut r: impl Read,
    mut each: impl FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let mut chunker = Chunker::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ChunkError::Read { path: path.into(), source: e }.into()),
        };
        chunker.push(&buf[..n], &mut each)?;
    }
    chunker.finish(&mut each)
}

/// FastCDC fed as bytes arrive (CRIU's page stream, a file read in blocks): cuts exactly where
/// fastcdc's `StreamCDC` would over the same bytes, whatever the sizes of the pieces pushed,
/// so chunks of streamed and of file-based checkpoints are shared. Unlike `StreamCDC`, it does
/// not move its whole buffer after each chunk.
#[derive(Default)]
pub struct Chunker {
    buf: Vec<u8>,
    /// Where the next chunk starts in `buf`.
    start: usize,
}

impl Chunker {
    /// Adds bytes; every chunk that can be cut now is passed to `each`.
    pub fn push<E>(&mut self, data: &[u8], each: &mut impl FnMut(Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        self.buf.extend_from_slice(data);
        // A cut needs MAX_SIZE bytes ahead of it (or the end): that is what StreamCDC sees.
        while self.buf.len() - self.start >= MAX_SIZE as usize {
            self.cut_one(each)?;
        }
        // Drop what was cut, now and then: a memmove of under MAX_SIZE bytes per 8 MiB.
        if self.start >= 8 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }

    /// Cuts what is left (the end of the stream).
    pub fn finish<E>(mut self, each: &mut impl FnMut(Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        while self.start < self.buf.len() {
            self.cut_one(each)?;
        }
        Ok(())
    }

    fn cut_one<E>(&mut self, each: &mut impl FnMut(Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let window = &self.buf[self.start..self.buf.len().min(self.start + MAX_SIZE as usize)];
        let (_, end) = fastcdc::v2020::FastCDC::new(window, MIN_SIZE, AVG_SIZE, MAX_SIZE).cut(0, window.len());
        let chunk = window[..end].to_vec();
        self.start += end;
        each(chunk)
    }
}

/// Decompresses a stored chunk into at most the length `r` lists, which it must have.
pub fn decompress(stored: &[u8], r: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    let damaged = |why: String| ChunkError::Damaged { hash: r.hash.clone(), why };
    if r.len > MAX_SIZE {
        return Err(damaged(format!("listed as {} bytes, more than chunks ever are", r.len)));
    }
    let data = zstd::bulk::decompress(stored, r.len as usize).map_err(|e| damaged(format!("not zstd: {e}")))?;
    if data.len() != r.len as usize {
        return Err(damaged(format!("{} bytes, the manifest says {}", data.len(), r.len)));
    }
    Ok(data)
}

pub fn compress(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd compresses any input into a Vec")
}

/// Decompresses a stored chunk and checks it is the one `r` names.
pub fn open(stored: &[u8], r: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
    let damaged = |why: String| ChunkError::Damaged { hash: r.hash.clone(), why };
    let data = decompress(stored, r)?;
    let got = hash(&data);
    if got != r.hash {
        return Err(damaged(format!("its content hashes to {got}")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    fn chunk_hashes(data: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        split::<ChunkError>("t", data, |c| {
            v.push(hash(&c));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let a = pseudo_random(16 << 20, 7);
        let mut b = a.clone();
        // 4 KiB (a page) inserted in the middle: every byte after it moves.
        let at = 8 << 20;
        b.splice(at..at, pseudo_random(4096, 9));
        let (ha, hb) = (chunk_hashes(&a), chunk_hashes(&b));
        let shared = hb.iter().filter(|h| ha.contains(h)).count();
        assert!(ha.len() > 16, "{} chunks", ha.len());
        assert!(hb.len() - shared <= 2, "{} of {} chunks new", hb.len() - shared, hb.len());
    }

    #[test]
    fn pushed_pieces_cut_where_stream_cdc_cuts() {
        let data = pseudo_random(9 << 20, 11);
        let reference: Vec<String> = fastcdc::v2020::StreamCDC::new(&data[..], MIN_SIZE, AVG_SIZE, MAX_SIZE)
            .map(|c| hash(&c.unwrap().data))
            .collect();
        assert_eq!(chunk_hashes(&data), reference);
        // Pieces of odd sizes (CRIU's page runs, socket reads) cut at the same places.
        for piece in [4096usize, 65_537, 3 << 20] {
            let mut chunker = Chunker::default();
            let mut got = Vec::new();
            let mut each = |c: Vec<u8>| -> Result<(), ChunkError> {
                got.push(hash(&c));
                Ok(())
            };
            for p in data.chunks(piece) {
                chunker.push(p, &mut each).unwrap();
            }
            chunker.finish(&mut each).unwrap();
            assert_eq!(got, reference, "pieces of {piece} bytes");
        }
        assert!(chunk_hashes(&[]).is_empty());
    }

    #[test]
    fn chunks_round_trip_and_damage_is_named() {
        let data = pseudo_random(300_000, 3);
        let r = ChunkRef { hash: hash(&data), len: data.len() as u32 };
        let z = compress(&data);
        assert_eq!(open(&z, &r).unwrap(), data);
        let mut other = data.clone();
        other[5] ^= 1;
        let e = open(&compress(&other), &r).unwrap_err();
        assert!(e.to_string().contains("hashes to"), "{e}");
        let e = open(&z[..z.len() / 2], &r).unwrap_err();
        assert!(e.to_string().contains(&r.hash), "{e}");
        let short = ChunkRef { len: 10, ..r.clone() };
        assert!(open(&z, &short).is_err());
    }
}
