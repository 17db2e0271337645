//! Facts about the machine crik runs on, recorded in a checkpoint and compared at restore.

/// The container's non-loopback IP addresses.
pub fn addresses() -> Vec<String> {
    let mut v: Vec<String> = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| a.address)
            .filter_map(|s| {
                if let Some(v4) = s.as_sockaddr_in() {
                    let ip = v4.ip();
                    (!ip.is_loopback()).then(|| ip.to_string())
                } else if let Some(v6) = s.as_sockaddr_in6() {
                    let ip = v6.ip();
                    (!ip.is_loopback()).then(|| ip.to_string())
                } else {
                    None
                }
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

pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}
