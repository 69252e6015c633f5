//! How `apply` and `check` present what they found: one line per entry in the log, the
//! summary line, the `check` table, and the `--json` document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{EntryResult, Intent, Made, Problem, State, StorageResult, command_name};
use crate::Options;
use crate::manifest::Attrs;
use crate::mode;
use crate::report;

/// What was (or would be) made for an entry, in one short phrase: its own directories with
/// their attributes, and how many missing parents came with them. The full list is in the
/// `--json` document and at debug level.
pub(super) fn made_summary(made: &[Made]) -> String {
    let own: Vec<&Made> = made.iter().filter(|m| m.own).collect();
    let Some(first) = own.first() else {
        // A file entry: only its parent directories are ever made, and they are few.
        return format!("the parent directories {}", made_list(made));
    };
    let mut out = String::new();
    for (i, m) in own.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { " and " });
        out.push_str(&m.path);
    }
    let _ = write!(out, " ({})", first.attrs);
    match made.len() - own.len() {
        0 => {}
        1 => out.push_str(", with 1 missing parent"),
        n => {
            let _ = write!(out, ", with {n} missing parents");
        }
    }
    out
}

/// Every directory made, with its attributes.
fn made_list(made: &[Made]) -> String {
    let mut out = String::new();
    for (i, m) in made.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{} ({})", m.path, m.attrs);
    }
    out
}

pub(super) fn log_entry(run: Intent, r: &EntryResult<'_>, root: &str) {
    let what = r.entry.describe();
    match &r.state {
        State::Present => log::debug!("{what}: present"),
        State::Created => {
            log::info!("{what}: created {}", made_summary(&r.made));
            log::debug!("{what}: made {}", made_list(&r.made));
        }
        State::Missing if run == Intent::DryRun => {
            log::info!("{what}: would create {}", made_list(&r.made));
        }
        State::Missing => log::debug!("{what}: missing {}", made_list(&r.made)),
        State::Deferred if r.made.is_empty() => log::warn!(
            "{what}: still waits for its owner (recorded in the deferred-owner list); fix: run `persist-prep finish` once the users exist"
        ),
        State::Deferred => {
            let names: Vec<String> = r
                .made
                .iter()
                .filter(|m| m.deferred)
                .map(|m| format!("{}:{}", m.attrs.user.name, m.attrs.group.name))
                .collect();
            log::warn!(
                "{what}: created {}; owner {} cannot be resolved yet (not in {root}/etc/passwd, etc/group or the NixOS id maps), so it is root-owned for now and recorded; `persist-prep finish` gives it its owner once the user exists (persist-prep-finish.service runs it after NixOS activation)",
                made_summary(&r.made),
                names.first().map_or("?", String::as_str)
            );
        }
        State::Drift { declared, actual } if run != Intent::Check => log::warn!(
            "{what}: {}{}{} exists as {actual} but is declared {declared}; left unchanged (persist-prep never changes what exists). Fix: if the declaration is right, chown/chmod it by hand; otherwise change the declaration",
            root,
            r.storage,
            r.entry.path
        ),
        State::Drift { .. } => {}
        State::Unresolvable(names) => {
            log::debug!("{what}: {names} cannot be resolved; owner not checked");
        }
        State::Failed(problem) => {
            let (why, fix) = problem.explain();
            if run == Intent::Check {
                log::debug!("{what}: {why}");
            } else {
                log::error!("{what}: {why}. Fix: {fix}");
            }
        }
        State::Skipped(why) => log::debug!("{what}: skipped ({why})"),
    }
}

#[derive(Default)]
pub(super) struct Counts {
    pub(super) created: usize,
    pub(super) present: usize,
    pub(super) missing: usize,
    pub(super) drift: usize,
    pub(super) deferred: usize,
    pub(super) unresolvable: usize,
    pub(super) failed: usize,
    pub(super) skipped: usize,
    pub(super) not_ok: usize,
}

impl Counts {
    pub(super) fn of(results: &[StorageResult<'_>]) -> Self {
        let mut c = Counts::default();
        for s in results {
            if !matches!(s.state, "ok" | "created") {
                c.not_ok += 1;
            }
            for e in &s.entries {
                match &e.state {
                    State::Present => c.present += 1,
                    State::Created => c.created += 1,
                    State::Missing => c.missing += 1,
                    State::Drift { .. } => c.drift += 1,
                    State::Deferred => c.deferred += 1,
                    State::Unresolvable(_) => c.unresolvable += 1,
                    State::Failed(_) => c.failed += 1,
                    State::Skipped(_) => c.skipped += 1,
                }
                if !matches!(e.state, State::Present | State::Created) {
                    c.not_ok += 1;
                }
            }
        }
        c
    }

    pub(super) fn log(&self, run: Intent, elapsed: report::Elapsed) {
        let line = match run {
            Intent::Check => format!(
                "persist-prep: check: {} ok, {} missing, {} drift, {} deferred, {} owner unresolvable, {} failed, {} skipped in {elapsed} ms",
                self.present,
                self.missing,
                self.drift,
                self.deferred,
                self.unresolvable,
                self.failed,
                self.skipped
            ),
            Intent::DryRun => format!(
                "persist-prep: dry run: {} would be created, {} present, {} drift, {} deferred, {} failed, {} skipped in {elapsed} ms; nothing was changed",
                self.missing, self.present, self.drift, self.deferred, self.failed, self.skipped
            ),
            Intent::Apply => format!(
                "persist-prep: summary: {} created, {} present, {} drift, {} deferred, {} failed, {} skipped in {elapsed} ms",
                self.created,
                self.present + self.unresolvable,
                self.drift,
                self.deferred,
                self.failed,
                self.skipped
            ),
        };
        if self.failed + self.skipped > 0 {
            log::error!("{line}");
        } else if self.not_ok > 0 && run == Intent::Check || self.drift + self.deferred > 0 {
            log::warn!("{line}");
        } else {
            log::info!("{line}");
        }
    }
}

pub(super) fn entry_state(run: Intent, state: &State) -> &'static str {
    match state {
        State::Present if run == Intent::Check => "ok",
        State::Present => "present",
        State::Created => "created",
        State::Missing if run == Intent::DryRun => "would-create",
        State::Missing => "missing",
        State::Drift { .. } => "drift",
        State::Deferred => "deferred",
        State::Unresolvable(_) => "owner-unresolvable",
        State::Failed(problem) => problem.state(),
        State::Skipped(why) => why,
    }
}

fn attrs_json(attrs: &Attrs) -> Value {
    json!({
        "user": attrs.user.name, "group": attrs.group.name,
        "uid": attrs.user.id, "gid": attrs.group.id, "mode": mode::display(attrs.mode),
    })
}

pub(super) fn document(
    options: &Options,
    run: Intent,
    results: &[StorageResult<'_>],
    c: &Counts,
    elapsed: report::Elapsed,
    root: &str,
) -> Value {
    let storages: Vec<Value> = results
        .iter()
        .map(|s| {
            json!({
                "path": s.storage.path, "mountPoint": s.storage.mount_point,
                "state": s.state, "message": s.message,
            })
        })
        .collect();
    let entries: Vec<Value> = results
        .iter()
        .flat_map(|s| s.entries.iter())
        .map(|e| {
            let (error, fix) = match &e.state {
                State::Failed(problem) => {
                    let (why, fix) = problem.explain();
                    (Some(why), Some(fix))
                }
                _ => (None, None),
            };
            let errno = match &e.state {
                State::Failed(Problem::Errno { errno, .. }) => Some(report::errno_name(*errno)),
                _ => None,
            };
            json!({
                "storage": e.storage,
                "path": e.entry.path,
                "kind": e.entry.kind.as_str(),
                "origin": e.entry.origin,
                "location": e.entry.location.to_string(),
                "state": entry_state(run, &e.state),
                "declared": e.entry.attrs.as_ref().map(attrs_json),
                "actual": e.actual.map(|m| json!({"uid": m.uid, "gid": m.gid, "mode": mode::display(m.mode)})),
                "actions": e.made.iter().map(|m| json!({
                    "action": "mkdir", "path": m.path, "deferred": m.deferred,
                    "user": m.attrs.user.name, "group": m.attrs.group.name,
                    "uid": m.attrs.user.id, "gid": m.attrs.group.id, "mode": mode::display(m.attrs.mode),
                })).collect::<Vec<_>>(),
                "errorPath": match &e.state { State::Failed(p) => Some(p.path().to_owned()), _ => None },
                "error": error,
                "errno": errno,
                "fix": fix,
            })
        })
        .collect();
    json!({
        "version": 1,
        "command": command_name(run),
        "dryRun": run == Intent::DryRun,
        "root": if root.is_empty() { "/" } else { root },
        "manifest": options.manifest,
        "storages": storages,
        "entries": entries,
        "summary": {
            "created": c.created, "wouldCreate": if run == Intent::DryRun { c.missing } else { 0 },
            "present": c.present, "missing": if run == Intent::Check { c.missing } else { 0 },
            "drift": c.drift, "deferred": c.deferred, "ownerUnresolvable": c.unresolvable,
            "failed": c.failed, "skipped": c.skipped, "notOk": c.not_ok, "elapsedMs": elapsed.millis(),
        },
    })
}

/// The `check` table: one line per storage and per entry, aligned for a terminal.
pub(super) fn print_table(results: &[StorageResult<'_>], root: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<20} {:<10} {:<36} DETAIL", "STATE", "KIND", "PATH");
    for s in results {
        let storage = s.storage;
        let detail = match (s.state, &storage.mount_point) {
            ("ok", Some(mp)) => format!("{root}{} on mounted {mp}", storage.path),
            ("ok", None) => format!("{root}{}", storage.path),
            _ => s.message.clone().unwrap_or_default(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<36} {detail}",
            s.state, "storage", storage.path
        );
        for e in &s.entries {
            let state = entry_state(Intent::Check, &e.state);
            let source = format!("{root}{}{}", e.storage, e.entry.path);
            let declared = e
                .entry
                .attrs
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let detail = match &e.state {
                State::Present => format!("{source} {declared}"),
                State::Missing => format!(
                    "missing: {}",
                    e.made
                        .iter()
                        .map(|m| m.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                State::Drift { declared, actual } => {
                    format!("declared {declared}, actual {actual}")
                }
                State::Deferred => {
                    "root-owned until `persist-prep finish` gives it its owner".into()
                }
                State::Unresolvable(names) => {
                    format!("{names} cannot be resolved; owner not checked")
                }
                State::Failed(problem) => {
                    let (why, fix) = problem.explain();
                    format!("{why}. Fix: {fix}")
                }
                State::Skipped(why) => format!("skipped: {why}"),
                State::Created => String::new(),
            };
            let _ = writeln!(
                out,
                "{state:<20} {:<10} {:<36} {detail}",
                e.entry.kind.as_str(),
                e.entry.path
            );
        }
    }
}
