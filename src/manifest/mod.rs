//! The manifest: the contract between the NixOS module, which writes it at build time, and us.
//!
//! The whole file is validated before anything is touched, and every problem is reported at
//! once, so that one rebuild fixes them all. One typed parse (`raw`) checks the shape; one
//! semantic pass (`semantic`) checks the meaning and collects every problem.

use std::path::Path;

use crate::escape;

mod raw;
mod semantic;

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

impl Storage {
    /// The owner and mode that a directory entry declares for `path`, if one does: found in
    /// the entries' order (ancestors first), without an index to build on every run.
    pub fn declared(&self, path: &str) -> Option<&Attrs> {
        let first = self
            .entries
            .partition_point(|e| path_order(&e.path, path).is_lt());
        self.entries[first..]
            .iter()
            .take_while(|e| e.path == path)
            .find_map(|e| e.attrs.as_ref())
    }
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
    /// Shared like owner names: most entries repeat the option they came from.
    pub origin: Option<std::rc::Rc<str>>,
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
        let path = escape::text(&e.path);
        match &e.origin {
            Some(origin) => write!(
                f,
                "{} {path} (from {})",
                e.kind.as_str(),
                escape::text(origin)
            ),
            None => write!(f, "{} {path} ({})", e.kind.as_str(), e.location),
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
            "{}:{} {:04o}",
            self.user.name, self.group.name, self.mode
        )
    }
}

/// A user or group: its name, and the numeric id when the manifest gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Shared: a manifest names the same few users and groups in every entry, and the
    /// default `parent` names root twice per entry.
    pub name: std::rc::Rc<str>,
    pub id: Option<u32>,
}

thread_local! {
    static ROOT: std::rc::Rc<str> = std::rc::Rc::from("root");
}

impl Owner {
    pub fn root() -> Self {
        Owner {
            name: ROOT.with(std::rc::Rc::clone),
            id: Some(0),
        }
    }
}

/// Reads and validates a manifest file; the error lists every problem, one per line.
pub fn load(path: &Path) -> Result<Manifest, Vec<String>> {
    let text = read(path).map_err(|why| {
        vec![format!(
            "cannot read manifest {}: {why}; fix: check the path given with --manifest (default /etc/persist-prep/manifest.json) and that the initrd contains it",
            crate::escape::bytes(path.as_os_str().as_encoded_bytes()),
        )]
    })?;
    // A command loads the manifest once and exits soon after: handing the text and the raw
    // lists back to the allocator (a score of munmap calls for a large manifest) is work that
    // exit does for nothing.
    let manifest = parse_then(&text, |raw| std::mem::forget(raw));
    std::mem::forget(text);
    manifest
}

/// Reads the manifest, which must be a regular file. It is opened non-blocking and checked
/// before it is read, so that a FIFO or a device there is refused at once instead of hanging the
/// boot. Symlinks are followed: the NixOS initrd links the manifest into the store.
pub(crate) fn read(path: &Path) -> Result<String, String> {
    use rustix::fs::{FileType, Mode, OFlags, fstat, open};
    let words = |e| crate::report::errno_words(e);
    let fd = open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(words)?;
    let kind = FileType::from_raw_mode(fstat(&fd).map_err(words)?.st_mode);
    let what = match kind {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO (named pipe)"),
        FileType::CharacterDevice => Some("a character device"),
        FileType::BlockDevice => Some("a block device"),
        FileType::Socket => Some("a socket"),
        _ => Some("not a file"),
    };
    if let Some(what) = what {
        return Err(format!(
            "it is {what}, not a regular file, and only a regular file is read"
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)
        .map_err(|e| crate::report::io_error_words(&e))?;
    Ok(text)
}

/// Parses and validates manifest text (commands read a file with `load`).
#[cfg(test)]
pub fn parse(text: &str) -> Result<Manifest, Vec<String>> {
    parse_then(text, |raw| drop(raw))
}

/// Parses and validates, then hands the raw manifest to `then` (to drop or to forget).
fn parse_then(
    text: &str,
    then: impl for<'r> FnOnce(raw::Raw<'r>),
) -> Result<Manifest, Vec<String>> {
    let raw = serde_json::from_str::<raw::Raw<'_>>(text).map_err(|e| vec![structural(&e)])?;
    let (mut manifest, errors) = semantic::check(&raw);
    then(raw);
    if errors.is_empty() {
        dedup(&mut manifest);
        Ok(manifest)
    } else {
        Err(errors)
    }
}

/// A manifest of the wrong shape was not written by the module (or was edited or cut short):
/// serde's message names the key and the line and column, and the fix is to regenerate it.
fn structural(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "the manifest is not valid JSON",
        Category::Eof => "the manifest ends too early (not valid JSON; was it cut short?)",
        Category::Data => "the manifest does not have the shape of a version-1 manifest",
        Category::Io => "the manifest cannot be read",
    };
    format!(
        "{what}: {}; fix: regenerate the manifest with the NixOS module (boot.initrd.persist-prep), which writes it with builtins.toJSON, rather than editing it by hand",
        escape::text(&e.to_string())
    )
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
    if path.contains("/.persist-prep.") {
        return Err(
            "a component of the path starts with `.persist-prep.`, which persist-prep reserves for its temporary directories (a directory declared there could be taken for a leftover of an interrupted run)",
        );
    }
    let clean = path.len() > 1
        && !path.ends_with('/')
        && !path.contains("//")
        && !path.split('/').any(|c| c == "." || c == "..");
    if clean {
        return Ok(path.to_owned());
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
    if entries.is_sorted_by(|a, b| path_order(&a.path, &b.path).is_le()) {
        return;
    }
    // Entries are large: sort their indices (stably), then put each entry in place by
    // following the permutation's cycles, without a second array of entries (memory that a
    // short run would pay for in page faults).
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&i, &j| path_order(&entries[i].path, &entries[j].path));
    for start in 0..order.len() {
        let mut at = start;
        // Position `at` takes the entry that stood at `order[at]`; usize::MAX marks it done.
        while order[at] != usize::MAX {
            let from = std::mem::replace(&mut order[at], usize::MAX);
            if from == start {
                break;
            }
            entries.swap(at, from);
            at = from;
        }
    }
}

/// Compares paths as if `/` were the lowest byte, without building keys.
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let same = common_prefix(a, b);
    let key = |c: Option<&u8>| c.map(|&c| if c == b'/' { 0 } else { u16::from(c) + 1 });
    key(a.get(same)).cmp(&key(b.get(same)))
}

/// The length of the bytes `a` and `b` start with alike: eight at a time, then one by one
/// (sorting and searching the entries compares paths some 20,000 times a run).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let end = a.len().min(b.len());
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let mut same = 0;
    while same + 8 <= end && word(a, same) == word(b, same) {
        same += 8;
    }
    while same < end && a[same] == b[same] {
        same += 1;
    }
    same
}

/// True when `ancestor` is `path` or one of its ancestors (both normalised).
pub fn contains(ancestor: &str, path: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// A user or group name as NixOS accepts it: no separators, no white space. A numeric name is
/// taken as an id, so it must be one: 4294967295 is `(uid_t)-1`, which chown reads as "leave
/// unchanged".
fn valid_name(name: &str) -> bool {
    !numeric_out_of_range(name)
        && !name.is_empty()
        && name.len() <= 256
        && !name
            .chars()
            .any(|c| c == ':' || c == '/' || c == ',' || c.is_whitespace() || c.is_control())
}

/// True for a name of digits only that is not an id from 0 to 4294967294.
fn numeric_out_of_range(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && !matches!(name.parse::<u32>(), Ok(id) if id != u32::MAX)
}

/// Drops identical duplicate entries, which the validator accepted.
fn dedup(manifest: &mut Manifest) {
    for storage in &mut manifest.storages {
        storage
            .entries
            .dedup_by(|b, a| a.path == b.path && a.kind == b.kind);
    }
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
        let m = ok(include_str!("../../examples/manifest.json"));
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
    fn entries_share_the_names_they_repeat() {
        let m = ok(&one_dir(
            r#"{"path":"/a","user":"u","group":"g","mode":"0700","origin":"o"},
               {"path":"/b","user":"u","group":"g","mode":"0700","origin":"o"}"#,
        ));
        let [oa, ob] = [0, 1].map(|i| m.storages[0].entries[i].origin.clone().unwrap());
        assert!(std::rc::Rc::ptr_eq(&oa, &ob));
        let [a, b] = [0, 1].map(|i| m.storages[0].entries[i].attrs.clone().unwrap());
        assert!(std::rc::Rc::ptr_eq(&a.user.name, &b.user.name));
        assert!(std::rc::Rc::ptr_eq(&a.group.name, &b.group.name));
        let [pa, pb] = [0, 1].map(|i| m.storages[0].entries[i].parent.clone());
        assert!(std::rc::Rc::ptr_eq(&pa.user.name, &pb.user.name));
        assert_eq!(&*a.user.name, "u");
    }

    #[test]
    fn long_lists_read_in_chunks_keep_every_entry_and_its_place() {
        let dirs: Vec<String> = (0..150)
            .map(|i| format!(r#"{{"path":"/d{i}","user":"root","group":"root","mode":"0700"}}"#))
            .collect();
        let m = ok(&one_dir(&dirs.join(",")));
        let entries = &m.storages[0].entries;
        assert_eq!(entries.len(), 150);
        for e in entries {
            assert_eq!(e.path, format!("/d{}", e.location.index));
        }
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
        let e = errors(&one_dir(
            r#"{"path":"/a","user":"root","group":"root","uid":4294967295,"gid":-5,"mode":"0755"}"#,
        ));
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains(".uid: 4294967295 is not a valid id"), "{e:?}");
        assert!(e[1].contains(".gid: -5 is not a valid id"), "{e:?}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = errors(
            r#"{"version":2,"storages":[
                {"path":"rel","directories":[{"path":"x","user":"a b","group":"root","uid":1e20,"mode":"0755"}]},
                {"path":"/p","mountPoint":"/q","directories":[{"path":"/p/x","user":"root","group":"root","mode":"0755"}],
                 "files":[{"path":"/f","parent":{"mode":"9"}}]}]}"#,
        );
        let expect = [
            "manifest.version: version 2",
            "storages[0].path: the path is relative",
            "storages[0].directories[0] \"x\".path: the path is relative",
            "storages[0].directories[0] \"x\".user: \"a b\" is not a valid user name",
            "storages[0].directories[0] \"x\".uid: 1e+20 is not a valid id",
            "storages[1].mountPoint: /q is neither",
            "storages[1].files[0] \"/f\".parent.mode:",
            "storages[1].directories[0]: directory /p/x (storages[1].directories[0]) overlaps the storage /p",
        ];
        assert_eq!(e.len(), expect.len(), "{e:#?}");
        for (e, expect) in e.iter().zip(expect) {
            assert!(e.starts_with(expect), "{e:?} should start with {expect:?}");
        }
    }

    #[test]
    fn structural_errors_are_reported_once_with_line_and_fix() {
        for (text, what) in [
            (
                r#"{"version":1,"bogus":true,"storages":[]}"#,
                "unknown field `bogus`",
            ),
            (
                r#"{"version":1,"storages":[{"path":1}]}"#,
                "invalid type: integer `1`",
            ),
            (
                r#"{"version":1,"storages":[{"directories":[]}]}"#,
                "missing field `path`",
            ),
            (
                r#"{"version":1,"storages":[{"path":"/p","files":[{"path":"/f","mode":"0755"}]}]}"#,
                "unknown field `mode`",
            ),
            ("{\n\"version\":1,\n\"storages\":[\n", "ends too early"),
        ] {
            let e = errors(text);
            assert_eq!(e.len(), 1, "{e:#?}");
            assert!(e[0].contains(what), "{e:?}");
            assert!(
                e[0].contains(" line ") && e[0].contains(" column "),
                "{e:?}"
            );
            assert!(
                e[0].contains("fix: regenerate the manifest with the NixOS module"),
                "{e:?}"
            );
        }
    }

    #[test]
    fn messages_show_manifest_bytes_escaped() {
        let e = errors(&one_dir(
            r#"{"path":"rel\n<0>forged","user":"root","group":"root","mode":"0755","origin":"o\u001b"}"#,
        ));
        assert!(
            e.iter().all(|e| !e.contains('\n') && !e.contains('\u{1b}')),
            "{e:?}"
        );
        assert!(e[0].contains("rel\\n<0>forged"), "{e:?}");
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
        assert!(e[0].contains("unknown field `user`"), "{e:?}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = errors(&one_dir(
            r#"{"path":"/a","user":"root","group":"root","mode":"0700","mode":"0777"}"#,
        ));
        assert!(e[0].contains("duplicate field `mode`"), "{e:?}");
        let e = errors(r#"{"version":1,"version":1,"storages":[]}"#);
        assert!(e[0].contains("duplicate field `version`"), "{e:?}");
    }

    #[test]
    fn numeric_names_must_be_ids() {
        for name in ["4294967295", "4294967296", "99999999999999999999"] {
            let e = errors(&one_dir(&format!(
                r#"{{"path":"/a","user":"{name}","group":"root","mode":"0700"}}"#
            )));
            assert!(
                e[0].contains(".user") && e[0].contains("0 to 4294967294"),
                "{e:?}"
            );
            let e = errors(&one_dir(&format!(
                r#"{{"path":"/a","user":"root","group":"root","mode":"0700","parent":{{"group":"{name}"}}}}"#
            )));
            assert!(e[0].contains(".parent.group"), "{e:?}");
        }
        let m = ok(&one_dir(
            r#"{"path":"/a","user":"4294967294","group":"0","mode":"0700"}"#,
        ));
        assert_eq!(
            &*m.storages[0].entries[0].attrs.as_ref().unwrap().user.name,
            "4294967294"
        );
    }

    #[test]
    fn not_json() {
        let e = errors("{ nope");
        assert!(e[0].contains("not valid JSON"), "{e:?}");
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::Value;

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

            /// Bytes that are not even JSON are rejected, never a panic.
            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,64}") {
                let _ = parse(&text);
            }

            /// `declared` finds by the entries' order what a search of every entry finds.
            #[test]
            fn declared_finds_what_a_linear_search_finds(
                dirs in prop::collection::vec(prop::sample::select(vec!["/a", "/a/b", "/a-b", "/b", "/a/b/c", "/c/a", "/b/a"]), 0..12),
                files in prop::collection::vec(prop::sample::select(vec!["/a", "/a/b", "/a-b/f", "/b"]), 0..4),
            ) {
                let dirs: Vec<_> = dirs.iter().map(|p| serde_json::json!({"path": p, "user": "root", "group": "root", "mode": "0700"})).collect();
                let files: Vec<_> = files.iter().map(|p| serde_json::json!({"path": p})).collect();
                let doc = serde_json::json!({"version": 1, "storages": [{"path": "/p", "directories": dirs, "files": files}]});
                let Ok(m) = parse(&doc.to_string()) else { return Ok(()) };
                let storage = &m.storages[0];
                for path in ["/a", "/a/b", "/a-b", "/a-b/f", "/b", "/a/b/c", "/c", "/c/a", "/b/a", "/z"] {
                    let linear = storage.entries.iter().find(|e| e.path == path).and_then(|e| e.attrs.as_ref());
                    let linear = linear.or_else(|| storage.entries.iter().filter(|e| e.path == path).find_map(|e| e.attrs.as_ref()));
                    prop_assert_eq!(storage.declared(path), linear, "{}", path);
                }
            }

            /// The first declaration of a path, found by binary search per storage, is the
            /// one a scan of every storage and entry in order finds.
            #[test]
            fn first_declared_is_the_first_in_the_manifests_order(
                storages in prop::collection::vec(prop::collection::vec((prop::sample::select(vec!["/a", "/a/b", "/a-b", "/b", "/b/a"]), prop::sample::select(vec!["0700", "0750"])), 0..8), 1..4),
            ) {
                let storages: Vec<_> = storages.iter().enumerate().map(|(i, dirs)| {
                    let dirs: Vec<_> = dirs.iter().map(|(p, m)| serde_json::json!({"path": p, "user": "root", "group": "root", "mode": m})).collect();
                    serde_json::json!({"path": format!("/s{i}"), "directories": dirs})
                }).collect();
                let text = serde_json::json!({"version": 1, "storages": storages}).to_string();
                let raw = serde_json::from_str::<raw::Raw<'_>>(&text).unwrap();
                let (m, _) = semantic::check(&raw);
                for (s, storage) in m.storages.iter().enumerate() {
                    for (i, entry) in storage.entries.iter().enumerate() {
                        let scan = m.storages.iter().flat_map(|st| st.entries.iter().map(move |e| (st, e)))
                            .find(|(_, e)| e.path == entry.path)
                            .filter(|(_, e)| !std::ptr::eq(*e, entry));
                        let found = semantic::first_declared(&m, s, i);
                        let ptrs = |(st, e): (&Storage, &Entry)| (std::ptr::from_ref(st), std::ptr::from_ref(e));
                        prop_assert_eq!(found.map(ptrs), scan.map(ptrs));
                    }
                }
            }

            /// Paths compare as their bytes do with `/` below every other byte.
            #[test]
            fn path_order_is_bytes_with_slash_lowest(a in "[/a-]{0,40}", b in "[/a-]{0,40}") {
                let key = |s: &str| s.bytes().map(|c| if c == b'/' { 0 } else { u16::from(c) + 1 }).collect::<Vec<_>>();
                prop_assert_eq!(path_order(&a, &b), key(&a).cmp(&key(&b)));
                let long = format!("{a}{a}{a}");
                prop_assert_eq!(path_order(&long, &b), key(&long).cmp(&key(&b)));
            }

            /// Sorting in place by the permutation's cycles gives what a stable sort gives:
            /// ancestors first, equal paths in the manifest's order.
            #[test]
            fn entries_sort_as_a_stable_sort_does(
                paths in prop::collection::vec(prop::sample::select(vec!["/a", "/a/b", "/a-b", "/b", "/a/b/c", "/c/a", "/b/a"]), 0..40),
            ) {
                let mut entries: Vec<Entry> = paths
                    .iter()
                    .enumerate()
                    .map(|(index, path)| Entry {
                        kind: Kind::Directory,
                        path: (*path).to_owned(),
                        attrs: None,
                        parent: Attrs::root_0755(),
                        origin: None,
                        location: Location { storage: 0, kind: Kind::Directory, index },
                    })
                    .collect();
                let mut expected = entries.clone();
                expected.sort_by(|a, b| path_order(&a.path, &b.path));
                sort_entries(&mut entries);
                prop_assert_eq!(entries, expected);
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
                let entries = &m.storages[0].entries;
                prop_assert_eq!(entries.len(), dirs.len());
                for pair in entries.windows(2) {
                    prop_assert!(!contains(&pair[1].path, &pair[0].path) || pair[0].path == pair[1].path);
                }
            }
        }

        /// Modes that are wrong whatever else the entry says.
        const BAD_MODES: [&str; 3] = ["9", "", "u=rwz"];

        /// A field drawn from a pool of good and bad values, or left out.
        fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
            prop::option::of(prop::sample::select(pool).prop_map(Value::from))
        }

        fn id() -> impl Strategy<Value = Option<Value>> {
            prop::option::of(prop::sample::select(vec![
                Value::Null,
                Value::from(0),
                Value::from(0),
                Value::from(1000),
                Value::from(1000),
                Value::from(-1),
                Value::from(4_294_967_294_u64),
                Value::from(4_294_967_295_u64),
                Value::from(1e20),
                Value::from(1.5),
            ]))
        }

        // Good values come several times, so that a fair share of manifests is accepted.
        const PATHS: &[&str] = &[
            "/a",
            "/a/b",
            "/a/b/c",
            "/b",
            "/c/d",
            "/e",
            "/f/g",
            "/h",
            "/i/j/k",
            "/l",
            "//m//",
            "/ü",
            "rel",
            "",
            "/",
            "/a/../b",
            "/./x",
            "/persist/x",
            "/nix",
            "/a\n<0>x",
        ];
        const NAMES: &[&str] = &[
            "root",
            "root",
            "root",
            "u",
            "u",
            "ü",
            "4294967294",
            "1000",
            "a b",
            "",
            "4294967295",
            ":x",
            "x\ty",
        ];

        /// Owner and mode fields with random values; `mode` is always there for directories.
        fn attrs(mode: bool) -> impl Strategy<Value = serde_json::Map<String, Value>> {
            let modes: &'static [&'static str] = &[
                "0755", "0755", "0700", "0700", "2750", "u=rwx", "a+x", "07777", "9", "", "u=rwz",
                "17777",
            ];
            (
                pick(NAMES),
                pick(NAMES),
                id(),
                id(),
                pick(modes),
                prop::sample::select(modes),
            )
                .prop_map(move |(user, group, uid, gid, m, forced)| {
                    let mut o = serde_json::Map::new();
                    for (k, v) in [("user", user), ("group", group), ("uid", uid), ("gid", gid)] {
                        if let Some(v) = v {
                            o.insert(k.into(), v);
                        }
                    }
                    match (mode, m) {
                        (true, _) => {
                            o.insert("mode".into(), forced.into());
                        }
                        (false, Some(m)) => {
                            o.insert("mode".into(), m);
                        }
                        (false, None) => {}
                    }
                    o
                })
        }

        fn entry(directory: bool) -> impl Strategy<Value = Value> {
            (
                prop::sample::select(PATHS),
                attrs(directory),
                prop::option::of(attrs(false)),
                pick(&["opt.a", "opt.b\n"]),
            )
                .prop_map(move |(path, own, parent, origin)| {
                    let mut o = if directory {
                        own
                    } else {
                        serde_json::Map::new()
                    };
                    o.insert("path".into(), path.into());
                    if let Some(p) = parent {
                        o.insert("parent".into(), Value::Object(p));
                    }
                    if let Some(origin) = origin {
                        o.insert("origin".into(), origin);
                    }
                    Value::Object(o)
                })
        }

        /// Mostly entries that are fine on their own, with the odd random one.
        fn mostly_good(directory: bool) -> impl Strategy<Value = Value> {
            let good = (
                prop::sample::select(&PATHS[..12]),
                prop::sample::select(&["root", "u", "ü"][..]),
                prop::sample::select(&["0755", "0700"][..]),
            )
                .prop_map(move |(path, user, mode)| {
                    if directory {
                        serde_json::json!({"path": path, "user": user, "group": "root", "mode": mode})
                    } else {
                        serde_json::json!({"path": path})
                    }
                });
            prop_oneof![4 => good, 1 => entry(directory)]
        }

        fn storage() -> impl Strategy<Value = Value> {
            (
                prop::sample::select(&["/persist", "/persist", "/nix/persist", "/nix/persist", "rel", "/", "/persist/"][..]),
                pick(&["/", "/nix", "/nix", "/ni", "rel", "/persist"]),
                prop::collection::vec(mostly_good(true), 0..5),
                prop::collection::vec(mostly_good(false), 0..3),
            )
                .prop_map(|(path, mount_point, directories, files)| {
                    let mut o = serde_json::json!({"path": path, "directories": directories, "files": files});
                    if let Some(mp) = mount_point {
                        o["mountPoint"] = mp;
                    }
                    o
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Manifests of the right shape with random values: the semantic pass never panics,
            /// a rejection always says why, every message names its place and is one line, and
            /// an accepted manifest holds only what the rules allow.
            #[test]
            fn semantic_pass_never_panics_and_always_explains(
                version in prop::sample::select(vec![1, 1, 1, 2]),
                storages in prop::collection::vec(storage(), 0..3),
            ) {
                let doc = serde_json::json!({"version": version, "storages": storages});
                let text = doc.to_string();
                match parse(&text) {
                    Err(errors) => {
                        prop_assert!(!errors.is_empty());
                        for e in &errors {
                            prop_assert!(e.starts_with("manifest.") || e.starts_with("storages["), "{e}");
                            prop_assert!(!e.contains(char::is_control), "{e:?}");
                        }
                        // Every entry whose mode is wrong on its own is named: one problem does
                        // not hide another.
                        for (i, s) in storages.iter().enumerate() {
                            for (j, d) in s["directories"].as_array().unwrap().iter().enumerate() {
                                if BAD_MODES.contains(&d["mode"].as_str().unwrap()) {
                                    let at = format!("storages[{i}].directories[{j}] ");
                                    prop_assert!(errors.iter().any(|e| e.starts_with(&at) && e.contains(".mode:")), "{at} in {errors:#?}");
                                }
                            }
                        }
                    }
                    Ok(m) => {
                        prop_assert_eq!(version, 1);
                        for s in &m.storages {
                            prop_assert!(s.path.starts_with('/') && s.path != "/");
                            if let Some(mp) = &s.mount_point {
                                prop_assert!(contains(mp, &s.path));
                            }
                            for e in &s.entries {
                                prop_assert!(e.path.starts_with('/') && e.path != "/" && !e.path.contains("//"));
                                for other in &m.storages {
                                    prop_assert!(!contains(&e.path, &other.path) && !contains(&other.path, &e.path));
                                }
                                let attrs = e.attrs.iter().chain(std::iter::once(&e.parent));
                                for a in attrs {
                                    for o in [&a.user, &a.group] {
                                        prop_assert!(valid_name(&o.name), "{o:?}");
                                        prop_assert!(o.id != Some(u32::MAX));
                                    }
                                    prop_assert!(a.mode <= 0o7777);
                                }
                            }
                            for pair in s.entries.windows(2) {
                                prop_assert!(!contains(&pair[1].path, &pair[0].path) || pair[0].path == pair[1].path);
                            }
                        }
                    }
                }
            }
        }
    }
}
