//! Command line of `persist-prep microvm status|prune`.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: persist-prep microvm status [--root DIR] (--manifest PATH | --declared NAMES) [--json]
       persist-prep microvm prune  [--root DIR] (--manifest PATH | --declared NAMES) [--json]
                                   [--dry-run] [--stop] [--purge-state NAME]...

  status   list every microvm.nix unit file, drop-in, enablement link, loaded unit, state
           directory, GC root and interface, classified against the declared VMs
  prune    remove what belongs to no declared or imperative VM (see the README)

  --manifest PATH     host manifest written by the NixOS module ({\"version\":1,\"vms\":[...]})
  --declared NAMES    comma-separated declared VM names; --declared '' means none
  --root DIR          work on the tree under DIR (default /); systemd and network interfaces
                      are only consulted when DIR is / and systemd runs
  --dry-run           print the plan and change nothing
  --stop              stop running orphaned VMs and delete their tap/macvtap interfaces
  --purge-state NAME  also delete /var/lib/microvms/NAME (the VM's disks); repeatable
exit codes: 0 ok, 1 something failed, 2 usage error, 3 invalid manifest";

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

#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub root: PathBuf,
    pub declared: DeclaredSource,
    pub json: bool,
    pub dry_run: bool,
    pub stop: bool,
    pub purge_state: Vec<String>,
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

pub fn parse(args: &[String]) -> Result<Args, ArgsError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(usage("no microvm command given (status or prune)"));
    };
    let command = match command.as_str() {
        "status" => Command::Status,
        "prune" => Command::Prune,
        "-h" | "--help" | "help" => return Err(ArgsError::Help),
        other => return Err(usage(format!("unknown microvm command {other:?}"))),
    };
    let mut root = PathBuf::from("/");
    let mut manifest = None;
    let mut names = None;
    let mut parsed = Args {
        command,
        root: PathBuf::new(),
        declared: DeclaredSource::Names(Vec::new()),
        json: false,
        dry_run: false,
        stop: false,
        purge_state: Vec::new(),
    };
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let prune_only = matches!(flag, "--dry-run" | "--stop" | "--purge-state");
        if prune_only && command != Command::Prune {
            return Err(usage(format!("{flag} is only accepted by `prune`")));
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| iter.next().cloned())
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag {
            "-h" | "--help" => return Err(ArgsError::Help),
            "--root" => root = PathBuf::from(non_empty(flag, value()?)?),
            "--manifest" => manifest = Some(PathBuf::from(non_empty(flag, value()?)?)),
            "--declared" => names = Some(value()?),
            "--purge-state" => parsed.purge_state.push(non_empty(flag, value()?)?),
            "--json" | "--dry-run" | "--stop" if inline.is_some() => {
                return Err(usage(format!("{flag} takes no value")));
            }
            "--json" => parsed.json = true,
            "--dry-run" => parsed.dry_run = true,
            "--stop" => parsed.stop = true,
            _ => return Err(usage(format!("unknown argument {arg:?}"))),
        }
    }
    parsed.root = root;
    parsed.declared = match (manifest, names) {
        (Some(_), Some(_)) => {
            return Err(usage("give either --manifest or --declared, not both"));
        }
        (None, None) => {
            return Err(usage(
                "which VMs are declared? Give --manifest PATH (the host manifest the NixOS module \
                 writes) or --declared NAMES (--declared '' if none); persist-prep does not guess",
            ));
        }
        (Some(path), None) => DeclaredSource::Manifest(path),
        (None, Some(list)) => DeclaredSource::Names(split_names(&list)?),
    };
    Ok(parsed)
}

fn non_empty(flag: &str, value: String) -> Result<String, ArgsError> {
    if value.is_empty() {
        Err(usage(format!("{flag} needs a non-empty value")))
    } else {
        Ok(value)
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
    use super::*;

    fn args(list: &[&str]) -> Result<Args, ArgsError> {
        parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
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
        ])
        .unwrap();
        assert_eq!(
            parsed.declared,
            DeclaredSource::Names(vec!["a".into(), "b".into()])
        );
        assert_eq!(parsed.purge_state, ["x", "y"]);
    }

    #[test]
    fn rejects_bad_combinations() {
        assert!(args(&["status", "--declared", "a", "--stop"]).is_err());
        assert!(args(&["status", "--declared", "a", "--manifest", "m"]).is_err());
        assert!(args(&["prune", "--declared", "a,,b"]).is_err());
        assert!(args(&["prune", "--declared", "my vm"]).is_err());
        assert!(args(&["prune", "--declared", "a", "--json=1"]).is_err());
        assert!(args(&["frobnicate"]).is_err());
        assert_eq!(args(&["status", "--help"]).unwrap_err(), ArgsError::Help);
    }
}
