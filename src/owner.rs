//! Turning user and group names into ids, without NSS, from the files of the system being booted.
//!
//! In the initrd the names belong to the real root, not to the initrd, so they are read from
//! `<root>/etc/passwd` and `group`, and from the maps NixOS keeps so that ids stay stable
//! (`/var/lib/nixos/uid-map`, `gid-map`), on the root or in a persistent storage, where
//! impermanence users keep them. The files are read only when a name needs them.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, fstat, openat2};
use rustix::io::Errno;

use crate::fs;
use crate::manifest::Owner;

/// Which database a name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    User,
    Group,
}

impl Db {
    fn files(self) -> (&'static str, &'static str) {
        match self {
            Db::User => ("etc/passwd", "var/lib/nixos/uid-map"),
            Db::Group => ("etc/group", "var/lib/nixos/gid-map"),
        }
    }
}

/// `(uid_t)-1`: `fchown` reads it as "leave unchanged", so it is never anyone's id. A source
/// that gives it to a name is ignored for that name, and the mark stays in the table so that a
/// later source cannot give the name another id: the name does not resolve.
const NO_ID: u32 = u32::MAX;

/// Name-to-id tables, loaded on first use.
pub struct Resolver<'a> {
    root: BorrowedFd<'a>,
    /// Storage paths whose `var/lib/nixos` maps may hold names (only mounted storages).
    storages: Vec<String>,
    users: Option<HashMap<String, u32>>,
    groups: Option<HashMap<String, u32>>,
}

impl<'a> Resolver<'a> {
    pub fn new(root: BorrowedFd<'a>) -> Self {
        Resolver {
            root,
            storages: Vec::new(),
            users: None,
            groups: None,
        }
    }

    /// Adds a storage to search; tables already loaded are reloaded on next use.
    pub fn add_storage(&mut self, path: &str) {
        if !self.storages.iter().any(|s| s == path) {
            self.storages.push(path.to_owned());
            self.users = None;
            self.groups = None;
        }
    }

    /// The id for an owner: the manifest's number, a numeric name, or a name found in the files.
    pub fn resolve(&mut self, owner: &Owner, db: Db) -> Option<u32> {
        if let Some(id) = owner.id {
            return Some(id);
        }
        if let Ok(id) = owner.name.parse::<u32>() {
            // The manifest refuses (uid_t)-1 as a name; this keeps the rule local too.
            return (id != NO_ID).then_some(id);
        }
        let table = match db {
            Db::User => &mut self.users,
            Db::Group => &mut self.groups,
        };
        if table.is_none() {
            *table = Some(load(self.root, &self.storages, db));
        }
        let found = table
            .as_ref()
            .and_then(|t| t.get(&*owner.name).copied())
            .filter(|&id| id != NO_ID);
        // root is uid and gid 0 on every Linux system, even before /etc/passwd exists.
        found.or_else(|| (&*owner.name == "root").then_some(0))
    }
}

/// Reads every source; earlier sources win: passwd/group, then the root's map, then storages'.
fn load(root: BorrowedFd<'_>, storages: &[String], db: Db) -> HashMap<String, u32> {
    let (db_file, map_file) = db.files();
    let mut table = HashMap::new();
    let source = format!("/{db_file} on the root");
    if let Ok(data) = fs::read_in_root(root, db_file) {
        parse_colon_file(&String::from_utf8_lossy(&data), &mut table, &source);
    }
    let source = format!("/{map_file} on the root");
    if let Ok(data) = fs::read_in_root(root, map_file) {
        parse_id_map(&data, &mut table, &source);
    }
    for storage in storages {
        // The map inside a storage is read with the same no-symlink rule as everything below it.
        let Ok(dir) = fs::open_in_root(root, storage) else {
            continue;
        };
        let (parent, name) = map_file.rsplit_once('/').unwrap_or(("", map_file));
        let Ok(nixos) = fs::open_beneath(dir.as_fd(), parent) else {
            continue;
        };
        let source = format!("{}/{map_file}", crate::escape::text(storage));
        if let Ok(data) = read_child(nixos.as_fd(), name, &source) {
            parse_id_map(&data, &mut table, &source);
        }
    }
    log::debug!(
        "loaded {} {} names",
        table.len(),
        if db == Db::User { "user" } else { "group" }
    );
    table
}

/// Reads one file below a storage, refusing every symlink. Opened non-blocking and checked
/// before reading, so that a FIFO planted there cannot hang the boot.
fn read_child(dir: BorrowedFd<'_>, name: &str, source: &str) -> Result<Vec<u8>, Errno> {
    let fd = openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )?;
    if FileType::from_raw_mode(fstat(&fd)?.st_mode) != FileType::RegularFile {
        log::warn!(
            "ignoring {source}: it is not a regular file, so names are not looked up there; fix: replace it with the file NixOS writes"
        );
        return Err(Errno::INVAL);
    }
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut data)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    Ok(data)
}

/// `name:x:id:...` lines of passwd(5) and group(5); the first line for a name wins.
fn parse_colon_file(text: &str, table: &mut HashMap<String, u32>, source: &str) {
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Ok(id) = id.parse::<u32>() {
            if id == NO_ID {
                warn_no_id(name, source);
            }
            table.entry(name.to_owned()).or_insert(id);
        }
    }
}

fn warn_no_id(name: &str, source: &str) {
    log::warn!(
        "ignoring the id of {} in {source}: 4294967295 is (uid_t)-1, which chown reads as \"leave unchanged\", so {} does not resolve; fix: give it a real id in the NixOS configuration (users.users.<name>.uid or users.groups.<name>.gid) and rebuild, or correct {source}",
        crate::escape::text(name),
        crate::escape::text(name)
    );
}

/// NixOS's `{"name": id, ...}` maps; a malformed map is ignored rather than trusted.
fn parse_id_map(data: &[u8], table: &mut HashMap<String, u32>, source: &str) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) else {
        log::warn!(
            "ignoring the NixOS id map {source}: it is not a JSON object of name -> id, so names are not looked up there. Fix: restore it from a backup, or remove it and let NixOS activation write it anew"
        );
        return;
    };
    for (name, id) in map {
        if let Some(id) = id.as_u64().and_then(|id| u32::try_from(id).ok()) {
            if id == NO_ID {
                warn_no_id(&name, source);
            }
            table.entry(name).or_insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let mut t = HashMap::new();
        parse_colon_file(
            "root:x:0:0::/root:/bin/sh\n# comment\nbroken\nalice:x:1000:100::/home/alice:/bin/sh\nalice:x:5:5::/:/\nbad:x:nope:1\n",
            &mut t,
            "test",
        );
        assert_eq!(t.get("root"), Some(&0));
        assert_eq!(t.get("alice"), Some(&1000));
        assert_eq!(t.get("bad"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn id_maps() {
        let mut t = HashMap::from([("alice".to_owned(), 1000)]);
        parse_id_map(br#"{"alice": 7, "colord": 997, "neg": -1}"#, &mut t, "test");
        assert_eq!(t.get("alice"), Some(&1000));
        assert_eq!(t.get("colord"), Some(&997));
        assert_eq!(t.get("neg"), None);
        parse_id_map(b"[1,2]", &mut t, "test");
        assert_eq!(t.len(), 2);
    }

    /// (uid_t)-1 from passwd, group or a map never resolves, and a later source cannot give the
    /// name another id either.
    #[test]
    fn minus_one_never_resolves() {
        let dir = std::fs::File::open("/").unwrap();
        let mut r = Resolver::new(dir.as_fd());
        let mut users = HashMap::new();
        parse_colon_file("nobody2:x:4294967295:1::/:/\n", &mut users, "test");
        parse_id_map(br#"{"nobody2": 5, "m": 4294967295}"#, &mut users, "test");
        r.users = Some(users);
        for name in ["nobody2", "m", "4294967295"] {
            let owner = Owner {
                name: name.into(),
                id: None,
            };
            assert_eq!(r.resolve(&owner, Db::User), None, "{name}");
        }
        let numeric = Owner {
            name: "4294967294".into(),
            id: None,
        };
        assert_eq!(r.resolve(&numeric, Db::User), Some(4_294_967_294));
    }
}
