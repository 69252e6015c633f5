//! Path resolution that cannot leave the root, and race-free directory creation.
//!
//! Every path is opened relative to a directory handle with `openat2`. A storage path is resolved
//! with `RESOLVE_IN_ROOT`, so a symlink there behaves as it will after switch-root and stays inside
//! the root. Below a storage, and on the root side of a mount point, no symlink is followed at all:
//! a user who owns a persistent directory must not be able to steer our next `mkdir`/`chown`
//! through a link into a root-owned place.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, StatxAttributes, StatxFlags, XattrFlags,
    chmodat, chownat, fchmod, fchown, fgetxattr, fremovexattr, fsetxattr, fstat, mkdirat, openat2,
    readlinkat, renameat_with, statx, unlinkat,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
const DIR_READ: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
const STRICT: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

/// Handles a walk is done with. Closing one is a system call of its own, while the kernel
/// closes all that are left at exit for less; a no-op run opens two per entry. So up to a
/// budget (the soft limit on open files, raised to the hard one, less a margin) they are left
/// open until the process ends, and beyond it closed as usual.
pub struct Retired {
    room: usize,
}

impl Retired {
    const MARGIN: u64 = 256;
    const MOST: u64 = 1 << 16;

    pub fn new() -> Self {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let want = limit.maximum.unwrap_or(Self::MOST).min(Self::MOST);
        let mut current = limit.current.unwrap_or(Self::MOST);
        if current < want
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(want),
                    maximum: limit.maximum,
                },
            )
            .is_ok()
        {
            current = want;
        }
        Retired {
            room: usize::try_from(current.saturating_sub(Self::MARGIN)).unwrap_or(0),
        }
    }

    pub fn retire(&mut self, fd: OwnedFd) {
        if self.room > 0 {
            self.room -= 1;
            std::mem::forget(fd);
        }
    }
}

impl Default for Retired {
    fn default() -> Self {
        Self::new()
    }
}

/// A system call's purpose, carried by the errors of the steps that make directories, so that
/// the words for it are chosen where messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Open,
    Create,
    Stat,
    SetOwnerMode,
    MarkBase,
}

/// An operation on a path that failed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsError {
    pub op: Op,
    pub errno: Errno,
}

/// Opens the root directory everything else is resolved from.
pub fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(root, DIR_PATH, Mode::empty())
}

/// Opens a directory inside the root, following symlinks the way they resolve after switch-root.
pub fn open_in_root(root: impl AsFd, path: &str) -> Result<OwnedFd, Errno> {
    openat2(root, relative(path), DIR_PATH, Mode::empty(), IN_ROOT)
}

/// Opens a regular file inside the root for reading, symlinks resolved within the root.
pub fn read_in_root(root: impl AsFd, path: &str) -> Result<Vec<u8>, Errno> {
    // Non-blocking, and only a regular file: a FIFO planted at etc/passwd must not hang the boot.
    let fd = openat2(
        root,
        relative(path),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )?;
    if rustix::fs::FileType::from_raw_mode(fstat(&fd)?.st_mode) != rustix::fs::FileType::RegularFile
    {
        return Err(Errno::INVAL);
    }
    let mut file = std::fs::File::from(fd);
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut data)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    Ok(data)
}

/// The longest path one call is given. A longer one (an entry deeper than `PATH_MAX`) is
/// opened in pieces, each from the handle the last one gave, so that no call gets a path that
/// grows with the entry; a single name too long stays the kernel's `ENAMETOOLONG`.
pub const PIECE: usize = 2048;

/// Opens `path` below `dir` with `open`, in one call, or in pieces of at most `PIECE` bytes.
fn in_pieces(
    dir: impl AsFd,
    path: &str,
    open: impl Fn(BorrowedFd<'_>, &str) -> Result<OwnedFd, Errno>,
) -> Result<OwnedFd, Errno> {
    let path = relative(path);
    if path.len() <= PIECE {
        return open(dir.as_fd(), path);
    }
    let mut fd: Option<OwnedFd> = None;
    let mut rest = path;
    while !rest.is_empty() {
        let cut = if rest.len() <= PIECE {
            rest.len()
        } else {
            // At the last `/` within the piece; a name longer than a piece goes whole, and the
            // kernel refuses it.
            rest.as_bytes()[..=PIECE]
                .iter()
                .rposition(|&b| b == b'/')
                .filter(|&at| at > 0)
                .or_else(|| rest.find('/'))
                .unwrap_or(rest.len())
        };
        let from = fd.as_ref().map_or(dir.as_fd(), AsFd::as_fd);
        let next = open(from, &rest[..cut])?;
        fd = Some(next);
        rest = rest[cut..].trim_start_matches('/');
    }
    fd.ok_or(Errno::INVAL)
}

/// Opens a directory below `dir` in one call, refusing every symlink on the way.
pub fn open_beneath(dir: impl AsFd, path: &str) -> Result<OwnedFd, Errno> {
    in_pieces(dir, path, |dir, path| {
        openat2(dir, path, DIR_PATH, Mode::empty(), STRICT)
    })
}

/// As `open_beneath`, and also refusing to cross into another mount (`EXDEV`): a path that
/// opens so is on the very mount of `dir`, which no further question needs to confirm.
pub fn open_beneath_same_mount(dir: impl AsFd, path: &str) -> Result<OwnedFd, Errno> {
    in_pieces(dir, path, |dir, path| {
        openat2(
            dir,
            path,
            DIR_PATH,
            Mode::empty(),
            STRICT.union(ResolveFlags::NO_XDEV),
        )
    })
}

/// Opens a directory below `dir` in one call, refusing every symlink, for the planner's common
/// case (a manifest path that exists). Beneath `dir` by construction rather than by the
/// kernel's `RESOLVE_BENEATH`: the path must be child names only (no `.`, `..` or empty
/// component; a leading `/` is taken as relative), else `EXDEV`, so every step descends and
/// none follows a link. `RESOLVE_BENEATH` checks again at the end of every call by walking up
/// from the result, which measured about 5% of a no-op run. With `same_mount`, also refuses
/// to cross into another mount, as `open_beneath_same_mount` does.
pub fn open_descending(dir: impl AsFd, path: &str, same_mount: bool) -> Result<OwnedFd, Errno> {
    if !only_descends(relative(path)) {
        return Err(Errno::XDEV);
    }
    let resolve = if same_mount {
        ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_XDEV)
    } else {
        ResolveFlags::NO_SYMLINKS
    };
    in_pieces(dir, path, |dir, path| {
        openat2(dir, path, DIR_PATH, Mode::empty(), resolve)
    })
}

/// True when a relative path names a descendant by child names alone.
fn only_descends(path: &str) -> bool {
    path.as_bytes()
        .split(|&b| b == b'/')
        .all(|c| !matches!(c, b"" | b"." | b".."))
}

/// Opens a directory below `dir` for reading (extended attributes, `fstat`), refusing symlinks.
pub fn open_dir_beneath(dir: impl AsFd, path: &str) -> Result<OwnedFd, Errno> {
    in_pieces(dir, path, |dir, path| {
        openat2(dir, path, DIR_READ, Mode::empty(), STRICT)
    })
}

/// Opens one child directory, refusing a symlink; the handle can be chowned and chmodded.
pub fn open_child(dir: impl AsFd, name: &str) -> Result<OwnedFd, Errno> {
    openat2(dir, name, DIR_READ, Mode::empty(), STRICT)
}

/// Opens one child directory as a path handle (enough to walk and stat, works without read access).
pub fn open_child_path(dir: impl AsFd, name: &str) -> Result<OwnedFd, Errno> {
    openat2(
        dir,
        name,
        DIR_PATH | OFlags::NOFOLLOW,
        Mode::empty(),
        STRICT,
    )
}

/// Creates one child directory with `mode` (the caller sets the umask to 0).
pub fn make_child(dir: impl AsFd, name: &str, mode: u32) -> Result<(), Errno> {
    mkdirat(dir, name, Mode::from_raw_mode(mode))
}

/// Gives a directory we just created its owner, then its mode (chown clears set-id bits).
pub fn set_owner_mode(fd: impl AsFd, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    set_owner(&fd, uid, gid)?;
    set_mode(&fd, mode)
}

pub fn set_owner(fd: impl AsFd, uid: u32, gid: u32) -> Result<(), Errno> {
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

pub fn set_mode(fd: impl AsFd, mode: u32) -> Result<(), Errno> {
    fchmod(fd, Mode::from_raw_mode(mode))
}

/// Owner, mode and identity of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    pub is_dir: bool,
}

pub fn meta(fd: impl AsFd) -> Result<Meta, Errno> {
    let st = fstat(fd)?;
    Ok(Meta {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        dev: st.st_dev,
        ino: st.st_ino,
        is_dir: st.st_mode & 0o170_000 == 0o040_000,
    })
}

/// When a directory was born, in nanoseconds, if the file system records it. Together with the
/// device and inode it tells a directory from a later one that reused the inode number.
pub fn birth(fd: impl AsFd) -> Option<u128> {
    let stx = statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME).ok()?;
    if !StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::BTIME) {
        return None;
    }
    let secs = u128::try_from(stx.stx_btime.tv_sec).ok()?;
    Some(secs * 1_000_000_000 + u128::from(stx.stx_btime.tv_nsec))
}

/// The mount an open file is on and its device, as `statx` reports them; the mount id is
/// `None` on kernels before 5.8.
pub fn mount_of(fd: impl AsFd) -> Result<(Option<u64>, u64), Errno> {
    let stx = statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::NO_AUTOMOUNT,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?;
    let dev = rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let id = StatxFlags::from_bits_retain(stx.stx_mask)
        .contains(StatxFlags::MNT_ID)
        .then_some(stx.stx_mnt_id);
    Ok((id, dev))
}

/// What stands at a name that could not be opened as a directory.
pub enum Obstacle {
    Missing,
    Symlink(String),
    NotADirectory,
    /// Anything else; the caller reports the errno it already has.
    Other,
}

/// Explains why opening `name` below `dir` as a directory failed.
pub fn diagnose(dir: impl AsFd, name: &str, errno: Errno) -> Obstacle {
    match errno {
        Errno::NOENT => Obstacle::Missing,
        Errno::LOOP | Errno::NOTDIR | Errno::XDEV => match readlinkat(&dir, name, Vec::new()) {
            Ok(target) => Obstacle::Symlink(crate::escape::bytes(target.as_bytes())),
            Err(_) if errno == Errno::NOTDIR => Obstacle::NotADirectory,
            Err(_) => Obstacle::Other,
        },
        _ => Obstacle::Other,
    }
}

/// True when the open directory is the root of a mount, not just a directory on its parent's fs.
pub fn is_mount_point(fd: impl AsFd) -> Result<bool, Errno> {
    let stx = statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH | AtFlags::NO_AUTOMOUNT,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    );
    match stx {
        Ok(stx)
            if stx
                .stx_attributes_mask
                .contains(StatxAttributes::MOUNT_ROOT) =>
        {
            Ok(stx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
        }
        Ok(_) | Err(Errno::NOSYS) => {
            // Kernels before 5.8: a mount root has another device than its parent, or is `/`.
            let parent = openat2(&fd, "..", DIR_PATH, Mode::empty(), ResolveFlags::empty())?;
            let (here, up) = (fstat(&fd)?, fstat(&parent)?);
            Ok(here.st_dev != up.st_dev || here.st_ino == up.st_ino)
        }
        Err(e) => Err(e),
    }
}

/// Reopens a path handle for reading, which extended attributes need.
pub fn reopen(fd: impl AsFd) -> Result<OwnedFd, Errno> {
    openat2(fd, ".", DIR_READ, Mode::empty(), STRICT)
}

/// Reads a small extended attribute; `None` when it is not set or the file system has none.
pub fn get_mark(fd: impl AsFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 256];
    match fgetxattr(fd, name, &mut buf[..]) {
        Ok(len) => {
            buf.truncate(len);
            Ok(Some(buf))
        }
        Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets an extended attribute; `Ok(false)` when the file system keeps none here. A `trusted.`
/// attribute refused with `EPERM` (a user namespace, a sandboxed virtiofs) counts as none: we
/// can neither set nor read one there, so the record alone must carry what it would hold.
pub fn set_mark(fd: impl AsFd, name: &str, value: &[u8]) -> Result<bool, Errno> {
    match fsetxattr(fd, name, value, XattrFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::OPNOTSUPP) => Ok(false),
        Err(Errno::PERM) if name.starts_with("trusted.") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes an extended attribute; one already gone, or a `trusted.` one we may not touch here
/// (and so cannot have set), is fine.
pub fn clear_mark(fd: impl AsFd, name: &str) -> Result<(), Errno> {
    match fremovexattr(fd, name) {
        Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(()),
        Err(Errno::PERM) if name.starts_with("trusted.") => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when new directories below `fd` take neither its group (set-group-id) nor a default
/// ACL, so that `mkdir` gives exactly the mode and owner asked for.
pub fn creates_plainly(fd: impl AsFd) -> Result<bool, Errno> {
    let st = fstat(&fd)?;
    if st.st_mode & 0o2000 != 0 {
        return Ok(false);
    }
    let mut buf = [0u8; 4];
    match fgetxattr(&fd, "system.posix_acl_default", &mut buf[..]) {
        Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(true),
        Ok(_) | Err(Errno::RANGE) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives a child its owner and mode by name, never following a link. Only for names in a
/// directory nobody else can write to, where the name cannot be swapped under us.
pub fn set_child_owner_mode(
    dir: impl AsFd,
    name: &str,
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<(), Errno> {
    chownat(
        &dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())
}

/// Moves a finished directory into place; never replaces anything that stands there.
/// Where the file system refuses `RENAME_NOREPLACE`, it checks that the name is free and renames
/// plainly: a rename never replaces a non-empty directory or a file by a directory, so the worst
/// a racing creator can lose is an empty directory made in that instant.
pub fn place(dir: impl AsFd, tmp: &str, name: &str) -> Result<(), Errno> {
    match renameat_with(&dir, tmp, &dir, name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS) => {
            match statx(&dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE) {
                Err(Errno::NOENT) => rustix::fs::renameat(&dir, tmp, &dir, name),
                Ok(_) => Err(Errno::EXIST),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// Whether a file system writes metadata to disk in the order it was changed (a journal, or
/// copy on write, or no disk at all), so that a power cut can never show a renamed directory
/// without the owner and mode it was given before the rename. Conservative: only the file
/// systems known to do so; ext2/3/4 only with a running journal. `key` identifies the file
/// system, so that callers can keep the answer.
pub fn orders_metadata(dir: impl AsFd) -> Result<(u64, bool), Errno> {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683e;
    const ZFS: i64 = 0x2fc1_2fc1;
    const BCACHEFS: i64 = 0xca45_1a4e;
    const EXT: i64 = 0xef53;
    let st = rustix::fs::fstatfs(&dir)?;
    #[allow(clippy::useless_conversion, clippy::cast_possible_wrap)]
    let kind = i64::from(st.f_type);
    let dev = fstat(&dir)?.st_dev;
    let ordered = match kind {
        TMPFS | RAMFS | XFS | BTRFS | ZFS | BCACHEFS => true,
        EXT => ext_has_journal(dev),
        _ => false,
    };
    Ok((dev, ordered))
}

/// True when the ext2/3/4 file system on `dev` runs a journal: ext4 shows its journal thread
/// in `/sys/fs/ext4/<device>/journal_task` ("<none>" without one). Unknown counts as none.
fn ext_has_journal(dev: u64) -> bool {
    let link = format!(
        "/sys/dev/block/{}:{}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    let Ok(target) = std::fs::read_link(link) else {
        return false;
    };
    let Some(name) = target.file_name() else {
        return false;
    };
    let task = Path::new("/sys/fs/ext4").join(name).join("journal_task");
    std::fs::read_to_string(task).is_ok_and(|t| !t.trim().is_empty() && t.trim() != "<none>")
}

/// Writes a directory made under a temporary name to disk, with every directory in it,
/// children first, and then its parent, so that on a file system that does not order
/// metadata the rename that follows cannot reach the disk before them.
pub fn make_durable(dir: impl AsFd, name: &str) -> Result<(), Errno> {
    fn sync_tree(fd: &OwnedFd) -> Result<(), Errno> {
        let mut children = Vec::new();
        for entry in rustix::fs::Dir::read_from(fd)? {
            let entry = entry?;
            let bytes = entry.file_name().to_bytes();
            if bytes != b"."
                && bytes != b".."
                && entry.file_type() == rustix::fs::FileType::Directory
            {
                children.push(String::from_utf8_lossy(bytes).into_owned());
            }
        }
        for child in children {
            sync_tree(&open_child(fd, &child)?)?;
        }
        rustix::fs::fsync(fd)
    }
    sync_tree(&open_child(&dir, name)?)?;
    rustix::fs::fsync(reopen(&dir)?)
}

/// A number nobody can predict, for a temporary name in a directory that others can write to.
/// Never waits for entropy at boot (`GRND_INSECURE`); where the kernel lacks that flag, the
/// clock and the pid stand in (a name taken meanwhile only costs another try).
pub fn unpredictable() -> u64 {
    let mut buf = [0u8; 8];
    if let Ok(8) = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::INSECURE) {
        return u64::from_ne_bytes(buf);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = u64::from(
        rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs(),
    );
    #[allow(clippy::cast_possible_truncation)]
    let now = now as u64;
    (now ^ pid.rotate_left(40)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Removes an empty directory; a full one is refused by the kernel, so no data can go.
pub fn remove_empty(dir: impl AsFd, name: &str) -> Result<(), Errno> {
    unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Reads a tree of directories without changing it, through handles that follow no link,
/// parents first: `accept` sees each one's path below the top ("" for the top) and its owner
/// and mode. `Ok(None)` when the top is missing; `Ok(Some(false))` as soon as anything in it is
/// not a directory, has a name that is not UTF-8, or is refused by `accept`.
pub fn tree_accepted(
    dir: impl AsFd,
    name: &str,
    accept: &mut dyn FnMut(&str, Meta) -> bool,
) -> Result<Option<bool>, Errno> {
    let fd = match open_child(&dir, name) {
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => return Ok(Some(false)),
        other => other?,
    };
    visit(&fd, "", accept).map(Some)
}

fn visit(
    fd: &OwnedFd,
    rel: &str,
    accept: &mut dyn FnMut(&str, Meta) -> bool,
) -> Result<bool, Errno> {
    if !accept(rel, meta(fd)?) {
        return Ok(false);
    }
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let Ok(child) = std::str::from_utf8(bytes) else {
            return Ok(false);
        };
        if entry.file_type() != rustix::fs::FileType::Directory {
            return Ok(false);
        }
        let sub = match open_child(fd, child) {
            Err(Errno::LOOP | Errno::NOTDIR) => return Ok(false),
            other => other?,
        };
        let path = if rel.is_empty() {
            child.to_owned()
        } else {
            format!("{rel}/{child}")
        };
        if !visit(&sub, &path, accept)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes a tree of directories, children first, through handles that follow no link. The
/// kernel refuses a directory that is not empty, so nothing but empty directories can go;
/// the paths below the top that went are added to `removed`.
pub fn remove_dirs(
    dir: impl AsFd,
    name: &str,
    rel: &str,
    removed: &mut Vec<String>,
) -> Result<(), Errno> {
    let fd = open_child(&dir, name)?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes != b"." && bytes != b".." {
            children.push(String::from_utf8_lossy(bytes).into_owned());
        }
    }
    for child in children {
        let path = if rel.is_empty() {
            child.clone()
        } else {
            format!("{rel}/{child}")
        };
        remove_dirs(&fd, &child, &path, removed)?;
    }
    drop(fd);
    remove_empty(dir, name)?;
    removed.push(rel.to_owned());
    Ok(())
}

/// Strips the leading slash: openat2 resolves relative to the handle (or the root, for `IN_ROOT`).
fn relative(path: &str) -> &str {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() { "." } else { trimmed }
}

// Rooted helpers shared with host mode (`microvm/rootfs.rs`): listing, classifying and removing
// without following symlinks, and telling where a directory lives.

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Opens `path` inside the root with `flags`, symlinks resolved within the root.
pub fn open_in_root_with(root: impl AsFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    openat2(
        root,
        relative(path),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        IN_ROOT,
    )
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// A word for a file type, for messages ("a FIFO, not a directory").
pub fn file_type_name(file_type: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
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

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// One directory entry: its raw name and its type, never following a symlink.
pub struct DirEntry {
    pub name: Vec<u8>,
    pub file_type: rustix::fs::FileType,
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Lists an open directory without `.` and `..`, sorted by name; types the file system does not
/// report are taken from `lstat`.
pub fn list_dir(dir: impl AsFd) -> Result<Vec<DirEntry>, Errno> {
    use rustix::fs::{Dir, FileType};
    let mut entries = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let mut file_type = entry.file_type();
        if file_type == FileType::Unknown {
            let stat = rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)?;
            file_type = FileType::from_raw_mode(stat.st_mode);
        }
        entries.push(DirEntry {
            name: name.to_vec(),
            file_type,
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Why [`remove_tree_at`] stopped: the entry (relative to the removed directory, empty for the
/// directory itself) and the errno; `EBUSY` when a mount point was found there.
#[derive(Debug)]
pub struct RemoveError {
    pub entry: String,
    pub errno: Errno,
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Removes the directory `name` below `parent` and everything in it, never following a symlink
/// and never crossing into another mount (a mount point anywhere inside stops it with `EBUSY`).
pub fn remove_tree_at(parent: impl AsFd, name: &str) -> Result<(), RemoveError> {
    let fail = |entry: &str| {
        let entry = entry.to_owned();
        move |errno| RemoveError { entry, errno }
    };
    let top = rustix::fs::openat(&parent, name, DIR_READ, Mode::empty()).map_err(fail(""))?;
    let mount = mount_id(&top).map_err(fail(""))?;
    if mount_id(&parent).map_err(fail(""))? != mount {
        return Err(fail("")(Errno::BUSY));
    }
    remove_contents(&top, "", mount)?;
    drop(top);
    rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).map_err(fail(""))
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
fn remove_contents(dir: &OwnedFd, prefix: &str, mount: (u64, u64)) -> Result<(), RemoveError> {
    use std::os::unix::ffi::OsStrExt as _;
    let entries = list_dir(dir).map_err(|errno| RemoveError {
        entry: prefix.to_owned(),
        errno,
    })?;
    for entry in entries {
        let raw = std::ffi::OsStr::from_bytes(&entry.name);
        let shown = String::from_utf8_lossy(&entry.name);
        let child = if prefix.is_empty() {
            shown.into_owned()
        } else {
            format!("{prefix}/{shown}")
        };
        let fail = |errno| RemoveError {
            entry: child.clone(),
            errno,
        };
        if entry.file_type == rustix::fs::FileType::Directory {
            let sub = rustix::fs::openat(dir, raw, DIR_READ, Mode::empty()).map_err(fail)?;
            if mount_id(&sub).map_err(fail)? != mount {
                return Err(fail(Errno::BUSY));
            }
            remove_contents(&sub, &child, mount)?;
            rustix::fs::unlinkat(dir, raw, AtFlags::REMOVEDIR).map_err(fail)?;
        } else {
            rustix::fs::unlinkat(dir, raw, AtFlags::empty()).map_err(fail)?;
        }
    }
    Ok(())
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Identifies the mount a file is on: the mount id where the kernel reports it, else the device.
pub fn mount_id(fd: impl AsFd) -> Result<(u64, u64), Errno> {
    match statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID) {
        Ok(stx) if stx.stx_mask & StatxFlags::MNT_ID.bits() != 0 => Ok((0, stx.stx_mnt_id)),
        _ => Ok((1, fstat(&fd)?.st_dev)),
    }
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Whether the open file is on a file system mounted read-only.
pub fn on_read_only_fs(fd: impl AsFd) -> Result<bool, Errno> {
    let vfs = rustix::fs::fstatvfs(fd)?;
    Ok(vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

#[cfg_attr(not(feature = "microvm"), allow(dead_code))]
/// Whether the directory `dir` is `ancestor` or below it, walking `..` until `ancestor`, `stop`
/// (the root the walk must not leave) or the file system's top. Both are `(st_dev, st_ino)`.
pub fn is_below(dir: impl AsFd, ancestor: (u64, u64), stop: (u64, u64)) -> Result<bool, Errno> {
    let mut current = rustix::fs::openat(&dir, ".", DIR_PATH, Mode::empty())?;
    for _ in 0..4096 {
        let stat = fstat(&current)?;
        let id = (stat.st_dev, stat.st_ino);
        if id == ancestor {
            return Ok(true);
        }
        if id == stop {
            return Ok(false);
        }
        let parent = rustix::fs::openat(&current, "..", DIR_PATH, Mode::empty())?;
        let up = fstat(&parent)?;
        if (up.st_dev, up.st_ino) == id {
            return Ok(false);
        }
        current = parent;
    }
    Err(Errno::LOOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory; removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("pp-fs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn descending_opens_child_names_only_and_never_a_symlink() {
        let t = Scratch::new("descend");
        let base = open_root(&t.0.join("a")).unwrap();
        assert!(open_descending(&base, "/b/c", false).is_ok());
        assert!(open_descending(&base, "b/c", true).is_ok());
        // `..` would resolve here (a/b/.. is a), yet it is refused before any call.
        for path in ["b/../b", "../a", "./b", "b//c", "b/c/", "", "/"] {
            assert_eq!(
                open_descending(&base, path, false).err(),
                Some(Errno::XDEV),
                "{path:?}"
            );
        }
        std::os::unix::fs::symlink("b", t.0.join("a/l")).unwrap();
        assert_eq!(
            open_descending(&base, "l/c", false).err(),
            Some(Errno::LOOP)
        );
    }
}
