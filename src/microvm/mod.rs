//! Host mode: find and prune what microvm.nix leaves behind (`persist-prep microvm ...`).
//!
//! `status` scans and classifies (read-only); `prune` turns the same scan into a plan, prints it
//! and, unless `--dry-run`, carries it out, so the dry run shows exactly what a real run does.
//!
//! The rules, and why:
//! - The scan gathers every piece of evidence about a VM first (`classify::Evidence`): declared
//!   (`--manifest`/`--declared`), autostarted (the active `microvms.target` wants it, or the
//!   manifest's `autostart`), installed by the configuration (a store-managed
//!   `install-microvm-NAME.service`), imperative (GC roots or `old`, no `toplevel`), running
//!   (systemd, `booted`, a process using its directory), referenced by a kept VM's runner, and
//!   whether its state directory is in the known, mounted stateDir. `classify::classify` decides
//!   from that alone: a VM is an orphan only when no evidence says it is wanted. When the
//!   configuration's units declare a VM that the given declaration omits, one of the two is wrong:
//!   that is a usage error, and nothing at all is done. Names are used verbatim: microvm.nix's
//!   templates use `%i`, so a name that systemd would have to escape cannot be a working VM.
//! - State lives in the stateDir: the given one must agree with the installed `microvm@.service`
//!   template's (exit 2 naming both), which is used when none is given. A directory there with no
//!   `current`, `booted`, `toplevel` or `flake` that nothing names, or a file there, is no VM; a
//!   GC root pointing outside the state directory is of unknown owner. Both are kept. Missing
//!   evidence (template, target or fstab unreadable, stateDir not mounted) stops the whole run.
//! - Orphans lose their enablement links, instance unit files and drop-ins in the writable unit
//!   directories, and their GC roots (symlinks). Shared templates go only when no declared,
//!   imperative or unclassifiable VM is left. Anything under `/nix/store` or on a read-only mount
//!   is reported as managed by the NixOS configuration and never touched.
//! - State directories hold disks: only `--purge-state NAME` deletes one, and any bad name there
//!   (declared, autostarted, missing, not a VM, unclassifiable, referenced by a kept VM, used by a
//!   process or not known not to be, possibly running and not stopped in this run) aborts before
//!   any change. `booted` means "may be running"; offline only
//!   `--purge-state-of-possibly-running` overrides it.
//! - systemd and `ip` are used only when `--root` is this system's `/` and systemd runs: failed
//!   orphan units are reset; running orphans are stopped (and their listed taps deleted) only with
//!   `--stop`, never when one of their interfaces is also a kept VM's (its tap-down would delete
//!   it) or when the running unit is not shown to be theirs, and otherwise kept whole; a VM run
//!   outside systemd is kept whole; one `daemon-reload` follows unit file changes.
//! - A directory that cannot be read (a FIFO or file where a directory belongs, a link loop) makes
//!   the inventory incomplete, and then `prune` changes nothing at all.
//! - A kept VM's runner references a path however it names it (any hypervisor's syntax, `..`,
//!   symlinks: compared by spelling and by identity), and one that cannot be read may reference
//!   anything. Right before a purge the executor looks at `/proc` again (a VM may have started
//!   since the scan). Masks (`systemctl mask`) are the admin's decision and never removed.

mod args;
mod classify;
mod execute;
mod manifest;
mod names;
mod output;
mod plan;
mod proc;
mod rootfs;
mod scan;
mod statedir;
mod systemd;

use std::ffi::OsString;

use crate::exit::Exit;
use crate::report::Elapsed;

use args::{Args, ArgsError, Command, DeclaredSource};
use output::Report;
use scan::Problem;

/// Entry point for `persist-prep microvm ARGS...`.
pub fn main(args: impl IntoIterator<Item = OsString>) -> Exit {
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(exit) => return exit,
    };
    let Some((host, source)) = declared(&args) else {
        return Exit::InvalidManifest;
    };
    let Some(root) = open_root(&args) else {
        return Exit::Failed;
    };
    let mut report = Report::new(&args, &host.vms);
    let state_dir = match state_dir(&root, &host, &args, &source, &mut report) {
        Ok(dir) => dir,
        Err(problem) => {
            report.state_dir = host.state_dir.clone().unwrap_or_default();
            let exit = abort(&mut report, vec![problem]);
            if args.json {
                report.print_json(&scan::Inventory::default());
            }
            return exit;
        }
    };
    report.state_dir.clone_from(&state_dir);
    let live_state = query_live(&root, &mut report);
    let mut inventory = scan::scan(&root, &host, &state_dir, live_state.as_ref());
    inventory.problems.append(&mut report.extra_problems);
    if live_state.is_none() && inventory.problems.iter().all(|p| !p.blocking) {
        log::debug!(
            "{} is not the running system (or systemd does not run): units and interfaces were \
             not queried, and nothing is stopped, reset or reloaded",
            crate::escape::bytes(args.root.as_os_str().as_encoded_bytes())
        );
    }
    for problem in &inventory.problems {
        output::log_problem(problem);
    }
    let contradictions = plan::contradictions(&inventory, &source);
    let exit = if contradictions.is_empty() {
        match args.command {
            Command::Status => {
                report.print_status(&inventory);
                if inventory.has_errors() {
                    Exit::Failed
                } else {
                    Exit::Ok
                }
            }
            Command::Prune => prune(&args, &root, &inventory, &mut report),
        }
    } else {
        if args.command == Command::Status {
            report.print_status(&inventory);
        }
        abort(&mut report, contradictions)
    };
    if args.json {
        report.print_json(&inventory);
    }
    exit
}

/// The arguments, or the exit for `--help` and usage errors (printed here).
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, Exit> {
    match args::parse(args) {
        Ok(args) => Ok(args),
        Err(ArgsError::Help) => {
            println!("{}", args::USAGE);
            Err(Exit::Ok)
        }
        Err(ArgsError::Usage(message)) => {
            // The message may quote an argument: shown escaped, like bytes from the tree.
            eprintln!(
                "persist-prep microvm: {}\n{}",
                crate::escape::text(&message),
                args::USAGE
            );
            Err(Exit::Usage)
        }
    }
}

/// The declared VMs and where they were declared (for messages); `None` after logging an
/// invalid host manifest.
fn declared(args: &Args) -> Option<(manifest::Host, String)> {
    match &args.declared {
        DeclaredSource::Manifest(path) => match manifest::load(path) {
            Ok(host) => Some((
                host,
                format!("the host manifest {}", path.to_string_lossy()),
            )),
            Err(message) => {
                log::error!("{}", crate::escape::text(&message));
                None
            }
        },
        DeclaredSource::Names(names) => Some((
            manifest::Host {
                vms: names.iter().map(|n| (n.clone(), None)).collect(),
                state_dir: args.state_dir.clone(),
                autostart: std::collections::BTreeSet::new(),
            },
            format!("--declared '{}'", names.join(",")),
        )),
    }
}

/// Like the core commands: a root that cannot be opened is a failure, not a usage error.
fn open_root(args: &Args) -> Option<rootfs::Root> {
    match rootfs::Root::open(&args.root) {
        Ok(root) => Some(root),
        Err(errno) => {
            log::error!(
                "cannot open --root {}: {}; give the directory the host's tree is mounted on",
                crate::escape::bytes(args.root.as_os_str().as_encoded_bytes()),
                crate::report::errno_words(errno)
            );
            None
        }
    }
}

/// The stateDir: the given one (manifest or `--state-dir`) must agree with the installed
/// template's, which is used when none is given. A template that cannot be read, or a stateDir
/// whose storage is not mounted, is missing evidence: a blocking problem, so nothing is changed.
fn state_dir(
    root: &rootfs::Root,
    host: &manifest::Host,
    args: &args::Args,
    source: &str,
    report: &mut Report,
) -> Result<String, Problem> {
    let template = statedir::read_template(root);
    let given_source = match &args.declared {
        DeclaredSource::Manifest(_) => source.to_owned(),
        DeclaredSource::Names(_) => "--state-dir".to_owned(),
    };
    let given = host
        .state_dir
        .as_deref()
        .map(|dir| (dir, given_source.as_str()));
    let dir = statedir::resolve(given, &template).map_err(|why| Problem::error(None, None, why))?;
    if let statedir::Template::Unreadable { path, why } = &template {
        report.extra_problems.push(Problem {
            blocking: true,
            ..Problem::error(
                None,
                Some(path),
                format!(
                    "cannot read the installed template {path}: {why}. It names the stateDir that \
                     systemd runs VMs from, so {dir} cannot be confirmed and prune changes nothing. \
                     Fix: make it readable"
                ),
            )
        });
    }
    if let Some(why) = statedir::not_mounted(root, &dir) {
        report.extra_problems.push(Problem {
            blocking: true,
            ..Problem::error(
                None,
                Some(&dir),
                format!(
                    "the stateDir {dir} is not mounted: {why}. Its VMs cannot be seen, so every \
                     one of them would look like an orphan; prune changes nothing. Fix: mount it \
                     (`systemctl start` its mount unit, or `mount {dir}`), then run prune again"
                ),
            )
        });
    }
    Ok(dir)
}

/// Asks systemd, when `--root` is the running system; failing to is a blocking problem.
fn query_live(root: &rootfs::Root, report: &mut Report) -> Option<systemd::LiveState> {
    if !systemd::is_live(root) {
        return None;
    }
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
}

/// Ends a run that must not act at all: the errors are logged and reported, nothing is done.
fn abort(report: &mut Report, errors: Vec<Problem>) -> Exit {
    for error in &errors {
        output::log_problem(error);
    }
    report.aborted = true;
    report.notes = errors;
    Exit::Usage
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
        purge_possibly_running: args.purge_possibly_running,
    };
    if let Err(errors) = plan::check_purge(inventory, &options) {
        return abort(report, errors);
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
        "prune: summary: {} done, {failed} failed, {} skipped in {} ms",
        count(execute::Status::Done),
        count(execute::Status::Skipped),
        Elapsed::since(started)
    );
    if failed > 0 || inventory.has_errors() || plan_errors {
        Exit::Failed
    } else {
        Exit::Ok
    }
}
