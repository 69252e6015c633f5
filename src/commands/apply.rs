//! `apply`, `apply --dry-run` and `check`: bring the storages in line with the manifest, say
//! what that would take, or report how far they are. The three share the planner, so a dry run
//! prints the very plan that `apply` executes.

use std::time::Instant;

use serde::Serialize;

use super::Options;
use crate::deferred;
use crate::exit::Exit;
use crate::lock::Access;
use crate::manifest;
use crate::prepare::{Intent, execute, output, plan};
use crate::report;
use crate::root::Root;

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

#[derive(Serialize)]
struct Invalid<'a> {
    version: u32,
    command: &'a str,
    valid: bool,
    errors: &'a [String],
}

/// The validated manifest, or the exit after saying what is wrong with it.
fn load(options: &Options, run: Intent) -> Result<manifest::Manifest, Exit> {
    manifest::load(&options.manifest).map_err(|errors| {
        super::validate::report_invalid(options, &errors);
        if options.json {
            report::print_serialized(&Invalid {
                version: 1,
                command: run.command(),
                valid: false,
                errors: &errors,
            });
        }
        Exit::InvalidManifest
    })
}

fn run(options: &Options, run: Intent) -> Exit {
    let start = Instant::now();
    let manifest = match load(options, run) {
        Ok(manifest) => manifest,
        Err(exit) => return exit,
    };
    let root = match super::open_root(options, run.command()) {
        Ok(root) => root,
        Err(exit) => return exit,
    };
    let access = if run == Intent::Check {
        Access::Shared
    } else {
        Access::Exclusive
    };
    let lock = match super::lock(options, access, run.command()) {
        Ok(lock) => lock,
        Err(exit) => return exit,
    };
    let record = deferred::load(&options.state_dir).unwrap_or_else(|error| {
        log::warn!(
            "{}",
            super::output::record_error(&options.state_dir, &error)
        );
        deferred::Record::default()
    });
    let planner = plan::Planner::new(&root, &record);
    let (mut plan, _) = planner.plan(&manifest);
    let mut exit = Exit::Ok;
    if run == Intent::Apply {
        let mut executor = execute::Executor::new(&root);
        let outcomes = executor.execute(&plan);
        plan.settle(outcomes);
        if !save_pending(options, &root, record, &mut plan, executor.pending) {
            exit = Exit::Failed;
        }
    }
    // Output can block (a pager, a full pipe): no other run may wait for it.
    drop(lock);
    let exit = report(options, run, &plan, root.shown(), start, exit);
    // The process ends now: freeing thousands of small allocations one by one is work that
    // exit does for nothing.
    std::mem::forget(plan);
    std::mem::forget(manifest);
    exit
}

/// Records what still waits for its owner, under the lock; false when that failed.
fn save_pending(
    options: &Options,
    root: &Root,
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
    super::output::pending_marks_left(&deferred::settle_sides(
        root.fd(),
        &plan.deep_sides,
        &record,
    ));
    match saved {
        Ok(()) => true,
        Err(error) => {
            let message = super::output::record_error(&options.state_dir, &error);
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
    output::log_plan(run, plan, shown);
    let counts = output::Counts::of(run, plan);
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
