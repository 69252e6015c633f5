//! Finds everything microvm.nix leaves on a host and classifies it against the declared VMs.
//!
//! Reading only: the scan never changes anything, so `status` and `prune --dry-run` are safe
//! anywhere. What cannot be read is a problem; a *blocking* one means the inventory may be
//! incomplete, and then `prune` must not act on it at all.

use std::collections::{BTreeMap, BTreeSet};

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use serde::Serialize;

use super::manifest::Declared;
use super::names::{self, UnitName};
use super::rootfs::{self, FsError, Root, join, type_name};
use super::systemd::{LiveState, UnitState};

/// Where microvm.nix keeps each VM's state (`microvm.stateDir`'s default).
pub const STATE_ROOT: &str = "/var/lib/microvms";
/// Where `microvm -c` and deployments register GC roots.
pub const GCROOTS: &str = "/nix/var/nix/gcroots/microvm";
/// The unit directories an administrator or a tool can write to (`systemctl link/enable/edit`,
/// `set-property` with and without `--runtime`), in systemd's order of precedence.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/etc/systemd/system",
    "/run/systemd/system",
];

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    UnitFile,
    Template,
    DropIn,
    EnablementLink,
    LoadedUnit,
    StateDir,
    GcRoot,
    Interface,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    Declared,
    Imperative,
    Orphaned,
    TemplateInUse,
    UnusedTemplate,
    StoreManaged,
    /// Bad input (a name or file persist-prep cannot handle safely); never touched.
    Invalid,
}

/// One thing found on the host.
#[derive(Serialize, Clone, Debug)]
pub struct Item {
    pub kind: Kind,
    pub class: Class,
    /// Unit name, interface name, or the entry's file name.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Shared by all VMs (templates, `microvms.target`), not one VM's.
    #[serde(skip)]
    pub shared: bool,
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum VmClass {
    Declared,
    Imperative,
    Orphaned,
    Invalid,
}

impl VmClass {
    fn item_class(self) -> Class {
        match self {
            VmClass::Declared => Class::Declared,
            VmClass::Imperative => Class::Imperative,
            VmClass::Orphaned => Class::Orphaned,
            VmClass::Invalid => Class::Invalid,
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `tap` or `macvtap`.
    pub kind: &'static str,
    /// Whether the host has it; `None` when the host was not consulted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    pub name: String,
    pub class: VmClass,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    pub running: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active_units: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_units: Vec<String>,
    /// Interfaces listed by its runner; `None` when they could not be read.
    pub interfaces: Option<Vec<Interface>>,
}

impl Vm {
    fn new(name: &str, class: VmClass) -> Self {
        Vm {
            name: name.to_owned(),
            class,
            autostart: None,
            state_dir: None,
            running: false,
            active_units: Vec::new(),
            failed_units: Vec::new(),
            interfaces: Some(Vec::new()),
        }
    }
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Error,
    Warning,
}

/// Something the admin must know: what, where, why, and how to fix it, in `message`.
#[derive(Serialize, Clone, Debug)]
pub struct Problem {
    pub severity: Severity,
    /// The inventory may be incomplete, so `prune` changes nothing.
    pub blocking: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn error(vm: Option<&str>, path: Option<&str>, message: String) -> Self {
        Problem {
            severity: Severity::Error,
            blocking: false,
            vm: vm.map(str::to_owned),
            path: path.map(str::to_owned),
            message,
        }
    }

    pub fn warning(vm: Option<&str>, path: Option<&str>, message: String) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(vm, path, message)
        }
    }

    fn blocking(path: &str, message: String) -> Self {
        Problem {
            blocking: true,
            ..Problem::error(None, Some(path), message)
        }
    }
}

/// Everything found, classified.
#[derive(Serialize, Debug, Default)]
pub struct Inventory {
    /// Whether systemd and the network interfaces of this host were consulted.
    pub live: bool,
    pub vms: BTreeMap<String, Vm>,
    pub items: Vec<Item>,
    pub problems: Vec<Problem>,
}

impl Inventory {
    pub fn blocked(&self) -> bool {
        self.problems.iter().any(|p| p.blocking)
    }

    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    fn vm_class(&mut self, name: &str) -> VmClass {
        if let Some(vm) = self.vms.get(name) {
            return vm.class;
        }
        let class = if names::check_vm_name(name).is_ok() {
            VmClass::Orphaned
        } else {
            VmClass::Invalid
        };
        self.vms.insert(name.to_owned(), Vm::new(name, class));
        class
    }

    fn problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// VMs that keep the shared templates in use, as seen now.
    pub fn template_users(&self) -> Vec<String> {
        self.vms
            .values()
            .filter(|vm| match vm.class {
                VmClass::Declared | VmClass::Imperative | VmClass::Invalid => true,
                VmClass::Orphaned => vm.running,
            })
            .map(|vm| vm.name.clone())
            .collect()
    }
}

/// How to describe a file that should have been a directory (or could not be read as one).
fn unreadable(root: &Root, error: &FsError) -> String {
    let mut text = rootfs::why(error.errno);
    if error.errno == Errno::NOTDIR {
        match root.lstat(&error.path) {
            Ok(Some(stat)) if rootfs::file_type(&stat) == FileType::Symlink => {
                let target = root.readlink(&error.path).unwrap_or_default();
                text = format!("{text}: a part of its target {target} is not a directory");
            }
            Ok(Some(stat)) => {
                text = format!("{text}: it is {}", type_name(rootfs::file_type(&stat)));
            }
            _ => text = format!("{text}: a part of the path is not a directory"),
        }
    } else if error.errno == Errno::NOENT {
        if let Ok(target) = root.readlink(&error.path) {
            text = format!("it is a symbolic link to {target}, which does not exist");
        }
    } else if error.errno == Errno::LOOP {
        text = format!("{text}: a symbolic link loop");
    }
    text
}

const STORE_FIX: &str = "managed by the NixOS configuration and never changed by persist-prep; \
     to get rid of it, remove the VM from `microvm.vms` (or microvm.nix's host module from \
     `imports`) and switch";

pub fn scan(root: &Root, declared: &Declared, live: Option<&LiveState>) -> Inventory {
    let mut inv = Inventory {
        live: live.is_some(),
        ..Inventory::default()
    };
    for (name, autostart) in declared {
        let mut vm = Vm::new(name, VmClass::Declared);
        vm.autostart = *autostart;
        inv.vms.insert(name.clone(), vm);
    }
    scan_state(root, &mut inv, live);
    scan_gcroots(root, &mut inv);
    for dir in UNIT_DIRS {
        scan_unit_dir(root, &mut inv, dir);
    }
    if let Some(live) = live {
        scan_live_units(&mut inv, &live.units);
    }
    add_interface_items(&mut inv);
    finish_templates(&mut inv);
    inv
}

fn scan_state(root: &Root, inv: &mut Inventory, live: Option<&LiveState>) {
    match root.lstat(STATE_ROOT) {
        Ok(None) => return,
        Ok(Some(_)) => {}
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(STATE_ROOT, state_root_message(&why)));
            return;
        }
    }
    let entries = root
        .open_dir(STATE_ROOT)
        .and_then(|fd| rootfs::list_fd(&fd, STATE_ROOT));
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(STATE_ROOT, state_root_message(&why)));
            return;
        }
    };
    for entry in entries {
        let name = match entry.name {
            Ok(name) => name,
            Err(lossy) => {
                let path = join(STATE_ROOT, &lossy);
                invalid_state(inv, &lossy, &path, "its name is not valid UTF-8".into());
                continue;
            }
        };
        let path = join(STATE_ROOT, &name);
        if let Err(why) = names::check_vm_name(&name) {
            invalid_state(inv, &name, &path, why);
            continue;
        }
        match entry.file_type {
            FileType::Directory => scan_vm_dir(root, inv, &name, &path, live),
            FileType::Symlink => {
                let target = root.readlink(&path).unwrap_or_else(|e| format!("? ({e})"));
                let missing = if root.exists(&path).unwrap_or(false) {
                    ""
                } else {
                    ", which does not exist"
                };
                let why = format!(
                    "it is a symbolic link to {target}{missing}, not a directory; persist-prep \
                     does not follow it"
                );
                invalid_state(inv, &name, &path, why);
            }
            other => {
                let why = format!("it is {}, not a directory", type_name(other));
                invalid_state(inv, &name, &path, why);
            }
        }
    }
}

fn state_root_message(why: &str) -> String {
    format!(
        "cannot read the VM state directory {STATE_ROOT}: {why}. Without it imperative VMs cannot \
         be told from orphans, so prune changes nothing. Fix: make it a readable directory, or \
         remove it if this host has no VMs"
    )
}

/// A state directory entry that cannot be a microvm.nix VM: reported, kept, and it keeps the
/// templates (it might be a VM someone still uses). A declared VM stays declared: nothing of it
/// is ever removed, so its odd state directory only deserves a warning.
fn invalid_state(inv: &mut Inventory, name: &str, path: &str, why: String) {
    if let Some(vm) = inv
        .vms
        .get_mut(name)
        .filter(|vm| vm.class == VmClass::Declared)
    {
        vm.state_dir = Some(path.to_owned());
        vm.interfaces = None;
        inv.problems.push(Problem::warning(
            Some(name),
            Some(path),
            format!(
                "state directory {path} of the declared VM '{name}' is unusual: {why}. Its \
                 interfaces cannot be read; nothing of a declared VM is changed anyway"
            ),
        ));
        inv.items.push(Item {
            kind: Kind::StateDir,
            class: Class::Declared,
            name: name.to_owned(),
            path: Some(path.to_owned()),
            vm: Some(name.to_owned()),
            detail: Some(why),
            shared: false,
        });
        return;
    }
    inv.problem(Problem::error(
        Some(name),
        Some(path),
        format!(
            "VM state directory {path} cannot be handled: {why}. It is left alone, with \
             everything that names this VM. Fix: inspect it and rename or remove it by hand"
        ),
    ));
    let mut vm = Vm::new(name, VmClass::Invalid);
    vm.state_dir = Some(path.to_owned());
    vm.interfaces = None;
    inv.vms.insert(name.to_owned(), vm);
    inv.items.push(Item {
        kind: Kind::StateDir,
        class: Class::Invalid,
        name: name.to_owned(),
        path: Some(path.to_owned()),
        vm: Some(name.to_owned()),
        detail: Some(why),
        shared: false,
    });
}

/// A state directory is imperative when `microvm -c` made it (a `flake` and no `toplevel`).
fn classify_state(declared: bool, toplevel: bool, flake: bool) -> VmClass {
    if declared {
        VmClass::Declared
    } else if flake && !toplevel {
        VmClass::Imperative
    } else {
        VmClass::Orphaned
    }
}

fn scan_vm_dir(root: &Root, inv: &mut Inventory, name: &str, path: &str, live: Option<&LiveState>) {
    let dir = match root.open_dir(path) {
        Ok(dir) => dir,
        Err(e) => {
            let why = format!("cannot open it: {}", unreadable(root, &e));
            invalid_state(inv, name, path, why);
            return;
        }
    };
    let has = |entry: &str| {
        rustix::fs::statat(&dir, entry, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|stat| rootfs::file_type(&stat))
    };
    let toplevel = has("toplevel").is_some();
    let flake = has("flake").is_some();
    let declared = inv
        .vms
        .get(name)
        .is_some_and(|vm| vm.class == VmClass::Declared);
    let class = classify_state(declared, toplevel, flake);
    let mut details = Vec::new();
    if toplevel {
        details.push("toplevel".to_owned());
    }
    if flake {
        details.push("flake".to_owned());
    }
    // The runner links: `booted` is what runs (tap-down uses it), `current` what starts next.
    let mut runners = Vec::new();
    let mut unknown_interfaces = false;
    for link in ["booted", "current"] {
        let link_path = join(path, link);
        let Some(kind) = has(link) else { continue };
        let target = if kind == FileType::Symlink {
            root.readlink(&link_path).ok()
        } else {
            None
        };
        match root.exists(&link_path) {
            Ok(true) => {
                details.push(match &target {
                    Some(target) => format!("{link} -> {target}"),
                    None => link.to_owned(),
                });
                runners.push(link_path);
            }
            Ok(false) => {
                let target = target.unwrap_or_default();
                details.push(format!("{link} -> {target} (missing)"));
                unknown_interfaces = true;
                inv.problem(Problem::warning(
                    Some(name),
                    Some(&link_path),
                    format!(
                        "VM '{name}': {link_path} is a broken symbolic link to {target} (probably \
                         garbage-collected), so its tap/macvtap interfaces cannot be read and \
                         will not be deleted. Fix: if the VM still runs, find them with \
                         `ip link` and delete them by hand"
                    ),
                ));
            }
            Err(e) => {
                details.push(format!("{link} (unreadable)"));
                unknown_interfaces = true;
                inv.problem(Problem::warning(
                    Some(name),
                    Some(&link_path),
                    format!(
                        "VM '{name}': cannot follow {link_path}: {}; its interfaces cannot be \
                         read and will not be deleted",
                        unreadable(root, &e)
                    ),
                ));
            }
        }
    }
    let (interfaces, unreadable_list) = read_interfaces(root, inv, name, &runners, live);
    unknown_interfaces |= unreadable_list;
    let vm = inv
        .vms
        .entry(name.to_owned())
        .or_insert_with(|| Vm::new(name, class));
    vm.class = class;
    vm.state_dir = Some(path.to_owned());
    vm.interfaces = if unknown_interfaces && runners.is_empty() {
        None
    } else {
        Some(interfaces)
    };
    inv.items.push(Item {
        kind: Kind::StateDir,
        class: class.item_class(),
        name: name.to_owned(),
        path: Some(path.to_owned()),
        vm: Some(name.to_owned()),
        detail: (!details.is_empty()).then(|| details.join(", ")),
        shared: false,
    });
}

/// Reads the tap/macvtap interfaces the runners list; `true` when a list could not be read.
fn read_interfaces(
    root: &Root,
    inv: &mut Inventory,
    name: &str,
    runners: &[String],
    live: Option<&LiveState>,
) -> (Vec<Interface>, bool) {
    let mut unknown = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    for runner in runners {
        for (file, kind) in [("tap-interfaces", "tap"), ("macvtap-interfaces", "macvtap")] {
            let list = format!("{runner}/share/microvm/{file}");
            match root.read_text(&list) {
                Ok(None) => {}
                Ok(Some(text)) => {
                    for line in text.lines() {
                        let Some(ifname) = line.split_whitespace().next() else {
                            continue;
                        };
                        if !names::valid_interface(ifname) {
                            inv.problem(Problem::warning(
                                Some(name),
                                Some(&list),
                                format!("{list} lists {ifname:?}, which is not an interface name; ignored"),
                            ));
                            continue;
                        }
                        if !interfaces.iter().any(|i| i.name == ifname) {
                            interfaces.push(Interface {
                                name: ifname.to_owned(),
                                kind,
                                present: live.map(|l| l.interfaces.contains(ifname)),
                            });
                        }
                    }
                }
                Err(e) => {
                    unknown = true;
                    inv.problem(Problem::warning(
                        Some(name),
                        Some(&list),
                        format!(
                            "VM '{name}': cannot read {list}: {}; its interfaces will not be deleted",
                            unreadable(root, &e)
                        ),
                    ));
                }
            }
        }
    }
    (interfaces, unknown)
}

/// Which VM a GC root belongs to: its target (`/var/lib/microvms/NAME/current`), else its name
/// (`NAME`, `booted-NAME`, `old-NAME`).
fn gcroot_vm(inv: &Inventory, entry: &str, target: &str) -> String {
    if let Some(rest) = target
        .strip_prefix(STATE_ROOT)
        .and_then(|r| r.strip_prefix('/'))
    {
        if let Some(vm) = rest.split('/').next().filter(|vm| !vm.is_empty()) {
            return vm.to_owned();
        }
    }
    let stripped = ["booted-", "old-"]
        .iter()
        .find_map(|prefix| entry.strip_prefix(prefix));
    match stripped {
        Some(rest) if inv.vms.contains_key(rest) || !inv.vms.contains_key(entry) => rest.to_owned(),
        _ => entry.to_owned(),
    }
}

fn scan_gcroots(root: &Root, inv: &mut Inventory) {
    match root.lstat(GCROOTS) {
        Ok(None) => return,
        Ok(Some(_)) => {}
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(GCROOTS, gcroots_message(&why)));
            return;
        }
    }
    let entries = match root
        .open_dir(GCROOTS)
        .and_then(|fd| rootfs::list_fd(&fd, GCROOTS))
    {
        Ok(entries) => entries,
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(GCROOTS, gcroots_message(&why)));
            return;
        }
    };
    for entry in entries {
        let (name, utf8) = match entry.name {
            Ok(name) => (name, true),
            Err(lossy) => (lossy, false),
        };
        let path = join(GCROOTS, &name);
        if !utf8 || entry.file_type != FileType::Symlink {
            let why = if utf8 {
                format!("it is {}, not a symbolic link", type_name(entry.file_type))
            } else {
                "its name is not valid UTF-8".to_owned()
            };
            inv.problem(Problem::error(
                None,
                Some(&path),
                format!("GC root {path} cannot be handled: {why}. It is left alone; inspect it"),
            ));
            inv.items.push(Item {
                kind: Kind::GcRoot,
                class: Class::Invalid,
                name,
                path: Some(path),
                vm: None,
                detail: Some(why),
                shared: false,
            });
            continue;
        }
        let target = match root.readlink(&path) {
            Ok(target) => target,
            Err(e) => {
                inv.problem(Problem::blocking(&path, gcroots_message(&e.to_string())));
                continue;
            }
        };
        let vm = gcroot_vm(inv, &name, &target);
        let class = inv.vm_class(&vm).item_class();
        inv.items.push(Item {
            kind: Kind::GcRoot,
            class,
            name,
            path: Some(path),
            vm: Some(vm),
            detail: Some(format!("-> {target}")),
            shared: false,
        });
    }
}

fn gcroots_message(why: &str) -> String {
    format!(
        "cannot read the MicroVM GC roots in {GCROOTS}: {why}. prune changes nothing while it \
         cannot see them. Fix: make it a readable directory of symbolic links"
    )
}

fn unit_dir_message(dir: &str, why: &str) -> String {
    format!(
        "cannot read unit directory {dir}: {why}. prune changes nothing while a unit directory \
         cannot be read. Fix: repair or remove it (systemd cannot use it either)"
    )
}

fn scan_unit_dir(root: &Root, inv: &mut Inventory, dir: &str) {
    match root.lstat(dir) {
        Ok(None) => return,
        Ok(Some(_)) => {}
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(dir, unit_dir_message(dir, &why)));
            return;
        }
    }
    let Some((fd, entries)) = list_unit_dir(root, inv, dir) else {
        return;
    };
    let managed = root.managed(&fd);
    for entry in entries {
        let name = match entry.name {
            Ok(name) => name,
            Err(lossy) => {
                if lossy.contains("microvm") {
                    let path = join(dir, &lossy);
                    inv.problem(Problem::error(
                        None,
                        Some(&path),
                        format!("{path}: the name is not valid UTF-8; left alone. Inspect it"),
                    ));
                }
                continue;
            }
        };
        let path = join(dir, &name);
        let link = entry.file_type == FileType::Symlink;
        // A drop-in directory may also be a symlink to one; then only the link is removed.
        if let Some(unit) = name.strip_suffix(".d").filter(|_| link) {
            if let Some(parsed) = names::parse_unit(unit) {
                let target = root.readlink(&path).ok();
                unit_item(inv, Kind::DropIn, unit, &path, &parsed, managed, target);
            }
            continue;
        }
        if entry.file_type == FileType::Directory {
            if let Some(unit) = name.strip_suffix(".d") {
                if let Some(parsed) = names::parse_unit(unit) {
                    unit_item(inv, Kind::DropIn, unit, &path, &parsed, managed, None);
                }
            } else if [".wants", ".requires", ".upholds"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
            {
                scan_dependency_dir(root, inv, &path);
            }
            continue;
        }
        if let Some(parsed) = names::parse_unit(&name) {
            let kind = match parsed {
                UnitName::Shared => Kind::Template,
                UnitName::Instance { .. } => Kind::UnitFile,
            };
            let target = link.then(|| root.readlink(&path).ok()).flatten();
            unit_item(inv, kind, &name, &path, &parsed, managed, target);
        }
    }
}

/// Opens and lists a unit directory; one that cannot be read makes the inventory incomplete.
fn list_unit_dir(
    root: &Root,
    inv: &mut Inventory,
    dir: &str,
) -> Option<(std::os::fd::OwnedFd, Vec<rootfs::Entry>)> {
    match root
        .open_dir(dir)
        .and_then(|fd| rootfs::list_fd(&fd, dir).map(|entries| (fd, entries)))
    {
        Ok(found) => Some(found),
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(dir, unit_dir_message(dir, &why)));
            None
        }
    }
}

fn scan_dependency_dir(root: &Root, inv: &mut Inventory, dir: &str) {
    let Some((fd, entries)) = list_unit_dir(root, inv, dir) else {
        return;
    };
    let managed = root.managed(&fd);
    for entry in entries {
        let Ok(name) = entry.name else { continue };
        let Some(parsed) = names::parse_unit(&name) else {
            continue;
        };
        let path = join(dir, &name);
        let target = root.readlink(&path).ok();
        unit_item(
            inv,
            Kind::EnablementLink,
            &name,
            &path,
            &parsed,
            managed,
            target,
        );
    }
}

fn unit_item(
    inv: &mut Inventory,
    kind: Kind,
    unit: &str,
    path: &str,
    parsed: &UnitName,
    managed: Option<&str>,
    target: Option<String>,
) {
    let mut detail: Vec<String> = target.map(|t| format!("-> {t}")).into_iter().collect();
    let (vm, mut class, shared) = match parsed {
        UnitName::Shared => (None, Class::UnusedTemplate, true),
        UnitName::Instance { vm } => (Some(vm.clone()), inv.vm_class(vm).item_class(), false),
    };
    if let (Some(vm), Class::Invalid) = (&vm, class) {
        if let Err(why) = names::check_vm_name(vm) {
            inv.problem(Problem::error(
                Some(vm),
                Some(path),
                format!("{path} names VM {vm:?}, which cannot be a microvm.nix VM: {why}. Left alone; remove it by hand if unused"),
            ));
        }
    }
    if let Some(reason) = managed {
        if class != Class::Invalid {
            class = Class::StoreManaged;
        }
        detail.push(format!("{reason}; {STORE_FIX}"));
    }
    inv.items.push(Item {
        kind,
        class,
        name: unit.to_owned(),
        path: Some(path.to_owned()),
        vm,
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
        shared,
    });
}

fn is_running(state: &UnitState) -> bool {
    matches!(
        state.active.as_str(),
        "active" | "activating" | "deactivating" | "reloading" | "refreshing"
    )
}

fn scan_live_units(inv: &mut Inventory, units: &[UnitState]) {
    for unit in units {
        let Some(parsed) = names::parse_unit(&unit.name) else {
            continue;
        };
        let detail = Some(format!("{} {} {}", unit.load, unit.active, unit.sub));
        match parsed {
            UnitName::Shared => inv.items.push(Item {
                kind: Kind::LoadedUnit,
                class: Class::UnusedTemplate,
                name: unit.name.clone(),
                path: None,
                vm: None,
                detail,
                shared: true,
            }),
            UnitName::Instance { vm } => {
                let class = inv.vm_class(&vm).item_class();
                let entry = inv.vms.get_mut(&vm).expect("vm_class inserts");
                if is_running(unit) {
                    entry.running = true;
                    entry.active_units.push(unit.name.clone());
                } else if unit.active == "failed" {
                    entry.failed_units.push(unit.name.clone());
                }
                inv.items.push(Item {
                    kind: Kind::LoadedUnit,
                    class,
                    name: unit.name.clone(),
                    path: None,
                    vm: Some(vm),
                    detail,
                    shared: false,
                });
            }
        }
    }
    // Stop the VM itself first: its helpers are PartOf it and follow.
    for vm in inv.vms.values_mut() {
        vm.active_units.sort_by_key(|unit| {
            if unit.starts_with("microvm@") {
                0
            } else if unit.starts_with(names::INSTALL_PREFIX) {
                2
            } else {
                1
            }
        });
    }
}

fn add_interface_items(inv: &mut Inventory) {
    let mut items = Vec::new();
    for vm in inv.vms.values() {
        for interface in vm.interfaces.iter().flatten() {
            let presence = match interface.present {
                Some(true) => "present",
                Some(false) => "absent",
                None => "presence not checked (not the running system)",
            };
            items.push(Item {
                kind: Kind::Interface,
                class: vm.class.item_class(),
                name: interface.name.clone(),
                path: None,
                vm: Some(vm.name.clone()),
                detail: Some(format!("{}, {presence}", interface.kind)),
                shared: false,
            });
        }
    }
    inv.items.extend(items);
}

fn finish_templates(inv: &mut Inventory) {
    let users = inv.template_users();
    let used: BTreeSet<&String> = users.iter().collect();
    for item in &mut inv.items {
        if item.shared && item.class == Class::UnusedTemplate && !used.is_empty() {
            item.class = Class::TemplateInUse;
            let note = format!(
                "used by {}",
                used.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            item.detail = Some(match item.detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
    }
}
