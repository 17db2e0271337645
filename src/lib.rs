//! crik: a PID-1 wrapper that checkpoints a container's process tree with CRIU on SIGTERM and
//! restores it on the next start.
//!
//! Data flows one way, top to bottom; no module reaches back up:
//!
//! ```text
//! cmd         the three commands (run, restore, inspect): thin, they wire the rest together
//!  ├ config   the configuration file, every value checked while parsing
//!  ├ init     PID-1 duties: the app as a child, signals forwarded, orphans reaped
//!  ├ lifecycle  decisions: which checkpoint to restore at start, what SIGTERM does (node state,
//!  │            checkpoint plan), the app's hooks and control dir, the status file
//!  ├ checkpoint  a running app → a published checkpoint (preflight, CRIU dump, archives)
//!  ├ restore     a checkpoint → the running app (verify, files re-pointed, CRIU restore)
//!  │   └ criu      CRIU itself: the swrk client, options, page server, images, CPU records
//!  │   └ archive   what is saved beside CRIU's images: additionalPaths, tmpfs files, rootfs diff
//!  ├ store     the image dir: staging, sealing, publishing, retiring, integrity
//!  └ remote    object storage: the lease (one writer per prefix), chunks, upload, download,
//!              garbage collection, S3, SigV4
//! host        facts about the machine: capabilities, cgroups, mounts, addresses, nftables tables
//! ```

mod archive;
mod checkpoint;
pub mod cmd;
pub mod config;
mod criu;
mod host;
mod init;
mod layout;
mod lifecycle;
mod remote;
mod restore;
mod seal;
mod sizes;
mod store;
#[cfg(test)]
mod testing;
