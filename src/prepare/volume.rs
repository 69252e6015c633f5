//! Is a storage really on its volume? Whatever is created under a storage whose volume is not
//! there lands on the ephemeral root and is gone at the next boot, so this is asked before
//! anything is created, for both sides of every entry of the storage.
//!
//! "The mount point is a mount point" is not enough: `/nix/persist` may be a symlink to a plain
//! directory on the root, a bind mount of one, or `/nix` itself may be a bind mount of a
//! directory on the root. So the storage, as it resolves, must sit on the mountPoint's mount or
//! on a mount beneath it (by mount id), and not on the root's own file system (by device).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use crate::escape;
use crate::fs;
use crate::manifest::Storage;
use crate::report;

/// Why a storage counts as not mounted; each names the path that leads off the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotMounted {
    /// The mountPoint does not exist.
    Missing { mount_point: String },
    /// The mountPoint is a plain directory.
    NotAMountPoint { mount_point: String },
    /// The mountPoint is a mount, but of the root's own file system (a bind mount).
    RootFileSystem { mount_point: String },
    /// Part of the storage path resolves to somewhere that is not below the mountPoint's mount.
    OffVolume { path: String, link: Option<String> },
    /// The storage path is on a mount beneath the mountPoint, but of the root's file system.
    BindOfRoot { path: String },
    /// The storage path is on a mount other than the mountPoint's, and which mount that one
    /// sits beneath cannot be told: `/proc/self/mountinfo` cannot be read (no `/proc`, as in an
    /// installer's chroot).
    NoMountinfo { path: String, errno: Errno },
    /// The question itself failed.
    Unknown { path: String, errno: Errno },
}

impl NotMounted {
    /// The path it names, as stored.
    pub fn path(&self) -> &str {
        match self {
            NotMounted::Missing { mount_point }
            | NotMounted::NotAMountPoint { mount_point }
            | NotMounted::RootFileSystem { mount_point } => mount_point,
            NotMounted::OffVolume { path, .. }
            | NotMounted::BindOfRoot { path }
            | NotMounted::NoMountinfo { path, .. }
            | NotMounted::Unknown { path, .. } => path,
        }
    }

    /// What it is, in words, with paths shown under the root.
    pub fn explain(&self, root: &str) -> String {
        match self {
            NotMounted::Missing { mount_point } => {
                format!("{root}{} does not exist", escape::text(mount_point))
            }
            NotMounted::NotAMountPoint { mount_point } => {
                format!("{root}{} is not a mount point", escape::text(mount_point))
            }
            NotMounted::RootFileSystem { mount_point } => format!(
                "{root}{} is a mount of the root's own file system (a bind mount of a directory on it), not a volume of its own",
                escape::text(mount_point)
            ),
            NotMounted::OffVolume {
                path,
                link: Some(target),
            } => format!(
                "{root}{} is a symlink to {target}, which leads off the volume",
                escape::text(path)
            ),
            NotMounted::OffVolume { path, link: None } => format!(
                "{root}{} is on another mount than the volume",
                escape::text(path)
            ),
            NotMounted::BindOfRoot { path } => format!(
                "{root}{} is a bind mount of a directory on the root's own file system",
                escape::text(path)
            ),
            NotMounted::NoMountinfo { path, errno } => format!(
                "cannot tell whether {root}{}, which is on a mount of its own, is on the volume: /proc/self/mountinfo cannot be read ({})",
                escape::text(path),
                report::errno_words(*errno)
            ),
            NotMounted::Unknown { path, errno } => format!(
                "cannot tell whether {root}{} is on the volume ({})",
                escape::text(path),
                report::errno_words(*errno)
            ),
        }
    }

    /// The fix, for the cause at hand.
    pub fn fix(&self, mount_point: &str) -> String {
        let mp = escape::text(mount_point);
        match self {
            NotMounted::OffVolume { path, .. } | NotMounted::BindOfRoot { path } => format!(
                "make {} a real directory on the volume mounted at {mp} (remove the symlink or bind mount that stands there), or change the storage's path",
                escape::text(path)
            ),
            NotMounted::NoMountinfo { .. } => {
                "mount /proc (mount -t proc proc /proc; in a chroot, bind the host's /proc into it) and run persist-prep again".to_owned()
            }
            _ => format!(
                "mount the volume at {mp} before persist-prep runs; on NixOS set fileSystems.\"{mp}\".neededForBoot = true"
            ),
        }
    }
}

/// Where a storage was found on its volume, for the walk below it: a directory on the
/// storage's own mount is on the volume; one on another mount is asked again.
#[derive(Debug, Clone, Copy)]
pub struct Volume {
    storage: (Option<u64>, u64),
    mount_point: (Option<u64>, u64),
    root: (Option<u64>, u64),
    /// The mountPoint is `/`: the root's own file system is the volume.
    on_root: bool,
}

impl Volume {
    /// Checks the mount of a directory that a walk below the storage reached by crossing a
    /// mount: it must sit on the mountPoint's mount or beneath it, and not be the root's own
    /// file system. `path` is how it is shown.
    pub fn holds(&self, fd: impl AsFd, path: &str) -> Result<(), NotMounted> {
        let (mount, dev) = fs::mount_of(fd).map_err(|errno| NotMounted::Unknown {
            path: path.to_owned(),
            errno,
        })?;
        if (mount, dev) == self.storage {
            return Ok(());
        }
        let beneath = match (mount, self.mount_point.0) {
            (Some(mount), Some(mp)) if mount == mp => true,
            (Some(mount), Some(mp)) => {
                beneath_by_mountinfo(mount, mp).map_err(|errno| NotMounted::NoMountinfo {
                    path: path.to_owned(),
                    errno,
                })?
            }
            _ => dev == self.mount_point.1,
        };
        if !beneath {
            return Err(NotMounted::OffVolume {
                path: path.to_owned(),
                link: None,
            });
        }
        if !self.on_root && (dev == self.root.1 || mount == self.root.0) {
            return Err(NotMounted::BindOfRoot {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

/// Checks a storage that declares a `mountPoint`.
pub fn check(
    root: BorrowedFd<'_>,
    storage: &Storage,
    mount_point: &str,
) -> Result<Volume, NotMounted> {
    let unknown = |path: &str, errno| NotMounted::Unknown {
        path: path.to_owned(),
        errno,
    };
    let mp = match fs::open_in_root(root, mount_point) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            return Err(NotMounted::Missing {
                mount_point: mount_point.to_owned(),
            });
        }
        Err(errno) => return Err(unknown(mount_point, errno)),
    };
    if !fs::is_mount_point(&mp).map_err(|e| unknown(mount_point, e))? {
        return Err(NotMounted::NotAMountPoint {
            mount_point: mount_point.to_owned(),
        });
    }
    let (root_mount, root_dev) = fs::mount_of(root).map_err(|e| unknown("/", e))?;
    let (mp_mount, mp_dev) = fs::mount_of(&mp).map_err(|e| unknown(mount_point, e))?;
    if mount_point != "/" && mp_dev == root_dev {
        return Err(NotMounted::RootFileSystem {
            mount_point: mount_point.to_owned(),
        });
    }
    let (deepest, fd) = deepest_existing(root, &storage.path).map_err(|e| unknown("/", e))?;
    let (mount, dev) = fs::mount_of(&fd).map_err(|e| unknown(&deepest, e))?;
    let beneath = match (mount, mp_mount) {
        (Some(mount), Some(mp_mount)) if mount == mp_mount => true,
        (Some(mount), Some(mp_mount)) => match beneath_by_mountinfo(mount, mp_mount) {
            Ok(beneath) => beneath,
            Err(errno) => {
                return Err(NotMounted::NoMountinfo {
                    path: deepest,
                    errno,
                });
            }
        },
        // Before Linux 5.8 there are no mount ids: the device must be the volume's.
        _ => dev == mp_dev,
    };
    if !beneath {
        return Err(leads_off(root, &storage.path, &deepest));
    }
    if mount_point != "/" && (dev == root_dev || mount == root_mount) {
        return Err(NotMounted::BindOfRoot { path: deepest });
    }
    Ok(Volume {
        storage: (mount, dev),
        mount_point: (mp_mount, mp_dev),
        root: (root_mount, root_dev),
        on_root: mount_point == "/",
    })
}

/// The deepest ancestor of `path` (or `path` itself) that exists, resolved inside the root.
fn deepest_existing(root: BorrowedFd<'_>, path: &str) -> Result<(String, OwnedFd), Errno> {
    let mut prefix = path.to_owned();
    loop {
        if let Ok(fd) = fs::open_in_root(root, &prefix) {
            return Ok((prefix, fd));
        }
        match prefix.rfind('/') {
            Some(0) | None => break,
            Some(cut) => prefix.truncate(cut),
        }
    }
    Ok(("/".to_owned(), fs::open_in_root(root, "/")?))
}

/// Names the component of the storage path that leads off the volume: a symlink, or else the
/// deepest existing part, which is on another mount.
fn leads_off(root: BorrowedFd<'_>, path: &str, deepest: &str) -> NotMounted {
    let mut dir = fs::open_in_root(root, "/").ok();
    let mut prefix = String::new();
    for name in path.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(name);
        let Some(parent) = dir.take() else { break };
        match fs::open_child_path(&parent, name) {
            Ok(fd) => dir = Some(fd),
            Err(errno) => {
                if let fs::Obstacle::Symlink(target) = fs::diagnose(&parent, name, errno) {
                    return NotMounted::OffVolume {
                        path: prefix,
                        link: Some(target),
                    };
                }
                break;
            }
        }
    }
    NotMounted::OffVolume {
        path: deepest.to_owned(),
        link: None,
    }
}

/// True when mount `id` sits somewhere below mount `ancestor`, by `/proc/self/mountinfo`; the
/// errno when that cannot be read (or does not name the mount, as an empty `/proc` would).
fn beneath_by_mountinfo(id: u64, ancestor: u64) -> Result<bool, Errno> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    let parents = parse_mountinfo(&text);
    if !parents.contains_key(&id) {
        return Err(Errno::NOENT);
    }
    let mut at = id;
    for _ in 0..parents.len() {
        match parents.get(&at) {
            Some(&parent) if parent == ancestor => return Ok(true),
            Some(&parent) if parent != at => at = parent,
            _ => return Ok(false),
        }
    }
    Ok(false)
}

/// Mount id to parent mount id, from the first two fields of each mountinfo line.
fn parse_mountinfo(text: &str) -> HashMap<u64, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let parent = fields.next()?.parse().ok()?;
            Some((id, parent))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parents() {
        let map = parse_mountinfo(
            "22 1 0:21 / / rw - tmpfs tmpfs rw\n30 22 8:1 / /nix rw - ext4 /dev/vda rw\n31 30 8:1 /persist /nix/persist rw - ext4 /dev/vda rw\nbroken\n",
        );
        assert_eq!(map.get(&31), Some(&30));
        assert_eq!(map.get(&30), Some(&22));
        assert_eq!(map.len(), 3);
    }
}
