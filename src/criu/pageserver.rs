//! crik as CRIU's page server. With the swrk `ps` option and a socket, CRIU sends the app's
//! memory pages over that socket as it dumps them, instead of writing `pages-*.img`; crik
//! writes the small pagemap images itself and hands the page bytes to a [`PageSink`] (the
//! object-storage upload), so they are chunked, hashed and sent while the dump runs and never
//! touch a disk or a staging dir.
//!
//! The protocol (CRIU's `criu/page-xfer.c`, as of 4.2): fixed 32-byte commands, in the host's
//! byte order — `u32 cmd` (flags << 16 | op), 4 bytes of padding, `u64 nr_pages`, `u64 vaddr`,
//! `u64 dst_id` (image id << 8 | type: 1 a process's pagemap, 2 shared memory's).
//! - OPEN2: a new pagemap image; answered with one byte, "has a parent" (crik never has one).
//! - ADD_F: one pagemap entry; with the PRESENT flag, `nr_pages` pages of data follow.
//! - PARENT: answered with an i32, 0 (no parent images).
//! - CLOSE / FORCE_CLOSE: the end; answered with an i32 status, 0.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use criu_proto::pagemap::{Pagemap_entry, Pagemap_head};
use criu_proto::{write_entry, write_magic, PAGEMAP_MAGIC, PAGE_SIZE, PE_PARENT, PE_PRESENT};

use crate::store::integrity::{Sum, Summer};
use crate::store::manifest::FileSum;

const OPEN: u32 = 3;
const OPEN2: u32 = 4;
const PARENT: u32 = 5;
const ADD: u32 = 1;
const HOLE: u32 = 2;
const ADD_F: u32 = 6;
const GET: u32 = 7;
const CLOSE: u32 = 0x1023;
const FORCE_CLOSE: u32 = 0x1024;

const TYPE_PID: u64 = 1;
const TYPE_SHMEM: u64 = 2;

/// Where the page bytes of each pages image go, in order.
pub trait PageSink {
    /// A pages image begins (`path` relative to the checkpoint dir).
    fn begin(&mut self, path: &str) -> Result<(), SinkError>;
    fn write(&mut self, data: &[u8]) -> Result<(), SinkError>;
    /// The current pages image is complete.
    fn end(&mut self) -> Result<(), SinkError>;
}

/// Why a [`PageSink`] refused bytes (for the upload: its queue stopped).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PageServerError {
    #[error("reading CRIU's page stream: {0}")]
    Io(#[from] io::Error),
    #[error("CRIU's page stream: {0}")]
    Protocol(String),
    /// CRIU went away before the end of the dump: its own failure, which its log explains.
    #[error("CRIU's page stream ended {0}")]
    Closed(&'static str),
    #[error("writing {path}: {source}")]
    Image { path: String, source: io::Error },
    /// The sink failed (the upload): the stream was cut, so CRIU's dump fails.
    #[error("{0}")]
    Sink(#[source] SinkError),
}

/// One command of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Command {
    op: u32,
    flags: u32,
    nr_pages: u64,
    vaddr: u64,
    dst_id: u64,
}

impl Command {
    const SIZE: usize = 32;

    fn parse(b: &[u8; Self::SIZE]) -> Command {
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let cmd = u32_at(0);
        Command { op: cmd & 0xffff, flags: cmd >> 16, nr_pages: u64_at(8), vaddr: u64_at(16), dst_id: u64_at(24) }
    }
}

/// The pagemap image being written and the pages image streamed beside it.
struct Open {
    dst_id: u64,
    pagemap: BufWriter<File>,
    pagemap_path: String,
    pages: String,
    sum: Summer,
}

/// Serves one dump's session on `sock` until CRIU's CLOSE: pagemap images are written into
/// `images` (the checkpoint's `rel` dir, e.g. "images"), page data goes to `sink`. Returns the
/// pages images streamed (path relative to the checkpoint dir, size, CRC-32), as the store
/// would have recorded them had they been files. (No digest: streamed pages never land on this
/// node; a node that downloads them computes their digests from the authenticated chunks.) On any error the socket is dropped, so
/// CRIU's next write fails and the dump is rolled back (the app keeps running).
pub fn serve(
    mut sock: impl Read + Write,
    images: &Path,
    rel: &str,
    sink: &mut dyn PageSink,
) -> Result<Vec<FileSum>, PageServerError> {
    let mut streamed = Vec::new();
    let mut open: Option<Open> = None;
    let mut next_pages_id = 1u32;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut head = [0u8; Command::SIZE];
        match read_exact_or_eof(&mut sock, &mut head) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(PageServerError::Closed("in the middle of a command"))
            }
            Err(e) => return Err(e.into()),
            Ok(false) => return Err(PageServerError::Closed("before the end of the dump")),
            Ok(true) => {}
        }
        let c = Command::parse(&head);
        match c.op {
            OPEN | OPEN2 => {
                streamed.extend(close(open.take(), sink)?);
                open = Some(begin(c.dst_id, next_pages_id, images, rel, sink)?);
                next_pages_id += 1;
                if c.op == OPEN2 {
                    sock.write_all(&[0u8])?; // no parent
                }
            }
            PARENT => sock.write_all(&0i32.to_ne_bytes())?,
            ADD | ADD_F | HOLE => {
                let flags = match c.op {
                    ADD => PE_PRESENT,
                    HOLE => PE_PARENT,
                    _ => c.flags,
                };
                let o = match open.as_mut() {
                    Some(o) if o.dst_id == c.dst_id => o,
                    _ => {
                        return Err(PageServerError::Protocol(format!(
                            "pages for {:#x} before it was opened",
                            c.dst_id
                        )))
                    }
                };
                if flags & PE_PARENT != 0 {
                    return Err(PageServerError::Protocol("pages in a parent image, but crik gave none".into()));
                }
                let mut e = Pagemap_entry::new();
                e.set_vaddr(c.vaddr);
                e.set_compat_nr_pages(0);
                e.set_nr_pages(c.nr_pages);
                e.set_flags(flags);
                write_entry(&mut o.pagemap, &e).map_err(|s| image_err(&o.pagemap_path, s))?;
                if flags & PE_PRESENT != 0 {
                    let mut left = c
                        .nr_pages
                        .checked_mul(PAGE_SIZE)
                        .ok_or_else(|| PageServerError::Protocol(format!("{} pages", c.nr_pages)))?;
                    while left > 0 {
                        let want = left.min(buf.len() as u64) as usize;
                        let n = match sock.read(&mut buf[..want]) {
                            Ok(0) => return Err(PageServerError::Closed("in the middle of pages")),
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e.into()),
                        };
                        o.sum.update(&buf[..n]);
                        sink.write(&buf[..n]).map_err(PageServerError::Sink)?;
                        left -= n as u64;
                    }
                }
            }
            CLOSE | FORCE_CLOSE => {
                streamed.extend(close(open.take(), sink)?);
                sock.write_all(&0i32.to_ne_bytes())?;
                return Ok(streamed);
            }
            GET => return Err(PageServerError::Protocol("a lazy-pages request (GET) during a dump".into())),
            op => return Err(PageServerError::Protocol(format!("unknown command {op:#x}"))),
        }
    }
}

/// `Ok(false)` on a clean EOF before the first byte.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn image_err(path: &str, source: io::Error) -> PageServerError {
    PageServerError::Image { path: path.into(), source }
}

/// Creates the pagemap image CRIU would have written for `dst_id` (named as CRIU names it),
/// with its head naming `pages-<pages_id>.img`.
fn begin(
    dst_id: u64,
    pages_id: u32,
    images: &Path,
    rel: &str,
    sink: &mut dyn PageSink,
) -> Result<Open, PageServerError> {
    let id = dst_id >> 8;
    let name = match dst_id & 0xff {
        TYPE_PID => format!("pagemap-{id}.img"),
        TYPE_SHMEM => format!("pagemap-shmem-{id}.img"),
        t => return Err(PageServerError::Protocol(format!("unknown pagemap type {t}"))),
    };
    let pagemap_path = format!("{rel}/{name}");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(images.join(&name))
        .map_err(|e| image_err(&pagemap_path, e))?;
    let mut pagemap = BufWriter::new(file);
    write_magic(&mut pagemap, PAGEMAP_MAGIC).map_err(|e| image_err(&pagemap_path, e))?;
    let mut head = Pagemap_head::new();
    head.set_pages_id(pages_id);
    write_entry(&mut pagemap, &head).map_err(|e| image_err(&pagemap_path, e))?;
    let pages = format!("{rel}/pages-{pages_id}.img");
    sink.begin(&pages).map_err(PageServerError::Sink)?;
    Ok(Open { dst_id, pagemap, pagemap_path, pages, sum: Summer::new(false) })
}

/// Finishes the open pagemap image (flushed; sealed later with the other images) and its
/// pages image; returns the latter's sum.
fn close(open: Option<Open>, sink: &mut dyn PageSink) -> Result<Option<FileSum>, PageServerError> {
    let Some(mut o) = open else { return Ok(None) };
    o.pagemap.flush().map_err(|e| image_err(&o.pagemap_path, e))?;
    sink.end().map_err(PageServerError::Sink)?;
    let Sum { size, crc32, digest } = o.sum.finish();
    Ok(Some(FileSum { path: o.pages, size, crc32, digest }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use criu_proto::Message;

    /// Records what reaches the sink.
    #[derive(Default)]
    struct Recorder {
        files: Vec<(String, Vec<u8>)>,
        ended: usize,
    }

    impl PageSink for Recorder {
        fn begin(&mut self, path: &str) -> Result<(), SinkError> {
            self.files.push((path.into(), Vec::new()));
            Ok(())
        }
        fn write(&mut self, data: &[u8]) -> Result<(), SinkError> {
            self.files.last_mut().unwrap().1.extend_from_slice(data);
            Ok(())
        }
        fn end(&mut self) -> Result<(), SinkError> {
            self.ended += 1;
            Ok(())
        }
    }

    fn cmd(op: u32, flags: u32, nr_pages: u64, vaddr: u64, dst_id: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(flags << 16 | op).to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&nr_pages.to_ne_bytes());
        b.extend_from_slice(&vaddr.to_ne_bytes());
        b.extend_from_slice(&dst_id.to_ne_bytes());
        b
    }

    /// A socket stand-in: what CRIU sends, and what crik answers.
    struct Wire {
        input: io::Cursor<Vec<u8>>,
        answers: Vec<u8>,
    }
    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            // Short reads, as from a socket.
            let n = buf.len().min(1000);
            self.input.read(&mut buf[..n])
        }
    }
    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.answers.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn tmp(name: &str) -> TempDir {
        TempDir::new(&format!("ps-{name}"))
    }

    #[test]
    fn a_session_becomes_pagemap_images_and_page_streams() {
        let ps = PAGE_SIZE as usize;
        let pages_a: Vec<u8> = (0..3 * ps).map(|i| (i % 251) as u8).collect();
        let pages_b = vec![7u8; ps];
        let mut input = Vec::new();
        input.extend(cmd(OPEN2, 0, 0, 0, 9001 << 8 | TYPE_PID));
        input.extend(cmd(ADD_F, PE_PRESENT, 2, 0x1000, 9001 << 8 | TYPE_PID));
        input.extend(&pages_a[..2 * ps]);
        input.extend(cmd(ADD_F, PE_PRESENT, 1, 0x8000, 9001 << 8 | TYPE_PID));
        input.extend(&pages_a[2 * ps..]);
        input.extend(cmd(OPEN2, 0, 0, 0, 5 << 8 | TYPE_SHMEM));
        input.extend(cmd(ADD_F, PE_PRESENT, 1, 0, 5 << 8 | TYPE_SHMEM));
        input.extend(&pages_b);
        input.extend(cmd(FORCE_CLOSE, 0, 0, 0, 0));
        let dir = tmp("session");
        let mut wire = Wire { input: io::Cursor::new(input), answers: Vec::new() };
        let mut rec = Recorder::default();
        let sums = serve(&mut wire, &dir, "images", &mut rec).unwrap();

        assert_eq!(wire.answers, [&[0u8][..], &[0u8], &0i32.to_ne_bytes()].concat(), "two OPEN2s, one CLOSE");
        assert_eq!(
            rec.files,
            vec![("images/pages-1.img".into(), pages_a.clone()), ("images/pages-2.img".into(), pages_b.clone())]
        );
        assert_eq!(rec.ended, 2);
        assert_eq!(
            sums[0],
            FileSum {
                path: "images/pages-1.img".into(),
                size: pages_a.len() as u64,
                crc32: crc32fast::hash(&pages_a),
                digest: None
            }
        );
        assert_eq!(sums[1].crc32, crc32fast::hash(&pages_b));

        // The pagemap reads back as CRIU's: head, then one entry per ADD_F.
        let head: Pagemap_head = crate::criu::images::read_one(&dir.join("pagemap-9001.img")).unwrap();
        assert_eq!(head.pages_id(), 1);
        let entries = crate::criu::images::entries(&dir.join("pagemap-9001.img")).unwrap();
        let got: Vec<(u64, u64, u32)> = entries[1..]
            .iter()
            .map(|b| Pagemap_entry::parse_from_bytes(b).unwrap())
            .map(|e| (e.vaddr(), e.nr_pages(), e.flags()))
            .collect();
        assert_eq!(got, [(0x1000, 2, PE_PRESENT), (0x8000, 1, PE_PRESENT)]);
        let shm: Pagemap_head = crate::criu::images::read_one(&dir.join("pagemap-shmem-5.img")).unwrap();
        assert_eq!(shm.pages_id(), 2);
    }

    #[test]
    fn a_cut_stream_or_a_failing_sink_is_an_error() {
        let dir = tmp("cut");
        let ps = PAGE_SIZE as usize;
        let mut input = cmd(OPEN2, 0, 0, 0, 1 << 8 | TYPE_PID);
        input.extend(cmd(ADD_F, PE_PRESENT, 4, 0x1000, 1 << 8 | TYPE_PID));
        input.extend(vec![1u8; ps]); // 3 pages short
        let mut wire = Wire { input: io::Cursor::new(input.clone()), answers: Vec::new() };
        let e = serve(&mut wire, &dir, "images", &mut Recorder::default()).unwrap_err();
        assert!(e.to_string().contains("middle of pages"), "{e}");

        struct Failing;
        impl PageSink for Failing {
            fn begin(&mut self, _: &str) -> Result<(), SinkError> {
                Ok(())
            }
            fn write(&mut self, _: &[u8]) -> Result<(), SinkError> {
                Err("storage said no".into())
            }
            fn end(&mut self) -> Result<(), SinkError> {
                Ok(())
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut wire = Wire { input: io::Cursor::new(input), answers: Vec::new() };
        let e = serve(&mut wire, &dir, "images", &mut Failing).unwrap_err();
        assert_eq!(e.to_string(), "storage said no");

        let mut wire =
            Wire { input: io::Cursor::new(cmd(ADD_F, PE_PRESENT, 1, 0, 1 << 8 | TYPE_PID)), answers: vec![] };
        assert!(serve(&mut wire, &dir, "images", &mut Recorder::default()).is_err(), "pages before OPEN");
        let mut wire = Wire { input: io::Cursor::new(Vec::new()), answers: vec![] };
        assert!(serve(&mut wire, &dir, "images", &mut Recorder::default()).is_err(), "closed before CLOSE");
    }
}
