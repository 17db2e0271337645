//! crik's commands: `run` (PID 1: restore or start the app, checkpoint on SIGTERM), `restore`
//! (a checkpoint into the foreground, for debugging), `inspect` (what a checkpoint holds). Each
//! is thin: it opens what the configuration names (here, so that a mistake stops crik at start,
//! not when the node is going away), then hands over to [`crate::lifecycle`]. Every way crik
//! gives up maps to its exit code here, in [`Fatal::exit_code`].

pub mod cli;
pub mod copy_bundle;
pub mod inspect;
pub mod logging;
pub mod restore;
pub mod run;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{AbsPath, Config, ConfigError, ConfigSource};
use crate::init::app::SpawnError;
use crate::init::supervisor::{self, Signals};
use crate::lifecycle::nodestate::{self, Query};
use crate::lifecycle::startup::StartError;
use crate::remote::Remote;
use crate::seal::Keys;
use crate::store::staging::MemoryStaging;
use crate::store::{Store, StoreError};

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

impl From<StartError> for Fatal {
    fn from(e: StartError) -> Fatal {
        Fatal::Failed { what: e.what, source: e.source }
    }
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
    pub(crate) fn failed(what: impl Into<String>, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Fatal {
        Fatal::Failed { what: what.into(), source: why.into() }
    }
}

/// Reads the configuration, then starts logging in the format it asks for.
pub(crate) fn load_config(flag: Option<PathBuf>) -> Result<Config, Fatal> {
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

/// The image dir, its checkpoints authenticated with `keys` when there are some.
pub(crate) fn open_store(dir: &Path, config: &Config, keys: Option<&Arc<Keys>>) -> Result<Store, Fatal> {
    let sealing = keys.map(|keys| crate::store::Sealing {
        keys: keys.clone(),
        identity: local_identity(config, dir),
        max_age: config.encryption.as_ref().and_then(|e| e.max_age),
    });
    Store::open_sealed(dir, sealing).map_err(|e| match e {
        StoreError::Locked { .. } | StoreError::Unsafe { .. } => Fatal::failed("cannot use image dir", e),
        e => Fatal::failed("cannot open image dir", e),
    })
}

pub(crate) fn setup_process() -> Result<Signals, Fatal> {
    let signals = Signals::block().map_err(|e| Fatal::failed("cannot block signals", e))?;
    supervisor::become_subreaper().map_err(|e| Fatal::failed("cannot become a child subreaper", e))?;
    Ok(signals)
}

/// The node-state query, checked at start so misconfiguration never waits for a SIGTERM.
pub(crate) fn node_state_query(config: &Config) -> Result<Option<Query>, Fatal> {
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
pub(crate) fn rootfs_upper(config: &Config) -> Result<Option<PathBuf>, Fatal> {
    if !config.capture_rootfs_diff {
        return Ok(None);
    }
    let upper = crate::archive::rootfs::upper_dir().map_err(|e| Fatal::Invalid(e.to_string()))?;
    log::info!("the container's writable layer ({}) goes into every checkpoint", upper.display());
    Ok(Some(upper))
}

/// With checkpointing on, CRIU must run and have the privileges it needs: found at start, not
/// when the node is going away. (Its version is cached for the checkpoints' manifests.)
pub(crate) fn check_criu(signals: &Signals) -> Result<(), Fatal> {
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
        log::info!("CRIU {v} ({})", crate::criu::binary().display());
    }
    Ok(())
}

/// `crik reap -- CMD`: the init of the app's PID namespace (`isolatePids`), started by `crik run`.
pub fn reap(command: &[std::ffi::OsString]) -> Result<i32, Fatal> {
    Ok(crate::init::reaper::run(command))
}

/// `crik keygen`: a new key file's line on stdout.
pub fn keygen() -> Result<i32, Fatal> {
    let text = crate::seal::Key::generate().map_err(|e| Fatal::failed("cannot make a key", e))?;
    print!("{text}");
    Ok(0)
}

/// What the image dir's checkpoints are bound to: the storage url when there is one (each app
/// has its own prefix; a checkpoint downloaded from there is published here too), else the
/// image dir's path; with `#identity` when `encryption.identity` is set.
fn local_identity(config: &Config, dir: &Path) -> String {
    let place = match &config.storage {
        Some(s) => s.url.to_string(),
        None => dir.display().to_string(),
    };
    match config.encryption.as_ref().and_then(|e| e.identity.as_deref()) {
        Some(i) => format!("{place}#{i}"),
        None => place,
    }
}

/// `encryption.keyFiles`, read at start: a missing or malformed key is found now, not when a
/// checkpoint is written or restored.
pub(crate) fn open_keys(config: &Config) -> Result<Option<Arc<Keys>>, Fatal> {
    Ok(read_keys(config)?.map(Arc::new))
}

/// Says at start whether checkpoints are sealed (once the image dir and CRIU are found usable).
pub(crate) fn say_sealing(config: &Config, keys: Option<&Arc<Keys>>) {
    match keys {
        Some(k) => log::info!(
            "checkpoints are sealed with key {} (encryption.keyFiles): encrypted in storage, authenticated in both \
             storage and the image dir",
            k.writer().id_hex
        ),
        None if config.image_dir.is_some() => log::warn!(
            "checkpoints are neither encrypted nor authenticated: anyone who can write the bucket or the image dir \
             can make crik restore what they wrote (set encryption.keyFiles; see docs/security.md)"
        ),
        None => {}
    }
}

fn read_keys(config: &Config) -> Result<Option<Keys>, Fatal> {
    let Some(enc) = &config.encryption else { return Ok(None) };
    let mut keys = Vec::new();
    for path in &enc.key_files {
        let text = std::fs::read_to_string(path.as_path())
            .map_err(|e| Fatal::failed(format!("cannot read encryption key {path}"), e))?;
        let key = crate::seal::Key::parse(&text).map_err(|e| Fatal::failed(format!("encryption key {path}"), e))?;
        log::debug!("encryption key {} from {path}", key.id_hex);
        keys.push(key);
    }
    Ok(Keys::new(keys))
}

/// `storage:` is checked at start (credentials, bucket, endpoint), not when the node is going
/// away.
pub(crate) fn open_remote(config: &Config, keys: Option<&Arc<Keys>>) -> Result<Option<Remote>, Fatal> {
    let Some(cfg) = &config.storage else { return Ok(None) };
    let identity = config.encryption.as_ref().and_then(|e| e.identity.as_deref());
    let remote = Remote::new(cfg, keys.cloned(), identity, &|k| std::env::var(k).ok())
        .map_err(|e| Fatal::failed(format!("cannot use storage {}", cfg.url), e))?;
    log::info!("checkpoints are uploaded to {}", remote.url);
    // The app inherits crik's environment, and a checkpoint holds the app's memory.
    let inherited: Vec<&str> = ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
        .into_iter()
        .filter(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
        .collect();
    if !inherited.is_empty() {
        log::warn!(event = "credentials_in_environment";
            "the app inherits {} from crik's environment: every checkpoint holds {}; give crik its storage keys in \
             storage.credentialsFile (or a web-identity token) and keep them out of the container's environment",
            inherited.join(" and "), if inherited.len() > 1 { "them" } else { "it" });
    }
    Ok(Some(remote))
}

/// `storage.stagingDir`, made ready at start (leftovers of a killed crik removed).
pub(crate) fn open_staging(config: &Config) -> Result<Option<MemoryStaging>, Fatal> {
    let Some(dir) = config.storage.as_ref().and_then(|s| s.staging_dir.as_ref()) else { return Ok(None) };
    let staging = MemoryStaging::open(dir.as_path()).map_err(|e| Fatal::failed("cannot use storage.stagingDir", e))?;
    if config.plaintext_off_disk() && !staging.is_memory() {
        return Err(Fatal::failed(
            "cannot use storage.stagingDir",
            format!("{dir} is not tmpfs or ramfs, and encryption.noPlaintextOnDisk keeps checkpoints off disks"),
        ));
    }
    log::info!("checkpoints are dumped into {} (memory staging) when it has room", dir);
    Ok(Some(staging))
}

/// `--image-dir`, else imageDir from the configuration.
pub(crate) fn image_dir_arg(flag: &Option<PathBuf>, config: &Config) -> Result<AbsPath, Fatal> {
    match (flag, &config.image_dir) {
        (Some(d), _) => AbsPath::new(std::path::absolute(d).unwrap_or_else(|_| d.clone())).map_err(Fatal::Usage),
        (None, Some(d)) => Ok(d.clone()),
        (None, None) => Err(Fatal::Usage("no image dir: pass --image-dir or set imageDir in the configuration".into())),
    }
}
