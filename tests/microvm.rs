//! Integration tests of `persist-prep microvm status|prune` on fake host trees under `--root`.
//!
//! Each test builds a host tree in a fresh temporary directory, runs the real binary, and compares
//! a listing of the whole tree before and after: exactly the planned paths may disappear, nothing
//! else may change. Logging output is not asserted; the JSON document carries every problem.

#![cfg(feature = "microvm")]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use common::{BIN, skip};

/// A fake host tree; removed on drop.
struct Tree {
    root: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Tree {
    fn new(name: &str) -> Tree {
        let base = std::env::temp_dir().join(format!(
            "persist-prep-microvm-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&base);
        let root = base.join("root");
        fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn dir(&self, path: &str) -> &Self {
        fs::create_dir_all(self.path(path)).unwrap();
        self
    }

    fn file(&self, path: &str, text: &str) -> &Self {
        let full = self.path(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, text).unwrap();
        self
    }

    fn link(&self, path: &str, target: &str) -> &Self {
        let full = self.path(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        symlink(target, full).unwrap();
        self
    }

    fn fifo(&self, path: &str) -> &Self {
        let full = self.path(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        let status = Command::new("mkfifo").arg(&full).status().unwrap();
        assert!(status.success());
        self
    }

    /// A runner in the fake store, listing its interfaces like microvm.nix's runner does.
    fn runner(&self, name: &str, taps: &[&str], macvtaps: &[&str]) -> String {
        let store = format!("/nix/store/{name}-microvm-qemu-{name}");
        self.file(&format!("{store}/bin/microvm-run"), "#!/bin/sh\n");
        if !taps.is_empty() {
            let text = taps.iter().fold(String::new(), |text, t| text + t + "\n");
            self.file(&format!("{store}/share/microvm/tap-interfaces"), &text);
        }
        if !macvtaps.is_empty() {
            let text = macvtaps.iter().fold(String::new(), |text, t| {
                text + t + " 02:00:00:00:00:01 eth0 bridge\n"
            });
            self.file(&format!("{store}/share/microvm/macvtap-interfaces"), &text);
        }
        store
    }

    /// The link `/var/lib/microvms/VM/toplevel` to the system `/nix/store/SYSTEM-nixos-system`.
    fn toplevel(&self, vm: &str, system: &str) -> &Self {
        self.link(
            &format!("/var/lib/microvms/{vm}/toplevel"),
            &format!("/nix/store/{system}-nixos-system"),
        )
    }

    /// A VM installed in `/var/lib/microvms/VM`: its `current` runner and its `toplevel`.
    fn installed(&self, vm: &str, runner: &str, system: &str) -> &Self {
        self.link(&format!("/var/lib/microvms/{vm}/current"), runner)
            .toplevel(vm, system)
    }

    /// A GC root `/nix/var/nix/gcroots/microvm/NAME` linking to TARGET.
    fn gc_root(&self, name: &str, target: &str) -> &Self {
        self.link(&format!("/nix/var/nix/gcroots/microvm/{name}"), target)
    }

    /// A runtime drop-in `microvm@VM.service.d/override.conf` (what `systemctl edit --runtime`
    /// leaves).
    fn run_drop_in(&self, vm: &str) -> &Self {
        self.file(
            &format!("/run/systemd/system/microvm@{vm}.service.d/override.conf"),
            "[Service]\n",
        )
    }

    /// A declaratively installed VM (what `install-microvm-NAME.service` leaves).
    fn declarative_vm(&self, name: &str, taps: &[&str]) -> &Self {
        let runner = self.runner(name, taps, &[]);
        let state = format!("/var/lib/microvms/{name}");
        self.installed(name, &runner, name)
            .file(&format!("{state}/{name}.img"), "disk")
    }

    /// A VM `ci` installed by CI: a runner and a drop-in, no toplevel, flake or GC root.
    fn ci_vm(&self) -> &Self {
        let runner = self.runner("ci", &["vm-ci0"], &[]);
        self.link("/var/lib/microvms/ci/current", &runner)
            .file("/var/lib/microvms/ci/ci.img", "disk")
            .run_drop_in("ci")
    }

    /// An imperative VM (what `microvm -c NAME` leaves), with its GC roots.
    fn imperative_vm(&self, name: &str) -> &Self {
        let runner = self.runner(name, &[], &[]);
        let state = format!("/var/lib/microvms/{name}");
        self.link(&format!("{state}/current"), &runner)
            .file(&format!("{state}/flake"), "git+file:///etc/nixos")
            .link(
                &format!("/nix/var/nix/gcroots/microvm/{name}"),
                &format!("{state}/current"),
            )
            .link(
                &format!("/nix/var/nix/gcroots/microvm/booted-{name}"),
                &format!("{state}/booted"),
            )
    }

    /// Every path in the tree with its type and (for links) target, never following links.
    fn snapshot(&self) -> BTreeSet<String> {
        fn walk(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = format!("{rel}/{name}");
                let meta = fs::symlink_metadata(entry.path()).unwrap();
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(entry.path()).unwrap();
                    out.insert(format!("{path} -> {}", target.display()));
                } else if meta.is_dir() {
                    out.insert(format!("{path}/"));
                    walk(&entry.path(), &path, out);
                } else {
                    out.insert(format!("{path} ({} bytes)", meta.len()));
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.root.parent().unwrap(), "", &mut out);
        out
    }

    fn run(&self, args: &[&str]) -> Run {
        run_with_root(&self.root, args)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let base = self.root.parent().unwrap();
        // Make everything removable again (tests may leave read-only modes behind).
        let _ = Command::new("chmod")
            .args(["-R", "u+rwX"])
            .arg(base)
            .status();
        let _ = fs::remove_dir_all(base);
    }
}

struct Run {
    code: i32,
    json: Value,
    out: common::Run,
}

fn run_with_root(root: &Path, args: &[&str]) -> Run {
    run_os(root, args.iter().map(std::ffi::OsStr::new))
}

/// Runs `persist-prep microvm ARGS --root ROOT`; `--json` output is parsed.
fn run_os<'a>(root: &Path, args: impl Iterator<Item = &'a std::ffi::OsStr> + Clone) -> Run {
    let json = args.clone().any(|a| a == "--json");
    let mut command = Command::new(BIN);
    command
        .arg("microvm")
        .args(args)
        .arg("--root")
        .arg(root)
        .env_remove("JOURNAL_STREAM")
        .env_remove("PERSIST_PREP_LOG");
    let out = common::Run::from(command.output().unwrap());
    let json = if json {
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", out.stdout, out.stderr))
    } else {
        Value::Null
    };
    Run {
        code: out.code,
        json,
        out,
    }
}

impl Run {
    fn plan(&self) -> Vec<Value> {
        self.json["plan"].as_array().cloned().unwrap_or_default()
    }

    fn plan_paths(&self) -> BTreeSet<String> {
        self.plan()
            .iter()
            .filter_map(|s| s["path"].as_str().map(str::to_owned))
            .collect()
    }

    fn class_of(&self, path_or_name: &str) -> String {
        let items = self.json["items"].as_array().unwrap();
        let item = items
            .iter()
            .find(|i| {
                i["path"] == path_or_name || (i["path"].is_null() && i["name"] == path_or_name)
            })
            .unwrap_or_else(|| panic!("no item {path_or_name} in {items:#?}"));
        item["class"].as_str().unwrap().to_owned()
    }

    fn problems(&self) -> Vec<String> {
        self.json["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(self.json["notes"].as_array().into_iter().flatten())
            .map(|p| p["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The problems and notes, one per line.
    fn problem_text(&self) -> String {
        self.problems().join("\n")
    }

    /// Asserts that a problem or note contains TEXT.
    fn assert_problem(&self, text: &str) {
        let problems = self.problem_text();
        assert!(problems.contains(text), "{problems}");
    }

    fn stderr(&self) -> String {
        self.out.stderr.clone()
    }
}

/// Paths (relative to the tree, as the snapshot spells them) that vanished between two snapshots;
/// asserts that nothing appeared.
fn vanished(before: &BTreeSet<String>, after: &BTreeSet<String>) -> BTreeSet<String> {
    let appeared: Vec<_> = after.difference(before).collect();
    assert!(
        appeared.is_empty(),
        "prune created or changed: {appeared:?}"
    );
    before.difference(after).cloned().collect()
}

/// The snapshot lines at or below a root-relative path.
fn lines_under(snapshot: &BTreeSet<String>, path: &str) -> BTreeSet<String> {
    let exact = format!("/root{path}");
    snapshot
        .iter()
        .filter(|line| {
            line.strip_prefix(&exact)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', ' ']))
        })
        .cloned()
        .collect()
}

/// Runs `prune --dry-run`, checks it changed nothing, runs `prune`, and checks that the plans are
/// equal and that exactly the planned paths (and what was inside them) disappeared.
fn prune_as_planned(tree: &Tree, args: &[&str]) -> (Run, BTreeSet<String>) {
    let before = tree.snapshot();
    let mut dry_args = vec!["prune", "--json", "--dry-run"];
    dry_args.extend_from_slice(args);
    let dry = tree.run(&dry_args);
    assert_eq!(tree.snapshot(), before, "--dry-run changed the tree");
    let mut real_args = vec!["prune", "--json"];
    real_args.extend_from_slice(args);
    let real = tree.run(&real_args);
    assert_eq!(
        dry.plan(),
        real.plan(),
        "--dry-run printed another plan than prune carried out"
    );
    assert_eq!(
        dry.code, real.code,
        "dry run and prune disagree on the exit code"
    );
    let after = tree.snapshot();
    let gone = vanished(&before, &after);
    let expected: BTreeSet<String> = real
        .plan_paths()
        .iter()
        .flat_map(|p| lines_under(&before, p))
        .collect();
    assert_eq!(gone, expected, "removed set differs from the plan");
    for result in real.json["results"].as_array().unwrap() {
        assert_eq!(result["status"], "done", "step failed: {result}");
    }
    (real, gone)
}

/// Runs `prune --json ARGS`, checks that it left the tree as it was and ended with exit code
/// CODE (2: refused, 1: errors), and returns it. `what` names the case in failure messages.
fn prune_changing_nothing(tree: &Tree, args: &[&str], code: i32, what: &str) -> Run {
    let before = tree.snapshot();
    let mut full = vec!["prune", "--json"];
    full.extend_from_slice(args);
    let run = tree.run(&full);
    let case = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    assert_eq!(tree.snapshot(), before, "{case}something was changed");
    assert_eq!(run.code, code, "{case}{}", run.stderr());
    run
}

/// Runs `prune --json ARGS`, which must refuse (exit code 2) and change nothing; returns its
/// problems, one per line.
fn prune_refused(tree: &Tree, args: &[&str], what: &str) -> String {
    prune_changing_nothing(tree, args, 2, what).problem_text()
}

/// Runs `prune --declared KEPT --purge-state ORPHAN`, which must refuse and change nothing with a
/// problem that contains EXPECTED.
fn purge_refused(tree: &Tree, kept: &str, orphan: &str, expected: &str, what: &str) {
    let args = ["--declared", kept, "--purge-state", orphan];
    let problems = prune_refused(tree, &args, what);
    if what.is_empty() {
        assert!(problems.contains(expected), "{problems}");
    } else {
        assert!(problems.contains(expected), "{what}: {problems}");
    }
}

/// A process of the VM `old` as `cd $DIR; exec ./current/bin/microvm-run` starts it: its working
/// directory is the state directory and it holds the image open. The caller kills it.
fn old_vm_process(tree: &Tree) -> std::process::Child {
    Command::new("sh")
        .args(["-c", "exec 3<old.img; exec sleep 60"])
        .current_dir(tree.path("/var/lib/microvms/old"))
        .spawn()
        .unwrap()
}

/// Runs [`prune_as_planned`], which must succeed and remove nothing.
fn prune_removing_nothing(tree: &Tree, args: &[&str]) -> Run {
    let (run, gone) = prune_succeeds(tree, args);
    assert!(gone.is_empty(), "removed: {gone:?}");
    run
}

/// Runs [`prune_as_planned`], which must succeed.
fn prune_succeeds(tree: &Tree, args: &[&str]) -> (Run, BTreeSet<String>) {
    let (run, gone) = prune_as_planned(tree, args);
    assert_eq!(run.code, 0, "{}", run.stderr());
    (run, gone)
}

fn planned(run: &Run) -> Vec<(String, String)> {
    run.plan()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["path"]
                    .as_str()
                    .or(s["unit"].as_str())
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

const SYSTEM_UNITS: &str = "/nix/store/aaaa-system-units";

/// A NixOS host: its unit tree is generated into the store (read-only for us), declares `web`,
/// runs an imperative `imp`, and has the leftovers of a removed VM `old` in writable places.
fn nixos_host() -> Tree {
    let tree = Tree::new("nixos");
    tree.file(&format!("{SYSTEM_UNITS}/microvm@.service"), "[Service]\n")
        .file(
            &format!("{SYSTEM_UNITS}/microvm-tap-interfaces@.service"),
            "[Service]\n",
        )
        .file(
            &format!("{SYSTEM_UNITS}/install-microvm-web.service"),
            "[Service]\n",
        )
        .file(
            &format!("{SYSTEM_UNITS}/microvm@web.service.d/overrides.conf"),
            "[Unit]\n",
        )
        .file(&format!("{SYSTEM_UNITS}/microvms.target"), "[Unit]\n")
        .link(
            &format!("{SYSTEM_UNITS}/microvms.target.wants/microvm@web.service"),
            "../microvm@.service",
        )
        .file(&format!("{SYSTEM_UNITS}/sshd.service"), "[Service]\n")
        .link("/etc/static", "/nix/store/bbbb-etc/etc")
        .link("/nix/store/bbbb-etc/etc/systemd/system", SYSTEM_UNITS)
        .link("/etc/systemd/system", "/etc/static/systemd/system");
    tree.declarative_vm("web", &["vm-web0"])
        .imperative_vm("imp");
    // Leftovers of `old`, removed from microvm.vms: state, GC roots, runtime units and links.
    tree.declarative_vm("old", &["vm-old0"])
        .link(
            "/var/lib/microvms/old/booted",
            "/nix/store/old-microvm-qemu-old",
        )
        .gc_root("old", "/var/lib/microvms/old/current")
        .gc_root("booted-old", "/var/lib/microvms/old/booted")
        .gc_root("stale", "/var/lib/microvms/stale/current")
        .link(
            "/run/systemd/system/microvm@old.service",
            "/etc/systemd/system/microvm@.service",
        )
        .file(
            "/run/systemd/system/microvm@old.service.d/override.conf",
            "[Service]\nCPUQuota=50%\n",
        )
        .file(
            "/run/systemd/system/microvm-tap-interfaces@old.service.d/x.conf",
            "[Unit]\n",
        )
        .file(
            "/run/systemd/system/install-microvm-old.service",
            "[Service]\n",
        )
        .link(
            "/run/systemd/system/microvms.target.wants/microvm@old.service",
            "/etc/systemd/system/microvm@.service",
        )
        .link(
            "/run/systemd/system/microvms.target.wants/microvm@imp.service",
            "/etc/systemd/system/microvm@.service",
        )
        .file(
            "/etc/systemd/system.control/microvm@old.service.d/50-MemoryMax.conf",
            "[Service]\n",
        )
        .file(
            "/run/systemd/system.control/microvm@old.service.d/50-CPUWeight.conf",
            "[Service]\n",
        )
        .run_drop_in("imp")
        .run_drop_in("web")
        .file(
            "/run/systemd/system/microvm-virtiofsd@.service",
            "[Service]\n",
        )
        .file("/run/systemd/system/unrelated.service", "[Service]\n")
        // A drop-in directory linked from the store: the link goes, the store stays.
        .file("/nix/store/cccc-dropin/10-old.conf", "[Service]\n")
        .link(
            "/run/systemd/system/microvm-virtiofsd@old.service.d",
            "/nix/store/cccc-dropin",
        );
    tree
}

#[test]
fn status_classifies_everything() {
    let tree = nixos_host();
    tree.file(
        "/nix/store/old-microvm-qemu-old/share/microvm/macvtap-interfaces",
        "mv-old 02:00:00:00:00:01 eth0 bridge\n",
    );
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    let old = status.json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == "old")
        .unwrap();
    assert_eq!(
        old["interfaces"],
        serde_json::json!([{"name": "vm-old0", "kind": "tap"}, {"name": "mv-old", "kind": "macvtap"}])
    );
    assert_eq!(status.json["live"], false);
    for (path, class) in [
        ("/var/lib/microvms/web", "declared"),
        ("/var/lib/microvms/imp", "imperative"),
        ("/var/lib/microvms/old", "orphaned"),
        ("/nix/var/nix/gcroots/microvm/imp", "imperative"),
        ("/nix/var/nix/gcroots/microvm/booted-imp", "imperative"),
        ("/nix/var/nix/gcroots/microvm/old", "orphaned"),
        ("/nix/var/nix/gcroots/microvm/booted-old", "orphaned"),
        ("/nix/var/nix/gcroots/microvm/stale", "orphaned"),
        ("/etc/systemd/system/microvm@.service", "store-managed"),
        (
            "/etc/systemd/system/install-microvm-web.service",
            "store-managed",
        ),
        ("/etc/systemd/system/microvm@web.service.d", "store-managed"),
        (
            "/etc/systemd/system/microvms.target.wants/microvm@web.service",
            "store-managed",
        ),
        ("/run/systemd/system/microvm@old.service", "orphaned"),
        ("/run/systemd/system/microvm@old.service.d", "orphaned"),
        (
            "/run/systemd/system/microvms.target.wants/microvm@imp.service",
            "imperative",
        ),
        ("/run/systemd/system/microvm@web.service.d", "declared"),
        (
            "/run/systemd/system/microvm-virtiofsd@.service",
            "template-in-use",
        ),
        (
            "/etc/systemd/system.control/microvm@old.service.d",
            "orphaned",
        ),
        ("vm-web0", "declared"),
        ("vm-old0", "orphaned"),
        ("mv-old", "orphaned"),
    ] {
        assert_eq!(status.class_of(path), class, "class of {path}");
    }
    let items = status.json["items"].as_array().unwrap();
    assert!(
        !items.iter().any(|i| i["path"]
            .as_str()
            .is_some_and(|p| p.contains("sshd") || p.contains("unrelated"))),
        "unrelated units listed"
    );
    let store_item = items
        .iter()
        .find(|i| i["path"] == "/etc/systemd/system/microvm@.service")
        .unwrap();
    assert!(
        store_item["detail"].as_str().unwrap().contains("imports"),
        "fix missing: {store_item}"
    );
    // The text form lists the same things.
    let text = tree.run(&["status", "--declared", "web"]);
    let stdout = &text.out.stdout;
    assert!(
        stdout.contains("orphaned") && stdout.contains("/run/systemd/system/microvm@old.service.d")
    );
}

#[test]
fn prune_removes_exactly_the_orphans_leftovers() {
    let tree = nixos_host();
    let (run, _) = prune_succeeds(&tree, &["--declared", "web"]);
    assert_eq!(
        planned(&run),
        pairs(&[
            (
                "remove-enablement-link",
                "/run/systemd/system/microvms.target.wants/microvm@old.service"
            ),
            (
                "remove-unit-file",
                "/run/systemd/system/install-microvm-old.service"
            ),
            (
                "remove-unit-file",
                "/run/systemd/system/microvm@old.service"
            ),
            (
                "remove-drop-in",
                "/etc/systemd/system.control/microvm@old.service.d"
            ),
            (
                "remove-drop-in",
                "/run/systemd/system.control/microvm@old.service.d"
            ),
            (
                "remove-drop-in",
                "/run/systemd/system/microvm-tap-interfaces@old.service.d"
            ),
            (
                "remove-drop-in",
                "/run/systemd/system/microvm-virtiofsd@old.service.d"
            ),
            (
                "remove-drop-in",
                "/run/systemd/system/microvm@old.service.d"
            ),
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/booted-old"),
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/old"),
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/stale"),
        ])
    );
    // Kept: the orphan's state (its disks), everything of web and imp, the store, templates.
    for kept in [
        "/var/lib/microvms/old/old.img",
        "/var/lib/microvms/web/web.img",
        "/var/lib/microvms/imp/flake",
        "/nix/var/nix/gcroots/microvm/imp",
        "/run/systemd/system/microvm@imp.service.d/override.conf",
        "/run/systemd/system/microvm@web.service.d/override.conf",
        "/run/systemd/system/microvm-virtiofsd@.service",
        "/nix/store/aaaa-system-units/microvm@.service",
        "/nix/store/cccc-dropin/10-old.conf",
    ] {
        assert!(
            tree.path(kept).exists() || tree.path(kept).is_symlink(),
            "{kept} was removed"
        );
    }
    // A second run finds nothing more to do.
    let again = tree.run(&["prune", "--json", "--declared", "web"]);
    assert_eq!(again.plan(), Vec::<Value>::new());
}

#[test]
fn templates_go_only_when_no_vm_is_left() {
    let tree = Tree::new("templates");
    tree.file("/etc/systemd/system/microvm@.service", "[Service]\n")
        .file(
            "/etc/systemd/system/microvm-set-booted@.service",
            "[Service]\n",
        )
        .file(
            "/etc/systemd/system/microvm@.service.d/10-local.conf",
            "[Service]\n",
        )
        .file("/etc/systemd/system/microvms.target", "[Unit]\n")
        .link(
            "/etc/systemd/system/multi-user.target.wants/microvms.target",
            "/etc/systemd/system/microvms.target",
        )
        .link(
            "/etc/systemd/system/microvms.target.wants/microvm@imp.service",
            "/etc/systemd/system/microvm@.service",
        )
        .imperative_vm("imp");
    // The imperative VM still uses them.
    let (run, gone) = prune_as_planned(&tree, &["--declared", ""]);
    assert!(gone.is_empty(), "removed {gone:?}");
    assert_eq!(run.code, 0);
    // Purging the imperative VM's state makes it an orphan: then everything goes.
    let (run, _) = prune_succeeds(&tree, &["--declared", "", "--purge-state", "imp"]);
    assert_eq!(
        planned(&run),
        pairs(&[
            (
                "remove-enablement-link",
                "/etc/systemd/system/microvms.target.wants/microvm@imp.service"
            ),
            (
                "remove-enablement-link",
                "/etc/systemd/system/multi-user.target.wants/microvms.target"
            ),
            (
                "remove-unit-file",
                "/etc/systemd/system/microvm-set-booted@.service"
            ),
            ("remove-unit-file", "/etc/systemd/system/microvm@.service"),
            ("remove-unit-file", "/etc/systemd/system/microvms.target"),
            ("remove-drop-in", "/etc/systemd/system/microvm@.service.d"),
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/booted-imp"),
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/imp"),
            ("purge-state", "/var/lib/microvms/imp"),
        ])
    );
}

#[test]
fn store_managed_templates_are_reported_and_never_touched() {
    let tree = nixos_host();
    // No VM at all is declared or imperative any more: templates would go if they were writable.
    // The generation keeps the host module but no VM (no install-microvm-web.service).
    fs::remove_dir_all(tree.path("/var/lib/microvms/imp")).unwrap();
    fs::remove_dir_all(tree.path("/var/lib/microvms/web")).unwrap();
    fs::remove_file(tree.path(&format!("{SYSTEM_UNITS}/install-microvm-web.service"))).unwrap();
    fs::remove_dir_all(tree.path(&format!("{SYSTEM_UNITS}/microvm@web.service.d"))).unwrap();
    fs::remove_dir_all(tree.path(&format!("{SYSTEM_UNITS}/microvms.target.wants"))).unwrap();
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    let paths = run.plan_paths();
    assert!(
        paths.contains("/run/systemd/system/microvm-virtiofsd@.service"),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/etc/systemd/system/")),
        "{paths:?}"
    );
    let notes = run.problem_text();
    assert!(
        notes.contains("/etc/systemd/system/microvm@.service is kept"),
        "{notes}"
    );
    assert!(
        notes.contains("managed by the NixOS configuration"),
        "{notes}"
    );
    assert!(
        tree.path(&format!("{SYSTEM_UNITS}/microvm@.service"))
            .exists()
    );
}

/// Unmounts on drop, also when an assertion fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn read_only_unit_directories_are_never_touched() {
    let tree = Tree::new("readonly");
    tree.file("/ro/microvm@old.service.d/override.conf", "[Service]\n")
        .dir("/etc/systemd/system.control")
        .gc_root("old", "/var/lib/microvms/old/current");
    let target = tree.path("/etc/systemd/system.control");
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(tree.path("/ro"))
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skip("cannot bind-mount (needs root and mount rights)");
        return;
    }
    let _guard = Unmount(target.clone());
    let remounted = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&target)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "cannot remount read-only");
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    assert_eq!(
        planned(&run),
        pairs(&[("remove-gc-root", "/nix/var/nix/gcroots/microvm/old")])
    );
    run.assert_problem("read-only");
}

#[test]
fn purge_state_deletes_the_state_but_never_follows_links_out_of_it() {
    let tree = nixos_host();
    tree.file("/precious/data", "keep me")
        .link("/var/lib/microvms/old/shared", "/precious")
        .link(
            "/var/lib/microvms/old/dangling",
            "/nix/store/gone-garbage-collected",
        )
        .file("/var/lib/microvms/old/nested/deeper/disk.img", "disk")
        .fifo("/var/lib/microvms/old/nested/control.fifo");
    // `old` has `booted` (the host went down with it running): offline, that needs the override.
    let (_, gone) = prune_succeeds(
        &tree,
        &[
            "--declared",
            "web",
            "--purge-state",
            "old",
            "--purge-state-of-possibly-running",
        ],
    );
    assert!(gone.contains("/root/var/lib/microvms/old/"), "{gone:?}");
    assert!(
        tree.path("/precious/data").exists(),
        "followed a link out of the state dir"
    );
    assert!(
        tree.path("/nix/store/old-microvm-qemu-old/bin/microvm-run")
            .exists(),
        "store touched"
    );
    assert!(tree.path("/var/lib/microvms/web/web.img").exists());
}

#[test]
fn purging_a_declared_vm_aborts_everything() {
    let tree = nixos_host();
    for args in [
        &[
            "--declared",
            "web",
            "--purge-state",
            "old",
            "--purge-state",
            "web",
        ][..],
        &["--declared", "web", "--purge-state", "nosuchvm"][..],
    ] {
        let run = prune_changing_nothing(&tree, args, 2, "");
        assert_eq!(run.json["aborted"], true);
        assert_eq!(run.plan(), Vec::<Value>::new());
        run.assert_problem("Nothing was changed");
    }
    let run = tree.run(&[
        "prune",
        "--json",
        "--declared",
        "web",
        "--purge-state",
        "web",
    ]);
    run.assert_problem("declared");
}

#[test]
fn broken_symlinks_in_a_state_dir_are_reported_and_handled() {
    let tree = Tree::new("broken");
    // The runner was garbage-collected after the VM was removed from the configuration.
    tree.link("/var/lib/microvms/old/current", "/nix/store/gone-runner")
        .link("/var/lib/microvms/old/toplevel", "/nix/store/gone-system")
        .file("/var/lib/microvms/old/old.img", "disk")
        .gc_root("old", "/var/lib/microvms/old/current")
        // A state "directory" that is itself a broken link: nothing of it may be touched.
        .link("/var/lib/microvms/lost", "/mnt/elsewhere/lost")
        .gc_root("lost", "/var/lib/microvms/lost/current")
        .run_drop_in("lost");
    let status = tree.run(&["status", "--json", "--declared", ""]);
    assert_eq!(status.code, 1, "a state dir that is a symlink is an error");
    let problems = status.problem_text();
    assert!(
        problems.contains(
            "/var/lib/microvms/old/current is a broken symbolic link to /nix/store/gone-runner"
        ),
        "{problems}"
    );
    assert!(problems.contains("/var/lib/microvms/lost cannot be handled: it is a symbolic link to /mnt/elsewhere/lost, which does not exist"), "{problems}");
    assert_eq!(status.class_of("/var/lib/microvms/lost"), "invalid");
    assert_eq!(
        status.class_of("/run/systemd/system/microvm@lost.service.d"),
        "invalid"
    );
    let (run, _) = prune_as_planned(&tree, &["--declared", "", "--purge-state", "old"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        planned(&run),
        pairs(&[
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/old"),
            ("purge-state", "/var/lib/microvms/old"),
        ])
    );
    assert!(
        tree.path("/run/systemd/system/microvm@lost.service.d/override.conf")
            .exists()
    );
    let run = tree.run(&["prune", "--json", "--declared", "", "--purge-state", "lost"]);
    assert_eq!(
        run.code, 2,
        "purging a state dir that cannot be handled must abort"
    );
    // Declared, the same link is only worth a warning: nothing of a declared VM is touched.
    let declared = tree.run(&["status", "--json", "--declared", "lost"]);
    assert_eq!(declared.code, 0, "{:?}", declared.problems());
    assert_eq!(declared.class_of("/var/lib/microvms/lost"), "declared");
    assert_eq!(
        declared.class_of("/nix/var/nix/gcroots/microvm/lost"),
        "declared"
    );
}

#[test]
fn names_that_need_systemd_escaping_are_errors_and_kept() {
    let tree = Tree::new("escaping");
    tree.file("/var/lib/microvms/my vm/toplevel", "")
        .file("/var/lib/microvms/ünï/toplevel", "")
        .run_drop_in("my vm")
        .run_drop_in("old")
        .file("/run/systemd/system/microvm@.service", "[Service]\n")
        .link(
            r"/nix/var/nix/gcroots/microvm/my\x20vm",
            r"/var/lib/microvms/my\x20vm/current",
        );
    let status = tree.run(&["status", "--json", "--declared", ""]);
    assert_eq!(status.code, 1);
    let problems = status.problem_text();
    assert!(problems.contains(r"microvm@my\x20vm.service"), "{problems}");
    assert!(problems.contains("/var/lib/microvms/ünï"), "{problems}");
    assert_eq!(status.class_of("/var/lib/microvms/my vm"), "invalid");
    assert_eq!(
        status.class_of("/run/systemd/system/microvm@my vm.service.d"),
        "invalid"
    );
    // `my\x20vm` is a well-formed (escaped) instance with no state: an orphan GC root.
    assert_eq!(
        status.class_of(r"/nix/var/nix/gcroots/microvm/my\x20vm"),
        "orphaned"
    );
    // The unusable names might be VMs someone uses: the template stays, the clear orphan goes.
    assert_eq!(
        status.class_of("/run/systemd/system/microvm@.service"),
        "template-in-use"
    );
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    assert_eq!(run.code, 1);
    assert_eq!(
        planned(&run),
        pairs(&[
            (
                "remove-drop-in",
                "/run/systemd/system/microvm@old.service.d"
            ),
            ("remove-gc-root", r"/nix/var/nix/gcroots/microvm/my\x20vm"),
        ])
    );
    // Without --json the same problems go to stderr, one line each, with the fix.
    let text = tree.run(&["status", "--declared", ""]);
    let stderr = text.stderr();
    assert!(
        stderr.lines().any(
            |l| l.starts_with("error: VM state directory /var/lib/microvms/my vm")
                && l.contains("Fix:")
        ),
        "{stderr}"
    );
    let bad = tree.run(&["status", "--declared", "my vm"]);
    assert_eq!(bad.code, 2);
}

/// Makes a directory unreadable the ways that work against root: a FIFO or a regular file where a
/// directory must be, or a symlink loop (permission bits do not stop root).
fn make_unreadable(case: &str, tree: &Tree) {
    match case {
        "state-fifo" => {
            tree.fifo("/var/lib/microvms");
        }
        "unit-dir-file" => {
            tree.file("/run/systemd/system", "not a directory");
        }
        "unit-dir-loop" => {
            tree.link("/etc/systemd/system.control", "/etc/systemd/system.control");
        }
        "wants-dir-loop" => {
            tree.dir("/run/systemd/system/loop.target.wants");
            fs::remove_dir(tree.path("/run/systemd/system/loop.target.wants")).unwrap();
            tree.link("/run/systemd/system/loop.target.wants", "loop.target.wants");
        }
        "gcroots-fifo" => {
            fs::remove_dir_all(tree.path("/nix/var/nix/gcroots/microvm")).unwrap();
            tree.fifo("/nix/var/nix/gcroots/microvm");
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn unreadable_directories_block_prune_entirely() {
    for (case, why) in [
        ("state-fifo", "it is a FIFO"),
        ("unit-dir-file", "it is a regular file"),
        ("unit-dir-loop", "symbolic link loop"),
        ("gcroots-fifo", "it is a FIFO"),
    ] {
        let tree = Tree::new(case);
        tree.gc_root("old", "/var/lib/microvms/old/current").file(
            "/etc/systemd/system/microvm@old.service.d/override.conf",
            "[Service]\n",
        );
        make_unreadable(case, &tree);
        let before = tree.snapshot();
        let run = tree.run(&["prune", "--json", "--declared", ""]);
        let problems = run.problem_text();
        assert_eq!(run.code, 1, "{case}: {problems}");
        assert_eq!(run.plan(), Vec::<Value>::new(), "{case}");
        assert_eq!(tree.snapshot(), before, "{case}: something was removed");
        assert!(
            problems.contains("prune changes nothing"),
            "{case}: {problems}"
        );
        assert!(problems.contains(why), "{case}: {problems}");
        let status = tree.run(&["status", "--json", "--declared", ""]);
        assert_eq!(status.code, 1, "{case}: status must report the error");
    }
    // A symlink loop named *.wants is not a directory, so it is not descended into at all.
    let tree = Tree::new("wants-dir-loop");
    tree.file(
        "/etc/systemd/system/microvm@old.service.d/override.conf",
        "[Service]\n",
    );
    make_unreadable("wants-dir-loop", &tree);
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    assert_eq!(run.code, 0, "{:?}", run.problems());
}

#[test]
fn symlinks_resolve_inside_the_root() {
    let tree = Tree::new("confined");
    // Outside the root: something that looks like leftovers. It must never be touched.
    let outside = tree.root.parent().unwrap().join("outside");
    fs::create_dir_all(outside.join("microvm@old.service.d")).unwrap();
    fs::write(outside.join("microvm@old.service.d/x.conf"), "x").unwrap();
    let outside_text = outside.display().to_string();
    // Both links point at the outside directory; inside the root they resolve to its namesake.
    tree.link(
        "/run/systemd/system",
        &format!("../../../../../../../..{outside_text}"),
    )
    .link("/etc/systemd/system", &outside_text)
    .file(
        &format!("{outside_text}/microvm@old.service.d/y.conf"),
        "inside",
    );
    let before = tree.snapshot();
    let dry = tree.run(&["prune", "--json", "--dry-run", "--declared", ""]);
    assert_eq!(tree.snapshot(), before);
    let run = tree.run(&["prune", "--json", "--declared", ""]);
    assert_eq!(run.code, 0, "{:?}", run.problems());
    assert_eq!(dry.plan(), run.plan());
    assert_eq!(
        planned(&run),
        pairs(&[
            (
                "remove-drop-in",
                "/etc/systemd/system/microvm@old.service.d"
            ),
            (
                "remove-drop-in",
                "/run/systemd/system/microvm@old.service.d"
            ),
        ])
    );
    assert_eq!(run.json["results"][1]["message"], "already gone");
    assert!(
        outside.join("microvm@old.service.d/x.conf").exists(),
        "escaped the root"
    );
    let gone = vanished(&before, &tree.snapshot());
    let inside = format!("/root{outside_text}/microvm@old.service.d");
    assert_eq!(
        gone,
        BTreeSet::from([format!("{inside}/"), format!("{inside}/y.conf (6 bytes)")])
    );
}

#[test]
fn systemctl_enablement_links_are_pruned() {
    if Command::new("systemctl").arg("--version").output().is_err() {
        skip("systemctl is not installed");
        return;
    }
    let tree = Tree::new("systemctl");
    let template = "[Unit]\nDescription=MicroVM '%i'\n[Service]\nExecStart=/bin/true\n\
                    [Install]\nWantedBy=microvms.target\n";
    tree.file("/etc/systemd/system/microvm@.service", template)
        .file(
            "/etc/systemd/system/microvms.target",
            "[Unit]\n[Install]\nWantedBy=multi-user.target\n",
        )
        .imperative_vm("imp")
        .declarative_vm("old", &[]);
    let systemctl = |args: &[&str]| {
        let output = Command::new("systemctl")
            .arg(format!("--root={}", tree.root.display()))
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
    };
    let (ok, _) = systemctl(&[
        "enable",
        "microvm@old.service",
        "microvm@imp.service",
        "microvms.target",
    ]);
    assert!(ok, "systemctl --root enable failed");
    assert_eq!(
        systemctl(&["is-enabled", "microvm@old.service"]).1,
        "enabled"
    );
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    assert_eq!(
        planned(&run),
        pairs(&[(
            "remove-enablement-link",
            "/etc/systemd/system/microvms.target.wants/microvm@old.service"
        )])
    );
    assert_eq!(
        systemctl(&["is-enabled", "microvm@old.service"]).1,
        "disabled"
    );
    assert_eq!(
        systemctl(&["is-enabled", "microvm@imp.service"]).1,
        "enabled"
    );
    assert_eq!(systemctl(&["is-enabled", "microvms.target"]).1, "enabled");
}

#[test]
fn command_line_and_manifest_errors() {
    let tree = Tree::new("cli");
    assert_eq!(
        tree.run(&["status"]).code,
        2,
        "must refuse to guess the declared VMs"
    );
    assert_eq!(tree.run(&["prune", "--declared", "a", "--bogus"]).code, 2);
    let manifest = tree.root.parent().unwrap().join("host.json");
    fs::write(
        &manifest,
        r#"{"version":1,"vms":[{"name":"web","autostart":true}],"x":1}"#,
    )
    .unwrap();
    let manifest = manifest.display().to_string();
    assert_eq!(tree.run(&["status", "--manifest", &manifest]).code, 3);
    // A FIFO given as the manifest is refused at once, not read (which would hang).
    let fifo = tree.root.parent().unwrap().join("fifo.json");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = Command::new("timeout")
        .arg("10")
        .arg(BIN)
        .args(["microvm", "status", "--manifest"])
        .arg(&fifo)
        .arg("--root")
        .arg(&tree.root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    fs::write(
        &manifest,
        r#"{"version":1,"vms":[{"name":"web","autostart":true},{"name":"db","autostart":false}]}"#,
    )
    .unwrap();
    tree.declarative_vm("web", &[]).declarative_vm("db", &[]);
    let run = tree.run(&["status", "--json", "--manifest", &manifest]);
    assert_eq!(run.code, 0, "{}", run.stderr());
    assert_eq!(run.class_of("/var/lib/microvms/db"), "declared");
    let vms = run.json["vms"].as_array().unwrap();
    assert!(
        vms.iter()
            .any(|v| v["name"] == "web" && v["autostart"] == true)
    );
    let missing = run_with_root(
        Path::new("/nonexistent/persist-prep-root"),
        &["status", "--declared", ""],
    );
    // As for the core commands: a root that cannot be opened is a failure (1), not a usage error.
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr().contains("cannot open --root"),
        "{}",
        missing.stderr()
    );
}

/// Writes a host manifest next to the tree (outside `--root`, as the module's store file is).
fn host_manifest(tree: &Tree, text: &str) -> String {
    let path = tree.root.parent().unwrap().join("microvm.json");
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn vm_json<'a>(run: &'a Run, name: &str) -> &'a Value {
    run.json["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {:#}", run.json["vms"]))
}

/// Rule 1: the active configuration's `install-microvm-web.service` declares `web`; a
/// declaration that omits it (`--declared ''`, a stale manifest) is refused as a whole.
#[test]
fn units_of_the_configuration_overrule_nothing_but_stop_everything() {
    let tree = nixos_host();
    // A store drop-in alone (customising an imperative VM) declares nothing.
    tree.file(
        &format!("{SYSTEM_UNITS}/microvm@imp.service.d/overrides.conf"),
        "[Service]\nCPUQuota=20%\n",
    );
    let stale = host_manifest(
        &tree,
        r#"{"version":1,"vms":[{"name":"other","autostart":false}]}"#,
    );
    let before = tree.snapshot();
    for (args, source) in [
        (
            vec!["--declared", "", "--stop", "--purge-state", "web"],
            "--declared ''",
        ),
        (vec!["--manifest", stale.as_str()], stale.as_str()),
    ] {
        let mut full = vec!["prune", "--json"];
        full.extend_from_slice(&args);
        let run = tree.run(&full);
        assert_eq!(run.code, 2, "{:?}: {}", args, run.stderr());
        assert_eq!(run.json["aborted"], true);
        assert_eq!(run.plan(), Vec::<Value>::new());
        let problems = run.problem_text();
        assert!(
            problems.contains("VM 'web' is declared by the active configuration")
                && problems.contains("/etc/systemd/system/install-microvm-web.service")
                && problems.contains(source)
                && problems.contains("nothing was planned, stopped or deleted"),
            "{problems}"
        );
        assert_eq!(tree.snapshot(), before, "{args:?}: something was changed");
    }
    let status = tree.run(&["status", "--json", "--declared", ""]);
    assert_eq!(status.code, 2, "{}", status.stderr());
    assert_eq!(status.class_of("/var/lib/microvms/web"), "declared");
    assert_eq!(status.class_of("/var/lib/microvms/imp"), "imperative");
    // Consistent declarations work as before; the drop-in did not make `imp` declared.
    let ok = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr());
    assert_eq!(ok.class_of("/var/lib/microvms/imp"), "imperative");
}

/// Rule 2: `booted` means the VM may be running; offline, its state is purged only with the
/// explicit override, and a refusal changes nothing at all.
#[test]
fn a_possibly_running_vm_is_not_purged_offline() {
    let tree = nixos_host();
    // `gone` went down with the host: `booted` dangles (its runner was garbage-collected).
    tree.link("/var/lib/microvms/gone/booted", "/nix/store/gone-runner")
        .file("/var/lib/microvms/gone/gone.img", "disk");
    let before = tree.snapshot();
    for args in [
        &["--purge-state", "old"][..],
        &["--purge-state", "old", "--stop"][..],
        &["--purge-state", "gone", "--dry-run"][..],
    ] {
        let mut full = vec!["prune", "--json", "--declared", "web"];
        full.extend_from_slice(args);
        let run = tree.run(&full);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr());
        assert_eq!(run.json["aborted"], true);
        let problems = run.problem_text();
        assert!(
            problems.contains("/booted exists")
                && problems.contains("--purge-state-of-possibly-running")
                && problems.contains("Nothing was changed"),
            "{problems}"
        );
        assert_eq!(tree.snapshot(), before, "{args:?}: something was changed");
    }
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(vm_json(&status, "old")["booted"], true);
    assert_eq!(vm_json(&status, "imp")["booted"], false);
    // The override, named for what it does, lets a person who knows better purge both.
    let (_, gone) = prune_succeeds(
        &tree,
        &[
            "--declared",
            "web",
            "--purge-state",
            "old",
            "--purge-state",
            "gone",
            "--purge-state-of-possibly-running",
        ],
    );
    assert!(gone.contains("/root/var/lib/microvms/old/old.img (4 bytes)"));
    assert!(gone.contains("/root/var/lib/microvms/gone/gone.img (4 bytes)"));
}

impl Tree {
    /// A VM installed with `microvm.deploy.installOnHost`: `current`, `old`, `booted`, GC roots
    /// `NAME`, `booted-NAME` and `old-NAME`, no `flake`, no `toplevel`.
    fn installed_on_host_vm(&self, name: &str) -> &Self {
        let runner = self.runner(name, &[&format!("vm-{name}0")], &[]);
        let previous = format!("/nix/store/prev-microvm-qemu-{name}");
        self.file(&format!("{previous}/bin/microvm-run"), "#!/bin/sh\n");
        let state = format!("/var/lib/microvms/{name}");
        let roots = "/nix/var/nix/gcroots/microvm";
        self.link(&format!("{state}/current"), &runner)
            .link(&format!("{state}/booted"), &runner)
            .link(&format!("{state}/old"), &previous)
            .file(&format!("{state}/{name}.img"), "disk")
            .link(&format!("{roots}/{name}"), &format!("{state}/current"))
            .link(
                &format!("{roots}/booted-{name}"),
                &format!("{state}/booted"),
            )
            .link(&format!("{roots}/old-{name}"), &format!("{state}/old"))
    }
}

/// Rule 3: a VM deployed with `installOnHost` is imperative, like one from `microvm -c`.
#[test]
fn vms_installed_on_the_host_are_imperative_and_kept_whole() {
    let tree = nixos_host();
    tree.installed_on_host_vm("deployed")
        .run_drop_in("deployed")
        .link(
            "/run/systemd/system/microvms.target.wants/microvm@deployed.service",
            "/etc/systemd/system/microvm@.service",
        );
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    for path in [
        "/var/lib/microvms/deployed",
        "/nix/var/nix/gcroots/microvm/deployed",
        "/nix/var/nix/gcroots/microvm/booted-deployed",
        "/nix/var/nix/gcroots/microvm/old-deployed",
        "/run/systemd/system/microvm@deployed.service.d",
        "/run/systemd/system/microvms.target.wants/microvm@deployed.service",
        "vm-deployed0",
    ] {
        assert_eq!(status.class_of(path), "imperative", "class of {path}");
    }
    let (_, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(
        !gone.iter().any(|line| line.contains("deployed")),
        "removed: {gone:?}"
    );
    // Its state is purged only on request, like any imperative VM's (offline: with the override).
    let (_, gone) = prune_succeeds(
        &tree,
        &[
            "--declared",
            "web",
            "--purge-state",
            "deployed",
            "--purge-state-of-possibly-running",
        ],
    );
    assert!(gone.contains(
        "/root/nix/var/nix/gcroots/microvm/old-deployed -> /var/lib/microvms/deployed/old"
    ));
}

/// Rule 4: the manifest's `stateDir` is where the state directories are; GC roots pointing
/// anywhere else belong to nobody this run knows, and are kept.
#[test]
fn the_state_dir_comes_from_the_manifest() {
    let tree = Tree::new("statedir");
    let roots = "/nix/var/nix/gcroots/microvm";
    let runner = tree.runner("imp", &[], &[]);
    tree.link("/srv/microvms/imp/current", &runner)
        .file("/srv/microvms/imp/flake", "git+file:///etc/nixos")
        .link(&format!("{roots}/imp"), "/srv/microvms/imp/current")
        .link(&format!("{roots}/booted-imp"), "/srv/microvms/imp/booted")
        .link("/srv/microvms/old/toplevel", "/nix/store/old-nixos-system")
        .file("/srv/microvms/old/old.img", "disk")
        .link(&format!("{roots}/old"), "/srv/microvms/old/current")
        .link(
            &format!("{roots}/legacy"),
            "/var/lib/microvms/legacy/current",
        )
        .link(&format!("{roots}/foreign"), "/opt/elsewhere/current")
        .link(&format!("{roots}/relative"), "../../elsewhere");
    let manifest = host_manifest(
        &tree,
        r#"{"version": 1, "stateDir": "/srv/microvms", "vms": []}"#,
    );
    let status = tree.run(&["status", "--json", "--manifest", &manifest]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    assert_eq!(status.json["stateDir"], "/srv/microvms");
    for (path, class) in [
        ("/srv/microvms/imp", "imperative"),
        ("/srv/microvms/old", "orphaned"),
        ("/nix/var/nix/gcroots/microvm/imp", "imperative"),
        ("/nix/var/nix/gcroots/microvm/booted-imp", "imperative"),
        ("/nix/var/nix/gcroots/microvm/old", "orphaned"),
        ("/nix/var/nix/gcroots/microvm/legacy", "unknown"),
        ("/nix/var/nix/gcroots/microvm/foreign", "unknown"),
        ("/nix/var/nix/gcroots/microvm/relative", "unknown"),
    ] {
        assert_eq!(status.class_of(path), class, "class of {path}");
    }
    let (run, _) = prune_succeeds(&tree, &["--manifest", &manifest, "--purge-state", "old"]);
    assert_eq!(
        planned(&run),
        pairs(&[
            ("remove-gc-root", "/nix/var/nix/gcroots/microvm/old"),
            ("purge-state", "/srv/microvms/old"),
        ])
    );
    // Without "stateDir", the default: the roots into /srv/microvms are then of unknown owner and
    // kept, and only the one into the default state dir (naming no VM there) goes.
    let default = host_manifest(&tree, r#"{"version": 1, "vms": []}"#);
    let (run, _) = prune_as_planned(&tree, &["--manifest", &default]);
    assert_eq!(run.json["stateDir"], "/var/lib/microvms");
    assert_eq!(
        planned(&run),
        pairs(&[("remove-gc-root", "/nix/var/nix/gcroots/microvm/legacy")])
    );
    let bad = host_manifest(&tree, r#"{"version": 1, "stateDir": "srv", "vms": []}"#);
    assert_eq!(tree.run(&["status", "--manifest", &bad]).code, 3);
}

/// Rule 5, offline half: status shows which VMs list the same interface. (Whether `--stop`
/// leaves such an orphan running is the planner's unit test and boot scenario 50's case 4.)
#[test]
fn a_shared_interface_is_shown_with_both_vms() {
    let tree = nixos_host();
    // `old` was renamed to `web`: the declared VM lists the orphan's tap too.
    fs::write(
        tree.path("/nix/store/web-microvm-qemu-web/share/microvm/tap-interfaces"),
        "vm-web0\nvm-old0\n",
    )
    .unwrap();
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    let items = status.json["items"].as_array().unwrap();
    let detail = |vm: &str| {
        items
            .iter()
            .find(|i| i["name"] == "vm-old0" && i["vm"] == vm)
            .and_then(|i| i["detail"].as_str())
            .unwrap_or_else(|| panic!("no vm-old0 of {vm}"))
            .to_owned()
    };
    assert!(
        detail("old").contains("also listed by VM 'web' (declared)"),
        "{}",
        detail("old")
    );
    assert!(detail("web").contains("also listed by VM 'old' (orphaned)"));
}

/// Rule 6: `lost+found` and `.snapshots` are file system furniture, not VMs.
#[test]
fn file_system_furniture_is_not_a_vm() {
    let tree = Tree::new("furniture");
    tree.dir("/var/lib/microvms/lost+found")
        .file("/var/lib/microvms/.snapshots/1/info.xml", "<snapshot/>")
        .run_drop_in("old")
        // Named by a unit, a bare directory is an orphan's after all.
        .dir("/var/lib/microvms/old");
    let status = tree.run(&["status", "--json", "--declared", ""]);
    assert_eq!(status.code, 0, "{:?}", status.problems());
    assert_eq!(status.class_of("/var/lib/microvms/lost+found"), "not-a-vm");
    assert_eq!(status.class_of("/var/lib/microvms/.snapshots"), "not-a-vm");
    assert_eq!(status.class_of("/var/lib/microvms/old"), "orphaned");
    assert!(status.problems().is_empty(), "{:?}", status.problems());
    let (run, _) = prune_as_planned(&tree, &["--declared", ""]);
    assert_eq!(run.code, 0, "{:?}", run.problems());
    assert_eq!(
        planned(&run),
        pairs(&[(
            "remove-drop-in",
            "/run/systemd/system/microvm@old.service.d"
        )])
    );
    for name in [".snapshots", "lost+found"] {
        let problems = prune_refused(&tree, &["--declared", "", "--purge-state", name], name);
        assert!(problems.contains("is not a VM"), "{problems}");
    }
}

/// A non-UTF-8 argument is a usage error with a message (a non-UTF-8 path is fine).
#[test]
fn non_utf8_arguments_do_not_panic() {
    use std::os::unix::ffi::OsStrExt as _;
    let tree = Tree::new("nonutf8");
    let bad = std::ffi::OsStr::from_bytes(b"we\xffb");
    let run = run_os(
        &tree.root,
        [std::ffi::OsStr::new("status"), "--declared".as_ref(), bad].into_iter(),
    );
    assert_eq!(run.code, 2, "{}", run.stderr());
    assert!(run.stderr().contains("not valid UTF-8"), "{}", run.stderr());
    let run = run_os(
        &tree.root,
        [
            std::ffi::OsStr::new("status"),
            "--declared".as_ref(),
            "".as_ref(),
            "--manifest".as_ref(),
            bad,
        ]
        .into_iter(),
    );
    assert_eq!(run.code, 2, "{}", run.stderr());
}

// ---- Issue 16: prune only what every piece of evidence calls orphaned. ----

/// The active `microvms.target` as NixOS generates it: `Wants=` in the unit file itself.
fn target_wants(tree: &Tree, vms: &[&str]) {
    let wants: Vec<String> = vms
        .iter()
        .map(|vm| format!("microvm@{vm}.service"))
        .collect();
    tree.file(
        &format!("{SYSTEM_UNITS}/microvms.target"),
        &format!("[Unit]\nWants={}\n", wants.join(" ")),
    );
}

/// Shape 1: a VM that only `microvm.autostart` names (installed by CI, not in `microvm.vms`),
/// and one dropped from `microvm.vms` but still in `microvm.autostart`, are neither touched nor
/// purgeable; the message does not tell to remove them from `microvm.vms`.
#[test]
fn autostarted_vms_are_kept_whole() {
    let tree = nixos_host();
    tree.ci_vm();
    // `dropped` left microvm.vms, but microvm.autostart still names it.
    tree.declarative_vm("dropped", &["vm-dropped0"])
        .run_drop_in("dropped");
    target_wants(&tree, &["web", "ci", "dropped"]);
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    for path in [
        "/var/lib/microvms/ci",
        "/run/systemd/system/microvm@ci.service.d",
        "/var/lib/microvms/dropped",
        "vm-ci0",
    ] {
        assert_eq!(status.class_of(path), "autostarted", "class of {path}");
    }
    assert_eq!(vm_json(&status, "ci")["evidence"]["autostarted"], true);
    let (run, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(
        !gone
            .iter()
            .any(|line| line.contains("ci") || line.contains("dropped")),
        "removed: {gone:?}"
    );
    run.assert_problem("VM 'ci' is not in microvm.vms, but microvm.autostart names it");
    let refused = prune_refused(&tree, &["--declared", "web", "--purge-state", "ci"], "");
    assert!(refused.contains("microvm.autostart"));
    // The host manifest's autostart list is evidence too, without any microvms.target.
    target_wants(&tree, &["web"]);
    let manifest = host_manifest(
        &tree,
        r#"{"version":1,"vms":[{"name":"web","autostart":true}],"autostart":["web","ci","dropped"]}"#,
    );
    let (_, gone) = prune_succeeds(&tree, &["--manifest", &manifest]);
    assert!(
        !gone
            .iter()
            .any(|line| line.contains("ci") || line.contains("dropped")),
        "removed: {gone:?}"
    );
}

/// A runner whose `microvm-run` names its volume and a virtiofs share by absolute paths.
fn runner_with_paths(tree: &Tree, name: &str, volume: &str, share: &str) -> String {
    let runner = tree.runner(name, &[], &[]);
    tree.file(
        &format!("{runner}/bin/microvm-run"),
        &format!(
            "#!/bin/sh\nexec qemu-system-x86_64 -drive id=vda,format=raw,file={volume},if=none \
             -chardev socket,id=fs0,path=fs0.sock\n"
        ),
    )
    .file(
        &format!("{runner}/share/microvm/virtiofs/journal/source"),
        &format!("{share}\n"),
    )
    .file(
        &format!("{runner}/share/microvm/virtiofs/journal/socket"),
        "fs0.sock\n",
    );
    runner
}

/// Shape 2: after renaming `fw` to `firewall`, the declared VM's volume and share still live in
/// `/var/lib/microvms/fw`: purging `fw` would delete them under it.
#[test]
fn a_renamed_vms_data_in_the_old_directory_is_not_purged() {
    let tree = Tree::new("rename");
    let runner = runner_with_paths(
        &tree,
        "firewall",
        "/var/lib/microvms/fw/var.img",
        "/var/lib/microvms/fw/journal",
    );
    tree.installed("firewall", &runner, "fw")
        .toplevel("fw", "old-fw")
        .file("/var/lib/microvms/fw/var.img", "disk")
        .file("/var/lib/microvms/fw/journal/system.journal", "log");
    purge_refused(
        &tree,
        "firewall",
        "fw",
        "the runner of the kept VM 'firewall' uses /var/lib/microvms/fw/",
        "",
    );
    let status = tree.run(&["status", "--json", "--declared", "firewall"]);
    let referenced = &vm_json(&status, "fw")["evidence"]["referencedBy"];
    assert_eq!(referenced[0][0], "firewall", "{referenced}");
}

/// Shape 3: `microvm -r old` runs the VM with no unit and no `booted` link; its process has its
/// working directory and the disk in the state directory.
#[test]
fn a_vm_running_outside_systemd_is_kept_whole() {
    let tree = Tree::new("foreground");
    let runner = tree.runner("old", &["vm-old0"], &[]);
    tree.installed("old", &runner, "old")
        .file("/var/lib/microvms/old/old.img", "disk")
        .gc_root("old", "/var/lib/microvms/old/current")
        .run_drop_in("old");
    let mut child = old_vm_process(&tree);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id().to_string();
    let before = tree.snapshot();
    let purge = tree.run(&["prune", "--json", "--declared", "", "--purge-state", "old"]);
    let (run, gone) = prune_as_planned(&tree, &["--declared", ""]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(purge.code, 2, "{}", purge.stderr());
    purge.assert_problem(&format!("process {pid} uses it"));
    assert_eq!(run.code, 0, "{}", run.stderr());
    assert!(gone.is_empty(), "removed: {gone:?}");
    run.assert_problem("runs outside systemd");
    assert_eq!(tree.snapshot(), before);
    // Once the process is gone, the orphan's leftovers go as usual.
    prune_succeeds(&tree, &["--declared", "", "--purge-state", "old"]);
    assert!(!tree.path("/var/lib/microvms/old").exists());
}

/// Shape 4: the stateDir is an empty mount point (its storage is not mounted): every VM would
/// look like an orphan, so nothing is changed.
#[test]
fn an_unmounted_state_dir_changes_nothing() {
    for (file, text) in [
        (
            "/etc/fstab",
            "# comment\n/dev/disk/by-label/vms /var/lib/microvms ext4 defaults 0 2\n",
        ),
        (
            "/etc/systemd/system/var-lib-microvms.mount",
            "[Mount]\nWhat=/dev/disk/by-label/vms\nWhere=/var/lib/microvms\n",
        ),
    ] {
        let tree = Tree::new("unmounted");
        tree.dir("/var/lib/microvms")
            .file(file, text)
            .gc_root("imp", "/var/lib/microvms/imp/current")
            .gc_root("booted-imp", "/var/lib/microvms/imp/booted")
            .link(
                "/etc/systemd/system/microvms.target.wants/microvm@imp.service",
                "/etc/systemd/system/microvm@.service",
            )
            .run_drop_in("imp");
        let run = prune_changing_nothing(&tree, &["--declared", ""], 1, file);
        assert!(run.plan().is_empty(), "{file}: {:?}", run.plan());
        let problems = run.problem_text();
        assert!(
            problems.contains("the stateDir /var/lib/microvms is not mounted"),
            "{file}: {problems}"
        );
    }
}

/// Shape 5: `microvm.stateDir = "/srv/microvms"`. `--declared` alone takes the stateDir from the
/// installed template; one given that disagrees with it is refused, naming both.
#[test]
fn the_state_dir_comes_from_the_installed_template() {
    let tree = nixos_host();
    tree.file(
        &format!("{SYSTEM_UNITS}/microvm@.service"),
        "[Unit]\nConditionPathExists=/srv/microvms/%i/current/bin/microvm-run\n[Service]\n\
         WorkingDirectory=/srv/microvms/%i\n",
    );
    let runner = tree.runner("srvimp", &[], &[]);
    tree.link("/srv/microvms/srvimp/current", &runner)
        .file("/srv/microvms/srvimp/flake", "git+file:///etc/nixos")
        .gc_root("srvimp", "/srv/microvms/srvimp/current")
        .run_drop_in("srvimp");
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(
        status.json["stateDir"],
        "/srv/microvms",
        "{}",
        status.stderr()
    );
    assert_eq!(
        status.class_of("/run/systemd/system/microvm@srvimp.service.d"),
        "imperative"
    );
    let before = tree.snapshot();
    let (run, gone) = prune_as_planned(&tree, &["--declared", "web"]);
    assert!(
        !gone.iter().any(|line| line.contains("srvimp")),
        "removed: {gone:?}; {}",
        run.stderr()
    );
    let wrong = host_manifest(
        &tree,
        r#"{"version":1,"stateDir":"/var/lib/microvms","vms":[{"name":"web"}]}"#,
    );
    let after_prune = tree.snapshot();
    for args in [
        &["--declared", "web", "--state-dir", "/var/lib/microvms"][..],
        &["--manifest", &wrong][..],
    ] {
        let mut full = vec!["prune", "--json", "--stop"];
        full.extend_from_slice(args);
        let run = tree.run(&full);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr());
        let problems = run.problem_text();
        assert!(
            problems.contains("the stateDir is /var/lib/microvms")
                && problems.contains("runs VMs from /srv/microvms"),
            "{problems}"
        );
        assert_eq!(
            tree.snapshot(),
            after_prune,
            "{args:?}: something was changed"
        );
    }
    let agreeing = tree.run(&[
        "status",
        "--json",
        "--declared",
        "web",
        "--state-dir",
        "/srv/microvms",
    ]);
    assert_eq!(agreeing.code, 0, "{}", agreeing.stderr());
    drop(before);
}

/// Shape 6a: a declarative flake VM (`install-microvm-NAME` wrote `current` and `flake`, no GC
/// roots) removed from the configuration is an orphan, not an imperative VM.
#[test]
fn a_removed_declarative_flake_vm_is_an_orphan() {
    let tree = nixos_host();
    let runner = tree.runner("flaky", &[], &[]);
    tree.link("/var/lib/microvms/flaky/current", &runner)
        .file(
            "/var/lib/microvms/flaky/flake",
            "git+https://example.org/vms",
        )
        .run_drop_in("flaky");
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.class_of("/var/lib/microvms/flaky"), "orphaned");
    // `microvm -c` (flake and GC roots) stays imperative.
    assert_eq!(status.class_of("/var/lib/microvms/imp"), "imperative");
    let (_, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(gone.contains("/root/run/systemd/system/microvm@flaky.service.d/"));
}

/// Shape 6b: an orphan's own `microvm@NAME.service.wants/` and `.requires/` go with it.
#[test]
fn an_orphans_dependency_directories_are_removed() {
    let tree = nixos_host();
    tree.link(
        "/run/systemd/system/microvm@old.service.wants/microvm-tap-interfaces@old.service",
        "/etc/systemd/system/microvm-tap-interfaces@.service",
    )
    .link(
        "/etc/systemd/system.control/microvm@old.service.requires/microvm-virtiofsd@old.service",
        "/etc/systemd/system/microvm-virtiofsd@.service",
    )
    .link(
        "/run/systemd/system/microvm@web.service.wants/microvm-tap-interfaces@web.service",
        "/etc/systemd/system/microvm-tap-interfaces@.service",
    );
    let (_, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(gone.contains("/root/run/systemd/system/microvm@old.service.wants/"));
    assert!(gone.contains("/root/etc/systemd/system.control/microvm@old.service.requires/"));
    assert!(
        tree.path("/run/systemd/system/microvm@web.service.wants")
            .exists()
    );
}

/// Shape 6c: a disk image directly in the stateDir is no VM: no error, no advice to delete it,
/// and it cannot be purged.
#[test]
fn a_file_in_the_state_dir_is_kept_quietly() {
    let tree = nixos_host();
    tree.file("/var/lib/microvms/shared.img", "disk");
    let status = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(status.code, 0, "{}", status.stderr());
    assert_eq!(status.class_of("/var/lib/microvms/shared.img"), "not-a-vm");
    assert!(
        !status.problems().iter().any(|p| p.contains("shared.img")),
        "{:?}",
        status.problems()
    );
    let (_, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(!gone.iter().any(|line| line.contains("shared.img")));
    let refused = tree.run(&[
        "prune",
        "--json",
        "--declared",
        "web",
        "--purge-state",
        "shared.img",
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr());
    assert!(refused.problem_text().contains("is not a VM"));
}

/// Shape 6d: purging an orphan names the volumes and shares it had outside its state directory.
#[test]
fn purging_names_what_lies_outside_the_state_dir() {
    let tree = Tree::new("outside");
    let runner = runner_with_paths(&tree, "old", "/srv/images/old.img", "/srv/shares/old");
    // microvm.nix's default read-only share of the store is never named.
    tree.file(
        &format!("{runner}/share/microvm/virtiofs/ro-store/source"),
        "/nix/store\n",
    );
    tree.installed("old", &runner, "old")
        .file("/srv/images/old.img", "disk")
        .file("/srv/shares/old/data", "data");
    let (run, gone) = prune_succeeds(&tree, &["--declared", "", "--purge-state", "old"]);
    assert!(!gone.iter().any(|line| line.contains("/srv/")));
    let problems = run.problem_text();
    assert!(
        problems.contains("/srv/images/old.img (volume)")
            && problems.contains("/srv/shares/old (share source 'journal')"),
        "{problems}"
    );
    assert!(!problems.contains("/nix/store ("), "{problems}");
}

/// Bytes from the tree are shown escaped: a newline in a name cannot start a forged line.
#[test]
fn host_mode_output_escapes_names_from_the_tree() {
    let tree = Tree::new("escape");
    tree.link("/var/lib/microvms/bad\nname/current", "/nix/store/x-runner");
    let run = tree.run(&["status", "--declared", ""]);
    assert!(run.stderr().contains("bad\\nname"), "{}", run.stderr());
    assert!(!run.stderr().contains("bad\nname"), "{}", run.stderr());
    assert!(run.out.stdout.contains("bad\\nname"), "{}", run.out.stdout);
    assert!(!run.out.stdout.contains("bad\nname"), "{}", run.out.stdout);
    // So are the caller's own arguments in a usage error (an option or a command).
    for args in [
        ["status", "--bogus\x1b[31m\nforged"],
        ["st\x1b[31m\nforged", "--declared"],
    ] {
        let run = tree.run(&args);
        assert_eq!(run.code, 2, "{}", run.stderr());
        assert!(
            !run.stderr().contains('\x1b') && !run.stderr().contains("\nforged"),
            "{:?}",
            run.stderr()
        );
    }
    // The --root that cannot be opened is named escaped too.
    let run = run_with_root(
        Path::new("/nonexistent\nroot"),
        &["status", "--declared", ""],
    );
    assert_eq!(run.code, 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("/nonexistent\\nroot"),
        "{}",
        run.stderr()
    );
}

/// Missing evidence keeps everything: an unreadable template (the stateDir cannot be confirmed)
/// or an unreadable `microvms.target` (which VMs start at boot is unknown) change nothing.
#[test]
fn unreadable_template_or_target_changes_nothing() {
    for (path, what) in [
        (
            "/etc/systemd/system.control/microvm@.service",
            "microvm@.service",
        ),
        ("/run/systemd/system/microvms.target", "microvms.target"),
    ] {
        let tree = nixos_host();
        tree.fifo(path);
        let run = prune_changing_nothing(&tree, &["--declared", "web"], 1, what);
        assert!(run.plan().is_empty(), "{what}: {:?}", run.plan());
        let problems = run.problem_text();
        assert!(
            problems.contains(&format!("{path}: it is a FIFO"))
                && problems.contains("changes nothing"),
            "{what}: {problems}"
        );
    }
}

/// Without `/proc`, whether a process uses an orphan's state directory is unknown: it is not
/// purged, and the refusal says why. (Needs a private mount namespace: root and `unshare`.)
#[test]
fn without_proc_no_state_is_purged() {
    if !rustix::process::geteuid().is_root() {
        skip("needs root to unmount /proc in a private mount namespace");
        return;
    }
    let tree = nixos_host();
    let before = tree.snapshot();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"umount -l /proc && exec "$@""#)
        .arg("sh")
        .arg(BIN)
        .args([
            "microvm",
            "prune",
            "--json",
            "--declared",
            "web",
            "--purge-state",
            "old",
        ])
        .args(["--purge-state-of-possibly-running", "--root"])
        .arg(&tree.root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("whether a process uses it cannot be known: /proc is not mounted"),
        "{stdout}"
    );
    assert_eq!(tree.snapshot(), before);
    // Nor are the orphan's units and GC roots removed: it may run outside systemd.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"umount -l /proc && exec "$@""#)
        .arg("sh")
        .arg(BIN)
        .args(["microvm", "prune", "--json", "--declared", "web", "--root"])
        .arg(&tree.root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("VM 'old' is orphaned, but whether a process runs it outside systemd"),
        "{stdout}"
    );
    let after = tree.snapshot();
    assert!(after.iter().any(|l| l.contains("gcroots/microvm/old ->")));
    assert!(after.iter().any(|l| l.contains("microvm@old.service.d/")));
}

/// The counterpart of shape 4: a stateDir that is mounted (here a bind mount from the same file
/// system, which a device comparison would miss) is used as usual.
#[test]
fn a_mounted_state_dir_is_used() {
    let tree = Tree::new("mounted");
    tree.file(
        "/etc/fstab",
        "/nix/persist/var/lib/microvms /var/lib/microvms none bind 0 0\n",
    )
    .toplevel("old", "old")
    .run_drop_in("old");
    let dir = tree.path("/var/lib/microvms");
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(&dir)
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skip("cannot bind-mount (needs root and mount rights)");
        return;
    }
    let _unmount = Unmount(dir);
    let (_, gone) = prune_succeeds(&tree, &["--declared", ""]);
    assert!(gone.contains("/root/run/systemd/system/microvm@old.service.d/"));
}

/// Shape 2 is a rule, not an example: however a kept VM's runner names a path in an orphan's
/// directory (any hypervisor's arguments, its volume-creation lines, a firecracker config file, a
/// relative `../` path, a symlink to the directory, doubled slashes), `--purge-state` refuses.
#[test]
fn any_way_a_kept_runner_names_an_orphans_path_blocks_its_purge() {
    /// Case name, the runner's script, and a store file it names (path, text).
    type Case<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let cases: [Case; 7] = [
        (
            "crosvm",
            "exec crosvm run --block /var/lib/microvms/fw/var.img,o_direct=false,ro=false",
            None,
        ),
        (
            "kvmtool",
            "exec lkvm run -d '/var/lib/microvms/fw/var.img' --9p '/var/lib/microvms/fw/j,journal'",
            None,
        ),
        (
            "autoCreate",
            "if [ ! -e '/var/lib/microvms/fw/var.img' ]; then\n  touch '/var/lib/microvms/fw/var.img'\nfi\nexec qemu -drive file=/var/lib/microvms/firewall/x.img",
            None,
        ),
        (
            "firecracker",
            "exec firecracker --config-file /nix/store/fc-firecracker-firewall.json",
            Some((
                "/nix/store/fc-firecracker-firewall.json",
                r#"{"drives":[{"drive_id":"/var/lib/microvms/fw/var.img","path_on_host":"/var/lib/microvms/fw/var.img"}]}"#,
            )),
        ),
        (
            "relative",
            "exec qemu -drive id=vda,format=raw,file=../fw/var.img,if=none",
            None,
        ),
        (
            "symlink",
            "exec qemu -drive id=vda,format=raw,file=/srv/fw-data/var.img,if=none",
            None,
        ),
        (
            "slashes",
            "exec qemu -drive id=vda,format=raw,file=/var/lib//microvms/./fw/var.img,if=none",
            None,
        ),
    ];
    for (case, script, extra) in cases {
        let tree = Tree::new("kept-runner");
        let runner = tree.runner("firewall", &[], &[]);
        tree.file(
            &format!("{runner}/bin/microvm-run"),
            &format!("#!/bin/sh\n{script}\n"),
        )
        .installed("firewall", &runner, "fw")
        .toplevel("fw", "old-fw")
        .file("/var/lib/microvms/fw/var.img", "disk")
        .link("/srv/fw-data", "/var/lib/microvms/fw");
        if let Some((path, text)) = extra {
            tree.file(path, text);
        }
        purge_refused(
            &tree,
            "firewall",
            "fw",
            "the runner of the kept VM 'firewall' uses",
            case,
        );
    }
}

/// A VM that starts between the scan and the purge (`microvm -r old` while prune removes the
/// GC roots): the executor looks at `/proc` again right before it deletes, and keeps the disks.
#[test]
fn a_vm_started_after_the_scan_is_not_purged() {
    if Command::new("strace").arg("-V").output().is_err() {
        skip("strace is not installed (tests/setup installs it)");
        return;
    }
    let tree = Tree::new("race");
    let runner = tree.runner("old", &[], &[]);
    tree.installed("old", &runner, "old")
        .file("/var/lib/microvms/old/old.img", "disk")
        .gc_root("old", "/var/lib/microvms/old/current");
    // The first unlinkat (the GC root, before the purge) waits 3 s; the VM starts meanwhile,
    // once the plan (made from the scan) has been printed.
    let mut prune = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat"])
        .args(["-e", "inject=unlinkat:delay_enter=3000000:when=1"])
        .arg(common::BIN)
        .args(["microvm", "prune", "--declared", "", "--purge-state", "old"])
        .arg("--root")
        .arg(&tree.root)
        .env_remove("JOURNAL_STREAM")
        .env_remove("PERSIST_PREP_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(prune.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("purge-state") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "prune ended before its plan: {printed}");
        printed.push_str(&line);
    }
    let mut vm = old_vm_process(&tree);
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    let out = prune.wait_with_output().unwrap();
    vm.kill().unwrap();
    vm.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        tree.path("/var/lib/microvms/old/old.img").exists(),
        "the disk of a running VM was deleted: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{printed}\n{stderr}");
    assert!(printed.contains("uses it now"), "{printed}");
}

/// When a kept VM's runner cannot be read (its `current` was garbage-collected, or its state
/// directory is a symbolic link that the scan does not follow), what it uses is unknown: it may be
/// the orphan's directory (a renamed VM's data), so `--purge-state` refuses.
#[test]
fn a_kept_vm_whose_runner_cannot_be_read_blocks_purges() {
    for case in ["broken current", "symlinked state dir"] {
        let tree = Tree::new("unknown-runner");
        let runner = runner_with_paths(
            &tree,
            "firewall",
            "/var/lib/microvms/fw/var.img",
            "/var/lib/microvms/fw/journal",
        );
        if case == "broken current" {
            tree.link(
                "/var/lib/microvms/firewall/current",
                "/nix/store/gone-microvm-qemu-firewall",
            );
        } else {
            tree.link("/srv/firewall/current", &runner)
                .link("/var/lib/microvms/firewall", "/srv/firewall");
        }
        tree.toplevel("fw", "old-fw")
            .file("/var/lib/microvms/fw/var.img", "disk");
        purge_refused(
            &tree,
            "firewall",
            "fw",
            "the runner of the kept VM 'firewall' cannot be read",
            case,
        );
    }
    // A declared VM whose state "directory" links to a file holds no runner: no unknown there.
    let tree = Tree::new("runner-in-a-file");
    // Nor does one whose runner has no bin/microvm-run (it cannot run: the template's condition).
    tree.file("/srv/not-a-dir", "x")
        .link("/var/lib/microvms/web", "/srv/not-a-dir")
        .file(
            "/nix/store/db-runner/share/microvm/tap-interfaces",
            "vm-db0\n",
        )
        .link("/var/lib/microvms/db/current", "/nix/store/db-runner")
        // Nor one with no runner link at all (not installed yet, or made by hand).
        .file("/var/lib/microvms/plain/plain.img", "disk")
        .toplevel("fw", "old-fw")
        .file("/var/lib/microvms/fw/var.img", "disk");
    let (_, gone) = prune_succeeds(
        &tree,
        &["--declared", "web,db,plain", "--purge-state", "fw"],
    );
    assert!(!tree.path("/var/lib/microvms/fw").exists(), "{gone:?}");
}

/// Shape 4 through a symbolic link: the stateDir `/var/lib/microvms` links to `/srv/vms`, whose
/// storage `/etc/fstab` mounts and is not mounted. The link's spelling names no mount point,
/// what it leads to does: nothing is changed.
#[test]
fn an_unmounted_state_dir_behind_a_symlink_changes_nothing() {
    let tree = Tree::new("unmounted-link");
    tree.dir("/srv/vms")
        .link("/var/lib/microvms", "/srv/vms")
        .file(
            "/etc/fstab",
            "/dev/disk/by-label/vms /srv/vms ext4 defaults 0 2\n",
        )
        .gc_root("imp", "/var/lib/microvms/imp/current")
        .run_drop_in("imp");
    prune_changing_nothing(&tree, &["--declared", ""], 1, "")
        .assert_problem("the stateDir /var/lib/microvms is not mounted");
}

/// A GC root belongs to the VM whose directory its target is in, as the kernel walks it:
/// `<stateDir>/old/../imp/booted` is `imp`'s, not the orphan `old`'s. Whose a target like that
/// is, is not told by its first component: it is of unknown owner and kept. A doubled slash
/// changes nothing: `<stateDir>//old/current` is `old`'s.
#[test]
fn a_gc_root_target_with_dot_dot_is_not_the_first_components() {
    let tree = Tree::new("gcroot-dotdot");
    tree.imperative_vm("imp")
        .toplevel("old", "old")
        .gc_root("imp-extra", "/var/lib/microvms/old/../imp/booted")
        .gc_root("old2", "/var/lib/microvms//old/current");
    let (run, gone) = prune_succeeds(&tree, &["--declared", ""]);
    let gcroots: Vec<_> = gone
        .iter()
        .filter(|line| line.contains("gcroots"))
        .collect();
    assert_eq!(
        gcroots,
        ["/root/nix/var/nix/gcroots/microvm/old2 -> /var/lib/microvms//old/current"],
        "removed: {gone:?}"
    );
    assert_eq!(
        run.class_of("/nix/var/nix/gcroots/microvm/imp-extra"),
        "unknown"
    );
}

/// A kept VM whose runner link leads through an orphan's directory (`firewall/current ->
/// ../fw/current`, after a rename) would lose its runner with that directory: not purged.
#[test]
fn a_kept_vms_runner_link_into_an_orphans_dir_blocks_its_purge() {
    let tree = Tree::new("runner-through-orphan");
    let runner = tree.runner("firewall", &[], &[]);
    tree.installed("fw", &runner, "old-fw")
        .link("/var/lib/microvms/firewall/current", "../fw/current")
        .toplevel("firewall", "fw");
    purge_refused(
        &tree,
        "firewall",
        "fw",
        "the runner of the kept VM 'firewall' uses /var/lib/microvms/fw/current",
        "",
    );
}

/// A kept VM that shares a directory above an orphan's (the stateDir, `/var/lib`) sees the
/// orphan's files in its guest: they are in use, and not purged.
#[test]
fn a_kept_vms_share_above_an_orphans_dir_blocks_its_purge() {
    for source in ["/var/lib/microvms", "/var/lib/", "/srv/link-to-state"] {
        let tree = Tree::new("share-above");
        let runner = runner_with_paths(&tree, "web", "/srv/web.img", source);
        tree.installed("web", &runner, "web")
            .link("/srv/link-to-state", "/var/lib/microvms/old")
            .toplevel("old", "old")
            .file("/var/lib/microvms/old/old.img", "disk");
        purge_refused(
            &tree,
            "web",
            "old",
            "the runner of the kept VM 'web' uses",
            source,
        );
    }
}

/// An orphan that is kept whole (it runs outside systemd) still uses the shared templates: they
/// are not removed as if no VM were left.
#[test]
fn an_orphan_kept_whole_keeps_the_templates() {
    let tree = Tree::new("kept-whole-templates");
    let runner = tree.runner("old", &[], &[]);
    tree.installed("old", &runner, "old")
        .file("/var/lib/microvms/old/old.img", "disk")
        .file("/run/systemd/system/microvm@.service", "[Service]\n")
        .file(
            "/run/systemd/system/microvm-tap-interfaces@.service",
            "[Service]\n",
        );
    let mut child = old_vm_process(&tree);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (run, gone) = prune_as_planned(&tree, &["--declared", ""]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr());
    assert!(gone.is_empty(), "removed: {gone:?}");
}

/// Offline (`--root` is not the running system), systemd was not asked, so a process in the
/// VM's own unit is not known to be covered by a stop: it uses the directory like any other.
/// (A stateDir on storage that the running host also mounts, with the VM running there.)
#[test]
fn offline_a_process_in_the_vms_own_unit_still_uses_it() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    let base = if unified.join("cgroup.procs").exists() {
        unified.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    };
    let group = base.join(format!("persist-prep-test-{}", std::process::id()));
    let unit = group.join("microvm@old.service");
    if fs::create_dir_all(&unit).is_err() {
        skip("cannot create a cgroup (needs root and a writable cgroup2 hierarchy)");
        return;
    }
    let tree = Tree::new("own-unit-offline");
    tree.toplevel("old", "old")
        .file("/var/lib/microvms/old/old.img", "disk");
    let mut child = old_vm_process(&tree);
    let moved = fs::write(unit.join("cgroup.procs"), child.id().to_string());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = tree.snapshot();
    let run = tree.run(&["prune", "--json", "--declared", "", "--purge-state", "old"]);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = fs::remove_dir(&unit);
    let _ = fs::remove_dir(&group);
    moved.expect("moving the process into the cgroup");
    assert_eq!(run.code, 2, "{}", run.stderr());
    run.assert_problem(&format!("process {} uses it", child.id()));
    assert_eq!(tree.snapshot(), before);
}

/// The installed template names the stateDir in more places than its condition
/// (`WorkingDirectory=`, `ExecStart=`): a microvm.nix that spells its condition otherwise (or a
/// template replaced by hand) still tells. Read from the condition alone, `/srv/microvms` was
/// missed, the default was used, and the imperative VM there looked like an orphan.
#[test]
fn the_state_dir_comes_from_any_path_of_the_template() {
    let tree = Tree::new("template-no-condition");
    let runner = tree.runner("imp", &[], &[]);
    tree.file(
        "/etc/systemd/system/microvm@.service",
        "[Service]\nWorkingDirectory=/srv/microvms/%i\n\
         ExecStart=/srv/microvms/%i/current/bin/microvm-run\n",
    )
    .link("/srv/microvms/imp/current", &runner)
    .file("/srv/microvms/imp/flake", "git+file:///etc/nixos")
    .gc_root("imp", "/srv/microvms/imp/current")
    .run_drop_in("imp");
    let run = prune_removing_nothing(&tree, &["--declared", ""]);
    assert_eq!(run.json["stateDir"], "/srv/microvms");
    // Two different stateDirs in one template: which one runs is unknown.
    tree.file(
        "/etc/systemd/system/microvm@.service",
        "[Service]\nWorkingDirectory=/srv/microvms/%i\n\
         ExecStart=/var/lib/microvms/%i/current/bin/microvm-run\n",
    );
    prune_changing_nothing(&tree, &["--declared", ""], 1, "")
        .assert_problem("names several stateDirs");
}

/// `microvm.stateDir = "/srv/vms/"`: the `microvm` command spells its GC roots
/// `/srv/vms//imp/current`. They are still `imp`'s, so `imp` is imperative, not an orphan.
#[test]
fn gc_roots_under_a_state_dir_with_a_trailing_slash_are_the_vms() {
    let tree = Tree::new("trailing-slash");
    let runner = tree.runner("imp", &[], &[]);
    tree.file(
        "/etc/systemd/system/microvm@.service",
        "[Unit]\nConditionPathExists=/srv/vms//%i/current/bin/microvm-run\n",
    )
    .link("/srv/vms/imp/current", &runner)
    .file("/srv/vms/imp/flake", "git+file:///etc/nixos")
    .gc_root("imp", "/srv/vms//imp/current")
    .gc_root("booted-imp", "/srv/vms//imp/booted")
    .run_drop_in("imp");
    let run = prune_removing_nothing(&tree, &["--declared", ""]);
    assert_eq!(vm_json(&run, "imp")["class"], "imperative");
}

/// `systemctl mask microvms.target` (or `microvm@.service`) links it to `/dev/null`: a masked
/// unit is no unreadable evidence. The masked target wants nothing (the configuration's own
/// target is still read), and a masked template leaves the stateDir to the one below it.
#[test]
fn masked_units_are_not_unreadable() {
    let tree = nixos_host();
    target_wants(&tree, &["web"]);
    tree.dir("/dev");
    let status = Command::new("mknod")
        .arg(tree.path("/dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    if !status.success() {
        skip("cannot make a device node (needs root)");
        return;
    }
    tree.link("/run/systemd/system/microvms.target", "/dev/null")
        .link("/etc/systemd/system.control/microvm@.service", "/dev/null");
    let run = tree.run(&["status", "--json", "--declared", "web"]);
    assert_eq!(run.code, 0, "{:?}", run.problems());
    assert_eq!(run.json["stateDir"], "/var/lib/microvms");
}

/// A mask (`systemctl mask`, a link to `/dev/null`) is the admin's decision, not a leftover:
/// unmasking `microvms.target` would start the autostarted VMs again at the next boot, and
/// unmasking an orphan's unit would let its remaining state be started. Masks are kept.
#[test]
fn masks_are_never_removed() {
    let tree = Tree::new("masks");
    tree.link("/etc/systemd/system/microvms.target", "/dev/null")
        .link("/etc/systemd/system/microvm@.service", "/dev/null")
        .link("/etc/systemd/system/microvm@old.service", "/dev/null")
        .toplevel("old", "old")
        .run_drop_in("old");
    let (run, gone) = prune_succeeds(&tree, &["--declared", ""]);
    assert_eq!(
        gone,
        [
            "/root/run/systemd/system/microvm@old.service.d/",
            "/root/run/systemd/system/microvm@old.service.d/override.conf (10 bytes)"
        ]
        .into_iter()
        .map(str::to_owned)
        .collect(),
        "{:?}",
        run.plan()
    );
}

/// `systemctl edit microvms.target` (a drop-in with `Wants=microvm@ci.service`) makes the active
/// target want `ci` as much as its unit file does: `ci` is autostarted and kept whole.
#[test]
fn a_target_drop_in_that_wants_a_vm_keeps_it() {
    let tree = nixos_host();
    tree.ci_vm().file(
        "/run/systemd/system/microvms.target.d/override.conf",
        "[Unit]\nWants=microvm@ci.service\n",
    );
    let (run, gone) = prune_succeeds(&tree, &["--declared", "web"]);
    assert!(
        !gone.iter().any(|line| line.contains("ci")),
        "removed: {gone:?}"
    );
    assert_eq!(vm_json(&run, "ci")["evidence"]["autostarted"], true);
}

/// A process whose working directory is on a hung NFS or FUSE mount must not hang the scan of
/// `/proc` (the module's unit runs prune after every switch): identities are taken from the
/// kernel's cache, without asking the file system.
#[test]
fn a_process_on_a_hung_mount_does_not_hang_the_scan() {
    let tree = Tree::new("hung-mount");
    tree.toplevel("old", "old");
    let base = tree.root.parent().unwrap().to_path_buf();
    let (mountpoint, flag) = (base.join("fuse"), base.join("hang"));
    fs::create_dir(&mountpoint).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hung_fuse.py");
    let mut server = Command::new("python3")
        .arg(&script)
        .arg(&mountpoint)
        .arg(&flag)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    if line.trim() != "mounted" {
        let _ = server.kill();
        let _ = server.wait();
        skip(&format!("cannot mount a FUSE file system: {}", line.trim()));
        return;
    }
    let mut user = Command::new("sleep")
        .arg("60")
        .current_dir(&mountpoint)
        .spawn()
        .unwrap();
    fs::write(&flag, "").unwrap();
    // A process stuck on the hung mount cannot even be killed; ending the server releases it.
    let mut status = Command::new(BIN)
        .args(["microvm", "status", "--json", "--declared", ""])
        .arg("--root")
        .arg(&tree.root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut finished = None;
    for _ in 0..200 {
        finished = status.try_wait().unwrap();
        if finished.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let code = status.wait().unwrap().code();
    user.kill().unwrap();
    user.wait().unwrap();
    let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
    assert!(finished.is_some(), "status hung on the mount");
    assert_eq!(code, Some(0));
}
