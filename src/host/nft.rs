//! Removing CRIU's network-lock tables from this network namespace. A dump that took the lock
//! leaves `table inet CRIU-<run id>` behind, dropping the packets of the connections it saved
//! until a restore here unlocks them. When that checkpoint will never be restored here (another
//! one was, or it was quarantined), the table only drops new connections that reuse a saved
//! 4-tuple, and in a network namespace that outlives the container (`hostNetwork`) such tables
//! pile up. crik removes the ones its own checkpoints name, over netlink (no `nft` binary
//! needed): one `NFT_MSG_DELTABLE` in a batch, as nft itself sends it.

use std::io;

/// nfnetlink: the netfilter netlink family, its nftables subsystem and batch messages
/// (linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h).
const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The tables a dump with CRIU run id `run_id` may have left: CRIU 4.2 names the table
/// `CRIU-` and the run id cut to fit its 32-byte buffer; later versions keep it whole.
pub fn lock_table_names(run_id: &str) -> Vec<String> {
    let mut names = vec![format!("CRIU-{run_id}")];
    let cut: String = run_id.chars().take(21).collect();
    if cut.len() < run_id.len() {
        names.push(format!("CRIU-{cut}"));
    }
    names
}

/// How many nftables tables this network namespace holds (every family): CRIU's network lock
/// loads the whole ruleset, and its memory grows with it.
pub fn count_tables() -> io::Result<usize> {
    Ok(tables()?.len())
}

/// The names of CRIU's network-lock tables (`inet CRIU-...`) in this network namespace.
pub fn criu_tables() -> io::Result<Vec<String>> {
    Ok(tables()?
        .into_iter()
        .filter(|(family, name)| *family == NFPROTO_INET && name.starts_with("CRIU-"))
        .map(|(_, n)| n)
        .collect())
}

/// Every table of this network namespace: its family and name.
fn tables() -> io::Result<Vec<(u8, String)>> {
    let sock = socket()?;
    let mut req = Vec::new();
    let get = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE;
    message(&mut req, get, NLM_F_REQUEST | NLM_F_DUMP, 1, 0, 0, &[]);
    send(&sock, &req)?;
    let mut tables = Vec::new();
    read_replies(&sock, |r| match (r.kind, r.errno) {
        (NLMSG_DONE, _) => Some(Ok(std::mem::take(&mut tables))),
        (_, Some(e)) if e != 0 => Some(Err(io::Error::from_raw_os_error(e))),
        (k, _) if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => {
            // nfgenmsg (family, version, resource id), then the table's attributes.
            if let (Some(&family), Some(attrs)) = (r.body.first(), r.body.get(4..)) {
                let name = string_attribute(attrs, NFTA_TABLE_NAME).unwrap_or_default();
                tables.push((family, name));
            }
            None
        }
        _ => None,
    })
}

/// The NUL-terminated string attribute `kind` among netlink attributes `attrs`.
fn string_attribute(mut attrs: &[u8], kind: u16) -> Option<String> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff; // without the nested/order flags
        if len < 4 || len > attrs.len() {
            return None;
        }
        if this == kind {
            let value = &attrs[4..len];
            let value = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

/// One message of the kernel's answer: its type, its sequence number, for an `NLMSG_ERROR`
/// its errno (0: an acknowledgement), and what follows the netlink header.
struct Reply<'a> {
    kind: u16,
    seq: u32,
    errno: Option<i32>,
    body: &'a [u8],
}

/// Reads the kernel's answers, message by message, until `each` decides.
fn read_replies<T>(sock: &std::os::fd::OwnedFd, mut each: impl FnMut(Reply) -> Option<io::Result<T>>) -> io::Result<T> {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = recv(sock, &mut buf)?;
        let mut at = 0usize;
        while at + 16 <= n {
            let word = |from: usize| u32::from_ne_bytes(buf[from..from + 4].try_into().unwrap_or_default());
            let (len, seq) = (word(at) as usize, word(at + 8));
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
            if len < 16 || at + len > n {
                return Err(io::Error::other("a malformed netlink answer"));
            }
            let errno = (kind == NLMSG_ERROR && len >= 20).then(|| -(word(at + 16) as i32));
            if let Some(done) = each(Reply { kind, seq, errno, body: &buf[at + 16..at + len] }) {
                return done;
            }
            at += (len + 3) & !3;
        }
    }
}

/// A netfilter netlink socket whose reads give up after 2 s.
fn socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: valid fd, a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Ok(sock)
}

/// Sends `msg` to the kernel.
fn send(sock: &std::os::fd::OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_nl is valid (address 0: the kernel).
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: the buffer is valid for its length, the address for its size.
    let sent = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram from the kernel into `buf`; its length.
fn recv(sock: &std::os::fd::OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(sock), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Deletes `table inet <name>`. `Ok(false)`: there was none.
pub fn delete_inet_table(name: &str) -> io::Result<bool> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(io::Error::other("not a table name"));
    }
    let sock = socket()?;
    let seq = 1u32;
    let mut batch = Vec::new();
    message(&mut batch, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    let mut attr = Vec::new();
    attribute(&mut attr, NFTA_TABLE_NAME, name.as_bytes());
    let del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE;
    message(&mut batch, del, NLM_F_REQUEST | NLM_F_ACK, seq + 1, NFPROTO_INET, 0, &attr);
    message(&mut batch, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, 0, NFNL_SUBSYS_NFTABLES, &[]);
    send(&sock, &batch)?;
    // The ACK of the delete (an nlmsgerr: error 0, or -errno).
    read_replies(&sock, |r| match r.errno {
        Some(0) if r.seq == seq + 1 => Some(Ok(true)),
        Some(0) | None => None,
        Some(libc::ENOENT) => Some(Ok(false)),
        Some(e) => Some(Err(io::Error::from_raw_os_error(e))),
    })
}

/// Appends one netlink message: nlmsghdr, nfgenmsg, then `payload`.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, payload: &[u8]) {
    let len = 16 + 4 + payload.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Appends one attribute holding a NUL-terminated string, padded to 4 bytes.
fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len() + 1;
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_4_2_cuts_the_run_id_to_fit_its_buffer() {
        let id = "6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8";
        assert_eq!(lock_table_names(id), [format!("CRIU-{id}"), "CRIU-6f1c2a3b-4d5e-6f70-81".to_string()]);
        assert_eq!(lock_table_names("short"), ["CRIU-short"]);
    }

    #[test]
    fn tables_are_counted_and_a_new_one_with_them() {
        let Ok(before) = count_tables() else {
            eprintln!("no netfilter netlink here: not exercised");
            return;
        };
        let name = format!("crik-unit-{}", std::process::id());
        let made = std::process::Command::new("nft").args(["add", "table", "inet", &name]).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("cannot add a table (no nft, or no CAP_NET_ADMIN): not exercised");
            return;
        }
        let during = count_tables().unwrap();
        let criu_like = format!("CRIU-crik-unit-{}", std::process::id());
        assert!(std::process::Command::new("nft")
            .args(["add", "table", "inet", &criu_like])
            .status()
            .unwrap()
            .success());
        assert!(criu_tables().unwrap().contains(&criu_like), "{:?}", criu_tables());
        assert!(!criu_tables().unwrap().contains(&name), "only CRIU's");
        assert!(delete_inet_table(&criu_like).unwrap());
        assert!(delete_inet_table(&name).unwrap(), "it was there");
        assert!(!delete_inet_table(&name).unwrap(), "and is gone");
        assert!(during > before, "{before} -> {during}");
    }

    #[test]
    fn attributes_are_read_within_their_bounds() {
        let mut attrs = Vec::new();
        attribute(&mut attrs, 7, b"other");
        attribute(&mut attrs, NFTA_TABLE_NAME, b"CRIU-x");
        assert_eq!(string_attribute(&attrs, NFTA_TABLE_NAME).as_deref(), Some("CRIU-x"));
        assert_eq!(string_attribute(&attrs, 9), None);
        // Lengths that lie: nothing read past the end, no panic.
        for cut in 0..attrs.len() {
            let _ = string_attribute(&attrs[..cut], NFTA_TABLE_NAME);
        }
        assert_eq!(string_attribute(&[200, 0, 1, 0, b'x'], NFTA_TABLE_NAME), None);
    }

    #[test]
    fn a_table_that_is_not_there_is_no_error() {
        // Needs CAP_NET_ADMIN (crik's tests run as root); the name is one no one uses.
        match delete_inet_table("CRIU-crik-unit-test-no-such-table") {
            Ok(existed) => assert!(!existed),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => eprintln!("no CAP_NET_ADMIN: not exercised"),
            // qemu-user (the arm64 unit tests) does not translate nf_tables netlink.
            Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => {
                eprintln!("no nf_tables netlink here: not exercised")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
