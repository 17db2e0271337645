//! What a checkpoint holds beside CRIU's images, archived while CRIU keeps the dumped tree
//! frozen and put back before the restore: `additionalPaths` and the app's files on tmpfs
//! mounts ([`files`]), and the container's writable layer ([`rootfs`]).

pub mod files;
pub mod rootfs;
