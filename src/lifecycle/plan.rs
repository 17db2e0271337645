//! Does a final checkpoint fit the notice? Between SIGTERM and SIGKILL a spot node gives 2
//! minutes (AWS), 30 s (Azure), 15 s (GKE Spot pods). A dump killed half-way saves nothing,
//! while the newest periodic checkpoint is already safe on the volume: when the final one
//! cannot finish within `checkpointBudget`, keeping the periodic one is the better bet.
//!
//! What a checkpoint of this app costs is learned from its earlier ones (CRIU's dump plus
//! sealing, the app's memory then, and the upload to object storage): for each of the last
//! three, its dump time scaled by how much more memory the app holds now (never scaled down: the
//! fixed part of a dump does not shrink), and the slowest of them; plus the newest one's upload,
//! which sent what changed in one interval, as much as a final one after it sends.

use std::time::Duration;

use crate::store::manifest::Manifest;

/// How many recent checkpoints the estimate looks at.
const HISTORY: usize = 3;

/// What one checkpoint cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// CRIU's dump and the sealing.
    pub dump_millis: u64,
    pub seal_millis: u64,
    /// The app tree's anonymous memory then.
    pub memory: u64,
    /// The upload to object storage, when there was one.
    pub upload_millis: Option<u64>,
}

impl Cost {
    pub fn of(m: &Manifest, upload_millis: Option<u64>) -> Cost {
        Cost { dump_millis: m.dump_millis, seal_millis: m.seal_millis, memory: m.app_memory_bytes, upload_millis }
    }
}

/// The estimated time of a checkpoint of an app holding `memory` bytes, from `history`
/// (newest first); `None` before any checkpoint recorded its cost. `uploads`: whether this
/// one is uploaded too.
pub fn estimate(history: &[Cost], memory: u64, uploads: bool) -> Option<Duration> {
    let known: Vec<&Cost> = history.iter().filter(|c| c.memory > 0 && c.dump_millis > 0).take(HISTORY).collect();
    let dump = known
        .iter()
        .map(|c| {
            Duration::from_millis(c.dump_millis + c.seal_millis).mul_f64((memory as f64 / c.memory as f64).max(1.0))
        })
        .max()?;
    let upload = match uploads {
        true => known.iter().find_map(|c| c.upload_millis).map(Duration::from_millis).unwrap_or_default(),
        false => Duration::ZERO,
    };
    Some(dump + upload)
}

/// What to do with a SIGTERM when the final checkpoint has `left` of its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Dump, with this deadline for CRIU.
    Dump { deadline: Duration },
    /// Keep periodic checkpoint `id` instead: the final one would take about `estimate`.
    KeepPeriodic { id: String, estimate: Duration },
    /// It will probably not fit, but there is nothing to fall back on: try anyway.
    DumpAnyway { deadline: Duration, estimate: Duration },
}

pub fn decide(left: Duration, timeout: Duration, estimate: Option<Duration>, periodic: Option<&str>) -> Decision {
    let deadline = left.min(timeout);
    match (estimate, periodic) {
        (Some(e), Some(id)) if e > left => Decision::KeepPeriodic { id: id.to_string(), estimate: e },
        (Some(e), None) if e > left => Decision::DumpAnyway { deadline, estimate: e },
        _ => Decision::Dump { deadline },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(dump: u64, seal: u64, mem: u64) -> Cost {
        Cost { dump_millis: dump, seal_millis: seal, memory: mem, upload_millis: None }
    }

    #[test]
    fn estimates_scale_with_memory_take_the_slowest_and_need_history() {
        assert_eq!(estimate(&[], 1 << 30, false), None);
        assert_eq!(estimate(&[m(0, 0, 0)], 1 << 30, false), None, "older manifests without the cost");
        let gib = 1u64 << 30;
        // 1 s for 1 GiB: 2 GiB take 2 s; 0.5 GiB still 1 s.
        assert_eq!(estimate(&[m(900, 100, gib)], 2 * gib, false), Some(Duration::from_secs(2)));
        assert_eq!(estimate(&[m(900, 100, gib)], gib / 2, false), Some(Duration::from_secs(1)));
        // The slowest of the last three; a fourth (older) is not looked at.
        let h = [m(500, 0, gib), m(1500, 0, gib), m(800, 0, gib), m(9000, 0, gib)];
        assert_eq!(estimate(&h, gib, false), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn an_upload_adds_the_newest_known_upload_time() {
        let gib = 1u64 << 30;
        let up = |ms| Cost { upload_millis: Some(ms), ..m(1000, 0, gib) };
        // Newest first: the first full upload (9 s) is older than the incremental one (2 s).
        let h = [m(1000, 0, gib), up(2000), up(9000)];
        assert_eq!(estimate(&h, gib, true), Some(Duration::from_secs(3)));
        assert_eq!(estimate(&h, gib, false), Some(Duration::from_secs(1)), "no storage: no upload");
        assert_eq!(estimate(&[m(1000, 0, gib)], gib, true), Some(Duration::from_secs(1)), "none known yet");
    }

    #[test]
    fn keeps_the_periodic_checkpoint_only_when_the_final_one_would_not_fit() {
        let (s, t) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(decide(15 * s, t, Some(10 * s), Some("p")), Decision::Dump { deadline: 15 * s });
        assert_eq!(decide(15 * s, t, None, Some("p")), Decision::Dump { deadline: 15 * s }, "nothing learned yet");
        assert_eq!(
            decide(15 * s, t, Some(20 * s), Some("p")),
            Decision::KeepPeriodic { id: "p".into(), estimate: 20 * s }
        );
        assert_eq!(decide(15 * s, t, Some(20 * s), None), Decision::DumpAnyway { deadline: 15 * s, estimate: 20 * s });
        assert_eq!(decide(600 * s, t, None, None), Decision::Dump { deadline: t }, "checkpointTimeout still bounds it");
    }
}
