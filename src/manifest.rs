//! The manifest: the contract between the NixOS module, which writes it at build time, and us.
//!
//! The whole file is validated before anything is touched, and every problem is reported at
//! once, so that one rebuild fixes them all. Validation works on the JSON tree rather than on
//! derived structs because serde stops at the first error and cannot name the entry.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use crate::Options;
use crate::exit::Exit;
use crate::mode;

/// The only manifest version this binary understands.
pub const VERSION: u64 = 1;

/// A validated manifest.
#[derive(Debug, PartialEq, Eq)]
pub struct Manifest {
    pub storages: Vec<Storage>,
}

/// One persistent storage and what must exist under it.
#[derive(Debug, PartialEq, Eq)]
pub struct Storage {
    /// Absolute storage path on the real root, normalised (`/nix/persist`).
    pub path: String,
    /// The mount that must be mounted before anything under the storage is created.
    pub mount_point: Option<String>,
    /// Directory and file entries, sorted so that every ancestor comes before its descendants.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::File => "file",
        }
    }
}

/// One declared directory or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Absolute path as seen on the running system, normalised.
    pub path: String,
    /// The directory's own attributes; `None` for files, which are never created.
    pub attrs: Option<Attrs>,
    /// Attributes of missing ancestors.
    pub parent: Attrs,
    /// The NixOS option this entry came from, if the manifest says.
    pub origin: Option<String>,
    /// Where in the manifest it stands, e.g. `storages[0].directories[3]`.
    pub location: Location,
}

impl Entry {
    /// How messages name the entry: its path and where it came from. Formatted only when a
    /// message is actually written.
    pub fn describe(&self) -> Described<'_> {
        Described(self)
    }
}

pub struct Described<'a>(&'a Entry);

impl std::fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        match &e.origin {
            Some(origin) => write!(f, "{} {} (from {origin})", e.kind.as_str(), e.path),
            None => write!(f, "{} {} ({})", e.kind.as_str(), e.path, e.location),
        }
    }
}

/// An entry's place in the manifest, formatted only for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub storage: usize,
    pub kind: Kind,
    pub index: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = match self.kind {
            Kind::Directory => "directories",
            Kind::File => "files",
        };
        write!(f, "storages[{}].{list}[{}]", self.storage, self.index)
    }
}

/// Owner and mode of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    pub user: Owner,
    pub group: Owner,
    pub mode: u32,
}

impl Attrs {
    pub fn root_0755() -> Self {
        Attrs {
            user: Owner::root(),
            group: Owner::root(),
            mode: 0o755,
        }
    }
}

impl std::fmt::Display for Attrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} {}",
            self.user.name,
            self.group.name,
            mode::display(self.mode)
        )
    }
}

/// A user or group: its name, and the numeric id when the manifest gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub id: Option<u32>,
}

impl Owner {
    pub fn root() -> Self {
        Owner {
            name: "root".into(),
            id: Some(0),
        }
    }
}

/// Reads and validates a manifest file; the error lists every problem, one per line.
pub fn load(path: &Path) -> Result<Manifest, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "cannot read manifest {}: {}; fix: check the path given with --manifest (default /etc/persist-prep/manifest.json) and that the initrd contains it",
            path.display(),
            crate::report::io_error_words(&e)
        )]
    })?;
    parse(&text)
}

/// Parses and validates manifest text.
pub fn parse(text: &str) -> Result<Manifest, Vec<String>> {
    // Manifests written by the module are well formed: read those straight into typed values,
    // which is several times faster than a JSON tree. Anything odd takes the slow path, which
    // walks the tree to report every problem at once.
    let mut v = Validator::default();
    let fast = serde_json::from_str::<fast::Raw<'_>>(text)
        .ok()
        .and_then(fast::convert);
    let mut manifest = if let Some(manifest) = fast {
        manifest
    } else {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            vec![format!(
                "the manifest is not valid JSON: {e}; fix: regenerate it (the NixOS module writes it with builtins.toJSON)"
            )]
        })?;
        v.manifest(&value)
    };
    v.cross_check(&manifest);
    if v.errors.is_empty() {
        dedup(&mut manifest);
        Ok(manifest)
    } else {
        Err(v.errors)
    }
}

/// The typed fast path: exactly the version-1 schema, with borrowed strings. It only accepts or
/// declines; the tree walker explains what is wrong.
mod fast {
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
}

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
struct Validator {
    errors: Vec<String>,
}

/// A path split into its components, or why it is not acceptable.
fn normalise(path: &str) -> Result<String, &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if !path.starts_with('/') {
        return Err("the path is relative; it must be absolute (start with /)");
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte");
    }
    let mut out = String::with_capacity(path.len());
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == ".." {
            return Err("the path has a `..` component, which could lead outside the storage");
        }
        if component == "." {
            return Err("the path has a `.` component; write it without");
        }
        out.push('/');
        out.push_str(component);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Ancestors first: sorting by a key with `/` as the lowest byte orders by component, so that
/// `/a/b` comes before `/a-b`; the sort is stable among equal paths.
fn sort_entries(entries: &mut [Entry]) {
    entries.sort_by_cached_key(|e| e.path.replace('/', "\0"));
}

/// True when `ancestor` is `path` or one of its ancestors (both normalised).
pub fn contains(ancestor: &str, path: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// A user or group name as NixOS accepts it: no separators, no white space.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c == ':' || c == '/' || c == ',' || c.is_whitespace() || c.is_control())
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

    fn manifest(&mut self, value: &Value) -> Manifest {
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
                self.error(
                    here,
                    &format!(".{name_key}"),
                    format!("{name:?} is not a valid {name_key} name"),
                );
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
    fn cross_check(&mut self, manifest: &Manifest) {
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

/// Drops identical duplicate entries, which the validator accepted.
fn dedup(manifest: &mut Manifest) {
    for storage in &mut manifest.storages {
        storage
            .entries
            .dedup_by(|b, a| a.path == b.path && a.kind == b.kind);
    }
}

/// `persist-prep validate`: read and validate only.
pub fn validate_command(options: &Options) -> Exit {
    match load(&options.manifest) {
        Ok(manifest) => {
            let entries: usize = manifest.storages.iter().map(|s| s.entries.len()).sum();
            if options.json {
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "storages": manifest.storages.len(), "entries": entries, "errors": []})
                );
            }
            log::info!(
                "manifest {} is valid: {} storages, {entries} entries",
                options.manifest.display(),
                manifest.storages.len()
            );
            Exit::Ok
        }
        Err(errors) => {
            report_invalid(options, &errors);
            if options.json {
                println!("{}", serde_json::json!({"valid": false, "errors": errors}));
            }
            Exit::InvalidManifest
        }
    }
}

/// Logs every validation error and the verdict.
pub fn report_invalid(options: &Options, errors: &[String]) {
    for error in errors {
        log::error!("invalid manifest {}: {error}", options.manifest.display());
    }
    log::error!(
        "manifest {} has {} problem(s); nothing was touched",
        options.manifest.display(),
        errors.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Manifest {
        parse(text).unwrap_or_else(|e| panic!("expected valid, got {e:#?}"))
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).expect_err("expected invalid")
    }

    fn one_dir(dir: &str) -> String {
        format!(r#"{{"version":1,"storages":[{{"path":"/persist","directories":[{dir}]}}]}}"#)
    }

    #[test]
    fn example_is_valid() {
        let m = ok(include_str!("../examples/manifest.json"));
        assert_eq!(m.storages.len(), 1);
        assert_eq!(m.storages[0].mount_point.as_deref(), Some("/nix"));
        let colord = m.storages[0]
            .entries
            .iter()
            .find(|e| e.path == "/var/lib/colord")
            .unwrap();
        let attrs = colord.attrs.as_ref().unwrap();
        assert_eq!(attrs.mode, 0o750);
        assert_eq!(attrs.user.id, Some(997));
        assert_eq!(colord.parent, Attrs::root_0755());
    }

    #[test]
    fn entries_are_sorted_ancestors_first() {
        let m = ok(&one_dir(
            r#"{"path":"/a/b/c","user":"root","group":"root","mode":"0700"},
               {"path":"/a","user":"root","group":"root","mode":"0711"},
               {"path":"/a-b","user":"root","group":"root","mode":"0711"},
               {"path":"/a/b","user":"root","group":"root","mode":"0750"}"#,
        ));
        let paths: Vec<_> = m.storages[0]
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(paths, ["/a", "/a/b", "/a/b/c", "/a-b"]);
    }

    #[test]
    fn paths_are_normalised() {
        let m = ok(&one_dir(
            r#"{"path":"//var//log/","user":"root","group":"root","mode":"0755"}"#,
        ));
        assert_eq!(m.storages[0].entries[0].path, "/var/log");
    }

    #[test]
    fn rejects_bad_version() {
        let e = errors(r#"{"version":2,"storages":[]}"#);
        assert!(e[0].contains("version 2 is not supported"), "{e:?}");
        assert!(!errors(r#"{"storages":[]}"#).is_empty());
        assert!(!errors(r#"{"version":"1","storages":[]}"#).is_empty());
    }

    #[test]
    fn rejects_bad_paths() {
        for (path, why) in [
            ("var/log", "relative"),
            ("/var/../etc", ".."),
            ("", "empty"),
            ("/", "cannot be /"),
            ("/var/./log", "`.`"),
        ] {
            let e = errors(&one_dir(&format!(
                r#"{{"path":"{path}","user":"root","group":"root","mode":"0755"}}"#
            )));
            assert!(e.iter().any(|m| m.contains(why)), "{path}: {e:?}");
            assert!(e[0].starts_with("storages[0].directories[0]"), "{e:?}");
        }
        let e = errors(r#"{"version":1,"storages":[{"path":"persist"}]}"#);
        assert!(e[0].contains("storages[0].path"), "{e:?}");
    }

    #[test]
    fn rejects_bad_modes_and_owners() {
        let e = errors(&one_dir(
            r#"{"path":"/a","user":"root","group":"root","mode":"0999","origin":"opt.a"},
               {"path":"/b","user":"ro ot","group":"root","mode":"0755"},
               {"path":"/c","user":"root","group":"root","mode":"u=rwz"},
               {"path":"/d","user":"root","group":"root","uid":-1,"mode":"0755"},
               {"path":"/e","user":"root","group":"root"}"#,
        ));
        assert_eq!(e.len(), 5, "{e:#?}");
        assert!(e[0].contains("\"/a\" (from opt.a).mode"), "{e:?}");
        assert!(e[1].contains(".user"), "{e:?}");
        assert!(e[2].contains(".mode"), "{e:?}");
        assert!(e[3].contains(".uid"), "{e:?}");
        assert!(e[4].contains(".mode: missing"), "{e:?}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = errors(
            r#"{"version":1,"bogus":true,"storages":[
                {"path":"rel","directories":[{"path":"x","user":"root","group":"root","mode":"0755"}]},
                {"path":"/p","mountPoint":"/q","files":[{"path":"/f","mode":"0755"}]}]}"#,
        );
        assert!(e.len() >= 5, "{e:#?}");
    }

    #[test]
    fn duplicates() {
        // Identical duplicates are fine (impermanence merges modules); conflicting ones are not.
        ok(&one_dir(
            r#"{"path":"/a","user":"root","group":"root","mode":"0755"},
               {"path":"/a","user":"root","group":"root","mode":"u=rwx,go=rx"}"#,
        ));
        let e = errors(&one_dir(
            r#"{"path":"/a","user":"root","group":"root","mode":"0755"},
               {"path":"/a","user":"root","group":"root","mode":"0700"}"#,
        ));
        assert!(
            e[0].contains("declared twice with different attributes"),
            "{e:?}"
        );
        ok(r#"{"version":1,"storages":[
              {"path":"/p1","directories":[{"path":"/home/a","user":"a","group":"users","mode":"0700"}]},
              {"path":"/p2","directories":[{"path":"/home/a","user":"a","group":"users","mode":"0700"}]}]}"#);
        let e = errors(
            r#"{"version":1,"storages":[
              {"path":"/p1","directories":[{"path":"/a","user":"root","group":"root","mode":"0755"}]},
              {"path":"/p2","directories":[{"path":"/a","user":"root","group":"root","mode":"0700"}]}]}"#,
        );
        assert!(e[0].contains("in two storages"), "{e:?}");
        let e = errors(
            r#"{"version":1,"storages":[{"path":"/p","files":[{"path":"/a"}],
               "directories":[{"path":"/a","user":"root","group":"root","mode":"0755"}]}]}"#,
        );
        assert!(e[0].contains("declared twice"), "{e:?}");
        let e = errors(r#"{"version":1,"storages":[{"path":"/p"},{"path":"/p/"}]}"#);
        assert!(e[0].contains("declared twice"), "{e:?}");
    }

    #[test]
    fn mount_point_must_contain_storage() {
        ok(r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/nix"}]}"#);
        ok(r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/nix/persist"}]}"#);
        ok(r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/"}]}"#);
        let e = errors(r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/ni"}]}"#);
        assert!(e[0].contains("neither the storage path"), "{e:?}");
    }

    #[test]
    fn entries_must_not_overlap_storages() {
        let e = errors(
            r#"{"version":1,"storages":[{"path":"/nix/persist","directories":[
                {"path":"/nix","user":"root","group":"root","mode":"0755"},
                {"path":"/nix/persist/x","user":"root","group":"root","mode":"0755"}]}]}"#,
        );
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn parent_defaults_field_by_field() {
        let m = ok(&one_dir(
            r#"{"path":"/a","user":"u","group":"g","mode":"0700","parent":{"mode":"0711"}}"#,
        ));
        let parent = &m.storages[0].entries[0].parent;
        assert_eq!(parent.mode, 0o711);
        assert_eq!(parent.user, Owner::root());
        assert_eq!(
            m.storages[0].entries[0].attrs.as_ref().unwrap().user.id,
            None
        );
    }

    #[test]
    fn files_take_no_attributes() {
        let e = errors(
            r#"{"version":1,"storages":[{"path":"/p","files":[{"path":"/f","user":"root"}]}]}"#,
        );
        assert!(e[0].contains("unknown key \"user\""), "{e:?}");
    }

    #[test]
    fn not_json() {
        let e = errors("{ nope");
        assert!(e[0].contains("not valid JSON"), "{e:?}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// JSON values shaped like manifests, with the odd wrong type or value mixed in.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                prop::sample::select(vec![
                    "/",
                    "/var/lib/x",
                    "relative",
                    "",
                    "/a/../b",
                    "0755",
                    "u=rwx,g=rx,o=",
                    "root",
                    "a:b",
                    "/nix",
                    "0999",
                ])
                .prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                let keys = prop::sample::select(vec![
                    "version",
                    "storages",
                    "path",
                    "mountPoint",
                    "directories",
                    "files",
                    "user",
                    "group",
                    "uid",
                    "gid",
                    "mode",
                    "parent",
                    "origin",
                    "bogus",
                ]);
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )),
                ]
            })
        }

        fn directory() -> impl Strategy<Value = Value> {
            (
                prop::collection::vec(prop::sample::select(vec!["var", "lib", "a", "b", "home", "x y", "ü"]), 1..4),
                prop::sample::select(vec!["0700", "0755", "2750", "u=rwx,g=rx,o=", "a=rx"]),
                prop::option::of(0u32..70000),
            )
                .prop_map(|(parts, mode, uid)| {
                    serde_json::json!({"path": format!("/{}", parts.join("/")), "user": "u", "group": "g", "uid": uid, "mode": mode})
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

            /// No input makes validation panic; it either accepts or explains.
            #[test]
            fn arbitrary_json_never_panics(value in json()) {
                let text = value.to_string();
                match parse(&text) {
                    Ok(m) => prop_assert!(m.storages.iter().all(|s| s.path.starts_with('/'))),
                    Err(errors) => prop_assert!(!errors.is_empty()),
                }
            }

            /// The typed fast path accepts only what the tree walker accepts, and reads it the same.
            #[test]
            fn fast_path_agrees_with_the_tree_walker(value in json()) {
                let text = value.to_string();
                if let Some(fast) = serde_json::from_str::<fast::Raw<'_>>(&text).ok().and_then(fast::convert) {
                    let mut v = Validator::default();
                    let slow = v.manifest(&value);
                    prop_assert!(v.errors.is_empty(), "fast path accepted {text}, the walker said {:?}", v.errors);
                    prop_assert_eq!(fast, slow);
                }
            }

            /// Bytes that are not even JSON are rejected, never a panic.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,64}") {
                let _ = parse(&text);
            }

            /// Well-formed manifests are accepted, every path normalised and sorted parents first.
            #[test]
            fn generated_manifests_validate(dirs in prop::collection::vec(directory(), 0..12)) {
                // Drop conflicting duplicates: the validator rightly rejects those.
                let mut seen = std::collections::BTreeMap::new();
                for d in dirs {
                    seen.entry(d["path"].as_str().unwrap().to_owned()).or_insert(d);
                }
                let dirs: Vec<Value> = seen.into_values().collect();
                let doc = serde_json::json!({"version": 1, "storages": [{"path": "/persist", "mountPoint": "/", "directories": dirs}]});
                let text = doc.to_string();
                let m = parse(&text).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                // Well-formed manifests take the fast path, and it reads them as the walker does.
                let fast = serde_json::from_str::<fast::Raw<'_>>(&text).ok().and_then(fast::convert);
                let mut v = Validator::default();
                let slow = v.manifest(&doc);
                prop_assert_eq!(fast.as_ref(), Some(&slow));
                let entries = &m.storages[0].entries;
                prop_assert_eq!(entries.len(), dirs.len());
                for pair in entries.windows(2) {
                    prop_assert!(!contains(&pair[1].path, &pair[0].path) || pair[0].path == pair[1].path);
                }
            }
        }
    }
}
