//! The decisions around a checkpoint: whether SIGTERM means the node is going away
//! ([`nodestate`]), whether a final checkpoint fits the time left ([`plan`]), and the image
//! dir's record of the last outcome ([`status`]).

pub mod nodestate;
pub mod plan;
pub mod running;
pub mod startup;
pub mod status;
