//! Finds everything microvm.nix leaves on a host and classifies it against the declared VMs.
//!
//! Reading only: the scan never changes anything, so `status` and `prune --dry-run` are safe
//! anywhere. What cannot be read is a problem; a *blocking* one means the inventory may be
//! incomplete, and then `prune` must not act on it at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use serde::Serialize;

use super::classify::{self, Evidence, Users};
use super::manifest::Host;
use super::names::{self, UnitName};
use super::rootfs::{self, FsError, Root, join, type_name};
use super::systemd::{LiveState, UnitState};
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
    /// A VM unit's own `.wants/`, `.requires/` or `.upholds/` directory.
    DependencyDir,
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
    /// A GC root that points outside the state directory: whose it is cannot be known; kept.
    Unknown,
    /// A directory in the state directory that is no VM (`lost+found`, `.snapshots`), or a file
    /// there (a disk image a VM may use); kept.
    NotAVm,
    /// Not in `microvm.vms`, but the active `microvms.target` wants it; kept.
    Autostarted,
    /// A unit masked by the admin (`systemctl mask`, a link to `/dev/null`): a decision, kept.
    Masked,
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
    /// Only `microvm.autostart` (the active `microvms.target`) wants it.
    Autostarted,
    Imperative,
    Orphaned,
    Invalid,
}

impl VmClass {
    fn item_class(self) -> Class {
        match self {
            VmClass::Declared => Class::Declared,
            VmClass::Autostarted => Class::Autostarted,
            VmClass::Imperative => Class::Imperative,
            VmClass::Orphaned => Class::Orphaned,
            VmClass::Invalid => Class::Invalid,
        }
    }

    /// Whether the VM stays (its runner's paths must not be deleted under it).
    pub fn kept(self) -> bool {
        self != VmClass::Orphaned
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
    /// The state directory has `booted`: the VM runs, or ran when the host went down.
    pub booted: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub active_units: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_units: Vec<String>,
    /// Interfaces listed by its runner; `None` when they could not be read.
    pub interfaces: Option<Vec<Interface>>,
    /// What the scan found out about it; its class follows from this alone.
    pub evidence: Evidence,
    /// Paths its runners name (share sources, sockets, volumes), each with what it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runner_paths: Vec<(String, String)>,
    /// Every path its runner's script (and the config files it names) mentions, whatever the
    /// hypervisor's syntax: what a kept VM may use in another VM's directory.
    #[serde(skip)]
    pub mentions: Vec<String>,
    /// Why its runner (and so what it uses) cannot be read, when it cannot.
    #[serde(skip)]
    pub runner_unread: Option<String>,
}

impl Vm {
    fn new(name: &str, class: VmClass) -> Self {
        Vm {
            name: name.to_owned(),
            class,
            autostart: None,
            state_dir: None,
            running: false,
            booted: false,
            active_units: Vec::new(),
            failed_units: Vec::new(),
            interfaces: Some(Vec::new()),
            evidence: Evidence {
                declared: class == VmClass::Declared,
                invalid: class == VmClass::Invalid,
                ..Evidence::default()
            },
            runner_paths: Vec::new(),
            mentions: Vec::new(),
            runner_unread: None,
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
    /// The VM state directory (`microvm.stateDir`).
    pub state_dir: String,
    /// VMs the active configuration's own units declare (store-managed
    /// `install-microvm-NAME.service`), with those units' paths.
    #[serde(skip)]
    pub declared_by_units: BTreeMap<String, Vec<String>>,
    /// Of those, the VMs that the given declaration (`--manifest`/`--declared`) omits.
    #[serde(skip)]
    pub contradictions: BTreeSet<String>,
    /// Directories in the state directory that are not VMs.
    #[serde(skip)]
    pub not_vms: BTreeSet<String>,
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
                VmClass::Declared
                | VmClass::Autostarted
                | VmClass::Imperative
                | VmClass::Invalid => true,
                VmClass::Orphaned => vm.running,
            })
            .map(|vm| vm.name.clone())
            .collect()
    }
}

/// How to describe a file that should have been a directory (or could not be read as one).
fn unreadable(root: &Root, error: &FsError) -> String {
    let mut text = crate::report::errno_words(error.errno);
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
     to get rid of it, remove the VM from `microvm.vms` and `microvm.autostart` (or microvm.nix's \
     host module from `imports`) and switch";

pub fn scan(root: &Root, host: &Host, state_dir: &str, live: Option<&LiveState>) -> Inventory {
    let mut inv = Inventory {
        live: live.is_some(),
        state_dir: state_dir.to_owned(),
        ..Inventory::default()
    };
    for (name, autostart) in &host.vms {
        let mut vm = Vm::new(name, VmClass::Declared);
        vm.autostart = *autostart;
        inv.vms.insert(name.clone(), vm);
    }
    let gcroots = read_gcroots(root, &mut inv);
    let bare = scan_state(root, &mut inv, live, &gcroots);
    gcroot_items(&mut inv, &gcroots);
    for dir in UNIT_DIRS {
        scan_unit_dir(root, &mut inv, dir);
    }
    if let Some(live) = live {
        scan_live_units(&mut inv, &live.units);
    }
    resolve_bare_dirs(root, &mut inv, live, bare, &gcroots);
    units_declare(&mut inv);
    autostart_evidence(root, &mut inv, host);
    for vm in inv.vms.values_mut() {
        vm.evidence.systemd_running = vm.running;
        vm.class = classify::classify(&vm.evidence);
    }
    // The directories that could be purged, with the identity of everything in them.
    let dirs: Vec<(String, String)> = inv
        .vms
        .values()
        .filter(|vm| matches!(vm.class, VmClass::Orphaned | VmClass::Imperative))
        .filter_map(|vm| Some((vm.name.clone(), vm.state_dir.clone()?)))
        .collect();
    let owners = super::proc::identities(root, &dirs);
    reference_evidence(root, &mut inv, &dirs, &owners);
    user_evidence(&mut inv, &dirs, &owners);
    sync_item_classes(&mut inv);
    add_interface_items(&mut inv);
    finish_templates(&mut inv);
    inv
}

/// A directory in the state directory with none of the entries microvm.nix makes; whether it is
/// a VM's depends on whether anything else names it, which is known only after the whole scan.
struct BareDir {
    name: String,
    path: String,
    /// Why the name cannot be a VM's, when it cannot.
    bad_name: Option<String>,
}

/// Scans the state directory; returns the bare directories for [`resolve_bare_dirs`].
fn scan_state(
    root: &Root,
    inv: &mut Inventory,
    live: Option<&LiveState>,
    gcroots: &[GcRoot],
) -> Vec<BareDir> {
    let state_root = inv.state_dir.clone();
    let mut bare = Vec::new();
    match root.lstat(&state_root) {
        Ok(None) => return bare,
        Ok(Some(_)) => {}
        Err(e) => {
            let why = unreadable(root, &e);
            let message = state_root_message(&state_root, &why);
            inv.problem(Problem::blocking(&state_root, message));
            return bare;
        }
    }
    let entries = root
        .open_dir(&state_root)
        .and_then(|fd| rootfs::list_fd(&fd, &state_root));
    let entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            let why = unreadable(root, &e);
            let message = state_root_message(&state_root, &why);
            inv.problem(Problem::blocking(&state_root, message));
            return bare;
        }
    };
    for entry in entries {
        let name = match entry.name {
            Ok(name) => name,
            Err(lossy) => {
                let path = join(&state_root, &lossy);
                invalid_state(inv, &lossy, &path, "its name is not valid UTF-8".into());
                continue;
            }
        };
        let path = join(&state_root, &name);
        let bad_name = names::check_vm_name(&name).err();
        let declared = inv
            .vms
            .get(&name)
            .is_some_and(|vm| vm.class == VmClass::Declared);
        if entry.file_type == FileType::Directory && !declared && !has_vm_entries(root, &path) {
            bare.push(BareDir {
                name,
                path,
                bad_name,
            });
            continue;
        }
        if entry.file_type == FileType::RegularFile && !inv.vms.contains_key(&name) {
            not_a_vm(inv, &name, &path, "a file");
            continue;
        }
        if let Some(why) = bad_name {
            invalid_state(inv, &name, &path, why);
            unread_runner(root, inv, &name, &path);
            continue;
        }
        match entry.file_type {
            FileType::Directory => scan_vm_dir(root, inv, &name, &path, live, gcroots),
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
                unread_runner(root, inv, &name, &path);
            }
            FileType::RegularFile => not_a_vm(inv, &name, &path, "a file"),
            other => {
                let why = format!("it is {}, not a directory", type_name(other));
                invalid_state(inv, &name, &path, why);
            }
        }
    }
    bare
}

/// A state entry the scan does not walk (a symbolic link, a name systemd must escape) may still
/// hold a runner that a VM runs from: what that runner uses is then unknown.
fn unread_runner(root: &Root, inv: &mut Inventory, name: &str, path: &str) {
    let runner = ["current", "booted"]
        .iter()
        .find(|link| match root.exists(&join(path, link)) {
            Ok(found) => found,
            // A link to a file holds no runner; anything else cannot be told.
            Err(e) => e.errno != Errno::NOTDIR,
        });
    if let (Some(link), Some(vm)) = (runner, inv.vms.get_mut(name)) {
        vm.runner_unread = Some(format!(
            "{} is not followed: {path} cannot be handled",
            join(path, link)
        ));
    }
}

/// A file directly in the stateDir (a disk image that a VM's volume may name): no VM, and not
/// persist-prep's to judge. Kept without a complaint: the host is fine.
fn not_a_vm(inv: &mut Inventory, name: &str, path: &str, what: &str) {
    inv.not_vms.insert(name.to_owned());
    inv.items.push(Item {
        kind: Kind::StateDir,
        class: Class::NotAVm,
        name: name.to_owned(),
        path: Some(path.to_owned()),
        vm: None,
        detail: Some(format!("{what}, not a VM's directory: kept")),
        shared: false,
    });
}

/// The entries microvm.nix puts in every VM's state directory, one of which any VM has.
const VM_ENTRIES: [&str; 4] = ["current", "booted", "toplevel", "flake"];

/// Whether a directory has any of [`VM_ENTRIES`]; one that cannot be opened counts as a VM's
/// (the scan then reports it), so that an unreadable directory is never called furniture.
fn has_vm_entries(root: &Root, path: &str) -> bool {
    let Ok(dir) = root.open_dir(path) else {
        return true;
    };
    VM_ENTRIES.iter().any(|entry| {
        !matches!(
            rustix::fs::statat(&dir, *entry, AtFlags::SYMLINK_NOFOLLOW),
            Err(Errno::NOENT)
        )
    })
}

/// A bare directory that a unit, GC root or the declaration names is an (orphaned or invalid)
/// VM's; any other is file system furniture such as `lost+found`, mentioned and kept.
fn resolve_bare_dirs(
    root: &Root,
    inv: &mut Inventory,
    live: Option<&LiveState>,
    bare: Vec<BareDir>,
    gcroots: &[GcRoot],
) {
    for dir in bare {
        let named = inv.vms.contains_key(&dir.name);
        match (named, dir.bad_name) {
            (true, Some(why)) => invalid_state(inv, &dir.name, &dir.path, why),
            (true, None) => scan_vm_dir(root, inv, &dir.name, &dir.path, live, gcroots),
            (false, _) => {
                log::debug!(
                    "{}: no {} and nothing names it, so it is not a VM; left alone",
                    crate::escape::text(&dir.path),
                    VM_ENTRIES.join(", ")
                );
                inv.not_vms.insert(dir.name.clone());
                inv.items.push(Item {
                    kind: Kind::StateDir,
                    class: Class::NotAVm,
                    name: dir.name,
                    path: Some(dir.path),
                    vm: None,
                    detail: Some(format!(
                        "no {} and no unit or GC root names it: not a VM",
                        VM_ENTRIES.join(", ")
                    )),
                    shared: false,
                });
            }
        }
    }
}

/// Store-managed `install-microvm-NAME.service` units exist only for VMs in `microvm.vms`: such a
/// VM is declared whatever `--manifest`/`--declared` says, and a declaration that omits it is
/// recorded as a contradiction. Drop-ins alone do not count: a configuration may customise
/// `microvm@NAME` for an imperative VM.
fn units_declare(inv: &mut Inventory) {
    let found: Vec<(String, String)> = inv
        .items
        .iter()
        .filter(|i| i.kind == Kind::UnitFile && i.class == Class::StoreManaged)
        .filter(|i| i.name.starts_with(names::INSTALL_PREFIX))
        .filter_map(|i| Some((i.vm.clone()?, i.path.clone()?)))
        .collect();
    for (vm, path) in found {
        inv.declared_by_units
            .entry(vm.clone())
            .or_default()
            .push(path);
        let entry = inv
            .vms
            .entry(vm.clone())
            .or_insert_with(|| Vm::new(&vm, VmClass::Orphaned));
        entry.evidence.installed = true;
        if !entry.evidence.declared && !entry.evidence.invalid {
            inv.contradictions.insert(vm);
        }
    }
}

/// Gives every VM's item the class its VM ended up with (the scan learns some late).
fn sync_item_classes(inv: &mut Inventory) {
    for item in &mut inv.items {
        let Some(vm) = item.vm.as_deref().and_then(|vm| inv.vms.get(vm)) else {
            continue;
        };
        if matches!(
            item.class,
            Class::Declared | Class::Imperative | Class::Orphaned | Class::Invalid
        ) {
            item.class = vm.class.item_class();
        }
    }
}

fn state_root_message(state_root: &str, why: &str) -> String {
    format!(
        "cannot read the VM state directory {state_root}: {why}. Without it imperative VMs cannot \
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
    let vm = inv
        .vms
        .entry(name.to_owned())
        .or_insert_with(|| Vm::new(name, VmClass::Invalid));
    vm.class = VmClass::Invalid;
    vm.evidence.invalid = true;
    vm.state_dir = Some(path.to_owned());
    vm.interfaces = None;
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

/// Imperative: made by `microvm -c` (a `flake` and GC roots) or by
/// `microvm.deploy.installOnHost` (`old` or GC roots), never with a `toplevel`. A `flake` alone is
/// what the host module's `install-microvm-NAME` writes for a declarative flake VM, which makes
/// no GC roots: without `old` or GC roots, such a VM was declarative.
fn made_imperatively(toplevel: bool, deployed: bool) -> bool {
    !toplevel && deployed
}

fn scan_vm_dir(
    root: &Root,
    inv: &mut Inventory,
    name: &str,
    path: &str,
    live: Option<&LiveState>,
    gcroots: &[GcRoot],
) {
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
    let deployed = has("old").is_some()
        || gcroots
            .iter()
            .any(|g| gcroot_vm(&inv.state_dir, &g.target) == Some(name));
    let imperative = made_imperatively(toplevel, deployed);
    let class = if inv
        .vms
        .get(name)
        .is_some_and(|vm| vm.class == VmClass::Declared)
    {
        VmClass::Declared
    } else if imperative {
        VmClass::Imperative
    } else {
        VmClass::Orphaned
    };
    let booted = has("booted").is_some();
    let mut details: Vec<String> = [("toplevel", toplevel), ("flake", flake)]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(entry, _)| (*entry).to_owned())
        .collect();
    let (runners, mut unknown_interfaces) = runner_links(root, inv, name, path, &mut details);
    // A runner link that cannot be followed (garbage-collected, a loop) hides what it uses;
    // with no runner link at all, the VM cannot run (the template's condition).
    let broken_link = unknown_interfaces;
    let (interfaces, unreadable_list) = read_interfaces(root, inv, name, &runners, live);
    unknown_interfaces |= unreadable_list;
    let runner_paths = runners
        .iter()
        .flat_map(|runner| runner_paths(root, runner))
        .collect();
    let mut mentions = Vec::new();
    let mut runner_unread =
        broken_link.then(|| "a `current` or `booted` link of it cannot be followed".to_owned());
    for runner in &runners {
        // The link itself: a runner reached through another VM's directory needs it.
        if let Ok(target) = root.readlink(runner) {
            mentions.push(target);
        }
        match runner_mentions(root, runner) {
            Ok(found) => mentions.extend(found),
            Err(why) => runner_unread = Some(why),
        }
    }
    let vm = inv
        .vms
        .entry(name.to_owned())
        .or_insert_with(|| Vm::new(name, class));
    vm.class = class;
    vm.state_dir = Some(path.to_owned());
    vm.booted = booted;
    vm.evidence.imperative = imperative;
    vm.evidence.booted = booted;
    vm.evidence.has_state_dir = true;
    vm.runner_paths = runner_paths;
    vm.mentions = mentions;
    vm.runner_unread = runner_unread;
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

/// The runner links that resolve: `booted` is what runs (tap-down uses it), `current` what starts
/// next. The flag says that a link exists but cannot be followed.
fn runner_links(
    root: &Root,
    inv: &mut Inventory,
    name: &str,
    path: &str,
    details: &mut Vec<String>,
) -> (Vec<String>, bool) {
    let mut runners = Vec::new();
    let mut unknown_interfaces = false;
    for link in ["booted", "current"] {
        let link_path = join(path, link);
        let Ok(Some(stat)) = root.lstat(&link_path) else {
            continue;
        };
        let kind = rootfs::file_type(&stat);
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
    (runners, unknown_interfaces)
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

/// Which VM a GC root belongs to: the one whose state directory its target is in
/// (`<stateDir>/NAME/current`); `None` when the target is anywhere else.
/// Doubled slashes are the same path (`microvm -c` under `stateDir = "/srv/vms/"` makes
/// `/srv/vms//NAME/current`); a target with `.` or `..` could lead elsewhere and is nobody's known.
fn gcroot_vm<'a>(state_root: &str, target: &'a str) -> Option<&'a str> {
    let rest = target.strip_prefix(state_root)?;
    if !rest.starts_with('/') || rest.split('/').any(|part| matches!(part, "." | "..")) {
        return None;
    }
    rest.split('/').find(|part| !part.is_empty())
}

/// A GC root symlink, read but not yet classified.
struct GcRoot {
    name: String,
    path: String,
    target: String,
}

/// Lists the GC roots; entries that are not symlinks with UTF-8 names are reported at once.
fn read_gcroots(root: &Root, inv: &mut Inventory) -> Vec<GcRoot> {
    let mut found = Vec::new();
    match root.lstat(GCROOTS) {
        Ok(None) => return found,
        Ok(Some(_)) => {}
        Err(e) => {
            let why = unreadable(root, &e);
            inv.problem(Problem::blocking(GCROOTS, gcroots_message(&why)));
            return found;
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
            return found;
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
        match root.readlink(&path) {
            Ok(target) => found.push(GcRoot { name, path, target }),
            Err(e) => inv.problem(Problem::blocking(&path, gcroots_message(&e.to_string()))),
        }
    }
    found
}

/// Classifies the GC roots by their targets. One pointing outside the state directory may be
/// another tool's, or point to a state directory this run does not know: it is kept.
fn gcroot_items(inv: &mut Inventory, gcroots: &[GcRoot]) {
    for GcRoot { name, path, target } in gcroots {
        let vm = gcroot_vm(&inv.state_dir, target).map(str::to_owned);
        let (class, detail) = match &vm {
            Some(vm) => (inv.vm_class(vm).item_class(), format!("-> {target}")),
            None => (
                Class::Unknown,
                format!(
                    "-> {target}, outside the state directory {}; whose it is is unknown, so it \
                     is kept",
                    inv.state_dir
                ),
            ),
        };
        inv.items.push(Item {
            kind: Kind::GcRoot,
            class,
            name: name.clone(),
            path: Some(path.clone()),
            vm,
            detail: Some(detail),
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
            } else if let Some(unit) = [".wants", ".requires", ".upholds"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
            {
                if let Some(parsed @ UnitName::Instance { .. }) = names::parse_unit(unit) {
                    unit_item(
                        inv,
                        Kind::DependencyDir,
                        unit,
                        &path,
                        &parsed,
                        managed,
                        None,
                    );
                }
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
    } else if detail.first().is_some_and(|d| d == "-> /dev/null") && kind != Kind::EnablementLink {
        // Unmasking microvms.target would start the autostarted VMs again at the next boot.
        class = Class::Masked;
        detail.push(
            "masked (`systemctl mask`): the admin's decision, kept; `systemctl unmask` it to let \
             prune remove it"
                .to_owned(),
        );
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
            let mut detail = format!("{}, {presence}", interface.kind);
            // After a rename two VMs list one name; stopping either deletes it (tap-down).
            for other in inv.vms.values().filter(|o| o.name != vm.name) {
                if other
                    .interfaces
                    .iter()
                    .flatten()
                    .any(|i| i.name == interface.name)
                {
                    let class = serde_json::to_value(other.class).unwrap_or_default();
                    let class = class.as_str().unwrap_or("");
                    let _ = write!(detail, "; also listed by VM '{}' ({class})", other.name);
                }
            }
            items.push(Item {
                kind: Kind::Interface,
                class: vm.class.item_class(),
                name: interface.name.clone(),
                path: None,
                vm: Some(vm.name.clone()),
                detail: Some(detail),
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

/// The VMs the active `microvms.target` wants (its `Wants=`, and the links in its `.wants/`
/// that the configuration manages), and those the manifest's `microvm.autostart` names. Those
/// may be VMs that are not in `microvm.vms` at all.
fn autostart_evidence(root: &Root, inv: &mut Inventory, host: &Host) {
    let mut wanted: BTreeMap<String, String> = host
        .autostart
        .iter()
        .map(|name| (name.clone(), "the host manifest's autostart".to_owned()))
        .collect();
    for path in target_files(root) {
        // A masked target (`systemctl mask`) wants nothing; the configuration's is still read.
        if root.masked(&path) {
            continue;
        }
        let text = match root.read_text(&path) {
            Ok(Some(text)) => text,
            Ok(None) => continue,
            Err(e) => {
                let why = e.note.clone().unwrap_or_else(|| unreadable(root, &e));
                inv.problem(Problem::blocking(
                    &path,
                    format!(
                        "cannot read {path}: {why}. Which VMs it starts at boot is unknown, so \
                         prune changes nothing. Fix: make it a readable unit file"
                    ),
                ));
                continue;
            }
        };
        for unit in text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Wants="))
            .flat_map(str::split_whitespace)
        {
            if let Some(vm) = unit
                .strip_prefix("microvm@")
                .and_then(|rest| rest.strip_suffix(".service"))
                .filter(|vm| !vm.is_empty())
            {
                wanted.entry(vm.to_owned()).or_insert_with(|| path.clone());
            }
        }
    }
    for item in &inv.items {
        let in_target_wants = item.path.as_deref().is_some_and(|p| {
            p.contains(&format!("/{}.wants/", names::TARGET)) && item.name.starts_with("microvm@")
        });
        if item.kind == Kind::EnablementLink && item.class == Class::StoreManaged && in_target_wants
        {
            if let (Some(vm), Some(path)) = (&item.vm, &item.path) {
                wanted.entry(vm.clone()).or_insert_with(|| path.clone());
            }
        }
    }
    for (name, source) in wanted {
        if names::check_vm_name(&name).is_err() {
            continue;
        }
        let vm = inv
            .vms
            .entry(name.clone())
            .or_insert_with(|| Vm::new(&name, VmClass::Orphaned));
        vm.evidence.autostarted = true;
        if !vm.evidence.declared && !vm.evidence.imperative && !vm.evidence.installed {
            inv.problems.push(Problem::warning(
                Some(&name),
                None,
                format!(
                    "VM '{name}' is not in microvm.vms, but microvm.autostart names it \
                     ({source}): it starts at every boot, so nothing of it is stopped or removed. \
                     If it should go: remove it from microvm.autostart, switch, and run prune again"
                ),
            ));
        }
    }
}

/// `microvms.target` in every unit directory, and its drop-ins (`systemctl edit microvms.target`
/// adds `Wants=` there): each says which VMs the active target wants.
fn target_files(root: &Root) -> Vec<String> {
    let mut files = Vec::new();
    for dir in UNIT_DIRS
        .iter()
        .chain(super::statedir::VENDOR_UNIT_DIRS.iter())
    {
        files.push(join(dir, names::TARGET));
        let drop_ins = join(dir, &format!("{}.d", names::TARGET));
        if let Ok(fd) = root.open_dir(&drop_ins) {
            let mut confs: Vec<String> = rootfs::list_fd(&fd, &drop_ins)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|entry| entry.name.ok())
                // systemd reads `*.conf` only, case and all.
                .filter(|name| std::path::Path::new(name).extension() == Some("conf".as_ref()))
                .map(|name| join(&drop_ins, &name))
                .collect();
            confs.sort();
            files.extend(confs);
        }
    }
    files
}

/// Which kept VMs' runners name a path in another VM's state directory (after a rename, the new
/// VM's shares and volumes can live in the old name's directory). A path counts when it is in
/// the directory by its spelling (after `.`, `..` and doubled slashes), or when it opens (symlinks
/// followed inside the root) to a file or directory found in it.
fn reference_evidence(
    root: &Root,
    inv: &mut Inventory,
    dirs: &[(String, String)],
    owners: &HashMap<super::proc::Identity, usize>,
) {
    let mut found: Vec<(String, String, String)> = Vec::new();
    for other in inv.vms.values().filter(|o| o.class.kept()) {
        let base = other.state_dir.clone().unwrap_or_default();
        let named = other
            .runner_paths
            .iter()
            .map(|(what, path)| (what.as_str(), path))
            .chain(
                other
                    .mentions
                    .iter()
                    .map(|path| ("named by its runner", path)),
            );
        for (what, path) in named {
            let full = normalize(&absolute(&base, path));
            let by_identity = root
                .open_path(&full, rustix::fs::OFlags::PATH)
                .ok()
                .and_then(|fd| rustix::fs::fstat(&fd).ok())
                .and_then(|stat| owners.get(&(stat.st_dev, stat.st_ino)))
                .map(|index| dirs[*index].0.clone());
            let share = what.starts_with("share source");
            for vm in inv.vms.values().filter(|vm| vm.name != other.name) {
                let Some(dir) = &vm.state_dir else { continue };
                let inside = full == *dir || full.starts_with(&format!("{dir}/"));
                // A shared directory above it shows its files in the kept VM's guest.
                let above = share && !inside && root.is_within(dir, &full);
                if inside || above || by_identity.as_deref() == Some(vm.name.as_str()) {
                    let line = if above {
                        format!("{full} ({what}, which contains {dir})")
                    } else {
                        format!("{full} ({what})")
                    };
                    let entry = (vm.name.clone(), other.name.clone(), line);
                    if !found.contains(&entry) {
                        found.push(entry);
                    }
                }
            }
        }
    }
    for (vm, other, path) in found {
        if let Some(vm) = inv.vms.get_mut(&vm) {
            vm.evidence.referenced_by.push((other, path));
        }
    }
    let unread: Vec<(String, String)> = inv
        .vms
        .values()
        .filter(|o| o.class.kept() && o.state_dir.is_some())
        .filter_map(|o| Some((o.name.clone(), o.runner_unread.clone()?)))
        .collect();
    for (name, _) in dirs {
        if let Some(vm) = inv.vms.get_mut(name) {
            vm.evidence.references_unknown = unread
                .iter()
                .filter(|(other, _)| other != name)
                .cloned()
                .collect();
        }
    }
}

/// A path as the kernel would walk it, as far as its spelling tells: `.`, empty components and
/// `..` (against what precedes it) are resolved; symlinks are not.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    if path.starts_with('/') {
        format!("/{}", parts.join("/"))
    } else {
        parts.join("/")
    }
}

/// A runner's relative paths are relative to its VM's state directory (its working directory).
pub fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') || base.is_empty() {
        path.to_owned()
    } else {
        join(base, path.trim_start_matches("./"))
    }
}

/// Which processes use the state directories of VMs that could lose something; when `/proc`
/// cannot tell, that is said for each of them.
fn user_evidence(
    inv: &mut Inventory,
    dirs: &[(String, String)],
    owners: &HashMap<super::proc::Identity, usize>,
) {
    if dirs.is_empty() {
        return;
    }
    let found = super::proc::users(dirs, owners);
    let live = inv.live;
    for (name, _) in dirs {
        let Some(vm) = inv.vms.get_mut(name) else {
            continue;
        };
        let active = live.then_some(vm.active_units.as_slice());
        vm.evidence.users = match &found {
            Ok(users) => Users::Pids(
                users
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter(|user| !classify::covered_by_stop(user.unit.as_deref(), active))
                    .map(|user| user.pid)
                    .collect(),
            ),
            Err(why) => Users::Unknown(why.clone()),
        };
    }
}

/// The paths a runner names: virtiofs share sources and sockets (`share/microvm/virtiofs/TAG/`)
/// and volume images (`file=`/`path=` arguments in `bin/microvm-run`), each with what it is.
fn runner_paths(root: &Root, runner: &str) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    let shares = format!("{runner}/share/microvm/virtiofs");
    if let Ok(fd) = root.open_dir(&shares) {
        for entry in rootfs::list_fd(&fd, &shares).unwrap_or_default() {
            let Ok(tag) = entry.name else { continue };
            for (file, what) in [("source", "share source"), ("socket", "share socket")] {
                let path = format!("{shares}/{tag}/{file}");
                if let Ok(Some(text)) = root.read_text(&path) {
                    let value = text.trim();
                    if !value.is_empty() {
                        paths.push((format!("{what} '{tag}'"), value.to_owned()));
                    }
                }
            }
        }
    }
    if let Ok(Some(script)) = root.read_text(&format!("{runner}/bin/microvm-run")) {
        for key in ["file=", "path="] {
            for (at, _) in script.match_indices(key) {
                let rest = &script[at + key.len()..];
                let end = rest
                    .find(|c: char| c == ',' || c == '\'' || c == '"' || c.is_whitespace())
                    .unwrap_or(rest.len());
                let value = &rest[..end];
                if !value.is_empty()
                    && !value.starts_with("/nix/store/")
                    && !value.starts_with("/dev/")
                {
                    paths.push(("volume".to_owned(), value.to_owned()));
                }
            }
        }
    }
    paths.dedup();
    paths
}

/// Every path a runner's `bin/microvm-run` mentions (a word with a `/`, whatever the hypervisor's
/// syntax: `--block IMG,o_direct=..`, `-d 'IMG'`, `--shared-dir SRC:TAG`, the volume-creation
/// lines), and those in the JSON config files it names from the store (firecracker's
/// `path_on_host`). Store, device and kernel paths are left out: they are never a VM's state.
fn runner_mentions(root: &Root, runner: &str) -> Result<Vec<String>, String> {
    let path = format!("{runner}/bin/microvm-run");
    let script = match root.read_text(&path) {
        Ok(Some(script)) => script,
        // Without it the runner cannot run (the template's condition), so it uses nothing.
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut texts = vec![script];
    let configs: Vec<String> = path_words(&texts[0])
        .filter(|word| {
            word.starts_with("/nix/store/")
                && std::path::Path::new(word)
                    .extension()
                    .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
        })
        .map(str::to_owned)
        .collect();
    for config in configs {
        if let Ok(Some(text)) = root.read_text(&config) {
            texts.push(text);
        }
    }
    let mut found: Vec<String> = Vec::new();
    for text in &texts {
        for word in path_words(text) {
            let skip = ["/nix/store/", "/dev/", "/proc/", "/sys/"]
                .iter()
                .any(|prefix| word.starts_with(prefix));
            if !skip && !found.iter().any(|f| f == word) {
                found.push(word.to_owned());
            }
        }
    }
    Ok(found)
}

/// The words of a script or config file that contain a `/`, split at shell and argument syntax.
fn path_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || "'\",=:;()`{}[]|&<>$".contains(c))
        .filter(|word| word.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_by_their_spelling() {
        assert_eq!(
            normalize("/var/lib//microvms/./fw/x"),
            "/var/lib/microvms/fw/x"
        );
        assert_eq!(
            normalize("/var/lib/microvms/a/../fw/"),
            "/var/lib/microvms/fw"
        );
        assert_eq!(normalize("/../.."), "/");
    }

    #[test]
    fn path_words_of_every_hypervisors_syntax() {
        let words: Vec<&str> = path_words(
            "crosvm --block /a/b.img,o_direct=false -d '/c/d' --shared-dir /e:tag:type=p9 \
             file=../f/g \"path_on_host\":\"/h/i\" x=y",
        )
        .collect();
        assert_eq!(words, ["/a/b.img", "/c/d", "/e", "../f/g", "/h/i"]);
    }
}
