//! Owners that could not be resolved when a directory was created, and `persist-prep finish`.
//!
//! In the initrd of a fresh impermanent system the users do not exist yet: `/sysroot/etc/passwd`
//! is written later by NixOS activation. Failing the boot would be wrong, and guessing an id would
//! be worse. So `apply` creates such a directory root-owned with its declared mode (no one else
//! can use it meanwhile) and records it here. The record lives in `/run`, which survives
//! switch-root. `finish` runs once the users exist and gives each recorded directory its owner,
//! but only if it is still the very directory we created (same device and inode, still owned as
//! we left it); anything else has changed hands and is left alone.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Options;
use crate::exit::Exit;
use crate::fs;
use crate::manifest::Owner;
use crate::mode;
use crate::owner::{Db, Resolver};
use crate::report;

const FILE: &str = "deferred.json";

/// One directory waiting for its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pending {
    /// The storage it is under; `None` for a mount point on the root side.
    pub storage: Option<String>,
    /// Absolute path below the storage (or the root).
    pub path: String,
    /// The manifest entry it was created for, for messages.
    pub entry: String,
    pub user: String,
    pub group: String,
    /// Ids already known when it was created (the other one is still a name).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl Pending {
    /// Where it is, as a person would find it under the root.
    pub fn display(&self, root: &str) -> String {
        format!(
            "{root}{}{}",
            self.storage.as_deref().unwrap_or(""),
            self.path
        )
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    pub pending: Vec<Pending>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Reads the record; a missing file is an empty record.
pub fn load(state_dir: &Path) -> Result<Record, String> {
    let file = path(state_dir);
    match std::fs::read(&file) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| {
            format!(
                "cannot read the deferred-owner record {}: {e}; fix: remove it and run `persist-prep apply` again",
                file.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record {
            version: 1,
            pending: Vec::new(),
        }),
        Err(e) => Err(format!(
            "cannot read the deferred-owner record {}: {}",
            file.display(),
            report::io_error_words(&e)
        )),
    }
}

/// Writes the record atomically, or removes it when nothing is pending.
pub fn save(state_dir: &Path, record: &Record) -> Result<(), String> {
    let file = path(state_dir);
    let fail = |what: &str, e: &std::io::Error| {
        format!(
            "cannot {what} the deferred-owner record {}: {}; fix: make {} writable (it is normally on the /run tmpfs)",
            file.display(),
            report::io_error_words(e),
            state_dir.display()
        )
    };
    if record.pending.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail("remove", &e)),
            _ => Ok(()),
        };
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(state_dir)
        .map_err(|e| fail("create the directory for", &e))?;
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let data = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    // Only root reads it; apply runs with umask 0, so the mode is given here.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &data))
        .map_err(|e| fail("write", &e))?;
    std::fs::rename(&tmp, &file).map_err(|e| fail("write", &e))
}

/// Adds newly deferred directories, replacing older records of the same directory.
pub fn merge(record: &mut Record, new: Vec<Pending>) {
    record.version = 1;
    for p in new {
        record
            .pending
            .retain(|old| !(old.storage == p.storage && old.path == p.path));
        record.pending.push(p);
    }
}

/// What became of one pending directory.
enum Outcome {
    Done(u32, u32),
    StillPending(String),
    /// Nothing left to do: it is gone, or a bind mount now covers it (a root-side mount point).
    Moot(String),
    /// Changed hands since it was made; left alone, and worth a warning.
    Dropped(String),
    Failed(String),
}

/// `persist-prep finish`: give recorded directories their owners now that names resolve.
pub fn finish(options: &Options) -> Exit {
    let start = std::time::Instant::now();
    let mut record = match load(&options.state_dir) {
        Ok(record) => record,
        Err(message) => {
            log::error!("{message}");
            return Exit::Failed;
        }
    };
    let root_display = crate::prepare::root_display(&options.root);
    let Some(root) = crate::prepare::open_root(&options.root) else {
        return Exit::Failed;
    };
    let mut resolver = Resolver::new(root.as_fd());
    for storage in record.pending.iter().filter_map(|p| p.storage.as_deref()) {
        resolver.add_storage(storage);
    }
    let (mut done, mut pending, mut failed, mut results) = (0, 0, 0, Vec::new());
    let mut keep = Vec::new();
    for p in std::mem::take(&mut record.pending) {
        let place = p.display(&root_display);
        let outcome = finish_one(root.as_fd(), &mut resolver, &p);
        let (state, message) = match &outcome {
            Outcome::Done(uid, gid) => {
                done += 1;
                log::info!(
                    "gave {place} its owner {}:{} ({uid}:{gid}) and mode {} for {}",
                    p.user,
                    p.group,
                    mode::display(p.mode),
                    p.entry
                );
                ("done", String::new())
            }
            Outcome::StillPending(why) => {
                pending += 1;
                log::warn!("{place} for {}: {why}", p.entry);
                keep.push(p.clone());
                ("pending", why.clone())
            }
            Outcome::Moot(why) => {
                log::info!("{place} for {}: {why}", p.entry);
                ("nothing-to-do", why.clone())
            }
            Outcome::Dropped(why) => {
                log::warn!("{place} for {}: {why}", p.entry);
                ("left-alone", why.clone())
            }
            Outcome::Failed(why) => {
                failed += 1;
                log::error!("{place} for {}: {why}", p.entry);
                keep.push(p.clone());
                ("failed", why.clone())
            }
        };
        results.push(serde_json::json!({
            "path": place, "entry": p.entry, "user": p.user, "group": p.group,
            "state": state, "message": message,
        }));
    }
    record.pending = keep;
    let mut exit = if pending + failed > 0 {
        Exit::Failed
    } else {
        Exit::Ok
    };
    if let Err(message) = save(&options.state_dir, &record) {
        log::error!("{message}");
        exit = Exit::Failed;
    }
    let elapsed = report::Elapsed::since(start);
    let summary = format!(
        "persist-prep: finish: {done} given their owner, {pending} still pending, {failed} failed in {elapsed} ms"
    );
    if exit == Exit::Ok {
        log::info!("{summary}");
    } else {
        log::warn!("{summary}");
    }
    if options.json {
        report::print_json(&serde_json::json!({
            "version": 1, "command": "finish", "results": results,
            "summary": {"done": done, "pending": pending, "failed": failed, "elapsedMs": elapsed.millis()},
        }));
    }
    exit
}

fn finish_one(
    root: std::os::fd::BorrowedFd<'_>,
    resolver: &mut Resolver<'_>,
    p: &Pending,
) -> Outcome {
    let user = Owner {
        name: p.user.clone(),
        id: p.uid,
    };
    let group = Owner {
        name: p.group.clone(),
        id: p.gid,
    };
    let (uid, gid) = (
        resolver.resolve(&user, Db::User),
        resolver.resolve(&group, Db::Group),
    );
    let (Some(uid), Some(gid)) = (uid, gid) else {
        let missing = if uid.is_none() {
            format!("user {:?}", p.user)
        } else {
            format!("group {:?}", p.group)
        };
        return Outcome::StillPending(format!(
            "{missing} still cannot be resolved (not in etc/passwd, etc/group or var/lib/nixos/uid-map/gid-map); it stays root-owned. Fix: declare the {missing} (users.users / users.groups), or give its numeric id in the manifest"
        ));
    };
    let fd = match open_recorded(root, p) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => {
            return Outcome::Moot("it no longer exists; nothing to do".into());
        }
        Err(errno) => {
            return Outcome::Failed(format!(
                "cannot open it: {}; fix: {}",
                report::errno_words(errno),
                report::errno_fix(errno)
            ));
        }
    };
    let meta = match fs::meta(&fd) {
        Ok(meta) => meta,
        Err(errno) => {
            return Outcome::Failed(format!("cannot stat it: {}", report::errno_words(errno)));
        }
    };
    if (meta.dev, meta.ino) != (p.dev, p.ino) {
        if fs::is_mount_point(&fd).unwrap_or(false) {
            return Outcome::Moot(
                "it is covered by its bind mount now, which shows the source; nothing to do".into(),
            );
        }
        return Outcome::Dropped(
            "it is no longer the directory persist-prep created (another one stands there now), so it is left alone".into(),
        );
    }
    if meta.uid != p.uid.unwrap_or(0) || meta.gid != p.gid.unwrap_or(0) {
        return Outcome::Dropped(format!(
            "its owner was changed to {}:{} since persist-prep created it, so it is left alone",
            meta.uid, meta.gid
        ));
    }
    match fs::set_owner_mode(&fd, uid, gid, p.mode) {
        Ok(()) => Outcome::Done(uid, gid),
        Err(errno) => Outcome::Failed(format!(
            "cannot give it its owner: {}; fix: {}",
            report::errno_words(errno),
            report::errno_fix(errno)
        )),
    }
}

/// Opens a recorded directory with the same rules `apply` used to create it.
fn open_recorded(
    root: std::os::fd::BorrowedFd<'_>,
    p: &Pending,
) -> Result<OwnedFd, rustix::io::Errno> {
    let base = match &p.storage {
        Some(storage) => fs::open_in_root(root, storage)?,
        None => fs::open_beneath(root, "/")?,
    };
    let (parent, name) = p.path.rsplit_once('/').unwrap_or(("", &p.path));
    let parent = fs::open_beneath(&base, parent)?;
    fs::open_child(&parent, name)
}
