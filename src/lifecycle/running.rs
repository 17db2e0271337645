//! While the app runs: periodic checkpoints (`checkpointInterval`), and what a SIGTERM does:
//! ask whether the node is going away, fit the final checkpoint into what is left of
//! `checkpointBudget` (or keep the newest periodic one), checkpoint, and exit or pass the signal
//! on. When the app exits on its own, this run's periodic checkpoints are retired: its state
//! ended with it.

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::checkpoint::{self, CheckpointError, Target};
use crate::config::{Config, OnHookFailure, OnNodeStateError};
use crate::init::app;
use crate::init::supervisor::{self, Periodic, Signals, TermAction};
use crate::lifecycle::hooks::{self, Moment};
use crate::lifecycle::nodestate::{Answer, Query};
use crate::lifecycle::plan::{self, Cost, Decision};
use crate::lifecycle::status::CheckpointStatus;
use crate::remote::Remote;
use crate::store::staging::MemoryStaging;
use crate::store::Store;

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
pub struct Context<'a> {
    pub store: Option<&'a Store>,
    pub remote: Option<&'a Remote>,
    pub staging: Option<&'a MemoryStaging>,
    pub node_state: Option<&'a Query>,
}

/// Supervises until the app exits or a SIGTERM checkpoint completes.
pub fn supervise(
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
        generation: store.map_or(1, |s| s.next_generation()),
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
        // The app's turn first (its time counts against the budget, measured below).
        if !before_checkpoint(signals, config, "final", pid) {
            log::warn!("no final checkpoint (hooks.onPreCheckpointFailure: skip); passing SIGTERM on to the app");
            saved = Some(Saved::Failed);
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
                        hooks::withdraw(config, hooks::CHECKPOINTING);
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
                after_failure(signals, config, "final", pid, &e);
                TermAction::Exit(1)
            }
            Err(e) => {
                log::error!(event = "checkpoint_failed"; "checkpoint failed: {e}");
                log::warn!("the app keeps running; passing SIGTERM on so it can shut down cleanly");
                hooks::withdraw(config, hooks::CHECKPOINTING);
                after_failure(signals, config, "final", pid, &e);
                saved = Some(Saved::Failed);
                TermAction::Forward
            }
        }
    };
    let mut periodic_run = |pid| {
        let Some(store) = store else { return };
        if config.hooks.before_periodic && !before_checkpoint(signals, config, "periodic", pid) {
            log::warn!("no periodic checkpoint this time (hooks.onPreCheckpointFailure: skip)");
            hooks::withdraw(config, hooks::CHECKPOINTING);
            return;
        }
        let deadline = config.checkpoint_timeout;
        let target = target_of(pid, true, deadline);
        let taken = checkpoint::checkpoint(signals, store, &target);
        hooks::withdraw(config, hooks::CHECKPOINTING);
        match taken {
            Ok(t) => {
                periodic_taken.borrow_mut().push(t.id);
                history.borrow_mut().insert(0, t.cost);
            }
            Err(CheckpointError::Upload { id, url, source, kept }) => {
                // Kept in the image dir all the same (as a rule): one of this run's checkpoints.
                log::error!(event = "checkpoint_failed", kind = "periodic", uploaded = false, id = id.as_str();
                    "periodic checkpoint {id} was not uploaded to {url} (the app keeps running): {source}; {kept}");
                after_failure(signals, config, "periodic", pid, &source);
                periodic_taken.borrow_mut().push(id);
            }
            Err(e) => {
                log::error!(event = "checkpoint_failed", kind = "periodic";
                    "periodic checkpoint failed (the app keeps running): {e}");
                after_failure(signals, config, "periodic", pid, &e);
            }
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

/// Before a checkpoint: `checkpointing` in the control dir, then the preCheckpoint hook.
/// `false`: the hook failed and `hooks.onPreCheckpointFailure` says to skip the checkpoint.
fn before_checkpoint(signals: &Signals, config: &Config, kind: &str, app: nix::unistd::Pid) -> bool {
    hooks::announce(config, hooks::CHECKPOINTING, &hooks::checkpointing(kind));
    let vars = [("CRIK_CHECKPOINT_KIND", kind.to_string()), ("CRIK_APP_PID", app.to_string())];
    if hooks::run(signals, config, Moment::PreCheckpoint, &vars) {
        return true;
    }
    match config.hooks.on_pre_checkpoint_failure {
        OnHookFailure::Checkpoint => {
            log::warn!("checkpointing anyway (hooks.onPreCheckpointFailure: checkpoint)");
            true
        }
        OnHookFailure::Skip => false,
    }
}

/// After a failed checkpoint: the checkpointFailed hook, told why.
fn after_failure(signals: &Signals, config: &Config, kind: &str, app: nix::unistd::Pid, e: &dyn std::fmt::Display) {
    let vars =
        [("CRIK_CHECKPOINT_KIND", kind.to_string()), ("CRIK_APP_PID", app.to_string()), ("CRIK_ERROR", e.to_string())];
    hooks::run(signals, config, Moment::CheckpointFailed, &vars);
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
