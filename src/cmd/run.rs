//! `crik run` and `crik restore`: config → decision (restore or start) → supervise → on SIGTERM,
//! checkpoint or forward.

use std::cell::RefCell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::checkpoint::{self, CheckpointError, Target};
use crate::cmd::cli::{InspectArgs, RestoreArgs, RunArgs};
use crate::config::{AbsPath, Config, ConfigError, ConfigSource, OnNodeStateError, OnRestoreFailure};
use crate::init::app::{self, SpawnError};
use crate::init::supervisor::{self, Periodic, Signals, TermAction};
use crate::lifecycle::nodestate::{self, Answer, Query};
use crate::lifecycle::plan::{self, Cost, Decision};
use crate::lifecycle::status::CheckpointStatus;
use crate::remote::{Remote, RemoteError, RemoteManifest};
use crate::restore::{self, RestoreError, Restored};
use crate::store::staging::MemoryStaging;
use crate::store::{Checkpoint, Staging, Store, StoreError};

/// Why crik gave up; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{0}")]
    Usage(String),
    #[error("invalid node-state configuration: {0}")]
    NodeState(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("{what}: {source}")]
    Failed { what: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl Fatal {
    pub fn exit_code(&self) -> i32 {
        match self {
            Fatal::Usage(_) | Fatal::Config(_) | Fatal::NodeState(_) | Fatal::Invalid(_) => 2,
            Fatal::Spawn(e) => e.exit_code(),
            Fatal::Failed { .. } => 1,
        }
    }
    /// `why` is kept as the source: an error type, or a sentence.
    fn failed(what: impl Into<String>, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Fatal {
        Fatal::Failed { what: what.into(), source: why.into() }
    }
}

/// Reads the configuration, then starts logging in the format it asks for.
fn load_config(flag: Option<PathBuf>) -> Result<Config, Fatal> {
    let source = ConfigSource::resolve(flag, std::env::var_os("CRIK_CONFIG"));
    let loaded = source.load()?;
    let config = loaded.clone().unwrap_or_default();
    crate::cmd::logging::init(config.log_format);
    match loaded {
        Some(_) => log::debug!("configuration read from {}", source.path.display()),
        None => log::debug!("no configuration at {}: checkpointing is off", source.path.display()),
    }
    Ok(config)
}

fn open_store(dir: &Path) -> Result<Store, Fatal> {
    Store::open(dir).map_err(|e| match e {
        StoreError::Locked { .. } | StoreError::Unsafe { .. } => Fatal::failed("cannot use image dir", e),
        e => Fatal::failed("cannot open image dir", e),
    })
}

fn setup_process() -> Result<Signals, Fatal> {
    let signals = Signals::block().map_err(|e| Fatal::failed("cannot block signals", e))?;
    supervisor::become_subreaper().map_err(|e| Fatal::failed("cannot become a child subreaper", e))?;
    Ok(signals)
}

/// The node-state query, checked at start so misconfiguration never waits for a SIGTERM.
fn node_state_query(config: &Config) -> Result<Option<Query>, Fatal> {
    let q = Query::from_config(config, std::env::var(nodestate::NODE_NAME_ENV).ok()).map_err(Fatal::NodeState)?;
    if let Some(q) = &q {
        if config.image_dir.is_none() {
            log::warn!("a node-state source is configured but imageDir is not: checkpointing is off");
        } else {
            log::info!("on SIGTERM, crik will ask {} whether the node is going away", q.endpoint);
        }
    }
    Ok(q)
}

/// The overlay upper dir of `/` when `captureRootfsDiff` is on; checked at start.
fn rootfs_upper(config: &Config) -> Result<Option<PathBuf>, Fatal> {
    if !config.capture_rootfs_diff {
        return Ok(None);
    }
    let upper = crate::archive::rootfs::upper_dir().map_err(|e| Fatal::Invalid(e.to_string()))?;
    log::info!("the container's writable layer ({}) goes into every checkpoint", upper.display());
    Ok(Some(upper))
}

/// With checkpointing on, CRIU must run and have the privileges it needs: found at start, not
/// when the node is going away. (Its version is cached for the checkpoints' manifests.)
fn check_criu(signals: &Signals) -> Result<(), Fatal> {
    let missing = crate::host::caps::missing();
    if !missing.is_empty() {
        return Err(Fatal::failed(
            "checkpointing is on (imageDir) but CRIU would lack privileges",
            format!("missing {}", missing.join(", ")),
        ));
    }
    let v = crate::criu::version(signals)
        .map_err(|e| Fatal::failed("checkpointing is on (imageDir) but CRIU cannot run", e))?;
    if crate::criu::major_minor(&v) < (4, 2) {
        log::warn!("CRIU {v} is older than 4.2: on kernels 6.16 and newer it cannot checkpoint an app holding a TCP or UDP socket");
    } else {
        log::debug!("CRIU {v}");
    }
    Ok(())
}

pub fn run(args: RunArgs) -> Result<i32, Fatal> {
    let config = load_config(args.config)?;
    let node_state = node_state_query(&config)?;
    let rootfs_upper = rootfs_upper(&config)?;
    let signals = setup_process()?;
    let store = match &config.image_dir {
        Some(dir) => Some(open_store(dir.as_path())?),
        None => None,
    };
    if store.is_some() {
        check_criu(&signals)?;
    }
    let remote = open_remote(&config)?;
    let staging = open_staging(&config)?;

    let mut latest = match &store {
        Some(store) => match latest_checkpoint(store) {
            Ok(found) => found.map(|c| (store, c)),
            Err(e) => {
                log::error!(event = "store_unreadable"; "cannot read the image dir after {STORE_READ_TRIES} tries: {e}");
                log::warn!("whatever checkpoint the image dir holds is left as it is");
                cold_start_or_fail(&config, &args.command, || Fatal::failed("cannot read image dir", e))?;
                None
            }
        },
        None => None,
    };
    // The id of storage's newest checkpoint, retired once a restore succeeds.
    let mut remote_newest = None;
    if let (Some(store), Some(remote)) = (&store, &remote) {
        let local = latest.as_ref().map(|(_, c)| c.id.clone());
        match from_storage(store, remote, &config, local.as_deref()) {
            Ok(Pick::Local { remote_id }) => remote_newest = remote_id,
            Ok(Pick::Downloaded(c)) => {
                remote_newest = Some(c.id.clone());
                latest = Some((store, c));
            }
            Err(e @ RemoteError::S3(_)) if auth_error(&e) => {
                return Err(Fatal::failed(format!("cannot use storage {}", remote.url), e))
            }
            Err(e) => {
                if let RemoteError::Damaged { id, .. } = &e {
                    log::error!(event = "restore_failed", id = id.as_str(); "cannot restore from {}: {e}", remote.url);
                    match remote.quarantine(id) {
                        Ok(()) => log::warn!(
                            "moved checkpoint {id} to quarantine/ in {} (it will not be retried)",
                            remote.url
                        ),
                        Err(qe) => log::error!("cannot quarantine checkpoint {id} in storage: {qe}"),
                    }
                } else {
                    log::error!(event = "store_unreadable"; "cannot read storage {}: {e}", remote.url);
                    log::warn!("whatever checkpoint storage holds is left as it is");
                }
                if latest.is_none() {
                    cold_start_or_fail(&config, &args.command, || Fatal::failed("no checkpoint restored", e))?;
                } else {
                    log::warn!("restoring the image dir's own (older) checkpoint instead");
                }
            }
        }
    }
    let restored = match latest {
        Some((store, ckpt)) => match restore::restore(&signals, &config, &ckpt) {
            Ok(r) => {
                if let (Some(remote), Some(id)) = (&remote, &remote_newest) {
                    match remote.retire(id, config.keep_checkpoints) {
                        Ok(()) => log::info!("checkpoint {id} retired in {}", remote.url),
                        Err(e) => log::warn!("cannot retire checkpoint {id} in storage: {e}"),
                    }
                }
                // Retire it: if the restored app crashes later, the next start must not replay
                // this (by then stale) state.
                match store.retire(&ckpt, config.keep_checkpoints) {
                    Ok(r) => log::info!(
                        "checkpoint retired to {} (CRIU's log: {})",
                        r.dir.display(),
                        r.restore_log().display()
                    ),
                    Err(e) => log::warn!("cannot retire restored checkpoint: {e}"),
                }
                Some(r)
            }
            Err(e @ RestoreError::IncompatibleCpu { .. }) => {
                // Sound, just not for this node: kept (not quarantined) for one that can run it.
                log::error!(event = "restore_refused", id = ckpt.id.as_str();
                    "checkpoint {} cannot be restored on this node: {e}", ckpt.dir.display());
                log::warn!("the checkpoint is kept: a start on a node with a compatible CPU restores it");
                cold_start_or_fail(&config, &args.command, || Fatal::failed("restore refused", e))?;
                None
            }
            Err(e) => {
                log::error!(event = "restore_failed", id = ckpt.id.as_str(); "restore of {} failed: {e}", ckpt.dir.display());
                match store.quarantine(&ckpt) {
                    Ok(q) => log::warn!("moved the checkpoint to {} (it will not be retried)", q.dir.display()),
                    Err(qe) => log::error!("cannot quarantine the checkpoint: {qe}"),
                }
                if let (Some(remote), Some(id)) = (&remote, remote_newest.as_ref().filter(|id| **id == ckpt.id)) {
                    if let Err(qe) = remote.quarantine(id) {
                        log::error!("cannot quarantine checkpoint {id} in storage: {qe}");
                    }
                }
                cold_start_or_fail(&config, &args.command, || {
                    Fatal::failed("restore failed", "onRestoreFailure is fail")
                })?;
                None
            }
        },
        None => None,
    };

    let (app, command, _keep_open) = match restored {
        Some(Restored { pid, manifest, keep_open }) => (pid, manifest.command, keep_open),
        None => {
            if args.command.is_empty() {
                return Err(Fatal::Usage(
                    "no command given and no checkpoint to restore\nusage: crik run [--config PATH] -- CMD [ARGS...]"
                        .into(),
                ));
            }
            app::reserve_low_pids();
            let pid = app::spawn_app(&signals, &args.command, config.isolate_ipc)?;
            log::info!("started {:?} as pid {pid}", args.command);
            (pid, to_strings(&args.command), Vec::new())
        }
    };
    let ctx = Context {
        store: store.as_ref(),
        remote: remote.as_ref(),
        staging: staging.as_ref(),
        node_state: node_state.as_ref(),
    };
    Ok(supervise(&signals, &config, ctx, rootfs_upper.as_deref(), app, &command))
}

/// `onRestoreFailure` once no checkpoint could be restored: `fail` gives `on_fail`; `coldStart`
/// starts CMD fresh (an error too when there is no CMD).
fn cold_start_or_fail(config: &Config, command: &[OsString], on_fail: impl FnOnce() -> Fatal) -> Result<(), Fatal> {
    if config.on_restore_failure == OnRestoreFailure::Fail {
        return Err(on_fail());
    }
    if command.is_empty() {
        return Err(Fatal::failed("no checkpoint restored", "no command was given to start fresh instead"));
    }
    log::warn!("starting the command fresh (onRestoreFailure: coldStart)");
    Ok(())
}

/// `storage:` is checked at start (credentials, bucket, endpoint), not when the node is going
/// away.
fn open_remote(config: &Config) -> Result<Option<Remote>, Fatal> {
    let Some(cfg) = &config.storage else { return Ok(None) };
    if config.image_dir.is_none() {
        return Err(Fatal::Invalid("storage needs imageDir: the local dir CRIU dumps into before the upload".into()));
    }
    if cfg
        .endpoint
        .as_ref()
        .is_some_and(|e| e.as_str().split_once("://").is_some_and(|(_, r)| r.trim_end_matches('/').contains('/')))
    {
        return Err(Fatal::Invalid("storage.endpoint must be scheme://host[:port], with no path".into()));
    }
    let remote = Remote::new(cfg, &|k| std::env::var(k).ok())
        .map_err(|e| Fatal::failed(format!("cannot use storage {}", cfg.url), e))?;
    log::info!("checkpoints are uploaded to {}", remote.url);
    Ok(Some(remote))
}

/// `storage.stagingDir`, made ready at start (leftovers of a killed crik removed).
fn open_staging(config: &Config) -> Result<Option<MemoryStaging>, Fatal> {
    let Some(dir) = config.storage.as_ref().and_then(|s| s.staging_dir.as_ref()) else { return Ok(None) };
    if config.image_dir.as_ref().is_some_and(|d| dir.as_path().starts_with(d.as_path())) {
        return Err(Fatal::Invalid("storage.stagingDir must not be inside imageDir".into()));
    }
    let staging = MemoryStaging::open(dir.as_path()).map_err(|e| Fatal::failed("cannot use storage.stagingDir", e))?;
    log::info!("checkpoints are dumped into {} (memory staging) when it has room", dir);
    Ok(Some(staging))
}

fn auth_error(e: &RemoteError) -> bool {
    matches!(e, RemoteError::S3(s) if s.is_auth())
}

/// Which checkpoint to restore when storage is configured.
enum Pick {
    /// The image dir's own (newest, or as new as storage's; `remote_id`: storage's newest).
    Local { remote_id: Option<String> },
    /// Storage's newest, downloaded into the image dir.
    Downloaded(Checkpoint),
}

/// Storage's newest checkpoint, downloaded unless the image dir already holds it (or a newer
/// one: its upload failed, and the volume came back with it).
fn from_storage(store: &Store, remote: &Remote, config: &Config, local: Option<&str>) -> Result<Pick, RemoteError> {
    let Some((id, manifest)) = remote.latest()? else { return Ok(Pick::Local { remote_id: None }) };
    if local.is_some_and(|l| l >= id.as_str()) {
        log::info!(
            "the image dir holds checkpoint {} (storage's newest: {id}): no download",
            local.unwrap_or_default()
        );
        return Ok(Pick::Local { remote_id: Some(id) });
    }
    let manifest = manifest?;
    download(store, remote, &manifest, config).map(Pick::Downloaded)
}

fn download(store: &Store, remote: &Remote, m: &RemoteManifest, config: &Config) -> Result<Checkpoint, RemoteError> {
    let staged = store.stage_as(&m.id)?;
    log::info!(event = "download_started", id = m.id.as_str(); "downloading checkpoint {} from {}", m.id, remote.url);
    let deadline = std::time::Instant::now() + config.restore_timeout;
    let done = remote.download(m, &staged.dir, deadline).and_then(|d| {
        let c = store.publish_as_is(&staged, &m.manifest)?;
        Ok((c, d))
    });
    match done {
        Ok((c, d)) => {
            log::info!(event = "download_finished", id = m.id.as_str(), duration_ms = d.millis,
                received_bytes = d.received_bytes, bytes = d.bytes, chunks = d.fetched_chunks;
                "downloaded checkpoint {} in {} ms: {} chunks, {} received for {}", m.id, d.millis,
                d.fetched_chunks, crate::sizes::human(d.received_bytes), crate::sizes::human(d.bytes));
            Ok(c)
        }
        Err(e) => {
            store.discard(&staged);
            Err(e)
        }
    }
}

/// How often the store is read at start before crik gives up on it (about 2 s in all).
const STORE_READ_TRIES: u32 = 4;

/// The newest complete checkpoint. A network volume may fail briefly as the container starts,
/// so a failed read is retried (250 ms, 500 ms, 1 s apart) before it is reported.
fn latest_checkpoint(store: &Store) -> Result<Option<Checkpoint>, StoreError> {
    let (mut attempt, mut delay) = (1, Duration::from_millis(250));
    loop {
        match store.latest() {
            Err(e) if attempt < STORE_READ_TRIES => {
                log::warn!("cannot read the image dir (attempt {attempt} of {STORE_READ_TRIES}): {e}; retrying");
                std::thread::sleep(delay);
                (attempt, delay) = (attempt + 1, delay * 2);
            }
            r => return r,
        }
    }
}

/// `--image-dir`, else imageDir from the configuration.
fn image_dir_arg(flag: &Option<PathBuf>, config: &Config) -> Result<AbsPath, Fatal> {
    match (flag, &config.image_dir) {
        (Some(d), _) => AbsPath::new(std::path::absolute(d).unwrap_or_else(|_| d.clone())).map_err(Fatal::Usage),
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => Err(Fatal::Usage("no image dir: pass --image-dir or set imageDir in the configuration".into())),
    }
}

pub fn inspect_cmd(args: InspectArgs) -> Result<i32, Fatal> {
    let config = load_config(args.config)?;
    let dir = image_dir_arg(&args.image_dir, &config)?;
    let config = Config { image_dir: Some(dir.clone()), ..config };
    let mut report = crate::cmd::inspect::inspect(dir.as_path(), args.checkpoint.as_deref())
        .map_err(|e| Fatal::failed("cannot inspect", e))?;
    if config.storage.is_some() {
        // Read-only, like the rest of inspect; unreachable storage is reported, not fatal.
        report.storage = match open_remote(&config) {
            Ok(Some(remote)) => Some(crate::cmd::inspect::StorageReport::of(&remote)),
            Ok(None) => None,
            Err(e) => Some(crate::cmd::inspect::StorageReport {
                url: config.storage.as_ref().map(|s| s.url.to_string()).unwrap_or_default(),
                checkpoints: Vec::new(),
                error: Some(e.to_string()),
            }),
        };
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        print!("{}", crate::cmd::inspect::render(&report));
    }
    Ok(0)
}

pub fn restore_cmd(args: RestoreArgs) -> Result<i32, Fatal> {
    let config = load_config(args.config)?;
    let dir = image_dir_arg(&args.image_dir, &config)?;
    let config = Config { image_dir: Some(dir.clone()), ..config };
    let node_state = node_state_query(&config)?;
    let rootfs_upper = rootfs_upper(&config)?;
    // Unlike `run`, which creates its volume's image dir, a debugging restore of a mistyped
    // path must say so rather than create an empty dir.
    if !dir.as_path().exists() {
        return Err(Fatal::failed("nothing to restore", format!("image dir {dir} does not exist")));
    }
    let signals = setup_process()?;
    let store = open_store(dir.as_path())?;
    check_criu(&signals)?;
    let remote = open_remote(&config)?;
    let staging = open_staging(&config)?;
    let mut ckpt = latest_checkpoint(&store).map_err(|e| Fatal::failed("cannot read image dir", e))?;
    if let Some(remote) = &remote {
        // A debugging restore fetches storage's newest too, and leaves storage as it was.
        let local = ckpt.as_ref().map(|c| c.id.clone());
        match from_storage(&store, remote, &config, local.as_deref()) {
            Ok(Pick::Downloaded(c)) => ckpt = Some(c),
            Ok(Pick::Local { .. }) => {}
            Err(e) => return Err(Fatal::failed(format!("cannot restore from {}", remote.url), e)),
        }
    }
    let ckpt = ckpt.ok_or_else(|| Fatal::failed("nothing to restore", format!("no complete checkpoint in {dir}")))?;
    let r = restore::restore(&signals, &config, &ckpt).map_err(|e| Fatal::failed("restore failed", e))?;
    log::info!("CRIU's log: {}", ckpt.restore_log().display());
    let _keep_open = r.keep_open;
    let ctx = Context {
        store: Some(&store),
        remote: remote.as_ref(),
        staging: staging.as_ref(),
        node_state: node_state.as_ref(),
    };
    Ok(supervise(&signals, &config, ctx, rootfs_upper.as_deref(), r.pid, &r.manifest.command))
}

/// Whether this SIGTERM should checkpoint: only when the node is going away (as far as a
/// configured source knows), else the app simply shuts down.
fn node_is_going_away(query: Option<&Query>, on_error: OnNodeStateError) -> bool {
    let Some(q) = query else {
        log::info!("SIGTERM: no node-state source configured, checkpointing");
        return true;
    };
    let started = std::time::Instant::now();
    let answer = q.ask();
    let ms = started.elapsed().as_millis() as u64;
    let endpoint = q.endpoint.as_str();
    match answer {
        Ok(Answer::ShuttingDown(why)) => {
            log::info!(event = "node_state", answer = "shutting-down", endpoint, duration_ms = ms;
                "SIGTERM: {why} (asked {endpoint} in {ms} ms): checkpointing");
            true
        }
        Ok(Answer::Staying(why)) => {
            log::info!(event = "node_state", answer = "staying", endpoint, duration_ms = ms;
                "SIGTERM: {why} (asked {endpoint} in {ms} ms): not going away, passing SIGTERM on");
            false
        }
        Err(e) => {
            let checkpoint = on_error == OnNodeStateError::Checkpoint;
            log::warn!(event = "node_state", answer = "error", endpoint, duration_ms = ms;
                "SIGTERM: cannot learn the node state after {ms} ms: {e}; onNodeStateError is {}",
                if checkpoint { "checkpoint: checkpointing" } else { "skip: passing SIGTERM on" }
            );
            checkpoint
        }
    }
}

/// Where checkpoints go and whom to ask on SIGTERM.
#[derive(Clone, Copy)]
struct Context<'a> {
    store: Option<&'a Store>,
    remote: Option<&'a Remote>,
    staging: Option<&'a MemoryStaging>,
    node_state: Option<&'a Query>,
}

/// Supervises until the app exits or a SIGTERM checkpoint completes.
fn supervise(
    signals: &Signals,
    config: &Config,
    ctx: Context,
    rootfs_upper: Option<&Path>,
    app: nix::unistd::Pid,
    command: &[String],
) -> i32 {
    let Context { store, remote, staging, node_state } = ctx;
    // What a checkpoint of the app is given: a final one (`leave_running` false) or a periodic one.
    let target_of = |app, leave_running, deadline| Target {
        config,
        app,
        command,
        leave_running,
        rootfs_upper,
        deadline,
        remote,
        staging,
        always_lock_network: false,
    };
    // What the last SIGTERM did about the app's state.
    let mut saved: Option<Saved> = None;
    // Periodic checkpoints of this run, oldest first (the SIGTERM handler may keep the last).
    let periodic_taken: RefCell<Vec<String>> = RefCell::new(Vec::new());
    // What earlier checkpoints of this app cost, newest first: the image dir's, then this run's.
    let history: RefCell<Vec<Cost>> =
        RefCell::new(store.map(|s| s.history().iter().map(|m| Cost::of(m, None)).collect()).unwrap_or_default());
    let mut on_term = |pid| {
        let term_received = std::time::Instant::now();
        let Some(store) = store else {
            log::info!("SIGTERM: checkpointing is off, passing it on to the app");
            return TermAction::Forward;
        };
        if !node_is_going_away(node_state, config.on_node_state_error) {
            return TermAction::Forward;
        }
        let deadline = match config.checkpoint_budget {
            None => config.checkpoint_timeout,
            Some(budget) => {
                let left = budget.saturating_sub(term_received.elapsed());
                let estimate = plan::estimate(&history.borrow(), app::tree_memory(pid), remote.is_some());
                let newest_periodic = periodic_taken.borrow().last().cloned();
                match plan::decide(left, config.checkpoint_timeout, estimate, newest_periodic.as_deref()) {
                    Decision::Dump { deadline } => deadline,
                    Decision::DumpAnyway { deadline, estimate } => {
                        log::warn!(
                            "the final checkpoint will probably not fit: about {} ms, {} ms of checkpointBudget left, \
                             and no periodic checkpoint to keep instead: trying anyway",
                            estimate.as_millis(),
                            left.as_millis()
                        );
                        deadline
                    }
                    Decision::KeepPeriodic { id, estimate } => {
                        let (estimate_ms, left_ms) = (estimate.as_millis() as u64, left.as_millis() as u64);
                        log::warn!(event = "checkpoint_skipped", kept = id.as_str(), estimate_ms, budget_left_ms = left_ms;
                            "SIGTERM: a final checkpoint would take about {estimate_ms} ms, more than the {left_ms} ms \
                             left of checkpointBudget: keeping periodic checkpoint {id} instead; passing SIGTERM on");
                        let mut status = CheckpointStatus::new("final", "skipped", SystemTime::now());
                        status.id = Some(id);
                        status.error = Some(format!("would take about {estimate_ms} ms, {left_ms} ms of budget left"));
                        crate::lifecycle::status::write(store.root(), status);
                        saved = Some(Saved::KeptPeriodic);
                        return TermAction::Forward;
                    }
                }
            }
        };
        let target = target_of(pid, false, deadline);
        match checkpoint::checkpoint(signals, store, &target) {
            Ok(_) => {
                saved = Some(Saved::Checkpointed);
                TermAction::Exit(0)
            }
            Err(e @ CheckpointError::Upload { .. }) => {
                // CRIU stopped the app with its state in the image dir (or, if even that failed,
                // nowhere): a restart on this node restores it; a new node restores storage's
                // newest (an older one, or none).
                log::error!(event = "checkpoint_failed", kind = "final", uploaded = false; "{e}");
                TermAction::Exit(1)
            }
            Err(e) => {
                log::error!(event = "checkpoint_failed"; "checkpoint failed: {e}");
                log::warn!("the app keeps running; passing SIGTERM on so it can shut down cleanly");
                saved = Some(Saved::Failed);
                TermAction::Forward
            }
        }
    };
    let mut periodic_run = |pid| {
        let Some(store) = store else { return };
        let deadline = config.checkpoint_timeout;
        let target = target_of(pid, true, deadline);
        match checkpoint::checkpoint(signals, store, &target) {
            Ok(t) => {
                periodic_taken.borrow_mut().push(t.id);
                history.borrow_mut().insert(0, t.cost);
            }
            Err(CheckpointError::Upload { id, url, source, kept }) => {
                // Kept in the image dir all the same (as a rule): one of this run's checkpoints.
                log::error!(event = "checkpoint_failed", kind = "periodic", uploaded = false, id = id.as_str();
                    "periodic checkpoint {id} was not uploaded to {url} (the app keeps running): {source}; {kept}");
                periodic_taken.borrow_mut().push(id);
            }
            Err(e) => log::error!(event = "checkpoint_failed", kind = "periodic";
                "periodic checkpoint failed (the app keeps running): {e}"),
        }
    };
    let periodic = match (store, config.checkpoint_interval) {
        (Some(_), Some(every)) => {
            log::info!("periodic checkpoints every {} s", every.as_secs_f64());
            Some(Periodic { every, run: &mut periodic_run })
        }
        _ => None,
    };
    if let (Some(_), Some(budget), None) = (store, config.checkpoint_budget, config.checkpoint_interval) {
        warn_if_too_large(&history.borrow(), remote.is_some(), budget, app);
    }
    supervisor::release_startup_text();
    let code = supervisor::supervise(signals, app, &mut on_term, periodic);
    match (store, saved) {
        (Some(store), None) => {
            // The app ended on its own: its state ended with it. A periodic checkpoint of this
            // run left behind would replay stale state at the next start (a finished job run
            // again, a crash repeated). Older checkpoints, and those kept on SIGTERM or after a
            // failed final checkpoint, stay: they may be the only saved state.
            let stale = store.retire_where(|c| periodic_taken.borrow().contains(&c.id), config.keep_checkpoints);
            // Storage holds them too (with memory staging, only storage does); each upload
            // retired the one before it there, so only the newest can still be published.
            if let (Some(remote), Some(id)) = (remote, periodic_taken.borrow().last()) {
                match remote.retire(id, config.keep_checkpoints) {
                    Ok(()) => log::info!("the app exited: periodic checkpoint {id} retired in {}", remote.url),
                    Err(e) => log::warn!("cannot retire periodic checkpoint {id} in {}: {e}", remote.url),
                }
            }
            if stale > 0 {
                log::info!(
                    "the app exited: retired {stale} periodic checkpoint(s) of this run, the next start is fresh"
                );
            }
            code
        }
        // The app shut down cleanly, but its state was not saved: say so in the exit status.
        (_, Some(Saved::Failed)) if code == 0 => 1,
        _ => code,
    }
}

/// What a SIGTERM did with the app's state.
enum Saved {
    Checkpointed,
    /// The final checkpoint would not have fit checkpointBudget: the newest periodic one stands.
    KeptPeriodic,
    Failed,
}

/// With a budget and no periodic checkpoints to fall back on, says at start when the app is
/// already too large for a final checkpoint to fit.
fn warn_if_too_large(history: &[Cost], uploads: bool, budget: Duration, app: nix::unistd::Pid) {
    let memory = app::tree_memory(app);
    match plan::estimate(history, memory, uploads) {
        Some(estimate) if estimate > budget => {
            let (estimate_ms, budget_ms) = (estimate.as_millis() as u64, budget.as_millis() as u64);
            log::warn!(event = "checkpoint_too_slow", estimate_ms, budget_ms, memory_bytes = memory;
                "the app holds {} and a final checkpoint of it would take about {estimate_ms} ms, more than \
                 checkpointBudget ({budget_ms} ms): set checkpointInterval, so that a periodic checkpoint can \
                 stand in for it", crate::sizes::human(memory));
        }
        Some(estimate) => log::debug!("a final checkpoint would take about {} ms", estimate.as_millis()),
        None => log::debug!("no earlier checkpoint to estimate a final one from"),
    }
}

fn to_strings(v: &[OsString]) -> Vec<String> {
    v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
}
