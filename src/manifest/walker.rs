//! The tree walker: validates a manifest from its JSON tree and reports every problem at once,
//! naming the entry and its origin. serde stops at the first error and cannot name the entry.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    Attrs, Entry, Kind, Location, Manifest, Owner, Storage, VERSION, contains, normalise,
    sort_entries, valid_name,
};
use crate::mode;

/// Where an entry stands, for messages: `storages[0].directories[3] "/var/lib/x" (from opt)`.
#[derive(Clone, Copy)]
struct Here<'a> {
    location: Location,
    path: Option<&'a str>,
    origin: Option<&'a str>,
    suffix: &'a str,
}

impl std::fmt::Display for Here<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(path) = self.path {
            write!(f, " {path:?}")?;
        }
        if let Some(origin) = self.origin {
            write!(f, " (from {origin})")?;
        }
        f.write_str(self.suffix)
    }
}

#[derive(Default)]
pub(super) struct Validator {
    pub(super) errors: Vec<String>,
}

impl Validator {
    fn error(
        &mut self,
        location: impl std::fmt::Display + Copy,
        what: &str,
        message: impl std::fmt::Display,
    ) {
        self.errors.push(format!("{location}{what}: {message}"));
    }

    fn object<'a>(
        &mut self,
        value: &'a Value,
        location: impl std::fmt::Display + Copy,
    ) -> Option<&'a Map<String, Value>> {
        let object = value.as_object();
        if object.is_none() {
            self.error(
                location,
                "",
                format!("expected a JSON object, found {}", kind_of(value)),
            );
        }
        object
    }

    fn known_keys(
        &mut self,
        object: &Map<String, Value>,
        location: impl std::fmt::Display + Copy,
        allowed: &[&str],
    ) {
        for key in object.keys() {
            if !allowed.contains(&key.as_str()) {
                self.error(
                    location,
                    "",
                    format!(
                        "unknown key {key:?} (known: {}); fix: remove it or correct its spelling",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn string<'a>(
        &mut self,
        object: &'a Map<String, Value>,
        key: &str,
        location: impl std::fmt::Display + Copy,
    ) -> Option<&'a str> {
        match object.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.error(
                    location,
                    &format!(".{key}"),
                    format!("expected a string, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    pub(super) fn manifest(&mut self, value: &Value) -> Manifest {
        let mut manifest = Manifest {
            storages: Vec::new(),
        };
        let Some(top) = self.object(value, "manifest") else {
            return manifest;
        };
        self.known_keys(top, "manifest", &["version", "storages"]);
        match top.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
            Some(other) => self.error(
                "manifest",
                ".version",
                format!("version {other} is not supported (this persist-prep reads version {VERSION}); fix: use a persist-prep that matches the NixOS module that wrote the manifest"),
            ),
            None => self.error("manifest", ".version", "missing; fix: add \"version\": 1"),
        }
        match top.get("storages") {
            Some(Value::Array(storages)) => {
                for (i, storage) in storages.iter().enumerate() {
                    if let Some(storage) = self.storage(storage, i) {
                        manifest.storages.push(storage);
                    }
                }
            }
            Some(other) => self.error(
                "manifest",
                ".storages",
                format!("expected an array, found {}", kind_of(other)),
            ),
            None => self.error(
                "manifest",
                ".storages",
                "missing; fix: add \"storages\": []",
            ),
        }
        manifest
    }

    fn storage(&mut self, value: &Value, index: usize) -> Option<Storage> {
        let location = format!("storages[{index}]");
        let location = location.as_str();
        let object = self.object(value, location)?;
        self.known_keys(
            object,
            location,
            &["path", "mountPoint", "directories", "files"],
        );
        let raw_path = self.string(object, "path", location);
        let path = self.path(object, raw_path, location, "a storage");
        let mount_point = match self.string(object, "mountPoint", location).map(normalise) {
            Some(Ok(mp)) => {
                if let Some(path) = &path {
                    if !contains(&mp, path) {
                        self.error(
                            location,
                            ".mountPoint",
                            format!("{mp} is neither the storage path {path} nor an ancestor of it; fix: name the file system that holds the storage"),
                        );
                    }
                }
                Some(mp)
            }
            Some(Err(why)) => {
                self.error(location, ".mountPoint", why);
                None
            }
            None => None,
        };
        let location_with_path = match &path {
            Some(p) => format!("{location} ({p})"),
            None => location.to_owned(),
        };
        // Sized up front: growing a vector of large entries copies it each time.
        let count = ["directories", "files"]
            .iter()
            .filter_map(|k| object.get(*k).and_then(Value::as_array).map(Vec::len))
            .sum();
        let mut entries = Vec::with_capacity(count);
        for (key, kind) in [("directories", Kind::Directory), ("files", Kind::File)] {
            match object.get(key) {
                None => {}
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(entry) = self.entry(
                            item,
                            Location {
                                storage: index,
                                kind,
                                index: i,
                            },
                        ) {
                            entries.push(entry);
                        }
                    }
                }
                Some(other) => self.error(
                    &location_with_path,
                    &format!(".{key}"),
                    format!("expected an array, found {}", kind_of(other)),
                ),
            }
        }
        let path = path?;
        // Ancestors first; a stable sort keeps the manifest's order among equals.
        sort_entries(&mut entries);
        Some(Storage {
            path,
            mount_point,
            entries,
        })
    }

    fn entry(&mut self, value: &Value, location: Location) -> Option<Entry> {
        let kind = location.kind;
        let object = self.object(value, location)?;
        let raw_path = self.string(object, "path", location);
        let origin = self.string(object, "origin", location).map(str::to_owned);
        // Names the entry in every message, with its origin; formatted only for a message.
        let here = Here {
            location,
            path: raw_path,
            origin: origin.as_deref(),
            suffix: "",
        };
        match kind {
            Kind::Directory => self.known_keys(
                object,
                here,
                &[
                    "path", "user", "group", "uid", "gid", "mode", "parent", "origin",
                ],
            ),
            Kind::File => self.known_keys(object, here, &["path", "parent", "origin"]),
        }
        let path = self.path(object, raw_path, here, "an entry");
        let attrs = match kind {
            Kind::Directory => self.attrs(object, here, false),
            Kind::File => None,
        };
        let parent = match object.get("parent") {
            None => Some(Attrs::root_0755()),
            Some(value) => {
                let parent_here = Here {
                    suffix: ".parent",
                    ..here
                };
                self.object(value, parent_here).and_then(|p| {
                    self.known_keys(p, parent_here, &["user", "group", "uid", "gid", "mode"]);
                    self.attrs(p, parent_here, true)
                })
            }
        };
        if kind == Kind::Directory && attrs.is_none() {
            return None;
        }
        Some(Entry {
            kind,
            path: path?,
            attrs,
            parent: parent?,
            origin,
            location,
        })
    }

    /// A normalised absolute path other than `/`, or the reason it is not one.
    fn path(
        &mut self,
        object: &Map<String, Value>,
        raw: Option<&str>,
        here: impl std::fmt::Display + Copy,
        what: &str,
    ) -> Option<String> {
        match raw.map(normalise) {
            Some(Ok(p)) if p == "/" => {
                self.error(here, ".path", format!("{what} cannot be / itself"));
                None
            }
            Some(Ok(p)) => Some(p),
            Some(Err(why)) => {
                self.error(here, ".path", why);
                None
            }
            None => {
                if !object.contains_key("path") {
                    self.error(here, ".path", "missing");
                }
                None
            }
        }
    }

    /// Owner and mode; `defaults` fills missing fields with root root 0755 (for `parent`).
    fn attrs(
        &mut self,
        object: &Map<String, Value>,
        here: impl std::fmt::Display + Copy,
        defaults: bool,
    ) -> Option<Attrs> {
        let user = self.owner(object, "user", "uid", here, defaults);
        let group = self.owner(object, "group", "gid", here, defaults);
        let mode = match self.string(object, "mode", here) {
            Some(text) => {
                match mode::parse(text) {
                    Ok(mode) => Some(mode),
                    Err(e) => {
                        self.error(here, ".mode", format!("{e}; fix: use octal like \"0750\" or symbolic like \"u=rwx,g=rx,o=\""));
                        None
                    }
                }
            }
            None if defaults && !object.contains_key("mode") => Some(0o755),
            None => {
                if !object.contains_key("mode") {
                    self.error(here, ".mode", "missing");
                }
                None
            }
        };
        Some(Attrs {
            user: user?,
            group: group?,
            mode: mode?,
        })
    }

    fn owner(
        &mut self,
        object: &Map<String, Value>,
        name_key: &str,
        id_key: &str,
        here: impl std::fmt::Display + Copy,
        defaults: bool,
    ) -> Option<Owner> {
        let id = match object.get(id_key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(id) if id != u32::MAX => Some(id),
                _ => {
                    self.error(
                        here,
                        &format!(".{id_key}"),
                        format!("{n} is not a valid id (0 to 4294967294)"),
                    );
                    return None;
                }
            },
            Some(other) => {
                self.error(
                    here,
                    &format!(".{id_key}"),
                    format!("expected a number, found {}", kind_of(other)),
                );
                return None;
            }
        };
        let name = match self.string(object, name_key, here) {
            Some(name) if valid_name(name) => name.to_owned(),
            Some(name) => {
                let why = if super::numeric_out_of_range(name) {
                    format!(
                        "{name:?} is taken as a numeric id, and it is not one from 0 to 4294967294 (4294967295 is (uid_t)-1, which chown reads as \"leave unchanged\"); fix: use a real id or a name"
                    )
                } else {
                    format!("{name:?} is not a valid {name_key} name")
                };
                self.error(here, &format!(".{name_key}"), why);
                return None;
            }
            None if object.contains_key(name_key) => return None,
            None if defaults && id.is_none() => return Some(Owner::root()),
            None => {
                if let Some(id) = id {
                    id.to_string()
                } else {
                    self.error(here, &format!(".{name_key}"), "missing");
                    return None;
                }
            }
        };
        // root is 0 everywhere; saying so keeps `"user": "root"` equal to the default.
        let id = id.or_else(|| (name == "root").then_some(0));
        Some(Owner { name, id })
    }

    /// Checks that need the whole manifest: duplicates and entries clashing with storages.
    pub(super) fn cross_check(&mut self, manifest: &Manifest) {
        let mut seen_storages: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen: BTreeMap<&str, (&Storage, &Entry)> = BTreeMap::new();
        for (i, storage) in manifest.storages.iter().enumerate() {
            if let Some(first) = seen_storages.insert(&storage.path, i) {
                self.error(
                    &format!("storages[{i}] ({})", storage.path),
                    "",
                    format!(
                        "the storage is declared twice (also storages[{first}]); fix: merge them"
                    ),
                );
            }
        }
        for storage in &manifest.storages {
            for entry in &storage.entries {
                for other in &manifest.storages {
                    if contains(&entry.path, &other.path) || contains(&other.path, &entry.path) {
                        self.error(
                            entry.location,
                            "",
                            format!(
                                "{} overlaps the storage {}: a bind mount there would hide or loop into persistent data; fix: remove the entry or move the storage",
                                entry.describe(),
                                other.path
                            ),
                        );
                    }
                }
                match seen.get(entry.path.as_str()) {
                    None => {
                        seen.insert(&entry.path, (storage, entry));
                    }
                    Some((first_storage, first)) => {
                        // The same declaration in two storages is fine: impermanence makes a
                        // user's home in every storage that holds entries of that user.
                        let same = first.kind == entry.kind
                            && first.attrs == entry.attrs
                            && first.parent == entry.parent;
                        if !same {
                            let why = if first_storage.path == storage.path {
                                "with different attributes".to_owned()
                            } else {
                                format!(
                                    "with different attributes in two storages, {} and {}",
                                    first_storage.path, storage.path
                                )
                            };
                            self.error(
                                entry.location,
                                "",
                                format!(
                                    "{} is declared twice {why} (first at {}); fix: keep one declaration",
                                    entry.describe(),
                                    first.describe()
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
