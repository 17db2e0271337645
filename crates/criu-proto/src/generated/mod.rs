// @generated

pub mod core;
pub mod cpuinfo;
pub mod fdinfo;
pub mod inventory;
pub mod mm;
pub mod pagemap;
pub mod pipe;
pub mod pstree;
pub mod regfile;
pub mod rpc;
pub mod sk_inet;
pub mod sk_unix;
