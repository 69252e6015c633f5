//! The semantic pass: from the typed manifest to validated values, with every problem collected
//! at once and each one naming its entry (where it stands, its path, the option it came from).

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::rc::Rc;

use serde_json::Number;

use super::raw::{Fields, Raw, RawAttrs, RawStorage};
use super::{
    Attrs, Entry, Kind, Location, Manifest, Owner, Storage, VERSION, contains, normalise,
    path_order, sort_entries, valid_name,
};
use crate::escape;
use crate::mode;

/// Where a problem stands: `storages[0].directories[3] "/var/lib/x" (from opt)`, then the field.
/// Formatted only when there is a problem to report.
#[derive(Clone, Copy)]
struct Here<'a> {
    location: Location,
    path: &'a str,
    origin: Option<&'a str>,
    suffix: &'a str,
}

impl Display for Here<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} \"{}\"", self.location, escape::text(self.path))?;
        if let Some(origin) = self.origin {
            write!(f, " (from {})", escape::text(origin))?;
        }
        f.write_str(self.suffix)
    }
}

/// A storage's place, for its own fields: `storages[1]`.
#[derive(Clone, Copy)]
struct StorageHere(usize);

impl Display for StorageHere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storages[{}]", self.0)
    }
}

/// Validates the typed manifest; the manifest holds what was valid, the errors everything else.
pub(super) fn check(raw: &Raw<'_>) -> (Manifest, Vec<String>) {
    let mut c = Checker::default();
    c.version(&raw.version);
    let mut storages = Vec::with_capacity(raw.storages.len());
    for (i, storage) in raw.storages.iter().enumerate() {
        if let Some(storage) = c.storage(i, storage) {
            storages.push(storage);
        }
    }
    let manifest = Manifest { storages };
    c.cross_check(&manifest);
    (manifest, c.errors)
}

#[derive(Default)]
struct Checker {
    errors: Vec<String>,
    /// The names met last, shared by the entries that repeat them (most do).
    names: Vec<Rc<str>>,
}

impl Checker {
    fn error(&mut self, here: impl Display, field: &str, message: impl Display) {
        self.errors.push(format!("{here}{field}: {message}"));
    }

    fn version(&mut self, version: &Number) {
        if version.as_u64() != Some(VERSION) {
            self.error(
                "manifest",
                ".version",
                format!("version {version} is not supported (this persist-prep reads version {VERSION}); fix: use a persist-prep that matches the NixOS module that wrote the manifest"),
            );
        }
    }

    fn storage(&mut self, index: usize, raw: &RawStorage<'_>) -> Option<Storage> {
        let here = StorageHere(index);
        let path = self.path(here, &raw.path, "a storage");
        let mount_point = raw
            .mount_point
            .as_deref()
            .and_then(|mp| match normalise(mp) {
                Ok(mp) => Some(mp),
                Err(why) => {
                    self.error(here, ".mountPoint", why);
                    None
                }
            });
        if let (Some(path), Some(mp)) = (&path, &mount_point) {
            if !contains(mp, path) {
                self.error(
                    here,
                    ".mountPoint",
                    format!("{} is neither the storage path {} nor an ancestor of it; fix: name the file system that holds the storage", escape::text(mp), escape::text(path)),
                );
            }
        }
        let mut entries = Vec::with_capacity(raw.directories.len() + raw.files.len());
        for (i, d) in raw.directories.iter().enumerate() {
            let location = Location {
                storage: index,
                kind: Kind::Directory,
                index: i,
            };
            let entry = self.entry(
                location,
                &d.path,
                d.origin.as_deref(),
                Some(d.fields()),
                d.parent.as_deref(),
            );
            entries.extend(entry);
        }
        for (i, f) in raw.files.iter().enumerate() {
            let location = Location {
                storage: index,
                kind: Kind::File,
                index: i,
            };
            let entry = self.entry(
                location,
                &f.path,
                f.origin.as_deref(),
                None,
                f.parent.as_deref(),
            );
            entries.extend(entry);
        }
        // Ancestors first; a stable sort keeps the manifest's order among equals.
        sort_entries(&mut entries);
        Some(Storage {
            path: path?,
            mount_point,
            entries,
        })
    }

    fn entry(
        &mut self,
        location: Location,
        raw_path: &str,
        origin: Option<&str>,
        own: Option<Fields<'_>>,
        parent: Option<&RawAttrs<'_>>,
    ) -> Option<Entry> {
        let here = Here {
            location,
            path: raw_path,
            origin,
            suffix: "",
        };
        let path = self.path(here, raw_path, "an entry");
        let attrs = own.map(|fields| self.attrs(here, fields, false));
        let parent = match parent {
            None => Some(Attrs::root_0755()),
            Some(p) => {
                let here = Here {
                    suffix: ".parent",
                    ..here
                };
                self.attrs(here, p.fields(), true)
            }
        };
        Some(Entry {
            kind: location.kind,
            path: path?,
            attrs: match attrs {
                Some(attrs) => Some(attrs?),
                None => None,
            },
            parent: parent?,
            origin: origin.map(|o| self.shared(o)),
            location,
        })
    }

    /// A normalised absolute path other than `/`, or the reason it is not one.
    fn path(&mut self, here: impl Display, raw: &str, what: &str) -> Option<String> {
        match normalise(raw) {
            Ok(p) if p == "/" => {
                self.error(here, ".path", format!("{what} cannot be / itself"));
                None
            }
            Ok(p) => Some(p),
            Err(why) => {
                self.error(here, ".path", why);
                None
            }
        }
    }

    /// Owner and mode; `defaults` fills missing fields with root root 0755 (for `parent`). Every
    /// field is checked, so that one entry's problems are all reported together.
    fn attrs(&mut self, here: Here<'_>, fields: Fields<'_>, defaults: bool) -> Option<Attrs> {
        let user = self.owner(here, ("user", fields.user), ("uid", fields.uid), defaults);
        let group = self.owner(here, ("group", fields.group), ("gid", fields.gid), defaults);
        let mode = match fields.mode {
            Some(text) => {
                match mode::parse(text) {
                    Ok(mode) => Some(mode),
                    Err(e) => {
                        self.error(here, ".mode", format!("{e}; fix: use octal like \"0750\" or symbolic like \"u=rwx,g=rx,o=\""));
                        None
                    }
                }
            }
            None if defaults => Some(0o755),
            None => {
                self.error(here, ".mode", "missing; fix: give the mode, e.g. \"0755\"");
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
        here: Here<'_>,
        (name_key, name): (&str, Option<&str>),
        (id_key, id): (&str, Option<&Number>),
        defaults: bool,
    ) -> Option<Owner> {
        // Both fields are checked before either problem returns, so both are reported.
        let name_ok = match name {
            Some(name) if !valid_name(name) => {
                self.error(here, &format!(".{name_key}"), bad_name(name, name_key));
                false
            }
            _ => true,
        };
        let id = match id {
            None => None,
            Some(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(id) if id != u32::MAX => Some(id),
                _ => {
                    self.error(here, &format!(".{id_key}"), format!("{n} is not a valid id (0 to 4294967294; 4294967295 is (uid_t)-1, which chown reads as \"leave unchanged\"); fix: use the id from the NixOS configuration"));
                    return None;
                }
            },
        };
        if !name_ok {
            return None;
        }
        let name = match (name, id) {
            (Some(name), _) => self.shared(name),
            (None, None) if defaults => return Some(Owner::root()),
            (None, Some(id)) => self.shared(&id.to_string()),
            (None, None) => {
                self.error(
                    here,
                    &format!(".{name_key}"),
                    format!("missing; fix: give the {name_key} name (and optionally {id_key})"),
                );
                return None;
            }
        };
        // root is 0 everywhere; saying so keeps `"user": "root"` equal to the default.
        let id = id.or_else(|| (&*name == "root").then_some(0));
        Some(Owner { name, id })
    }

    /// One allocation per name (or origin) among the last few met, not one per entry and
    /// field. The
    /// search is bounded, so that a manifest of thousands of names costs no more than before.
    fn shared(&mut self, name: &str) -> Rc<str> {
        const RECENT: usize = 8;
        if let Some(shared) = self.names.iter().rev().find(|n| ***n == *name) {
            return Rc::clone(shared);
        }
        let shared: Rc<str> = Rc::from(name);
        if self.names.len() == RECENT {
            self.names.remove(0);
        }
        self.names.push(Rc::clone(&shared));
        shared
    }

    /// Checks that need the whole manifest: duplicates and entries clashing with storages.
    fn cross_check(&mut self, manifest: &Manifest) {
        let mut seen_storages: HashMap<&str, usize> = HashMap::new();
        for (i, storage) in manifest.storages.iter().enumerate() {
            if let Some(first) = seen_storages.insert(&storage.path, i) {
                self.error(
                    format_args!("storages[{i}] ({})", escape::text(&storage.path)),
                    "",
                    format!(
                        "the storage is declared twice (also storages[{first}]); fix: merge them"
                    ),
                );
            }
        }
        for (s, storage) in manifest.storages.iter().enumerate() {
            for (i, entry) in storage.entries.iter().enumerate() {
                self.overlaps(manifest, entry);
                if let Some(first) = first_declared(manifest, s, i) {
                    self.duplicate(first, (storage, entry));
                }
            }
        }
    }

    /// An entry at, above or below a storage would hide it or loop into it.
    fn overlaps(&mut self, manifest: &Manifest, entry: &Entry) {
        for other in &manifest.storages {
            if contains(&entry.path, &other.path) || contains(&other.path, &entry.path) {
                self.error(
                    entry.location,
                    "",
                    format!(
                        "{} overlaps the storage {}: a bind mount there would hide or loop into persistent data; fix: remove the entry or move the storage",
                        entry.describe(),
                        escape::text(&other.path)
                    ),
                );
            }
        }
    }

    /// The same declaration twice is fine, also in two storages: impermanence makes a user's
    /// home in every storage that holds entries of that user. Different ones are not.
    fn duplicate(
        &mut self,
        (first_storage, first): (&Storage, &Entry),
        (storage, entry): (&Storage, &Entry),
    ) {
        let same =
            first.kind == entry.kind && first.attrs == entry.attrs && first.parent == entry.parent;
        if same {
            return;
        }
        let why = if first_storage.path == storage.path {
            "with different attributes".to_owned()
        } else {
            format!(
                "with different attributes in two storages, {} and {}",
                escape::text(&first_storage.path),
                escape::text(&storage.path)
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

/// The first declaration, in the manifest's order, of the path of entry `index` of storage
/// `storage`, when that entry is not it. Each storage's entries are sorted (ancestors first,
/// equal paths in the manifest's order), so a binary search per storage finds it, without a
/// hash of every path on every run.
pub(super) fn first_declared(
    manifest: &Manifest,
    storage: usize,
    index: usize,
) -> Option<(&Storage, &Entry)> {
    let path = manifest.storages[storage].entries[index].path.as_str();
    let earlier = manifest.storages[..storage]
        .iter()
        .find_map(|s| first_in(&s.entries, path).map(|e| (s, e)));
    let s = &manifest.storages[storage];
    // Sorted: an earlier declaration in the same storage is right before this one.
    let repeated = index > 0 && s.entries[index - 1].path == path;
    earlier.or_else(|| {
        repeated
            .then(|| first_in(&s.entries[..index], path).map(|e| (s, e)))
            .flatten()
    })
}

/// The first of sorted `entries` whose path is `path`.
fn first_in<'m>(entries: &'m [Entry], path: &str) -> Option<&'m Entry> {
    let at = entries.partition_point(|e| path_order(&e.path, path).is_lt());
    entries.get(at).filter(|e| e.path == path)
}

/// Why a user or group name is refused.
fn bad_name(name: &str, key: &str) -> String {
    if super::numeric_out_of_range(name) {
        format!(
            "\"{name}\" is taken as a numeric id, and it is not one from 0 to 4294967294 (4294967295 is (uid_t)-1, which chown reads as \"leave unchanged\"); fix: use a real id or a name"
        )
    } else {
        format!(
            "\"{}\" is not a valid {key} name (empty, too long, or with white space, a control character, `:`, `/` or `,`); fix: use the name as NixOS declares it",
            escape::text(name)
        )
    }
}
