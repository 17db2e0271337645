//! The container's own cgroups: where they are (open files under them move with the pod), what
//! its memory limit leaves (memory staging), and whether the kernel's OOM killer struck there
//! (a CRIU that died mid-dump is then named as such).

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::mountinfo::Mount;

/// One of the container's cgroup directories: the hierarchy it belongs to (`0::` for cgroup v2,
/// `N:controllers` for v1) and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupDir {
    pub hierarchy: String,
    pub dir: PathBuf,
}

impl CgroupDir {
    /// The memory controller's files in this dir: (limit, usage, inactive-file key in
    /// memory.stat, file holding the `oom_kill` count), for cgroup v2 or a v1 memory hierarchy.
    fn memory_files(&self) -> Option<MemoryFiles> {
        if self.hierarchy == "0:" {
            Some(MemoryFiles {
                limit: "memory.max",
                usage: "memory.current",
                inactive: "inactive_file",
                events: "memory.events",
            })
        } else if self.hierarchy.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "memory")) {
            Some(MemoryFiles {
                limit: "memory.limit_in_bytes",
                usage: "memory.usage_in_bytes",
                inactive: "total_inactive_file",
                events: "memory.oom_control",
            })
        } else {
            None
        }
    }
}

struct MemoryFiles {
    limit: &'static str,
    usage: &'static str,
    inactive: &'static str,
    events: &'static str,
}

/// The calling process's cgroup directories, resolved through the mounted cgroup filesystems.
pub fn own_cgroup_dirs() -> Vec<CgroupDir> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_dirs(&cgroups, &crate::host::mountinfo::read().unwrap_or_default())
}

fn cgroup_dirs(cgroups: &str, mounts: &[Mount]) -> Vec<CgroupDir> {
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let mount = mounts.iter().find(|m| {
            if controllers.is_empty() {
                m.fstype == "cgroup2"
            } else {
                m.fstype == "cgroup" && controllers.split(',').all(|c| m.super_options.split(',').any(|o| o == c))
            }
        });
        let Some(mount) = mount else { continue };
        let Ok(rel) = Path::new(path).strip_prefix(&mount.root) else { continue };
        if rel.as_os_str().is_empty() {
            continue; // the hierarchy's root: not the container's own directory
        }
        out.push(CgroupDir { hierarchy: format!("{id}:{controllers}"), dir: mount.point.join(rel) });
    }
    out
}

/// What the memory limit of this process's cgroup leaves: the limit less the working set
/// (usage less inactive file cache, which the kernel reclaims first: the kubelet's measure).
/// `None` without a limit.
pub fn memory_headroom() -> Option<u64> {
    let read = |p: PathBuf| fs::read_to_string(p).ok();
    own_cgroup_dirs().into_iter().find_map(|cg| {
        let f = cg.memory_files()?;
        let stat = read(cg.dir.join("memory.stat")).unwrap_or_default();
        headroom(&read(cg.dir.join(f.limit))?, &read(cg.dir.join(f.usage))?, &stat, f.inactive)
    })
}

/// The memory limit of this process's cgroup; `None` without one.
pub fn memory_limit() -> Option<u64> {
    own_cgroup_dirs().into_iter().find_map(|cg| limit(&fs::read_to_string(cg.dir.join(cg.memory_files()?.limit)).ok()?))
}

/// A limit file's value; `None` for no limit: v2's "max", v1's page-rounded i64::MAX.
fn limit(text: &str) -> Option<u64> {
    let max: u64 = text.trim().parse().ok()?;
    (max < 1 << 62).then_some(max)
}

fn headroom(max: &str, current: &str, stat: &str, inactive_key: &str) -> Option<u64> {
    let max = limit(max)?;
    let current: u64 = current.trim().parse().ok()?;
    Some(max.saturating_sub(current.saturating_sub(field(stat, inactive_key).unwrap_or(0))))
}

/// How many processes the OOM killer has killed in this process's memory cgroup so far
/// (`oom_kill` in memory.events, or in v1's memory.oom_control); `None` when not known.
pub fn oom_kills() -> Option<u64> {
    own_cgroup_dirs().into_iter().find_map(|cg| {
        let f = cg.memory_files()?;
        field(&fs::read_to_string(cg.dir.join(f.events)).ok()?, "oom_kill")
    })
}

/// The number after `key ` on its own line of a flat-keyed cgroup file.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 25 0:28 /kubepods /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn cgroup_dirs_follow_mounts_and_roots() {
        let mounts = crate::host::mountinfo::parse(MOUNTINFO);
        let dirs =
            cgroup_dirs("0::/kubepods.slice/pod-a/ctr\n4:memory:/kube/ctr\n5:pids:/kubepods/x\n6:cpu:/y\n", &mounts);
        assert_eq!(
            dirs,
            vec![
                CgroupDir { hierarchy: "0:".into(), dir: "/sys/fs/cgroup/kubepods.slice/pod-a/ctr".into() },
                CgroupDir { hierarchy: "4:memory".into(), dir: "/sys/fs/cgroup/memory/kube/ctr".into() },
                CgroupDir { hierarchy: "5:pids".into(), dir: "/sys/fs/cgroup/pids/x".into() },
            ]
        );
        assert!(cgroup_dirs("0::/\n", &mounts).is_empty(), "the root is nobody's own directory");
    }

    #[test]
    fn headroom_is_the_limit_less_the_usage() {
        assert_eq!(headroom("max\n", "123\n", "", "inactive_file"), None);
        assert_eq!(headroom("9223372036854771712\n", "123\n", "", "total_inactive_file"), None);
        assert_eq!(headroom("1000\n", "400\n", "", "inactive_file"), Some(600));
        assert_eq!(headroom("1000", "1400", "", "inactive_file"), Some(0));
        // Inactive file cache is reclaimed before a limit bites: not counted as used.
        let stat = "active_file 5\ninactive_file 300\n";
        assert_eq!(headroom("1000", "400", stat, "inactive_file"), Some(900));
        let v1 = "inactive_file 1\ntotal_inactive_file 100\n";
        assert_eq!(headroom("1000", "400", v1, "total_inactive_file"), Some(700));
    }

    #[test]
    fn oom_kills_are_read_from_either_version() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(field(v2, "oom_kill"), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(field(v1, "oom_kill"), Some(7));
        assert_eq!(field("oom_kill_disable 0\n", "oom_kill"), None);
    }
}
