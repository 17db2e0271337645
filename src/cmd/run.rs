//! `crik run`: config → restore the newest checkpoint, or start the command → supervise → on
//! SIGTERM, checkpoint or pass it on.

use std::ffi::OsString;

use super::{
    check_criu, load_config, node_state_query, open_keys, open_remote, open_staging, open_store, rootfs_upper,
};
use super::{say_sealing, setup_process, Fatal};
use crate::cmd::cli::RunArgs;
use crate::init::app;
use crate::lifecycle::running::{self, Context};
use crate::lifecycle::startup;
use crate::restore::Restored;

pub fn run(args: RunArgs) -> Result<i32, Fatal> {
    let config = load_config(args.config)?;
    let node_state = node_state_query(&config)?;
    let rootfs_upper = rootfs_upper(&config)?;
    let signals = setup_process()?;
    let keys = open_keys(&config)?;
    let store = match &config.image_dir {
        Some(dir) => Some(open_store(dir.as_path(), &config, keys.as_ref())?),
        None => None,
    };
    if store.is_some() {
        check_criu(&signals)?;
    }
    say_sealing(&config, keys.as_ref());
    let remote = open_remote(&config, keys.as_ref())?;
    let staging = open_staging(&config)?;

    let can_start_fresh = !args.command.is_empty();
    let restored = startup::restore_newest(startup::Start {
        signals: &signals,
        config: &config,
        store: store.as_ref(),
        remote: remote.as_ref(),
        memory: staging.as_ref(),
        can_start_fresh,
    })?;

    if let Some(store) = &store {
        startup::release_network_locks(store, remote.as_ref());
    }
    let (app, command, _keep_open) = match restored {
        Some(Restored { id, pid, manifest, keep_open }) => {
            crate::lifecycle::hooks::after_restore(&signals, &config, &id, pid, &manifest);
            (pid, manifest.command, keep_open)
        }
        None => {
            if args.command.is_empty() {
                return Err(Fatal::Usage(
                    "no command given and no checkpoint to restore\nusage: crik run [--config PATH] -- CMD [ARGS...]"
                        .into(),
                ));
            }
            // In a PID namespace of its own the app's PIDs are free at any restore.
            if !config.isolate_pids {
                app::reserve_low_pids();
            }
            let isolation = app::Isolation { ipc: config.isolate_ipc, pids: config.isolate_pids };
            let pid = app::spawn_app(&signals, &args.command, isolation)?;
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
    Ok(running::supervise(&signals, &config, ctx, rootfs_upper.as_deref(), app, &command))
}

fn to_strings(v: &[OsString]) -> Vec<String> {
    v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
}
