//! How `apply`, `--dry-run` and `check` present a plan and what became of it: one line per
//! entry in the log, the summary line, the `check` table, and the `--json` document.
//!
//! Bytes from the manifest or the tree are escaped in the log and the table (see `escape`);
//! the JSON document carries them exactly.

use std::fmt::Write as _;

use serde::Serialize;

use super::Intent;
use super::plan::{
    Action, ActionKind, EntryPlan, EntryState, EntryStateName, Foreign, Judged, LeftoverWhy,
    MarkLeft, Plan, Problem, Skip, StoragePlan, StorageState,
};
use crate::deferred::{self, MarkDrift};
use crate::escape;
use crate::fs::{Meta, Op};
use crate::manifest::Attrs;
use crate::mode;
use crate::report;

fn entry_state_name(run: Intent, state: &EntryState) -> EntryStateName {
    match state {
        EntryState::Present if run == Intent::Check => EntryStateName::Ok,
        EntryState::Present => EntryStateName::Present,
        EntryState::Missing if run == Intent::DryRun => EntryStateName::WouldCreate,
        EntryState::Missing => EntryStateName::Missing,
        EntryState::Created => EntryStateName::Created,
        EntryState::Drift(_) => EntryStateName::Drift,
        EntryState::Deferred => EntryStateName::Deferred,
        EntryState::Finished => EntryStateName::Finished,
        EntryState::Unresolvable(_) => EntryStateName::OwnerUnresolvable,
        EntryState::Failed(problem) => problem_state(problem),
        EntryState::Skipped(Skip::StorageNotMounted) => EntryStateName::StorageNotMounted,
        EntryState::Skipped(Skip::StorageError) => EntryStateName::StorageError,
    }
}

/// A declaration as drift shows it: names, the ids they resolve to ("?" where none), mode.
fn declared_text(j: &Judged) -> String {
    let id = |id: Option<u32>| id.map_or("?".into(), |i| i.to_string());
    format!(
        "{}:{} ({}:{}) {}",
        escape::text(&j.declared.user.name),
        escape::text(&j.declared.group.name),
        id(j.uid),
        id(j.gid),
        mode::display(j.declared.mode)
    )
}

fn actual_text(j: &Judged) -> String {
    let m = j.actual;
    format!("{}:{} {}", m.uid, m.gid, mode::display(m.mode))
}

fn unresolved_names(j: &Judged) -> String {
    let mut names = Vec::new();
    if j.uid.is_none() {
        names.push(format!("user \"{}\"", escape::text(&j.declared.user.name)));
    }
    if j.gid.is_none() {
        names.push(format!(
            "group \"{}\"",
            escape::text(&j.declared.group.name)
        ));
    }
    names.join(" and ")
}

/// The state name reports give an entry that failed with `problem`.
fn problem_state(problem: &Problem) -> EntryStateName {
    match problem {
        Problem::Symlink { .. } => EntryStateName::Symlink,
        Problem::NotADirectory { .. } => EntryStateName::NotADirectory,
        _ => EntryStateName::Error,
    }
}

fn op_words(op: Op) -> &'static str {
    match op {
        Op::Open => "open",
        Op::Create => "create",
        Op::Stat => "stat",
        Op::SetOwnerMode => "set owner and mode of",
        Op::MarkBase => "mark the base of",
    }
}

fn leftover_words(why: LeftoverWhy, shown: &str) -> String {
    match why {
        LeftoverWhy::OpenParent => format!(
            "{shown} stands where persist-prep makes its temporary directory, in a directory that others than root can write to, so persist-prep cannot tell who made it and left it alone"
        ),
        LeftoverWhy::NotOurs => format!(
            "{shown}, named like persist-prep's temporary directory, holds something persist-prep would not make there (a file, another name, another owner or mode), so none of it was removed and it is left alone"
        ),
    }
}

/// What went wrong and why, and the fix; paths are escaped for one line.
pub fn explain(problem: &Problem) -> (String, String) {
    let shown = escape::text(problem.path());
    let again = "then run `persist-prep apply` again";
    let leftover_fix = || format!("look inside it, move what you want to keep, remove it, {again}");
    match problem {
        Problem::Symlink { target, .. } => (
            format!(
                "{shown} is a symlink (-> {target}); persist-prep follows no symlink below a storage or on the root side of a bind mount, so that no link can steer a mkdir or chown outside"
            ),
            "replace the symlink with a real directory (or remove it), or declare the entry at the place the link points to".into(),
        ),
        Problem::NotADirectory { .. } => (
            format!("{shown} exists but is not a directory"),
            format!("move the file away (persist-prep never replaces anything), {again}"),
        ),
        Problem::Os { error, .. } => (
            format!(
                "cannot {} {shown}: {}",
                op_words(error.op),
                report::errno_words(error.errno)
            ),
            report::errno_fix(error.errno).into(),
        ),
        Problem::Replaced { .. } => (
            format!(
                "{shown} changed while persist-prep was creating it (it is not the directory just made)"
            ),
            format!("find out what else writes there during boot, {again}"),
        ),
        Problem::OffVolume { why, mount_point } => (
            format!("{}, so what is created there would not persist", why.explain("")),
            why.fix(mount_point),
        ),
        Problem::Leftover { why, .. } => (leftover_words(*why, &shown), leftover_fix()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageStateName {
    Ok,
    Missing,
    WouldCreate,
    Created,
    NotMounted,
    Error,
}

fn storage_state_name(run: Intent, state: &StorageState) -> StorageStateName {
    match state {
        StorageState::Ok => StorageStateName::Ok,
        StorageState::Missing if run == Intent::DryRun => StorageStateName::WouldCreate,
        StorageState::Missing => StorageStateName::Missing,
        StorageState::Created => StorageStateName::Created,
        StorageState::NotMounted(_) => StorageStateName::NotMounted,
        StorageState::Failed(_) => StorageStateName::Error,
    }
}

/// The one-line message about a storage that is not ok, or `None`.
pub fn storage_message(s: &StoragePlan<'_>, root: &str) -> Option<String> {
    let path = escape::text(&s.storage.path);
    match &s.state {
        StorageState::Ok | StorageState::Created => None,
        StorageState::Missing => Some(format!("storage directory {root}{path} does not exist")),
        StorageState::NotMounted(why) => {
            let mount_point = s.storage.mount_point.as_deref().unwrap_or("/");
            Some(format!(
                "storage {path}: {}, so the persistent volume is not mounted; nothing was created for its {} entries, since it would land on the ephemeral root and vanish at reboot. Fix: {}",
                why.explain(root),
                s.storage.entries.len(),
                why.fix(mount_point)
            ))
        }
        StorageState::Failed(problem) => {
            let (what, fix) = explain(problem);
            Some(format!(
                "storage {path}: {what}; nothing was created for its entries. Fix: {fix}"
            ))
        }
    }
}

/// What was (or would be) made for an entry, in one short phrase.
fn made_summary(actions: &[Action], storage: &str, root: &str) -> String {
    let made: Vec<&Action> = actions
        .iter()
        .filter(|a| a.kind == ActionKind::Mkdir)
        .collect();
    let own: Vec<&&Action> = made.iter().filter(|a| a.dir.own).collect();
    let Some(first) = own.first() else {
        return format!(
            "the parent directories {}",
            action_list(actions, storage, root)
        );
    };
    let mut out = String::new();
    for (i, a) in own.iter().enumerate() {
        out.push_str(if i == 0 { "" } else { " and " });
        out.push_str(&escape::text(&shown(a, storage, root)));
    }
    let _ = write!(out, " ({})", attrs_text(&first.dir.attrs));
    match made.len() - own.len() {
        0 => {}
        1 => out.push_str(", with 1 missing parent"),
        n => {
            let _ = write!(out, ", with {n} missing parents");
        }
    }
    out
}

fn attrs_text(attrs: &Attrs) -> String {
    format!(
        "{}:{} {}",
        escape::text(&attrs.user.name),
        escape::text(&attrs.group.name),
        mode::display(attrs.mode)
    )
}

fn shown(action: &Action, storage: &str, root: &str) -> String {
    match action.dir.side {
        super::plan::Side::Storage => format!("{root}{storage}{}", action.dir.path),
        super::plan::Side::Root => format!("{root}{}", action.dir.path),
    }
}

fn action_list(actions: &[Action], storage: &str, root: &str) -> String {
    let mut out = String::new();
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let verb = if a.kind == ActionKind::GiveOwner {
            "owner for "
        } else {
            ""
        };
        let _ = write!(
            out,
            "{verb}{} ({})",
            escape::text(&shown(a, storage, root)),
            attrs_text(&a.dir.attrs)
        );
    }
    out
}

/// Logs one entry the way its state deserves.
/// Logs every storage and entry that has something to say.
pub fn log_plan(run: Intent, plan: &Plan<'_>, shown: &str) {
    for s in &plan.storages {
        if let Some(message) = storage_message(s, shown) {
            match (&s.state, run) {
                (StorageState::Missing, Intent::DryRun) => log::info!(
                    "would create storage directory {shown}{} (root:root 0755)",
                    escape::text(&s.storage.path)
                ),
                (StorageState::Missing, _) | (_, Intent::Check) => log::debug!("{message}"),
                _ => log::error!("{message}"),
            }
        }
        for e in &s.entries {
            log_entry(run, e, &s.storage.path, shown);
        }
    }
    for left in &plan.marks_left {
        log_mark_left(run, left);
    }
    for foreign in &plan.foreign {
        log::warn!("{}", foreign_words(foreign));
    }
}

/// A name of persist-prep's temporary directory that someone may have made, and what was done.
fn foreign_words(foreign: &Foreign) -> String {
    format!(
        "{}; made {} under another name; fix: nothing waits on it: if a killed run of persist-prep left it, or no one wants it, look inside and remove it",
        leftover_words(LeftoverWhy::OpenParent, &escape::text(&foreign.path)),
        escape::text(&foreign.made)
    )
}

fn log_entry(run: Intent, e: &EntryPlan<'_>, storage: &str, root: &str) {
    let what = e.entry.describe();
    match &e.state {
        EntryState::Present => log::debug!("{what}: present"),
        EntryState::Created => {
            log::info!(
                "{what}: created {}",
                made_summary(&e.actions, storage, root)
            );
            log::debug!("{what}: made {}", action_list(&e.actions, storage, root));
        }
        EntryState::Finished => {
            log::info!("{what}: gave {}", action_list(&e.actions, storage, root));
        }
        EntryState::Missing if run == Intent::DryRun => {
            log::info!(
                "{what}: would create {}",
                action_list(&e.actions, storage, root)
            );
        }
        EntryState::Missing => {
            log::debug!("{what}: missing {}", action_list(&e.actions, storage, root));
        }
        EntryState::Deferred if run == Intent::DryRun && !e.actions.is_empty() => {
            log::info!(
                "{what}: would give {}",
                action_list(&e.actions, storage, root)
            );
        }
        EntryState::Deferred if run == Intent::Check => {}
        EntryState::Deferred => log_deferred(e, storage, root),
        EntryState::Drift(judged) if run != Intent::Check => log_drift(e, judged, storage, root),
        EntryState::Drift(_) => {}
        EntryState::Unresolvable(judged) => log::debug!(
            "{what}: {} cannot be resolved; owner not checked",
            unresolved_names(judged)
        ),
        EntryState::Failed(problem) => {
            let (why, fix) = explain(problem);
            if run == Intent::Check {
                log::debug!("{what}: {why}");
            } else {
                log::error!("{what}: {why}. Fix: {fix}");
            }
        }
        EntryState::Skipped(why) => log::debug!("{what}: skipped ({why:?})"),
    }
}

fn log_drift(e: &EntryPlan<'_>, judged: &Judged, storage: &str, root: &str) {
    log::warn!(
        "{}: {root}{}{} exists as {} but is declared {}; left unchanged (persist-prep never changes what exists). Fix: if the declaration is right, chown/chmod it by hand; otherwise change the declaration",
        e.entry.describe(),
        escape::text(storage),
        escape::text(&e.entry.path),
        actual_text(judged),
        declared_text(judged)
    );
}

fn log_deferred(e: &EntryPlan<'_>, storage: &str, root: &str) {
    let what = e.entry.describe();
    let made: Vec<&Action> = e.actions.iter().filter(|a| a.dir.deferred()).collect();
    let Some(first) = made.first() else {
        log::warn!(
            "{what}: still waits for its owner (the directory carries persist-prep's mark and is recorded); fix: `persist-prep finish` gives it once the users exist (persist-prep-finish.service runs it after NixOS activation)"
        );
        return;
    };
    log::warn!(
        "{what}: created {}; owner {}:{} cannot be resolved yet (not in {root}/etc/passwd, etc/group or the NixOS id maps), so it is root-owned for now, marked and recorded; `persist-prep finish` gives it its owner once the user exists (persist-prep-finish.service runs it after NixOS activation)",
        made_summary(&e.actions, storage, root),
        escape::text(&first.dir.attrs.user.name),
        escape::text(&first.dir.attrs.group.name)
    );
}

/// What to say of a directory that carries persist-prep's owner mark but gets no owner from
/// it, and the fix.
fn mark_left_words(left: &MarkLeft) -> (String, String) {
    let why = match left.why {
        MarkDrift::NotAnEntry => {
            "it is not declared as an entry (persist-prep gives an owner only to an entry's own directory, never to a parent)"
        }
        MarkDrift::Changed => "its owner or mode changed since persist-prep made it",
        MarkDrift::Redeclared => "its entry is declared with another owner or mode now",
    };
    (
        format!(
            "{} carries persist-prep's owner mark, but {why}; it gets no owner and is left alone (the mark stays, and gives nothing)",
            escape::text(&left.shown)
        ),
        format!(
            "if it is right as it is, remove the mark (setfattr -x {} <dir>); otherwise chown/chmod it by hand",
            deferred::OWNER_MARK
        ),
    )
}

/// A directory that carries persist-prep's owner mark but gets no owner from it.
fn log_mark_left(run: Intent, left: &MarkLeft) {
    let (what, fix) = mark_left_words(left);
    let line = format!("{what}. Fix: {fix}");
    if run == Intent::Check {
        log::info!("{line}");
    } else {
        log::warn!("{line}");
    }
}

#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub created: usize,
    /// Directories made with a deferred owner that got it now.
    pub owners_given: usize,
    pub would_create: usize,
    pub present: usize,
    pub missing: usize,
    pub drift: usize,
    pub deferred: usize,
    pub owner_unresolvable: usize,
    pub failed: usize,
    pub skipped: usize,
    pub not_ok: usize,
    #[serde(skip)]
    storages_failed: usize,
}

impl Counts {
    pub fn of(run: Intent, plan: &Plan<'_>) -> Self {
        let mut c = Counts::default();
        for s in &plan.storages {
            if !matches!(s.state, StorageState::Ok | StorageState::Created) {
                c.not_ok += 1;
            }
            if matches!(
                s.state,
                StorageState::NotMounted(_) | StorageState::Failed(_)
            ) {
                c.storages_failed += 1;
            }
            for e in &s.entries {
                match &e.state {
                    EntryState::Present => c.present += 1,
                    EntryState::Created => c.created += 1,
                    EntryState::Finished => c.owners_given += 1,
                    EntryState::Missing if run == Intent::DryRun => c.would_create += 1,
                    EntryState::Missing => c.missing += 1,
                    EntryState::Drift(_) => c.drift += 1,
                    EntryState::Deferred => c.deferred += 1,
                    EntryState::Unresolvable(_) => c.owner_unresolvable += 1,
                    EntryState::Failed(_) => c.failed += 1,
                    EntryState::Skipped(_) => c.skipped += 1,
                }
                if !matches!(
                    e.state,
                    EntryState::Present | EntryState::Created | EntryState::Finished
                ) {
                    c.not_ok += 1;
                }
            }
        }
        c
    }

    /// True when the run must exit 1.
    pub fn failed(&self, run: Intent) -> bool {
        self.failed + self.skipped + self.storages_failed > 0
            || (run == Intent::Check && self.not_ok > 0)
    }

    pub fn log(&self, run: Intent, elapsed: report::Elapsed) {
        let line = match run {
            Intent::Check => format!(
                "persist-prep: check: {} ok, {} missing, {} drift, {} deferred, {} owner unresolvable, {} failed, {} skipped in {elapsed} ms",
                self.present,
                self.missing,
                self.drift,
                self.deferred,
                self.owner_unresolvable,
                self.failed,
                self.skipped
            ),
            Intent::DryRun => format!(
                "persist-prep: dry run: {} would be created, {} present, {} drift, {} deferred, {} failed, {} skipped in {elapsed} ms; nothing was changed",
                self.would_create,
                self.present,
                self.drift,
                self.deferred,
                self.failed,
                self.skipped
            ),
            Intent::Apply => format!(
                "persist-prep: summary: {} created, {} present, {} drift, {} deferred, {} failed, {} skipped, {} owners given in {elapsed} ms",
                self.created,
                self.present + self.owner_unresolvable,
                self.drift,
                self.deferred,
                self.failed,
                self.skipped,
                self.owners_given
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AttrsDoc<'a> {
    user: &'a str,
    group: &'a str,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: String,
}

#[derive(Serialize)]
struct ActualDoc {
    uid: u32,
    gid: u32,
    mode: String,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum ActionName {
    Mkdir,
    GiveOwner,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionDoc<'a> {
    action: ActionName,
    path: String,
    deferred: bool,
    user: &'a str,
    group: &'a str,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryDoc<'a> {
    storage: &'a str,
    path: &'a str,
    kind: &'static str,
    origin: Option<&'a str>,
    location: String,
    state: EntryStateName,
    declared: Option<AttrsDoc<'a>>,
    actual: Option<ActualDoc>,
    actions: Vec<ActionDoc<'a>>,
    error_path: Option<&'a str>,
    error: Option<String>,
    errno: Option<String>,
    fix: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StorageDoc<'a> {
    path: &'a str,
    mount_point: Option<&'a str>,
    state: StorageStateName,
    message: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    #[serde(flatten)]
    counts: &'a Counts,
    elapsed_ms: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document<'a> {
    version: u32,
    command: &'static str,
    dry_run: bool,
    root: &'a str,
    manifest: &'a std::path::Path,
    storages: Vec<StorageDoc<'a>>,
    entries: Vec<EntryDoc<'a>>,
    /// Directories that carry the owner mark but get no owner from it (drift of the mark).
    marks_left: Vec<MarkLeftDoc<'a>>,
    /// Names of persist-prep's temporary directory that `apply` met where others can write.
    leftovers: Vec<LeftoverDoc<'a>>,
    summary: Summary<'a>,
}

#[derive(Serialize)]
struct LeftoverDoc<'a> {
    path: &'a str,
    warning: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MarkLeftDoc<'a> {
    storage: Option<&'a str>,
    path: &'a str,
    why: MarkLeftWhy,
    error: String,
    fix: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
enum MarkLeftWhy {
    NotAnEntry,
    Changed,
    Redeclared,
}

fn mark_left_doc(left: &MarkLeft) -> MarkLeftDoc<'_> {
    let (error, fix) = mark_left_words(left);
    MarkLeftDoc {
        storage: left.storage.as_deref(),
        path: &left.path,
        why: match left.why {
            MarkDrift::NotAnEntry => MarkLeftWhy::NotAnEntry,
            MarkDrift::Changed => MarkLeftWhy::Changed,
            MarkDrift::Redeclared => MarkLeftWhy::Redeclared,
        },
        error,
        fix,
    }
}

fn attrs_doc(attrs: &Attrs) -> AttrsDoc<'_> {
    AttrsDoc {
        user: &attrs.user.name,
        group: &attrs.group.name,
        uid: attrs.user.id,
        gid: attrs.group.id,
        mode: mode::display(attrs.mode),
    }
}

fn action_doc<'a>(a: &'a Action, storage: &str, root: &str) -> ActionDoc<'a> {
    ActionDoc {
        action: match a.kind {
            ActionKind::Mkdir => ActionName::Mkdir,
            ActionKind::GiveOwner => ActionName::GiveOwner,
        },
        path: shown(a, storage, root),
        deferred: a.dir.deferred(),
        user: &a.dir.attrs.user.name,
        group: &a.dir.attrs.group.name,
        uid: a.dir.uid.or(a.dir.attrs.user.id),
        gid: a.dir.gid.or(a.dir.attrs.group.id),
        mode: mode::display(a.dir.attrs.mode),
    }
}

fn entry_doc<'a>(run: Intent, e: &'a EntryPlan<'a>, storage: &'a str, root: &str) -> EntryDoc<'a> {
    let problem: Option<&Problem> = match &e.state {
        EntryState::Failed(p) => Some(p),
        _ => None,
    };
    let explained = problem.map(explain);
    EntryDoc {
        storage,
        path: &e.entry.path,
        kind: e.entry.kind.as_str(),
        origin: e.entry.origin.as_deref(),
        location: e.entry.location.to_string(),
        state: entry_state_name(run, &e.state),
        declared: e.entry.attrs.as_ref().map(attrs_doc),
        actual: e.actual.map(|m: Meta| ActualDoc {
            uid: m.uid,
            gid: m.gid,
            mode: mode::display(m.mode),
        }),
        actions: e
            .actions
            .iter()
            .map(|a| action_doc(a, storage, root))
            .collect(),
        error_path: problem.map(Problem::path),
        errno: match problem {
            Some(Problem::Os { error, .. }) => Some(report::errno_name(error.errno)),
            _ => None,
        },
        error: explained.as_ref().map(|(why, _)| why.clone()),
        fix: explained.map(|(_, fix)| fix),
    }
}

pub fn document<'a>(
    run: Intent,
    manifest: &'a std::path::Path,
    plan: &'a Plan<'a>,
    counts: &'a Counts,
    elapsed: report::Elapsed,
    root: &'a str,
) -> Document<'a> {
    Document {
        version: 1,
        command: run.command(),
        dry_run: run == Intent::DryRun,
        root: if root.is_empty() { "/" } else { root },
        manifest,
        storages: plan
            .storages
            .iter()
            .map(|s| StorageDoc {
                path: &s.storage.path,
                mount_point: s.storage.mount_point.as_deref(),
                state: storage_state_name(run, &s.state),
                message: storage_message(s, root),
            })
            .collect(),
        entries: plan
            .storages
            .iter()
            .flat_map(|s| {
                s.entries
                    .iter()
                    .map(move |e| entry_doc(run, e, &s.storage.path, root))
            })
            .collect(),
        marks_left: plan.marks_left.iter().map(mark_left_doc).collect(),
        leftovers: plan
            .foreign
            .iter()
            .map(|f| LeftoverDoc {
                path: &f.path,
                warning: foreign_words(f),
            })
            .collect(),
        summary: Summary {
            counts,
            elapsed_ms: elapsed.millis(),
        },
    }
}

/// The `check` table: one line per storage and per entry, aligned for a terminal.
pub fn print_table(plan: &Plan<'_>, root: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:<20} {:<10} {:<36} DETAIL", "STATE", "KIND", "PATH");
    for s in &plan.storages {
        let storage = s.storage;
        let detail = match (&s.state, &storage.mount_point) {
            (StorageState::Ok, Some(mp)) => format!(
                "{root}{} on mounted {}",
                escape::text(&storage.path),
                escape::text(mp)
            ),
            (StorageState::Ok, None) => format!("{root}{}", escape::text(&storage.path)),
            _ => storage_message(s, root).unwrap_or_default(),
        };
        let state =
            serde_json::to_value(storage_state_name(Intent::Check, &s.state)).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<36} {detail}",
            state.as_str().unwrap_or("?"),
            "storage",
            escape::text(&storage.path)
        );
        for e in &s.entries {
            let state =
                serde_json::to_value(entry_state_name(Intent::Check, &e.state)).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<20} {:<10} {:<36} {}",
                state.as_str().unwrap_or("?"),
                e.entry.kind.as_str(),
                escape::text(&e.entry.path),
                table_detail(e, &storage.path, root)
            );
        }
    }
}

fn table_detail(e: &EntryPlan<'_>, storage: &str, root: &str) -> String {
    let source = format!(
        "{root}{}{}",
        escape::text(storage),
        escape::text(&e.entry.path)
    );
    match &e.state {
        EntryState::Present => match &e.entry.attrs {
            Some(attrs) => format!("{source} {}", attrs_text(attrs)),
            None => source,
        },
        EntryState::Missing => format!(
            "missing: {}",
            e.actions
                .iter()
                .map(|a| escape::text(&shown(a, storage, root)).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        EntryState::Drift(judged) => format!(
            "declared {}, actual {}",
            declared_text(judged),
            actual_text(judged)
        ),
        EntryState::Deferred => "root-owned until `persist-prep finish` gives it its owner".into(),
        EntryState::Unresolvable(judged) => format!(
            "{} cannot be resolved; owner not checked",
            unresolved_names(judged)
        ),
        EntryState::Failed(problem) => {
            let (why, fix) = explain(problem);
            format!("{why}. Fix: {fix}")
        }
        EntryState::Skipped(why) => format!("skipped: {}", skip_name(*why)),
        EntryState::Created | EntryState::Finished => String::new(),
    }
}

fn skip_name(why: Skip) -> &'static str {
    match why {
        Skip::StorageNotMounted => "storage-not-mounted",
        Skip::StorageError => "storage-error",
    }
}
