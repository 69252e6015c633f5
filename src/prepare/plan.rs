//! The planner: reads the tree, changes nothing, and returns what `apply` will do.
//!
//! `apply` executes this plan, `--dry-run` prints it, and `check` reports its states, so the
//! three agree by construction. Per storage: is its volume there, does the storage directory
//! exist, then for each entry the source below the storage and the mount point on the root,
//! each walked from the first missing component on. Directories that an interrupted run made
//! with a deferred owner carry a mark (see `deferred`), and are planned to get their owner.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::volume::{self, NotMounted};
use crate::deferred::{self, Mark, Pending, Record};
use crate::fs::{self, Meta, Obstacle};
use crate::manifest::{self, Attrs, Entry, Kind, Manifest, Owner, Storage};
use crate::owner::{Db, Resolver};
use crate::root::Root;

/// Which side of the bind mount a directory is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Below the storage directory: the bind mount's source.
    Storage,
    /// On the root: the mount point.
    Root,
}

/// One value for each side, indexed by `Side`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sides<T> {
    pub storage: T,
    pub root: T,
}

impl<T> Sides<T> {
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        [&mut self.storage, &mut self.root].into_iter()
    }
}

impl<T> std::ops::Index<Side> for Sides<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Storage => &self.storage,
            Side::Root => &self.root,
        }
    }
}

impl<T> std::ops::IndexMut<Side> for Sides<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Storage => &mut self.storage,
            Side::Root => &mut self.root,
        }
    }
}

/// One directory the plan makes or finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub side: Side,
    /// Absolute, below the side's base (the storage directory, or the root).
    pub path: String,
    pub attrs: Attrs,
    /// Resolved ids; `None` while the name cannot be resolved, so the owner is deferred.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The entry's own directory, not one of its parents.
    pub own: bool,
}

impl Dir {
    pub fn deferred(&self) -> bool {
        self.uid.is_none() || self.gid.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Make a missing directory, appearing only with its final owner and mode.
    Mkdir,
    /// Give a directory made earlier with a deferred owner its owner, now that it resolves.
    GiveOwner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    pub dir: Dir,
}

/// Why an entry or storage cannot be completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Symlink {
        path: String,
        target: String,
    },
    NotADirectory {
        path: String,
    },
    Os {
        path: String,
        error: fs::OsError,
    },
    Replaced {
        path: String,
    },
    Leftover {
        path: String,
        why: LeftoverWhy,
    },
    /// A directory below a storage is not on the storage's volume (its path is shown in `why`).
    OffVolume {
        why: NotMounted,
        mount_point: String,
    },
}

/// Why a temporary directory of persist-prep's name was left where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftoverWhy {
    /// Its parent is not root's alone, so anyone who can write there may have made it.
    OpenParent,
    /// It holds something this run would not make there as it makes it: a file, another
    /// name, another owner or mode.
    NotOurs,
}

impl Problem {
    /// A system call that failed on `path`, with the operation it was for.
    pub fn os(path: String, op: fs::Op, errno: Errno) -> Self {
        Problem::Os {
            path,
            error: fs::OsError { op, errno },
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Problem::Symlink { path, .. }
            | Problem::NotADirectory { path }
            | Problem::Os { path, .. }
            | Problem::Replaced { path }
            | Problem::Leftover { path, .. } => path,
            Problem::OffVolume { why, .. } => why.path(),
        }
    }
}

/// An existing source held against its declaration: the declaration, the ids its names
/// resolve to now (`None` where one does not), and what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub declared: Attrs,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub actual: Meta,
}

/// Where an entry stands, before and after execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    Present,
    /// Something is missing: the actions make it.
    Missing,
    /// Made by this run.
    Created,
    /// Exists with another owner or mode; never changed.
    Drift(Box<Judged>),
    /// Made root-owned because its owner does not resolve yet; actions give it when it does.
    Deferred,
    /// Its deferred owner was given by this run.
    Finished,
    /// Exists, but its owner names cannot be resolved, so it cannot be judged.
    Unresolvable(Box<Judged>),
    Failed(Problem),
    Skipped(Skip),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    StorageNotMounted,
    StorageError,
}

/// The names states have in the table and the JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryStateName {
    Ok,
    Present,
    Missing,
    WouldCreate,
    Created,
    Drift,
    Deferred,
    Finished,
    OwnerUnresolvable,
    Symlink,
    NotADirectory,
    Error,
    StorageNotMounted,
    StorageError,
}

#[derive(Debug)]
pub struct EntryPlan<'m> {
    pub entry: &'m Entry,
    pub state: EntryState,
    pub actions: Vec<Action>,
    /// Owner and mode of the existing source directory.
    pub actual: Option<Meta>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    Ok,
    /// The storage directory is missing; `create` makes it.
    Missing,
    Created,
    NotMounted(NotMounted),
    Failed(Problem),
}

/// The storage directory's missing part: made root root 0755 below its deepest existing
/// ancestor, which is resolved inside the root as the storage path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageCreate {
    pub base: String,
    pub names: Vec<String>,
}

#[derive(Debug)]
pub struct StoragePlan<'m> {
    pub storage: &'m Storage,
    pub state: StorageState,
    pub create: Option<StorageCreate>,
    pub entries: Vec<EntryPlan<'m>>,
}

#[derive(Debug, Default)]
pub struct Plan<'m> {
    pub storages: Vec<StoragePlan<'m>>,
    /// Directories still waiting for an owner that does not resolve yet; `finish` takes them.
    pub pending: Vec<Pending>,
    /// Sides (a storage, or `None` for the root) whose pending mark made the planner look
    /// everywhere; the mark goes once nothing there waits any more.
    pub deep_sides: Vec<Option<String>>,
    /// Directories that carry persist-prep's owner mark but get no owner from it.
    pub marks_left: Vec<MarkLeft>,
    /// What `apply` found under its temporary names where others can write, and left.
    pub foreign: Vec<Foreign>,
}

/// A directory named like persist-prep's temporary one, in a directory that others than root
/// can write to: anyone may have made it, so it is left alone, and the directory `made` was
/// made under another name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub path: String,
    pub made: String,
}

/// A marked directory left alone: drift, which the report names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkLeft {
    /// As in `Pending`: the storage, or `None` on the root side.
    pub storage: Option<String>,
    pub path: String,
    pub shown: String,
    pub why: deferred::MarkDrift,
}

/// What carrying out one storage's part of the plan came to: the storage's new state, and
/// new states of entries by index, a later one overriding an earlier one.
#[derive(Debug, Default)]
pub struct Outcome {
    pub storage: Option<StorageState>,
    pub entries: Vec<(usize, EntryState)>,
    pub foreign: Vec<Foreign>,
}

impl Plan<'_> {
    /// Takes in what the executor reports, storage by storage, so that the report shows what
    /// became of the plan.
    pub fn settle(&mut self, outcomes: Vec<Outcome>) {
        for (s, outcome) in self.storages.iter_mut().zip(outcomes) {
            self.foreign.extend(outcome.foreign);
            if let Some(state) = outcome.storage {
                s.state = state;
            }
            for (idx, state) in outcome.entries {
                if let Some(e) = s.entries.get_mut(idx) {
                    e.state = state;
                }
            }
        }
    }
}

/// One directory a walk opened, kept for the next entry, which usually shares it. Its path
/// is the first `len` bytes of the side's `walked` path: no string of its own to allocate.
struct Link {
    len: usize,
    fd: OwnedFd,
}

/// How a walk ended.
enum Walked {
    /// The directory exists; it is the last link of the side's chain.
    Exists,
    /// Missing from this prefix on (it is already planned when it is in `planned`).
    MissingFrom(String),
}

pub struct Planner<'a> {
    root: BorrowedFd<'a>,
    tree: &'a Root,
    pub resolver: Resolver<'a>,
    record: &'a Record,
    planned: Sides<HashSet<String>>,
    chains: Sides<Vec<Link>>,
    /// The directories the last walk of each side went for; its chain's links are prefixes.
    walked: Sides<String>,
    /// A side whose base carries the mark of deferred owners left by an earlier run: every
    /// existing directory on it is looked at, not only the entries' own.
    deep: Sides<bool>,
    pending: Vec<Pending>,
    deep_sides: Vec<Option<String>>,
    marks_left: Vec<MarkLeft>,
    /// The storage's volume, when it declares a mountPoint: every directory the storage side
    /// relies on must be on it.
    volume: Option<volume::Volume>,
    retired: fs::Retired,
}

/// The directory an entry needs: itself, or a file's parent.
pub fn dirs_of(entry: &Entry) -> &str {
    match entry.kind {
        Kind::Directory => entry.path.as_str(),
        Kind::File => {
            entry.path.rsplit_once('/').map_or(
                "/",
                |(parent, _)| if parent.is_empty() { "/" } else { parent },
            )
        }
    }
}

impl<'a> Planner<'a> {
    pub fn new(tree: &'a Root, record: &'a Record) -> Self {
        let root = tree.fd();
        Planner {
            root,
            tree,
            resolver: Resolver::new(root),
            record,
            planned: Sides::default(),
            chains: Sides::default(),
            walked: Sides::default(),
            deep: Sides {
                storage: false,
                root: deep_marked(root),
            },
            pending: Vec::new(),
            deep_sides: Vec::new(),
            marks_left: Vec::new(),
            volume: None,
            retired: fs::Retired::new(),
        }
    }

    pub fn plan<'m>(mut self, manifest: &'m Manifest) -> (Plan<'m>, Resolver<'a>) {
        let storages = manifest.storages.iter().map(|s| self.storage(s)).collect();
        if self.deep.root {
            self.deep_sides.push(None);
        }
        let plan = Plan {
            storages,
            pending: std::mem::take(&mut self.pending),
            deep_sides: std::mem::take(&mut self.deep_sides),
            marks_left: std::mem::take(&mut self.marks_left),
            foreign: Vec::new(),
        };
        (plan, self.resolver)
    }

    fn storage<'m>(&mut self, storage: &'m Storage) -> StoragePlan<'m> {
        for link in self.chains.iter_mut().flat_map(std::mem::take) {
            self.retired.retire(link.fd);
        }
        self.planned.storage.clear();
        let mut plan = StoragePlan {
            storage,
            state: StorageState::Ok,
            create: None,
            entries: Vec::new(),
        };
        self.volume = None;
        if let Some(mount_point) = &storage.mount_point {
            match volume::check(self.root, storage, mount_point) {
                Ok(volume) => self.volume = Some(volume),
                Err(why) => {
                    plan.state = StorageState::NotMounted(why);
                    plan.entries = skipped(storage, Skip::StorageNotMounted);
                    return plan;
                }
            }
        }
        let storage_fd = match self.storage_dir(storage) {
            Ok(Ok(fd)) => Some(fd),
            Ok(Err(create)) => {
                plan.state = StorageState::Missing;
                plan.create = Some(create);
                None
            }
            Err(problem) => {
                plan.state = StorageState::Failed(problem);
                plan.entries = skipped(storage, Skip::StorageError);
                return plan;
            }
        };
        plan.entries = self.entries(storage, storage_fd.as_ref().map(AsFd::as_fd));
        plan
    }

    /// Plans a storage's entries below its directory (`None` while it is to be made).
    fn entries<'m>(
        &mut self,
        storage: &'m Storage,
        storage_fd: Option<BorrowedFd<'_>>,
    ) -> Vec<EntryPlan<'m>> {
        self.deep.storage = storage_fd.is_some_and(deep_marked);
        if self.deep.storage {
            self.deep_sides.push(Some(storage.path.clone()));
        }
        if storage_fd.is_some() {
            self.resolver.add_storage(&storage.path);
        }
        storage
            .entries
            .iter()
            .map(|entry| self.entry(storage, storage_fd, entry))
            .collect()
    }

    /// Opens the storage directory (`Ok(Ok)`), or says what to create (`Ok(Err)`).
    fn storage_dir(&self, storage: &Storage) -> Result<Result<OwnedFd, StorageCreate>, Problem> {
        match fs::open_in_root(self.root, &storage.path) {
            Ok(fd) => return Ok(Ok(fd)),
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(self.obstacle_in_root(&storage.path, errno)),
        }
        let mut base = storage.path.as_str();
        let mut names = Vec::new();
        let parent = loop {
            let (parent, name) = base.rsplit_once('/').unwrap_or(("", base));
            names.push(name.to_owned());
            let parent = if parent.is_empty() { "/" } else { parent };
            match fs::open_in_root(self.root, parent) {
                Ok(fd) => break (parent, fd, name),
                Err(Errno::NOENT) if parent != "/" => base = parent,
                Err(errno) => return Err(self.obstacle_in_root(parent, errno)),
            }
        };
        let (base, fd, first) = parent;
        // A dangling symlink where the first missing part should be would make mkdir fail.
        if let Err(errno) = fs::open_child_path(&fd, first) {
            if errno != Errno::NOENT {
                let shown = self.shown_in_root(&format!("{}/{first}", base.trim_end_matches('/')));
                return Err(match fs::diagnose(&fd, first, errno) {
                    Obstacle::Symlink(target) => Problem::Symlink {
                        path: shown,
                        target,
                    },
                    _ => Problem::os(shown, fs::Op::Open, errno),
                });
            }
        }
        names.reverse();
        Ok(Err(StorageCreate {
            base: base.to_owned(),
            names,
        }))
    }

    fn obstacle_in_root(&self, path: &str, errno: Errno) -> Problem {
        let shown = self.shown_in_root(path);
        if errno == Errno::NOTDIR {
            Problem::NotADirectory { path: shown }
        } else {
            Problem::os(shown, fs::Op::Open, errno)
        }
    }

    fn shown_in_root(&self, path: &str) -> String {
        self.tree.path(None, path)
    }

    pub fn shown(&self, storage: &str, side: Side, path: &str) -> String {
        match side {
            Side::Storage => self.tree.path(Some(storage), path),
            Side::Root => self.tree.path(None, path),
        }
    }

    fn entry<'m>(
        &mut self,
        storage: &'m Storage,
        storage_fd: Option<BorrowedFd<'_>>,
        entry: &'m Entry,
    ) -> EntryPlan<'m> {
        let mut plan = EntryPlan {
            entry,
            state: EntryState::Present,
            actions: Vec::new(),
            actual: None,
        };
        if let Err(problem) = self.both_sides(storage, storage_fd, entry, &mut plan) {
            plan.state = EntryState::Failed(problem);
        } else if plan.state == EntryState::Present
            && plan.actions.iter().any(|a| a.kind == ActionKind::Mkdir)
        {
            plan.state = EntryState::Missing;
        }
        plan
    }

    /// Plans the source below the storage, judges it where it exists, then the mount point.
    fn both_sides(
        &mut self,
        storage: &Storage,
        storage_fd: Option<BorrowedFd<'_>>,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> Result<(), Problem> {
        let dirs = dirs_of(entry);
        let attrs_of = |prefix: &str| -> Attrs {
            storage
                .declared(prefix)
                .map_or_else(|| entry.parent.clone(), Clone::clone)
        };
        let exists = self.side(
            storage,
            Side::Storage,
            storage_fd,
            dirs,
            entry,
            &attrs_of,
            plan,
        )?;
        let source = if entry.kind == Kind::Directory && exists {
            self.source_meta(storage, entry, plan)?
        } else {
            None
        };
        // Built only for a mount point to make: a no-op run formats no ids.
        let root_attrs_of = |prefix: &str| -> Attrs {
            match source {
                Some(meta) if prefix == entry.path => attrs_of_meta(meta),
                _ => attrs_of(prefix),
            }
        };
        let root = self.root;
        self.side(
            storage,
            Side::Root,
            Some(root),
            dirs,
            entry,
            &root_attrs_of,
            plan,
        )?;
        Ok(())
    }

    /// The owner and mode the mount point takes: the source's actual ones, as impermanence
    /// does; none while the source waits for its owner (the mount point waits with it).
    fn source_meta(
        &mut self,
        storage: &Storage,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> Result<Option<Meta>, Problem> {
        match self.judge(storage, entry, plan) {
            Ok(_) if plan.state == EntryState::Deferred => Ok(None),
            Ok(meta) => Ok(Some(meta)),
            Err(errno) => Err(Problem::os(
                self.shown(&storage.path, Side::Storage, &entry.path),
                fs::Op::Stat,
                errno,
            )),
        }
    }

    /// Walks one side and plans what is missing. Returns the entry's directory when it exists.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &mut self,
        storage: &Storage,
        side: Side,
        base: Option<BorrowedFd<'_>>,
        dirs: &str,
        entry: &Entry,
        attrs_of: &dyn Fn(&str) -> Attrs,
        plan: &mut EntryPlan<'_>,
    ) -> Result<bool, Problem> {
        let walked = match base {
            _ if dirs == "/" => Walked::Exists,
            Some(base) => self.walk(storage, side, base, dirs, entry, plan)?,
            None => Walked::MissingFrom(first_component(dirs)),
        };
        match walked {
            Walked::Exists => Ok(true),
            Walked::MissingFrom(from) => {
                self.plan_from(side, &from, dirs, entry, attrs_of, plan);
                Ok(false)
            }
        }
    }

    /// Opens `dirs` below `base` without following a symlink, reusing what the previous
    /// entry opened; on a marked side every existing component is looked at.
    fn walk(
        &mut self,
        storage: &Storage,
        side: Side,
        base: BorrowedFd<'_>,
        dirs: &str,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> Result<Walked, Problem> {
        if let Some(from) = self.planned_from(side, dirs) {
            return Ok(Walked::MissingFrom(from));
        }
        let mut chain = std::mem::take(&mut self.chains[side]);
        let walked = &mut self.walked[side];
        let shared = chain
            .iter()
            .take_while(|link| manifest::contains(&walked[..link.len], dirs))
            .count();
        walked.clear();
        walked.push_str(dirs);
        for link in chain.drain(shared..) {
            self.retired.retire(link.fd);
        }
        let result = self.walk_chain(storage, side, base, &mut chain, dirs, entry, plan);
        self.chains[side] = chain;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_chain(
        &mut self,
        storage: &Storage,
        side: Side,
        base: BorrowedFd<'_>,
        chain: &mut Vec<Link>,
        dirs: &str,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> Result<Walked, Problem> {
        let done = chain.last().map_or(0, |l| l.len);
        if done == dirs.len() && done > 0 {
            return Ok(Walked::Exists);
        }
        let rest = &dirs[done..];
        let deep = self.deep[side];
        let volume = self.volume.filter(|_| side == Side::Storage);
        if !deep {
            let from = chain.last().map_or(base, |l| l.fd.as_fd());
            if let Some(fd) = open_whole(volume.is_some(), from, rest) {
                chain.push(Link {
                    len: dirs.len(),
                    fd,
                });
                return Ok(Walked::Exists);
            }
        }
        let mut prefix = dirs[..done].to_owned();
        for name in rest.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(name);
            let parent = chain.last().map_or(base, |l| l.fd.as_fd());
            match self.open_on_volume(volume, parent, name, storage, &prefix) {
                Ok(fd) => {
                    if deep {
                        self.look_for_mark(storage, side, &prefix, &fd, entry, plan);
                    }
                    chain.push(Link {
                        len: prefix.len(),
                        fd,
                    });
                }
                Err(Ok(errno)) => {
                    return match fs::diagnose(parent, name, errno) {
                        Obstacle::Missing => Ok(Walked::MissingFrom(prefix)),
                        obstacle => Err(self.obstacle(storage, obstacle, side, &prefix, errno)),
                    };
                }
                Err(Err(problem)) => return Err(problem),
            }
        }
        Ok(Walked::Exists)
    }

    /// Opens one component; below a storage on its volume, one that crosses into another
    /// mount is asked where it is (one `statx`, only then), and refused off the volume.
    fn open_on_volume(
        &self,
        volume: Option<volume::Volume>,
        parent: BorrowedFd<'_>,
        name: &str,
        storage: &Storage,
        prefix: &str,
    ) -> Result<OwnedFd, Result<Errno, Problem>> {
        let Some(volume) = volume else {
            return fs::open_child_path(parent, name).map_err(Ok);
        };
        match fs::open_beneath_same_mount(parent, name) {
            Err(Errno::XDEV) => {}
            other => return other.map_err(Ok),
        }
        let fd = fs::open_child_path(parent, name).map_err(Ok)?;
        let shown = self.shown(&storage.path, Side::Storage, prefix);
        volume.holds(&fd, &shown).map_err(|why| {
            Err(Problem::OffVolume {
                why,
                mount_point: storage.mount_point.clone().unwrap_or_default(),
            })
        })?;
        Ok(fd)
    }

    /// The first component of `dirs` that a previous entry already planned, if any.
    fn planned_from(&self, side: Side, dirs: &str) -> Option<String> {
        let planned = &self.planned[side];
        if planned.is_empty() {
            return None;
        }
        let mut prefix = String::new();
        for name in dirs.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(name);
            if planned.contains(&prefix) {
                return Some(prefix);
            }
        }
        None
    }

    fn obstacle(
        &self,
        storage: &Storage,
        obstacle: Obstacle,
        side: Side,
        prefix: &str,
        errno: Errno,
    ) -> Problem {
        let path = self.shown(&storage.path, side, prefix);
        match obstacle {
            Obstacle::Symlink(target) => Problem::Symlink { path, target },
            Obstacle::NotADirectory => Problem::NotADirectory { path },
            Obstacle::Missing | Obstacle::Other => Problem::os(path, fs::Op::Open, errno),
        }
    }

    /// Plans every directory from `from` down to `dirs` that no earlier entry planned.
    fn plan_from(
        &mut self,
        side: Side,
        from: &str,
        dirs: &str,
        entry: &Entry,
        attrs_of: &dyn Fn(&str) -> Attrs,
        plan: &mut EntryPlan<'_>,
    ) {
        let mut path = from.to_owned();
        loop {
            if self.planned[side].insert(path.clone()) {
                let attrs = attrs_of(&path);
                let uid = self.resolver.resolve(&attrs.user, Db::User);
                let gid = self.resolver.resolve(&attrs.group, Db::Group);
                plan.actions.push(Action {
                    kind: ActionKind::Mkdir,
                    dir: Dir {
                        side,
                        path: path.clone(),
                        attrs,
                        uid,
                        gid,
                        own: entry.kind == Kind::Directory && path == dirs,
                    },
                });
            }
            if path.len() >= dirs.len() {
                break;
            }
            let rest = &dirs[path.len() + 1..];
            path.push('/');
            path.push_str(rest.split('/').next().unwrap_or(rest));
        }
    }

    /// Compares an existing source, the last link of the storage side, with its declaration.
    fn judge(
        &mut self,
        storage: &Storage,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> Result<Meta, Errno> {
        let fd = &self.chains.storage.last().ok_or(Errno::NOENT)?.fd;
        let meta = fs::meta(fd)?;
        plan.actual = Some(meta);
        let Some(attrs) = &entry.attrs else {
            return Ok(meta);
        };
        let uid = self.resolver.resolve(&attrs.user, Db::User);
        let gid = self.resolver.resolve(&attrs.group, Db::Group);
        if uid == Some(meta.uid) && gid == Some(meta.gid) && meta.mode == attrs.mode {
            return Ok(meta);
        }
        // Rare from here on: a handle of its own, so that the chain can be borrowed again.
        let fd = self
            .chains
            .storage
            .last()
            .ok_or(Errno::NOENT)?
            .fd
            .try_clone()
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        // On a marked side the walk has looked at this directory already.
        if !self.deep.storage
            && self.look_for_mark(storage, Side::Storage, &entry.path, &fd, entry, plan)
        {
            return Ok(meta);
        }
        if plan.state == EntryState::Deferred {
            return Ok(meta);
        }
        if self.recorded(storage, entry, &fd, meta) {
            plan.state = EntryState::Deferred;
            return Ok(meta);
        }
        plan.state = drift_or_unresolvable(attrs, (uid, gid), meta);
        Ok(meta)
    }

    /// True when this run's record (file systems without marks) lists the very directory,
    /// which the one rule for deferred owners still lets have its owner.
    fn recorded(&self, storage: &Storage, entry: &Entry, fd: &OwnedFd, meta: Meta) -> bool {
        self.record.pending.iter().any(|p| {
            p.storage.as_deref() == Some(storage.path.as_str())
                && p.path == entry.path
                && p.same_directory(meta, fs::birth(fd))
                && deferred::may_give(&p.mark(), meta, entry.attrs.as_ref()).is_ok()
        })
    }

    /// Looks for the mark of a deferred owner on an existing directory. A marked directory
    /// that `deferred::may_give` lets have its owner gets it planned when the name resolves
    /// now, else it is recorded for `finish`; any other marked one is noted and left alone.
    fn look_for_mark(
        &mut self,
        storage: &Storage,
        side: Side,
        path: &str,
        fd: &OwnedFd,
        entry: &Entry,
        plan: &mut EntryPlan<'_>,
    ) -> bool {
        let Ok(meta) = fs::meta(fd) else { return false };
        let Some(mark) = deferred::read_mark(fd) else {
            return false;
        };
        let own = entry.kind == Kind::Directory && path == entry.path;
        if !own && storage.entries.iter().any(|e| e.path == path) {
            // Another entry's own directory: that entry's walk judges it.
            return false;
        }
        let declared = if own { entry.attrs.as_ref() } else { None };
        if let Err(why) = deferred::may_give(&mark, meta, declared) {
            self.note_mark(storage, side, path, meta, declared, why);
            return false;
        }
        let attrs = declared.cloned().unwrap_or_else(Attrs::root_0755);
        let uid = self.resolver.resolve(&attrs.user, Db::User);
        let gid = self.resolver.resolve(&attrs.group, Db::Group);
        plan.state = EntryState::Deferred;
        let dir = Dir {
            side,
            path: path.to_owned(),
            attrs,
            uid,
            gid,
            own,
        };
        if dir.deferred() {
            self.pending
                .push(pending_of(storage, &dir, entry, &mark, meta, fs::birth(fd)));
        } else {
            plan.actions.push(Action {
                kind: ActionKind::GiveOwner,
                dir,
            });
        }
        true
    }

    /// Notes a marked directory that gets no owner, unless it has its declared one already
    /// (a run cut short after giving it, before dropping the mark).
    fn note_mark(
        &mut self,
        storage: &Storage,
        side: Side,
        path: &str,
        meta: Meta,
        declared: Option<&Attrs>,
        why: deferred::MarkDrift,
    ) {
        if let Some(attrs) = declared {
            let uid = self.resolver.resolve(&attrs.user, Db::User);
            let gid = self.resolver.resolve(&attrs.group, Db::Group);
            if (Some(meta.uid), Some(meta.gid), meta.mode) == (uid, gid, attrs.mode) {
                return;
            }
        }
        self.marks_left.push(MarkLeft {
            storage: (side == Side::Storage).then(|| storage.path.clone()),
            path: path.to_owned(),
            shown: self.shown(&storage.path, side, path),
            why,
        });
    }
}

/// The common case on every boot after the first: everything is there, one call; below a
/// storage on its volume, one that stays on the storage's mount.
fn open_whole(on_volume: bool, from: BorrowedFd<'_>, rest: &str) -> Option<OwnedFd> {
    fs::open_descending(from, rest, on_volume).ok()
}

/// A side's base carries the mark that an earlier run left deferred owners on it.
fn deep_marked(fd: impl AsFd) -> bool {
    fs::reopen(fd)
        .ok()
        .and_then(|fd| fs::get_mark(&fd, deferred::PENDING_MARK).ok().flatten())
        .is_some()
}

fn first_component(dirs: &str) -> String {
    let first = dirs.split('/').find(|c| !c.is_empty()).unwrap_or_default();
    format!("/{first}")
}

fn skipped(storage: &Storage, why: Skip) -> Vec<EntryPlan<'_>> {
    storage
        .entries
        .iter()
        .map(|entry| EntryPlan {
            entry,
            state: EntryState::Skipped(why),
            actions: Vec::new(),
            actual: None,
        })
        .collect()
}

fn attrs_of_meta(meta: Meta) -> Attrs {
    Attrs {
        user: Owner {
            name: meta.uid.to_string().into(),
            id: Some(meta.uid),
        },
        group: Owner {
            name: meta.gid.to_string().into(),
            id: Some(meta.gid),
        },
        mode: meta.mode,
    }
}

pub fn pending_of(
    storage: &Storage,
    dir: &Dir,
    entry: &Entry,
    mark: &Mark,
    meta: Meta,
    birth: Option<u128>,
) -> Pending {
    Pending {
        storage: match dir.side {
            Side::Storage => Some(storage.path.clone()),
            Side::Root => None,
        },
        path: dir.path.clone(),
        entry: entry.describe().to_string(),
        user: mark.user.clone(),
        group: mark.group.clone(),
        uid: mark.uid,
        gid: mark.gid,
        mode: mark.mode,
        dev: meta.dev,
        ino: meta.ino,
        birth,
        marked: true,
    }
}

/// An existing source that is not as declared: drift where what is known differs, else its
/// owner cannot be judged because a name does not resolve.
fn drift_or_unresolvable(
    attrs: &Attrs,
    (uid, gid): (Option<u32>, Option<u32>),
    meta: Meta,
) -> EntryState {
    let owner_differs = uid.is_some_and(|u| u != meta.uid) || gid.is_some_and(|g| g != meta.gid);
    // Boxed: rare, and 120 bytes that every entry's state would carry inline.
    let judged = Box::new(Judged {
        declared: attrs.clone(),
        uid,
        gid,
        actual: meta,
    });
    if owner_differs || meta.mode != attrs.mode {
        EntryState::Drift(judged)
    } else {
        EntryState::Unresolvable(judged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree to plan against; the planner only reads, so no root is needed.
    struct Tree(std::path::PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pp-plan-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }
        fn mkdir(&self, path: &str) {
            std::fs::create_dir_all(self.0.join(path)).unwrap();
        }
        fn plan(&self, manifest: &str) -> Vec<(String, Vec<String>)> {
            let manifest = crate::manifest::parse(manifest).unwrap();
            let root = Root::open(&self.0).unwrap();
            let record = Record::default();
            let (plan, _) = Planner::new(&root, &record).plan(&manifest);
            plan.storages
                .iter()
                .flat_map(|s| &s.entries)
                .map(|e| {
                    let actions = e
                        .actions
                        .iter()
                        .map(|a| {
                            format!(
                                "{:?} {:?}{} {}",
                                a.kind, a.dir.side, a.dir.path, a.dir.attrs
                            )
                        })
                        .collect();
                    (format!("{:?}", e.state), actions)
                })
                .collect()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const TWO: &str = r#"{"version":1,"storages":[{"path":"/p","directories":[
      {"path":"/var/lib/a","user":"root","group":"root","mode":"0700"},
      {"path":"/var/lib/b","user":"u","group":"g","uid":7,"gid":8,"mode":"0750"}]}]}"#;

    #[test]
    fn a_fresh_storage_plans_every_directory_once_parents_first() {
        let t = Tree::new("fresh");
        let plan = t.plan(TWO);
        assert_eq!(plan[0].0, "Missing");
        assert_eq!(
            plan[0].1,
            [
                "Mkdir Storage/var root:root 0755",
                "Mkdir Storage/var/lib root:root 0755",
                "Mkdir Storage/var/lib/a root:root 0700",
                "Mkdir Root/var root:root 0755",
                "Mkdir Root/var/lib root:root 0755",
                "Mkdir Root/var/lib/a root:root 0700",
            ]
        );
        // The shared parents are planned once, by the first entry that needs them.
        assert_eq!(
            plan[1].1,
            [
                "Mkdir Storage/var/lib/b u:g 0750",
                "Mkdir Root/var/lib/b u:g 0750"
            ]
        );
    }

    #[test]
    fn only_what_is_missing_is_planned() {
        let t = Tree::new("partial");
        t.mkdir("p/var/lib/a");
        t.mkdir("var/lib");
        let plan = t.plan(TWO);
        assert_eq!(plan[0].1, ["Mkdir Root/var/lib/a 0:0 0755"]);
        assert!(plan[0].0.starts_with("Drift"), "{plan:?}");
        assert_eq!(plan[1].0, "Missing");
    }

    #[test]
    fn a_symlink_below_the_storage_fails_the_entry_and_plans_nothing_for_it() {
        let t = Tree::new("link");
        t.mkdir("p");
        std::os::unix::fs::symlink("/", t.0.join("p/var")).unwrap();
        let plan = t.plan(TWO);
        assert!(plan[0].0.starts_with("Failed(Symlink"), "{plan:?}");
        assert!(plan[0].1.is_empty());
    }

    #[test]
    fn a_top_level_file_needs_no_directory() {
        let t = Tree::new("swap");
        let plan =
            t.plan(r#"{"version":1,"storages":[{"path":"/p","files":[{"path":"/swapfile"}]}]}"#);
        assert_eq!(plan, [("Present".to_owned(), Vec::<String>::new())]);
    }
}
