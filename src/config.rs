//! crik's configuration file (YAML; keys compatible with the Go original).
//!
//! Every value is checked while it is parsed, so an error names the file, the key and the line
//! (`imageDir: path must be absolute at line 1 column 11`). Unknown keys are errors: a typo in
//! `imageDir` must never silently switch checkpointing off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where crik looks when neither `--config` nor `CRIK_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crik/config.yaml";

/// What to do at a checkpoint about processes that left the app's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnEscapedProcesses {
    /// Fail the checkpoint (the app keeps running): the restored app would lack them.
    #[default]
    Fail,
    /// SIGKILL them first (helpers the app can do without, such as a browser's crash handler).
    Kill,
}

/// What to do when a restore fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnRestoreFailure {
    /// Quarantine the checkpoint and start the command fresh.
    #[default]
    ColdStart,
    /// Quarantine the checkpoint and exit non-zero.
    Fail,
}

/// How established TCP connections come back at restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum TcpRestore {
    /// Re-establish them when every address the app had at checkpoint time still exists here
    /// (same pod, same node), otherwise restore them closed.
    #[default]
    Auto,
    /// Always re-establish them (restore fails if an address is gone).
    Established,
    /// Always restore them closed: the app sees the connection drop and reconnects.
    Close,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
// Every key is optional: a missing one takes its value from `Config::default()`, the one
// place defaults are written.
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Where checkpoints are written and read. Unset: checkpointing is off.
    pub image_dir: Option<AbsPath>,
    /// Node-state server asked on SIGTERM whether the node is going away.
    #[serde(rename = "nodeStateServerURL")]
    pub node_state_server_url: Option<HttpUrl>,
    /// Files and directories archived into the checkpoint and put back before restore.
    pub additional_paths: Vec<AbsPath>,
    /// Mounts the runtime provides (secret and configmap volumes, ...), added to crik's defaults:
    /// open files on them point to the new container's copy after a restore.
    pub external_mounts: Vec<AbsPath>,
    /// Archive the container's writable layer (overlay upper dir of `/`) into each checkpoint
    /// and put it back before a restore.
    pub capture_rootfs_diff: bool,
    /// Paths deleted before the dump (things CRIU cannot checkpoint, such as inotify targets).
    pub inotify_incompatible_paths: Vec<AbsPath>,
    /// What to do when a checkpoint cannot be restored.
    pub on_restore_failure: OnRestoreFailure,
    /// How many retired (already restored) checkpoints to keep as history.
    pub keep_checkpoints: usize,
    /// Upper bound for one CRIU dump, in seconds; CRIU is killed past it.
    #[serde(deserialize_with = "seconds")]
    pub checkpoint_timeout: Duration,
    /// How long a final checkpoint may take, in seconds (the pod's grace period minus a margin).
    /// When the estimate from earlier checkpoints says it would not fit, the newest periodic
    /// checkpoint is kept instead. Unset: no budget (only `checkpointTimeout`).
    #[serde(deserialize_with = "some_seconds")]
    pub checkpoint_budget: Option<Duration>,
    /// Upper bound for one CRIU restore, in seconds; CRIU and what it restored are killed past it.
    #[serde(deserialize_with = "seconds")]
    pub restore_timeout: Duration,
    /// How established TCP connections are restored.
    pub tcp_restore: TcpRestore,
    /// Where to ask, on SIGTERM, whether the node is going away (long form of
    /// `nodeStateServerURL`, with cloud preemption notices as sources).
    pub node_state: Option<NodeStateConfig>,
    /// What to do when the node state cannot be learned.
    pub on_node_state_error: OnNodeStateError,
    /// Take a leave-running checkpoint this often (seconds), so that even a hard kill with no
    /// SIGTERM restores recent state. Unset: only the final checkpoint on SIGTERM.
    #[serde(deserialize_with = "some_seconds")]
    pub checkpoint_interval: Option<Duration>,
    /// Restore with CRIU's lazy-pages daemon: the app runs before all its memory is read back.
    pub lazy_pages: bool,
    /// Start the app in an IPC namespace of its own, which CRIU then checkpoints with it: System
    /// V shared memory, semaphores and message queues (PostgreSQL) live in it.
    pub isolate_ipc: bool,
    /// Start the app in a PID and mount namespace of its own, under a small init (`crik reap`)
    /// that CRIU checkpoints with it: whatever the app daemonizes is re-parented to that init,
    /// so it stays in the checkpointed tree, across any number of restores.
    pub isolate_pids: bool,
    /// Processes the app daemonized (re-parented to crik, outside the tree CRIU dumps): `fail`
    /// the checkpoint, or `kill` them first.
    pub on_escaped_processes: OnEscapedProcesses,
    /// crik's own log lines: `text` or `json`.
    pub log_format: crate::cmd::logging::LogFormat,
    /// Object storage every checkpoint is uploaded to (imageDir stays the local staging dir).
    pub storage: Option<StorageConfig>,
    /// Commands run before a checkpoint, after a restore, after a failed checkpoint.
    pub hooks: HooksConfig,
    /// A directory the app can watch: crik writes `checkpointing` and `restored` there.
    pub control_dir: Option<AbsPath>,
    /// A signal sent to the app's root process once it is restored (`SIGUSR1`, ...).
    #[serde(deserialize_with = "some_signal")]
    pub restore_signal: Option<nix::sys::signal::Signal>,
    /// Keys that seal what crik stores in object storage.
    pub encryption: Option<EncryptionConfig>,
}

/// `encryption:`: checkpoints in object storage sealed (AES-256-GCM, keyed chunk names) with the
/// first key; every key opens (rotation). See docs/design/authenticated-checkpoints.md.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Files made by `crik keygen` (a mounted Secret).
    pub key_files: Vec<AbsPath>,
    /// What checkpoints are bound to besides their place (the bucket and prefix, or the image
    /// dir): e.g. the app's name, for apps that share a key and an image dir path.
    #[serde(default)]
    pub identity: Option<String>,
    /// Where no trusted record of the newest generation exists, a checkpoint older than this is
    /// refused (seconds; none by default).
    #[serde(default, deserialize_with = "some_seconds")]
    pub max_age: Option<Duration>,
    /// Never write a checkpoint's plaintext to a disk: dumps and restores go through
    /// `storage.stagingDir` (memory), and checkpoints are kept only sealed, in storage.
    #[serde(default)]
    pub no_plaintext_on_disk: bool,
}

/// `hooks:`: each a command (program and arguments, run without a shell), empty for none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Before a final checkpoint (and periodic ones with `beforePeriodic`): e.g. drop caches.
    pub pre_checkpoint: Vec<String>,
    /// Once the restored app runs: e.g. refresh credentials, reconnect.
    pub post_restore: Vec<String>,
    /// After a checkpoint failed (`CRIK_ERROR` says why).
    pub checkpoint_failed: Vec<String>,
    /// Upper bound for one hook, in seconds (its whole session is killed past it). A final
    /// checkpoint's preCheckpoint counts against `checkpointBudget`.
    #[serde(deserialize_with = "seconds")]
    pub timeout: Duration,
    /// Run preCheckpoint before periodic checkpoints too.
    pub before_periodic: bool,
    /// When preCheckpoint fails or times out: `checkpoint` anyway (logged), or `skip` it.
    pub on_pre_checkpoint_failure: OnHookFailure,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            pre_checkpoint: Vec::new(),
            post_restore: Vec::new(),
            checkpoint_failed: Vec::new(),
            timeout: Duration::from_secs(10),
            before_periodic: false,
            on_pre_checkpoint_failure: OnHookFailure::default(),
        }
    }
}

/// What a failed or timed-out preCheckpoint hook does to the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnHookFailure {
    /// Checkpoint anyway: the app's state matters more than its tidiness.
    #[default]
    Checkpoint,
    /// No checkpoint this time (a final one: the app gets SIGTERM, as when a checkpoint fails).
    Skip,
}

fn some_signal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<nix::sys::signal::Signal>, D::Error> {
    let name = String::deserialize(d)?;
    let full = if name.starts_with("SIG") { name.clone() } else { format!("SIG{name}") };
    match full.parse::<nix::sys::signal::Signal>() {
        Ok(s) if !matches!(s, nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP) => Ok(Some(s)),
        _ => Err(serde::de::Error::custom(format!(
            "restoreSignal: {name:?} is not a signal crik can send (e.g. SIGUSR1)"
        ))),
    }
}

/// `storage:`: an S3 bucket (or any S3-compatible store) that checkpoints are mirrored to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3://bucket/prefix`: one app (one crik at a time) per prefix.
    pub url: S3Url,
    /// An S3-compatible endpoint (`http://minio:9000`, `https://storage.googleapis.com`),
    /// addressed path-style; unset: AWS S3 in `region`.
    #[serde(default)]
    pub endpoint: Option<HttpUrl>,
    /// Unset: `AWS_REGION`, `AWS_DEFAULT_REGION`, else us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// Upper bound for one request, in seconds.
    #[serde(default = "default_request_timeout", deserialize_with = "seconds")]
    pub request_timeout: Duration,
    /// Requests in flight at once for an upload; a download keeps four times as many.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A memory-backed dir (tmpfs, an emptyDir with `medium: Memory`) CRIU dumps into before
    /// the upload, instead of imageDir: a checkpoint stays there only until it is uploaded.
    /// Used only when it and the container's memory limit have room for the dump.
    #[serde(default)]
    pub staging_dir: Option<AbsPath>,
    /// crik receives the dump's pages itself (CRIU's page-server protocol) and uploads them as
    /// they arrive: no pages image is written anywhere. Off: CRIU writes them (into stagingDir
    /// or imageDir) and they are uploaded after the dump.
    #[serde(default = "default_true")]
    pub stream_pages: bool,
    /// One crik writes the prefix at a time: the lease that enforces it.
    #[serde(default)]
    pub lease: LeaseConfig,
    /// How long a start keeps trying storage that cannot be read (unreachable, 5xx, cut off
    /// mid-download), in seconds, before `onUnreadable` decides.
    #[serde(default = "default_retry_at_start", deserialize_with = "seconds")]
    pub retry_at_start: Duration,
    /// What a start does once storage stayed unreadable for `retryAtStart`.
    #[serde(default)]
    pub on_unreadable: OnUnreadable,
    /// Allow a plain `http://` endpoint (or STS endpoint) that is not this host's loopback:
    /// checkpoints (the app's whole memory) and signed requests would cross the network in the
    /// clear. Off: only `https://`, or `http://` to the loopback.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// An AWS shared-credentials file (its `[default]` profile) holding the storage keys, read
    /// by crik alone: keys in the environment are inherited by the app, and so are in every
    /// checkpoint. Unset: the environment (or a web-identity token).
    #[serde(default)]
    pub credentials_file: Option<AbsPath>,
}

/// `storage.lease`: the object `lease.json` in the prefix names the one crik that may write
/// it (publish, retire, quarantine, collect garbage); it renews it every third of `ttl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Off only for a server without conditional writes: nothing then stops two cricks from
    /// writing one prefix (and destroying each other's checkpoints).
    pub enabled: bool,
    /// How long a lease lives without a renewal, in seconds: a start after a crik was killed
    /// waits at most this long.
    #[serde(deserialize_with = "seconds")]
    pub ttl: Duration,
    /// What a start does while another crik holds the lease.
    pub when_held: WhenHeld,
    /// How long `whenHeld: wait` waits, in seconds, before crik stops.
    #[serde(deserialize_with = "seconds")]
    pub max_wait: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            enabled: true,
            ttl: Duration::from_secs(30),
            when_held: WhenHeld::Wait,
            max_wait: Duration::from_secs(600),
        }
    }
}

/// What a start does while another crik holds the prefix's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum WhenHeld {
    /// Wait until it is released (the other crik exited: a pod being replaced checkpoints
    /// first) or expires (it died), then restore the newest checkpoint.
    #[default]
    Wait,
    /// Stop at once, naming the holder.
    Fail,
}

/// What a start does when storage stays unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnUnreadable {
    /// Stop (exit 1): the checkpoints storage holds are kept, and the next start (the
    /// orchestrator restarts the container) tries again.
    #[default]
    Fail,
    /// Start the command fresh; this run's uploads go beside storage's checkpoints and never
    /// retire them (it never restored them).
    ColdStart,
}

fn default_retry_at_start() -> Duration {
    Duration::from_secs(60)
}

fn default_true() -> bool {
    true
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    8
}

/// `s3://bucket[/prefix]`, checked when parsed; the prefix is kept ending in `/` (or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix("s3://") else { return Err(format!("must start with s3://, got {s:?}")) };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules (3-63 of a-z 0-9 . -, starting and ending alphanumeric).
        let ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(format!("{bucket:?} is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..")
            || prefix.contains("//")
            || prefix.chars().any(char::is_control)
        {
            return Err(format!("the prefix {prefix:?} must not hold empty, '.' or '..' components"));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Url { bucket: bucket.into(), prefix })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }
}

impl<'de> Deserialize<'de> for S3Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checked::new("an s3://bucket/prefix URL", |v| str_only(v, S3Url::parse)))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStateConfig {
    pub source: NodeStateSource,
    /// Overrides the source's default endpoint (tests, proxies). Required for `server`
    /// unless `nodeStateServerURL` is set.
    #[serde(default)]
    pub endpoint: Option<HttpUrl>,
    /// Upper bound for the whole query, in seconds.
    #[serde(default = "default_node_state_timeout", deserialize_with = "seconds")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeStateSource {
    /// crik's (or the Go original's) node-state server.
    Server,
    /// AWS EC2 spot interruption notice (IMDSv2).
    Aws,
    /// GCP preemption flag on the metadata server.
    Gcp,
    /// Azure Scheduled Events (`Preempt`).
    Azure,
}

/// What to do on SIGTERM when the node state cannot be learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnNodeStateError {
    /// Checkpoint anyway: losing state is worse than an unneeded checkpoint.
    #[default]
    Checkpoint,
    /// Pass SIGTERM on without a checkpoint.
    Skip,
}

fn default_node_state_timeout() -> Duration {
    Duration::from_secs(3)
}

impl Config {
    /// `encryption.noPlaintextOnDisk`: checkpoints only in memory staging and, sealed, in storage.
    pub fn plaintext_off_disk(&self) -> bool {
        self.encryption.as_ref().is_some_and(|e| e.no_plaintext_on_disk)
    }

    /// crik's own dirs, named as in the configuration: `imageDir` and `storage.stagingDir`
    /// (they hold checkpoints: never deleted, captured or overwritten as the app's files).
    pub fn own_dirs(&self) -> impl Iterator<Item = (&'static str, &AbsPath)> {
        let staging = self.storage.iter().filter_map(|s| s.staging_dir.as_ref());
        self.image_dir.iter().map(|d| ("imageDir", d)).chain(staging.map(|d| ("storage.stagingDir", d)))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            image_dir: None,
            node_state_server_url: None,
            additional_paths: Vec::new(),
            inotify_incompatible_paths: Vec::new(),
            external_mounts: Vec::new(),
            capture_rootfs_diff: false,
            on_restore_failure: OnRestoreFailure::default(),
            keep_checkpoints: 1,
            checkpoint_timeout: Duration::from_secs(300),
            checkpoint_budget: None,
            restore_timeout: Duration::from_secs(300),
            tcp_restore: TcpRestore::default(),
            node_state: None,
            on_node_state_error: OnNodeStateError::default(),
            log_format: crate::cmd::logging::LogFormat::default(),
            checkpoint_interval: None,
            lazy_pages: false,
            on_escaped_processes: OnEscapedProcesses::default(),
            isolate_ipc: false,
            isolate_pids: false,
            storage: None,
            hooks: HooksConfig::default(),
            control_dir: None,
            restore_signal: None,
            encryption: None,
        }
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(Checked::<Duration>::new("a number of seconds above 0, at most 86400", |v| match v {
        Scalar::Num(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        Scalar::Num(secs) => Err(format!("must be a number of seconds above 0, at most 86400, got {secs}")),
        Scalar::Str(s) => Err(format!("must be a number of seconds, got {s:?}")),
    }))
}

fn some_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    seconds(d).map(Some)
}

/// A scalar as the YAML parser saw it.
enum Scalar<'a> {
    Str(&'a str),
    Num(f64),
}

/// Validates a scalar inside the parser's own visit, so that errors carry the key and the
/// line (an error raised after parsing has neither).
struct Checked<T> {
    expecting: &'static str,
    check: fn(Scalar) -> Result<T, String>,
}

impl<T> Checked<T> {
    fn new(expecting: &'static str, check: fn(Scalar) -> Result<T, String>) -> Self {
        Checked { expecting, check }
    }
}

impl<'de, T> serde::de::Visitor<'de> for Checked<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.check)(Scalar::Str(v)).map_err(E::custom)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        (self.check)(Scalar::Num(v)).map_err(E::custom)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_f64(v as f64)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_f64(v as f64)
    }
}

fn str_only<T>(v: Scalar, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, String> {
    match v {
        Scalar::Str(s) => f(s),
        Scalar::Num(n) => Err(format!("expected a string, got the number {n}")),
    }
}

/// An absolute path, checked when it is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    pub fn new(p: impl Into<PathBuf>) -> Result<Self, String> {
        let p = p.into();
        if p.as_os_str().is_empty() {
            return Err("path must not be empty".into());
        }
        if !p.is_absolute() {
            return Err(format!("path must be absolute, got {:?}", p));
        }
        Ok(AbsPath(p))
    }
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checked::new("an absolute path", |v| str_only(v, |s| AbsPath::new(s))))
    }
}

/// An http(s) URL with a host and an optional path, checked when it is parsed and kept in a
/// normal form (`http://host:port/path`, path at least `/`). crik only ever appends path
/// segments to it, so it needs no general URL parser (and PID 1 carries no IDNA tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        // A URL with credentials in it is refused, and never echoed: its user info is hidden.
        let shown = match s.split_once("://") {
            Some((scheme, rest)) if rest.split('/').next().is_some_and(|a| a.contains('@')) => {
                format!("{scheme}://***@{}", rest.split_once('@').map_or("", |(_, r)| r))
            }
            _ => s.to_string(),
        };
        let bad = |why: &str| Err(format!("must be an http:// or https:// URL with a host ({why}), got {shown:?}"));
        let Some((scheme, rest)) = s.split_once("://") else { return bad("no scheme") };
        if shown != s {
            return bad(
                "credentials in a URL are not accepted: they would be logged; storage keys come from the environment",
            );
        }
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return bad("not http or https");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains spaces or control characters");
        }
        if rest.contains(['?', '#']) {
            return bad("a query or fragment is not allowed");
        }
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, None), // bare IPv6: invalid below
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        };
        if !host_ok {
            return bad("no valid host");
        }
        if let Some(p) = port {
            if p.parse::<u16>().is_err() {
                return bad("the port is not a number up to 65535");
            }
        }
        Ok(HttpUrl(format!("{scheme}://{}{path}", authority.to_ascii_lowercase())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whatever goes to it crosses a network in the clear: plain `http://` to a host other than
    /// this one's loopback.
    pub fn in_the_clear(&self) -> bool {
        is_in_the_clear(&self.0)
    }
    /// This URL with `segments` appended to its path, each percent-encoded.
    pub fn join(&self, segments: &[&str]) -> String {
        let mut u = self.0.strip_suffix('/').unwrap_or(&self.0).to_string();
        for seg in segments {
            u.push('/');
            for b in seg.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    u.push(b as char);
                } else {
                    u.push_str(&format!("%{b:02X}"));
                }
            }
        }
        u
    }
}

/// Whether `url` (`scheme://host[:port]/...`) is plain `http://` to a host that is not the
/// loopback (`localhost`, 127.0.0.0/8, `[::1]`).
pub fn is_in_the_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("HTTP://")) else { return false };
    let authority = rest.split('/').next().unwrap_or_default().to_ascii_lowercase();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
        None => authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).to_string(),
    };
    let loopback = host == "localhost"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.is_loopback());
    !loopback
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Checked::new("an http(s) URL", |v| str_only(v, HttpUrl::parse)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Which file to read, and whether its absence is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Named by the user (`--config` or `CRIK_CONFIG`): a missing file is an error.
    pub explicit: bool,
}

impl ConfigSource {
    /// `--config` wins over `CRIK_CONFIG`, which wins over the default path.
    pub fn resolve(flag: Option<PathBuf>, env: Option<std::ffi::OsString>) -> Self {
        match (flag, env.filter(|e| !e.is_empty())) {
            (Some(p), _) => ConfigSource { path: p, explicit: true },
            (None, Some(e)) => ConfigSource { path: e.into(), explicit: true },
            (None, None) => ConfigSource { path: DEFAULT_CONFIG_PATH.into(), explicit: false },
        }
    }

    /// Reads the file; `Ok(None)` when the default file is absent (crik then runs as a plain init).
    pub fn load(&self) -> Result<Option<Config>, ConfigError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.explicit => return Ok(None),
            Err(e) => return Err(ConfigError::Read { path: self.path.clone(), source: e }),
        };
        parse(&text).map(Some).map_err(|message| ConfigError::Parse { path: self.path.clone(), message })
    }
}

/// Parses configuration text. An empty document (or one with only comments) is all defaults.
pub fn parse(text: &str) -> Result<Config, String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if value.is_null() {
        return Ok(Config::default());
    }
    if !value.is_mapping() {
        return Err("the top level must be a mapping of keys (imageDir: ..., ...)".into());
    }
    // Parse the text again (not the Value) so that errors keep their line and column.
    let config: Config = serde_yaml_ng::from_str(text).map_err(|e| with_line(e.to_string(), text))?;
    check(&config)?;
    Ok(config)
}

/// The most requests in flight an upload may keep (a download keeps four times as many): each
/// is a thread with a chunk in memory.
pub const MAX_CONCURRENCY: usize = 64;

/// A region name goes into URLs and into every request's signature: letters, digits and dashes
/// (`eu-west-1`), as AWS and S3-compatible stores name them.
pub fn check_region(r: &str) -> Result<(), String> {
    if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("must be letters, digits and dashes, like eu-west-1 (got {r:?})"));
    }
    Ok(())
}

/// What no single value says: settings that only make sense together, and bounds below which a
/// value would make every checkpoint fail.
fn check(c: &Config) -> Result<(), String> {
    let at_least = |what: &str, d: Duration, min: Duration| -> Result<(), String> {
        if d < min {
            return Err(format!("{what} must be at least {} s, got {} s", min.as_secs_f64(), d.as_secs_f64()));
        }
        Ok(())
    };
    at_least("checkpointTimeout", c.checkpoint_timeout, Duration::from_secs(1))?;
    at_least("restoreTimeout", c.restore_timeout, Duration::from_secs(1))?;
    if let Some(every) = c.checkpoint_interval {
        at_least("checkpointInterval", every, Duration::from_millis(100))?;
    }
    // Deleted before every final checkpoint: never crik's own dirs, nor anything above them.
    for (name, dir) in c.own_dirs() {
        if let Some(p) = c.inotify_incompatible_paths.iter().find(|p| dir.as_path().starts_with(p.as_path())) {
            return Err(format!(
                "inotifyIncompatiblePaths: {p} would delete {name} ({dir}) and its checkpoints before every final checkpoint"
            ));
        }
    }
    if let Some(s) = &c.storage {
        at_least("storage.requestTimeout", s.request_timeout, Duration::from_secs(1))?;
        // Renewed every third of it, each renewal one request: it must outlast a slow one.
        at_least("storage.lease.ttl", s.lease.ttl, Duration::from_secs(2))?;
        if s.lease.ttl > Duration::from_secs(3600) {
            return Err(format!("storage.lease.ttl must be at most 3600 s, got {} s", s.lease.ttl.as_secs_f64()));
        }
        let Some(image_dir) = &c.image_dir else {
            return Err("storage needs imageDir: the local dir CRIU dumps into before the upload".into());
        };
        let path_after_host =
            |u: &HttpUrl| u.as_str().split_once("://").is_some_and(|(_, r)| r.trim_end_matches('/').contains('/'));
        if s.endpoint.as_ref().is_some_and(path_after_host) {
            return Err("storage.endpoint must be scheme://host[:port], with no path".into());
        }
        if s.endpoint.as_ref().is_some_and(HttpUrl::in_the_clear) && !s.allow_plain_http {
            return Err("storage.endpoint is plain http:// to another host: checkpoints (the app's whole memory) and \
                        signed requests would cross the network in the clear; use https://, or set \
                        storage.allowPlainHttp: true"
                .into());
        }
        if s.staging_dir.as_ref().is_some_and(|d| d.as_path().starts_with(image_dir.as_path())) {
            return Err("storage.stagingDir must not be inside imageDir".into());
        }
        if let Some(r) = &s.region {
            check_region(r).map_err(|why| format!("storage.region {why}"))?;
        }
        if !(1..=MAX_CONCURRENCY).contains(&s.concurrency) {
            return Err(format!("storage.concurrency must be between 1 and {MAX_CONCURRENCY}, got {}", s.concurrency));
        }
    }
    if let Some(enc) = &c.encryption {
        if enc.key_files.is_empty() {
            return Err("encryption.keyFiles must name at least one key file (made by `crik keygen`)".into());
        }
        if enc.identity.as_deref().is_some_and(|i| i.is_empty() || i.len() > 256 || i.chars().any(char::is_control)) {
            return Err("encryption.identity must be 1 to 256 characters, none of them control characters".into());
        }
        if let Some(age) = enc.max_age {
            at_least("encryption.maxAge", age, Duration::from_secs(60))?;
        }
        if enc.no_plaintext_on_disk && c.storage.as_ref().and_then(|s| s.staging_dir.as_ref()).is_none() {
            return Err("encryption.noPlaintextOnDisk needs storage with a stagingDir (a memory-backed dir, where \
                        checkpoints are dumped and restored)"
                .into());
        }
    }
    if let Some(ns) = &c.node_state {
        at_least("nodeState.timeout", ns.timeout, Duration::from_millis(100))?;
        match (&ns.endpoint, &c.node_state_server_url) {
            (Some(_), Some(_)) => return Err("set nodeStateServerURL or nodeState.endpoint, not both".into()),
            (None, Some(_)) if ns.source != NodeStateSource::Server => {
                return Err("nodeStateServerURL is only used with nodeState.source: server".into())
            }
            (None, None) if ns.source == NodeStateSource::Server => {
                return Err("nodeState.source: server needs nodeState.endpoint or nodeStateServerURL".into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// The YAML parser omits the position of an error at the very start of the document (an
/// unknown first key); find that key's line so every error says where it is.
fn with_line(msg: String, text: &str) -> String {
    if msg.contains(" line ") {
        return msg;
    }
    let key = msg.split_once("unknown field `").and_then(|(_, rest)| rest.split_once('`')).map(|(k, _)| k);
    let line = key.and_then(|k| {
        text.lines().position(|l| l.trim_start().strip_prefix(k).is_some_and(|r| r.trim_start().starts_with(':')))
    });
    match line {
        Some(n) => format!("{msg} at line {}", n + 1),
        None => msg,
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let c = parse(
            "imageDir: /var/crik\nnodeStateServerURL: http://crik.kube-system.svc:9376\n\
             additionalPaths: [/data, /home/app/.cache]\ninotifyIncompatiblePaths:\n  - /tmp/watched\n\
             onRestoreFailure: fail\nkeepCheckpoints: 3\ncheckpointTimeout: 20\nrestoreTimeout: 1.5\ntcpRestore: close\n\
             checkpointInterval: 600\n",
        )
        .unwrap();
        assert_eq!(c.image_dir.unwrap().as_path(), Path::new("/var/crik"));
        assert_eq!(c.node_state_server_url.unwrap().as_str(), "http://crik.kube-system.svc:9376/");
        assert_eq!(c.additional_paths.len(), 2);
        assert_eq!(c.inotify_incompatible_paths[0].as_path(), Path::new("/tmp/watched"));
        assert_eq!(c.on_restore_failure, OnRestoreFailure::Fail);
        assert_eq!(c.keep_checkpoints, 3);
        assert_eq!(c.checkpoint_timeout, Duration::from_secs(20));
        assert_eq!(c.restore_timeout, Duration::from_millis(1500));
        assert_eq!(c.tcp_restore, TcpRestore::Close);
        assert_eq!(c.checkpoint_interval, Some(Duration::from_secs(600)));
    }

    #[test]
    fn node_state_section_parses() {
        let c = parse(
            "nodeState:\n  source: aws\n  endpoint: http://127.0.0.1:9/\n  timeout: 0.5\nonNodeStateError: skip\n",
        )
        .unwrap();
        let ns = c.node_state.unwrap();
        assert_eq!(ns.source, NodeStateSource::Aws);
        assert_eq!(ns.endpoint.unwrap().as_str(), "http://127.0.0.1:9/");
        assert_eq!(ns.timeout, Duration::from_millis(500));
        assert_eq!(c.on_node_state_error, OnNodeStateError::Skip);
        let c = parse("nodeState: {source: gcp}\n").unwrap();
        assert_eq!(c.node_state.unwrap().timeout, Duration::from_secs(3));
        let e = parse("nodeState:\n  source: ibm\n").unwrap_err();
        assert!(e.contains("nodeState.source") && e.contains("line 2"), "{e}");
        let e = parse("nodeState:\n  source: aws\n  endpont: http://x/\n").unwrap_err();
        assert!(e.contains("unknown field `endpont`"), "{e}");
    }

    #[test]
    fn empty_and_comment_only_files_are_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing yet\n").unwrap(), Config::default());
        assert!(Config::default().image_dir.is_none());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("imageDir: /x\nimageDri: /y\n").unwrap_err();
        assert!(e.contains("unknown field `imageDri`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = parse("imageDri: /y\n").unwrap_err();
        assert!(e.contains("unknown field `imageDri`") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn relative_path_is_rejected_with_key_and_line() {
        let e = parse("additionalPaths:\n  - /ok\n  - relative/dir\n").unwrap_err();
        assert!(e.contains("must be absolute"), "{e}");
        assert!(e.contains("additionalPaths"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let e = parse("additionalPaths: /not-a-list\n").unwrap_err();
        assert!(e.contains("additionalPaths"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = parse("keepCheckpoints: many\n").unwrap_err();
        assert!(e.contains("keepCheckpoints"), "{e}");
    }

    #[test]
    fn bad_url_is_rejected() {
        for bad in
            ["nodeStateServerURL: not a url\n", "nodeStateServerURL: ftp://x/\n", "nodeStateServerURL: http://\n"]
        {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("nodeStateServerURL"), "{bad}: {e}");
        }
    }

    #[test]
    fn malformed_yaml_is_rejected_with_line() {
        let e = parse("imageDir: /x\n  additionalPaths: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        let e = parse("- just\n- a list\n").unwrap_err();
        assert!(e.contains("mapping"), "{e}");
    }

    #[test]
    fn bad_enum_and_timeout_values_are_rejected() {
        assert!(parse("onRestoreFailure: retry\n").unwrap_err().contains("onRestoreFailure"));
        assert!(parse("checkpointTimeout: 0\n").unwrap_err().contains("checkpointTimeout"));
        assert!(parse("restoreTimeout: -3\n").unwrap_err().contains("restoreTimeout"));
    }

    #[test]
    fn source_precedence() {
        let s = ConfigSource::resolve(Some("/a".into()), Some("/b".into()));
        assert_eq!(s, ConfigSource { path: "/a".into(), explicit: true });
        let s = ConfigSource::resolve(None, Some("/b".into()));
        assert_eq!(s, ConfigSource { path: "/b".into(), explicit: true });
        let s = ConfigSource::resolve(None, None);
        assert_eq!(s, ConfigSource { path: DEFAULT_CONFIG_PATH.into(), explicit: false });
    }

    #[test]
    fn missing_default_file_means_no_config_but_missing_named_file_is_an_error() {
        let missing = ConfigSource { path: "/nonexistent/crik.yaml".into(), explicit: false };
        assert!(missing.load().unwrap().is_none());
        let named = ConfigSource { explicit: true, ..missing };
        let e = named.load().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/crik.yaml"), "{e}");
    }
}

#[cfg(test)]
mod sample_tests {
    /// The keys serde accepts where `yaml` puts the unknown key `crikNoSuchKey`, read from the
    /// error it gives ("unknown field `crikNoSuchKey`, expected one of `imageDir`, ..."): the
    /// list comes from the config types themselves.
    fn keys_accepted(yaml: &str) -> Vec<String> {
        let e = super::parse(yaml).unwrap_err();
        let list = e.split_once("expected").map(|(_, l)| l).unwrap_or_else(|| panic!("{e}"));
        let keys: Vec<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        assert!(!keys.is_empty(), "{e}");
        keys
    }

    /// The commented sample in config/ must stay valid and name every key of every section.
    #[test]
    fn sample_configuration_parses_and_names_every_key() {
        let text = include_str!("../config/configuration.yaml");
        let c = super::parse(text).unwrap();
        assert!(c.image_dir.is_some());
        let top = keys_accepted("crikNoSuchKey: 1\n");
        assert!(top.len() >= 16 && top.contains(&"imageDir".to_string()), "{top:?}");
        let node_state = keys_accepted("nodeState: {source: aws, crikNoSuchKey: 1}\n");
        assert!(node_state.contains(&"endpoint".to_string()), "{node_state:?}");
        let storage = keys_accepted("storage: {url: s3://bucket/p, crikNoSuchKey: 1}\n");
        assert!(storage.contains(&"endpoint".to_string()), "{storage:?}");
        for key in top.iter().chain(&node_state).chain(&storage) {
            assert!(text.contains(&format!("{key}:")), "the sample lacks {key}");
        }
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    #[test]
    fn s3_urls_are_checked_and_normalized() {
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("my-bucket", "a/b/"));
        assert_eq!(u.to_string(), "s3://my-bucket/a/b");
        assert_eq!(S3Url::parse("s3://my-bucket").unwrap().prefix, "");
        for bad in ["http://b/x", "s3://B/x", "s3://ab/x", "s3://b_c/x", "s3://bucket/a/../b", "s3://bucket/a//b"] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
        let c = parse("imageDir: /v\nstorage: {url: s3://bkt/app, endpoint: 'http://127.0.0.1:9000'}\n").unwrap();
        let st = c.storage.unwrap();
        assert_eq!((st.concurrency, st.request_timeout), (8, Duration::from_secs(30)));
        assert_eq!(st.staging_dir, None);
        assert!(st.stream_pages, "pages are streamed unless told otherwise");
        assert_eq!(st.lease, LeaseConfig::default());
        assert_eq!(
            (st.lease.ttl, st.lease.when_held, st.lease.max_wait),
            (Duration::from_secs(30), WhenHeld::Wait, Duration::from_secs(600))
        );
        assert!(st.lease.enabled, "one writer per prefix unless told otherwise");
        assert_eq!((st.retry_at_start, st.on_unreadable), (Duration::from_secs(60), OnUnreadable::Fail));
        let c = parse(
            "imageDir: /v\nstorage: {url: s3://bkt/app, lease: {ttl: 5, whenHeld: fail}, onUnreadable: coldStart}\n",
        )
        .unwrap();
        let st = c.storage.unwrap();
        assert_eq!(
            (st.lease.ttl, st.lease.when_held, st.on_unreadable),
            (Duration::from_secs(5), WhenHeld::Fail, OnUnreadable::ColdStart)
        );
        for bad in ["lease: {ttl: 1}", "lease: {ttl: 3601}", "lease: {whenHeld: steal}", "onUnreadable: retry"] {
            assert!(parse(&format!("imageDir: /v\nstorage: {{url: s3://bkt/app, {bad}}}\n")).is_err(), "{bad}");
        }
        // TLS unless the loopback, or allowed.
        for clear in ["http://minio:9000", "http://10.0.0.7", "http://[fd00::1]:9000", "http://127.0.0.1.nip.io"] {
            let e = parse(&format!("imageDir: /v\nstorage: {{url: s3://bkt/app, endpoint: '{clear}'}}\n")).unwrap_err();
            assert!(e.contains("in the clear") && e.contains("allowPlainHttp"), "{clear}: {e}");
            let ok =
                format!("imageDir: /v\nstorage: {{url: s3://bkt/app, endpoint: '{clear}', allowPlainHttp: true}}\n");
            assert!(parse(&ok).is_ok(), "{clear}");
        }
        for fine in [
            "https://minio:9000",
            "http://127.0.0.1:9000",
            "http://127.8.0.1",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(
                parse(&format!("imageDir: /v\nstorage: {{url: s3://bkt/app, endpoint: '{fine}'}}\n")).is_ok(),
                "{fine}"
            );
        }
        let c = parse("imageDir: /v\nstorage: {url: s3://bkt/app, streamPages: false}\n").unwrap();
        assert!(!c.storage.unwrap().stream_pages);
        let c = parse("imageDir: /v\nstorage: {url: s3://bkt/app, stagingDir: /dev/shm/crik}\n").unwrap();
        assert_eq!(c.storage.unwrap().staging_dir.unwrap().as_path(), std::path::Path::new("/dev/shm/crik"));
        assert!(parse("imageDir: /v\nstorage: {url: s3://bkt/app, stagingDir: shm}\n").is_err());
        let e = parse("storage: {url: 'gs://bkt/app'}\n").unwrap_err();
        assert!(e.contains("must start with s3://"), "{e}");
    }

    #[test]
    fn region_and_concurrency_are_checked_where_they_enter() {
        let storage = |extra: &str| parse(&format!("imageDir: /x\nstorage:\n  url: s3://bucket/p\n{extra}"));
        assert!(storage("  region: eu-west-1\n  concurrency: 64\n").is_ok());
        for (extra, says) in [
            ("  region: \"eu-west-1\\n\"\n", "storage.region must be letters"),
            ("  region: \"ü-ñ\"\n", "storage.region must be letters"),
            ("  region: us east 1\n", "storage.region must be letters"),
            ("  concurrency: 0\n", "between 1 and 64"),
            ("  concurrency: 1000000\n", "between 1 and 64"),
            ("  concurrency: 18446744073709551615\n", "between 1 and 64"),
        ] {
            let e = storage(extra).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn encryption_settings_are_checked() {
        let with = |extra: &str| {
            parse(&format!(
                "imageDir: /x\nstorage:\n  url: s3://bucket/p\n  stagingDir: /dev/shm/crik\nencryption:\n  keyFiles: [/k]\n{extra}"
            ))
        };
        let c = with("  identity: web\n  maxAge: 3600\n  noPlaintextOnDisk: true\n").unwrap();
        let enc = c.encryption.as_ref().unwrap();
        assert_eq!((enc.identity.as_deref(), enc.max_age), (Some("web"), Some(Duration::from_secs(3600))));
        assert!(c.plaintext_off_disk());
        for (extra, says) in [
            ("  identity: \"\"\n", "encryption.identity must be 1 to 256"),
            ("  identity: \"a\\nb\"\n", "encryption.identity must be 1 to 256"),
            ("  maxAge: 5\n", "encryption.maxAge must be at least 60"),
        ] {
            let e = with(extra).unwrap_err();
            assert!(e.contains(says), "{extra}: {e}");
        }
        // Without storage the image dir is still sealed; noPlaintextOnDisk needs memory staging.
        assert!(parse("imageDir: /x\nencryption:\n  keyFiles: [/k]\n").is_ok());
        let e = parse("imageDir: /x\nencryption:\n  keyFiles: [/k]\n  noPlaintextOnDisk: true\n").unwrap_err();
        assert!(e.contains("needs storage with a stagingDir"), "{e}");
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_showing_them() {
        let e = HttpUrl::parse("http://user:hunter2@minio:9000").unwrap_err();
        assert!(e.contains("credentials in a URL are not accepted") && e.contains("***@minio:9000"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = HttpUrl::parse("ftp://user:hunter2@minio").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
