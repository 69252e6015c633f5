//! The words for problems a command meets before its own work: the root that cannot be
//! opened, and the lock.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use serde::Serialize;

use super::Options;
use crate::deferred::{self, RecordError, WriteOp};
use crate::escape;
use crate::lock::{Access, Event, Holders, Problem};
use crate::report;

/// The document a command prints with `--json` when it could not even start.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedStart<'a> {
    version: u32,
    command: &'a str,
    error: String,
    fix: &'a str,
}

pub fn root_unopened(options: &Options, command: &str, errno: Errno) {
    let error = format!(
        "cannot open the root {}: {}",
        escape::bytes(options.root.as_os_str().as_encoded_bytes()),
        report::errno_words(errno)
    );
    let fix = "pass the mounted real root with --root (in the initrd it is /sysroot)";
    log::error!("{error}; fix: {fix}");
    failed_start(options, command, error, fix);
}

/// With `--json`, the one document of a command that stops before its own work.
pub fn failed_start(options: &Options, command: &str, error: String, fix: &str) {
    if options.json {
        report::print_serialized(&FailedStart {
            version: 1,
            command,
            error,
            fix,
        });
    }
}

/// `pid 812 (persist-prep), pid 813`, or words for no holder found.
fn holders_text(holders: &Holders) -> String {
    let holders = match holders {
        Holders::Named(holders) => holders,
        Holders::Unseen => {
            return "a process that /proc/locks does not show here (one in another pid namespace, or one that just let go)".into();
        }
        Holders::NoProc => {
            return "a process that cannot be named without /proc (mount /proc to see who)".into();
        }
    };
    let named: Vec<String> = holders
        .iter()
        .map(|h| match &h.command {
            Some(command) => format!("pid {} ({})", h.pid, escape::text(command)),
            None => format!("pid {}", h.pid),
        })
        .collect();
    named.join(", ")
}

pub fn lock_event(event: &Event, access: Access, timeout: Duration) {
    let Event::Busy { holders } = event;
    let who = holders_text(holders);
    match access {
        Access::Exclusive => log::info!(
            "waiting for another persist-prep run to finish (the lock is held by {who}); at most {} s",
            timeout.as_secs()
        ),
        Access::Shared => log::warn!(
            "another persist-prep run is changing the tree (the lock is held by {who}); this report may be out of date soon"
        ),
    }
}

/// Says what went wrong with the lock; `go_on` when the run goes on without it, else (with
/// `--json`) in the command's one document too.
pub fn lock_problem(problem: &Problem, options: &Options, command: &str, go_on: bool) {
    let dir = escape::bytes(options.state_dir.as_os_str().as_encoded_bytes());
    let file = format!("{dir}/{}", crate::lock::FILE);
    let (what, fix) = match problem {
        Problem::Open { op, errno } => (
            format!("cannot {op} the lock {file}: {}", report::errno_words(*errno)),
            format!(
                "make {dir} a directory that root can write to (it is normally on the /run tmpfs), or pass another with --state-dir"
            ),
        ),
        Problem::UnsafeDir { uid, mode } => (
            format!(
                "the state directory {dir} is owned by uid {uid} with mode {mode:04o}, so others could take or replace its lock"
            ),
            format!("chown root {dir} && chmod go-w {dir}"),
        ),
        Problem::UnsafeFile => (
            format!("the lock {file} is not a regular file that root owns"),
            format!("remove {file}; persist-prep makes it anew"),
        ),
        Problem::Timeout { waited, holders } => (
            format!(
                "another run held the lock {file} for {} s: {}",
                waited.as_secs(),
                holders_text(holders)
            ),
            "wait for that run to finish, or stop it if it hangs; PERSIST_PREP_LOCK_TIMEOUT (seconds) sets how long a run waits".into(),
        ),
        Problem::Unsupported { errno } => (
            format!(
                "the file system of {file} keeps no locks ({})",
                report::errno_words(*errno)
            ),
            "put --state-dir on a file system with locks (such as the /run tmpfs); until then two runs at once are not kept apart".to_owned(),
        ),
        Problem::Lock { errno } => (
            format!("cannot lock {file}: {}", report::errno_words(*errno)),
            report::errno_fix(*errno).to_owned(),
        ),
    };
    if go_on {
        log::warn!("{what}; going on without the lock. Fix: {fix}");
    } else {
        log::error!("{what}; nothing was done. Fix: {fix}");
        failed_start(options, command, what, &fix);
    }
}

/// The deferred-owner record's problem in words, with its fix.
pub fn record_error(state_dir: &Path, error: &RecordError) -> String {
    let dir = escape::bytes(state_dir.as_os_str().as_encoded_bytes());
    let file = escape::bytes(deferred::path(state_dir).as_os_str().as_encoded_bytes());
    let read_fix = "remove it and run `persist-prep apply` again";
    match error {
        RecordError::Read(errno) => format!(
            "cannot read the deferred-owner record {file}: {}; fix: {read_fix}",
            report::errno_words(*errno)
        ),
        RecordError::NotAFile => format!(
            "cannot read the deferred-owner record {file}: it is not a regular file; fix: {read_fix}"
        ),
        RecordError::UnsafeDir { uid, mode } => format!(
            "did not read the deferred-owner record {file}: its directory is owned by uid {uid} with mode {mode:04o}, so anyone could have written it; fix: chown root {dir} && chmod go-w {dir}"
        ),
        RecordError::Invalid(why) => format!(
            "cannot read the deferred-owner record {file}: {}; fix: {read_fix}",
            escape::text(why)
        ),
        RecordError::Write { op, errno } => {
            let what = match op {
                WriteOp::Remove => "remove",
                WriteOp::CreateDir => "create the directory for",
                WriteOp::OpenDir => "open the directory for",
                WriteOp::Write => "write",
            };
            format!(
                "cannot {what} the deferred-owner record {file}: {}; fix: make {dir} a writable directory (it is normally on the /run tmpfs)",
                report::errno_words(*errno)
            )
        }
    }
}

/// A side whose pending mark stays although nothing waits there any more.
pub fn pending_marks_left(left: &[(Option<String>, Errno)]) {
    for (side, errno) in left {
        log::warn!(
            "cannot remove the pending mark of {}: {}; the next boot looks for deferred owners there once more",
            escape::text(side.as_deref().unwrap_or("/")),
            report::errno_words(*errno)
        );
    }
}
