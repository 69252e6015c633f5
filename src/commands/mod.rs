//! One file per command. Each `run` takes the parsed [`Options`] and returns the [`Exit`] that
//! `main` hands to the process; the domain modules never see the command line.

pub mod apply;
pub mod finish;
pub mod validate;

use std::path::PathBuf;

use serde::Serialize;

use crate::escape;
use crate::exit::Exit;
use crate::report;
use crate::root::Root;

/// What a subcommand was asked to do, after argument parsing.
pub struct Options {
    pub manifest: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub json: bool,
}

/// The document a command prints with `--json` when it could not even start.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedStart<'a> {
    version: u32,
    command: &'a str,
    error: String,
    fix: &'a str,
}

/// Opens the root every path is resolved from, or says why not (in JSON too, when asked).
fn open_root(options: &Options, command: &str) -> Result<Root, Exit> {
    Root::open(&options.root).map_err(|errno| {
        let error = format!(
            "cannot open the root {}: {}",
            escape::bytes(options.root.as_os_str().as_encoded_bytes()),
            report::errno_words(errno)
        );
        let fix = "pass the mounted real root with --root (in the initrd it is /sysroot)";
        log::error!("{error}; fix: {fix}");
        if options.json {
            report::print_serialized(&FailedStart {
                version: 1,
                command,
                error,
                fix,
            });
        }
        Exit::Failed
    })
}
