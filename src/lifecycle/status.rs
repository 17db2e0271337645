//! `status.json` in the image dir: the outcome of the last checkpoint, for operators and
//! monitoring that cannot read crik's logs (a sidecar, `kubectl exec cat`, `crik inspect`).
//!
//! ```text
//! {"updated": "2026-12-02T15:40:00Z",
//!  "last_checkpoint": {"kind": "final", "result": "complete", "id": "20261202T154000.123Z",
//!                      "started": "2026-12-02T15:39:59Z", "duration_ms": 812, "size_bytes": 70254592}}
//! ```
//! Replaced atomically (written beside, fsynced, renamed): a reader never sees half a file.

use crate::layout::STATUS_FILE;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub updated: String,
    pub last_checkpoint: CheckpointStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// `final` (on SIGTERM) or `periodic`.
    pub kind: String,
    /// `complete`, `failed`, or `skipped` (a final checkpoint that would not have fit
    /// `checkpointBudget`; the newest periodic one was kept).
    pub result: String,
    /// The checkpoint's id (for `skipped`: the periodic checkpoint kept instead).
    #[serde(default)]
    pub id: Option<String>,
    pub started: String,
    pub duration_ms: u64,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

impl CheckpointStatus {
    pub fn new(kind: &str, result: &str, started: SystemTime) -> Self {
        CheckpointStatus {
            kind: kind.into(),
            result: result.into(),
            id: None,
            started: humantime::format_rfc3339_seconds(started).to_string(),
            duration_ms: started.elapsed().map_or(0, |d| d.as_millis() as u64),
            size_bytes: None,
            error: None,
        }
    }
}

/// Replaces the image dir's status file. A failure is logged, never fatal: the checkpoint
/// itself is what matters.
pub fn write(image_dir: &Path, last: CheckpointStatus) {
    let status =
        Status { updated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(), last_checkpoint: last };
    let tmp = image_dir.join(format!(".{STATUS_FILE}.tmp"));
    let json = serde_json::to_string_pretty(&status).expect("status serializes") + "\n";
    let r = crate::store::write_file_durably(&tmp, json.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(&tmp, image_dir.join(STATUS_FILE)).map_err(|e| e.to_string()));
    if let Err(e) = r {
        log::warn!("cannot update {}: {e}", image_dir.join(STATUS_FILE).display());
    }
}

/// The image dir's status, if it has one (`Err`: there, but unreadable).
pub fn read(image_dir: &Path) -> Result<Option<Status>, String> {
    let path = image_dir.join(STATUS_FILE);
    match std::fs::read(&path) {
        Ok(b) if b.len() <= 1 << 20 => {
            serde_json::from_slice(&b).map(Some).map_err(|e| format!("{}: {e}", path.display()))
        }
        Ok(_) => Err(format!("{}: larger than 1 MiB", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn written_atomically_and_read_back() {
        let dir = TempDir::new("status");
        assert_eq!(read(&dir).unwrap(), None);
        let mut s = CheckpointStatus::new("final", "complete", SystemTime::now());
        s.id = Some("20261202T000000.000Z".into());
        s.size_bytes = Some(42);
        write(&dir, s.clone());
        let back = read(&dir).unwrap().unwrap();
        assert_eq!(back.last_checkpoint, s);
        assert!(!dir.join(format!(".{STATUS_FILE}.tmp")).exists());
        std::fs::write(dir.join(STATUS_FILE), "{").unwrap();
        assert!(read(&dir).is_err());
    }
}
