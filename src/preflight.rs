//! What CRIU cannot dump, found before the dump (the app is not even frozen), with the reason
//! named: CRIU itself would fail half-way with "Can't lookup mount" or "Can't dump half of stream
//! unix connection", or produce a checkpoint that lacks a process.

use nix::unistd::Pid;

use crate::app::ProcessTable;
use crate::config::{Config, OnEscapedProcesses};

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
}

/// Fails when a process of the app's tree holds what CRIU 4.2 cannot dump, or the tree lacks a
/// process of the app, naming it. With `onEscapedProcesses: kill`, escaped processes are killed.
/// Returns the app tree's PIDs.
pub fn check(app: Pid, config: &Config) -> Result<Vec<i32>, PreflightError> {
    let table = ProcessTable::read();
    escaped(&table, app, config.on_escaped_processes)?;
    let pids = table.tree(app);
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
    crate::app::kill_and_wait(&pids, std::time::Duration::from_secs(2));
    Ok(())
}

/// Processes of another user than crik, when crik lacks what CRIU needs for them.
fn other_users(pids: &[i32]) -> Result<(), PreflightError> {
    let lacking: Vec<&str> =
        crate::caps::FOR_OTHER_USERS.iter().filter(|(bit, _)| !crate::caps::has(*bit)).map(|(_, n)| *n).collect();
    if lacking.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid never fails.
    let me = unsafe { libc::geteuid() };
    for &pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
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
