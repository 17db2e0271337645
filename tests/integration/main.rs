//! crik's integration tests, in one test binary: the real crik binary as PID 1 with real CRIU,
//! real workloads, real containers (podman) and a real S3 server (s3s-fs). One module a topic.

mod common;

mod apps;
mod archives;
mod bundle;
mod checkpoint_restore;
mod cpu;
mod examples;
mod failures;
mod hooks;
mod inspect;
mod kube;
mod lease;
mod nodestate;
mod pid1;
mod plan;
mod podman;
mod remap;
mod rootfs;
mod sealed;
mod storage;
