//! Host mode: find and prune what microvm.nix leaves behind (`persist-prep microvm ...`).
//!
//! Placeholder until the host-mode work lands; `main` already dispatches here.

use crate::exit::Exit;

/// Entry point for `persist-prep microvm ARGS...`.
pub fn main(args: &[String]) -> Exit {
    let _ = args;
    eprintln!("persist-prep microvm: not implemented yet");
    Exit::Usage
}
