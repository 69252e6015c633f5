//! Filesystem access confined to `--root`.
//!
//! Every path is resolved from a handle on the root with `openat2(RESOLVE_IN_ROOT)`, so an absolute
//! symlink such as `/etc/systemd/system -> /nix/store/...` in a mounted tree resolves inside that
//! tree and never on the host. The last component of anything removed is never followed.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{
    AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat, StatVfsMountFlags, StatxFlags,
};
use rustix::io::Errno;

/// The errno in words, without the "(os error N)" suffix.
pub fn why(errno: Errno) -> String {
    io_why(&std::io::Error::from_raw_os_error(errno.raw_os_error()))
}

pub fn io_why(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// A failed filesystem operation, with the root-relative path it concerns.
#[derive(Debug, Clone)]
pub struct FsError {
    pub path: String,
    pub errno: Errno,
    pub note: Option<String>,
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, why(self.errno))?;
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

/// A word for a file type, for messages ("a FIFO, not a directory").
pub fn type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}

pub fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// One directory entry: its name (when UTF-8) and type (never following symlinks).
pub struct Entry {
    pub name: Result<String, String>,
    pub raw: Vec<u8>,
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
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
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
        rustix::fs::openat2(
            &self.fd,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
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

    /// Whether the path exists after following symlinks (inside the root).
    pub fn exists(&self, path: &str) -> Result<bool, FsError> {
        match self.open_path(path, OFlags::PATH) {
            Ok(_) => Ok(true),
            Err(e) if e.errno == Errno::NOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a small text file (runner metadata), following symlinks inside the root.
    pub fn read_text(&self, path: &str) -> Result<Option<String>, FsError> {
        let fd = match self.open_path(path, OFlags::RDONLY) {
            Ok(fd) => fd,
            Err(e) if e.errno == Errno::NOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(1 << 20)
            .read_to_string(&mut text)
            .map_err(|e| fail(path, Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
        Ok(Some(text))
    }

    /// Why nothing below this directory may be changed, if that is so.
    pub fn managed(&self, dir: &OwnedFd) -> Option<&'static str> {
        match rustix::fs::fstatvfs(dir) {
            Ok(vfs) if vfs.f_flag.contains(StatVfsMountFlags::RDONLY) => {
                return Some("on a read-only file system");
            }
            Ok(_) => {}
            Err(_) => return Some("on a file system that cannot be inspected"),
        }
        match self.in_store(dir) {
            Ok(false) => None,
            Ok(true) => Some("inside /nix/store"),
            Err(_) => Some("in a place whose ancestors cannot be inspected"),
        }
    }

    /// Walks `..` up to the root, looking for the root's `/nix/store`.
    fn in_store(&self, dir: &OwnedFd) -> Result<bool, Errno> {
        let store = match self.open_path("/nix/store", OFlags::PATH | OFlags::DIRECTORY) {
            Ok(fd) => rustix::fs::fstat(&fd)?,
            Err(e) if e.errno == Errno::NOENT || e.errno == Errno::NOTDIR => return Ok(false),
            Err(e) => return Err(e.errno),
        };
        let store = (store.st_dev, store.st_ino);
        let mut current = rustix::fs::openat(
            dir,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for _ in 0..4096 {
            let stat = rustix::fs::fstat(&current)?;
            let id = (stat.st_dev, stat.st_ino);
            if id == store {
                return Ok(true);
            }
            if id == self.id {
                return Ok(false);
            }
            let parent = rustix::fs::openat(
                &current,
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let up = rustix::fs::fstat(&parent)?;
            if (up.st_dev, up.st_ino) == id {
                return Ok(false);
            }
            current = parent;
        }
        Err(Errno::LOOP)
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
        let top = rustix::fs::openat(
            &parent,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(path, e))?;
        let mount = mount_key(&top).map_err(|e| fail(path, e))?;
        if mount_key(&parent).map_err(|e| fail(path, e))? != mount {
            return Err(FsError {
                path: path.to_owned(),
                errno: Errno::BUSY,
                note: Some("it is a mount point; unmount it first".into()),
            });
        }
        remove_contents(&top, path, mount)?;
        drop(top);
        rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR).map_err(|e| fail(path, e))
    }
}

/// Identifies the mount a directory is on (mount id where the kernel has it, else the device).
fn mount_key(fd: &OwnedFd) -> Result<(u64, u64), Errno> {
    match rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
        Ok(stx) if stx.stx_mask & StatxFlags::MNT_ID.bits() != 0 => Ok((0, stx.stx_mnt_id)),
        _ => Ok((1, rustix::fs::fstat(fd)?.st_dev)),
    }
}

fn remove_contents(dir: &OwnedFd, path: &str, mount: (u64, u64)) -> Result<(), FsError> {
    for entry in list_fd(dir, path)? {
        let name = match &entry.name {
            Ok(name) | Err(name) => name,
        };
        let child = join(path, name);
        let raw = OsStr::from_bytes(&entry.raw);
        if entry.file_type == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                raw,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail(&child, e))?;
            if mount_key(&sub).map_err(|e| fail(&child, e))? != mount {
                return Err(FsError {
                    path: child,
                    errno: Errno::BUSY,
                    note: Some("a mount point inside; unmount it first".into()),
                });
            }
            remove_contents(&sub, &child, mount)?;
            rustix::fs::unlinkat(dir, raw, AtFlags::REMOVEDIR).map_err(|e| fail(&child, e))?;
        } else {
            rustix::fs::unlinkat(dir, raw, AtFlags::empty()).map_err(|e| fail(&child, e))?;
        }
    }
    Ok(())
}

/// Lists a directory opened from the root; `path` is only for messages.
pub fn list_fd(dir: &OwnedFd, path: &str) -> Result<Vec<Entry>, FsError> {
    let reader = Dir::read_from(dir.as_fd()).map_err(|e| fail(path, e))?;
    let mut entries = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|e| fail(path, e))?;
        let raw = entry.file_name().to_bytes();
        if raw == b"." || raw == b".." {
            continue;
        }
        let name =
            String::from_utf8(raw.to_vec()).map_err(|_| String::from_utf8_lossy(raw).into_owned());
        let mut file_type = entry.file_type();
        if file_type == FileType::Unknown {
            let stat = rustix::fs::statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| fail(path, e))?;
            file_type = self::file_type(&stat);
        }
        entries.push(Entry {
            name,
            raw: raw.to_vec(),
            file_type,
        });
    }
    entries.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
    Ok(entries)
}

fn sort_key(entry: &Entry) -> &str {
    match &entry.name {
        Ok(name) | Err(name) => name,
    }
}
