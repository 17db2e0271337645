//! `crik inspect`: what the checkpoints in an image dir hold, for the person debugging a
//! restore. Read-only: it neither locks nor moves anything.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::criu::images::{self, Process};
use crate::sizes::{self, dir_size};
use crate::store::integrity::{self, Scope};
use crate::store::manifest::Manifest;
use crate::store::{self, Checkpoint, State};

use super::{image_dir_arg, load_config, open_keys, open_remote, Fatal};
use crate::cmd::cli::InspectArgs;
use crate::config::Config;

/// `crik inspect`: the report, as text or JSON, on stdout.
pub fn run(args: InspectArgs) -> Result<i32, Fatal> {
    let config = load_config(args.config)?;
    let dir = image_dir_arg(&args.image_dir, &config)?;
    let config = Config { image_dir: Some(dir.clone()), ..config };
    let mut report =
        inspect(dir.as_path(), args.checkpoint.as_deref()).map_err(|e| Fatal::failed("cannot inspect", e))?;
    if config.storage.is_some() {
        // Read-only, like the rest of inspect; unreachable storage is reported, not fatal.
        report.storage = match open_keys(&config).and_then(|keys| open_remote(&config, keys.as_ref())) {
            Ok(Some(remote)) => Some(StorageReport::of(&remote)),
            Ok(None) => None,
            Err(e) => Some(StorageReport {
                url: config.storage.as_ref().map(|s| s.url.to_string()).unwrap_or_default(),
                checkpoints: Vec::new(),
                error: Some(e.to_string()),
            }),
        };
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serializes"));
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub image_dir: PathBuf,
    /// The image dir's status file: the outcome of the last checkpoint.
    pub status: Option<crate::lifecycle::status::Status>,
    /// Why the status file could not be read, if it could not.
    pub status_error: Option<String>,
    /// Every checkpoint in the dir, oldest first.
    pub checkpoints: Vec<Summary>,
    /// The one looked at in detail (the newest complete one unless asked otherwise).
    pub detail: Option<Detail>,
    /// The checkpoints in object storage, when `storage` is configured.
    pub storage: Option<StorageReport>,
}

#[derive(Debug, Serialize)]
pub struct StorageReport {
    pub url: String,
    pub checkpoints: Vec<crate::remote::RemoteSummary>,
    /// Why storage could not be listed, if it could not.
    pub error: Option<String>,
}

impl StorageReport {
    pub fn of(remote: &crate::remote::Remote) -> StorageReport {
        match remote.summaries() {
            Ok(checkpoints) => StorageReport { url: remote.url.clone(), checkpoints, error: None },
            Err(e) => StorageReport { url: remote.url.clone(), checkpoints: Vec::new(), error: Some(e.to_string()) },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub id: String,
    /// complete, retired, quarantined or partial.
    pub state: &'static str,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Detail {
    pub id: String,
    pub state: &'static str,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub manifest: Option<Manifest>,
    /// "intact", or what is wrong (sizes and checksums checked against the manifest).
    pub integrity: String,
    pub processes: Vec<Process>,
    pub memory_bytes: u64,
    /// Why the process tree could not be read, if it could not.
    pub images_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read image dir {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error(transparent)]
    Store(store::StoreError),
    #[error("no checkpoint {0} in {1}")]
    NoSuchCheckpoint(String, PathBuf),
}

pub fn inspect(image_dir: &Path, wanted: Option<&str>) -> Result<Report, InspectError> {
    std::fs::read_dir(image_dir).map_err(|e| InspectError::Dir(image_dir.into(), e))?;
    let all = store::list_all(image_dir).map_err(InspectError::Store)?;
    let checkpoints = all
        .iter()
        .map(|(state, c)| Summary { id: c.id.clone(), state: state.as_str(), size_bytes: dir_size(&c.dir) })
        .collect();
    let chosen = match wanted {
        Some(id) => Some(
            all.iter()
                .find(|(_, c)| c.id == id)
                .ok_or_else(|| InspectError::NoSuchCheckpoint(id.into(), image_dir.into()))?,
        ),
        None => all
            .iter()
            .rev()
            .find(|(s, _)| *s == State::Complete)
            .or_else(|| all.iter().rev().find(|(s, _)| *s != State::Partial)),
    };
    let detail = chosen.map(|(state, c)| detail(*state, c));
    let (status, status_error) = match crate::lifecycle::status::read(image_dir) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e)),
    };
    Ok(Report { image_dir: image_dir.into(), status, status_error, checkpoints, detail, storage: None })
}

fn detail(state: State, c: &Checkpoint) -> Detail {
    let manifest = Manifest::load(&c.manifest_path());
    let integrity = match &manifest {
        Ok(m) => match integrity::verify(&c.dir, m, Scope::Everything) {
            Ok(()) => "intact".to_string(),
            Err(e) => e.to_string(),
        },
        Err(e) => format!("no usable manifest: {e}"),
    };
    let (processes, images_error) = match images::processes(&c.images_dir()) {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Detail {
        id: c.id.clone(),
        state: state.as_str(),
        path: c.dir.clone(),
        size_bytes: dir_size(&c.dir),
        manifest: manifest.ok(),
        integrity,
        memory_bytes: processes.iter().map(|p| p.memory_bytes).sum(),
        processes,
        images_error,
    }
}

/// The report for a person.
pub fn render(r: &Report) -> String {
    let mut s = format!("image dir {}\n", r.image_dir.display());
    if r.checkpoints.is_empty() {
        s.push_str("  no checkpoints\n");
    }
    for c in &r.checkpoints {
        s.push_str(&format!("  {:<24} {:<12} {}\n", c.id, c.state, sizes::human(c.size_bytes)));
    }
    if let Some(st) = &r.status {
        let l = &st.last_checkpoint;
        s.push_str(&format!(
            "  last checkpoint: {} {}, started {}, {} ms{}{}{}\n",
            l.kind,
            l.result,
            l.started,
            l.duration_ms,
            l.size_bytes.map(|b| format!(", {}", sizes::human(b))).unwrap_or_default(),
            l.id.as_ref().map(|i| format!(", {i}")).unwrap_or_default(),
            l.error.as_ref().map(|e| format!("\n    {}", e.replace('\n', "\n    "))).unwrap_or_default()
        ));
    }
    if let Some(e) = &r.status_error {
        s.push_str(&format!("  status file unreadable: {e}\n"));
    }
    if let Some(st) = &r.storage {
        s.push_str(&format!("storage {}\n", st.url));
        match &st.error {
            Some(e) => s.push_str(&format!("  cannot list it: {e}\n")),
            None if st.checkpoints.is_empty() => s.push_str("  no checkpoints\n"),
            None => {}
        }
        for c in &st.checkpoints {
            s.push_str(&format!(
                "  {:<24} {:<12} {}, {} chunks{}\n",
                c.id,
                c.state,
                sizes::human(c.size_bytes),
                c.chunks,
                c.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
    }
    let Some(d) = &r.detail else { return s };
    s.push_str(&format!("\ncheckpoint {} ({})\n  path:       {}\n", d.id, d.state, d.path.display()));
    s.push_str(&format!("  integrity:  {}\n  size:       {}\n", d.integrity, sizes::human(d.size_bytes)));
    if let Some(m) = &d.manifest {
        s.push_str(&format!("  taken:      {} (CRIU dump {} ms)\n", m.created, m.dump_millis));
        s.push_str(&format!("  command:    {}\n", m.command.join(" ")));
        s.push_str(&format!("  versions:   crik {}, CRIU {}, kernel {}\n", m.crik_version, m.criu_version, m.kernel));
        match &m.cpu {
            Some(c) if !c.model.is_empty() => s.push_str(&format!(
                "  cpu:        {} {} {}, xsave {} bytes, features checked at restore: {}\n",
                c.arch,
                c.vendor,
                c.model,
                c.xsave_size,
                c.features.join(" ")
            )),
            Some(c) => s.push_str(&format!("  cpu:        {}\n", c.arch)),
            None => s.push_str("  cpu:        not recorded (taken by an older crik)\n"),
        }
        s.push_str(&format!("  stdio:      stdin {}, stdout {}, stderr {}\n", m.stdio[0], m.stdio[1], m.stdio[2]));
        s.push_str(&format!(
            "  addresses:  {}\n",
            if m.addresses.is_empty() { "none".into() } else { m.addresses.join(", ") }
        ));
        s.push_str(&format!("  files.tar:  {}\n", if m.has_files_archive { "yes (additionalPaths)" } else { "no" }));
    }
    s.push_str(&format!("  memory:     {}\n", sizes::human(d.memory_bytes)));
    if let Some(e) = &d.images_error {
        s.push_str(&format!("  images:     cannot read the process tree: {e}\n"));
    }
    for p in &d.processes {
        let cmd = p.cmdline.as_ref().map(|c| c.join(" ")).unwrap_or_else(|| format!("[{}]", p.comm));
        s.push_str(&format!(
            "\n  process {} (parent {}, pgid {}, sid {}, {} thread{}, {} memory)\n    {}\n",
            p.pid,
            p.ppid,
            p.pgid,
            p.sid,
            p.threads,
            if p.threads == 1 { "" } else { "s" },
            sizes::human(p.memory_bytes),
            cmd
        ));
        for f in &p.files {
            s.push_str(&format!("    fd {:<3} {:<8} {}\n", f.fd, f.kind, f.what));
        }
    }
    s
}
