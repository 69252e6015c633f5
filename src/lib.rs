//! persist-prep: create the missing sources of impermanence bind mounts from the initrd, and prune
//! what microvm.nix leaves behind on hosts.
//!
//! The binary (`main.rs`) only parses arguments and maps outcomes to exit codes; each command
//! lives in `commands`, the domain in the modules below it. The main line is
//! validate (`manifest`) → resolve owners (`owner`) → plan → execute → output (`prepare`).

pub mod commands;
mod deferred;
pub mod escape;
pub mod exit;
mod fs;
mod lock;
mod manifest;
#[cfg(feature = "microvm")]
pub mod microvm;
mod mode;
mod owner;
mod prepare;
pub mod report;
mod root;

pub use commands::Options;
