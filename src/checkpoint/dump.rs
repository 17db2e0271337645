//! One CRIU dump of the app's tree: what CRIU cannot dump is found first, the network lock is
//! taken only with TCP connections, and in CRIU's post-dump notification (the tree still
//! frozen) the archives are written and the manifest is built, then handed to the caller's hook.

use std::fs::File;
use std::time::{Instant, SystemTime};

use super::{CheckpointError, Target};
use crate::archive::files;
use crate::criu;
use crate::host;
use crate::init::supervisor::Signals;
use crate::sizes;
use crate::store::manifest::{Manifest, FORMAT};
use crate::store::Checkpoint;

/// How CRIU dumps, and what crik does once it has.
pub(super) struct Dump<'h> {
    /// Start the images' writeback while CRIU writes them (a disk, not memory).
    pub(super) writeback: bool,
    /// The pages go to this socket (crik's page server), not into pages images.
    pub(super) page_server: Option<std::os::fd::OwnedFd>,
    /// Called in CRIU's post-dump notification with the manifest (the tree is still frozen);
    /// an error makes CRIU roll back, and the app keeps running.
    pub(super) on_dumped: Option<&'h mut OnDumped<'h>>,
}

pub(super) type OnDumped<'h> = dyn FnMut(&mut Manifest) -> Result<(), CheckpointError> + 'h;

pub(super) fn dump_into(
    signals: &Signals,
    staged: &Checkpoint,
    target: &Target,
    how: Dump,
) -> Result<Manifest, CheckpointError> {
    let app_tree = crate::checkpoint::preflight::check(target.app, target.config)?;
    let stdio = stdio_links()?;
    if !target.leave_running {
        files::delete_paths(&target.config.inotify_incompatible_paths)?;
    }
    let images = staged.images_dir();
    let dir = File::open(&images).map_err(|e| CheckpointError::ImagesDir { path: images.clone(), source: e })?;
    let criu_version = criu::version(signals).map_err(|e| CheckpointError::Criu { source: e, log_lines: vec![] })?;

    let app_memory_bytes = crate::init::app::memory_of(&app_tree);
    let lock_network = target.always_lock_network || crate::checkpoint::preflight::network_lock_needed(&app_tree);
    if !lock_network {
        log::debug!("the app holds no TCP connection: CRIU dumps it without its network lock");
    }
    crate::checkpoint::preflight::warn_if_memory_tight(lock_network);
    let dump_started = Instant::now();
    let mut opts =
        criu::dump_opts(&dir, target.app, target.leave_running, lock_network, &target.config.external_mounts);
    // Files are archived in CRIU's "post-dump" notification: the tree is dumped but still
    // frozen, so a file it holds open matches exactly what CRIU recorded about it (archived
    // before or after, a file the app keeps writing would differ, and CRIU would refuse the
    // restore). If archiving fails, CRIU rolls back: the app keeps running.
    opts.set_notify_scripts(true);
    let mut foreign = Vec::new();
    if crate::host::procfs::own_mount_namespace(target.app.as_raw()) {
        criu::own_mount_namespace(&mut opts, false);
        foreign = crate::restore::remap::foreign_files(&app_tree);
        opts.external.extend(foreign.iter().map(|f| f.key.clone()));
    }
    let mut on_dumped = how.on_dumped;
    let mut dumped_manifest = None;
    let mut on_notify = |script: &str| {
        if script != "post-dump" {
            return true;
        }
        // A connection opened since crik looked, dumped without the lock: roll back, try again.
        if !lock_network {
            if let Some(connections) = crate::criu::images::tcp_connections(&images).ok().filter(|c| !c.is_empty()) {
                dumped_manifest = Some(Err(CheckpointError::Unlocked(connections)));
                return false;
            }
        }
        let dump_millis = dump_started.elapsed().as_millis() as u64;
        let r = archive_files(staged, target).and_then(|a| {
            let mut m = manifest_of(a, target, &stdio, &images, &criu_version, dump_millis, app_memory_bytes);
            if lock_network {
                m.network_lock = crate::criu::images::dump_run_id(&images).ok().flatten();
            }
            m.foreign_files = foreign.clone();
            if let Some(hook) = on_dumped.as_mut() {
                hook(&mut m)?;
            }
            Ok(m)
        });
        let ok = r.is_ok();
        dumped_manifest = Some(r);
        ok
    };
    for tty in stdio.iter().filter(|s| s.starts_with("tty[")) {
        if !opts.external.contains(tty) {
            opts.external.push(tty.clone());
        }
    }
    let req = criu::Request {
        page_server: how.page_server,
        writeback: how.writeback.then(|| images.clone()),
        on_notify: Some(&mut on_notify),
        ..criu::Request::new(criu::rpc::Criu_req_type::DUMP, Some(opts), target.deadline)
    };
    let dumped = criu::call(signals, req);
    // An archive (or hook) failure is the reason, whatever CRIU answered after rolling back.
    if let Some(Err(e)) = dumped_manifest.take_if(|a| a.is_err()) {
        return Err(e);
    }
    if let Err(e) = dumped {
        let mut log_lines = criu::log_errors(&images.join(crate::layout::DUMP_LOG), 8);
        if let Some(full) = volume_full(&images) {
            // CRIU cannot even write its log then: say it ourselves.
            log_lines.push(full);
        }
        return Err(CheckpointError::Criu { source: e, log_lines });
    }
    match dumped_manifest {
        Some(r) => r,
        None => Err(CheckpointError::NoPostDump),
    }
}

/// The manifest of a dump just done (its files are filled in when it is sealed).
fn manifest_of(
    archived: Archived,
    target: &Target,
    stdio: &[String; 3],
    images: &std::path::Path,
    criu_version: &str,
    dump_millis: u64,
    app_memory_bytes: u64,
) -> Manifest {
    let Archived { has_files_archive, rootfs, runtime_tmpfs } = archived;
    Manifest {
        format: FORMAT,
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        command: target.command.to_vec(),
        root_pid: target.app.as_raw(),
        stdio: stdio.clone(),
        addresses: host::addresses(),
        cgroups: crate::host::cgroup::own_cgroup_dirs(),
        rootfs,
        has_files_archive,
        runtime_tmpfs,
        cpu: match crate::criu::cpu::record(images) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("cannot read the CPU record CRIU wrote: {e}; a restore will not check the CPU");
                None
            }
        },
        crik_version: env!("CARGO_PKG_VERSION").to_string(),
        criu_version: criu_version.to_string(),
        kernel: host::kernel_release(),
        dump_millis,
        seal_millis: 0, // measured by the store when it publishes
        app_memory_bytes,
        files: Vec::new(), // filled in by the store when it publishes
        generation: target.generation,
        network_lock: None,        // set by the dump when it took the lock
        foreign_files: Vec::new(), // set by the dump (isolatePids)
    }
}

/// What was archived beside CRIU's images, while the dumped tree was frozen.
struct Archived {
    has_files_archive: bool,
    rootfs: Option<crate::archive::rootfs::RootfsDiff>,
    runtime_tmpfs: Vec<String>,
}

/// additionalPaths into files.tar, the writable layer into rootfs.tar when captured, and the
/// app's files on tmpfs mounts into tmpfs.tar.
fn archive_files(staged: &Checkpoint, target: &Target) -> Result<Archived, CheckpointError> {
    let has_files_archive = if target.config.additional_paths.is_empty() {
        false
    } else {
        files::archive_paths(&target.config.additional_paths, &staged.files_archive())?;
        true
    };
    let rootfs = match target.rootfs_upper {
        Some(upper) => {
            let skip = own_dirs(target);
            let diff = crate::archive::rootfs::capture(upper, &staged.dir.join(crate::layout::ROOTFS_ARCHIVE), &skip)?;
            log::info!(
                "container's writable layer: {} entries archived, {} deletions, {} replaced dirs",
                diff.archived,
                diff.deleted.len(),
                diff.opaque.len()
            );
            Some(diff)
        }
        None => None,
    };
    let runtime_tmpfs = archive_runtime_tmpfs(staged, &own_dirs(target))?;
    Ok(Archived { has_files_archive, rootfs, runtime_tmpfs })
}

/// crik's own dirs (the image dir, the memory staging dir): never part of what is archived.
fn own_dirs<'a>(target: &Target<'a>) -> Vec<&'a std::path::Path> {
    target.config.own_dirs().map(|(_, d)| d.as_path()).collect()
}

/// The files the app holds (open or mapped) on tmpfs mounts: /dev/shm (POSIX shared memory,
/// named semaphores), the /tmp and /run of a `--read-only` container, memory-backed volumes.
/// A runtime makes them afresh, empty, for every container, and CRIU records such files by path
/// only: without their contents the restore in a new container would fail. Only the app's own
/// files are taken (CRIU's file table says which), never the rest of the mount.
fn archive_runtime_tmpfs(staged: &Checkpoint, own: &[&std::path::Path]) -> Result<Vec<String>, CheckpointError> {
    let open = crate::criu::images::regular_files(&staged.images_dir())?;
    let mounts = crate::host::mountinfo::read().unwrap_or_default();
    let mut paths: Vec<String> = open
        .into_iter()
        .map(|f| f.path)
        .filter(|p| {
            let p = std::path::Path::new(p);
            let mount = crate::host::mountinfo::containing(&mounts, p);
            mount.is_some_and(|m| m.fstype == "tmpfs") && !own.iter().any(|d| p.starts_with(d)) && p.is_file()
            // deleted ones are CRIU's ghosts
        })
        .collect();
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return Ok(paths);
    }
    let abs: Vec<crate::config::AbsPath> = paths.iter().filter_map(|p| crate::config::AbsPath::new(p).ok()).collect();
    files::archive_paths(&abs, &staged.dir.join(crate::layout::TMPFS_ARCHIVE))?;
    log::info!("{} file(s) of the app on tmpfs mounts archived: {}", paths.len(), paths.join(", "));
    Ok(paths)
}

/// "No space left on device" when the image dir's filesystem is (nearly) full.
fn volume_full(dir: &std::path::Path) -> Option<String> {
    let free = crate::host::free_space(dir).ok()?;
    (free < 1024 * 1024)
        .then(|| format!("No space left on device: the image dir's filesystem has {} free", sizes::human(free)))
}

/// Where the container's stdio — crik's own fds 0-2, which the app inherited — points
/// (`pipe:[123]`, `/dev/null`, `socket:[9]`, a file), and for a terminal (`tty: true`) CRIU's
/// key for it, `tty[rdev:dev]` (its master is outside the tree: dumped as external). Whatever
/// fd of the app refers to one of these is re-wired to the new container's stdio at restore.
/// crik's own fds, not the app's: the app may be in the middle of redirecting its stdout.
fn stdio_links() -> Result<[String; 3], CheckpointError> {
    let link = |fd: i32| -> Result<String, CheckpointError> {
        let path = format!("/proc/self/fd/{fd}");
        let err = |e: std::io::Error| CheckpointError::Stdio { pid: std::process::id() as i32, source: e };
        let target = match std::fs::read_link(&path) {
            Ok(t) => t.to_string_lossy().into_owned(),
            // crik was started with this fd closed: nothing to re-wire.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(err(e)),
        };
        if target.starts_with("/dev/pts/") {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(&path).map_err(err)?;
            return Ok(format!("tty[{:x}:{:x}]", md.rdev(), md.dev()));
        }
        Ok(target)
    };
    Ok([link(0)?, link(1)?, link(2)?])
}
