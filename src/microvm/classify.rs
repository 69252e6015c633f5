//! Which VMs are orphans: a pure function of the evidence gathered for each VM.
//!
//! A VM is an orphan only when no piece of evidence says that it is wanted. The scan gathers the
//! evidence ([`Evidence`]); [`classify`] decides the class, [`stop_refusal`] whether an orphan's
//! unit may be stopped, and [`purge_refusal`] whether its state directory may be deleted. All three
//! read only the evidence, so every rule has a table-driven test here.

use serde::Serialize;

use super::scan::VmClass;

/// Which processes use the VM's directory (cwd or an open file in it), from `/proc`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Users {
    /// Not looked at: nothing of the VM would be removed anyway.
    NotChecked,
    /// `/proc` could not be read; the text says why.
    Unknown(String),
    /// These processes (none when empty).
    Pids(Vec<u32>),
}

/// Everything the scan found out about one VM: independent facts, each a yes or no.
#[allow(clippy::struct_excessive_bools)]
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Named by `--manifest` / `--declared`.
    pub declared: bool,
    /// The active `microvms.target` wants it (or the manifest's `microvm.autostart` names it).
    pub autostarted: bool,
    /// The configuration's own `install-microvm-NAME.service` exists.
    pub installed: bool,
    /// Made by `microvm -c` or `microvm.deploy.installOnHost` (GC roots or `old`, no `toplevel`).
    pub imperative: bool,
    /// The name or its state directory cannot be handled safely.
    pub invalid: bool,
    /// systemd runs one of its units.
    pub systemd_running: bool,
    /// Its state directory has `booted`.
    pub booted: bool,
    /// Its state directory is in the known, mounted stateDir (so its units' `%i` paths are its).
    pub has_state_dir: bool,
    pub users: Users,
    /// Kept VMs whose runners name a path in its state directory, with that path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub referenced_by: Vec<(String, String)>,
    /// Kept VMs whose runners cannot be read, with why: they may use a path in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references_unknown: Vec<(String, String)>,
}

impl Default for Evidence {
    fn default() -> Self {
        Evidence {
            declared: false,
            autostarted: false,
            installed: false,
            imperative: false,
            invalid: false,
            systemd_running: false,
            booted: false,
            has_state_dir: false,
            users: Users::NotChecked,
            referenced_by: Vec::new(),
            references_unknown: Vec::new(),
        }
    }
}

/// The class that the evidence gives a VM: anything that says "wanted" keeps it.
pub fn classify(e: &Evidence) -> VmClass {
    if e.invalid {
        VmClass::Invalid
    } else if e.declared || e.installed {
        VmClass::Declared
    } else if e.autostarted {
        VmClass::Autostarted
    } else if e.imperative {
        VmClass::Imperative
    } else {
        VmClass::Orphaned
    }
}

/// Whether the VM runs outside systemd: a process uses its directory, no unit of it runs.
pub fn runs_outside_systemd(e: &Evidence) -> Option<&[u32]> {
    match &e.users {
        Users::Pids(pids) if !pids.is_empty() && !e.systemd_running => Some(pids),
        _ => None,
    }
}

/// Whether a process using the VM's directory ends when the VM's running units stop, so that
/// systemd's view (running, `--stop`) covers it: it runs in one of them. `active` is `None` when
/// systemd was not asked (offline); a leftover process of a unit that is no longer active (a
/// failed unit with `KillMode=process`) is not covered either.
pub fn covered_by_stop(unit: Option<&str>, active: Option<&[String]>) -> bool {
    match (unit, active) {
        (Some(unit), Some(active)) => active.iter().any(|a| a == unit),
        _ => false,
    }
}

/// Why an orphan that systemd runs must not be stopped by persist-prep, if it must not.
/// `microvm@NAME` runs `<stateDir>/NAME/current/bin/microvm-run`: without that directory in the
/// known stateDir the running unit is not shown to be this orphan's.
pub fn stop_refusal(e: &Evidence) -> Option<String> {
    if classify(e) != VmClass::Orphaned {
        return Some("it is not an orphan".into());
    }
    if !e.has_state_dir {
        return Some(
            "it has no state directory in the stateDir, so the running unit is not shown to be \
             this VM's (it may run from another stateDir)"
                .into(),
        );
    }
    None
}

/// Why the VM's state directory must not be deleted, if it must not (besides what the plan
/// checks about stopping): a kept VM uses a path in it, a process uses it, or that is unknown.
pub fn purge_refusal(e: &Evidence) -> Option<String> {
    if let Some((vm, path)) = e.referenced_by.first() {
        return Some(format!(
            "the runner of the kept VM '{vm}' uses {path}, which is in it (a renamed VM's data?)"
        ));
    }
    if let Some((vm, why)) = e.references_unknown.first() {
        return Some(format!(
            "the runner of the kept VM '{vm}' cannot be read ({why}), so whether it uses a path \
             in it cannot be known (a renamed VM's data?). Fix: restore that VM's runner (switch, \
             or `microvm -u {vm}`), then purge again"
        ));
    }
    match &e.users {
        Users::Pids(pids) if !pids.is_empty() => Some(format!(
            "process {} uses it (its working directory or an open file is in it; a VM started \
             with `microvm -r`?)",
            pids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Users::Unknown(why) => Some(format!("whether a process uses it cannot be known: {why}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(change: impl Fn(&mut Evidence)) -> Evidence {
        let mut e = Evidence {
            has_state_dir: true,
            users: Users::Pids(vec![]),
            ..Evidence::default()
        };
        change(&mut e);
        e
    }

    #[test]
    fn any_evidence_of_being_wanted_keeps_a_vm() {
        let table: [(&str, Evidence, VmClass); 8] = [
            ("nothing", with(|_| {}), VmClass::Orphaned),
            ("declared", with(|e| e.declared = true), VmClass::Declared),
            ("installed", with(|e| e.installed = true), VmClass::Declared),
            (
                "autostarted only",
                with(|e| e.autostarted = true),
                VmClass::Autostarted,
            ),
            (
                "imperative",
                with(|e| e.imperative = true),
                VmClass::Imperative,
            ),
            (
                "autostarted and imperative",
                with(|e| {
                    e.autostarted = true;
                    e.imperative = true;
                }),
                VmClass::Autostarted,
            ),
            (
                "invalid wins",
                with(|e| {
                    e.invalid = true;
                    e.declared = true;
                }),
                VmClass::Invalid,
            ),
            // Running is no evidence of being wanted: a running orphan is still an orphan.
            (
                "running",
                with(|e| {
                    e.systemd_running = true;
                    e.booted = true;
                }),
                VmClass::Orphaned,
            ),
        ];
        for (case, evidence, class) in table {
            assert_eq!(classify(&evidence), class, "{case}");
        }
    }

    #[test]
    fn only_an_orphan_whose_unit_is_its_own_is_stopped() {
        let table: [(&str, Evidence, bool); 4] = [
            ("orphan with its state dir", with(|_| {}), true),
            ("no state dir", with(|e| e.has_state_dir = false), false),
            ("autostarted", with(|e| e.autostarted = true), false),
            ("imperative", with(|e| e.imperative = true), false),
        ];
        for (case, evidence, stops) in table {
            assert_eq!(stop_refusal(&evidence).is_none(), stops, "{case}");
        }
    }

    #[test]
    fn only_what_nothing_uses_is_purged() {
        let table: [(&str, Evidence, Option<&str>); 6] = [
            ("unused", with(|_| {}), None),
            (
                "a kept VM's runner unreadable",
                with(|e| {
                    e.references_unknown = vec![("firewall".into(), "gone".into())];
                }),
                Some("the runner of the kept VM 'firewall' cannot be read (gone)"),
            ),
            (
                "referenced by a kept VM",
                with(|e| {
                    e.referenced_by = vec![("firewall".into(), "/v/fw/var.img".into())];
                }),
                Some("'firewall' uses /v/fw/var.img"),
            ),
            (
                "used by a process",
                with(|e| e.users = Users::Pids(vec![42, 7])),
                Some("process 42, 7 uses it"),
            ),
            (
                "no /proc",
                with(|e| e.users = Users::Unknown("/proc is not mounted".into())),
                Some("cannot be known: /proc is not mounted"),
            ),
            ("not checked", with(|e| e.users = Users::NotChecked), None),
        ];
        for (case, evidence, refusal) in table {
            let got = purge_refusal(&evidence);
            match refusal {
                None => assert_eq!(got, None, "{case}"),
                Some(text) => assert!(
                    got.as_deref().unwrap_or("").contains(text),
                    "{case}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn only_a_process_of_a_running_unit_is_covered_by_its_stop() {
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a [String]>, bool);
        let active = ["microvm@old.service".to_owned()];
        let table: [Case; 5] = [
            (
                "running unit",
                Some("microvm@old.service"),
                Some(&active),
                true,
            ),
            ("offline", Some("microvm@old.service"), None, false),
            (
                "leftover of a failed unit",
                Some("microvm@old.service"),
                Some(&[]),
                false,
            ),
            (
                "another unit",
                Some("session-3.scope"),
                Some(&active),
                false,
            ),
            ("no unit", None, Some(&active), false),
        ];
        for (case, unit, active, covered) in table {
            assert_eq!(covered_by_stop(unit, active), covered, "{case}");
        }
    }

    #[test]
    fn outside_systemd_means_a_process_and_no_unit() {
        assert_eq!(
            runs_outside_systemd(&with(|e| e.users = Users::Pids(vec![9]))),
            Some(&[9][..])
        );
        let both = with(|e| {
            e.users = Users::Pids(vec![9]);
            e.systemd_running = true;
        });
        assert_eq!(runs_outside_systemd(&both), None);
        assert_eq!(runs_outside_systemd(&with(|_| {})), None);
    }
}
