//! Restore: bring a published checkpoint back as a child of crik.
//!
//! manifest → additionalPaths back in place → crik's stdio lent to CRIU under the keys the app's
//! stdio had → CRIU restore (restore-sibling, bounded) → the restored root's PID.

pub mod remap;

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::Pid;

use crate::archive::files::{self, FilesError};
use crate::config::{Config, TcpRestore};
use crate::criu::images::ImageError;
use crate::criu::{self, CriuError, InheritFd};
use crate::host;
use crate::init::app;
use crate::init::supervisor::Signals;
use crate::store::integrity::{self, IntegrityError, Scope};
use crate::store::manifest::Manifest;
use crate::store::{Checkpoint, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The manifest could not be read, or (with a key) authenticated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Authentic, but older than the newest this app has written or restored (a rollback), or
    /// than `encryption.maxAge`.
    #[error("checkpoint {id} is refused: {source}")]
    Stale { id: String, source: crate::store::generation::Stale },
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    #[error("cannot read the checkpoint's images: {0}")]
    Images(#[from] ImageError),
    #[error(transparent)]
    Rootfs(#[from] crate::archive::rootfs::RootfsError),
    #[error("cannot open images dir {path}: {source}")]
    ImagesDir { path: PathBuf, source: std::io::Error },
    /// The checkpoint is sound but needs a CPU this node does not have: it is kept for a node
    /// that has one.
    #[error("the checkpoint needs CPU features this node lacks: {missing}{}", criu::format_log(log_lines))]
    IncompatibleCpu { missing: String, log_lines: Vec<String> },
    #[error("cannot lend the container's stdio to CRIU: {0}")]
    Stdio(std::io::Error),
    /// A file the app held open on a mount outside its namespace (crik lent it at an earlier
    /// restore) that crik cannot lend again: not a file crik lends, or not there.
    #[error("cannot lend {path} to the restored app{}", source.as_ref().map_or(
        ": the checkpoint names it as a file crik lent, but crik lends only stdio, runtime files and \
         files on external mounts or under the container's cgroup".to_string(),
        |e| format!(": {e}")))]
    ForeignFile { path: String, source: Option<std::io::Error> },
    /// The thread checking the page images' checksums beside CRIU panicked: a bug in crik.
    #[error("the page checksum thread panicked")]
    ChecksumThread,
    #[error("{source}{}\nfull CRIU log: {log}", criu::format_log(log_lines))]
    Criu { source: CriuError, log_lines: Vec<String>, log: PathBuf },
}

/// A restored app: its PID, what it was, and fds that must stay open while it runs
/// (the orphan pts master CRIU hands over when the app had a terminal).
pub struct Restored {
    /// The checkpoint's id.
    pub id: String,
    pub pid: Pid,
    pub manifest: Manifest,
    pub keep_open: Vec<OwnedFd>,
}

/// The checkpoint's archives, each put back only where this configuration says it belongs
/// (see [`crate::archive::confined`]): a manifest from the image dir or storage may name
/// archives and paths the configuration never asked for.
fn put_back_archives(config: &Config, ckpt: &Checkpoint, manifest: &Manifest) -> Result<(), RestoreError> {
    let own: Vec<&Path> = config.own_dirs().map(|(_, d)| d.as_path()).collect();
    if let Some(diff) = &manifest.rootfs {
        if config.capture_rootfs_diff {
            let scope = crate::archive::rootfs::scope(&own);
            crate::archive::rootfs::apply(diff, &ckpt.dir.join(crate::layout::ROOTFS_ARCHIVE), &scope)?;
        } else {
            log::warn!("the checkpoint holds a writable layer, but captureRootfsDiff is off: not put back");
        }
    }
    if !manifest.runtime_tmpfs.is_empty() {
        // Each named file, and only where it lies on a tmpfs mount here: the manifest's list
        // alone could name any path.
        let mounts = crate::host::mountinfo::read().unwrap_or_default();
        let on_tmpfs = |p: &Path| {
            p.is_absolute() && crate::host::mountinfo::containing(&mounts, p).is_some_and(|m| m.fstype == "tmpfs")
        };
        let (roots, others): (Vec<PathBuf>, Vec<PathBuf>) =
            manifest.runtime_tmpfs.iter().map(PathBuf::from).partition(|p| on_tmpfs(p));
        if !others.is_empty() {
            log::warn!(
                "the checkpoint names {others:?} as files on tmpfs mounts, which they are not here: not put back"
            );
        }
        let excluded = own.iter().map(|p| p.to_path_buf()).collect();
        let scope = crate::archive::confined::Scope { roots, excluded, keep_special_bits: false };
        files::extract(&ckpt.dir.join(crate::layout::TMPFS_ARCHIVE), Path::new("/"), &scope)?;
        log::info!("the app's files on tmpfs mounts put back: {}", manifest.runtime_tmpfs.join(", "));
    }
    if manifest.has_files_archive {
        if config.additional_paths.is_empty() {
            log::warn!("the checkpoint holds additionalPaths, but none are configured: not put back");
        } else {
            let roots = config.additional_paths.iter().map(|p| p.as_path().to_path_buf()).collect();
            let excluded = own.iter().map(|p| p.to_path_buf()).collect();
            let scope = crate::archive::confined::Scope { roots, excluded, keep_special_bits: true };
            files::extract(&ckpt.files_archive(), Path::new("/"), &scope)?;
            log::info!("additionalPaths put back from {}", ckpt.files_archive().display());
        }
    }
    Ok(())
}

pub fn restore(signals: &Signals, config: &Config, store: &Store, ckpt: &Checkpoint) -> Result<Restored, RestoreError> {
    let started = std::time::Instant::now();
    // With a key: the manifest's MAC, then its generation, before anything it names is read.
    let manifest = store.verified_manifest(ckpt)?;
    store.check_fresh(&manifest).map_err(|source| RestoreError::Stale { id: ckpt.id.clone(), source })?;
    // Everything but the page images' contents is checked now (a truncated image would make
    // CRIU spin). The pages' checksums are computed while CRIU restores, and CRIU is held at its
    // "post-restore" notification — memory restored, the app not yet resumed — until they pass:
    // on a mismatch CRIU aborts and the app never runs on damaged memory. A lazy restore reads
    // memory only after the app runs, so its page images are checked by size alone.
    integrity::verify(&ckpt.dir, &manifest, Scope::AllButPageContents)?;
    let mut pages_check = (!config.lazy_pages).then(|| {
        let (c, m) = (ckpt.clone(), manifest.clone());
        let t = std::time::Instant::now();
        std::thread::spawn(move || integrity::verify(&c.dir, &m, Scope::PageContents).map(|()| t.elapsed()))
    });
    // Before anything is changed in this container (files put back); alongside the page check.
    if let Err(e) = check_cpu(signals, ckpt, &manifest) {
        if let Some(check) = pages_check.take() {
            let _ = join_check(check);
        }
        return Err(e);
    }
    log::info!(
        "restoring checkpoint {} (taken {}, command {:?})",
        ckpt.dir.display(),
        manifest.created,
        manifest.command
    );
    put_back_archives(config, ckpt, &manifest)?;
    let mut inherit = stdio_inherit_fds(&manifest.stdio).map_err(RestoreError::Stdio)?;
    inherit.extend(foreign_inherit_fds(config, &manifest)?);
    let open_files = crate::criu::images::regular_files(&ckpt.images_dir())?;
    for f in crate::restore::remap::remapped_files(&open_files, &config.external_mounts, &manifest.cgroups) {
        if !inherit.iter().any(|i| i.key == f.key) {
            inherit.push(f);
        }
    }
    let established = match config.tcp_restore {
        TcpRestore::Established => true,
        TcpRestore::Close => false,
        TcpRestore::Auto => addresses_survived(&manifest.addresses, &host::addresses()),
    };
    log::info!(
        "established TCP connections will be {}",
        if established { "re-established" } else { "restored closed (the container's address changed)" }
    );
    let images = ckpt.images_dir();
    let dir = File::open(&images).map_err(|e| RestoreError::ImagesDir { path: images.clone(), source: e })?;
    let lazy_daemon = if config.lazy_pages {
        let pid = criu::start_lazy_pages(signals, &images, config.restore_timeout).map_err(|e| RestoreError::Criu {
            log_lines: criu::log_errors(&images.join(crate::layout::LAZY_PAGES_LOG), 8),
            source: e,
            log: images.join(crate::layout::LAZY_PAGES_LOG),
        })?;
        log::info!("lazy restore: CRIU's lazy-pages daemon (pid {pid}) serves the app's memory on demand");
        Some(pid)
    } else {
        None
    };
    let mut opts = criu::restore_opts(&dir, established, lazy_daemon.is_some(), &config.external_mounts);
    opts.set_notify_scripts(true);
    if crate::criu::images::has_mount_namespace(&images) {
        criu::own_mount_namespace(&mut opts, true);
    }
    let mut pages_verdict: Option<Result<Duration, RestoreError>> = None;
    let mut on_notify = |script: &str| {
        if script != "post-restore" {
            return true;
        }
        pages_verdict = pages_check.take().map(join_check);
        !matches!(pages_verdict, Some(Err(_)))
    };
    let req = criu::Request {
        inherit,
        on_notify: Some(&mut on_notify),
        ..criu::Request::new(criu::rpc::Criu_req_type::RESTORE, Some(opts), config.restore_timeout)
    };
    let log = images.join(crate::layout::RESTORE_LOG);
    let criu_started = std::time::Instant::now();
    let result = criu::call(signals, req);
    if let Some(check) = pages_check.take() {
        // CRIU ended without reaching post-restore: still tell damage apart from other failures.
        pages_verdict = Some(join_check(check));
        if result.is_ok() {
            log::warn!("CRIU sent no post-restore notification: the page checksums were checked after the app resumed");
        }
    }
    if let Some(Err(e)) = pages_verdict {
        app::kill_descendants();
        return Err(e);
    }
    match result {
        Ok(r) => {
            let pid = Pid::from_raw(r.resp.restore.pid());
            let (ms, criu_ms) = (started.elapsed().as_millis() as u64, criu_started.elapsed().as_millis() as u64);
            let verify_ms = pages_verdict.and_then(|v| v.ok()).map_or(0, |d| d.as_millis() as u64);
            log::info!(
                event = "restore_finished", id = ckpt.id.as_str(), pid = pid.as_raw(),
                duration_ms = ms, verify_ms, criu_ms;
                "restored app as pid {pid} in {ms} ms (CRIU {criu_ms} ms; page checksums {verify_ms} ms, alongside)"
            );
            Ok(Restored { id: ckpt.id.clone(), pid, manifest, keep_open: r.received_fds })
        }
        Err(e) => {
            // Whatever CRIU half-restored is a child of crik (restore-sibling): kill it all.
            app::kill_descendants();
            let log_lines = criu::log_errors(&log, 8);
            Err(RestoreError::Criu { source: e, log_lines, log })
        }
    }
}

/// Refuses a checkpoint whose CPU record this CPU cannot satisfy, as CRIU's `cpuinfo check`
/// judges it; when it refuses, crik names the missing features (CRIU's log does not).
fn check_cpu(signals: &Signals, ckpt: &Checkpoint, manifest: &Manifest) -> Result<(), RestoreError> {
    let Some(cpu) = &manifest.cpu else {
        log::debug!("the checkpoint has no CPU record (taken by an older crik): not checked");
        return Ok(());
    };
    let here = std::env::consts::ARCH;
    if cpu.arch != here {
        let missing = format!("it was taken on {}, this node is {here}", cpu.arch);
        return Err(RestoreError::IncompatibleCpu { missing, log_lines: Vec::new() });
    }
    let images = ckpt.images_dir();
    if !images.join(crate::layout::CPUINFO_IMAGE).exists() {
        return Ok(()); // not x86: the architecture is all CRIU records
    }
    if !cpu.fingerprint.is_empty() && cpu.fingerprint == crate::criu::cpu::fingerprint() {
        log::debug!("same CPU type and kernel as at the checkpoint: CRIU's CPU check is not needed");
        return Ok(());
    }
    let dir = File::open(&images).map_err(|e| RestoreError::ImagesDir { path: images.clone(), source: e })?;
    let started = std::time::Instant::now();
    let verdict = criu::cpuinfo(signals, criu::rpc::Criu_req_type::CPUINFO_CHECK, &dir);
    log::debug!("CPU check by CRIU in {} ms", started.elapsed().as_millis());
    if verdict.is_ok() {
        return Ok(());
    }
    let log_lines = criu::log_errors(&images.join(crate::layout::CPUINFO_LOG), 4);
    let missing = match cpu_here(signals, ckpt).and_then(|now| {
        let then = crate::criu::cpu::read_x86(&images).map_err(|e| e.to_string())?.ok_or("no x86 record")?;
        Ok(crate::criu::cpu::missing(&then, &now))
    }) {
        Ok(m) if !m.is_empty() => m.join(", "),
        Ok(_) => "CRIU refused the CPU (see its log)".to_string(),
        Err(e) => format!("CRIU refused the CPU, and this CPU could not be described: {e}"),
    };
    Err(RestoreError::IncompatibleCpu { missing, log_lines })
}

/// This node's CPU as CRIU describes it (`cpuinfo dump` into a scratch dir of the checkpoint).
fn cpu_here(signals: &Signals, ckpt: &Checkpoint) -> Result<criu_proto::cpuinfo::Cpuinfo_x86_entry, String> {
    let scratch = ckpt.dir.join("cpuinfo-here");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let result = File::open(&scratch)
        .map_err(|e| e.to_string())
        .and_then(|d| criu::cpuinfo(signals, criu::rpc::Criu_req_type::CPUINFO_DUMP, &d).map_err(|e| e.to_string()))
        .and_then(|()| crate::criu::cpu::read_x86(&scratch).map_err(|e| e.to_string()))
        .and_then(|x| x.ok_or_else(|| "CRIU wrote no x86 record".to_string()));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn join_check(h: std::thread::JoinHandle<Result<Duration, IntegrityError>>) -> Result<Duration, RestoreError> {
    h.join().map_err(|_| RestoreError::ChecksumThread)?.map_err(RestoreError::from)
}

/// crik's own stdio, lent to CRIU under the keys the app's stdio had at checkpoint time, so the
/// restored app writes to the new container's stdout/stderr.
fn stdio_inherit_fds(stdio: &[String; 3]) -> std::io::Result<Vec<InheritFd>> {
    let mut seen = HashSet::new();
    let mut v = Vec::new();
    let mut reopened = app::stdio_reopened_here();
    for (fd, link) in stdio.iter().enumerate() {
        let Some(key) = inherit_key(link) else { continue };
        if !seen.insert(key.clone()) {
            continue;
        }
        // Like a fresh start: a file crik got from outside its mount namespace is reopened here,
        // or the restored app could never be checkpointed again.
        if let Some(f) = reopened[fd].take() {
            v.push(InheritFd { fd: f.into(), key });
            continue;
        }
        match own_stdio(fd) {
            Ok(f) => v.push(InheritFd { fd: f, key }),
            // crik started without this fd: the app's end is simply not connected.
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(v)
}

/// A copy of crik's own fd 0, 1 or 2.
fn own_stdio(fd: usize) -> std::io::Result<OwnedFd> {
    match fd {
        0 => std::io::stdin().as_fd().try_clone_to_owned(),
        1 => std::io::stdout().as_fd().try_clone_to_owned(),
        _ => std::io::stderr().as_fd().try_clone_to_owned(),
    }
}

/// The files CRIU dumped as external because crik had lent them at an earlier restore
/// (`isolatePids`): crik's stdio again where it was a file, else the file crik would lend for
/// that path now. A path crik would not lend is refused: it comes from the checkpoint.
fn foreign_inherit_fds(config: &Config, manifest: &Manifest) -> Result<Vec<InheritFd>, RestoreError> {
    let mut v = Vec::new();
    for f in &manifest.foreign_files {
        let file = if let Some(n) = manifest.stdio.iter().position(|s| *s == f.path) {
            own_stdio(n)
        } else {
            let Some(path) = crate::restore::remap::reopen_foreign(f, &config.external_mounts, &manifest.cgroups)
            else {
                return Err(RestoreError::ForeignFile { path: f.path.clone(), source: None });
            };
            crate::host::procfs::reopen_options(f.flags).open(&path).map(OwnedFd::from)
        };
        let fd = file.map_err(|e| RestoreError::ForeignFile { path: f.path.clone(), source: Some(e) })?;
        // CRIU looks every file up among the lent ones by its path less the leading `/`: for an
        // external file `file[..]` that is `ile[..]`. Lent that way CRIU takes the fd as it is,
        // like every file crik lends; lent as `file[..]` it would refuse a new size.
        let key = f.key.strip_prefix('f').unwrap_or(&f.key).to_string();
        log::info!("open file {} of the app, outside its mount namespace, lent again", f.path);
        v.push(InheritFd { fd, key });
    }
    Ok(v)
}

/// The key CRIU knows a stdio file by, for those crik lends its own fd for: pipes, sockets
/// and terminals dumped as external (`pipe:[123]`, `tty[88:19]`), and regular files (their path without the leading `/`). Devices
/// (/dev/null, terminals) are reopened by CRIU itself: lending /dev/null would also rewire every
/// other /dev/null the app opened.
fn inherit_key(link: &str) -> Option<String> {
    if link.starts_with("pipe:[") || link.starts_with("socket:[") || link.starts_with("tty[") {
        Some(link.to_string())
    } else if link.starts_with('/') && !link.starts_with("/dev/") {
        Some(link.trim_start_matches('/').to_string())
    } else {
        None
    }
}

/// Whether every address recorded at checkpoint time exists here too.
fn addresses_survived(recorded: &[String], now: &[String]) -> bool {
    recorded.iter().all(|a| now.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_reestablished_only_when_all_addresses_survived() {
        let now = vec!["10.0.0.5".to_string(), "fe80::1".to_string()];
        assert!(addresses_survived(&["10.0.0.5".into()], &now));
        assert!(addresses_survived(&[], &now));
        assert!(!addresses_survived(&["10.0.0.6".into()], &now));
    }

    #[test]
    fn devices_are_not_lent_and_each_key_is_lent_once() {
        let stdio = ["/dev/null".to_string(), "pipe:[42]".to_string(), "pipe:[42]".to_string()];
        let v = stdio_inherit_fds(&stdio).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "pipe:[42]");
        assert_eq!(inherit_key("/var/log/app.log").as_deref(), Some("var/log/app.log"));
        assert_eq!(inherit_key("socket:[7]").as_deref(), Some("socket:[7]"));
        assert_eq!(inherit_key("tty[8800:19]").as_deref(), Some("tty[8800:19]"));
        assert_eq!(inherit_key("/dev/pts/0"), None);
        assert_eq!(inherit_key("anon_inode:[eventfd]"), None);
    }
}
