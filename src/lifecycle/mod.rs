//! The decisions around a checkpoint: whether SIGTERM means the node is going away
//! ([`nodestate`]), whether a final checkpoint fits the time left ([`plan`]), the app's own
//! part before and after ([`hooks`]), and the image dir's record of the last outcome
//! ([`status`]).

pub mod hooks;
pub mod nodestate;
pub mod plan;
pub mod running;
pub mod startup;
pub mod status;
