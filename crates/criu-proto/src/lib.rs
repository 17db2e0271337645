//! CRIU's protocol as crik speaks it: the protobuf messages of CRIU's images and of its swrk
//! RPC, and the framing of CRIU's image files, read and written.
//!
//! ```text
//! image file:  [u32 common magic] u32 image magic | u32 len | protobuf entry | u32 len | ...
//! pages-N.img: raw page data, in the order of the present entries of the pagemap images
//! ```
//!
//! The messages are generated (`src/generated/`, by `cargo run -p crik-gen-criu-proto`) from
//! crik's view of CRIU's protos, `proto/crik/`: only the messages and fields crik reads or
//! writes, each exactly as in CRIU's own protos, vendored in `proto/upstream/` (see the
//! generator's tests). Protobuf skips the fields a reader does not declare, so a trimmed
//! message reads CRIU's images unchanged.

use std::io::{self, Write};

#[allow(clippy::all, missing_docs, unused)]
#[rustfmt::skip]
mod generated;

pub use generated::{core, cpuinfo, fdinfo, inventory, mm, pagemap, pipe, pstree, regfile, rpc, sk_inet, sk_unix};
pub use protobuf::Message;

/// The first word of every image but the service ones' (criu/include/magic.h).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// The first word of CRIU's service images (inventory, stats, ...).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// A pagemap image's own magic, after the common one.
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// The page size CRIU's images count in (x86-64, arm64 with 4 KiB pages).
pub const PAGE_SIZE: u64 = 4096;
/// `pagemap_entry.flags`: the pages are in the parent checkpoint's images.
pub const PE_PARENT: u32 = 1;
/// `pagemap_entry.flags`: the pages are in this checkpoint's pages image.
pub const PE_PRESENT: u32 = 1 << 2;
/// The largest entry accepted (CRIU's are small; a larger one means a damaged image).
pub const MAX_ENTRY: usize = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("shorter than its magic")]
    NoMagic,
    #[error("truncated entry length")]
    TruncatedLength,
    #[error("entry larger than 64 MiB")]
    TooLarge,
    #[error("truncated entry")]
    TruncatedEntry,
}

/// The protobuf entries of an image file's bytes, after its magic(s).
pub fn entries(data: &[u8]) -> Result<Vec<&[u8]>, FramingError> {
    let word = |at: usize| data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut pos = match word(0) {
        Some(IMG_COMMON_MAGIC) | Some(IMG_SERVICE_MAGIC) => 8,
        Some(_) => 4,
        None => return Err(FramingError::NoMagic),
    };
    let mut out = Vec::new();
    while pos < data.len() {
        let len = word(pos).ok_or(FramingError::TruncatedLength)? as usize;
        pos += 4;
        if len > MAX_ENTRY {
            return Err(FramingError::TooLarge);
        }
        out.push(data.get(pos..pos + len).ok_or(FramingError::TruncatedEntry)?);
        pos += len;
    }
    Ok(out)
}

/// Writes an image file's magics (the common one, then `magic`).
pub fn write_magic(w: &mut impl Write, magic: u32) -> io::Result<()> {
    w.write_all(&IMG_COMMON_MAGIC.to_le_bytes())?;
    w.write_all(&magic.to_le_bytes())
}

/// Writes one protobuf entry as CRIU frames it: its length (u32, little-endian), then its bytes.
pub fn write_entry(w: &mut impl Write, m: &impl Message) -> io::Result<()> {
    let bytes = m.write_to_bytes().map_err(io::Error::other)?;
    w.write_all(&(bytes.len() as u32).to_le_bytes())?;
    w.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_skips_magics_and_rejects_truncation() {
        let mut data = Vec::new();
        data.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        data.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&[0x08, 0x01]);
        assert_eq!(entries(&data).unwrap(), vec![&[0x08, 0x01][..]]);
        data.extend_from_slice(&10u32.to_le_bytes());
        data.push(0);
        assert_eq!(entries(&data), Err(FramingError::TruncatedEntry));
        assert_eq!(entries(&[1, 2]), Err(FramingError::NoMagic));
        assert_eq!(entries(&[9, 9, 9, 9, 1, 0]), Err(FramingError::TruncatedLength));
    }

    #[test]
    fn an_entry_over_the_size_cap_is_refused_before_it_is_read() {
        let mut data = Vec::new();
        data.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        data.extend_from_slice(&0x5060_5060u32.to_le_bytes());
        data.extend_from_slice(&((MAX_ENTRY + 1) as u32).to_le_bytes());
        assert_eq!(entries(&data), Err(FramingError::TooLarge));
    }

    #[test]
    fn written_entries_read_back() {
        let mut head = pagemap::Pagemap_head::new();
        head.set_pages_id(7);
        let mut data = Vec::new();
        write_magic(&mut data, PAGEMAP_MAGIC).unwrap();
        write_entry(&mut data, &head).unwrap();
        let e = entries(&data).unwrap();
        assert_eq!(pagemap::Pagemap_head::parse_from_bytes(e[0]).unwrap().pages_id(), 7);
    }
}
