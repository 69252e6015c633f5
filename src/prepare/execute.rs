//! The executor: carries out a plan, so that every directory appears only with its final owner
//! and mode, whenever the process is killed or the power goes.
//!
//! A directory that `mkdir` alone makes exactly right (root-owned like us, no set-id bits, in a
//! parent with neither set-group-id nor a default ACL) is made at its name at once. Any other is
//! made under a temporary name in the same parent, private (0700), given its owner, mode and,
//! for a deferred owner, its mark, and only then renamed into place without replacing anything
//! (`renameat2(RENAME_NOREPLACE)`). A run that was killed leaves at most an empty temporary
//! directory, which the next run removes when it makes that directory again.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::plan::{
    Action, ActionKind, Dir, EntryPlan, EntryState, Foreign, LeftoverWhy, Outcome, Plan, Problem,
    Side, Sides, Skip, StoragePlan, StorageState,
};
use crate::deferred::{self, Mark, Pending};
use crate::escape;
use crate::fs;
use crate::manifest::Storage;
use crate::root::Root;

/// One directory the executor opened or made, for the entries after it.
struct Link {
    path: String,
    fd: Option<OwnedFd>,
    traits: Traits,
    /// The temporary name a stage stands under until it is placed.
    disk_name: Option<String>,
    /// The entries that made something in this stage, which fail if it cannot be placed.
    members: Vec<usize>,
}

/// Where a directory is: the link whose handle reaches it, and the path from there.
struct Located {
    at: Option<usize>,
    /// Empty, or names ending in `/`.
    rel: String,
    traits: Traits,
}

/// What a parent directory means for the directories made in it. Four independent facts,
/// each asked at a different step of `make`, so flags rather than a state machine.
#[derive(Clone, Copy, Default)]
#[allow(clippy::struct_excessive_bools)]
struct Traits {
    /// New directories below it get exactly the owner and mode `mkdir` is given.
    plain: bool,
    /// Only root can write to it, so a name in it cannot be swapped under us.
    private: bool,
    /// This run made it, so nothing an earlier run left can be in it.
    fresh: bool,
    /// It is in a stage that is not placed yet, so nobody sees what is made in it.
    staged: bool,
}

impl Traits {
    /// The one rule for a directory this run makes in a parent with `parent`'s traits.
    fn of_new(parent: Traits, dir: &Dir, staged: bool) -> Traits {
        Traits {
            // A set-group-id directory hands its group and the bit to what is made in it.
            plain: parent.plain && dir.attrs.mode & 0o2000 == 0,
            // Private only below a private parent: a root-only directory inside a user's one
            // can be swapped for a link by that user.
            private: parent.private && dir.uid == Some(0) && dir.attrs.mode & 0o022 == 0,
            fresh: true,
            staged: parent.staged || staged,
        }
    }
}

pub struct Executor<'a> {
    root: BorrowedFd<'a>,
    tree: &'a Root,
    euid: u32,
    egid: u32,
    chains: Sides<Vec<Link>>,
    bases: Sides<Option<Link>>,
    /// The side's base carries the pending mark already (set before a deferred directory).
    marked: Sides<bool>,
    pub pending: Vec<Pending>,
    /// Entries (by index in their storage) whose stage could not be placed.
    failures: Vec<(usize, Problem)>,
    storage_path: String,
    /// The storage directory is being made: what stands below its path on the root side is
    /// the storage side.
    creating_storage: bool,
    /// File systems met (by device) and whether they order metadata; where one does not, a
    /// directory is written to disk before it is renamed into place.
    ordered: std::cell::RefCell<Vec<(u64, bool)>>,
    /// Names of persist-prep's temporary directory met in directories that others can write
    /// to, left alone; the directory was made under another name.
    foreign: std::cell::RefCell<Vec<Foreign>>,
}

/// The temporary name a directory is made under: fixed for a name, so that the next run finds
/// what a killed one left, and short whatever the name's length.
pub fn temp_name(name: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(".persist-prep.{hash:016x}")
}

impl<'a> Executor<'a> {
    pub fn new(tree: &'a Root) -> Self {
        // Modes are given exactly; mkdir must not have bits masked off behind our back.
        rustix::process::umask(rustix::fs::Mode::empty());
        Executor {
            root: tree.fd(),
            tree,
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            chains: Sides::default(),
            bases: Sides::default(),
            marked: Sides::default(),
            pending: Vec::new(),
            failures: Vec::new(),
            storage_path: String::new(),
            creating_storage: false,
            ordered: std::cell::RefCell::new(Vec::new()),
            foreign: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Carries out the plan, which it leaves as it is: what became of each storage and entry
    /// comes back as one outcome per storage, in the plan's order.
    pub fn execute(&mut self, plan: &Plan<'_>) -> Vec<Outcome> {
        self.bases.root = fs::open_in_root(self.root, "/")
            .ok()
            .map(|fd| existing("/", fd));
        plan.storages.iter().map(|s| self.storage(s)).collect()
    }

    fn storage(&mut self, s: &StoragePlan<'_>) -> Outcome {
        self.chains = Sides::default();
        self.marked.storage = false;
        self.storage_path.clone_from(&s.storage.path);
        let mut outcome = Outcome::default();
        let mut stage = None;
        match self.open_storage(s, &mut stage) {
            None => return outcome,
            Some(Ok(link)) => self.bases.storage = Some(link),
            Some(Err(problem)) => {
                outcome.storage = Some(StorageState::Failed(problem));
                let skipped = EntryState::Skipped(Skip::StorageError);
                outcome.entries = (0..s.entries.len()).map(|i| (i, skipped.clone())).collect();
                outcome.foreign = self.foreign.take();
                return outcome;
            }
        }
        self.entries(s, &mut outcome);
        if let Some(stage) = stage {
            self.place_storage(s, &stage, &mut outcome);
        } else if s.state == StorageState::Missing {
            outcome.storage = Some(StorageState::Created);
        }
        for (idx, problem) in std::mem::take(&mut self.failures) {
            outcome.entries.push((idx, EntryState::Failed(problem)));
        }
        outcome.foreign = self.foreign.take();
        outcome
    }

    /// The storage directory to work below: opened, or made (as a stage where its parent
    /// allows); `None` when the plan skips the storage.
    fn open_storage(
        &mut self,
        s: &StoragePlan<'_>,
        stage: &mut Option<StorageStage>,
    ) -> Option<Result<Link, Problem>> {
        let storage = s.storage;
        Some(match &s.state {
            StorageState::Ok => fs::open_in_root(self.root, &storage.path)
                .map(|fd| existing("/", fd))
                .map_err(|errno| {
                    Problem::os(self.tree.path(Some(&storage.path), ""), fs::Op::Open, errno)
                }),
            StorageState::Missing => {
                self.creating_storage = true;
                let made = self.make_storage(s.create.as_ref(), storage, &s.entries, stage);
                self.creating_storage = false;
                made
            }
            _ => return None,
        })
    }

    /// Carries out the storage's entries in order, then places the stages left open.
    fn entries(&mut self, s: &StoragePlan<'_>, outcome: &mut Outcome) {
        for (idx, e) in s.entries.iter().enumerate() {
            if matches!(e.state, EntryState::Failed(_) | EntryState::Skipped(_))
                || e.actions.is_empty()
            {
                continue;
            }
            let result = self.entry(s.storage, idx, &s.entries);
            outcome
                .entries
                .push((idx, after(e.state.clone(), &e.actions, result)));
        }
        self.settle(Side::Storage, 0);
        self.settle(Side::Root, 0);
    }

    /// Places a storage directory made as a stage, with everything made below it.
    fn place_storage(&mut self, s: &StoragePlan<'_>, stage: &StorageStage, outcome: &mut Outcome) {
        self.bases.storage = None;
        let shown = self.tree.path(None, &stage.path);
        match self.place(stage.parent.as_fd(), &stage.tmp, &stage.leaf) {
            Ok(()) => {
                log::info!(
                    "created storage directory {} (root:root 0755)",
                    escape::text(&shown)
                );
                outcome.storage = Some(StorageState::Created);
            }
            Err(errno) => {
                let problem = place_problem(&shown, errno);
                for (idx, e) in s.entries.iter().enumerate() {
                    if e.actions.iter().any(|a| a.dir.side == Side::Storage) {
                        outcome
                            .entries
                            .push((idx, EntryState::Failed(problem.clone())));
                    }
                }
                outcome.storage = Some(StorageState::Failed(problem));
            }
        }
    }

    /// Makes the storage directory's missing part, root root 0755, and opens it. Its first
    /// new component becomes a stage when its parent allows (see `make`), so that the whole
    /// storage appears at its path only once everything in it is made.
    fn make_storage(
        &mut self,
        create: Option<&super::plan::StorageCreate>,
        storage: &Storage,
        all: &[EntryPlan<'_>],
        stage: &mut Option<StorageStage>,
    ) -> Result<Link, Problem> {
        let create = create.ok_or(Problem::os(
            storage.path.clone(),
            fs::Op::Create,
            Errno::INVAL,
        ))?;
        let fd = fs::open_in_root(self.root, &create.base).map_err(|errno| {
            Problem::os(self.tree.path(None, &create.base), fs::Op::Open, errno)
        })?;
        let mut parent = existing(&create.base, fd);
        let mut path = create.base.trim_end_matches('/').to_owned();
        for name in &create.names {
            path.push('/');
            path.push_str(name);
            let (link, started) = self.make_storage_part(&parent, &path, name, all)?;
            let old = std::mem::replace(&mut parent, link);
            if let (Some(tmp), Some(parent_fd)) = (started, old.fd) {
                *stage = Some(StorageStage {
                    parent: parent_fd,
                    tmp,
                    leaf: name.clone(),
                    path: path.clone(),
                });
            }
        }
        Ok(parent)
    }

    /// Makes one missing component of the storage path in `parent` and opens it; returns it,
    /// and the temporary name when it started a stage.
    fn make_storage_part(
        &self,
        parent: &Link,
        path: &str,
        name: &str,
        all: &[EntryPlan<'_>],
    ) -> Result<(Link, Option<String>), Problem> {
        let shown = self.tree.path(None, path);
        let dir = Dir {
            side: Side::Root,
            path: path.to_owned(),
            attrs: crate::manifest::Attrs::root_0755(),
            uid: Some(0),
            gid: Some(0),
            own: false,
        };
        let pfd = parent.fd.as_ref().map_or(self.root, AsFd::as_fd);
        let (_, staged_as) = self.make((pfd, "", parent.traits), name, &dir, &shown, all)?;
        let on_disk = staged_as.as_deref().unwrap_or(name);
        let fd = fs::open_child(pfd, on_disk).map_err(|errno| open_problem(&shown, errno))?;
        if staged_as.is_none() && !parent.traits.staged {
            log::info!(
                "created storage directory {} (root:root 0755)",
                escape::text(&shown)
            );
        }
        let link = Link {
            path: path.to_owned(),
            fd: Some(fd),
            traits: Traits::of_new(parent.traits, &dir, staged_as.is_some()),
            disk_name: None,
            members: Vec::new(),
        };
        Ok((link, staged_as))
    }

    /// Carries out an entry's actions. Below a directory that could not be made nothing can
    /// be, but the rest still is (the other side, parents that later entries share), so that
    /// one entry's failure stays its own; the first problem is the entry's.
    fn entry(
        &mut self,
        storage: &Storage,
        idx: usize,
        all: &[EntryPlan<'_>],
    ) -> Result<(), Problem> {
        let mut first = None;
        let mut failed: Vec<(Side, &str)> = Vec::new();
        for action in &all[idx].actions {
            let dir = &action.dir;
            if failed
                .iter()
                .any(|&(side, path)| side == dir.side && crate::manifest::contains(path, &dir.path))
            {
                continue;
            }
            if let Err(problem) = self.action(storage, idx, all, action) {
                failed.push((dir.side, dir.path.as_str()));
                first.get_or_insert(problem);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn action(
        &mut self,
        storage: &Storage,
        idx: usize,
        all: &[EntryPlan<'_>],
        action: &Action,
    ) -> Result<(), Problem> {
        let dir = &action.dir;
        let shown = match dir.side {
            Side::Storage => self.tree.path(Some(&storage.path), &dir.path),
            Side::Root => self.tree.path(None, &dir.path),
        };
        let (parent_path, name) = dir.path.rsplit_once('/').unwrap_or(("", &dir.path));
        let parent_path = if parent_path.is_empty() {
            "/"
        } else {
            parent_path
        };
        let at = self.parent(dir.side, parent_path, &shown)?;
        match action.kind {
            ActionKind::Mkdir => self.mkdir(storage, idx, all, dir, (&at, name, &shown)),
            ActionKind::GiveOwner => {
                let pfd = self.link_fd(dir.side, at.at);
                give_owner(pfd, &format!("{}{name}", at.rel), dir, &shown)?;
                log::info!(
                    "gave {} its deferred owner {}:{}",
                    escape::text(&shown),
                    escape::text(&dir.attrs.user.name),
                    escape::text(&dir.attrs.group.name)
                );
                Ok(())
            }
        }
    }

    /// Makes one planned directory in the parent located for it, and keeps it in the chain.
    fn mkdir(
        &mut self,
        storage: &Storage,
        idx: usize,
        all: &[EntryPlan<'_>],
        dir: &Dir,
        (at, name, shown): (&Located, &str, &str),
    ) -> Result<(), Problem> {
        if dir.deferred() {
            self.mark_side(dir.side)
                .map_err(|errno| Problem::os(shown.to_owned(), fs::Op::MarkBase, errno))?;
        }
        let traits = at.traits;
        let pfd = self.link_fd(dir.side, at.at);
        let (made, staged_as) = self.make((pfd, &at.rel, traits), name, dir, shown, all)?;
        if traits.staged {
            self.join_stage(dir.side, idx);
        }
        if let Some(made) = made {
            let mark = mark_of(dir);
            let mut p =
                super::plan::pending_of(storage, dir, all[idx].entry, &mark, made.meta, made.birth);
            p.marked = made.marked;
            self.pending.push(p);
        }
        self.chains[dir.side].push(Link {
            path: dir.path.clone(),
            fd: None,
            traits: Traits::of_new(traits, dir, staged_as.is_some()),
            members: if staged_as.is_some() {
                vec![idx]
            } else {
                Vec::new()
            },
            disk_name: staged_as,
        });
        Ok(())
    }

    /// Finds the directory `path` on a side, as a handle plus a path relative to it. A
    /// directory this run made private (root-owned, writable by root alone) is not opened:
    /// what lies below it is reached through it by name, since no one else can have put a
    /// link there. That saves an open and a close per directory on a first boot.
    fn parent(&mut self, side: Side, path: &str, shown: &str) -> Result<Located, Problem> {
        if path == "/" {
            self.settle(side, 0);
            let traits = self.link(side, None).map(|l| l.traits).unwrap_or_default();
            return Ok(Located {
                at: None,
                rel: String::new(),
                traits,
            });
        }
        let keep = self.chains[side]
            .iter()
            .take_while(|l| crate::manifest::contains(&l.path, path))
            .count();
        self.settle(side, keep);
        if self.chains[side].last().is_some_and(|l| l.path == path) {
            return self.reach(side, keep - 1, shown);
        }
        let Some(last) = self.chains[side].last() else {
            let fd = fs::open_dir_beneath(self.link_fd(side, None), path)
                .map_err(|errno| open_problem(shown, errno))?;
            self.chains[side].push(existing(path, fd));
            return Ok(Located {
                at: Some(0),
                rel: String::new(),
                traits: self.chains[side][0].traits,
            });
        };
        let (from, rest) = (keep - 1, path[last.path.len()..].to_owned());
        let base = self.reach(side, from, shown)?;
        let fd = fs::open_dir_beneath(
            self.link_fd(side, base.at),
            &format!("{}{}", base.rel, rest.trim_start_matches('/')),
        )
        .map_err(|errno| open_problem(shown, errno))?;
        self.chains[side].push(existing(path, fd));
        let at = self.chains[side].len() - 1;
        Ok(Located {
            at: Some(at),
            rel: String::new(),
            traits: self.chains[side][at].traits,
        })
    }

    /// Reaches link `at`: the nearest link above it that has a handle, and the names from
    /// there, opening on the way any link that is not private.
    fn reach(&mut self, side: Side, at: usize, shown: &str) -> Result<Located, Problem> {
        let top = (0..=at).rev().find(|&k| self.chains[side][k].fd.is_some());
        let mut from = top;
        let mut rel = String::new();
        for k in top.map_or(0, |t| t + 1)..=at {
            let link = &self.chains[side][k];
            let name = match &link.disk_name {
                Some(tmp) => tmp.clone(),
                None => link.path.rsplit('/').next().unwrap_or("").to_owned(),
            };
            rel.push_str(&name);
            // Through a private link by name, while the path stays short: a deep chain is
            // opened on the way, so that no call gets a path that grows with the entry.
            if self.chains[side][k].traits.private && rel.len() + 256 < fs::PIECE {
                rel.push('/');
                continue;
            }
            let fd = fs::open_child(self.link_fd(side, from), &rel)
                .map_err(|errno| open_problem(shown, errno))?;
            self.chains[side][k].fd = Some(fd);
            from = Some(k);
            rel.clear();
        }
        Ok(Located {
            at: from,
            rel,
            traits: self.chains[side][at].traits,
        })
    }

    fn link(&self, side: Side, at: Option<usize>) -> Option<&Link> {
        match at {
            Some(at) => self.chains[side].get(at),
            None => self.bases[side].as_ref(),
        }
    }

    fn link_fd(&self, side: Side, at: Option<usize>) -> BorrowedFd<'_> {
        self.link(side, at)
            .and_then(|l| l.fd.as_ref())
            .map_or(self.root, AsFd::as_fd)
    }

    /// Makes one directory so that it appears with its final owner and mode. Inside a stage
    /// (a new subtree that still stands under its temporary name) it is made at its name at
    /// once. In a directory that existed before and that only root can write to, it starts a
    /// stage: it is made under its temporary name, and its subtree below it, and the whole is
    /// renamed into place when the executor leaves it. Anywhere else it is made under a
    /// temporary name and renamed into place at once. Returns what identifies a deferred
    /// owner, and the temporary name when it started a stage.
    fn make(
        &self,
        (parent, rel, traits): (BorrowedFd<'_>, &str, Traits),
        leaf: &str,
        dir: &Dir,
        shown: &str,
        all: &[EntryPlan<'_>],
    ) -> Result<(Option<Made>, Option<String>), Problem> {
        let name = format!("{rel}{leaf}");
        if traits.staged {
            return Ok((self.make_final(parent, &name, traits, dir, shown)?, None));
        }
        let leaf_tmp = temp_name(leaf);
        let tmp = format!("{rel}{leaf_tmp}");
        if !traits.fresh && traits.private {
            // A killed run may have left its stage here; only root can have made it.
            self.clear_leftover(parent, &tmp, dir, all, &leftover_path(shown, &leaf_tmp))?;
            let made = self.make_final(parent, &tmp, traits, dir, shown)?;
            return Ok((made, Some(leaf_tmp)));
        }
        if self.exact(traits, dir) {
            return fs::make_child(parent, &name, dir.attrs.mode)
                .map(|()| (None, None))
                .map_err(|errno| create_problem(shown, errno));
        }
        let tmp = self.make_temp(parent, rel, &leaf_tmp, traits, shown)?;
        let placed = self
            .finish_temp(parent, &tmp, traits, dir, shown)
            .and_then(|made| {
                self.place(parent, &tmp, &name)
                    .map(|()| (made, None))
                    .map_err(|errno| place_problem(shown, errno))
            });
        if placed.is_err() {
            let _ = fs::remove_empty(parent, &tmp);
        }
        placed
    }

    /// True when `mkdir` alone makes the directory exactly as declared.
    fn exact(&self, traits: Traits, dir: &Dir) -> bool {
        traits.plain
            && dir.uid == Some(self.euid)
            && dir.gid == Some(self.egid)
            && dir.attrs.mode & 0o6000 == 0
    }

    /// Makes a directory at a name nobody looks at yet, and gives it its attributes.
    fn make_final(
        &self,
        parent: BorrowedFd<'_>,
        path: &str,
        traits: Traits,
        dir: &Dir,
        shown: &str,
    ) -> Result<Option<Made>, Problem> {
        let exact = self.exact(traits, dir);
        let mode = if exact { dir.attrs.mode } else { 0o700 };
        fs::make_child(parent, path, mode).map_err(|errno| create_problem(shown, errno))?;
        if exact {
            return Ok(None);
        }
        self.finish_temp(parent, path, traits, dir, shown)
    }

    /// Gives a private directory just made its owner and mode: by name where only root can
    /// write to the parent, else through a handle; a deferred owner always takes the handle,
    /// which its mark needs.
    fn finish_temp(
        &self,
        parent: BorrowedFd<'_>,
        tmp: &str,
        traits: Traits,
        dir: &Dir,
        shown: &str,
    ) -> Result<Option<Made>, Problem> {
        if dir.deferred() || !traits.private {
            return self.finish_temp_by_handle(parent, tmp, dir, shown);
        }
        let (uid, gid) = (dir.uid.unwrap_or(0), dir.gid.unwrap_or(0));
        fs::set_child_owner_mode(parent, tmp, uid, gid, dir.attrs.mode)
            .map(|()| None)
            .map_err(|errno| Problem::os(shown.to_owned(), fs::Op::SetOwnerMode, errno))
    }

    /// Renames the stage that link `k` of a side started into place, then drops the links
    /// from `keep` on. A stage that cannot be placed fails the entries that made it.
    fn settle(&mut self, side: Side, keep: usize) {
        while self.chains[side].len() > keep {
            let k = self.chains[side].len() - 1;
            if let Some(tmp) = self.chains[side][k].disk_name.take() {
                let path = self.chains[side][k].path.clone();
                let leaf = path.rsplit('/').next().unwrap_or("").to_owned();
                let up = k.checked_sub(1);
                if let Err(errno) = self.place(self.link_fd(side, up), &tmp, &leaf) {
                    let shown = self.shown_on(side, &path);
                    let problem = place_problem(&shown, errno);
                    for &member in &self.chains[side][k].members {
                        self.failures.push((member, problem.clone()));
                    }
                }
            }
            self.chains[side].pop();
        }
    }

    /// Renames a directory made under its temporary name into place. On a file system that
    /// does not order metadata (ext4 without a journal) it is written to disk first; a power
    /// cut could else show it at its name with the temporary owner and mode.
    fn place(&self, parent: BorrowedFd<'_>, tmp: &str, name: &str) -> Result<(), Errno> {
        if !self.orders_metadata(parent) {
            fs::make_durable(parent, tmp)?;
        }
        fs::place(parent, tmp, name)
    }

    fn orders_metadata(&self, dir: BorrowedFd<'_>) -> bool {
        let dev = rustix::fs::fstat(dir).map(|st| st.st_dev).ok();
        let mut known = self.ordered.borrow_mut();
        if let Some(&(_, ordered)) = known.iter().find(|(d, _)| Some(*d) == dev) {
            return ordered;
        }
        let (dev, ordered) = fs::orders_metadata(dir).unwrap_or((dev.unwrap_or(0), false));
        known.push((dev, ordered));
        ordered
    }

    /// Counts an entry among those that made something in the stage it works in.
    fn join_stage(&mut self, side: Side, idx: usize) {
        if let Some(top) = self.chains[side]
            .iter_mut()
            .rev()
            .find(|l| l.disk_name.is_some())
        {
            if top.members.last() != Some(&idx) {
                top.members.push(idx);
            }
        }
    }

    fn shown_on(&self, side: Side, path: &str) -> String {
        match side {
            Side::Storage => self.tree.path(Some(&self.storage_path), path),
            Side::Root => self.tree.path(None, path),
        }
    }

    /// Makes the temporary directory and returns its name. One that stands there already is
    /// not this run's. Where only root can write, `clear_leftover` has removed what it could
    /// prove its own, and the entry fails. Anywhere else anyone could have made it, and a name
    /// a user can predict must not let her block the entry: it is reported and left alone, and
    /// the directory is made under a name nobody can predict.
    fn make_temp(
        &self,
        parent: BorrowedFd<'_>,
        rel: &str,
        leaf_tmp: &str,
        traits: Traits,
        shown: &str,
    ) -> Result<String, Problem> {
        let leftover = || Problem::Leftover {
            path: leftover_path(shown, leaf_tmp),
            why: if traits.private {
                LeftoverWhy::NotOurs
            } else {
                LeftoverWhy::OpenParent
            },
        };
        let mut tmp = format!("{rel}{leaf_tmp}");
        match fs::make_child(parent, &tmp, 0o700) {
            Err(Errno::EXIST) if !traits.private => self.foreign.borrow_mut().push(Foreign {
                path: leftover_path(shown, leaf_tmp),
                made: shown.to_owned(),
            }),
            Err(Errno::EXIST) => return Err(leftover()),
            other => {
                return other
                    .map(|()| tmp)
                    .map_err(|errno| create_problem(shown, errno));
            }
        }
        for _ in 0..4 {
            tmp = format!("{rel}{leaf_tmp}.{:016x}", fs::unpredictable());
            match fs::make_child(parent, &tmp, 0o700) {
                Err(Errno::EXIST) => {}
                other => {
                    return other
                        .map(|()| tmp)
                        .map_err(|errno| create_problem(shown, errno));
                }
            }
        }
        Err(leftover())
    }

    /// Removes what a killed run left under the temporary name of `dir`, in a parent only root
    /// can write to: whole, and only when every directory in it is one this run would make
    /// there, with the owner and mode it has at some step of making it. Else it stays.
    fn clear_leftover(
        &self,
        parent: BorrowedFd<'_>,
        tmp: &str,
        dir: &Dir,
        all: &[EntryPlan<'_>],
        leftover: &str,
    ) -> Result<(), Problem> {
        let mut accept = |rel: &str, meta: fs::Meta| {
            let path = if rel.is_empty() {
                dir.path.clone()
            } else {
                format!("{}/{rel}", dir.path)
            };
            self.expected(dir.side, &path, all)
                .is_some_and(|attrs| self.as_made(meta, attrs))
        };
        let refused = |_: Errno| Problem::Leftover {
            path: leftover.to_owned(),
            why: LeftoverWhy::NotOurs,
        };
        match fs::tree_accepted(parent, tmp, &mut accept) {
            Ok(None) => return Ok(()),
            Ok(Some(true)) => {}
            Ok(Some(false)) => return Err(refused(Errno::NOTEMPTY)),
            Err(errno) => return Err(refused(errno)),
        }
        let mut removed = Vec::new();
        let result = fs::remove_dirs(parent, tmp, "", &mut removed);
        let list: Vec<String> = removed
            .iter()
            .rev()
            .map(|rel| {
                let path = if rel.is_empty() {
                    leftover.to_owned()
                } else {
                    format!("{leftover}/{rel}")
                };
                escape::text(&path).into_owned()
            })
            .collect();
        if !list.is_empty() {
            log::info!(
                "removed {}, left empty by an interrupted persist-prep run",
                list.join(", ")
            );
        }
        result.map_err(refused)
    }

    /// What this run makes at `path` on a side: (uid, gid, mode) as it ends up.
    fn expected(&self, side: Side, path: &str, all: &[EntryPlan<'_>]) -> Option<(u32, u32, u32)> {
        if self.creating_storage && side == Side::Root {
            let storage = self.storage_path.as_str();
            if crate::manifest::contains(path, storage) {
                return Some((0, 0, 0o755));
            }
            if let Some(below) = path.strip_prefix(storage).filter(|r| r.starts_with('/')) {
                return self.expected(Side::Storage, below, all);
            }
        }
        all.iter()
            .flat_map(|e| &e.actions)
            .find(|a| a.kind == ActionKind::Mkdir && a.dir.side == side && a.dir.path == path)
            .map(|a| {
                let d = &a.dir;
                (d.uid.unwrap_or(0), d.gid.unwrap_or(0), d.attrs.mode)
            })
    }

    /// True when a directory has its final owner and mode, or the private mode it is made
    /// with, before or after its chown.
    fn as_made(&self, meta: fs::Meta, (uid, gid, mode): (u32, u32, u32)) -> bool {
        let private = meta.mode & !0o2000 == 0o700;
        meta.is_dir
            && ((meta.uid, meta.gid, meta.mode) == (uid, gid, mode)
                || (private && (meta.uid == self.euid || (meta.uid, meta.gid) == (uid, gid))))
    }

    /// Gives a temporary directory its mark, owner and mode through a handle, after checking
    /// that it is still the private directory just made.
    fn finish_temp_by_handle(
        &self,
        parent: BorrowedFd<'_>,
        tmp: &str,
        dir: &Dir,
        shown: &str,
    ) -> Result<Option<Made>, Problem> {
        let fd = fs::open_child(parent, tmp).map_err(|errno| open_problem(shown, errno))?;
        let meta =
            fs::meta(&fd).map_err(|errno| Problem::os(shown.to_owned(), fs::Op::Stat, errno))?;
        if meta.uid != self.euid || meta.mode & 0o777 != 0o700 || !meta.is_dir {
            return Err(Problem::Replaced {
                path: shown.to_owned(),
            });
        }
        let set = |errno| Problem::os(shown.to_owned(), fs::Op::SetOwnerMode, errno);
        let mut made = None;
        if dir.deferred() {
            let marked =
                fs::set_mark(&fd, deferred::OWNER_MARK, &mark_of(dir).encode()).map_err(set)?;
            made = Some(Made {
                meta,
                birth: fs::birth(&fd),
                marked,
            });
        }
        let (uid, gid) = (dir.uid.unwrap_or(0), dir.gid.unwrap_or(0));
        fs::set_owner_mode(&fd, uid, gid, dir.attrs.mode).map_err(set)?;
        Ok(made)
    }

    /// Marks the side's base as holding deferred owners, before the first of them appears.
    fn mark_side(&mut self, side: Side) -> Result<(), Errno> {
        if self.marked[side] {
            return Ok(());
        }
        let base = self.link_fd(side, None);
        let fd = fs::reopen(base)?;
        fs::set_mark(&fd, deferred::PENDING_MARK, b"1")?;
        self.marked[side] = true;
        Ok(())
    }
}

/// An entry's state once its actions ran: what was missing is created (or deferred), what
/// waited for its owner is finished; drift and the like stay what they were.
fn after(before: EntryState, actions: &[Action], result: Result<(), Problem>) -> EntryState {
    let deferred = actions
        .iter()
        .any(|a| a.kind == ActionKind::Mkdir && a.dir.deferred());
    match (before, result) {
        (_, Err(problem)) => EntryState::Failed(problem),
        (EntryState::Missing, Ok(())) if deferred => EntryState::Deferred,
        (EntryState::Missing, Ok(())) => EntryState::Created,
        (EntryState::Deferred, Ok(()))
            if !deferred && actions.iter().any(|a| a.kind == ActionKind::GiveOwner) =>
        {
            EntryState::Finished
        }
        (before, Ok(())) => before,
    }
}

/// A storage directory made under a temporary name, placed once its entries are made.
struct StorageStage {
    parent: OwnedFd,
    tmp: String,
    leaf: String,
    path: String,
}

/// What identifies a directory made with a deferred owner.
struct Made {
    meta: fs::Meta,
    birth: Option<u128>,
    marked: bool,
}

fn existing(path: &str, fd: OwnedFd) -> Link {
    let st = rustix::fs::fstat(&fd).ok();
    let plain = fs::reopen(&fd)
        .and_then(fs::creates_plainly)
        .unwrap_or(false);
    let private = st.is_some_and(|st| st.st_uid == 0 && st.st_mode & 0o022 == 0);
    Link {
        path: path.to_owned(),
        fd: Some(fd),
        traits: Traits {
            plain,
            private,
            fresh: false,
            staged: false,
        },
        disk_name: None,
        members: Vec::new(),
    }
}

fn mark_of(dir: &Dir) -> Mark {
    Mark {
        user: dir.attrs.user.name.to_string(),
        group: dir.attrs.group.name.to_string(),
        uid: dir.uid,
        gid: dir.gid,
        mode: dir.attrs.mode,
    }
}

/// Gives a marked directory its owner, after checking once more, on the handle it changes,
/// that the one rule for deferred owners still lets it have it.
fn give_owner(parent: BorrowedFd<'_>, name: &str, dir: &Dir, shown: &str) -> Result<(), Problem> {
    let fd = fs::open_child(parent, name).map_err(|errno| open_problem(shown, errno))?;
    let meta = fs::meta(&fd).map_err(|errno| Problem::os(shown.to_owned(), fs::Op::Stat, errno))?;
    let ours = deferred::read_mark(&fd)
        .is_some_and(|mark| deferred::may_give(&mark, meta, dir.own.then_some(&dir.attrs)).is_ok());
    if !ours {
        return Err(Problem::Replaced {
            path: shown.to_owned(),
        });
    }
    let (Some(uid), Some(gid)) = (dir.uid, dir.gid) else {
        return Ok(());
    };
    deferred::give_owner(&fd, uid, gid, dir.attrs.mode)
        .map_err(|errno| Problem::os(shown.to_owned(), fs::Op::SetOwnerMode, errno))
}

/// Where the temporary directory for `shown` stands, for messages.
fn leftover_path(shown: &str, tmp: &str) -> String {
    let (dir, _) = shown.rsplit_once('/').unwrap_or(("", shown));
    format!("{dir}/{tmp}")
}

fn place_problem(shown: &str, errno: Errno) -> Problem {
    match errno {
        Errno::EXIST => Problem::Replaced {
            path: shown.to_owned(),
        },
        errno => create_problem(shown, errno),
    }
}

fn create_problem(shown: &str, errno: Errno) -> Problem {
    Problem::os(shown.to_owned(), fs::Op::Create, errno)
}

fn open_problem(shown: &str, errno: Errno) -> Problem {
    Problem::os(shown.to_owned(), fs::Op::Open, errno)
}
