//! How `finish` speaks: one line per recorded directory, the summary line, and the `--json`
//! document. Paths and names from the manifest are escaped on lines exactly as `apply` shows
//! them ([`Root::display`], `escape`); the document carries them exactly.

use serde::Serialize;

use super::{Op, Outcome};
use crate::deferred::Pending;
use crate::escape;
use crate::exit::Exit;
use crate::mode;
use crate::owner::Db;
use crate::report::{self, Elapsed};
use crate::root::Root;

/// A directory's state in the document.
#[derive(Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum State {
    Done,
    Pending,
    NothingToDo,
    LeftAlone,
    Failed,
}

fn state(outcome: &Outcome) -> State {
    match outcome {
        Outcome::Done { .. } => State::Done,
        Outcome::Unresolved { .. } => State::Pending,
        Outcome::Gone | Outcome::Covered | Outcome::AlreadyOwned => State::NothingToDo,
        Outcome::NotOurs | Outcome::OwnerChanged { .. } => State::LeftAlone,
        Outcome::Failed { .. } => State::Failed,
    }
}

#[derive(Serialize)]
struct ResultDoc<'a> {
    path: String,
    entry: &'a str,
    user: &'a str,
    group: &'a str,
    state: State,
    message: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Summary {
    done: usize,
    pending: usize,
    failed: usize,
    elapsed_ms: f64,
}

#[derive(Serialize)]
struct Document<'a> {
    version: u32,
    command: &'static str,
    results: Vec<ResultDoc<'a>>,
    summary: Summary,
}

/// Why, in words with its fix; empty for a directory that got its owner.
fn message(p: &Pending, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Done { .. } => String::new(),
        Outcome::Unresolved { db } => {
            let missing = match db {
                Db::User => format!("user \"{}\"", escape::text(&p.user)),
                Db::Group => format!("group \"{}\"", escape::text(&p.group)),
            };
            format!(
                "{missing} still cannot be resolved (not in etc/passwd, etc/group or var/lib/nixos/uid-map/gid-map); it stays root-owned. Fix: declare the {missing} (users.users / users.groups), or give its numeric id in the manifest"
            )
        }
        Outcome::Gone => "it no longer exists; nothing to do".into(),
        Outcome::Covered => {
            "it is covered by its bind mount now, which shows the source; nothing to do".into()
        }
        Outcome::AlreadyOwned => "it has its owner already; nothing to do".into(),
        Outcome::NotOurs => "it is not the directory persist-prep created (it lacks persist-prep's mark, or another one stands there now), so it is left alone".into(),
        Outcome::OwnerChanged { uid, gid, mode } => format!(
            "its owner or mode was changed to {uid}:{gid} {} since persist-prep created it, so it is left alone",
            crate::mode::display(*mode)
        ),
        Outcome::Failed { op, errno } => {
            let what = match op {
                Op::Open => "open it",
                Op::Stat => "stat it",
                Op::GiveOwner => "give it its owner",
            };
            format!(
                "cannot {what}: {}; fix: {}",
                report::errno_words(*errno),
                report::errno_fix(*errno)
            )
        }
    }
}

/// Logs one directory's outcome, at the priority it deserves.
fn log_one(root: &Root, p: &Pending, outcome: &Outcome) {
    let place = root.display(p.storage.as_deref(), &p.path);
    // The record keeps the entry as apply showed it (`Entry::describe`), escaped already.
    let entry = &p.entry;
    match (state(outcome), outcome) {
        (_, Outcome::Done { uid, gid }) => log::info!(
            "gave {place} its owner {}:{} ({uid}:{gid}) and mode {} for {entry}",
            escape::text(&p.user),
            escape::text(&p.group),
            mode::display(p.mode),
        ),
        (State::NothingToDo, _) => log::info!("{place} for {entry}: {}", message(p, outcome)),
        (State::Failed, _) => log::error!("{place} for {entry}: {}", message(p, outcome)),
        _ => log::warn!("{place} for {entry}: {}", message(p, outcome)),
    }
}

/// Logs every outcome and the summary, prints the document when asked, and returns the exit.
pub fn report(
    root: &Root,
    results: &[(Pending, Outcome)],
    save_error: Option<&str>,
    elapsed: Elapsed,
    json: bool,
) -> Exit {
    let mut summary = Summary {
        elapsed_ms: elapsed.millis(),
        ..Summary::default()
    };
    for (p, outcome) in results {
        log_one(root, p, outcome);
        match state(outcome) {
            State::Done => summary.done += 1,
            State::Pending => summary.pending += 1,
            State::Failed => summary.failed += 1,
            State::NothingToDo | State::LeftAlone => {}
        }
    }
    if let Some(message) = save_error {
        log::error!("{message}");
    }
    let ok = summary.pending + summary.failed == 0 && save_error.is_none();
    let line = format!(
        "persist-prep: finish: {} given their owner, {} still pending, {} failed in {elapsed} ms",
        summary.done, summary.pending, summary.failed
    );
    if ok {
        log::info!("{line}");
    } else {
        log::warn!("{line}");
    }
    if json {
        report::print_serialized(&document(root, results, summary));
    }
    if ok { Exit::Ok } else { Exit::Failed }
}

fn document<'a>(root: &Root, results: &'a [(Pending, Outcome)], summary: Summary) -> Document<'a> {
    let results = results
        .iter()
        .map(|(p, outcome)| ResultDoc {
            path: root.path(p.storage.as_deref(), &p.path),
            entry: &p.entry,
            user: &p.user,
            group: &p.group,
            state: state(outcome),
            message: message(p, outcome),
        })
        .collect();
    Document {
        version: 1,
        command: "finish",
        results,
        summary,
    }
}
