//! What a checkpoint holds beside CRIU's images, archived while CRIU keeps the dumped tree
//! frozen and put back before the restore: `additionalPaths` and the app's files on tmpfs
//! mounts ([`files`]), and the container's writable layer ([`rootfs`]); put back confined to
//! where each belongs ([`confined`]).

pub mod confined;
pub mod files;
pub mod rootfs;

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// A tar archive being written: symlinks archived as links (never followed out of the tree),
/// full metadata (modes, owners, times) so that what is put back is what was there.
fn tar_builder(out: File) -> tar::Builder<File> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b
}

/// Removes a file, symlink or whole directory; a missing path is fine.
fn remove(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
    }
}
