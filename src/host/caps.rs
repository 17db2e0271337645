//! The privileges CRIU needs, checked at start: a container that lacks one fails here, with the
//! capability named, instead of at SIGTERM when the node is already going away.
//!
//! The set was found by running crik in podman (runc and crun) with `--cap-drop ALL` and adding
//! back one capability at a time until checkpoint and restore both worked; see the README's
//! security model. An app that runs as another user also needs SETUID and SETGID (CRIU restores
//! its credentials); those are in every runtime's default set.

/// (capability number, name, what CRIU needs it for).
pub const REQUIRED: [(u32, &str, &str); 5] = [
    (21, "CAP_SYS_ADMIN", "dumping and restoring processes (memory maps, namespaces, PIDs)"),
    (12, "CAP_NET_ADMIN", "the network lock and TCP repair"),
    (25, "CAP_SYS_TIME", "restoring the app's clocks (time namespace offsets)"),
    (8, "CAP_SETPCAP", "giving the restored app back its own capabilities"),
    (18, "CAP_SYS_CHROOT", "restoring the app's root directory"),
];

/// Needed as well when the app has processes of another user: CRIU seizes them (ptrace across
/// users needs CAP_SYS_PTRACE) and reads their resource limits (prlimit across users needs
/// CAP_SYS_RESOURCE).
pub const FOR_OTHER_USERS: [(u32, &str); 2] = [(19, "CAP_SYS_PTRACE"), (24, "CAP_SYS_RESOURCE")];

/// Whether crik has capability `bit` in its effective set.
pub fn has(bit: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    effective(&status) & (1 << bit) != 0
}

fn effective(status: &str) -> u64 {
    super::procfs::field(status, "CapEff:").and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0)
}

/// What is missing for checkpointing, from `/proc/self/status`; empty when all is there.
pub fn missing() -> Vec<String> {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => missing_in(&status),
        Err(e) => vec![format!("cannot read /proc/self/status: {e}")],
    }
}

fn missing_in(status: &str) -> Vec<String> {
    let field = |name: &str| super::procfs::field(status, name);
    let eff = effective(status);
    let mut out: Vec<String> = REQUIRED
        .iter()
        .filter(|(bit, _, _)| eff & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    // Mode 2: a seccomp filter. CRIU must suspend the app's filters while it dumps, which the
    // kernel refuses to a tracer that is itself filtered.
    if field("Seccomp:") == Some("2") {
        out.push(
            "an unconfined seccomp profile (crik runs under a seccomp filter; CRIU cannot dump through it)".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability_and_a_seccomp_filter() {
        let all = "Name:\tcrik\nCapEff:\t000001ffffffffff\nSeccomp:\t0\n";
        assert!(missing_in(all).is_empty());
        // podman's default set plus SYS_ADMIN and NET_ADMIN, without SYS_TIME.
        let no_time = format!("CapEff:\t{:016x}\nSeccomp:\t2\n", 0x1ffffffffffu64 & !(1 << 25));
        let m = missing_in(&no_time);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("CAP_SYS_TIME") && m[1].contains("seccomp"), "{m:?}");
        assert_eq!(missing_in("CapEff:\t0000000000000000\n").len(), REQUIRED.len());
    }
}
