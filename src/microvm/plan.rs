//! Turns the classified inventory into the list of steps `prune` carries out.
//!
//! The plan is a pure function of the inventory and the options, so `--dry-run` prints exactly
//! what a real run does, and the rules can be tested without a host.

use std::collections::BTreeSet;

use serde::Serialize;

use super::scan::{Class, Inventory, Item, Kind, Problem, Vm, VmClass};

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Step {
    Stop {
        unit: String,
        vm: String,
    },
    DeleteInterface {
        interface: String,
        kind: String,
        vm: String,
    },
    ResetFailed {
        unit: String,
        vm: String,
    },
    RemoveEnablementLink {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    RemoveUnitFile {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    RemoveDropIn {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        vm: Option<String>,
    },
    RemoveGcRoot {
        path: String,
        vm: String,
    },
    PurgeState {
        path: String,
        vm: String,
    },
    DaemonReload,
}

impl Step {
    /// Steps run in this order of phases: stop before deleting, reload last.
    fn phase(&self) -> u8 {
        match self {
            Step::Stop { .. } => 0,
            Step::DeleteInterface { .. } => 1,
            Step::ResetFailed { .. } => 2,
            Step::RemoveEnablementLink { .. } => 3,
            Step::RemoveUnitFile { .. } => 4,
            Step::RemoveDropIn { .. } => 5,
            Step::RemoveGcRoot { .. } => 6,
            Step::PurgeState { .. } => 7,
            Step::DaemonReload => 8,
        }
    }

    pub fn vm(&self) -> Option<&str> {
        match self {
            Step::Stop { vm, .. }
            | Step::DeleteInterface { vm, .. }
            | Step::ResetFailed { vm, .. }
            | Step::RemoveGcRoot { vm, .. }
            | Step::PurgeState { vm, .. } => Some(vm),
            Step::RemoveEnablementLink { vm, .. }
            | Step::RemoveUnitFile { vm, .. }
            | Step::RemoveDropIn { vm, .. } => vm.as_deref(),
            Step::DaemonReload => None,
        }
    }

    pub fn action(&self) -> &'static str {
        match self {
            Step::Stop { .. } => "stop",
            Step::DeleteInterface { .. } => "delete-interface",
            Step::ResetFailed { .. } => "reset-failed",
            Step::RemoveEnablementLink { .. } => "remove-enablement-link",
            Step::RemoveUnitFile { .. } => "remove-unit-file",
            Step::RemoveDropIn { .. } => "remove-drop-in",
            Step::RemoveGcRoot { .. } => "remove-gc-root",
            Step::PurgeState { .. } => "purge-state",
            Step::DaemonReload => "daemon-reload",
        }
    }

    /// The unit, interface or path the step acts on.
    pub fn target(&self) -> &str {
        match self {
            Step::Stop { unit, .. } | Step::ResetFailed { unit, .. } => unit,
            Step::DeleteInterface { interface, .. } => interface,
            Step::RemoveEnablementLink { path, .. }
            | Step::RemoveUnitFile { path, .. }
            | Step::RemoveDropIn { path, .. }
            | Step::RemoveGcRoot { path, .. }
            | Step::PurgeState { path, .. } => path,
            Step::DaemonReload => "",
        }
    }
}

pub struct Options<'a> {
    pub stop: bool,
    pub purge_state: &'a [String],
}

/// The steps, and what the admin should know about what is kept.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<Problem>,
}

/// Checks `--purge-state`: any bad name aborts the whole run before anything is changed.
pub fn check_purge(inv: &Inventory, options: &Options) -> Result<(), Vec<Problem>> {
    let mut errors = Vec::new();
    for name in options.purge_state {
        let vm = inv.vms.get(name);
        let reason = match vm {
            None => Some(format!(
                "there is no state directory {}/{name}; check the name with `persist-prep microvm \
                 status`",
                super::scan::STATE_ROOT
            )),
            Some(vm) => match vm.class {
                VmClass::Declared => Some(format!(
                    "VM '{name}' is declared in the configuration, and its state directory holds \
                     its disks. Remove it from `microvm.vms` and switch first, or drop \
                     --purge-state {name}"
                )),
                _ if vm.state_dir.is_none() => Some(format!(
                    "VM '{name}' has no state directory {}/{name}",
                    super::scan::STATE_ROOT
                )),
                VmClass::Invalid => Some(format!(
                    "the state directory of '{name}' cannot be handled safely (see the error \
                     about it); remove it by hand"
                )),
                VmClass::Imperative | VmClass::Orphaned if vm.running && !options.stop => {
                    Some(format!(
                        "VM '{name}' is running ({}); add --stop to stop it first",
                        vm.active_units.join(", ")
                    ))
                }
                VmClass::Imperative | VmClass::Orphaned => None,
            },
        };
        if let Some(reason) = reason {
            errors.push(Problem::error(
                Some(name),
                None,
                format!("--purge-state {name}: {reason}. Nothing was changed"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn removal(item: &Item) -> Option<Step> {
    let path = item.path.clone()?;
    let vm = item.vm.clone();
    match item.kind {
        Kind::EnablementLink => Some(Step::RemoveEnablementLink { path, vm }),
        Kind::UnitFile | Kind::Template => Some(Step::RemoveUnitFile { path, vm }),
        Kind::DropIn => Some(Step::RemoveDropIn { path, vm }),
        Kind::GcRoot => Some(Step::RemoveGcRoot {
            path,
            vm: vm.unwrap_or_default(),
        }),
        Kind::LoadedUnit | Kind::StateDir | Kind::Interface => None,
    }
}

/// Plans the steps of one VM whose leftovers go; `false` when it must stay (it still runs).
fn plan_vm(vm: &Vm, purged: bool, options: &Options, plan: &mut Plan) -> bool {
    let mut stopped = Vec::new();
    if vm.running {
        if !options.stop {
            plan.notes.push(Problem::warning(
                Some(&vm.name),
                None,
                format!(
                    "VM '{}' is orphaned but running ({}); its units, GC roots and state are \
                     kept so that it can still be stopped cleanly. Fix: rerun prune with --stop",
                    vm.name,
                    vm.active_units.join(", ")
                ),
            ));
            return false;
        }
        for unit in &vm.active_units {
            plan.steps.push(Step::Stop {
                unit: unit.clone(),
                vm: vm.name.clone(),
            });
            stopped.push(unit.clone());
        }
        match &vm.interfaces {
            Some(interfaces) => {
                for interface in interfaces.iter().filter(|i| i.present != Some(false)) {
                    plan.steps.push(Step::DeleteInterface {
                        interface: interface.name.clone(),
                        kind: interface.kind.to_owned(),
                        vm: vm.name.clone(),
                    });
                }
            }
            None => plan.notes.push(Problem::error(
                Some(&vm.name),
                vm.state_dir.as_deref(),
                format!(
                    "VM '{}' is stopped, but its tap/macvtap interfaces cannot be read from \
                     its runner (see above) and are not deleted. Fix: find them with \
                     `ip link` and `ip link delete` them",
                    vm.name
                ),
            )),
        }
    }
    for unit in vm.failed_units.iter().chain(&stopped) {
        plan.steps.push(Step::ResetFailed {
            unit: unit.clone(),
            vm: vm.name.clone(),
        });
    }
    if purged {
        if let Some(path) = &vm.state_dir {
            plan.steps.push(Step::PurgeState {
                path: path.clone(),
                vm: vm.name.clone(),
            });
        }
    }
    true
}

/// Builds the plan. Call `check_purge` first.
pub fn build(inv: &Inventory, options: &Options) -> Plan {
    let mut plan = Plan::default();
    if inv.blocked() {
        return plan;
    }
    let purge: BTreeSet<&str> = options.purge_state.iter().map(String::as_str).collect();
    // VMs whose leftovers go: orphans, and imperative VMs whose state is purged.
    let mut going: BTreeSet<&str> = BTreeSet::new();
    for vm in inv.vms.values() {
        let purged = purge.contains(vm.name.as_str());
        let gone = match vm.class {
            VmClass::Orphaned => true,
            VmClass::Imperative => purged,
            VmClass::Declared | VmClass::Invalid => false,
        };
        if !gone {
            continue;
        }
        if plan_vm(vm, purged, options, &mut plan) {
            going.insert(&vm.name);
        }
    }
    let remaining_users: Vec<String> = inv
        .template_users()
        .into_iter()
        .filter(|name| !going.contains(name.as_str()))
        .collect();
    for item in &inv.items {
        let belongs = if item.shared {
            remaining_users.is_empty()
        } else {
            item.vm.as_deref().is_some_and(|vm| going.contains(vm))
        };
        if !belongs {
            continue;
        }
        if item.class == Class::StoreManaged {
            plan.notes.push(Problem::warning(
                item.vm.as_deref(),
                item.path.as_deref(),
                format!(
                    "{} is kept: {}",
                    item.path.as_deref().unwrap_or(&item.name),
                    item.detail
                        .as_deref()
                        .unwrap_or("managed by the NixOS configuration")
                ),
            ));
            continue;
        }
        if item.class == Class::Invalid {
            continue;
        }
        if let Some(step) = removal(item) {
            plan.steps.push(step);
        }
    }
    let unit_change = plan.steps.iter().any(|s| {
        matches!(
            s,
            Step::RemoveEnablementLink { .. }
                | Step::RemoveUnitFile { .. }
                | Step::RemoveDropIn { .. }
        )
    });
    if inv.live && unit_change {
        plan.steps.push(Step::DaemonReload);
    }
    plan.steps.sort_by_key(Step::phase);
    plan
}

#[cfg(test)]
mod tests {
    use super::super::scan::Interface;
    use super::*;

    fn vm(name: &str, class: VmClass) -> Vm {
        Vm {
            name: name.into(),
            class,
            autostart: None,
            state_dir: Some(format!("/var/lib/microvms/{name}")),
            running: false,
            active_units: vec![],
            failed_units: vec![],
            interfaces: Some(vec![]),
        }
    }

    fn item(kind: Kind, class: Class, path: &str, vm: Option<&str>) -> Item {
        Item {
            kind,
            class,
            name: path.rsplit('/').next().unwrap().into(),
            path: Some(path.into()),
            vm: vm.map(Into::into),
            detail: None,
            shared: vm.is_none(),
        }
    }

    /// A live host with a running orphan `old` (two taps, one already gone) and a failed unit.
    fn live_inventory() -> Inventory {
        let mut old = vm("old", VmClass::Orphaned);
        old.running = true;
        old.active_units = vec![
            "microvm@old.service".into(),
            "microvm-tap-interfaces@old.service".into(),
        ];
        old.interfaces = Some(vec![
            Interface {
                name: "vm-old0".into(),
                kind: "tap",
                present: Some(true),
            },
            Interface {
                name: "vm-old1".into(),
                kind: "tap",
                present: Some(false),
            },
        ]);
        let mut gone = vm("gone", VmClass::Orphaned);
        gone.state_dir = None;
        gone.failed_units = vec!["microvm@gone.service".into()];
        let mut inv = Inventory {
            live: true,
            ..Inventory::default()
        };
        inv.vms.insert("old".into(), old);
        inv.vms.insert("gone".into(), gone);
        inv.items.push(item(
            Kind::DropIn,
            Class::Orphaned,
            "/etc/systemd/system/microvm@old.service.d",
            Some("old"),
        ));
        inv.items.push(item(
            Kind::Template,
            Class::TemplateInUse,
            "/etc/systemd/system/microvm@.service",
            None,
        ));
        inv
    }

    #[test]
    fn running_orphan_is_kept_without_stop() {
        let inv = live_inventory();
        let plan = build(
            &inv,
            &Options {
                stop: false,
                purge_state: &[],
            },
        );
        assert_eq!(
            plan.steps,
            [Step::ResetFailed {
                unit: "microvm@gone.service".into(),
                vm: "gone".into()
            }]
        );
        assert!(plan.notes[0].message.contains("--stop"));
    }

    #[test]
    fn stop_stops_deletes_present_taps_resets_and_reloads() {
        let inv = live_inventory();
        let plan = build(
            &inv,
            &Options {
                stop: true,
                purge_state: &[],
            },
        );
        let old = || "old".to_string();
        assert_eq!(
            plan.steps,
            [
                Step::Stop {
                    unit: "microvm@old.service".into(),
                    vm: old()
                },
                Step::Stop {
                    unit: "microvm-tap-interfaces@old.service".into(),
                    vm: old()
                },
                Step::DeleteInterface {
                    interface: "vm-old0".into(),
                    kind: "tap".into(),
                    vm: old()
                },
                Step::ResetFailed {
                    unit: "microvm@gone.service".into(),
                    vm: "gone".into()
                },
                Step::ResetFailed {
                    unit: "microvm@old.service".into(),
                    vm: old()
                },
                Step::ResetFailed {
                    unit: "microvm-tap-interfaces@old.service".into(),
                    vm: old()
                },
                Step::RemoveUnitFile {
                    path: "/etc/systemd/system/microvm@.service".into(),
                    vm: None
                },
                Step::RemoveDropIn {
                    path: "/etc/systemd/system/microvm@old.service.d".into(),
                    vm: Some(old())
                },
                Step::DaemonReload,
            ]
        );
    }

    #[test]
    fn unknown_interfaces_of_a_stopped_vm_are_an_error() {
        let mut inv = live_inventory();
        inv.vms.get_mut("old").unwrap().interfaces = None;
        let plan = build(
            &inv,
            &Options {
                stop: true,
                purge_state: &[],
            },
        );
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::DeleteInterface { .. }))
        );
        assert!(plan.notes.iter().any(|n| n.message.contains("ip link")));
    }

    #[test]
    fn purge_rules() {
        let mut inv = live_inventory();
        inv.vms.insert("web".into(), vm("web", VmClass::Declared));
        inv.vms.insert("imp".into(), vm("imp", VmClass::Imperative));
        let check = |names: &[&str], stop: bool| {
            let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
            check_purge(
                &inv,
                &Options {
                    stop,
                    purge_state: &names,
                },
            )
        };
        assert!(check(&["imp"], false).is_ok());
        assert!(
            check(&["web"], false).unwrap_err()[0]
                .message
                .contains("declared")
        );
        assert!(
            check(&["nope"], false).unwrap_err()[0]
                .message
                .contains("no state directory")
        );
        assert!(
            check(&["old"], false).unwrap_err()[0]
                .message
                .contains("--stop")
        );
        assert!(check(&["old"], true).is_ok());
        assert!(check(&["gone"], true).is_err());
        inv.vms.get_mut("web").unwrap().state_dir = None;
        let names = ["web".to_owned()];
        let declared = check_purge(
            &inv,
            &Options {
                stop: false,
                purge_state: &names,
            },
        );
        assert!(declared.unwrap_err()[0].message.contains("declared"));
    }

    #[test]
    fn blocked_inventory_plans_nothing() {
        let mut inv = live_inventory();
        inv.problems.push(Problem {
            blocking: true,
            ..Problem::error(None, None, "x".into())
        });
        assert!(
            build(
                &inv,
                &Options {
                    stop: true,
                    purge_state: &[]
                }
            )
            .steps
            .is_empty()
        );
    }
}
