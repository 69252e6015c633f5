//! Where the VMs' state lives: the stateDir given, the one the installed `microvm@.service`
//! template names, and whether its storage is mounted.
//!
//! The template's `ConditionPathExists=<stateDir>/%i/current/bin/microvm-run` is what systemd
//! really uses; a manifest or `--state-dir` that names another directory would make every VM
//! there look like an orphan, so a disagreement is a usage error.

use std::fmt::Write as _;

use super::manifest::DEFAULT_STATE_DIR;
use super::rootfs::{Root, join};
use super::scan::UNIT_DIRS;

/// The vendor unit directories, after the writable ones, in systemd's order of precedence.
pub const VENDOR_UNIT_DIRS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];

const CONDITION_SUFFIX: &str = "/%i/current/bin/microvm-run";

/// What the installed `microvm@.service` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// No template is installed (microvm.nix's host module is not in the configuration).
    Absent,
    /// Found at `path`; `state_dir` when it has microvm.nix's `ConditionPathExists`.
    Found {
        path: String,
        state_dir: Option<String>,
    },
    /// Found but unreadable: the stateDir cannot be confirmed.
    Unreadable { path: String, why: String },
}

/// Reads the template that systemd would use (the first in precedence order).
pub fn read_template(root: &Root) -> Template {
    for dir in UNIT_DIRS.iter().chain(VENDOR_UNIT_DIRS.iter()) {
        let path = join(dir, "microvm@.service");
        // Masked, it runs nothing and names nothing: the next one down still tells.
        if root.masked(&path) {
            continue;
        }
        match root.lstat(&path) {
            Ok(None) => continue,
            Ok(Some(_)) => {}
            Err(e) => {
                return Template::Unreadable {
                    path,
                    why: crate::report::errno_words(e.errno),
                };
            }
        }
        return match root.read_text(&path) {
            Ok(Some(text)) => {
                let dirs = template_state_dirs(&text);
                if dirs.len() > 1 {
                    let why = format!(
                        "it names several stateDirs ({}), so which one VMs run from is unknown",
                        dirs.into_iter().collect::<Vec<_>>().join(", ")
                    );
                    return Template::Unreadable { path, why };
                }
                Template::Found {
                    state_dir: dirs.into_iter().next(),
                    path,
                }
            }
            Ok(None) => Template::Unreadable {
                path,
                why: "it is a symbolic link to nothing".into(),
            },
            Err(e) => Template::Unreadable {
                path,
                why: e
                    .note
                    .unwrap_or_else(|| crate::report::errno_words(e.errno)),
            },
        };
    }
    Template::Absent
}

/// The stateDir in a template's `ConditionPathExists=<stateDir>/%i/current/bin/microvm-run`.
pub fn condition_state_dir(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("ConditionPathExists="))
        .filter_map(|value| value.trim().strip_suffix(CONDITION_SUFFIX))
        .filter_map(|dir| super::manifest::check_state_dir(dir).ok())
        .next_back()
}

/// Every stateDir a template names: the directory before `/%i` in any of its paths (the
/// condition, `WorkingDirectory=`, `ExecStart=`, the scripts of `ExecStartPost=`).
pub fn template_state_dirs(text: &str) -> std::collections::BTreeSet<String> {
    let mut dirs: std::collections::BTreeSet<String> =
        condition_state_dir(text).into_iter().collect();
    for line in text.lines().map(str::trim) {
        if line.starts_with(['#', ';']) {
            continue;
        }
        let Some((_, value)) = line.split_once('=') else {
            continue;
        };
        // Exec prefixes (`+`, `-`, `@`, `:`, `!`) and condition marks (`!`, `|`) are no path.
        let words = value
            .split(|c: char| c.is_whitespace() || c == '\'' || c == '"')
            .map(|word| word.trim_start_matches(['!', '@', '+', '-', ':', '|']));
        for word in words {
            // `%i` as a whole component (`<dir>/%i` or `<dir>/%i/...`), not `/run/%i.sock`.
            let Some((dir, rest)) = word.split_once("/%i") else {
                continue;
            };
            if rest.is_empty() || rest.starts_with('/') {
                if let Ok(dir) = super::manifest::check_state_dir(dir) {
                    dirs.insert(dir);
                }
            }
        }
    }
    dirs
}

/// The stateDir to use, or the usage error when the given one contradicts the template.
/// `given` is the manifest's or `--state-dir`'s, with where it came from.
pub fn resolve(given: Option<(&str, &str)>, template: &Template) -> Result<String, String> {
    let installed = match template {
        Template::Found {
            path,
            state_dir: Some(dir),
        } => Some((dir.as_str(), path.as_str())),
        _ => None,
    };
    match (given, installed) {
        (Some((given, source)), Some((installed, path))) if given != installed => Err(format!(
            "{source} says the stateDir is {given}, but the installed template {path} runs VMs \
             from {installed}. One of them is wrong, so nothing was planned, stopped or deleted. \
             Fix: give the host manifest of the running generation, or the stateDir the host \
             really uses"
        )),
        (Some((given, _)), _) => Ok(given.to_owned()),
        (None, Some((installed, _))) => Ok(installed.to_owned()),
        (None, None) => Ok(DEFAULT_STATE_DIR.to_owned()),
    }
}

/// Why the stateDir's storage is not mounted, when `/etc/fstab` or a mount unit says that it (or a
/// directory above it) is a mount point and it is not one now. An empty mount point would make
/// every VM's state look gone.
pub fn not_mounted(root: &Root, state_dir: &str) -> Option<String> {
    let expected = match expected_mounts(root, state_dir) {
        Ok(expected) => expected,
        Err(why) => return Some(why),
    };
    for (point, source) in expected {
        let dir = match root.open_dir(&point) {
            Ok(dir) => dir,
            Err(e) => {
                return Some(format!(
                    "{source} mounts a file system on {point}, which cannot be opened: {}",
                    crate::report::errno_words(e.errno)
                ));
            }
        };
        // statx's mount-root attribute: a bind mount from the same file system counts too.
        match crate::fs::is_mount_point(&dir) {
            Ok(true) => {}
            Ok(false) => {
                return Some(format!(
                    "{source} mounts a file system on {point}, but nothing is mounted there"
                ));
            }
            Err(errno) => {
                return Some(format!(
                    "whether {point} ({source}) is mounted cannot be told: {}",
                    crate::report::errno_words(errno)
                ));
            }
        }
    }
    None
}

/// Mount points at or above the stateDir (not `/`) that `/etc/fstab` or a mount unit declares,
/// each with what declares it.
fn expected_mounts(root: &Root, state_dir: &str) -> Result<Vec<(String, String)>, String> {
    let covers = |point: &str| {
        let point = point.trim_end_matches('/');
        !point.is_empty()
            && (state_dir == point
                || state_dir
                    .strip_prefix(point)
                    .is_some_and(|rest| rest.starts_with('/')))
    };
    let mut found = Vec::new();
    let fstab = root.read_text("/etc/fstab").map_err(|e| {
        let why = e
            .note
            .unwrap_or_else(|| crate::report::errno_words(e.errno));
        format!("/etc/fstab cannot be read ({why}), so whether it must be mounted is unknown")
    })?;
    if let Some(fstab) = fstab {
        for line in fstab.lines() {
            let mut fields = line.split_whitespace();
            let (Some(source), Some(point)) = (fields.next(), fields.next()) else {
                continue;
            };
            if source.starts_with('#') {
                continue;
            }
            let point = point.replace("\\040", " ");
            // A stateDir reached through a symbolic link (`/var/lib/microvms -> /srv/vms`) is
            // on the storage mounted where the link leads.
            let behind_link = !point.trim_end_matches('/').is_empty()
                && !covers(&point)
                && root.is_within(state_dir, &point);
            if (covers(&point) || behind_link) && !found.iter().any(|(p, _)| *p == point) {
                found.push((
                    point.trim_end_matches('/').to_owned(),
                    "/etc/fstab".to_owned(),
                ));
            }
        }
    }
    let mut point = state_dir;
    while !point.is_empty() {
        let unit = format!("{}.mount", escape_path(point));
        for dir in UNIT_DIRS.iter().chain(VENDOR_UNIT_DIRS.iter()) {
            let path = join(dir, &unit);
            if matches!(root.lstat(&path), Ok(Some(_))) && !found.iter().any(|(p, _)| p == point) {
                found.push((point.to_owned(), path));
            }
        }
        point = point.rsplit_once('/').map_or("", |(parent, _)| parent);
    }
    Ok(found)
}

/// `systemd-escape --path` for the plain paths a stateDir is made of.
fn escape_path(path: &str) -> String {
    let mut out = String::new();
    for (i, byte) in path.trim_matches('/').bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(char::from(b));
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_of_the_template_names_the_state_dir() {
        let text = "[Unit]\nConditionPathExists=/srv/my-vms/%i/current/bin/microvm-run\n\
                    [Service]\nWorkingDirectory=/srv/my-vms/%i\n\
                    ExecStartPost=+/nix/store/x-bash/bin/sh -c 'if [ -x /srv/my-vms/%i/current/bin/r ]; then :; fi'\n\
                    ExecStop=-/srv/my-vms/%i/booted/bin/microvm-shutdown\n";
        let dirs: Vec<String> = template_state_dirs(text).into_iter().collect();
        assert_eq!(dirs, ["/srv/my-vms"]);
        assert!(template_state_dirs("[Service]\nExecStart=/bin/true\n").is_empty());
        assert!(template_state_dirs("[Service]\nExecStart=/bin/x --api /run/%i.sock\n").is_empty());
    }

    #[test]
    fn reads_the_state_dir_from_the_template() {
        let text = "[Unit]\nConditionPathExists=/srv/microvms/%i/current/bin/microvm-run\n";
        assert_eq!(condition_state_dir(text).as_deref(), Some("/srv/microvms"));
        assert_eq!(condition_state_dir("[Service]\n"), None);
        assert_eq!(
            condition_state_dir("ConditionPathExists=srv/%i/current/bin/microvm-run"),
            None
        );
    }

    type Case<'a> = (
        Option<(&'a str, &'a str)>,
        Template,
        Result<&'a str, &'a str>,
    );

    #[test]
    fn given_and_installed_must_agree() {
        let found = |dir: Option<&str>| Template::Found {
            path: "/etc/systemd/system/microvm@.service".into(),
            state_dir: dir.map(str::to_owned),
        };
        let table: [Case; 6] = [
            (None, Template::Absent, Ok(DEFAULT_STATE_DIR)),
            (None, found(Some("/srv/vms")), Ok("/srv/vms")),
            (None, found(None), Ok(DEFAULT_STATE_DIR)),
            (
                Some(("/srv/vms", "m")),
                found(Some("/srv/vms")),
                Ok("/srv/vms"),
            ),
            (Some(("/srv/vms", "m")), Template::Absent, Ok("/srv/vms")),
            (
                Some(("/var/lib/microvms", "the manifest")),
                found(Some("/srv/vms")),
                Err(
                    "the manifest says the stateDir is /var/lib/microvms, but the installed \
                     template /etc/systemd/system/microvm@.service runs VMs from /srv/vms",
                ),
            ),
        ];
        for (given, template, expected) in table {
            match (resolve(given, &template), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{given:?} {template:?}: {got:?} != {want:?}"),
            }
        }
    }

    #[test]
    fn escapes_mount_unit_names() {
        assert_eq!(escape_path("/var/lib/microvms"), "var-lib-microvms");
        assert_eq!(escape_path("/srv/my-vms"), "srv-my\\x2dvms");
    }
}
