//! One file per command. Each `run` takes the parsed [`Options`] and returns the [`Exit`] that
//! `main` hands to the process; the domain modules never see the command line.

pub mod apply;
pub mod finish;
pub(crate) mod output;
pub mod validate;

use std::path::PathBuf;

use crate::exit::Exit;
use crate::lock::{self, Access, Lock};
use crate::root::Root;

/// What a subcommand was asked to do, after argument parsing.
pub struct Options {
    pub manifest: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub json: bool,
}

/// Opens the root every path is resolved from, or says why not (in JSON too, when asked).
fn open_root(options: &Options, command: &'static str) -> Result<Root, Exit> {
    Root::open(&options.root).map_err(|errno| {
        output::root_unopened(options, command, errno);
        Exit::Failed
    })
}

/// Takes the lock of the runs that share the state directory. `apply` and `finish` wait for it within a bound
/// and fail after it; `check` never waits, and goes on without it when it cannot have it, as
/// every command does on a file system that keeps no locks.
fn lock(options: &Options, access: Access, command: &str) -> Result<Lock, Exit> {
    let waited = lock::timeout();
    match lock::take(&options.state_dir, access, waited, |event| {
        output::lock_event(&event, access, waited);
    }) {
        Ok(Some(held)) => Ok(held),
        Ok(None) => Ok(lock::none()),
        Err(problem) => {
            let go_on =
                access == Access::Shared || matches!(problem, lock::Problem::Unsupported { .. });
            output::lock_problem(&problem, options, command, go_on);
            if go_on {
                Ok(lock::none())
            } else {
                Err(Exit::Failed)
            }
        }
    }
}
