//! The host manifest: the VMs the NixOS configuration declares and where their state lives, baked
//! in by the module.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    /// `microvm.stateDir`; optional so that manifests from before it was added stay valid.
    #[serde(rename = "stateDir")]
    state_dir: Option<String>,
    vms: Vec<RawVm>,
    /// `microvm.autostart`: may name VMs that are not in `microvm.vms` (installed by CI or by
    /// `microvm -c`); optional so that older manifests stay valid.
    #[serde(default)]
    autostart: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    #[serde(default)]
    autostart: bool,
}

/// Declared VM name -> whether it autostarts (unknown when given with `--declared`).
pub type Declared = BTreeMap<String, Option<bool>>;

/// microvm.nix's default `microvm.stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/microvms";

/// What the configuration declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub vms: Declared,
    /// Where the VMs' state directories are (`microvm.stateDir`), absolute, no trailing slash;
    /// `None` when not given (then the installed template says, or the default).
    pub state_dir: Option<String>,
    /// The VMs `microvm.autostart` names, declared or not.
    pub autostart: std::collections::BTreeSet<String>,
}

/// Reads and validates the host manifest; the error is a complete message.
pub fn load(path: &Path) -> Result<Host, String> {
    // Like the core's manifest: a FIFO or device there is refused at once, never read.
    let text = crate::manifest::read(path).map_err(|why| {
        format!(
            "cannot read the host manifest {}: {why}; pass the file the NixOS module writes, or \
             --declared NAMES",
            path.to_string_lossy(),
        )
    })?;
    parse(&text).map_err(|why| format!("invalid host manifest {}: {why}", path.to_string_lossy()))
}

pub fn parse(text: &str) -> Result<Host, String> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if raw.version != 1 {
        return Err(format!(
            "version {} is not supported (expected 1)",
            raw.version
        ));
    }
    let state_dir = match raw.state_dir {
        None => None,
        Some(dir) => Some(
            check_state_dir(&dir)
                .map_err(|why| format!("\"stateDir\": {dir:?} is not usable: {why}"))?,
        ),
    };
    let mut autostart = std::collections::BTreeSet::new();
    for name in raw.autostart {
        super::names::check_vm_name(&name)
            .map_err(|why| format!("\"autostart\": VM name {name:?} is not usable: {why}"))?;
        autostart.insert(name);
    }
    let mut declared = Declared::new();
    for vm in raw.vms {
        super::names::check_vm_name(&vm.name)
            .map_err(|why| format!("VM name {:?} is not usable: {why}", vm.name))?;
        if declared
            .insert(vm.name.clone(), Some(vm.autostart))
            .is_some()
        {
            return Err(format!("VM {:?} is listed twice", vm.name));
        }
    }
    for (name, autostarts) in &declared {
        if *autostarts == Some(true) {
            autostart.insert(name.clone());
        }
    }
    Ok(Host {
        vms: declared,
        state_dir,
        autostart,
    })
}

/// A state directory must be a plain absolute path: it is compared with GC root targets.
pub fn check_state_dir(dir: &str) -> Result<String, String> {
    let trimmed = dir.trim_end_matches('/');
    if !dir.starts_with('/') {
        return Err("it must be an absolute path".into());
    }
    if trimmed.is_empty() {
        return Err("it must not be / itself".into());
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("it must not contain empty, `.` or `..` components".into());
    }
    if dir.contains('\0') {
        return Err("it contains a NUL byte".into());
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contract_example() {
        let declared = parse(
            r#"{ "version": 1, "vms": [ { "name": "web", "autostart": true },
                                        { "name": "db", "autostart": false } ] }"#,
        )
        .unwrap();
        assert_eq!(declared.vms.get("web"), Some(&Some(true)));
        assert_eq!(declared.vms.get("db"), Some(&Some(false)));
        assert_eq!(declared.state_dir, None);
        assert!(declared.autostart.contains("web") && !declared.autostart.contains("db"));
    }

    #[test]
    fn reads_autostart_beyond_the_declared_vms() {
        let host =
            parse(r#"{"version":1,"vms":[{"name":"web"}],"autostart":["ci-runner"]}"#).unwrap();
        assert!(host.autostart.contains("ci-runner"));
        assert!(!host.vms.contains_key("ci-runner"));
        assert!(parse(r#"{"version":1,"vms":[],"autostart":["a b"]}"#).is_err());
    }

    #[test]
    fn reads_the_state_dir() {
        let host = parse(r#"{"version":1,"stateDir":"/srv/microvms/","vms":[]}"#).unwrap();
        assert_eq!(host.state_dir.as_deref(), Some("/srv/microvms"));
        for bad in ["srv", "/", "/srv/../etc", "/srv//x"] {
            let text = format!(r#"{{"version":1,"stateDir":"{bad}","vms":[]}}"#);
            assert!(
                parse(&text).unwrap_err().contains("stateDir"),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(
            parse(r#"{"version":2,"vms":[]}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(parse(r#"{"version":1,"vms":[],"extra":1}"#).is_err());
        assert!(parse(r#"{"version":1,"vms":[{"name":"a","autostart":true,"x":1}]}"#).is_err());
        assert!(
            parse(r#"{"version":1,"vms":[{"name":"a"},{"name":"a"}]}"#)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            parse(r#"{"version":1,"vms":[{"name":"a b"}]}"#)
                .unwrap_err()
                .contains("escape")
        );
        assert!(parse(r#"{"version":1}"#).is_err());
    }
}
