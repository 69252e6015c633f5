//! Turns the classified inventory into the list of steps `prune` carries out.
//!
//! The plan is a pure function of the inventory and the options, so `--dry-run` prints exactly
//! what a real run does, and the rules can be tested without a host.

use std::collections::BTreeSet;

use serde::Serialize;

use super::classify;
use super::scan::{self, Class, Inventory, Item, Kind, Problem, Vm, VmClass};

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
    /// A VM unit's own `.wants/`, `.requires/` or `.upholds/` directory.
    RemoveDependencyDir {
        path: String,
        vm: String,
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
            Step::RemoveDropIn { .. } | Step::RemoveDependencyDir { .. } => 5,
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
            | Step::RemoveDependencyDir { vm, .. }
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
            Step::RemoveDependencyDir { .. } => "remove-dependency-dir",
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
            | Step::RemoveDependencyDir { path, .. }
            | Step::RemoveGcRoot { path, .. }
            | Step::PurgeState { path, .. } => path,
            Step::DaemonReload => "",
        }
    }
}

pub struct Options<'a> {
    pub stop: bool,
    pub purge_state: &'a [String],
    /// `--purge-state-of-possibly-running`: a `booted` link does not stop a purge.
    pub purge_possibly_running: bool,
}

/// The steps, and what the admin should know about what is kept.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<Problem>,
}

/// The VMs that the configuration's own units declare but the given declaration omits. Each is
/// an error that stops the whole run: one of the two sources is wrong, and acting on either
/// could take down a VM that is still wanted.
pub fn contradictions(inv: &Inventory, source: &str) -> Vec<Problem> {
    inv.contradictions
        .iter()
        .map(|name| {
            let units = inv
                .declared_by_units
                .get(name)
                .map(|paths| paths.join(", "))
                .unwrap_or_default();
            Problem::error(
                Some(name),
                None,
                format!(
                    "VM '{name}' is declared by the active configuration ({units}, managed by \
                     the NixOS configuration), but {source} does not name it. One of them is \
                     wrong, so nothing was planned, stopped or deleted. Fix: give the host \
                     manifest of the running generation (/etc/persist-prep/microvm.json), or \
                     add '{name}' to --declared"
                ),
            )
        })
        .collect()
}

/// Why stopping a running orphan could take a kept VM's network down, if it could: stopping
/// `microvm@NAME` runs `tap-down` (`ip link delete`) for every interface its runner lists, and
/// after a rename a declared or imperative VM may list the same name.
pub fn interface_conflict(inv: &Inventory, vm: &Vm) -> Option<String> {
    let mut shared = Vec::new();
    let mut unknown = Vec::new();
    for other in inv.vms.values().filter(|o| o.name != vm.name) {
        // An orphan that runs outside systemd stays running whatever this run does.
        let stays = other.class.kept() || classify::runs_outside_systemd(&other.evidence).is_some();
        if !stays {
            continue;
        }
        match (&vm.interfaces, &other.interfaces) {
            (Some(mine), Some(theirs)) => {
                for interface in mine
                    .iter()
                    .filter(|i| theirs.iter().any(|t| t.name == i.name))
                {
                    shared.push(format!("{} (also '{}')", interface.name, other.name));
                }
            }
            (Some(mine), None) if mine.is_empty() => {}
            (None, Some(theirs)) if theirs.is_empty() => {}
            _ => unknown.push(other.name.clone()),
        }
    }
    if !shared.is_empty() {
        Some(format!("it shares {}", shared.join(", ")))
    } else if !unknown.is_empty() {
        Some(format!(
            "its interfaces or those of {} cannot be read, so a shared one cannot be ruled out",
            unknown.join(", ")
        ))
    } else {
        None
    }
}

/// Checks `--purge-state`: any bad name aborts the whole run before anything is changed.
pub fn check_purge(inv: &Inventory, options: &Options) -> Result<(), Vec<Problem>> {
    let mut errors = Vec::new();
    for name in options.purge_state {
        if let Some(reason) = purge_refusal(inv, options, name) {
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

fn purge_refusal(inv: &Inventory, options: &Options, name: &str) -> Option<String> {
    let state = &inv.state_dir;
    if inv.not_vms.contains(name) {
        return Some(format!(
            "{state}/{name} is not a VM (it has no current, booted, toplevel or flake, and no \
             unit or GC root names it); persist-prep does not delete it. Remove it by hand if \
             you must"
        ));
    }
    let Some(vm) = inv.vms.get(name) else {
        return Some(format!(
            "there is no state directory {state}/{name}; check the name with `persist-prep \
             microvm status`"
        ));
    };
    match vm.class {
        VmClass::Declared => Some(format!(
            "VM '{name}' is declared in the configuration, and its state directory holds its \
             disks. Remove it from `microvm.vms` and switch first, or drop --purge-state {name}"
        )),
        _ if vm.state_dir.is_none() => {
            Some(format!("VM '{name}' has no state directory {state}/{name}"))
        }
        VmClass::Autostarted => Some(format!(
            "VM '{name}' is named by microvm.autostart (the active microvms.target wants it), so \
             it starts at every boot. Remove it from microvm.autostart and switch first"
        )),
        VmClass::Invalid => Some(format!(
            "the state directory of '{name}' cannot be handled safely (see the error about it); \
             remove it by hand"
        )),
        VmClass::Imperative | VmClass::Orphaned => classify::purge_refusal(&vm.evidence)
            .map(|why| format!("{state}/{name} is kept: {why}"))
            .or_else(|| running_refusal(inv, options, vm)),
    }
}

/// A VM that may be running keeps its disks unless this very run stops it first.
fn running_refusal(inv: &Inventory, options: &Options, vm: &Vm) -> Option<String> {
    let name = &vm.name;
    let stops = options.stop && inv.live;
    if let (true, Some(why)) = (vm.running, interface_conflict(inv, vm)) {
        return Some(format!(
            "VM '{name}' is running and is not stopped by persist-prep: {why}"
        ));
    }
    if vm.running && !stops {
        return Some(format!(
            "VM '{name}' is running ({}); add --stop to stop it first",
            vm.active_units.join(", ")
        ));
    }
    if vm.booted && !stops && !options.purge_possibly_running {
        let why = if inv.live {
            "systemd runs none of its units, but a `booted` link can also mean it runs outside \
             systemd"
        } else {
            "--root is not the running system, so systemd cannot be asked"
        };
        return Some(format!(
            "{}/{name}/booted exists: VM '{name}' runs, or ran when the host went down ({why}). \
             On the running host add --stop to stop it first; offline, if you know that it does \
             not run, add --purge-state-of-possibly-running",
            inv.state_dir
        ));
    }
    None
}

fn removal(item: &Item) -> Option<Step> {
    let path = item.path.clone()?;
    let vm = item.vm.clone();
    match item.kind {
        Kind::EnablementLink => Some(Step::RemoveEnablementLink { path, vm }),
        Kind::UnitFile | Kind::Template => Some(Step::RemoveUnitFile { path, vm }),
        Kind::DropIn => Some(Step::RemoveDropIn { path, vm }),
        Kind::DependencyDir => Some(Step::RemoveDependencyDir {
            path,
            vm: vm.unwrap_or_default(),
        }),
        Kind::GcRoot => Some(Step::RemoveGcRoot {
            path,
            vm: vm.unwrap_or_default(),
        }),
        Kind::LoadedUnit | Kind::StateDir | Kind::Interface => None,
    }
}

/// Why a VM whose leftovers would go must be kept whole instead, if it must: it runs outside
/// systemd (or that cannot be ruled out), or it runs and `--stop` may not stop it.
fn keep_whole(inv: &Inventory, vm: &Vm, options: &Options) -> Option<Problem> {
    if let Some(pids) = classify::runs_outside_systemd(&vm.evidence) {
        return Some(outside_systemd_note(inv, vm, pids));
    }
    if let classify::Users::Unknown(why) = &vm.evidence.users {
        // It may run outside systemd, and its GC roots keep its runner from the collector.
        return Some(Problem::warning(
            Some(&vm.name),
            vm.state_dir.as_deref(),
            format!(
                "VM '{}' is orphaned, but whether a process runs it outside systemd cannot be \
                 known: {why}. Its units, GC roots and state are kept. Fix: run prune as root on \
                 a system with /proc",
                vm.name
            ),
        ));
    }
    if !(vm.running && options.stop) {
        return None;
    }
    if let Some(why) = interface_conflict(inv, vm) {
        return Some(shared_interface_note(vm, &why));
    }
    let why = match vm.class {
        VmClass::Orphaned => classify::stop_refusal(&vm.evidence)?,
        _ => return None,
    };
    Some(Problem::warning(
        Some(&vm.name),
        None,
        format!(
            "VM '{}' runs ({}) but is not stopped: {why} ({}). Its units are kept. Fix: check \
             `systemctl status microvm@{}.service`, stop it by hand if it is unwanted, then \
             prune again",
            vm.name,
            vm.active_units.join(", "),
            inv.state_dir,
            vm.name
        ),
    ))
}

/// Plans the steps of one VM whose leftovers go; `false` when it must stay (it still runs).
fn plan_vm(inv: &Inventory, vm: &Vm, purged: bool, options: &Options, plan: &mut Plan) -> bool {
    let mut stopped = Vec::new();
    if let Some(note) = keep_whole(inv, vm, options) {
        plan.notes.push(note);
        return false;
    }
    if purged && vm.booted && !vm.running && options.stop && inv.live {
        // `booted` without an active unit: stop anyway, so that the purge below waits for a
        // clean stop (a failed stop skips it) and nothing of it is left starting.
        plan.steps.push(Step::Stop {
            unit: format!("microvm@{}.service", vm.name),
            vm: vm.name.clone(),
        });
    }
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
            if let Some(note) = outside_paths_note(vm, path) {
                plan.notes.push(note);
            }
        }
    }
    true
}

/// The share sources, sockets and volumes of a purged VM that are not in its state directory:
/// the purge does not delete them, and the admin should know they are left.
fn outside_paths_note(vm: &Vm, dir: &str) -> Option<Problem> {
    let mut outside: Vec<String> = Vec::new();
    for (what, path) in &vm.runner_paths {
        let full = scan::absolute(dir, path);
        // The store (microvm.nix shares /nix/store read-only by default) is never the VM's.
        let nix = full == "/nix" || full.starts_with("/nix/");
        if !nix && full != dir && !full.starts_with(&format!("{dir}/")) {
            let line = format!("{full} ({what})");
            if !outside.contains(&line) {
                outside.push(line);
            }
        }
    }
    if outside.is_empty() {
        return None;
    }
    Some(Problem::warning(
        Some(&vm.name),
        Some(dir),
        format!(
            "purging {dir} does not delete what VM '{}' used outside it: {}. They are left as \
             they are; if nothing else uses them, you may delete them by hand",
            vm.name,
            outside.join(", ")
        ),
    ))
}

/// An orphan that a process runs without systemd (`microvm -r`): nothing of it is touched.
fn outside_systemd_note(inv: &Inventory, vm: &Vm, pids: &[u32]) -> Problem {
    let name = &vm.name;
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Problem::warning(
        Some(name),
        vm.state_dir.as_deref(),
        format!(
            "VM '{name}' is orphaned but runs outside systemd: process {pids} has its working \
             directory or an open file in {}/{name} (`microvm -r`?). No unit of it runs, so \
             persist-prep cannot stop it; its units, GC roots and state are kept. Fix: end that \
             process, then run prune again",
            inv.state_dir
        ),
    )
}

/// A running orphan that is not stopped because of a shared interface: what to do by hand.
fn shared_interface_note(vm: &Vm, why: &str) -> Problem {
    let name = &vm.name;
    Problem::warning(
        Some(name),
        None,
        format!(
            "VM '{name}' is orphaned and running, but it is not stopped: {why}. Stopping \
             microvm@{name}.service runs its tap-down, which deletes those interfaces under the \
             VM that still uses them. Its units, GC roots and state are kept. Fix, at a moment \
             when that VM may lose its network: `systemctl stop microvm@{name}.service`, then \
             `systemctl restart` the units of the VM sharing the interface (its tap-up recreates \
             it), then run prune again"
        ),
    )
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
            VmClass::Declared | VmClass::Autostarted | VmClass::Invalid => false,
        };
        if !gone {
            continue;
        }
        if plan_vm(inv, vm, purged, options, &mut plan) {
            going.insert(&vm.name);
        }
    }
    // An orphan that is not going was kept whole (it runs, outside systemd or unstopped, or
    // that cannot be ruled out): it still needs the templates.
    let kept_orphans = inv
        .vms
        .values()
        .filter(|vm| vm.class == VmClass::Orphaned && !going.contains(vm.name.as_str()))
        .map(|vm| vm.name.clone());
    let remaining_users: Vec<String> = inv
        .template_users()
        .into_iter()
        .chain(kept_orphans)
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
        if matches!(item.class, Class::Invalid | Class::Masked) {
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
                | Step::RemoveDependencyDir { .. }
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
            booted: false,
            active_units: vec![],
            failed_units: vec![],
            interfaces: Some(vec![]),
            evidence: classify::Evidence {
                declared: class == VmClass::Declared,
                imperative: class == VmClass::Imperative,
                has_state_dir: true,
                users: classify::Users::Pids(vec![]),
                ..classify::Evidence::default()
            },
            runner_paths: vec![],
            mentions: vec![],
            runner_unread: None,
        }
    }

    fn tap(name: &str, present: Option<bool>) -> Interface {
        Interface {
            name: name.into(),
            kind: "tap",
            present,
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

    /// The options of `prune` without the override for possibly running VMs.
    fn options(stop: bool, purge_state: &[String]) -> Options<'_> {
        Options {
            stop,
            purge_state,
            purge_possibly_running: false,
        }
    }

    /// The plan of `prune --stop`, purging nothing.
    fn stop_plan(inv: &Inventory) -> Plan {
        build(inv, &options(true, &[]))
    }

    /// Asserts that no step of the plan touches the VM.
    fn assert_no_step_for(plan: &Plan, vm: &str) {
        assert!(
            plan.steps.iter().all(|s| s.vm() != Some(vm)),
            "{:?}",
            plan.steps
        );
    }

    /// Asserts that a note of the plan contains the text.
    fn assert_note(plan: &Plan, text: &str) {
        assert!(
            plan.notes.iter().any(|n| n.message.contains(text)),
            "{:?}",
            plan.notes
        );
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
            tap("vm-old0", Some(true)),
            tap("vm-old1", Some(false)),
        ]);
        let mut gone = vm("gone", VmClass::Orphaned);
        gone.state_dir = None;
        gone.failed_units = vec!["microvm@gone.service".into()];
        let mut inv = Inventory {
            live: true,
            state_dir: "/var/lib/microvms".into(),
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
        let plan = build(&inv, &options(false, &[]));
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
        let plan = stop_plan(&inv);
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
        let plan = stop_plan(&inv);
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::DeleteInterface { .. }))
        );
        assert_note(&plan, "ip link");
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
                    purge_possibly_running: false,
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
        let declared = check_purge(&inv, &options(false, &names));
        assert!(declared.unwrap_err()[0].message.contains("declared"));
    }

    #[test]
    fn an_orphan_sharing_an_interface_with_a_kept_vm_is_not_stopped() {
        let mut inv = live_inventory();
        // `old` was renamed to `new`: both runners list vm-old0.
        let mut new = vm("new", VmClass::Declared);
        new.interfaces = Some(vec![tap("vm-old0", Some(true))]);
        inv.vms.insert("new".into(), new);
        let plan = stop_plan(&inv);
        assert_no_step_for(&plan, "old");
        // The rest goes on: the failed orphan is still reset.
        assert!(plan.steps.contains(&Step::ResetFailed {
            unit: "microvm@gone.service".into(),
            vm: "gone".into()
        }));
        let note = &plan.notes[0].message;
        assert!(note.contains("shares vm-old0 (also 'new')"), "{note}");
        assert!(
            note.contains("systemctl stop microvm@old.service"),
            "{note}"
        );
        let purge = ["old".to_owned()];
        let refused = check_purge(&inv, &options(true, &purge)).unwrap_err();
        assert!(refused[0].message.contains("is not stopped"), "{refused:?}");
        // Unreadable interfaces of a kept VM: sharing cannot be ruled out, so no stop either.
        inv.vms.get_mut("new").unwrap().interfaces = None;
        assert_no_step_for(&stop_plan(&inv), "old");
        // Without a kept VM's interface in common, the orphan is stopped as before.
        inv.vms.get_mut("new").unwrap().interfaces = Some(vec![]);
        assert!(
            stop_plan(&inv)
                .steps
                .iter()
                .any(|s| matches!(s, Step::Stop { vm, .. } if vm == "old"))
        );
    }

    #[test]
    fn a_booted_vm_is_purged_only_after_a_stop_or_with_the_override() {
        let mut inv = live_inventory();
        let mut crashed = vm("crashed", VmClass::Orphaned);
        crashed.booted = true;
        inv.vms.insert("crashed".into(), crashed);
        let purge = ["crashed".to_owned()];
        let refused = check_purge(&inv, &options(false, &purge)).unwrap_err();
        assert!(refused[0].message.contains("booted"), "{refused:?}");
        // Live with --stop: stopped first in the same run, then purged.
        assert!(check_purge(&inv, &options(true, &purge)).is_ok());
        let steps: Vec<Step> = build(&inv, &options(true, &purge))
            .steps
            .into_iter()
            .filter(|s| s.vm() == Some("crashed"))
            .collect();
        assert_eq!(
            steps,
            [
                Step::Stop {
                    unit: "microvm@crashed.service".into(),
                    vm: "crashed".into()
                },
                Step::PurgeState {
                    path: "/var/lib/microvms/crashed".into(),
                    vm: "crashed".into()
                }
            ]
        );
        // Offline --stop stops nothing, so only the override allows the purge.
        inv.live = false;
        assert!(check_purge(&inv, &options(true, &purge)).is_err());
        let overridden = Options {
            purge_possibly_running: true,
            ..options(false, &purge)
        };
        assert!(check_purge(&inv, &overridden).is_ok());
        // The override never overrules systemd: a running VM still needs --stop.
        inv.live = true;
        inv.vms.get_mut("crashed").unwrap().running = true;
        assert!(check_purge(&inv, &overridden).is_err());
    }

    #[test]
    fn an_orphan_that_may_run_outside_systemd_is_kept_whole() {
        let mut inv = live_inventory();
        inv.vms.get_mut("old").unwrap().evidence.users =
            classify::Users::Unknown("/proc is not mounted".into());
        let plan = stop_plan(&inv);
        assert_no_step_for(&plan, "old");
        assert_note(&plan, "/proc is not mounted");
        inv.vms.get_mut("old").unwrap().evidence.users = classify::Users::Pids(vec![4242]);
        inv.vms.get_mut("old").unwrap().evidence.systemd_running = false;
        let plan = stop_plan(&inv);
        assert_no_step_for(&plan, "old");
        assert_note(&plan, "process 4242");
    }

    #[test]
    fn blocked_inventory_plans_nothing() {
        let mut inv = live_inventory();
        inv.problems.push(Problem {
            blocking: true,
            ..Problem::error(None, None, "x".into())
        });
        assert!(stop_plan(&inv).steps.is_empty());
    }

    /// After a rename, an orphan run outside systemd (`microvm -r fw2`) lists the tap of the
    /// running orphan `old`: stopping `old` runs its tap-down, which deletes the tap under `fw2`,
    /// which nothing stops. It is kept whole, so `old` is not stopped.
    #[test]
    fn a_tap_shared_with_an_orphan_kept_whole_stops_nothing() {
        let mut inv = live_inventory();
        let mut fw2 = vm("fw2", VmClass::Orphaned);
        fw2.evidence.users = classify::Users::Pids(vec![42]);
        fw2.interfaces = Some(vec![tap("vm-old0", Some(true))]);
        inv.vms.insert("fw2".into(), fw2);
        let plan = stop_plan(&inv);
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::Stop { .. } | Step::DeleteInterface { .. })),
            "{:?}",
            plan.steps
        );
        assert_note(&plan, "vm-old0 (also 'fw2')");
    }
}
