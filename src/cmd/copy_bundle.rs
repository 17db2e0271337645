//! `crik copy-bundle DEST`: copies the bundle crik runs from (its `bin/` and `lib/`, see
//! scripts/bundle/build_bundle.py) into DEST. For Kubernetes without rebuilding the app's image:
//! an init container of the `crik` image (which has no shell, no `cp`) fills an `emptyDir` that
//! the app container mounts at /opt/crik.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Fatal;

pub fn copy_bundle(dest: &Path) -> Result<i32, Fatal> {
    crate::cmd::logging::init(crate::cmd::logging::LogFormat::default());
    let exe = std::env::current_exe().map_err(|e| Fatal::failed("cannot find crik's own binary", e))?;
    let root = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    if !root.join("bin").join(crate::criu::CRIU_BIN).is_file() || !root.join("lib").is_dir() {
        return Err(Fatal::failed(
            "nothing to copy",
            format!("crik runs from {}, which is not a bundle (bin/criu and lib/ beside it)", exe.display()),
        ));
    }
    if !dest.is_dir() {
        return Err(Fatal::failed("cannot copy the bundle", format!("{} is not a directory", dest.display())));
    }
    let (mut files, mut bytes) = (0usize, 0u64);
    for entry in walkdir::WalkDir::new(&root).min_depth(1) {
        let entry = entry.map_err(|e| Fatal::failed("cannot read the bundle", e))?;
        let rel = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        let to: PathBuf = dest.join(rel);
        let mode = entry.metadata().map_err(|e| Fatal::failed("cannot read the bundle", e))?.permissions().mode();
        if entry.file_type().is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode & 0o7777)
                .create(&to)
                .map_err(|e| Fatal::failed(format!("cannot create {}", to.display()), e))?;
        } else if entry.file_type().is_file() {
            bytes += fs::copy(entry.path(), &to)
                .map_err(|e| Fatal::failed(format!("cannot copy to {}", to.display()), e))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| Fatal::failed(format!("cannot chmod {}", to.display()), e))?;
            files += 1;
        }
    }
    log::info!(
        "copied the bundle ({files} files, {}) from {} to {}",
        crate::sizes::human(bytes),
        root.display(),
        dest.display()
    );
    Ok(0)
}
