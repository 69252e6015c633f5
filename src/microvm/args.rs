//! Command line of `persist-prep microvm status|prune`, parsed with lexopt from `OsString`s: paths
//! may be any bytes, and a name that is not UTF-8 is a usage error, never a panic.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::{Arg, Parser, ValueExt as _};

pub const USAGE: &str = "\
usage: persist-prep microvm status [--root DIR] (--manifest PATH | --declared NAMES [--state-dir DIR])
                                   [--json]
       persist-prep microvm prune  [--root DIR] (--manifest PATH | --declared NAMES [--state-dir DIR])
                                   [--json]
                                   [--dry-run] [--stop] [--purge-state NAME]...
                                   [--purge-state-of-possibly-running]

  status   list every microvm.nix unit file, drop-in, enablement link, loaded unit, state
           directory, GC root and interface, classified against the declared VMs
  prune    remove what belongs to no declared or imperative VM (see the README)

  --manifest PATH     host manifest written by the NixOS module
                      ({\"version\":1,\"stateDir\":\"/var/lib/microvms\",\"vms\":[...]})
  --declared NAMES    comma-separated declared VM names; --declared '' means none
  --state-dir DIR     with --declared: microvm.stateDir. Without it, the stateDir that the
                      installed microvm@.service names (else /var/lib/microvms); one that
                      disagrees with that template is a usage error
  --root DIR          work on the tree under DIR (default /); systemd and network interfaces
                      are only consulted when DIR is / and systemd runs
  --dry-run           print the plan and change nothing
  --stop              stop running orphaned VMs and delete their tap/macvtap interfaces
                      (live only; never an orphan that shares an interface with a kept VM)
  --purge-state NAME  also delete the state directory of NAME (its disks); repeatable. Refused
                      for a VM that may be running unless --stop stops it in this run
  --purge-state-of-possibly-running
                      purge even though the state directory has a `booted` link (offline: you
                      know the VM does not run); never overrides what systemd says
exit codes: 0 ok, 1 something failed (or --root cannot be opened), 2 usage error or the
            declaration contradicts the configuration's units, 3 invalid manifest";

/// Which VMs the configuration declares, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredSource {
    Manifest(PathBuf),
    Names(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Status,
    Prune,
}

/// One field per flag: a command line is the textbook case of many independent booleans.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub root: PathBuf,
    pub declared: DeclaredSource,
    /// `--state-dir`, checked.
    pub state_dir: Option<String>,
    pub json: bool,
    pub dry_run: bool,
    pub stop: bool,
    pub purge_state: Vec<String>,
    pub purge_possibly_running: bool,
}

/// What the caller should do instead of running.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgsError {
    Help,
    Usage(String),
}

fn usage(message: impl Into<String>) -> ArgsError {
    ArgsError::Usage(message.into())
}

impl From<lexopt::Error> for ArgsError {
    fn from(error: lexopt::Error) -> Self {
        match error {
            lexopt::Error::NonUnicodeValue(value) => usage(format!(
                "argument {} is not valid UTF-8; VM names and commands must be",
                value.to_string_lossy().escape_debug()
            )),
            other => usage(other.to_string()),
        }
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, ArgsError> {
    let mut parser = Parser::from_args(args);
    let command = match parser.next()? {
        None => return Err(usage("no microvm command given (status or prune)")),
        Some(Arg::Value(value)) => match value.string()?.as_str() {
            "status" => Command::Status,
            "prune" => Command::Prune,
            "help" => return Err(ArgsError::Help),
            other => return Err(usage(format!("unknown microvm command {other:?}"))),
        },
        Some(Arg::Short('h') | Arg::Long("help")) => return Err(ArgsError::Help),
        Some(other) => return Err(other.unexpected().into()),
    };
    let mut parsed = Args {
        command,
        root: PathBuf::from("/"),
        declared: DeclaredSource::Names(Vec::new()),
        state_dir: None,
        json: false,
        dry_run: false,
        stop: false,
        purge_state: Vec::new(),
        purge_possibly_running: false,
    };
    let mut manifest = None;
    let mut names = None;
    while let Some(arg) = parser.next()? {
        if let Arg::Long(
            flag @ ("dry-run" | "stop" | "purge-state" | "purge-state-of-possibly-running"),
        ) = arg
        {
            if command != Command::Prune {
                return Err(usage(format!("--{flag} is only accepted by `prune`")));
            }
        }
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Err(ArgsError::Help),
            Arg::Long("root") => parsed.root = non_empty_path("--root", parser.value()?)?,
            Arg::Long("manifest") => {
                manifest = Some(non_empty_path("--manifest", parser.value()?)?);
            }
            Arg::Long("declared") => names = Some(parser.value()?.string()?),
            Arg::Long("state-dir") => {
                let dir = parser.value()?.string()?;
                let checked = super::manifest::check_state_dir(&dir)
                    .map_err(|why| usage(format!("--state-dir {dir:?} is not usable: {why}")))?;
                parsed.state_dir = Some(checked);
            }
            Arg::Long("purge-state") => {
                let name = parser.value()?.string()?;
                if name.is_empty() {
                    return Err(usage("--purge-state needs a non-empty value"));
                }
                parsed.purge_state.push(name);
            }
            Arg::Long("json") => parsed.json = true,
            Arg::Long("dry-run") => parsed.dry_run = true,
            Arg::Long("stop") => parsed.stop = true,
            Arg::Long("purge-state-of-possibly-running") => parsed.purge_possibly_running = true,
            other => return Err(other.unexpected().into()),
        }
    }
    if manifest.is_some() && parsed.state_dir.is_some() {
        return Err(usage(
            "--state-dir goes with --declared; the host manifest gives its own \"stateDir\"",
        ));
    }
    parsed.declared = declared(manifest, names)?;
    Ok(parsed)
}

fn declared(manifest: Option<PathBuf>, names: Option<String>) -> Result<DeclaredSource, ArgsError> {
    match (manifest, names) {
        (Some(_), Some(_)) => Err(usage("give either --manifest or --declared, not both")),
        (None, None) => Err(usage(
            "which VMs are declared? Give --manifest PATH (the host manifest the NixOS module \
             writes) or --declared NAMES (--declared '' if none); persist-prep does not guess",
        )),
        (Some(path), None) => Ok(DeclaredSource::Manifest(path)),
        (None, Some(list)) => Ok(DeclaredSource::Names(split_names(&list)?)),
    }
}

fn non_empty_path(flag: &str, value: OsString) -> Result<PathBuf, ArgsError> {
    if value.is_empty() {
        Err(usage(format!("{flag} needs a non-empty value")))
    } else {
        Ok(PathBuf::from(value))
    }
}

fn split_names(list: &str) -> Result<Vec<String>, ArgsError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for name in list.split(',') {
        super::names::check_vm_name(name)
            .map_err(|why| usage(format!("--declared: VM name {name:?} is not usable: {why}")))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt as _;

    use super::*;

    fn args(list: &[&str]) -> Result<Args, ArgsError> {
        parse(list.iter().map(OsString::from))
    }

    #[test]
    fn refuses_to_guess_the_declared_vms() {
        let Err(ArgsError::Usage(message)) = args(&["status"]) else {
            panic!("accepted");
        };
        assert!(message.contains("--declared"));
    }

    #[test]
    fn empty_declared_means_none() {
        let parsed = args(&["prune", "--declared", "", "--dry-run"]).unwrap();
        assert_eq!(parsed.declared, DeclaredSource::Names(vec![]));
        assert!(parsed.dry_run);
        let parsed = args(&[
            "prune",
            "--declared=a,b",
            "--purge-state=x",
            "--purge-state",
            "y",
            "--purge-state-of-possibly-running",
        ])
        .unwrap();
        assert_eq!(
            parsed.declared,
            DeclaredSource::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(parsed.purge_state, ["x", "y"]);
        assert!(parsed.purge_possibly_running);
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(args(&["status", "--declared", "a", "--stop"]).is_err());
        assert!(
            args(&[
                "status",
                "--declared",
                "a",
                "--purge-state-of-possibly-running"
            ])
            .is_err()
        );
        assert!(args(&["status", "--declared", "a", "--manifest", "m"]).is_err());
        assert!(args(&["prune", "--declared", "a,,b"]).is_err());
        assert!(args(&["prune", "--declared", "my vm"]).is_err());
        assert!(args(&["prune", "--declared", "a", "--json=1"]).is_err());
        assert!(args(&["prune", "--declared", "a", "--root", ""]).is_err());
        assert!(args(&["prune", "--declared", "a", "stray"]).is_err());
        assert!(args(&["frobnicate"]).is_err());
        assert!(args(&["status", "--manifest", "m", "--state-dir", "/srv"]).is_err());
        assert!(args(&["status", "--declared", "a", "--state-dir", "srv"]).is_err());
        let parsed = args(&["status", "--declared", "a", "--state-dir", "/srv/vms/"]).unwrap();
        assert_eq!(parsed.state_dir.as_deref(), Some("/srv/vms"));
        assert_eq!(args(&["status", "--help"]).unwrap_err(), ArgsError::Help);
        assert_eq!(args(&["-h"]).unwrap_err(), ArgsError::Help);
    }

    #[test]
    fn non_utf8_is_a_usage_error_or_a_path() {
        let bad = || OsString::from_vec(b"we\xffb".to_vec());
        let with =
            |list: &[&str], last: OsString| parse(list.iter().map(OsString::from).chain([last]));
        let Err(ArgsError::Usage(message)) = with(&["prune", "--declared"], bad()) else {
            panic!("a non-UTF-8 name was accepted");
        };
        assert!(message.contains("not valid UTF-8"), "{message}");
        assert!(with(&["prune", "--declared", "", "--purge-state"], bad()).is_err());
        assert!(with(&[], bad()).is_err());
        // Paths are bytes: a non-UTF-8 --root is fine.
        let parsed = with(&["status", "--declared", "", "--root"], bad()).unwrap();
        assert_eq!(parsed.root.as_os_str().len(), 4);
    }
}
