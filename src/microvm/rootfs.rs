//! Filesystem access confined to `--root`, for host mode: a thin layer over the rooted helpers in
//! `crate::fs` that keeps root-relative paths for messages.
//!
//! Every path is resolved from a handle on the root with `openat2(RESOLVE_IN_ROOT)`, so an absolute
//! symlink such as `/etc/systemd/system -> /nix/store/...` in a mounted tree resolves inside that
//! tree and never on the host. The last component of anything removed is never followed.

use std::fmt;
use std::io::Read;
use std::path::Path;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, OFlags, Stat};
use rustix::io::Errno;

pub use crate::fs::file_type_name as type_name;

/// A failed filesystem operation, with the root-relative path it concerns.
#[derive(Debug, Clone)]
pub struct FsError {
    pub path: String,
    pub errno: Errno,
    pub note: Option<String>,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.path,
            crate::report::errno_words(self.errno)
        )?;
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

fn fail(path: &str, errno: Errno) -> FsError {
    FsError {
        path: path.to_owned(),
        errno,
        note: None,
    }
}

pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// One directory entry: its name (`Err` holds a lossy rendering when it is not UTF-8) and type
/// (never following symlinks).
pub struct Entry {
    pub name: Result<String, String>,
    pub file_type: FileType,
}

/// Splits a root-relative absolute path into parent and last component.
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((parent, name)) => (parent, name),
        None => ("/", path),
    }
}

/// Joins a root-relative directory path and an entry name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// A handle on the tree that everything is resolved in.
pub struct Root {
    fd: OwnedFd,
    id: (u64, u64),
}

impl Root {
    pub fn open(path: &Path) -> Result<Self, Errno> {
        let fd = crate::fs::open_root(path)?;
        let stat = rustix::fs::fstat(&fd)?;
        Ok(Root {
            fd,
            id: (stat.st_dev, stat.st_ino),
        })
    }

    /// Whether this root is the running system's `/`.
    pub fn is_host_root(&self) -> bool {
        rustix::fs::stat("/").is_ok_and(|s| (s.st_dev, s.st_ino) == self.id)
    }

    /// Opens a path, following symlinks only inside the root.
    pub fn open_path(&self, path: &str, flags: OFlags) -> Result<OwnedFd, FsError> {
        crate::fs::open_in_root_with(&self.fd, path, flags | OFlags::CLOEXEC)
            .map_err(|e| fail(path, e))
    }

    pub fn open_dir(&self, path: &str) -> Result<OwnedFd, FsError> {
        self.open_path(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    fn parent(&self, path: &str) -> Result<(OwnedFd, String), FsError> {
        let (parent, name) = split(path);
        let fd = self.open_path(parent, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok((fd, name.to_owned()))
    }

    /// `lstat`: the path itself, its last component not followed. `Ok(None)` when missing.
    pub fn lstat(&self, path: &str) -> Result<Option<Stat>, FsError> {
        let (parent, name) = match self.parent(path) {
            Ok(found) => found,
            Err(e) if e.errno == Errno::NOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(fail(path, e)),
        }
    }

    pub fn readlink(&self, path: &str) -> Result<String, FsError> {
        let (parent, name) = self.parent(path)?;
        let target = rustix::fs::readlinkat(&parent, name.as_str(), Vec::new())
            .map_err(|e| fail(path, e))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Whether a unit file is masked (`systemctl mask`: a symbolic link to `/dev/null`).
    pub fn masked(&self, path: &str) -> bool {
        self.readlink(path)
            .is_ok_and(|target| target == "/dev/null")
    }

    /// Whether the path exists after following symlinks (inside the root).
    pub fn exists(&self, path: &str) -> Result<bool, FsError> {
        match self.open_path(path, OFlags::PATH) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == Errno::NOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a small text file (runner metadata), following symlinks inside the root.
    /// Anything but a regular file (a FIFO would block the read) is an error that says what it is.
    pub fn read_text(&self, path: &str) -> Result<Option<String>, FsError> {
        let fd = match self.open_path(path, OFlags::RDONLY | OFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) if e.errno == Errno::NOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        let kind = rustix::fs::fstat(&fd)
            .map(|stat| file_type(&stat))
            .map_err(|e| fail(path, e))?;
        if kind != FileType::RegularFile {
            let errno = if kind == FileType::Directory {
                Errno::ISDIR
            } else {
                Errno::INVAL
            };
            return Err(FsError {
                note: Some(format!("it is {}, not a file", type_name(kind))),
                ..fail(path, errno)
            });
        }
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| fail(path, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        Ok(Some(text))
    }

    /// Whether the directory `path` opens to is the one `ancestor` opens to, or below it (symlinks
    /// followed inside the root). `false` when either cannot be opened.
    pub fn is_within(&self, path: &str, ancestor: &str) -> bool {
        let (Ok(dir), Ok(top)) = (self.open_dir(path), self.open_dir(ancestor)) else {
            return false;
        };
        rustix::fs::fstat(&top).is_ok_and(|top| {
            crate::fs::is_below(&dir, (top.st_dev, top.st_ino), self.id).unwrap_or(false)
        })
    }

    /// Why nothing below this directory may be changed, if that is so.
    pub fn managed(&self, dir: &OwnedFd) -> Option<&'static str> {
        match crate::fs::on_read_only_fs(dir) {
            Ok(true) => return Some("on a read-only file system"),
            Ok(false) => {}
            Err(_) => return Some("on a file system that cannot be inspected"),
        }
        match self.in_store(dir) {
            Ok(false) => None,
            Ok(true) => Some("inside /nix/store"),
            Err(_) => Some("in a place whose ancestors cannot be inspected"),
        }
    }

    /// Whether the directory is the root's `/nix/store` or below it.
    fn in_store(&self, dir: &OwnedFd) -> Result<bool, Errno> {
        let store = match self.open_path("/nix/store", OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => rustix::fs::fstat(&fd)?,
            Err(e) if e.errno == Errno::NOENT || e.errno == Errno::NOTDIR => return Ok(false),
            Err(e) => return Err(e.errno),
        };
        crate::fs::is_below(dir, (store.st_dev, store.st_ino), self.id)
    }

    /// Opens a path's parent for a change and refuses when the parent is managed.
    fn writable_parent(&self, path: &str) -> Result<(OwnedFd, String), FsError> {
        let (parent, name) = self.parent(path)?;
        if let Some(reason) = self.managed(&parent) {
            return Err(FsError {
                path: path.to_owned(),
                errno: Errno::ROFS,
                note: Some(format!("its directory is {reason}; never changed")),
            });
        }
        Ok((parent, name))
    }

    /// Removes a symlink or file (never a directory), without following it.
    pub fn unlink(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.writable_parent(path)?;
        let stat = rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(path, e))?;
        if file_type(&stat) == FileType::Directory {
            return Err(fail(path, Errno::ISDIR));
        }
        rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty()).map_err(|e| fail(path, e))
    }

    /// Removes a directory and everything in it, staying on its mount and never following links.
    pub fn remove_tree(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.writable_parent(path)?;
        crate::fs::remove_tree_at(&parent, &name).map_err(|e| {
            let at = if e.entry.is_empty() {
                path.to_owned()
            } else {
                join(path, &e.entry)
            };
            let note = (e.errno == Errno::BUSY).then(|| {
                if e.entry.is_empty() {
                    "it is a mount point; unmount it first".to_owned()
                } else {
                    "a mount point inside; unmount it first".to_owned()
                }
            });
            FsError {
                path: at,
                errno: e.errno,
                note,
            }
        })
    }
}

/// Lists a directory opened from the root; `path` is only for messages.
pub fn list_fd(dir: &OwnedFd, path: &str) -> Result<Vec<Entry>, FsError> {
    let entries = crate::fs::list_dir(dir).map_err(|e| fail(path, e))?;
    Ok(entries
        .into_iter()
        .map(|entry| Entry {
            name: String::from_utf8(entry.name)
                .map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            file_type: entry.file_type,
        })
        .collect())
}
