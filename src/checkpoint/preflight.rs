//! What CRIU cannot dump, found before the dump (the app is not even frozen), with the reason
//! named: CRIU itself would fail half-way with "Can't lookup mount" or "Can't dump half of stream
//! unix connection", or produce a checkpoint that lacks a process.

use nix::unistd::Pid;

use crate::config::{Config, OnEscapedProcesses};
use crate::init::app::ProcessTable;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Something CRIU cannot checkpoint, found before the dump: the app keeps running untouched.
    #[error("the app holds {what} (pid {pid}, fd {fd}), which CRIU cannot checkpoint")]
    Unsupported { what: String, pid: i32, fd: i32 },
    #[error(
        "process {pid} ({name}) of the app runs as uid {uid}: CRIU can dump the processes of another \
         user only with CAP_SYS_PTRACE and CAP_SYS_RESOURCE, and crik lacks {lacking}"
    )]
    OtherUser { pid: i32, name: String, uid: u32, lacking: String },
    #[error(
        "process {pid} of the app has System V shared memory attached ({key}), which lives in the \
         container's IPC namespace: CRIU saves it only with an IPC namespace of the app's own \
         (set isolateIpc: true)"
    )]
    SysvIpc { pid: i32, key: String },
    /// Processes the app started that left its tree: the checkpoint would lack them.
    #[error(
        "processes of the app left its tree (daemonized, re-parented to crik): {}; CRIU dumps only \
         the app's tree, so the restored app would lack them: keep them from daemonizing, or set \
         onEscapedProcesses: kill if the app does without them",
        escaped.iter().map(|(p, c)| format!("{p} ({c})")).collect::<Vec<_>>().join(", ")
    )]
    Escaped { escaped: Vec<(i32, String)> },
    /// A checkpoint CRIU would write but could not restore ("Can't find a session leader").
    #[error(
        "process {pid} ({name}) was adopted by {parent} ({parent_name}), a subreaper inside the app, \
         after the leader of its session ({session}) exited: CRIU can restore such a process only \
         as a child of the tree's root{hint}"
    )]
    LostSession { pid: i32, name: String, parent: i32, parent_name: String, session: i32, hint: &'static str },
}

/// Fails when a process of the app's tree holds what CRIU 4.2 cannot dump, or the tree lacks a
/// process of the app, naming it. With `onEscapedProcesses: kill`, escaped processes are killed.
/// Returns the app tree's PIDs.
pub fn check(app: Pid, config: &Config) -> Result<Vec<i32>, PreflightError> {
    let table = ProcessTable::read();
    escaped(&table, app, config.on_escaped_processes)?;
    let pids = table.tree(app);
    sessions_restorable(&table, &pids, app, config.isolate_pids)?;
    other_users(&pids)?;
    if !config.isolate_ipc {
        system_v_shared_memory(&pids)?;
    }
    message_queues(&pids)?;
    Ok(pids)
}

/// Processes below crik but outside the app's tree: CRIU dumps one tree.
fn escaped(table: &ProcessTable, app: Pid, policy: OnEscapedProcesses) -> Result<(), PreflightError> {
    let escaped = table.escaped_from(app);
    if escaped.is_empty() {
        return Ok(());
    }
    if policy == OnEscapedProcesses::Fail {
        return Err(PreflightError::Escaped { escaped });
    }
    let names: Vec<String> = escaped.iter().map(|(p, c)| format!("{p} ({c})")).collect();
    log::warn!(event = "escaped_killed"; "killing processes that left the app's tree before the dump \
        (onEscapedProcesses: kill): {}", names.join(", "));
    let pids: Vec<i32> = escaped.iter().map(|(p, _)| *p).collect();
    crate::init::app::kill_and_wait(&pids, std::time::Duration::from_secs(2));
    Ok(())
}

/// CRIU restores a process whose session leader has exited only if it hangs off the tree's
/// root (it re-creates the leader there as a helper that exits at once) or below a process of
/// its session. An orphan adopted by a subreaper deeper in the tree (`tini -s` under crik's
/// reaper) is neither: CRIU would dump it and then fail every restore of that checkpoint.
fn sessions_restorable(
    table: &ProcessTable,
    pids: &[i32],
    root: Pid,
    isolate_pids: bool,
) -> Result<(), PreflightError> {
    use crate::host::procfs::Stat;
    let stats: std::collections::HashMap<i32, Stat> =
        pids.iter().filter_map(|&p| Some((p, table.stat(p).filter(|s| !s.exited())?))).collect();
    let lost = |&(&pid, st): &(&i32, &Stat)| {
        if pid == root.as_raw() || st.session == pid || st.ppid == root.as_raw() {
            return false;
        }
        // Up through the tree: a process of the same session, or its leader, keeps it restorable.
        let mut up = st.ppid;
        while let Some(s) = stats.get(&up) {
            if up == st.session || s.session == st.session {
                return false;
            }
            if up == root.as_raw() {
                break;
            }
            up = s.ppid;
        }
        true
    };
    let Some((&pid, st)) = stats.iter().find(|e| lost(e)) else { return Ok(()) };
    let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim().to_string();
    Err(PreflightError::LostSession {
        pid,
        name: comm(pid),
        parent: st.ppid,
        parent_name: comm(st.ppid),
        session: st.session,
        hint: if isolate_pids {
            "; with isolatePids crik's reaper adopts orphans itself: run the subreaper without registering \
             as one (tini without -s)"
        } else {
            "; set isolatePids: true and run the subreaper without registering as one (tini without -s)"
        },
    })
}

/// Processes of another user than crik, when crik lacks what CRIU needs for them.
fn other_users(pids: &[i32]) -> Result<(), PreflightError> {
    let lacking: Vec<&str> = crate::host::caps::FOR_OTHER_USERS
        .iter()
        .filter(|(bit, _)| !crate::host::caps::has(*bit))
        .map(|(_, n)| *n)
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid never fails.
    let me = unsafe { libc::geteuid() };
    for &pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| crate::host::procfs::field(&status, name);
        let uid = field("Uid:").and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|u| *u != me) {
            let name = field("Name:").unwrap_or("").to_string();
            return Err(PreflightError::OtherUser { pid, name, uid, lacking: lacking.join(" and ") });
        }
    }
    Ok(())
}

/// System V shared memory lives in the IPC namespace: CRIU saves it only with a namespace of
/// the app's own (`isolateIpc`).
fn system_v_shared_memory(pids: &[i32]) -> Result<(), PreflightError> {
    for &pid in pids {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        if let Some(line) = maps.lines().find(|l| l.contains("/SYSV")) {
            let key = line.split_whitespace().last().unwrap_or("").to_string();
            return Err(PreflightError::SysvIpc { pid, key });
        }
    }
    Ok(())
}

/// POSIX message queues: CRIU 4.2 cannot dump them.
fn message_queues(pids: &[i32]) -> Result<(), PreflightError> {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Some(n) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(st) = nix::sys::statfs::statfs(&fd.path()) else { continue };
            // The field's width differs between architectures: the cast is not a no-op on all.
            #[allow(clippy::unnecessary_cast)]
            let fs_type = st.filesystem_type().0 as i64;
            if fs_type == MQUEUE_MAGIC {
                let name = std::fs::read_link(fd.path()).map(|p| p.display().to_string()).unwrap_or_default();
                return Err(PreflightError::Unsupported { what: format!("POSIX message queue {name}"), pid, fd: n });
            }
        }
    }
    Ok(())
}

/// CRIU's own memory for a dump, charged to the container's limit (it runs inside): about
/// 16 MiB for its own needs (9 MiB measured for a shell loop), and with the network lock the
/// network namespace's whole nftables ruleset, which it loads (measured: 113 MiB with 200
/// lock-shaped tables, about 0.52 MiB each).
fn criu_memory_estimate(lock_network: bool) -> u64 {
    const OWN: u64 = 16 << 20;
    const LOCK: u64 = 8 << 20;
    const PER_TABLE: u64 = 532 << 10;
    if !lock_network {
        return OWN;
    }
    let tables = crate::host::nft::count_tables().unwrap_or(0) as u64;
    OWN + LOCK + tables * PER_TABLE
}

/// Says so before a dump that the container's memory limit probably cannot fit (CRIU would be
/// OOM-killed, the checkpoint lost), naming what to change.
pub fn warn_if_memory_tight(lock_network: bool) {
    let Some(headroom) = crate::host::cgroup::memory_headroom() else { return };
    let needs = criu_memory_estimate(lock_network);
    if headroom < needs {
        log::warn!(event = "memory_tight", headroom_bytes = headroom, criu_needs_bytes = needs;
            "the container's memory limit leaves {} and CRIU needs about {} for this dump{}: it may be killed by \
             the OOM killer, and the checkpoint lost; raise the limit{}",
            crate::sizes::human(headroom), crate::sizes::human(needs),
            if lock_network { " (the network lock loads the namespace's whole nftables ruleset)" } else { "" },
            if lock_network { ", or keep the app off a network namespace with a large ruleset (hostNetwork)" } else { "" });
    }
}

/// Whether CRIU must lock the network while it dumps the tree of `pids`. CRIU's lock (an
/// nftables table in the app's network namespace, kept after a final dump until a restore there
/// removes it) stops the kernel from resetting the app's TCP connections before they come back.
/// It locks connections only: listening sockets need none. Without one, skipping the lock also
/// keeps CRIU from loading the namespace's whole nftables ruleset, which its memory grows with
/// (measured: 113 MiB for a host namespace with 200 tables, 9 MiB without the lock), charged to
/// the container. A process in another network namespace than crik's, or a socket table that
/// cannot be read, keeps the lock. A connection opened after this look is caught after the dump
/// ([`crate::criu::images::tcp_connections`]).
pub fn network_lock_needed(pids: &[i32]) -> bool {
    let netns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let own = netns("self");
    let mut sockets = std::collections::BTreeSet::new();
    for &pid in pids {
        if own.is_none() || netns(&pid.to_string()) != own {
            return true;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let inode = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
            sockets.extend(inode);
        }
    }
    if sockets.is_empty() {
        return false;
    }
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"].iter().any(|table| match std::fs::read_to_string(table) {
        Ok(text) => tcp_connection_inodes(&text).any(|inode| sockets.contains(&inode)),
        Err(_) => true,
    })
}

/// The inodes of the TCP sockets of a /proc/net/tcp{,6} table that are not listening (state
/// 0A) or closed (07): connections, established or on their way.
fn tcp_connection_inodes(table: &str) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (state, inode) = (f.get(3)?, f.get(9)?.parse::<u64>().ok()?);
        (*state != "0A" && *state != "07").then_some(inode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_need_the_network_lock() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1
   2: 0100007F:D2F2 0100007F:1F90 07 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1
   3: 0100007F:D2F4 0100007F:1F90 02 00000000:00000000 00:00000000 00000000     0        0 444 1 0 20 4 30 10 -1
";
        assert_eq!(tcp_connection_inodes(table).collect::<Vec<_>>(), vec![222, 444]);
    }

    #[test]
    fn a_tree_without_sockets_needs_no_lock_and_a_connected_one_does() {
        let me = std::process::id() as i32;
        assert!(!network_lock_needed(&[]));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!network_lock_needed(&[me]), "a listening socket is not locked");
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(network_lock_needed(&[me]));
        drop(client);
    }
}
