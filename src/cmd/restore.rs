//! `crik restore`: a checkpoint restored in the foreground, to debug it (the image dir's newest,
//! or storage's when newer); storage is left as it was.

use super::{
    check_criu, image_dir_arg, load_config, node_state_query, open_keys, open_remote, open_staging, open_store,
};
use super::{rootfs_upper, say_sealing, setup_process, Fatal};
use crate::cmd::cli::RestoreArgs;
use crate::config::Config;
use crate::lifecycle::running::{self, Context};
use crate::lifecycle::startup;

pub fn restore(args: RestoreArgs) -> Result<i32, Fatal> {
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
    let keys = open_keys(&config)?;
    let store = open_store(dir.as_path(), &config, keys.as_ref())?;
    check_criu(&signals)?;
    say_sealing(&config, keys.as_ref());
    let remote = open_remote(&config, keys.as_ref())?;
    let staging = open_staging(&config)?;
    let mut ckpt = startup::latest_checkpoint(&store).map_err(|e| Fatal::failed("cannot read image dir", e))?;
    let mut from = startup::Source::ImageDir;
    if let Some(remote) = &remote {
        // A debugging restore fetches storage's newest too, and leaves storage as it was.
        let local = ckpt.as_ref().map(|c| c.id.clone());
        match startup::from_storage(&store, remote, &config, staging.as_ref(), local.as_deref()) {
            Ok(startup::Pick::Downloaded(c, source)) => (ckpt, from) = (Some(c), source),
            Ok(startup::Pick::Local { .. }) => {}
            Err(e) => return Err(Fatal::failed(format!("cannot restore from {}", remote.url), e)),
        }
    }
    let ckpt = ckpt.ok_or_else(|| Fatal::failed("nothing to restore", format!("no complete checkpoint in {dir}")))?;
    let restored = startup::restore_from(&signals, &config, &store, &ckpt, from, staging.as_ref());
    if from != startup::Source::Memory {
        log::info!("CRIU's log: {}", ckpt.restore_log().display());
    }
    let r = restored.map_err(|e| Fatal::failed("restore failed", e))?;
    let _keep_open = r.keep_open;
    crate::lifecycle::hooks::after_restore(&signals, &config, &r.id, r.pid, &r.manifest);
    let ctx = Context {
        store: Some(&store),
        remote: remote.as_ref(),
        staging: staging.as_ref(),
        node_state: node_state.as_ref(),
    };
    Ok(running::supervise(&signals, &config, ctx, rootfs_upper.as_deref(), r.pid, &r.manifest.command))
}
