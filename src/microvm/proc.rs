//! Which processes use a VM's state directory: its working directory or an open file is in it.
//!
//! `microvm -r NAME` runs a VM in the foreground with no unit and no `booted` link, from
//! `cd <stateDir>/NAME`; its hypervisor holds the disk images open. Files are matched by identity
//! (device and inode), so this works for `--root` trees too, and a path that a process sees
//! through another mount namespace still matches.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType};

use super::rootfs::Root;

/// Deeper or larger directories are not walked to the end; what was seen still counts.
const MAX_DEPTH: usize = 16;
const MAX_ENTRIES: usize = 200_000;

pub type Identity = (u64, u64);

/// A process using a VM's directory, with the systemd unit it runs in (from its cgroup), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub pid: u32,
    pub unit: Option<String>,
}

/// The identity of each of `dirs` (VM name -> root-relative directory) and of everything below
/// it, mapped to the index of its directory in `dirs`.
pub fn identities(root: &Root, dirs: &[(String, String)]) -> HashMap<Identity, usize> {
    let mut owners: HashMap<Identity, usize> = HashMap::new();
    for (index, (_, path)) in dirs.iter().enumerate() {
        if let Ok(fd) = root.open_dir(path) {
            let mut budget = MAX_ENTRIES;
            collect(&fd, index, 0, &mut owners, &mut budget);
        }
    }
    owners
}

/// The processes using each of `dirs` (whose [`identities`] are `owners`), by VM name; the error
/// says why `/proc` cannot tell.
pub fn users(
    dirs: &[(String, String)],
    owners: &HashMap<Identity, usize>,
) -> Result<BTreeMap<String, Vec<User>>, String> {
    let mut found: BTreeMap<String, Vec<User>> = BTreeMap::new();
    if owners.is_empty() {
        return Ok(found);
    }
    for (pid, index) in scan_proc(Path::new("/proc"), owners)? {
        let unit = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| cgroup_unit(&text));
        found
            .entry(dirs[index].0.clone())
            .or_default()
            .push(User { pid, unit });
    }
    Ok(found)
}

/// The unit a process runs in, from `/proc/PID/cgroup` (`0::/system.slice/.../microvm@a.service`).
pub fn cgroup_unit(text: &str) -> Option<String> {
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    path.rsplit('/')
        .find(|part| {
            Path::new(part)
                .extension()
                .is_some_and(|kind| kind == "service" || kind == "scope")
        })
        .map(str::to_owned)
}

/// Records the identity of a directory and of everything below it (never following links).
fn collect(
    dir: &OwnedFd,
    index: usize,
    depth: usize,
    owners: &mut HashMap<Identity, usize>,
    budget: &mut usize,
) {
    if let Ok(stat) = rustix::fs::fstat(dir) {
        owners.insert((stat.st_dev, stat.st_ino), index);
    }
    let Ok(entries) = crate::fs::list_dir(dir) else {
        return;
    };
    for entry in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let name = entry.name.as_slice();
        if entry.file_type == FileType::Directory && depth < MAX_DEPTH {
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if let Ok(child) = crate::fs::open_child_path(dir, name) {
                collect(&child, index, depth + 1, owners, budget);
            }
        } else if let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            owners.insert((stat.st_dev, stat.st_ino), index);
        }
    }
}

/// Every (pid, owner index) whose cwd or an open file has one of the identities.
fn scan_proc(proc: &Path, owners: &HashMap<Identity, usize>) -> Result<Vec<(u32, usize)>, String> {
    if !proc.join("self").exists() {
        return Err(format!("{} is not mounted", proc.display()));
    }
    let entries = std::fs::read_dir(proc).map_err(|e| {
        format!(
            "cannot list {}: {}",
            proc.display(),
            crate::report::io_error_words(&e)
        )
    })?;
    let me = std::process::id();
    // Without root most processes cannot be inspected: then nothing can be told. Root is refused
    // only the processes of an enclosing sandbox or container (another PID namespace's init),
    // which cannot see this system's VM directories by their mount either way: they are skipped.
    let root = rustix::process::geteuid().is_root();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let identity = |path: &Path| cached_identity(path);
        let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
        let mut seen = Vec::new();
        match identity(&base.join("cwd")) {
            Ok(id) => seen.push(id),
            Err(e) if denied(&e) && !root => return Err(no_access(pid)),
            Err(e) if denied(&e) => {
                log::debug!("process {pid} cannot be inspected even by root; skipped");
                continue;
            }
            Err(_) => {}
        }
        match std::fs::read_dir(base.join("fd")) {
            Ok(fds) => seen.extend(fds.flatten().filter_map(|fd| identity(&fd.path()).ok())),
            Err(e) if denied(&e) && !root => return Err(no_access(pid)),
            Err(_) => {}
        }
        if let Some(index) = seen.iter().find_map(|id| owners.get(id)) {
            found.push((pid, *index));
        }
    }
    Ok(found)
}

/// The device and inode that `path` leads to, from the kernel's cache: a process whose working
/// directory or open file is on a hung NFS or FUSE mount would otherwise hang the scan, and a
/// request that its server has read cannot even be killed.
fn cached_identity(path: &Path) -> std::io::Result<Identity> {
    use rustix::fs::{CWD, StatxFlags, makedev, statx};
    let stx = statx(
        CWD,
        path,
        AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE | StatxFlags::INO,
    )
    .map_err(std::io::Error::from)?;
    Ok((makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino))
}

fn no_access(pid: u32) -> String {
    format!("process {pid} cannot be inspected (permission denied; run as root)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unit_in_the_cgroup() {
        assert_eq!(
            cgroup_unit("0::/system.slice/system-microvm.slice/microvm@old.service\n").as_deref(),
            Some("microvm@old.service")
        );
        assert_eq!(
            cgroup_unit("0::/user.slice/user-0.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(cgroup_unit("0::/\n"), None);
        assert_eq!(cgroup_unit("1:name=systemd:/x.service\n"), None);
    }
}
