//! The typed fast path: exactly the version-1 schema, with borrowed strings. It only accepts or
//! declines; the tree walker explains what is wrong.

use std::borrow::Cow;

use serde::Deserialize;

use super::{
    Attrs, Entry, Kind, Location, Manifest, Owner, Storage, VERSION, contains, normalise,
    valid_name,
};
use crate::mode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw<'a> {
    version: u64,
    #[serde(borrow)]
    storages: Vec<RawStorage<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawStorage<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    mount_point: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    directories: Vec<RawEntry<'a>>,
    #[serde(borrow, default)]
    files: Vec<RawFile<'a>>,
}

/// A directory entry. Its owner and mode fields repeat `RawAttrs` because serde cannot flatten
/// a struct into one that denies unknown fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    group: Option<Cow<'a, str>>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
    #[serde(borrow)]
    parent: Option<RawAttrs<'a>>,
    #[serde(borrow)]
    origin: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    parent: Option<RawAttrs<'a>>,
    #[serde(borrow)]
    origin: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttrs<'a> {
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    group: Option<Cow<'a, str>>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
}

fn owner(name: Option<&Cow<'_, str>>, id: Option<u32>, default_root: bool) -> Option<Owner> {
    if id == Some(u32::MAX) {
        return None;
    }
    let name = match name {
        Some(name) if valid_name(name) => name.to_string(),
        Some(_) => return None,
        None => match id {
            Some(id) => id.to_string(),
            None if default_root => return Some(Owner::root()),
            None => return None,
        },
    };
    let id = id.or_else(|| (name == "root").then_some(0));
    Some(Owner { name, id })
}

fn attrs(raw: &RawAttrs<'_>, default_root: bool) -> Option<Attrs> {
    let mode = match &raw.mode {
        Some(text) => mode::parse(text).ok()?,
        None if default_root => 0o755,
        None => return None,
    };
    Some(Attrs {
        user: owner(raw.user.as_ref(), raw.uid, default_root)?,
        group: owner(raw.group.as_ref(), raw.gid, default_root)?,
        mode,
    })
}

fn entry_path(path: &str) -> Option<String> {
    normalise(path).ok().filter(|p| p != "/")
}

/// A manifest, or `None` if anything at all is wrong.
pub fn convert(raw: Raw<'_>) -> Option<Manifest> {
    if raw.version != VERSION {
        return None;
    }
    let mut storages = Vec::with_capacity(raw.storages.len());
    for (i, s) in raw.storages.into_iter().enumerate() {
        let path = entry_path(&s.path)?;
        let mount_point = match &s.mount_point {
            Some(mp) => Some(normalise(mp).ok().filter(|mp| contains(mp, &path))?),
            None => None,
        };
        let mut entries = Vec::with_capacity(s.directories.len() + s.files.len());
        for (j, d) in s.directories.iter().enumerate() {
            entries.push(Entry {
                kind: Kind::Directory,
                path: entry_path(&d.path)?,
                attrs: Some(attrs(
                    &RawAttrs {
                        user: d.user.clone(),
                        group: d.group.clone(),
                        uid: d.uid,
                        gid: d.gid,
                        mode: d.mode.clone(),
                    },
                    false,
                )?),
                parent: match &d.parent {
                    Some(p) => attrs(p, true)?,
                    None => Attrs::root_0755(),
                },
                origin: d.origin.as_ref().map(ToString::to_string),
                location: Location {
                    storage: i,
                    kind: Kind::Directory,
                    index: j,
                },
            });
        }
        for (j, f) in s.files.iter().enumerate() {
            entries.push(Entry {
                kind: Kind::File,
                path: entry_path(&f.path)?,
                attrs: None,
                parent: match &f.parent {
                    Some(p) => attrs(p, true)?,
                    None => Attrs::root_0755(),
                },
                origin: f.origin.as_ref().map(ToString::to_string),
                location: Location {
                    storage: i,
                    kind: Kind::File,
                    index: j,
                },
            });
        }
        super::sort_entries(&mut entries);
        storages.push(Storage {
            path,
            mount_point,
            entries,
        });
    }
    Some(Manifest { storages })
}
