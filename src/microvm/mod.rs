//! Host mode: find and prune what microvm.nix leaves behind (`persist-prep microvm ...`).
//!
//! `status` scans and classifies (read-only); `prune` turns the same scan into a plan, prints it
//! and, unless `--dry-run`, carries it out, so the dry run shows exactly what a real run does.
//!
//! The rules, and why:
//! - A VM is *declared* (named by `--manifest`/`--declared`), *imperative* (its state directory
//!   has `flake` and no `toplevel`, as `microvm -c` leaves it) or *orphaned* (anything else that
//!   names it). Names are used verbatim: microvm.nix's templates use `%i`, so a name that systemd
//!   would have to escape cannot be a working VM; it is an error and left alone.
//! - Orphans lose their enablement links, instance unit files and drop-ins in the writable unit
//!   directories, and their GC roots (symlinks). Shared templates go only when no declared,
//!   imperative or unclassifiable VM is left. Anything under `/nix/store` or on a read-only mount
//!   is reported as managed by the NixOS configuration and never touched.
//! - State directories hold disks: only `--purge-state NAME` deletes one, and any bad name there
//!   (declared, missing, unclassifiable, running without `--stop`) aborts before any change.
//! - systemd and `ip` are used only when `--root` is this system's `/` and systemd runs: failed
//!   orphan units are reset; running orphans are stopped (and their listed taps deleted) only with
//!   `--stop`, and otherwise kept whole; one `daemon-reload` follows unit file changes.
//! - A directory that cannot be read (a FIFO or file where a directory belongs, a link loop) makes
//!   the inventory incomplete, and then `prune` changes nothing at all.

mod args;
mod execute;
mod manifest;
mod names;
mod output;
mod plan;
mod rootfs;
mod scan;
mod systemd;

use crate::exit::Exit;

use args::{ArgsError, Command, DeclaredSource};
use output::Report;
use scan::Problem;

/// Entry point for `persist-prep microvm ARGS...`.
pub fn main(args: &[String]) -> Exit {
    let args = match args::parse(args) {
        Ok(args) => args,
        Err(ArgsError::Help) => {
            println!("{}", args::USAGE);
            return Exit::Ok;
        }
        Err(ArgsError::Usage(message)) => {
            eprintln!("persist-prep microvm: {message}\n{}", args::USAGE);
            return Exit::Usage;
        }
    };
    let declared = match &args.declared {
        DeclaredSource::Manifest(path) => match manifest::load(path) {
            Ok(declared) => declared,
            Err(message) => {
                log::error!("{message}");
                return Exit::InvalidManifest;
            }
        },
        DeclaredSource::Names(names) => names.iter().map(|n| (n.clone(), None)).collect(),
    };
    let root = match rootfs::Root::open(&args.root) {
        Ok(root) => root,
        Err(errno) => {
            log::error!(
                "cannot open --root {}: {}; give the directory the host's tree is mounted on",
                args.root.display(),
                rootfs::why(errno)
            );
            return Exit::Usage;
        }
    };
    let mut report = Report::new(&args, &declared);
    let live_state = if systemd::is_live(&root) {
        match systemd::query() {
            Ok(state) => Some(state),
            Err(message) => {
                report.extra_problems.push(Problem {
                    blocking: true,
                    ..Problem::error(
                        None,
                        None,
                        format!(
                            "cannot ask systemd which microvm units run: {message}. prune changes \
                             nothing without knowing that"
                        ),
                    )
                });
                None
            }
        }
    } else {
        None
    };
    let mut inventory = scan::scan(&root, &declared, live_state.as_ref());
    inventory.problems.append(&mut report.extra_problems);
    if live_state.is_none() && inventory.problems.iter().all(|p| !p.blocking) {
        log::debug!(
            "{} is not the running system (or systemd does not run): units and interfaces were \
             not queried, and nothing is stopped, reset or reloaded",
            args.root.display()
        );
    }
    for problem in &inventory.problems {
        output::log_problem(problem);
    }
    let exit = match args.command {
        Command::Status => {
            report.print_status(&inventory);
            if inventory.has_errors() {
                Exit::Failed
            } else {
                Exit::Ok
            }
        }
        Command::Prune => prune(&args, &root, &inventory, &mut report),
    };
    if args.json {
        report.print_json(&inventory);
    }
    exit
}

fn prune(
    args: &args::Args,
    root: &rootfs::Root,
    inventory: &scan::Inventory,
    report: &mut Report,
) -> Exit {
    let options = plan::Options {
        stop: args.stop,
        purge_state: &args.purge_state,
    };
    if let Err(errors) = plan::check_purge(inventory, &options) {
        for error in &errors {
            output::log_problem(error);
        }
        report.aborted = true;
        report.notes = errors;
        return Exit::Usage;
    }
    let plan = plan::build(inventory, &options);
    for note in &plan.notes {
        output::log_problem(note);
    }
    if inventory.blocked() {
        log::error!("prune: nothing was changed because the scan is incomplete (see above)");
    }
    report.print_plan(&plan.steps);
    let plan_errors = plan
        .notes
        .iter()
        .any(|n| n.severity == scan::Severity::Error);
    report.notes = plan.notes;
    report.plan = plan.steps;
    if args.dry_run {
        log::info!(
            "prune: dry run, {} steps planned, nothing changed",
            report.plan.len()
        );
        return if inventory.has_errors() || plan_errors {
            Exit::Failed
        } else {
            Exit::Ok
        };
    }
    let started = std::time::Instant::now();
    report.results = execute::execute(root, inventory.live, &report.plan);
    report.print_results();
    let count = |status| report.results.iter().filter(|r| r.status == status).count();
    let failed = count(execute::Status::Failed);
    log::info!(
        "prune: summary: {} done, {failed} failed, {} skipped in {:.1} ms",
        count(execute::Status::Done),
        count(execute::Status::Skipped),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if failed > 0 || inventory.has_errors() || plan_errors {
        Exit::Failed
    } else {
        Exit::Ok
    }
}
