//! Owners that could not be resolved when a directory was created, and `persist-prep finish`.
//!
//! In the initrd of a fresh impermanent system the users do not exist yet: `/sysroot/etc/passwd`
//! is written later by NixOS activation. Failing the boot would be wrong, and guessing an id would
//! be worse. So `apply` creates such a directory root-owned with its declared mode (no one else
//! can use it meanwhile), and:
//! - marks the directory itself with the extended attribute `trusted.persist-prep.owner`, set
//!   before the directory appears under its name. Only a process with `CAP_SYS_ADMIN` can set a
//!   `trusted.` attribute, so no user can forge it, and a directory made anew by someone else
//!   cannot carry it. `finish` touches only a directory that carries the mark.
//! - marks the storage directory (or the root) with `trusted.persist-prep.pending` before that,
//!   so that a later boot, after one cut short before `finish`, looks for marked directories on
//!   that side and finishes them: at once when the name resolves in the initrd, else through
//!   the record.
//! - records it in `/run/persist-prep/deferred.json`, which survives switch-root, so that
//!   `finish` knows where to look. On a file system without extended attributes the record is
//!   all there is: it then also holds the device, inode and birth time, and `finish` requires
//!   all three, and the owner it left, to be unchanged.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, openat, renameat, unlinkat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::fs;
use crate::manifest::{Attrs, Owner};

const FILE: &str = "deferred.json";

/// The mark on a directory made with a deferred owner: what it is declared to be.
pub const OWNER_MARK: &str = "trusted.persist-prep.owner";
/// The mark on a storage directory (or the root) that holds marked directories.
pub const PENDING_MARK: &str = "trusted.persist-prep.pending";

/// What the owner mark holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    pub user: String,
    pub group: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
}

impl Mark {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why a directory that carries persist-prep's owner mark gets no owner from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkDrift {
    /// It is not declared as an entry now: a parent, or an entry since removed.
    NotAnEntry,
    /// Its owner or mode is no longer what persist-prep left.
    Changed,
    /// Its entry is declared otherwise now than when it was made.
    Redeclared,
}

/// The one rule for a deferred owner, for `apply` and `finish` alike: the manifest decides, and
/// the mark only proves that persist-prep made the directory. An owner goes only to a directory
/// that is declared now as an entry (`declared`), is still exactly as persist-prep left it
/// (root, or the half of the owner it knew, and the declared mode), and whose mark holds the
/// declaration it has now. Anything else is drift: reported and left alone.
pub fn may_give(mark: &Mark, meta: fs::Meta, declared: Option<&Attrs>) -> Result<(), MarkDrift> {
    let declared = declared.ok_or(MarkDrift::NotAnEntry)?;
    let left = (mark.uid.unwrap_or(0), mark.gid.unwrap_or(0), mark.mode);
    if (meta.uid, meta.gid, meta.mode) != left || !meta.is_dir {
        return Err(MarkDrift::Changed);
    }
    let same = |name: &str, id: Option<u32>, owner: &Owner| {
        name == &*owner.name && owner.id.is_none_or(|declared| id == Some(declared))
    };
    if mark.mode != declared.mode
        || !same(&mark.user, mark.uid, &declared.user)
        || !same(&mark.group, mark.gid, &declared.group)
    {
        return Err(MarkDrift::Redeclared);
    }
    Ok(())
}

/// The owner mark of an open directory, if it carries a valid one.
pub fn read_mark(fd: impl AsFd) -> Option<Mark> {
    let fd = fs::reopen(fd).ok()?;
    let data = fs::get_mark(&fd, OWNER_MARK).ok()??;
    serde_json::from_slice(&data).ok()
}

/// One directory waiting for its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pending {
    /// The storage it is under; `None` for a mount point on the root side.
    pub storage: Option<String>,
    /// Absolute path below the storage (or the root).
    pub path: String,
    /// The manifest entry it was created for, as `apply` shows it (escaped), for messages.
    pub entry: String,
    pub user: String,
    pub group: String,
    /// Ids already known when it was created (the other one is still a name).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    /// Birth time in nanoseconds, where the file system records it.
    #[serde(default)]
    pub birth: Option<u128>,
    /// The directory carries the owner mark, which `finish` then requires.
    #[serde(default)]
    pub marked: bool,
}

impl Pending {
    /// True when an open directory is the one recorded, not a later one on a reused inode.
    pub fn same_directory(&self, meta: fs::Meta, birth: Option<u128>) -> bool {
        (meta.dev, meta.ino) == (self.dev, self.ino)
            && (self.birth.is_none() || birth == self.birth)
    }

    /// The declaration it was recorded with, which the run that recorded it had.
    pub fn declared(&self) -> Attrs {
        Attrs {
            user: Owner {
                name: self.user.as_str().into(),
                id: self.uid,
            },
            group: Owner {
                name: self.group.as_str().into(),
                id: self.gid,
            },
            mode: self.mode,
        }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            user: self.user.clone(),
            group: self.group.clone(),
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
        }
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

/// Why the record could not be read or written. Data only: `commands` says it in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    Read(Errno),
    /// It is not a regular file (a FIFO would hang the boot).
    NotAFile,
    /// Its directory is not root's alone, so anyone could have written it: it is not read.
    UnsafeDir {
        uid: u32,
        mode: u32,
    },
    /// It is not a record: serde's words about the bytes.
    Invalid(String),
    Write {
        op: WriteOp,
        errno: Errno,
    },
}

/// The step of writing the record that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    Remove,
    CreateDir,
    OpenDir,
    Write,
}

/// Reads the record; a missing file is an empty record. Neither the state directory nor the
/// record may be a symlink, the record must be a regular file (a FIFO would hang the boot), and
/// the directory must be one only root can write to (`check` goes on without the lock where it
/// is not, and must not believe what anyone could have written there).
pub fn load(state_dir: &Path) -> Result<Record, RecordError> {
    let dir = match open_state_dir(state_dir) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(empty()),
        Err(errno) => return Err(RecordError::Read(errno)),
    };
    let st = rustix::fs::fstat(&dir).map_err(RecordError::Read)?;
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(RecordError::UnsafeDir {
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        });
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match openat(&dir, FILE, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(empty()),
        Err(errno) => return Err(RecordError::Read(errno)),
    };
    let st = rustix::fs::fstat(&fd).map_err(RecordError::Read)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(RecordError::NotAFile);
    }
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut data)
        .map_err(|e| RecordError::Read(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    serde_json::from_slice(&data).map_err(|e| RecordError::Invalid(e.to_string()))
}

fn empty() -> Record {
    Record {
        version: 1,
        pending: Vec::new(),
    }
}

/// Opens the state directory without following a symlink at its last component.
fn open_state_dir(state_dir: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        state_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Writes the record atomically, or removes it when nothing is pending. The new file is made
/// exclusively under a temporary name, so that a planted link cannot redirect the write.
pub fn save(state_dir: &Path, record: &Record) -> Result<(), RecordError> {
    let fail = |op, errno| RecordError::Write { op, errno };
    if record.pending.is_empty() {
        return match open_state_dir(state_dir)
            .and_then(|dir| unlinkat(&dir, FILE, AtFlags::empty()))
        {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(errno) => Err(fail(WriteOp::Remove, errno)),
        };
    }
    match rustix::fs::mkdir(state_dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => return Err(fail(WriteOp::CreateDir, errno)),
    }
    let dir = open_state_dir(state_dir).map_err(|e| fail(WriteOp::OpenDir, e))?;
    let tmp = format!(".{FILE}.tmp");
    let _ = unlinkat(&dir, tmp.as_str(), AtFlags::empty());
    let data = serde_json::to_vec_pretty(record).unwrap_or_default();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(&dir, tmp.as_str(), flags, Mode::from_raw_mode(0o600))
        .map_err(|e| fail(WriteOp::Write, e))?;
    std::io::Write::write_all(&mut std::fs::File::from(fd), &data).map_err(|e| {
        fail(
            WriteOp::Write,
            Errno::from_io_error(&e).unwrap_or(Errno::IO),
        )
    })?;
    renameat(&dir, tmp.as_str(), &dir, FILE).map_err(|e| fail(WriteOp::Write, e))
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

/// Gives a directory its deferred owner, then its mode (chown clears set-id bits), then drops
/// the mark. A cut in between leaves a mark on a finished directory, which is harmless.
pub fn give_owner(fd: impl AsFd, uid: u32, gid: u32, mode: u32) -> Result<(), rustix::io::Errno> {
    fs::set_owner_mode(&fd, uid, gid, mode)?;
    fs::clear_mark(&fd, OWNER_MARK)
}

/// Drops the pending mark of every side that has nothing pending any more; returns the sides
/// (storage, or `None` for the root) whose mark could not be removed, with the errno.
pub fn settle_sides(
    root: std::os::fd::BorrowedFd<'_>,
    done: &[Option<String>],
    record: &Record,
) -> Vec<(Option<String>, Errno)> {
    let mut seen: Vec<&Option<String>> = Vec::new();
    let mut left = Vec::new();
    for side in done {
        if seen.contains(&side) || record.pending.iter().any(|p| &p.storage == side) {
            continue;
        }
        seen.push(side);
        let base = fs::open_in_root(root, side.as_deref().unwrap_or("/"));
        if let Ok(fd) = base.and_then(fs::reopen) {
            if let Err(errno) = fs::clear_mark(&fd, PENDING_MARK) {
                left.push((side.clone(), errno));
            }
        }
    }
    left
}
