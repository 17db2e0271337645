//! Reading CRIU's image files, in Rust (no dependency on CRIU's Python `crit`): their framing
//! and messages from [`criu_proto`]. Read by `crik inspect` (process tree, command lines, open
//! files and sockets, memory), by restore (the open files to re-point at the new container's
//! copies) and by a dump without the network lock (the TCP connections it must not hold).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use criu_proto::core::{Core_entry, Task_kobj_ids_entry};
use criu_proto::fdinfo::{Fd_types, Fdinfo_entry, File_entry};
use criu_proto::mm::Mm_entry;
use criu_proto::pagemap::{Pagemap_entry, Pagemap_head};
use criu_proto::pstree::Pstree_entry;
use criu_proto::sk_inet::Inet_sk_entry;
use criu_proto::{Message, PAGE_SIZE, PE_PRESENT};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

/// The protobuf entries of one image file.
pub(crate) fn entries(path: &Path) -> Result<Vec<Vec<u8>>, ImageError> {
    let data = fs::read(path).map_err(|e| ImageError::Read { path: path.into(), source: e })?;
    let entries =
        criu_proto::entries(&data).map_err(|e| ImageError::Damaged { path: path.into(), why: e.to_string() })?;
    Ok(entries.into_iter().map(<[u8]>::to_vec).collect())
}

/// Whether the checkpointed tree has a mount namespace of its own (`isolatePids`): CRIU then
/// wrote its mounts (`mountpoints-<id>.img`), and restoring it needs a root and its external
/// mounts ([`crate::criu::own_mount_namespace`]).
pub fn has_mount_namespace(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("mountpoints-") && n.ends_with(".img")))
    })
}

/// Every entry of an image file, decoded as `M` (CRIU's message for that image).
fn read<M: Message>(path: &Path) -> Result<Vec<M>, ImageError> {
    entries(path)?
        .iter()
        .map(|e| M::parse_from_bytes(e).map_err(|err| ImageError::Damaged { path: path.into(), why: err.to_string() }))
        .collect()
}

/// The first entry of an image file that holds one (core, ids, mm).
pub(crate) fn read_one<M: Message>(path: &Path) -> Result<M, ImageError> {
    read(path)?.into_iter().next().ok_or_else(|| ImageError::Damaged { path: path.into(), why: "no entry".into() })
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
    let files: Vec<File_entry> = read(&dir.join("files.img"))?;
    Ok(files
        .iter()
        .filter(|f| f.type_() == Fd_types::REG)
        .filter_map(|f| f.reg.as_ref())
        .map(|reg| {
            let name = reg.name();
            let path = if name.starts_with('/') { name.to_string() } else { format!("/{name}") };
            RegFile { path, flags: reg.flags() }
        })
        .collect())
}

/// The process tree of a checkpoint's images dir, with each process's files and memory.
pub fn processes(dir: &Path) -> Result<Vec<Process>, ImageError> {
    let files = file_table(dir)?;
    let mut out = Vec::new();
    for entry in read::<Pstree_entry>(&dir.join("pstree.img"))? {
        let pid = entry.pid();
        let core: Core_entry = read_one(&dir.join(format!("core-{pid}.img")))?;
        let comm = core.tc.as_ref().map(|tc| tc.comm().to_string()).unwrap_or_default();
        // task_kobj_ids_entry: in ids-<pid>.img (older CRIU: inside the core entry).
        let files_id = read_one::<Task_kobj_ids_entry>(&dir.join(format!("ids-{pid}.img")))
            .ok()
            .map(|ids| ids.files_id())
            .or_else(|| core.ids.as_ref().map(|ids| ids.files_id()));
        let (memory_bytes, cmdline) = memory(dir, pid)?;
        let open = match files_id {
            Some(id) => open_files(dir, id, &files)?,
            None => Vec::new(),
        };
        out.push(Process {
            pid,
            ppid: entry.ppid(),
            pgid: entry.pgid(),
            sid: entry.sid(),
            threads: entry.threads.len(),
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
    let files: Vec<File_entry> = read(&dir.join("files.img"))?;
    Ok(files.iter().map(|f| (f.id(), describe_file(f))).collect())
}

fn describe_file(f: &File_entry) -> (String, String) {
    let (kind, what): (&str, String) = match f.type_() {
        Fd_types::REG => {
            let reg = f.reg.as_ref();
            let (name, pos) = reg.map_or(("", 0), |r| (r.name(), r.pos()));
            ("file", format!("{name} (offset {pos})"))
        }
        Fd_types::PIPE => ("pipe", format!("pipe:[{}]", f.pipe.as_ref().map_or(0, |p| p.pipe_id()))),
        Fd_types::FIFO => ("fifo", "fifo".into()),
        Fd_types::INETSK => ("socket", f.isk.as_ref().map(describe_inet).unwrap_or_default()),
        Fd_types::UNIXSK => {
            let usk = f.usk.as_ref();
            let name = usk.map(|u| String::from_utf8_lossy(u.name()).replace('\0', "@")).unwrap_or_default();
            let ty = match usk.map(|u| u.type_()) {
                Some(1) => "stream",
                Some(2) => "dgram",
                Some(5) => "seqpacket",
                _ => "?",
            };
            ("socket", format!("unix {ty} {}", if name.is_empty() { "(unnamed)".into() } else { name }))
        }
        Fd_types::EVENTFD => ("eventfd", "eventfd".into()),
        Fd_types::EVENTPOLL => ("eventpoll", "eventpoll".into()),
        Fd_types::INOTIFY => ("inotify", "inotify".into()),
        Fd_types::SIGNALFD => ("signalfd", "signalfd".into()),
        Fd_types::PACKETSK => ("socket", "packet socket".into()),
        Fd_types::TTY => ("tty", "tty".into()),
        Fd_types::NETLINKSK => ("socket", "netlink socket".into()),
        Fd_types::TIMERFD => ("timerfd", "timerfd".into()),
        Fd_types::MEMFD => ("memfd", "memfd".into()),
        k => ("other", format!("file type {}", k as i32)),
    };
    (kind.into(), what)
}

fn describe_inet(s: &Inet_sk_entry) -> String {
    let proto = match s.proto() {
        6 => "tcp",
        17 => "udp",
        _ => "ip",
    };
    let addr = |words: &[u32]| -> String {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        match (s.family(), bytes.len()) {
            (2, 4..) => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
            (10, 16..) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).unwrap()).to_string(),
            _ => "*".into(),
        }
    };
    let state = match s.state() {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait1",
        5 => "fin-wait2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        _ => "?",
    };
    let (sp, dp) = (s.src_port(), s.dst_port());
    if state == "listen" || dp == 0 {
        format!("{proto} {}:{sp} {state}", addr(&s.src_addr))
    } else {
        format!("{proto} {}:{sp} -> {}:{dp} {state}", addr(&s.src_addr), addr(&s.dst_addr))
    }
}

/// The TCP connections (sockets neither listening nor closed) among the files of a dump, as
/// `inspect` describes them: a dump without CRIU's network lock must hold none
/// ([`crate::checkpoint::preflight::network_lock_needed`]).
pub fn tcp_connections(dir: &Path) -> Result<Vec<String>, ImageError> {
    let files: Vec<File_entry> = read(&dir.join("files.img"))?;
    Ok(files
        .iter()
        .filter_map(|f| f.isk.as_ref().filter(|_| f.type_() == Fd_types::INETSK))
        .filter(|s| s.proto() == TCP && s.state() != TCP_LISTEN && s.state() != TCP_CLOSE)
        .map(describe_inet)
        .collect())
}

/// The id of the CRIU run that dumped these images (`inventory.img`), which names the nftables
/// table of its network lock: `inet CRIU-<id>`. `None`: an image without it.
pub fn dump_run_id(dir: &Path) -> Result<Option<String>, ImageError> {
    let inv: criu_proto::inventory::Inventory_entry = read_one(&dir.join("inventory.img"))?;
    Ok(inv.dump_criu_run_id.clone().filter(|id| !id.is_empty()))
}

const TCP: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

/// fdinfo-<files_id>.img: the descriptors of one process, resolved through the file table.
fn open_files(dir: &Path, files_id: u32, table: &BTreeMap<u32, (String, String)>) -> Result<Vec<OpenFile>, ImageError> {
    let fds: Vec<Fdinfo_entry> = read(&dir.join(format!("fdinfo-{files_id}.img")))?;
    let mut out: Vec<OpenFile> = fds
        .iter()
        .map(|fd| {
            let (kind, what) =
                table.get(&fd.id()).cloned().unwrap_or_else(|| ("?".into(), format!("file id {}", fd.id())));
            OpenFile { fd: fd.fd(), kind, what }
        })
        .collect();
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

/// Bytes of memory held for `pid`, and its command line read from that memory.
fn memory(dir: &Path, pid: u32) -> Result<(u64, Option<Vec<String>>), ImageError> {
    let pm_path = dir.join(format!("pagemap-{pid}.img"));
    let pm = entries(&pm_path)?;
    let Some(head) = pm.first() else { return Ok((0, None)) };
    let damaged = |e: protobuf::Error| ImageError::Damaged { path: pm_path.clone(), why: e.to_string() };
    let pages_id = Pagemap_head::parse_from_bytes(head).map_err(damaged)?.pages_id();
    // (vaddr, bytes, offset in the pages image) of each present run of pages.
    let mut runs = Vec::new();
    let mut offset = 0u64;
    for e in &pm[1..] {
        let m = Pagemap_entry::parse_from_bytes(e).map_err(damaged)?;
        // nr_pages since CRIU 3.x; compat_nr_pages is its 32-bit predecessor.
        let pages = if m.has_nr_pages() { m.nr_pages() } else { m.compat_nr_pages() as u64 };
        let n = pages * PAGE_SIZE;
        if !m.has_flags() || m.flags() & PE_PRESENT != 0 {
            runs.push((m.vaddr(), n, offset));
            offset += n;
        }
    }
    let cmdline = read_one::<Mm_entry>(&dir.join(format!("mm-{pid}.img"))).ok().and_then(|mm| {
        let (start, end) = (mm.mm_arg_start(), mm.mm_arg_end());
        let &(vaddr, _, off) = runs.iter().find(|(v, n, _)| start >= *v && end <= v + n)?;
        use std::os::unix::fs::FileExt;
        let pages = fs::File::open(dir.join(format!("pages-{pages_id}.img"))).ok()?;
        let mut bytes = vec![0u8; usize::try_from(end.checked_sub(start)?).ok().filter(|n| *n <= 1 << 20)?];
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
    use crate::testing::TempDir;

    /// An image file as CRIU writes it: magics, then length-prefixed entries.
    fn image(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&criu_proto::IMG_COMMON_MAGIC.to_le_bytes());
        data.extend_from_slice(&0x5060_5060u32.to_le_bytes());
        for e in entries {
            data.extend_from_slice(&(e.len() as u32).to_le_bytes());
            data.extend_from_slice(e);
        }
        data
    }

    #[test]
    fn entries_decode_as_criu_messages_and_missing_required_fields_are_damage() {
        let dir = TempDir::new("images-msg");
        let p = dir.join("pstree.img");
        let mut e = Pstree_entry::new();
        (e.pid, e.ppid, e.pgid, e.sid, e.threads) = (Some(9001), Some(0), Some(9001), Some(9001), vec![9001, 9002]);
        fs::write(&p, image(&[e.write_to_bytes().unwrap()])).unwrap();
        let back: Vec<Pstree_entry> = read(&p).unwrap();
        assert_eq!(back, vec![e]);
        // pstree_entry.pid is required: an entry without it is a damaged image, not pid 0.
        let only_ppid = vec![0x10, 0x01]; // field 2 (ppid) = 1
        fs::write(&p, image(&[only_ppid])).unwrap();
        assert!(matches!(read::<Pstree_entry>(&p), Err(ImageError::Damaged { .. })));
    }

    #[test]
    fn only_tcp_sockets_neither_listening_nor_closed_are_connections() {
        let dir = TempDir::new("images-tcp");
        let sock = |id: u32, proto: u32, state: u32, dst_port: u32| {
            let mut isk = Inet_sk_entry::new();
            isk.set_family(2);
            isk.set_type(if proto == 6 { 1 } else { 2 });
            isk.set_proto(proto);
            isk.set_state(state);
            isk.set_src_port(8080);
            isk.set_dst_port(dst_port);
            isk.src_addr = vec![0x0100_007f];
            isk.dst_addr = vec![0x0100_007f];
            let mut f = File_entry::new();
            f.set_type(Fd_types::INETSK);
            f.set_id(id);
            f.isk = protobuf::MessageField::some(isk);
            f.write_to_bytes().unwrap()
        };
        let files = [sock(1, 6, TCP_LISTEN, 0), sock(2, 6, 1, 40000), sock(3, 17, 7, 0), sock(4, 6, TCP_CLOSE, 0)];
        fs::write(dir.join("files.img"), image(&files)).unwrap();
        assert_eq!(tcp_connections(&dir).unwrap(), vec!["tcp 127.0.0.1:8080 -> 127.0.0.1:40000 established"]);
    }
}
