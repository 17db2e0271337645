//! Reading /proc: the "Key: value" fields of `status`, `fdinfo` and `smaps_rollup`, and a
//! process's `stat` line (whose command name may hold spaces and parentheses).

use std::fs::OpenOptions;

/// The value of a "Key:" line of a /proc file such as `status`, `fdinfo` or `smaps_rollup`
/// (`key` with its colon, e.g. "Uid:"), trimmed.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// What crik reads of a process's `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// R, S, D, Z, X, ...
    pub state: char,
    pub ppid: i32,
    /// The session ID: the PID of the session's leader (who may have exited).
    pub session: i32,
}

impl Stat {
    /// `None` when the process is gone (or the line is not what the kernel writes).
    pub fn of(pid: i32) -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// The fields after the command name: parsed after the last ')'.
    fn parse(line: &str) -> Option<Stat> {
        let mut rest = line.rsplit_once(')')?.1.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        let _pgrp = rest.next()?;
        let session = rest.next()?.parse().ok()?;
        Some(Stat { state, ppid, session })
    }

    /// Exited: a zombie (its files already closed) or dead.
    pub fn exited(self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// What crik reads of `/proc/<pid>/fdinfo/<fd>`: the open(2) flags and the mount the file is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    pub flags: i32,
    pub mnt_id: u64,
}

impl FdInfo {
    /// `None` when the fd is gone (or the file is not what the kernel writes).
    pub fn read(path: &std::path::Path) -> Option<FdInfo> {
        FdInfo::parse(&std::fs::read_to_string(path).ok()?)
    }

    fn parse(text: &str) -> Option<FdInfo> {
        let flags = i32::from_str_radix(field(text, "flags:")?, 8).ok()?;
        let mnt_id = field(text, "mnt_id:")?.parse().ok()?;
        Some(FdInfo { flags, mnt_id })
    }
}

/// Options that reopen a file with the access mode (and append flag) of `flags`, open(2)
/// flags as /proc's `fdinfo` and CRIU's images record them.
pub fn reopen_options(flags: i32) -> OpenOptions {
    let mut opts = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => opts.write(true),
        libc::O_RDWR => opts.read(true).write(true),
        _ => opts.read(true),
    };
    if flags & libc::O_APPEND != 0 {
        opts.append(true);
    }
    opts
}

/// Whether process `pid` is in another mount namespace than crik (the reaper's, `isolatePids`).
pub fn own_mount_namespace(pid: i32) -> bool {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    match (ns(&pid.to_string()), ns("self")) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_read_after_the_command_name() {
        let s = Stat::parse("42 (a (b) c) Z 7 42 42 0 -1 4194560 ...").unwrap();
        assert_eq!(s, Stat { state: 'Z', ppid: 7, session: 42 });
        assert!(s.exited());
        assert_eq!(Stat::parse("42 (x"), None);
        let me = Stat::of(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id() as i32);
    }

    #[test]
    fn fdinfo_gives_flags_in_octal_and_the_mount() {
        let text = "pos:\t0\nflags:\t02100002\nmnt_id:\t47\nino:\t12\n";
        assert_eq!(FdInfo::parse(text), Some(FdInfo { flags: 0o2100002, mnt_id: 47 }));
        assert_eq!(FdInfo::parse("pos:\t0\n"), None);
    }

    #[test]
    fn fields_are_found_by_key() {
        let status = "Name:\tsh\nUid:\t0\t0\t0\t0\nSeccomp:\t2\n";
        assert_eq!(field(status, "Uid:"), Some("0\t0\t0\t0"));
        assert_eq!(field(status, "Seccomp:"), Some("2"));
        assert_eq!(field(status, "Gid:"), None);
    }
}
