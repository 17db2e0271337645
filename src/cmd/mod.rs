//! crik's commands: `run` (PID 1: restore or start the app, checkpoint on SIGTERM), `restore`
//! (a checkpoint into the foreground, for debugging), `inspect` (what a checkpoint holds).

pub mod cli;
pub mod inspect;
pub mod logging;
pub mod run;
