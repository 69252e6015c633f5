//! The volume check cannot be fooled: a storage whose path leads off its mountPoint's volume,
//! by a symlink or a bind mount of a directory on the root, gets nothing created on either
//! side, and `check` reports the same state. Each case runs in a private mount namespace.

mod common;

use common::{Scratch, exists, require_root};

const MANIFEST: &str = r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/nix","directories":[
  {"path":"/var/lib/app","user":"root","group":"root","mode":"0700"}],
  "files":[{"path":"/etc/machine-id"}]}]}"#;

/// Runs `setup` then apply and check in one namespace; returns both JSON documents' storage
/// states and messages, and apply's stderr.
fn run_case(name: &str, setup: &str) -> (Scratch, serde_json::Value, serde_json::Value, String) {
    let s = Scratch::new(name);
    s.manifest(MANIFEST);
    std::fs::create_dir_all(s.root().join("nix")).unwrap();
    let script = format!(
        r#"{setup}
        "$BIN" apply --json --manifest "$MANIFEST" --root "$ROOT" --state-dir "$STATE" > "$ROOT/../apply.json" || true
        "$BIN" check --json --manifest "$MANIFEST" --root "$ROOT" --state-dir "$STATE" > "$ROOT/../check.json" || true
        find "$ROOT" -path "$ROOT/nix" -prune -o -print | sort > "$ROOT/../tree-outside-nix"
        find "$ROOT/nix/" | sort > "$ROOT/../tree-in-nix""#
    );
    let run = s.in_namespace(&script);
    run.assert_code(0);
    let read = |f: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(s.dir.join(f)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}: {text}\n{}", run.stderr))
    };
    let (apply, check) = (read("apply.json"), read("check.json"));
    (s, apply, check, run.stderr)
}

fn assert_not_mounted(name: &str, setup: &str, why: &str) {
    let (s, apply, check, stderr) = run_case(name, setup);
    for doc in [&apply, &check] {
        let storage = &doc["storages"][0];
        assert_eq!(storage["state"], "not-mounted", "{name}: {doc}\n{stderr}");
        let message = storage["message"].as_str().unwrap();
        assert!(message.contains(why), "{name}: {message}");
        assert!(message.contains("Fix: "), "{name}: {message}");
        assert_eq!(doc["entries"][0]["state"], "storage-not-mounted", "{name}");
        assert!(doc["entries"][0]["actions"].as_array().unwrap().is_empty());
    }
    assert_eq!(apply["summary"]["created"], 0, "{name}: {apply}");
    assert!(
        !exists(s.root().join("var")),
        "{name}: a mount point was created"
    );
    assert!(
        !exists(s.root().join("etc")),
        "{name}: a file's parent was created"
    );
    let outside = std::fs::read_to_string(s.dir.join("tree-outside-nix")).unwrap();
    assert!(
        !outside.contains("/var") && !outside.contains("/app"),
        "{name}: created on the root:\n{outside}"
    );
}

#[test]
fn a_storage_symlinked_to_a_directory_on_the_root_is_not_mounted() {
    if !require_root() {
        return;
    }
    assert_not_mounted(
        "vol-symlink",
        r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/persist"; ln -s /persist "$ROOT/nix/persist""#,
        "/nix/persist is a symlink to /persist, which leads off the volume",
    );
}

#[test]
fn a_storage_bind_mounted_from_the_root_is_not_mounted() {
    if !require_root() {
        return;
    }
    assert_not_mounted(
        "vol-bind-storage",
        r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/elsewhere" "$ROOT/nix/persist"
           mount --bind "$ROOT/elsewhere" "$ROOT/nix/persist""#,
        "/nix/persist is a bind mount of a directory on the root's own file system",
    );
}

#[test]
fn a_mount_point_bind_mounted_from_the_root_is_not_mounted() {
    if !require_root() {
        return;
    }
    assert_not_mounted(
        "vol-bind-mp",
        r#"mkdir "$ROOT/fake"; mount --bind "$ROOT/fake" "$ROOT/nix""#,
        "/nix is a mount of the root's own file system",
    );
    assert_not_mounted(
        "vol-bind-root",
        r#"mount --bind "$ROOT" "$ROOT/nix""#,
        "/nix is a mount of the root's own file system",
    );
}

/// Without `/proc` (an installer's chroot) a storage on a mount beneath its mountPoint cannot
/// be told from a bind mount: say that mountinfo could not be read and how to fix it, instead
/// of calling a correct storage a symlink or bind mount.
#[test]
fn without_proc_the_missing_evidence_is_named_with_its_fix() {
    if !require_root() {
        return;
    }
    let (s, apply, check, stderr) = run_case(
        "vol-no-proc",
        r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/nix/persist"; mount -t tmpfs tmpfs "$ROOT/nix/persist"
           mount -t tmpfs noproc /proc"#,
    );
    for doc in [&apply, &check] {
        let storage = &doc["storages"][0];
        assert_eq!(storage["state"], "not-mounted", "{doc}\n{stderr}");
        let message = storage["message"].as_str().unwrap();
        assert!(
            message.contains("/proc/self/mountinfo cannot be read"),
            "{message}"
        );
        assert!(message.contains("Fix: mount /proc"), "{message}");
        assert!(!message.contains("bind mount of"), "{message}");
    }
    assert!(!exists(s.root().join("var")));
}

#[test]
fn a_storage_on_a_mount_beneath_the_volume_or_bound_within_it_is_used() {
    if !require_root() {
        return;
    }
    for (name, setup) in [
        (
            "vol-beneath",
            r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/nix/persist"; mount -t tmpfs tmpfs "$ROOT/nix/persist""#,
        ),
        (
            "vol-bind-within",
            r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/nix/real" "$ROOT/nix/persist"
               mount --bind "$ROOT/nix/real" "$ROOT/nix/persist""#,
        ),
        (
            "vol-link-within",
            r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir "$ROOT/nix/real"; ln -s /nix/real "$ROOT/nix/persist""#,
        ),
    ] {
        let (s, apply, check, stderr) = run_case(name, setup);
        assert_eq!(
            apply["storages"][0]["state"], "ok",
            "{name}: {apply}\n{stderr}"
        );
        assert_eq!(apply["summary"]["created"], 2, "{name}: {apply}");
        assert_eq!(check["summary"]["notOk"], 0, "{name}: {check}");
        assert!(exists(s.root().join("var/lib/app")), "{name}");
        let inside = std::fs::read_to_string(s.dir.join("tree-in-nix")).unwrap();
        assert!(inside.contains("/var/lib/app"), "{name}: {inside}");
    }
}

#[test]
fn a_bind_of_the_roots_file_system_below_the_storage_gets_nothing_created() {
    if !require_root() {
        return;
    }
    // /nix/persist/var/lib is a bind mount of a directory on the root's own file system: what
    // is made below it lands there, off the volume.
    let (s, apply, check, stderr) = run_case(
        "vol-bind-below",
        r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir -p "$ROOT/nix/persist/var/lib" "$ROOT/ephemeral"
           mount --bind "$ROOT/ephemeral" "$ROOT/nix/persist/var/lib""#,
    );
    for doc in [&apply, &check] {
        let entry = common::entry(doc, "/var/lib/app");
        assert_eq!(entry["state"], "error", "{doc}\n{stderr}");
        let message = entry["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(
                "/nix/persist/var/lib is a bind mount of a directory on the root's own file system"
            ),
            "{message}"
        );
    }
    assert!(
        !exists(s.root().join("ephemeral/app")),
        "created off the volume:\n{stderr}"
    );
    assert_ne!(check["summary"]["notOk"], 0, "{check}");
}

#[test]
fn a_volume_mounted_below_the_storage_is_used() {
    if !require_root() {
        return;
    }
    let (s, apply, _, stderr) = run_case(
        "vol-mount-below",
        r#"mount -t tmpfs tmpfs "$ROOT/nix"; mkdir -p "$ROOT/nix/persist/var/lib"
           mount -t tmpfs tmpfs "$ROOT/nix/persist/var/lib""#,
    );
    assert_eq!(apply["summary"]["failed"], 0, "{apply}\n{stderr}");
    assert_eq!(apply["summary"]["created"], 2, "{apply}\n{stderr}");
    assert!(exists(s.root().join("var/lib/app")));
}
