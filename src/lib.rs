//! crik: a PID-1 wrapper that checkpoints a container's process tree with CRIU on SIGTERM and
//! restores it on the next start.
//!
//! Data flows one way: [`config`] → decision ([`run`]) → [`criu`] → [`store`].

pub mod app;
pub mod caps;
pub mod cgroup;
pub mod checkpoint;
pub mod chunks;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod criu;
pub mod files;
pub mod host;
pub mod image_types;
pub mod images;
pub mod inspect;
pub mod integrity;
pub mod logging;
pub mod manifest;
pub mod mountinfo;
pub mod nodestate;
pub mod pageserver;
pub mod plan;
pub mod preflight;
pub mod remap;
pub mod remote;
pub mod restore;
pub mod rootfs;
pub mod run;
pub mod s3;
pub mod sigv4;
pub mod sizes;
pub mod staging;
pub mod status;
pub mod store;
pub mod supervisor;
