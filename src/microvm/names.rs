//! The unit and VM names microvm.nix uses, and which of them systemd can address.
//!
//! microvm.nix's templates refer to the state directory as `/var/lib/microvms/%i`, with the
//! *escaped* instance string. So a VM name, a unit instance and a state directory name are the same
//! string, and only names made of characters that systemd allows unescaped in unit names can work.

use std::fmt::Write as _;

/// Template prefixes of the shared `PREFIX@.service` units the host module defines.
pub const TEMPLATE_PREFIXES: [&str; 6] = [
    "microvm",
    "microvm-tap-interfaces",
    "microvm-macvtap-interfaces",
    "microvm-pci-devices",
    "microvm-virtiofsd",
    "microvm-set-booted",
];

/// The per-VM oneshot unit that installs the runner link.
pub const INSTALL_PREFIX: &str = "install-microvm-";

/// The target that wants the autostarted VMs.
pub const TARGET: &str = "microvms.target";

/// What a unit file name means to microvm.nix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitName {
    /// A shared unit: a `PREFIX@.service` template or `microvms.target`.
    Shared,
    /// A unit of one VM (`PREFIX@NAME.service` or `install-microvm-NAME.service`).
    Instance { vm: String },
}

/// Classifies a unit name; `None` for units that have nothing to do with microvm.nix.
pub fn parse_unit(name: &str) -> Option<UnitName> {
    if name == TARGET {
        return Some(UnitName::Shared);
    }
    let base = name.strip_suffix(".service")?;
    if let Some(vm) = base.strip_prefix(INSTALL_PREFIX) {
        return (!vm.is_empty()).then(|| UnitName::Instance { vm: vm.to_owned() });
    }
    let (prefix, instance) = base.split_once('@')?;
    if !TEMPLATE_PREFIXES.contains(&prefix) {
        return None;
    }
    if instance.is_empty() {
        Some(UnitName::Shared)
    } else {
        Some(UnitName::Instance {
            vm: instance.to_owned(),
        })
    }
}

fn plain_unit_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b':' | b'-' | b'_' | b'.' | b'\\')
}

/// How `systemctl` would spell the name inside a unit name (invalid bytes become `\xNN`).
pub fn mangled(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if plain_unit_char(byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// Checks that `name` can be a microvm.nix VM; the error says why not, for a message.
pub fn check_vm_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a usable name"));
    }
    if name.len() > 200 {
        return Err("the name is longer than 200 bytes, too long for a unit name".into());
    }
    if !name.bytes().all(plain_unit_char) {
        return Err(format!(
            "the name contains characters that systemd must escape: `systemctl` would address \
             microvm@{}.service, whose %i points to /var/lib/microvms/{} and not to this name",
            mangled(name),
            mangled(name)
        ));
    }
    Ok(())
}

/// Network interface names the kernel accepts (`dev_valid_name`).
pub fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_microvm_units() {
        assert_eq!(parse_unit("microvm@.service"), Some(UnitName::Shared));
        assert_eq!(
            parse_unit("microvm-virtiofsd@.service"),
            Some(UnitName::Shared)
        );
        assert_eq!(parse_unit("microvms.target"), Some(UnitName::Shared));
        assert_eq!(
            parse_unit("microvm-tap-interfaces@web.service"),
            Some(UnitName::Instance { vm: "web".into() })
        );
        assert_eq!(
            parse_unit("install-microvm-db-1.service"),
            Some(UnitName::Instance { vm: "db-1".into() })
        );
        assert_eq!(parse_unit("install-microvm-.service"), None);
        assert_eq!(parse_unit("microvm@web.socket"), None);
        assert_eq!(parse_unit("microvmx@web.service"), None);
        assert_eq!(parse_unit("sshd.service"), None);
    }

    #[test]
    fn names_that_need_escaping_are_refused() {
        assert!(check_vm_name("web-1.example_a:b").is_ok());
        assert!(
            check_vm_name("my vm")
                .unwrap_err()
                .contains(r"microvm@my\x20vm.service")
        );
        assert!(check_vm_name("a@b").is_err());
        assert!(check_vm_name("ünï").is_err());
        assert!(check_vm_name("").is_err());
        assert!(check_vm_name("..").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(valid_interface("vm-web0"));
        assert!(!valid_interface("a-very-long-interface"));
        assert!(!valid_interface("a/b"));
        assert!(!valid_interface(""));
    }
}
