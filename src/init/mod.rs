//! crik's duties as PID 1: the app started as its child with only fds 0-2, signals forwarded to
//! it, every orphan reaped, and the app's exit status passed on.

pub mod app;
pub mod reaper;
pub mod supervisor;
