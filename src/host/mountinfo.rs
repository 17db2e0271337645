//! `/proc/self/mountinfo`, parsed once, the same way for everyone who needs it (stdio on
//! foreign mounts, the root overlay, cgroup mounts).
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! id parent dev root point options  [optional...] - fstype source super-options
//! ```
//! The kernel escapes space, tab, newline and backslash in paths as `\040`, `\011`, `\012` and
//! `\134`; every path field is unescaped here.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    pub parent: u64,
    /// The directory of the mounted filesystem that is mounted here (`/` for a whole fs).
    pub root: PathBuf,
    pub point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// Options of the filesystem itself (`upperdir=...` for an overlay).
    pub super_options: String,
}

/// The calling process's mounts, in mountinfo order (later mounts on a point hide earlier ones).
pub fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount `path` is on: the deepest mount point above it (the last such in mount order, the
/// one in effect).
pub fn containing<'a>(mounts: &'a [Mount], path: &std::path::Path) -> Option<&'a Mount> {
    mounts.iter().filter(|m| path.starts_with(&m.point)).max_by_key(|m| m.point.components().count())
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let _dev = f.next()?;
    let root = unescape(f.next()?).into();
    let point = unescape(f.next()?).into();
    let mut p = post.split(' ');
    let fstype = unescape(p.next()?);
    let source = unescape(p.next()?);
    let super_options = unescape(p.next().unwrap_or(""));
    Some(Mount { id, parent, root, point, fstype, source, super_options })
}

/// Undoes the kernel's octal escapes (`\040` → space, `\134` → backslash, ...).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Paths are bytes; mountinfo text came in as UTF-8, and escapes only produce ASCII.
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `key=value` in a comma-separated option list (`upperdir` of an overlay).
pub fn option<'a>(options: &'a str, key: &str) -> Option<&'a str> {
    options.split(',').find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_split_and_every_escape_undone() {
        let text = "36 35 98:0 /mnt\\0401 /a\\040b\\011c\\012d\\134e rw,noatime master:1 shared:2 - ext3 /dev/my\\040root rw,errors=continue\n\
                    garbage line\n\
                    40 1 0:40 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/up,workdir=/w\n";
        let m = parse(text);
        assert_eq!(m.len(), 2, "the malformed line is skipped");
        assert_eq!(m[0].id, 36);
        assert_eq!(m[0].parent, 35);
        assert_eq!(m[0].root, PathBuf::from("/mnt 1"));
        assert_eq!(m[0].point, PathBuf::from("/a b\tc\nd\\e"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].source, "/dev/my root");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert_eq!(option(&m[1].super_options, "upperdir"), Some("/up"));
        assert_eq!(option(&m[1].super_options, "upper"), None);
    }

    #[test]
    fn a_path_is_on_the_deepest_mount_above_it_the_last_one_mounted_there() {
        let mounts = parse(
            "1 0 0:1 / / rw - ext4 /dev/vda rw\n2 1 0:2 / /tmp rw - tmpfs tmpfs rw\n\
             3 1 0:3 / /tmp rw - overlay overlay rw\n4 3 0:4 / /tmp/x rw - tmpfs tmpfs rw\n",
        );
        let on = |p: &str| containing(&mounts, std::path::Path::new(p)).map(|m| m.id);
        assert_eq!(
            (on("/etc/passwd"), on("/tmp/a"), on("/tmp/x/y"), on("/tmpx")),
            (Some(1), Some(3), Some(4), Some(1))
        );
    }

    #[test]
    fn unescape_leaves_what_is_not_an_escape() {
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("\\04"), "\\04");
        assert_eq!(unescape("a\\9999"), "a\\9999");
        assert_eq!(unescape("\\777x"), "\\777x", "not a byte");
        assert_eq!(unescape("\\134040"), "\\040", "an escaped backslash is not unescaped twice");
    }

    #[test]
    fn reads_this_process_mounts() {
        let m = read().unwrap();
        assert!(m.iter().any(|m| m.point == std::path::Path::new("/")));
    }
}
