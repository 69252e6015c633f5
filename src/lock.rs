//! The lock that keeps two runs apart: a `flock` on a 0600 file in the state directory, which
//! only root can open, so no user can hold it. The wait for it is bounded, and on a file system
//! without locks the run goes on unlocked, with a warning.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags, fchmod, flock, fstat, mkdir, openat};
use rustix::io::Errno;

/// The lock file's name in the state directory.
pub const FILE: &str = "lock";
/// How long a run waits for another by default; `PERSIST_PREP_LOCK_TIMEOUT` (seconds)
/// overrides it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run takes: `apply` and `finish` change the tree, `check` only reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Exclusive,
    Shared,
}

/// A held lock; released when dropped. `None` inside: the file system keeps no locks, and the
/// run goes on unlocked.
pub struct Lock(#[allow(dead_code)] Option<OwnedFd>);

/// A process that holds the lock, from `/proc/locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name, when `/proc/PID/comm` could be read.
    pub command: Option<String>,
}

/// Who holds the lock, as far as `/proc/locks` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holders {
    Named(Vec<Holder>),
    /// `/proc/locks` lists no holder that this pid namespace can see: one in another pid
    /// namespace (the kernel leaves those out), or one that has just let go.
    Unseen,
    /// `/proc/locks` cannot be read (no `/proc`).
    NoProc,
}

/// Why a run did not get the lock, or got something less.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The state directory or the lock file could not be made or opened.
    Open {
        op: &'static str,
        errno: Errno,
    },
    /// The state directory is not a directory only root can write to.
    UnsafeDir {
        uid: u32,
        mode: u32,
    },
    /// The lock file is not a regular file of ours.
    UnsafeFile,
    /// Another run held it for the whole wait.
    Timeout {
        waited: Duration,
        holders: Holders,
    },
    /// The file system keeps no locks (`ENOLCK`, `EOPNOTSUPP`): the run goes on unlocked.
    Unsupported {
        errno: Errno,
    },
    Lock {
        errno: Errno,
    },
}

/// What happened on the way to the lock, for the caller to say.
pub enum Event {
    /// Another run holds it: this one waits (exclusive) or goes on without it (shared).
    Busy { holders: Holders },
}

/// The bound on the wait, from `PERSIST_PREP_LOCK_TIMEOUT` (seconds) or the default.
pub fn timeout() -> Duration {
    std::env::var("PERSIST_PREP_LOCK_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// Takes the lock in `state_dir`. A shared lock never waits: a `check` that finds a run
/// changing the tree goes on without it (`Ok(None)` after `on_event`). An exclusive one waits
/// up to `timeout`, then fails naming the holder.
pub fn take(
    state_dir: &Path,
    access: Access,
    timeout: Duration,
    mut on_event: impl FnMut(Event),
) -> Result<Option<Lock>, Problem> {
    let fd = open(state_dir)?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    let mut told = false;
    loop {
        let op = match access {
            Access::Exclusive => FlockOperation::NonBlockingLockExclusive,
            Access::Shared => FlockOperation::NonBlockingLockShared,
        };
        match flock(&fd, op) {
            Ok(()) => return Ok(Some(Lock(Some(fd)))),
            Err(Errno::WOULDBLOCK) => {}
            Err(errno @ (Errno::NOLCK | Errno::OPNOTSUPP)) => {
                return Err(Problem::Unsupported { errno });
            }
            Err(errno) => return Err(Problem::Lock { errno }),
        }
        if !told {
            told = true;
            on_event(Event::Busy {
                holders: holders(&fd),
            });
            if access == Access::Shared {
                return Ok(None);
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Problem::Timeout {
                waited,
                holders: holders(&fd),
            });
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(waited)));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A lock that holds nothing, for a file system without locks.
pub fn none() -> Lock {
    Lock(None)
}

/// Opens (making it if need be) the lock file: in a directory that only root can write to, a
/// regular file of ours that only we can open.
fn open(state_dir: &Path) -> Result<OwnedFd, Problem> {
    let euid = rustix::process::geteuid().as_raw();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match rustix::fs::open(state_dir, flags, Mode::empty()) {
        Err(Errno::NOENT) => match mkdir(state_dir, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => rustix::fs::open(state_dir, flags, Mode::empty()),
            Err(errno) => {
                return Err(Problem::Open {
                    op: "create",
                    errno,
                });
            }
        },
        other => other,
    }
    .map_err(|errno| Problem::Open { op: "open", errno })?;
    let st = fstat(&dir).map_err(|errno| Problem::Open { op: "open", errno })?;
    if st.st_uid != euid || st.st_mode & 0o022 != 0 {
        return Err(Problem::UnsafeDir {
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        });
    }
    let flags =
        OFlags::RDONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd =
        openat(&dir, FILE, flags, Mode::from_raw_mode(0o600)).map_err(|errno| match errno {
            // A symlink, a directory or a socket stands at its name.
            Errno::LOOP | Errno::ISDIR | Errno::NXIO => Problem::UnsafeFile,
            errno => Problem::Open { op: "open", errno },
        })?;
    let st = fstat(&fd).map_err(|errno| Problem::Open { op: "open", errno })?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_uid != euid {
        return Err(Problem::UnsafeFile);
    }
    if st.st_mode & 0o077 != 0 {
        fchmod(&fd, Mode::from_raw_mode(0o600))
            .map_err(|errno| Problem::Open { op: "open", errno })?;
    }
    Ok(fd)
}

/// Who holds the lock on `fd`, by `/proc/locks`.
fn holders(fd: &OwnedFd) -> Holders {
    let Ok(st) = fstat(fd) else {
        return Holders::Unseen;
    };
    let Ok(text) = std::fs::read_to_string("/proc/locks") else {
        return Holders::NoProc;
    };
    let id = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(st.st_dev),
        rustix::fs::minor(st.st_dev),
        st.st_ino
    );
    let named: Vec<Holder> = parse_locks(&text, &id)
        .into_iter()
        .map(|pid| Holder {
            pid,
            command: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim_end().to_owned()),
        })
        .collect();
    if named.is_empty() {
        Holders::Unseen
    } else {
        Holders::Named(named)
    }
}

/// The pids holding (not waiting for) a lock on the file `id` (`maj:min:ino`, as
/// `/proc/locks` writes it).
fn parse_locks(text: &str, id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF`; a waiter has `->` after the number.
        if fields.get(1) == Some(&"->") || fields.get(5) != Some(&id) {
            continue;
        }
        if let Some(pid) = fields.get(4).and_then(|p| p.parse().ok()) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_but_not_waiters() {
        let text = "1: FLOCK  ADVISORY  WRITE 4242 00:2d:77 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 4343 00:2d:77 0 EOF\n\
                    2: POSIX  ADVISORY  READ 99 08:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  READ 4444 00:2d:77 0 EOF\n";
        assert_eq!(parse_locks(text, "00:2d:77"), [4242, 4444]);
        assert!(parse_locks("garbage\n", "00:2d:77").is_empty());
    }
}
