//! `apply`, `apply --dry-run` and `check`: bring the storages in line with the manifest, say
//! what that would take, or report how far they are.
//!
//! The manifest flows one way: it is validated whole (`manifest`), the planner reads the tree
//! and returns the plan (`plan`, after `volume` has checked each storage's volume), the
//! executor carries it out (`execute`, `apply` only), and the report prints it (`output`).
//! So a dry run prints the very plan that `apply` executes.

mod execute;
mod output;
mod plan;
mod volume;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::Options;
use crate::deferred;
use crate::escape;
use crate::exit::Exit;
use crate::fs;
use crate::manifest;
use crate::report;
use output::Counts;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    Apply,
    DryRun,
    Check,
}

pub fn apply(options: &Options) -> Exit {
    run(
        options,
        if options.dry_run {
            Intent::DryRun
        } else {
            Intent::Apply
        },
    )
}

pub fn check(options: &Options) -> Exit {
    run(options, Intent::Check)
}

/// How paths under the root are shown: `/sysroot/nix/persist`, or `/nix/persist` for `/`.
pub fn root_display(root: &Path) -> String {
    let text = escape::bytes(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str()));
    text.trim_end_matches('/').to_owned()
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
pub fn open_root(root: &Path, command: &str, json: bool) -> Option<OwnedFd> {
    fs::open_root(root)
        .map_err(|errno| {
            let error = format!(
                "cannot open the root {}: {}",
                escape::bytes(std::os::unix::ffi::OsStrExt::as_bytes(root.as_os_str())),
                report::errno_words(errno)
            );
            let fix = "pass the mounted real root with --root (in the initrd it is /sysroot)";
            log::error!("{error}; fix: {fix}");
            if json {
                report::print_serialized(&FailedStart {
                    version: 1,
                    command,
                    error,
                    fix,
                });
            }
        })
        .ok()
}

/// Serialises runs on one root, so that a double start cannot interleave two plans or lose
/// a record. A run that finds the lock taken says so and waits.
pub fn lock_root(root: BorrowedFd<'_>, shown: &str, exclusive: bool) -> Option<OwnedFd> {
    let fail = |errno| {
        log::error!(
            "cannot lock the root {shown}: {}; fix: {}",
            report::errno_words(errno),
            report::errno_fix(errno)
        );
    };
    match fs::lock(root, exclusive, false) {
        Ok(Some(lock)) => return Some(lock),
        Ok(None) => {}
        Err(errno) => {
            fail(errno);
            return None;
        }
    }
    if !exclusive {
        log::warn!(
            "another persist-prep run is changing {shown}; this report may be out of date soon"
        );
        return fs::reopen(root).ok();
    }
    log::info!("waiting for another persist-prep run on {shown} to finish");
    match fs::lock(root, true, true) {
        Ok(lock) => lock,
        Err(errno) => {
            fail(errno);
            None
        }
    }
}

pub fn command_name(run: Intent) -> &'static str {
    if run == Intent::Check {
        "check"
    } else {
        "apply"
    }
}

fn run(options: &Options, run: Intent) -> Exit {
    let start = Instant::now();
    let manifest = match manifest::load(&options.manifest) {
        Ok(manifest) => manifest,
        Err(errors) => {
            manifest::report_invalid(options, &errors);
            if options.json {
                report::print_serialized(&Invalid {
                    version: 1,
                    command: command_name(run),
                    valid: false,
                    errors: &errors,
                });
            }
            return Exit::InvalidManifest;
        }
    };
    let Some(root) = open_root(&options.root, command_name(run), options.json) else {
        return Exit::Failed;
    };
    let shown = root_display(&options.root);
    let Some(_lock) = lock_root(root.as_fd(), &shown, run != Intent::Check) else {
        return Exit::Failed;
    };
    let record = deferred::load(&options.state_dir).unwrap_or_else(|message| {
        log::warn!("{message}");
        deferred::Record::default()
    });
    let planner = plan::Planner::new(root.as_fd(), shown.clone(), &record);
    let (mut plan, _) = planner.plan(&manifest);
    let mut exit = Exit::Ok;
    if run == Intent::Apply {
        let mut executor = execute::Executor::new(root.as_fd(), shown.clone());
        executor.execute(&mut plan);
        if !save_pending(options, root.as_fd(), record, &mut plan, executor.pending) {
            exit = Exit::Failed;
        }
    }
    let exit = report(options, run, &plan, &shown, start, exit);
    // The process ends now: freeing thousands of small allocations one by one is work that
    // exit does for nothing.
    std::mem::forget(plan);
    std::mem::forget(manifest);
    exit
}

#[derive(Serialize)]
struct Invalid<'a> {
    version: u32,
    command: &'a str,
    valid: bool,
    errors: &'a [String],
}

/// Records what still waits for its owner, under the lock; false when that failed.
fn save_pending(
    options: &Options,
    root: BorrowedFd<'_>,
    mut record: deferred::Record,
    plan: &mut plan::Plan<'_>,
    made: Vec<deferred::Pending>,
) -> bool {
    let found = std::mem::take(&mut plan.pending);
    let gave = plan
        .storages
        .iter()
        .flat_map(|s| &s.entries)
        .any(|e| e.state == plan::EntryState::Finished);
    if made.is_empty()
        && found.is_empty()
        && plan.deep_sides.is_empty()
        && plan.marks_left.is_empty()
        && !gave
    {
        return true;
    }
    // A marked directory the manifest no longer lets have its owner waits for nothing.
    for left in &plan.marks_left {
        record
            .pending
            .retain(|p| !(p.storage == left.storage && p.path == left.path));
    }
    // Directories this run gave their owner need no finishing any more.
    for s in &plan.storages {
        for a in s.entries.iter().flat_map(|e| &e.actions) {
            if a.kind == plan::ActionKind::GiveOwner {
                let storage = (a.dir.side == plan::Side::Storage).then(|| s.storage.path.clone());
                record
                    .pending
                    .retain(|p| !(p.storage == storage && p.path == a.dir.path));
            }
        }
    }
    deferred::merge(&mut record, found);
    deferred::merge(&mut record, made);
    let saved = deferred::save(&options.state_dir, &record);
    deferred::settle_sides(root, &plan.deep_sides, &record);
    match saved {
        Ok(()) => true,
        Err(message) => {
            log::error!("{message}; the deferred owners will not be finished");
            false
        }
    }
}

fn report(
    options: &Options,
    run: Intent,
    plan: &plan::Plan<'_>,
    shown: &str,
    start: Instant,
    exit: Exit,
) -> Exit {
    for s in &plan.storages {
        if let Some(message) = output::storage_message(s, shown) {
            match (&s.state, run) {
                (plan::StorageState::Missing, Intent::DryRun) => log::info!(
                    "would create storage directory {shown}{} (root:root 0755)",
                    escape::text(&s.storage.path)
                ),
                (plan::StorageState::Missing, _) | (_, Intent::Check) => log::debug!("{message}"),
                _ => log::error!("{message}"),
            }
        }
        for e in &s.entries {
            output::log_entry(run, e, &s.storage.path, shown);
        }
    }
    for left in &plan.marks_left {
        output::log_mark_left(run, left);
    }
    let counts = Counts::of(run, plan);
    let elapsed = report::Elapsed::since(start);
    if run == Intent::Check && !options.json {
        output::print_table(plan, shown);
    }
    counts.log(run, elapsed);
    if options.json {
        report::print_serialized(&output::document(
            run,
            &options.manifest,
            plan,
            &counts,
            elapsed,
            shown,
        ));
    }
    if counts.failed(run) {
        Exit::Failed
    } else {
        exit
    }
}
