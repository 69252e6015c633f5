//! `persist-prep finish`: give recorded directories their owners now that names resolve.
//!
//! What is decided here is data ([`Outcome`]); `output` turns it into words and documents.

mod output;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::io::Errno;

use super::Options;
use crate::deferred::{self, Pending, Record};
use crate::exit::Exit;
use crate::fs;
use crate::lock::Access;
use crate::manifest::Owner;
use crate::owner::{Db, Resolver};
use crate::report;
use crate::root::Root;

/// The system call that failed, for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Open,
    Stat,
    GiveOwner,
}

/// What became of one pending directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It has its owner and mode now.
    Done {
        uid: u32,
        gid: u32,
    },
    /// The user (or group) still cannot be resolved; it stays root-owned and recorded.
    Unresolved {
        db: Db,
    },
    /// It no longer exists.
    Gone,
    /// A bind mount covers it now (a root-side mount point), which shows the source.
    Covered,
    /// It has its owner already.
    AlreadyOwned,
    /// It is not the directory persist-prep made: the mark is missing or another one stands
    /// there now. Left alone.
    NotOurs,
    /// Its owner was changed since persist-prep made it. Left alone.
    OwnerChanged {
        uid: u32,
        gid: u32,
        mode: u32,
    },
    Failed {
        op: Op,
        errno: Errno,
    },
}

impl Outcome {
    /// Whether the record keeps the directory for a later `finish`.
    fn keeps(&self) -> bool {
        matches!(self, Outcome::Unresolved { .. } | Outcome::Failed { .. })
    }
}

pub fn run(options: &Options) -> Exit {
    let start = Instant::now();
    let root = match super::open_root(options, "finish") {
        Ok(root) => root,
        Err(exit) => return exit,
    };
    let lock = match super::lock(options, Access::Exclusive, "finish") {
        Ok(lock) => lock,
        Err(exit) => return exit,
    };
    let mut record = match deferred::load(&options.state_dir) {
        Ok(record) => record,
        Err(error) => {
            let text = super::output::record_error(&options.state_dir, &error);
            log::error!("{text}");
            let (what, fix) = text.split_once("; fix: ").unwrap_or((&text, ""));
            super::output::failed_start(options, "finish", what.to_owned(), fix);
            return Exit::Failed;
        }
    };
    let results = finish_all(&root, &mut record);
    let saved = deferred::save(&options.state_dir, &record);
    drop(lock);
    let save_error = saved
        .err()
        .map(|e| super::output::record_error(&options.state_dir, &e));
    output::report(
        &root,
        &results,
        save_error.as_deref(),
        report::Elapsed::since(start),
        options.json,
    )
}

/// Finishes every recorded directory; the record keeps those still waiting.
fn finish_all(root: &Root, record: &mut Record) -> Vec<(Pending, Outcome)> {
    let sides: Vec<Option<String>> = record.pending.iter().map(|p| p.storage.clone()).collect();
    let mut resolver = Resolver::new(root.fd());
    for storage in record.pending.iter().filter_map(|p| p.storage.as_deref()) {
        resolver.add_storage(storage);
    }
    let mut results = Vec::with_capacity(record.pending.len());
    for p in std::mem::take(&mut record.pending) {
        let outcome = finish_one(root.fd(), &mut resolver, &p);
        if outcome.keeps() {
            record.pending.push(p.clone());
        }
        results.push((p, outcome));
    }
    super::output::pending_marks_left(&deferred::settle_sides(root.fd(), &sides, record));
    results
}

/// The recorded owner's ids, or which of the two names still does not resolve.
fn resolve(resolver: &mut Resolver<'_>, p: &Pending) -> Result<(u32, u32), Outcome> {
    let user = Owner {
        name: p.user.as_str().into(),
        id: p.uid,
    };
    let group = Owner {
        name: p.group.as_str().into(),
        id: p.gid,
    };
    let uid = resolver.resolve(&user, Db::User);
    let uid = uid.ok_or(Outcome::Unresolved { db: Db::User })?;
    let gid = resolver.resolve(&group, Db::Group);
    let gid = gid.ok_or(Outcome::Unresolved { db: Db::Group })?;
    Ok((uid, gid))
}

fn finish_one(root: BorrowedFd<'_>, resolver: &mut Resolver<'_>, p: &Pending) -> Outcome {
    let (uid, gid) = match resolve(resolver, p) {
        Ok(ids) => ids,
        Err(outcome) => return outcome,
    };
    let (fd, meta) = match open_recorded(root, p) {
        Ok(found) => found,
        Err(outcome) => return outcome,
    };
    if (meta.uid, meta.gid, meta.mode) == (uid, gid, p.mode) {
        return Outcome::AlreadyOwned;
    }
    if p.storage.is_none() && fs::is_mount_point(&fd).unwrap_or(false) {
        return Outcome::Covered;
    }
    let mark = if p.marked {
        deferred::read_mark(&fd).filter(|m| *m == p.mark())
    } else {
        p.same_directory(meta, fs::birth(&fd)).then(|| p.mark())
    };
    let Some(mark) = mark else {
        return Outcome::NotOurs;
    };
    // The record holds the declaration of the run that made it; the one rule decides.
    if deferred::may_give(&mark, meta, Some(&p.declared())).is_err() {
        return Outcome::OwnerChanged {
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
        };
    }
    match deferred::give_owner(&fd, uid, gid, p.mode) {
        Ok(()) => Outcome::Done { uid, gid },
        Err(errno) => Outcome::Failed {
            op: Op::GiveOwner,
            errno,
        },
    }
}

/// Opens a recorded directory and reads its owner and mode, or says why not.
fn open_recorded(root: BorrowedFd<'_>, p: &Pending) -> Result<(OwnedFd, fs::Meta), Outcome> {
    let fd = match open_path(root, p) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(Outcome::Gone),
        Err(errno) => {
            return Err(Outcome::Failed {
                op: Op::Open,
                errno,
            });
        }
    };
    match fs::meta(&fd) {
        Ok(meta) => Ok((fd, meta)),
        Err(errno) => Err(Outcome::Failed {
            op: Op::Stat,
            errno,
        }),
    }
}

/// Opens a recorded directory with the same rules `apply` used to create it.
fn open_path(root: BorrowedFd<'_>, p: &Pending) -> Result<OwnedFd, Errno> {
    let base = match &p.storage {
        Some(storage) => fs::open_in_root(root, storage)?,
        None => fs::open_beneath(root, "/")?,
    };
    let (parent, name) = p.path.rsplit_once('/').unwrap_or(("", &p.path));
    let parent = fs::open_beneath(&base, parent)?;
    fs::open_child(&parent, name)
}
