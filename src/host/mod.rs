//! Facts about the machine crik runs on, recorded in a checkpoint and compared at restore.

pub mod caps;
pub mod cgroup;
pub mod mountinfo;
pub mod nft;
pub mod procfs;

/// The container's IP addresses that connections are made to: neither loopback nor link-local.
/// (A container's IPv6 link-local address follows its interface's MAC, new with every
/// container even when the runtime gives it the same IP: it must not decide `tcpRestore: auto`.)
pub fn addresses() -> Vec<String> {
    let mut v: Vec<String> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address)
            .filter_map(|s| {
                let ip: std::net::IpAddr =
                    if let Some(v4) = s.as_sockaddr_in() { v4.ip().into() } else { s.as_sockaddr_in6()?.ip().into() };
                is_routable(&ip).then(|| ip.to_string())
            })
            .collect(),
        Err(e) => {
            log::warn!("cannot list network addresses: {e}");
            Vec::new()
        }
    };
    v.sort();
    v.dedup();
    v
}

fn is_routable(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        // fe80::/10
        std::net::IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Bytes free for an unprivileged writer on the filesystem of `dir`.
pub fn free_space(dir: &std::path::Path) -> nix::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_addresses_do_not_count() {
        for (ip, routable) in [
            ("10.88.0.77", true),
            ("127.0.0.1", false),
            ("169.254.3.4", false),
            ("fd00::5", true),
            ("::1", false),
            ("fe80::1c2b:3dff:fe4e:5f60", false),
            ("febf::1", false),
            ("fec0::1", true),
        ] {
            assert_eq!(is_routable(&ip.parse().unwrap()), routable, "{ip}");
        }
    }
}
