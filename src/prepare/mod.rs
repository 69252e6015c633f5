//! `apply` and `check`: bring the storages in line with the manifest, or report how far they are.
//!
//! Both share one walk over the manifest so that `check` and `--dry-run` report exactly what
//! `apply` would do. Per storage: verify its mount, make the storage directory, then for each
//! entry make the source below the storage and the mount point on the root, parents first.
//! Nothing that exists is ever changed; a difference is reported as drift.

mod output;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use rustix::io::Errno;
use serde_json::json;

use crate::Options;
use crate::deferred::{self, Pending};
use crate::exit::Exit;
use crate::fs::{self, Meta, Obstacle};
use crate::manifest::{self, Attrs, Entry, Kind, Owner, Storage};
use crate::mode;
use crate::owner::{Db, Resolver};
use crate::report;
use output::{Counts, document, log_entry, print_table};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Intent {
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
    let text = root.to_string_lossy();
    let trimmed = text.trim_end_matches('/');
    trimmed.to_owned()
}

/// Opens the root every path is resolved from, or says why not.
pub fn open_root(root: &Path) -> Option<OwnedFd> {
    fs::open_root(root)
        .map_err(|errno| {
            log::error!(
                "cannot open the root {}: {}; fix: pass the mounted real root with --root (in the initrd it is /sysroot)",
                root.display(),
                report::errno_words(errno)
            );
        })
        .ok()
}

/// A directory that was (or would be) created.
struct Made {
    path: String,
    attrs: Attrs,
    deferred: bool,
    /// The entry's own directory (source or mount point), not one of its parents.
    own: bool,
}

/// One directory a walk opened: its path below the walk's base, and whether this run made it.
struct Link {
    prefix: String,
    fd: OwnedFd,
    created: bool,
}

/// A directory about to be made: its attributes, resolved ids, and the mode mkdir gets.
struct NewDir {
    attrs: Attrs,
    uid: Option<u32>,
    gid: Option<u32>,
    mkdir_mode: u32,
}

/// Why an entry could not be completed.
enum Problem {
    Symlink {
        path: String,
        target: String,
    },
    NotADirectory {
        path: String,
    },
    Errno {
        action: &'static str,
        path: String,
        errno: Errno,
    },
    Replaced {
        path: String,
    },
}

impl Problem {
    fn state(&self) -> &'static str {
        match self {
            Problem::Symlink { .. } => "symlink",
            Problem::NotADirectory { .. } => "not-a-directory",
            Problem::Errno { .. } | Problem::Replaced { .. } => "error",
        }
    }

    fn path(&self) -> &str {
        match self {
            Problem::Symlink { path, .. }
            | Problem::NotADirectory { path }
            | Problem::Errno { path, .. }
            | Problem::Replaced { path } => path,
        }
    }

    /// What went wrong, why, and the fix, in one sentence each.
    fn explain(&self) -> (String, String) {
        match self {
            Problem::Symlink { path, target } => (
                format!(
                    "{path} is a symlink (-> {target}); persist-prep follows no symlink below a storage or on the root side of a bind mount, so that no link can steer a mkdir or chown outside"
                ),
                "replace the symlink with a real directory (or remove it), or declare the entry at the place the link points to".into(),
            ),
            Problem::NotADirectory { path } => (
                format!("{path} exists but is not a directory"),
                "move the file away (persist-prep never replaces anything), then run `persist-prep apply` again".into(),
            ),
            Problem::Errno { action, path, errno } => (
                format!("cannot {action} {path}: {}", report::errno_words(*errno)),
                report::errno_fix(*errno).into(),
            ),
            Problem::Replaced { path } => (
                format!("{path} changed while persist-prep was creating it (it is not the directory just made)"),
                "find out what else writes there during boot, then run `persist-prep apply` again".into(),
            ),
        }
    }
}

/// Where an entry ended up.
enum State {
    Present,
    Created,
    /// Would be created (`--dry-run`), or is missing (`check`).
    Missing,
    Drift {
        declared: String,
        actual: String,
    },
    Deferred,
    /// Exists, but its owner names cannot be resolved, so it cannot be judged (`check`).
    Unresolvable(String),
    Failed(Problem),
    Skipped(&'static str),
}

struct EntryResult<'m> {
    entry: &'m Entry,
    storage: &'m str,
    state: State,
    made: Vec<Made>,
    actual: Option<Meta>,
}

struct StorageResult<'m> {
    storage: &'m Storage,
    /// ok, created, missing, not-mounted, error
    state: &'static str,
    message: Option<String>,
    entries: Vec<EntryResult<'m>>,
}

/// Which side of the bind mount a walk is on.
#[derive(Clone, Copy)]
enum Side<'s> {
    Storage(&'s str),
    Root,
}

struct Walker<'a> {
    run: Intent,
    root: BorrowedFd<'a>,
    root_display: String,
    resolver: Resolver<'a>,
    record: deferred::Record,
    new_pending: Vec<Pending>,
    /// Directories a read-only run has already planned, so that a plan lists each once.
    planned: HashSet<String>,
    storage_chain: Vec<Link>,
    root_chain: Vec<Link>,
    euid: u32,
    egid: u32,
}

fn run(options: &Options, run: Intent) -> Exit {
    let start = Instant::now();
    let manifest = match manifest::load(&options.manifest) {
        Ok(manifest) => manifest,
        Err(errors) => {
            manifest::report_invalid(options, &errors);
            if options.json {
                report::print_json(
                    &json!({"version": 1, "command": command_name(run), "valid": false, "errors": errors}),
                );
            }
            return Exit::InvalidManifest;
        }
    };
    let Some(root) = open_root(&options.root) else {
        return Exit::Failed;
    };
    let record = deferred::load(&options.state_dir).unwrap_or_else(|message| {
        log::warn!("{message}");
        deferred::Record::default()
    });
    let mut walker = Walker {
        run,
        root: root.as_fd(),
        root_display: root_display(&options.root),
        resolver: Resolver::new(root.as_fd()),
        record,
        new_pending: Vec::new(),
        planned: HashSet::new(),
        storage_chain: Vec::new(),
        root_chain: Vec::new(),
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
    };
    if run == Intent::Apply {
        // Modes are given exactly; mkdir must not have bits masked off behind our back.
        rustix::process::umask(rustix::fs::Mode::empty());
    }
    let results: Vec<StorageResult> = manifest
        .storages
        .iter()
        .map(|s| walker.storage(s))
        .collect();
    let mut exit = Exit::Ok;
    if run == Intent::Apply && !walker.new_pending.is_empty() {
        let mut record = std::mem::take(&mut walker.record);
        deferred::merge(&mut record, std::mem::take(&mut walker.new_pending));
        if let Err(message) = deferred::save(&options.state_dir, &record) {
            log::error!("{message}; the deferred owners will not be finished");
            exit = Exit::Failed;
        }
    }
    let counts = Counts::of(&results);
    if counts.failed + counts.skipped > 0
        || results
            .iter()
            .any(|s| matches!(s.state, "error" | "not-mounted"))
        || (run == Intent::Check && counts.not_ok > 0)
    {
        exit = Exit::Failed;
    }
    let elapsed = report::Elapsed::since(start);
    if run == Intent::Check && !options.json {
        print_table(&results, &walker.root_display);
    }
    counts.log(run, elapsed);
    if options.json {
        report::print_json(&document(
            options,
            run,
            &results,
            &counts,
            elapsed,
            &walker.root_display,
        ));
    }
    exit
}

fn command_name(run: Intent) -> &'static str {
    if run == Intent::Check {
        "check"
    } else {
        "apply"
    }
}

impl Walker<'_> {
    fn storage<'m>(&mut self, storage: &'m Storage) -> StorageResult<'m> {
        // Links of the previous storage's chain are relative to another directory, and the
        // root side's only hold within one storage's sorted entries.
        self.storage_chain.clear();
        self.root_chain.clear();
        let shown = format!("{}{}", self.root_display, storage.path);
        let mut result = StorageResult {
            storage,
            state: "ok",
            message: None,
            entries: Vec::new(),
        };
        let skip_all = |result: &mut StorageResult<'m>, why: &'static str| {
            result.entries = storage
                .entries
                .iter()
                .map(|entry| EntryResult {
                    entry,
                    storage: &storage.path,
                    state: State::Skipped(why),
                    made: Vec::new(),
                    actual: None,
                })
                .collect();
        };
        if let Some(mount_point) = &storage.mount_point {
            if let Err(message) = self.check_mounted(storage, mount_point) {
                if self.run == Intent::Check {
                    log::debug!("{message}");
                } else {
                    log::error!("{message}");
                }
                result.state = "not-mounted";
                result.message = Some(message);
                skip_all(&mut result, "storage-not-mounted");
                return result;
            }
        }
        let storage_fd = match self.storage_dir(storage) {
            Ok(Some((fd, created))) => {
                if created {
                    result.state = "created";
                }
                fd
            }
            Ok(None) => {
                result.state = "missing";
                result.message = Some(format!("storage directory {shown} does not exist"));
                if self.run == Intent::DryRun {
                    log::info!("would create storage directory {shown} (root:root 0755)");
                }
                for entry in &storage.entries {
                    let mut made = Vec::new();
                    self.plan_missing(
                        entry,
                        Side::Storage(&storage.path),
                        &storage.entries,
                        &mut made,
                    );
                    self.plan_missing(entry, Side::Root, &storage.entries, &mut made);
                    result.entries.push(EntryResult {
                        entry,
                        storage: &storage.path,
                        state: State::Missing,
                        made,
                        actual: None,
                    });
                }
                self.log_entries(&result.entries);
                return result;
            }
            Err(problem) => {
                let (what, fix) = problem.explain();
                let message = format!(
                    "storage {}: {what}; nothing was created for its entries. Fix: {fix}",
                    storage.path
                );
                log::error!("{message}");
                result.state = "error";
                result.message = Some(message);
                skip_all(&mut result, "storage-error");
                return result;
            }
        };
        self.resolver.add_storage(&storage.path);
        let declared: HashMap<&str, &Attrs> = storage
            .entries
            .iter()
            .filter_map(|e| e.attrs.as_ref().map(|a| (e.path.as_str(), a)))
            .collect();
        for entry in &storage.entries {
            let r = self.entry(storage, storage_fd.as_fd(), entry, &declared);
            result.entries.push(r);
        }
        self.log_entries(&result.entries);
        result
    }

    /// The storage must sit on its own mounted file system, or whatever we create lands on the
    /// ephemeral root and vanishes at the next boot.
    fn check_mounted(&self, storage: &Storage, mount_point: &str) -> Result<(), String> {
        let shown = format!(
            "{}{}",
            self.root_display,
            if mount_point == "/" { "/" } else { mount_point }
        );
        let not_mounted = |why: String| {
            format!(
                "storage {}: {why}, so the persistent volume is not mounted; nothing was created for its {} entries, since it would land on the ephemeral root and vanish at reboot. Fix: mount {mount_point} before persist-prep runs; on NixOS set fileSystems.\"{mount_point}\".neededForBoot = true",
                storage.path,
                storage.entries.len()
            )
        };
        match fs::open_in_root(self.root, mount_point) {
            Ok(fd) => match fs::is_mount_point(&fd) {
                Ok(true) => Ok(()),
                Ok(false) => Err(not_mounted(format!("{shown} is not a mount point"))),
                Err(errno) => Err(not_mounted(format!(
                    "cannot tell whether {shown} is a mount point ({})",
                    report::errno_words(errno)
                ))),
            },
            Err(Errno::NOENT) => Err(not_mounted(format!("{shown} does not exist"))),
            Err(errno) => Err(not_mounted(format!(
                "cannot open {shown} ({})",
                report::errno_words(errno)
            ))),
        }
    }

    /// Opens the storage directory, creating it and its missing ancestors root root 0755.
    /// Symlinks here resolve inside the root, as they will after switch-root.
    fn storage_dir(&mut self, storage: &Storage) -> Result<Option<(OwnedFd, bool)>, Problem> {
        match fs::open_in_root(self.root, &storage.path) {
            Ok(fd) => return Ok(Some((fd, false))),
            Err(Errno::NOENT) => {}
            Err(errno) => {
                return Err(self.obstacle_in_root(&storage.path, errno));
            }
        }
        if self.run != Intent::Apply {
            return Ok(None);
        }
        let mut prefix = String::new();
        let mut parent = fs::open_in_root(self.root, "/").map_err(|errno| Problem::Errno {
            action: "open",
            path: format!("{}/", self.root_display),
            errno,
        })?;
        for name in storage.path.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(name);
            let shown = format!("{}{prefix}", self.root_display);
            match fs::open_in_root(self.root, &prefix) {
                Ok(fd) => parent = fd,
                Err(Errno::NOENT) => {
                    match fs::make_child(&parent, name, 0o700) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => {
                            return Err(Problem::Errno {
                                action: "create",
                                path: shown,
                                errno,
                            });
                        }
                    }
                    let fd = fs::open_child(&parent, name).map_err(|errno| {
                        match fs::diagnose(&parent, name, errno) {
                            Obstacle::Symlink(target) => Problem::Symlink {
                                path: shown.clone(),
                                target,
                            },
                            Obstacle::NotADirectory => Problem::NotADirectory {
                                path: shown.clone(),
                            },
                            Obstacle::Missing | Obstacle::Other => Problem::Errno {
                                action: "open",
                                path: shown.clone(),
                                errno,
                            },
                        }
                    })?;
                    fs::set_owner_mode(&fd, 0, 0, 0o755).map_err(|errno| Problem::Errno {
                        action: "set owner and mode of",
                        path: shown.clone(),
                        errno,
                    })?;
                    log::info!("created storage directory {shown} (root:root 0755)");
                    parent = fd;
                }
                Err(errno) => return Err(self.obstacle_in_root(&prefix, errno)),
            }
        }
        Ok(Some((parent, true)))
    }

    fn obstacle_in_root(&self, path: &str, errno: Errno) -> Problem {
        let shown = format!("{}{path}", self.root_display);
        if errno == Errno::NOTDIR {
            Problem::NotADirectory { path: shown }
        } else {
            Problem::Errno {
                action: "open",
                path: shown,
                errno,
            }
        }
    }

    fn entry<'m>(
        &mut self,
        storage: &'m Storage,
        storage_fd: BorrowedFd<'_>,
        entry: &'m Entry,
        declared: &HashMap<&str, &Attrs>,
    ) -> EntryResult<'m> {
        let mut result = EntryResult {
            entry,
            storage: &storage.path,
            state: State::Present,
            made: Vec::new(),
            actual: None,
        };
        let dirs = match entry.kind {
            Kind::Directory => entry.path.as_str(),
            Kind::File => entry
                .path
                .rsplit_once('/')
                .map_or("/", |(parent, _)| parent),
        };
        let attrs_of = |prefix: &str| -> Attrs {
            declared
                .get(prefix)
                .map_or_else(|| entry.parent.clone(), |a| (*a).clone())
        };
        // The source, below the storage.
        let source = match self.walk(
            storage_fd,
            Side::Storage(&storage.path),
            dirs,
            entry,
            &attrs_of,
            &mut result.made,
        ) {
            Ok(walked) => walked,
            Err(problem) => {
                result.state = State::Failed(problem);
                return result;
            }
        };
        // The mount point takes the source's actual owner and mode, as impermanence does.
        let mut source_attrs = None;
        if let (Kind::Directory, Some(false)) = (entry.kind, source) {
            {
                let fd = &self.storage_chain.last().expect("a walked directory").fd;
                match fs::meta(fd) {
                    Ok(meta) => {
                        result.actual = Some(meta);
                        source_attrs = Some(Attrs {
                            user: Owner {
                                name: meta.uid.to_string(),
                                id: Some(meta.uid),
                            },
                            group: Owner {
                                name: meta.gid.to_string(),
                                id: Some(meta.gid),
                            },
                            mode: meta.mode,
                        });
                    }
                    Err(errno) => {
                        result.state = State::Failed(Problem::Errno {
                            action: "stat",
                            path: self.shown(Side::Storage(&storage.path), &entry.path),
                            errno,
                        });
                        return result;
                    }
                }
            }
        }
        let root_attrs_of = |prefix: &str| -> Attrs {
            if prefix == entry.path {
                if let Some(attrs) = &source_attrs {
                    return attrs.clone();
                }
            }
            attrs_of(prefix)
        };
        // A read-only run walks the root side too: it plans from the first missing component.
        if let Err(problem) = self.walk(
            self.root,
            Side::Root,
            dirs,
            entry,
            &root_attrs_of,
            &mut result.made,
        ) {
            result.state = State::Failed(problem);
            return result;
        }
        if !result.made.is_empty() {
            result.state = if self.run != Intent::Apply {
                State::Missing
            } else if result.made.iter().any(|m| m.deferred) {
                State::Deferred
            } else {
                State::Created
            };
        }
        if let (Some(attrs), Some(meta)) = (&entry.attrs, result.actual) {
            if let Some(state) = self.judge_existing(storage, entry, attrs, meta) {
                result.state = state;
            }
        }
        result
    }

    /// Compares an existing source with its declaration; `None` when it matches.
    fn judge_existing(
        &mut self,
        storage: &Storage,
        entry: &Entry,
        attrs: &Attrs,
        meta: Meta,
    ) -> Option<State> {
        let uid = self.resolver.resolve(&attrs.user, Db::User);
        let gid = self.resolver.resolve(&attrs.group, Db::Group);
        let recorded = self.record.pending.iter().any(|p| {
            p.storage.as_deref() == Some(storage.path.as_str())
                && p.path == entry.path
                && (p.dev, p.ino) == (meta.dev, meta.ino)
        });
        if recorded
            && meta.uid == uid.unwrap_or(0)
            && meta.gid == gid.unwrap_or(0)
            && (uid.is_none() || gid.is_none())
        {
            return Some(State::Deferred);
        }
        let owner_differs =
            uid.is_some_and(|u| u != meta.uid) || gid.is_some_and(|g| g != meta.gid);
        if owner_differs || meta.mode != attrs.mode {
            return Some(State::Drift {
                declared: format!(
                    "{}:{} ({}:{}) {}",
                    attrs.user.name,
                    attrs.group.name,
                    uid.map_or("?".into(), |u| u.to_string()),
                    gid.map_or("?".into(), |g| g.to_string()),
                    mode::display(attrs.mode)
                ),
                actual: format!("{}:{} {}", meta.uid, meta.gid, mode::display(meta.mode)),
            });
        }
        if uid.is_none() || gid.is_none() {
            let names = unresolved_names(attrs, uid, gid);
            return Some(State::Unresolvable(names));
        }
        None
    }

    fn shown(&self, side: Side<'_>, path: &str) -> String {
        match side {
            Side::Storage(storage) => format!("{}{storage}{path}", self.root_display),
            Side::Root => format!("{}{path}", self.root_display),
        }
    }

    /// Opens `dirs` below `base`, creating missing components (in `Apply`), refusing symlinks.
    /// On success the final directory is the last link of the side's chain, and the result says
    /// whether it was created now; `None` when a read-only run finds it missing (the missing
    /// part is added to `made` as a plan).
    fn walk(
        &mut self,
        base: BorrowedFd<'_>,
        side: Side<'_>,
        dirs: &str,
        entry: &Entry,
        attrs_of: &dyn Fn(&str) -> Attrs,
        made: &mut Vec<Made>,
    ) -> Result<Option<bool>, Problem> {
        let mut chain = std::mem::take(self.chain(side));
        let result = self.walk_chain(&mut chain, base, side, dirs, entry, attrs_of, made);
        *self.chain(side) = chain;
        result
    }

    /// The directories opened on one side for the previous entry. Entries come sorted, so the
    /// next one usually shares most of them and only the rest of its path is resolved.
    fn chain(&mut self, side: Side<'_>) -> &mut Vec<Link> {
        match side {
            Side::Storage(_) => &mut self.storage_chain,
            Side::Root => &mut self.root_chain,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_chain(
        &mut self,
        chain: &mut Vec<Link>,
        base: BorrowedFd<'_>,
        side: Side<'_>,
        dirs: &str,
        entry: &Entry,
        attrs_of: &dyn Fn(&str) -> Attrs,
        made: &mut Vec<Made>,
    ) -> Result<Option<bool>, Problem> {
        let shared = chain
            .iter()
            .take_while(|link| manifest::contains(&link.prefix, dirs))
            .count();
        chain.truncate(shared);
        let mut prefix = chain
            .last()
            .map_or(String::new(), |link| link.prefix.clone());
        if prefix == dirs || dirs == "/" {
            return Ok(Some(false));
        }
        let rest = &dirs[prefix.len()..];
        // The common case on every boot after the first: everything is there, one syscall.
        // Below a directory this run made, nothing but what the chain holds can exist yet
        // (entries sharing a prefix come together), so the lookup would only fail.
        let from = chain.last().map_or(base, |link| link.fd.as_fd());
        let fresh_parent = chain.last().is_some_and(|link| link.created);
        if !(fresh_parent && self.run == Intent::Apply) {
            if let Ok(fd) = fs::open_beneath(from, rest) {
                chain.push(Link {
                    prefix: dirs.to_owned(),
                    fd,
                    created: false,
                });
                return Ok(Some(false));
            }
        }
        let mut created_last = false;
        for name in rest.split('/').filter(|c| !c.is_empty()) {
            prefix.push('/');
            prefix.push_str(name);
            let parent = chain.last().map_or(base, |link| link.fd.as_fd());
            created_last = false;
            // In `Apply`, try mkdir first: on a fresh volume it succeeds, and EEXIST is as
            // cheap as a failed lookup would have been.
            let mut fresh = None;
            if self.run == Intent::Apply {
                let new = self.new_dir(attrs_of(&prefix));
                match fs::make_child(parent, name, new.mkdir_mode) {
                    Ok(()) => fresh = Some(new),
                    Err(Errno::EXIST) => {}
                    Err(errno) => {
                        return Err(Problem::Errno {
                            action: "create",
                            path: self.shown(side, &prefix),
                            errno,
                        });
                    }
                }
            }
            let fd = if let Some(new) = fresh {
                created_last = true;
                self.give_attributes(parent, name, side, &prefix, entry, new, made)?
            } else {
                match fs::open_child_path(parent, name) {
                    Ok(fd) => fd,
                    Err(errno) => match fs::diagnose(parent, name, errno) {
                        Obstacle::Missing if self.run != Intent::Apply => {
                            self.plan_from(
                                side,
                                &prefix,
                                dirs,
                                entry.kind == Kind::Directory,
                                attrs_of,
                                made,
                            );
                            return Ok(None);
                        }
                        obstacle => return Err(self.obstacle(obstacle, side, &prefix, errno)),
                    },
                }
            };
            chain.push(Link {
                prefix: prefix.clone(),
                fd,
                created: created_last,
            });
        }
        Ok(Some(created_last))
    }

    fn obstacle(&self, obstacle: Obstacle, side: Side<'_>, prefix: &str, errno: Errno) -> Problem {
        let path = self.shown(side, prefix);
        match obstacle {
            Obstacle::Symlink(target) => Problem::Symlink { path, target },
            Obstacle::NotADirectory => Problem::NotADirectory { path },
            Obstacle::Missing | Obstacle::Other => Problem::Errno {
                action: "open",
                path,
                errno,
            },
        }
    }

    /// Decides how to make a directory. One that ends up owned by us is made with its final
    /// mode at once; any other is made private (0700) and gets its owner, then its mode, only
    /// through the handle, so that it is never open to others before it has its owner.
    fn new_dir(&mut self, attrs: Attrs) -> NewDir {
        let uid = self.resolver.resolve(&attrs.user, Db::User);
        let gid = self.resolver.resolve(&attrs.group, Db::Group);
        let ours = uid == Some(self.euid) && gid == Some(self.egid);
        let mkdir_mode = if ours && attrs.mode & 0o7000 == 0 {
            attrs.mode
        } else {
            0o700
        };
        NewDir {
            attrs,
            uid,
            gid,
            mkdir_mode,
        }
    }

    /// Finishes a directory just made: open it without following links, check it is the one
    /// we made, then chown and chmod through the handle where still needed, so that no path is
    /// walked twice.
    #[allow(clippy::too_many_arguments)]
    fn give_attributes(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &str,
        side: Side<'_>,
        prefix: &str,
        entry: &Entry,
        new: NewDir,
        made: &mut Vec<Made>,
    ) -> Result<OwnedFd, Problem> {
        let fd = fs::open_child(parent, name).map_err(|errno| {
            self.obstacle(fs::diagnose(parent, name, errno), side, prefix, errno)
        })?;
        let shown = self.shown(side, prefix);
        let meta = fs::meta(&fd).map_err(|errno| Problem::Errno {
            action: "stat",
            path: shown.clone(),
            errno,
        })?;
        // A set-group-id parent passes on its group and that bit; anything else means someone
        // replaced the directory between our mkdir and open.
        if meta.uid != self.euid || meta.mode & 0o777 != new.mkdir_mode {
            return Err(Problem::Replaced { path: shown });
        }
        let (uid, gid) = (new.uid.unwrap_or(0), new.gid.unwrap_or(0));
        let set = |errno| Problem::Errno {
            action: "set owner and mode of",
            path: shown.clone(),
            errno,
        };
        let chowned = (meta.uid, meta.gid) != (uid, gid);
        if chowned {
            fs::set_owner(&fd, uid, gid).map_err(set)?;
        }
        // chown may clear set-id bits, so after one the mode is set whenever it has any.
        if meta.mode != new.attrs.mode || (chowned && new.attrs.mode & 0o6000 != 0) {
            fs::set_mode(&fd, new.attrs.mode).map_err(set)?;
        }
        let deferred = new.uid.is_none() || new.gid.is_none();
        if deferred {
            self.new_pending.push(Pending {
                storage: match side {
                    Side::Storage(s) => Some(s.to_owned()),
                    Side::Root => None,
                },
                path: prefix.to_owned(),
                entry: entry.describe().to_string(),
                user: new.attrs.user.name.clone(),
                group: new.attrs.group.name.clone(),
                uid: new.uid,
                gid: new.gid,
                mode: new.attrs.mode,
                dev: meta.dev,
                ino: meta.ino,
            });
        }
        made.push(Made {
            path: shown,
            attrs: new.attrs,
            deferred,
            own: entry.kind == Kind::Directory && prefix == entry.path,
        });
        Ok(fd)
    }

    /// Adds to `made` every directory from `prefix` down to `dirs`, which a read-only run found missing.
    fn plan_from(
        &mut self,
        side: Side<'_>,
        prefix: &str,
        dirs: &str,
        entry_is_dir: bool,
        attrs_of: &dyn Fn(&str) -> Attrs,
        made: &mut Vec<Made>,
    ) {
        let mut path = prefix.to_owned();
        loop {
            let shown = self.shown(side, &path);
            if self.planned.insert(shown.clone()) {
                made.push(Made {
                    path: shown,
                    attrs: attrs_of(&path),
                    deferred: false,
                    own: path == dirs && entry_is_dir,
                });
            }
            if path == dirs {
                break;
            }
            let rest = &dirs[path.len() + 1..];
            let next = rest.split('/').next().unwrap_or(rest);
            path.push('/');
            path.push_str(next);
        }
    }

    /// Plans a whole side whose base is missing: every component of the entry's directories.
    fn plan_missing(
        &mut self,
        entry: &Entry,
        side: Side<'_>,
        entries: &[Entry],
        made: &mut Vec<Made>,
    ) {
        let dirs = match entry.kind {
            Kind::Directory => entry.path.as_str(),
            Kind::File => entry
                .path
                .rsplit_once('/')
                .map_or("/", |(parent, _)| parent),
        };
        if dirs == "/" {
            return;
        }
        let attrs_of = |prefix: &str| -> Attrs {
            entries
                .iter()
                .find(|e| e.path == prefix && e.attrs.is_some())
                .and_then(|e| e.attrs.clone())
                .unwrap_or_else(|| entry.parent.clone())
        };
        let first = dirs.split('/').find(|c| !c.is_empty()).unwrap_or_default();
        self.plan_from(
            side,
            &format!("/{first}"),
            dirs,
            entry.kind == Kind::Directory,
            &attrs_of,
            made,
        );
    }

    fn log_entries(&self, results: &[EntryResult<'_>]) {
        for r in results {
            log_entry(self.run, r, &self.root_display);
        }
    }
}

fn unresolved_names(attrs: &Attrs, uid: Option<u32>, gid: Option<u32>) -> String {
    let mut names = Vec::new();
    if uid.is_none() {
        names.push(format!("user {:?}", attrs.user.name));
    }
    if gid.is_none() {
        names.push(format!("group {:?}", attrs.group.name));
    }
    names.join(" and ")
}
