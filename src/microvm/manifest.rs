//! The host manifest: the VMs the NixOS configuration declares, baked in by the module.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: u32,
    vms: Vec<RawVm>,
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

/// Reads and validates the host manifest; the error is a complete message.
pub fn load(path: &Path) -> Result<Declared, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the host manifest {}: {}; pass the file the NixOS module writes, or \
             --declared NAMES",
            path.display(),
            super::rootfs::io_why(&e)
        )
    })?;
    parse(&text).map_err(|why| format!("invalid host manifest {}: {why}", path.display()))
}

pub fn parse(text: &str) -> Result<Declared, String> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if raw.version != 1 {
        return Err(format!(
            "version {} is not supported (expected 1)",
            raw.version
        ));
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
    Ok(declared)
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
        assert_eq!(declared.get("web"), Some(&Some(true)));
        assert_eq!(declared.get("db"), Some(&Some(false)));
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
