//! Reading CRIU's image files, in Rust (no dependency on CRIU's Python `crit`).
//!
//! ```text
//! image file:  [u32 common magic] u32 image magic | u32 len | protobuf entry | u32 len | ...
//! pages-N.img: raw page data, in the order of the present entries of the pagemap images
//! ```
//! Only what `crik inspect` shows is decoded: the process tree, command names and lines, open
//! files and sockets, memory sizes. Field numbers follow CRIU's `images/*.proto`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const PAGE_SIZE: u64 = 4096;
/// pagemap_entry.flags: the pages are in this checkpoint's pages image.
const PE_PRESENT: u64 = 1 << 2;
/// Largest single entry crik accepts (CRIU's are small; a larger one means a damaged image).
const MAX_ENTRY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

/// One protobuf field value, as on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

/// A decoded protobuf message: (field number, value) in wire order.
struct Msg<'a>(Vec<(u32, Wire<'a>)>);

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

impl<'a> Msg<'a> {
    fn parse(buf: &'a [u8]) -> Result<Msg<'a>, String> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let key = varint(buf, &mut pos)?;
            let (field, wire) = ((key >> 3) as u32, key & 7);
            let v = match wire {
                0 => Wire::Varint(varint(buf, &mut pos)?),
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    let b = buf.get(pos..pos + n).ok_or("truncated fixed field")?;
                    pos += n;
                    let mut a = [0u8; 8];
                    a[..n].copy_from_slice(b);
                    Wire::Fixed(u64::from_le_bytes(a))
                }
                2 => {
                    let len = varint(buf, &mut pos)? as usize;
                    let b = buf.get(pos..pos.checked_add(len).ok_or("bad length")?).ok_or("truncated field")?;
                    pos += len;
                    Wire::Bytes(b)
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            fields.push((field, v));
        }
        Ok(Msg(fields))
    }
    fn u64(&self, f: u32) -> Option<u64> {
        self.0.iter().rev().find_map(|(n, v)| match (n, v) {
            (n, Wire::Varint(x) | Wire::Fixed(x)) if *n == f => Some(*x),
            _ => None,
        })
    }
    fn bytes(&self, f: u32) -> Option<&'a [u8]> {
        self.0.iter().rev().find_map(|(n, v)| match (n, v) {
            (n, Wire::Bytes(b)) if *n == f => Some(*b),
            _ => None,
        })
    }
    fn str(&self, f: u32) -> Option<String> {
        self.bytes(f).map(|b| String::from_utf8_lossy(b).into_owned())
    }
    fn msg(&self, f: u32) -> Option<Msg<'a>> {
        self.bytes(f).and_then(|b| Msg::parse(b).ok())
    }
    /// A repeated integer field, packed or not.
    fn repeated(&self, f: u32) -> Vec<u64> {
        let mut out = Vec::new();
        for (n, v) in &self.0 {
            if *n != f {
                continue;
            }
            match v {
                Wire::Varint(x) | Wire::Fixed(x) => out.push(*x),
                Wire::Bytes(b) => {
                    let mut p = 0;
                    while p < b.len() {
                        match varint(b, &mut p) {
                            Ok(x) => out.push(x),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        out
    }
}

/// The protobuf entries of one image file.
fn entries(path: &Path) -> Result<Vec<Vec<u8>>, ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::Read { path: path.into(), source: e })?;
    let damaged = |why: &str| ImageError::Damaged { path: path.into(), why: why.into() };
    let word = |at: usize| data.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let mut pos = match word(0) {
        Some(IMG_COMMON_MAGIC) | Some(IMG_SERVICE_MAGIC) => 8,
        Some(_) => 4,
        None => return Err(damaged("shorter than its magic")),
    };
    let mut out = Vec::new();
    while pos < data.len() {
        let len = word(pos).ok_or_else(|| damaged("truncated entry length"))? as usize;
        pos += 4;
        if len > MAX_ENTRY {
            return Err(damaged("entry larger than 64 MiB"));
        }
        let body = data.get(pos..pos + len).ok_or_else(|| damaged("truncated entry"))?;
        out.push(body.to_vec());
        pos += len;
    }
    Ok(out)
}

fn parse_entry<'a>(path: &Path, buf: &'a [u8]) -> Result<Msg<'a>, ImageError> {
    Msg::parse(buf).map_err(|why| ImageError::Damaged { path: path.into(), why })
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    pub threads: usize,
    /// The kernel's short command name.
    pub comm: String,
    /// The full command line, read from the process's memory in the checkpoint.
    pub cmdline: Option<Vec<String>>,
    /// Bytes of memory the checkpoint holds for this process.
    pub memory_bytes: u64,
    pub files: Vec<OpenFile>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpenFile {
    pub fd: u32,
    pub kind: String,
    pub what: String,
}

/// A regular file some process of the checkpoint had open.
#[derive(Debug, Clone, PartialEq)]
pub struct RegFile {
    /// Absolute path, as CRIU recorded it.
    pub path: String,
    /// open(2) flags.
    pub flags: u32,
}

/// Every regular file in the checkpoint's file table (files.img).
pub fn regular_files(dir: &Path) -> Result<Vec<RegFile>, ImageError> {
    let path = dir.join("files.img");
    let mut out = Vec::new();
    for e in entries(&path)? {
        let m = parse_entry(&path, &e)?;
        if m.u64(1) == Some(1) {
            if let Some(reg) = m.msg(3) {
                let name = reg.str(6).unwrap_or_default();
                let path = if name.starts_with('/') { name } else { format!("/{name}") };
                out.push(RegFile { path, flags: reg.u64(2).unwrap_or(0) as u32 });
            }
        }
    }
    Ok(out)
}

/// The process tree of a checkpoint's images dir, with each process's files and memory.
pub fn processes(dir: &Path) -> Result<Vec<Process>, ImageError> {
    let files = file_table(dir)?;
    let pstree = dir.join("pstree.img");
    let mut out = Vec::new();
    for e in entries(&pstree)? {
        let m = parse_entry(&pstree, &e)?;
        let pid = m.u64(1).unwrap_or(0) as u32;
        let core_path = dir.join(format!("core-{pid}.img"));
        let core_entries = entries(&core_path)?;
        let core = core_entries.first().map(|c| parse_entry(&core_path, c)).transpose()?;
        let comm = core.as_ref().and_then(|c| c.msg(3)).and_then(|tc| tc.str(6)).unwrap_or_default();
        // task_kobj_ids_entry: in ids-<pid>.img (older CRIU: inside the core entry).
        let ids_path = dir.join(format!("ids-{pid}.img"));
        let ids = entries(&ids_path).ok().and_then(|e| e.into_iter().next());
        let files_id = ids
            .as_deref()
            .and_then(|b| Msg::parse(b).ok())
            .and_then(|ids| ids.u64(2))
            .or_else(|| core.as_ref().and_then(|c| c.msg(4)).and_then(|ids| ids.u64(2)));
        let (memory_bytes, cmdline) = memory(dir, pid)?;
        let open = match files_id {
            Some(id) => open_files(dir, id as u32, &files)?,
            None => Vec::new(),
        };
        out.push(Process {
            pid,
            ppid: m.u64(2).unwrap_or(0) as u32,
            pgid: m.u64(3).unwrap_or(0) as u32,
            sid: m.u64(4).unwrap_or(0) as u32,
            threads: m.repeated(5).len(),
            comm,
            cmdline,
            memory_bytes,
            files: open,
        });
    }
    Ok(out)
}

/// files.img: what each file id is (a path, a pipe, a socket, ...).
fn file_table(dir: &Path) -> Result<BTreeMap<u32, (String, String)>, ImageError> {
    let path = dir.join("files.img");
    let mut t = BTreeMap::new();
    for e in entries(&path)? {
        let m = parse_entry(&path, &e)?;
        let id = m.u64(2).unwrap_or(0) as u32;
        let (kind, what) = describe_file(&m);
        t.insert(id, (kind, what));
    }
    Ok(t)
}

fn describe_file(m: &Msg) -> (String, String) {
    let kind = m.u64(1).unwrap_or(0);
    match kind {
        1 => {
            let reg = m.msg(3);
            let name = reg.as_ref().and_then(|r| r.str(6)).unwrap_or_default();
            let pos = reg.as_ref().and_then(|r| r.u64(3)).unwrap_or(0);
            ("file".into(), format!("{name} (offset {pos})"))
        }
        2 => ("pipe".into(), format!("pipe:[{}]", m.msg(18).and_then(|p| p.u64(2)).unwrap_or(0))),
        3 => ("fifo".into(), "fifo".into()),
        4 => ("socket".into(), m.msg(4).map(|s| describe_inet(&s)).unwrap_or_default()),
        5 => {
            let usk = m.msg(16);
            let name = usk
                .as_ref()
                .and_then(|u| u.bytes(11))
                .map(|b| String::from_utf8_lossy(b).replace('\0', "@"))
                .unwrap_or_default();
            let ty = match usk.as_ref().and_then(|u| u.u64(3)) {
                Some(1) => "stream",
                Some(2) => "dgram",
                Some(5) => "seqpacket",
                _ => "?",
            };
            ("socket".into(), format!("unix {ty} {}", if name.is_empty() { "(unnamed)".into() } else { name }))
        }
        6 => ("eventfd".into(), "eventfd".into()),
        7 => ("eventpoll".into(), "eventpoll".into()),
        8 => ("inotify".into(), "inotify".into()),
        9 => ("signalfd".into(), "signalfd".into()),
        10 => ("socket".into(), "packet socket".into()),
        11 => ("tty".into(), "tty".into()),
        13 => ("socket".into(), "netlink socket".into()),
        17 => ("timerfd".into(), "timerfd".into()),
        18 => ("memfd".into(), "memfd".into()),
        k => ("other".into(), format!("file type {k}")),
    }
}

fn describe_inet(s: &Msg) -> String {
    let family = s.u64(3).unwrap_or(0);
    let proto = match s.u64(5) {
        Some(6) => "tcp",
        Some(17) => "udp",
        _ => "ip",
    };
    let addr = |f: u32| -> String {
        let words = s.repeated(f);
        let bytes: Vec<u8> = words.iter().flat_map(|w| (*w as u32).to_le_bytes()).collect();
        match (family, bytes.len()) {
            (2, 4..) => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
            (10, 16..) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).unwrap()).to_string(),
            _ => "*".into(),
        }
    };
    let state = match s.u64(6) {
        Some(1) => "established",
        Some(2) => "syn-sent",
        Some(3) => "syn-recv",
        Some(4) => "fin-wait1",
        Some(5) => "fin-wait2",
        Some(6) => "time-wait",
        Some(7) => "close",
        Some(8) => "close-wait",
        Some(9) => "last-ack",
        Some(10) => "listen",
        Some(11) => "closing",
        _ => "?",
    };
    let (sp, dp) = (s.u64(7).unwrap_or(0), s.u64(8).unwrap_or(0));
    if state == "listen" || dp == 0 {
        format!("{proto} {}:{sp} {state}", addr(11))
    } else {
        format!("{proto} {}:{sp} -> {}:{dp} {state}", addr(11), addr(12))
    }
}

/// fdinfo-<files_id>.img: the descriptors of one process, resolved through the file table.
fn open_files(dir: &Path, files_id: u32, table: &BTreeMap<u32, (String, String)>) -> Result<Vec<OpenFile>, ImageError> {
    let path = dir.join(format!("fdinfo-{files_id}.img"));
    let mut out = Vec::new();
    for e in entries(&path)? {
        let m = parse_entry(&path, &e)?;
        let id = m.u64(1).unwrap_or(0) as u32;
        let (kind, what) = table.get(&id).cloned().unwrap_or_else(|| ("?".into(), format!("file id {id}")));
        out.push(OpenFile { fd: m.u64(4).unwrap_or(0) as u32, kind, what });
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// Bytes of memory held for `pid`, and its command line read from that memory.
fn memory(dir: &Path, pid: u32) -> Result<(u64, Option<Vec<String>>), ImageError> {
    let pm_path = dir.join(format!("pagemap-{pid}.img"));
    let pm = entries(&pm_path)?;
    let Some(head) = pm.first() else { return Ok((0, None)) };
    let pages_id = parse_entry(&pm_path, head)?.u64(1).unwrap_or(0);
    // (vaddr, bytes, offset in the pages image) of each present run of pages.
    let mut runs = Vec::new();
    let mut offset = 0u64;
    for e in &pm[1..] {
        let m = parse_entry(&pm_path, e)?;
        // nr_pages is field 5 since CRIU 3.x; field 2 is its 32-bit predecessor.
        let (vaddr, n) = (m.u64(1).unwrap_or(0), m.u64(5).or(m.u64(2)).unwrap_or(0) * PAGE_SIZE);
        if m.u64(4).unwrap_or(PE_PRESENT) & PE_PRESENT != 0 {
            runs.push((vaddr, n, offset));
            offset += n;
        }
    }
    let mm_path = dir.join(format!("mm-{pid}.img"));
    let cmdline = entries(&mm_path).ok().and_then(|mm| mm.first().cloned()).and_then(|mm| {
        let m = Msg::parse(&mm).ok()?;
        let (start, end) = (m.u64(8)?, m.u64(9)?);
        let &(vaddr, _, off) = runs.iter().find(|(v, n, _)| start >= *v && end <= v + n)?;
        use std::os::unix::fs::FileExt;
        let pages = fs::File::open(dir.join(format!("pages-{pages_id}.img"))).ok()?;
        let mut bytes = vec![0u8; usize::try_from(end - start).ok().filter(|n| *n <= 1 << 20)?];
        pages.read_exact_at(&mut bytes, off + start - vaddr).ok()?;
        Some(
            bytes
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        )
    });
    Ok((offset, cmdline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn decodes_varints_bytes_nested_and_packed_fields() {
        let mut inner = Vec::new();
        put_varint(&mut inner, (6 << 3) | 2);
        put_varint(&mut inner, 4);
        inner.extend_from_slice(b"sh\0x");
        let mut buf = Vec::new();
        put_varint(&mut buf, 1 << 3);
        put_varint(&mut buf, 9001);
        put_varint(&mut buf, (3 << 3) | 2);
        put_varint(&mut buf, inner.len() as u64);
        buf.extend_from_slice(&inner);
        put_varint(&mut buf, (5 << 3) | 2); // packed repeated 5: [1, 300]
        put_varint(&mut buf, 3);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, 300);
        put_varint(&mut buf, 5 << 3); // plus one unpacked element
        put_varint(&mut buf, 7);
        let m = Msg::parse(&buf).unwrap();
        assert_eq!(m.u64(1), Some(9001));
        assert_eq!(m.msg(3).unwrap().str(6).unwrap(), "sh\0x");
        assert_eq!(m.repeated(5), vec![1, 300, 7]);
        assert!(Msg::parse(&[0x0a, 0x05, 0x01]).is_err(), "truncated length-delimited field");
        assert!(Msg::parse(&[0x08]).is_err(), "truncated varint");
    }

    #[test]
    fn image_framing_skips_magics_and_rejects_truncation() {
        let dir = std::env::temp_dir().join(format!("crik-images-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.img");
        let mut data = Vec::new();
        data.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
        data.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        data.extend_from_slice(&2u32.to_le_bytes());
        data.extend_from_slice(&[0x08, 0x01]);
        fs::write(&p, &data).unwrap();
        assert_eq!(entries(&p).unwrap(), vec![vec![0x08, 0x01]]);
        data.extend_from_slice(&10u32.to_le_bytes());
        data.push(0);
        fs::write(&p, &data).unwrap();
        assert!(matches!(entries(&p), Err(ImageError::Damaged { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
