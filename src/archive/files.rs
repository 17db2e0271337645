//! Files that live outside the app's memory: `additionalPaths` are archived into the
//! checkpoint (modes, owners, times and symlinks kept) and put back before restore;
//! `inotifyIncompatiblePaths` are deleted before the dump.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::config::AbsPath;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot archive {path}: {source}")]
    Archive { path: PathBuf, source: io::Error },
    #[error("cannot restore files: {0}")]
    Extract(#[from] super::confined::ConfinedError),
    #[error("cannot delete {path}: {source}")]
    Delete { path: PathBuf, source: io::Error },
}

/// Deletes each path (file, symlink or whole directory); a missing path is fine.
pub fn delete_paths(paths: &[AbsPath]) -> Result<(), FilesError> {
    for p in paths {
        let p = p.as_path();
        let delete_err = |e| FilesError::Delete { path: p.to_path_buf(), source: e };
        match fs::symlink_metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(delete_err(e)),
            Ok(_) => super::remove(p).map_err(delete_err)?,
        }
        log::info!("deleted {} (inotifyIncompatiblePaths)", p.display());
    }
    Ok(())
}

/// Archives the paths that exist into `archive` (relative to `/`). Returns how many were
/// archived; missing paths are skipped with a log line.
pub fn archive_paths(paths: &[AbsPath], archive: &Path) -> Result<usize, FilesError> {
    let out = File::create(archive).map_err(|e| FilesError::Archive { path: archive.into(), source: e })?;
    let mut b = super::tar_builder(out);
    let mut n = 0;
    for p in paths {
        let p = p.as_path();
        let md = match fs::symlink_metadata(p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::info!("additional path {} does not exist, not archived", p.display());
                continue;
            }
            Err(e) => return Err(FilesError::Archive { path: p.into(), source: e }),
        };
        if md.is_dir() {
            for entry in walkdir::WalkDir::new(p).follow_links(false) {
                let entry = entry.map_err(|e| FilesError::Archive { path: p.into(), source: e.into() })?;
                append(&mut b, entry.path(), entry.file_type())?;
            }
        } else {
            append(&mut b, p, md.file_type())?;
        }
        n += 1;
    }
    let f = b.into_inner().map_err(|e| FilesError::Archive { path: archive.into(), source: e })?;
    f.sync_all().map_err(|e| FilesError::Archive { path: archive.into(), source: e })?;
    Ok(n)
}

/// Appends one entry (not a directory's contents) under its path relative to `/`. Unix sockets
/// are left out: they cannot be archived, and CRIU binds a listening socket anew at restore
/// (a leftover file at its path would make that bind fail).
fn append(b: &mut tar::Builder<File>, p: &Path, ty: std::fs::FileType) -> Result<(), FilesError> {
    use std::os::unix::fs::FileTypeExt;
    if ty.is_socket() {
        log::debug!("{} is a socket: not archived", p.display());
        return Ok(());
    }
    let rel = p.strip_prefix("/").unwrap_or(p);
    let r = if ty.is_dir() { b.append_dir(rel, p) } else { b.append_path_with_name(p, rel) };
    r.map_err(|e| FilesError::Archive { path: p.into(), source: e })
}

/// Unpacks an archive made by [`archive_paths`] under `root` (normally `/`), confined to
/// `scope` (see [`super::confined`]).
pub fn extract(archive: &Path, root: &Path, scope: &super::confined::Scope) -> Result<(), FilesError> {
    super::confined::extract(archive, root, scope)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn archive_and_extract_keep_modes_owners_and_symlinks() {
        let base = TempDir::new("files");
        let src = base.join("data");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/secret"), b"s3cret").unwrap();
        fs::set_permissions(src.join("sub/secret"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(src.join("sub/secret"), Some(1234), Some(4321)).unwrap();
        symlink("sub/secret", src.join("link")).unwrap();
        let single = base.join("single.txt");
        fs::write(&single, b"one").unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(src.join("sub/app.sock")).unwrap();

        let archive = base.join("files.tar");
        let paths = vec![
            AbsPath::new(&src).unwrap(),
            AbsPath::new(&single).unwrap(),
            AbsPath::new(base.join("missing")).unwrap(),
        ];
        assert_eq!(archive_paths(&paths, &archive).unwrap(), 2);

        let root = base.join("root");
        fs::create_dir_all(&root).unwrap();
        let scope = super::super::confined::Scope {
            roots: vec![src.clone(), single.clone()],
            excluded: vec![],
            keep_special_bits: true,
        };
        extract(&archive, &root, &scope).unwrap();
        let back = root.join(src.strip_prefix("/").unwrap());
        assert_eq!(fs::read(back.join("sub/secret")).unwrap(), b"s3cret");
        let md = fs::metadata(back.join("sub/secret")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        assert_eq!((md.uid(), md.gid()), (1234, 4321));
        assert_eq!(fs::read_link(back.join("link")).unwrap(), Path::new("sub/secret"));
        assert_eq!(fs::read(root.join(single.strip_prefix("/").unwrap())).unwrap(), b"one");
        assert!(!back.join("sub/app.sock").exists(), "sockets are left out (CRIU binds them anew)");

        delete_paths(&[AbsPath::new(&src).unwrap(), AbsPath::new(&single).unwrap()]).unwrap();
        assert!(!src.exists() && !single.exists());
    }
}
