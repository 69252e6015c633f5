//! `persist-prep apply` on real trees, as root: owners, modes, mounts, symlinks, full and
//! read-only file systems.

mod common;

use common::{Scratch, exists, require_root, stat};

const TWO_USERS: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/app","user":"appuser","group":"appgroup","uid":1234,"gid":2345,"mode":"0750",
   "origin":"environment.persistence.\"/persist\".directories"},
  {"path":"/var/lib/private","user":"root","group":"root","mode":"u=rwx,go=","origin":"opt.private"},
  {"path":"/srv/share","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"2770",
   "parent":{"user":"root","group":"root","mode":"0711"}}],
 "files":[{"path":"/etc/ssh/ssh_host_ed25519_key","parent":{"user":"root","group":"root","mode":"0751"}}]}]}"#;

#[test]
fn fresh_creation_gives_declared_owner_and_mode_on_both_sides() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("fresh");
    s.manifest(TWO_USERS);
    let run = s.run(&["apply"]);
    run.assert_code(0);
    let r = s.root();
    for side in [r.join("persist"), r.clone()] {
        assert_eq!(stat(side.join("var/lib/app")), (0o750, 1234, 2345));
        assert_eq!(stat(side.join("var/lib/private")), (0o700, 0, 0));
        assert_eq!(stat(side.join("srv/share")), (0o2770, 65534, 65534));
        // Missing parents take the entry's `parent` attributes, or root root 0755.
        assert_eq!(stat(side.join("srv")), (0o711, 0, 0));
        assert_eq!(stat(side.join("var/lib")), (0o755, 0, 0));
        assert_eq!(stat(side.join("etc/ssh")), (0o751, 0, 0));
        // A file entry gets its parents only, never the file.
        assert!(!exists(side.join("etc/ssh/ssh_host_ed25519_key")));
    }
    assert_eq!(stat(r.join("persist")), (0o755, 0, 0));
    assert!(
        run.stderr
            .contains("summary: 4 created, 0 present, 0 drift, 0 deferred, 0 failed, 0 skipped"),
        "{}",
        run.stderr
    );
    // One line per entry: its source and mount point with their attributes, parents counted.
    let root = r.display();
    let line = format!(
        "directory /var/lib/app (from environment.persistence.\"/persist\".directories): created {root}/persist/var/lib/app and {root}/var/lib/app (appuser:appgroup 0750), with 4 missing parents"
    );
    assert!(
        run.stderr.lines().any(|l| l == line),
        "{line}\nnot in\n{}",
        run.stderr
    );
    let file_line = format!(
        "file /etc/ssh/ssh_host_ed25519_key (storages[0].files[0]): created the parent directories {root}/persist/etc (root:root 0751), {root}/persist/etc/ssh (root:root 0751), {root}/etc (root:root 0751), {root}/etc/ssh (root:root 0751)"
    );
    assert!(
        run.stderr.lines().any(|l| l == file_line),
        "{file_line}\nnot in\n{}",
        run.stderr
    );
}

#[test]
fn second_run_changes_nothing() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("rerun");
    s.manifest(TWO_USERS);
    s.run(&["apply"]).assert_code(0);
    let before = s.snapshot();
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    assert_eq!(before, s.snapshot(), "the second run touched something");
    let summary = &run.json()["summary"];
    assert_eq!(summary["present"], 4);
    assert_eq!(summary["created"], 0);
}

#[test]
fn ancestor_entries_get_their_own_attributes_whatever_the_order() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("ancestor");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
          {"path":"/home/alice/.ssh","user":"alice","group":"users","uid":1000,"gid":100,"mode":"0700"},
          {"path":"/home/alice","user":"alice","group":"users","uid":1000,"gid":100,"mode":"0711"}]}]}"#,
    );
    s.run(&["apply"]).assert_code(0);
    assert_eq!(
        stat(s.root().join("persist/home/alice")),
        (0o711, 1000, 100)
    );
    assert_eq!(stat(s.root().join("home/alice")), (0o711, 1000, 100));
    assert_eq!(
        stat(s.root().join("persist/home/alice/.ssh")),
        (0o700, 1000, 100)
    );
}

#[test]
fn existing_paths_are_never_changed_and_drift_is_reported() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("drift");
    s.manifest(TWO_USERS);
    let app = s.root().join("persist/var/lib/app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("data"), "keep").unwrap();
    let before = stat(&app);
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    assert_eq!(stat(&app), before, "an existing directory was changed");
    assert_eq!(std::fs::read_to_string(app.join("data")).unwrap(), "keep");
    let doc = run.json();
    let entry = common::entry(&doc, "/var/lib/app");
    assert_eq!(entry["state"], "drift");
    assert!(
        run.stderr
            .contains("exists as 0:0 0755 but is declared appuser:appgroup (1234:2345) 0750"),
        "{}",
        run.stderr
    );
    // The mount point copies the source's actual attributes, as impermanence does.
    assert_eq!(stat(s.root().join("var/lib/app")), before);
}

#[test]
fn names_resolve_from_passwd_and_from_nixos_id_maps() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("names");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
          {"path":"/var/lib/a","user":"alice","group":"wheel","mode":"0700"},
          {"path":"/var/lib/b","user":"colord","group":"colord","mode":"0750"},
          {"path":"/var/lib/c","user":"onlyinstorage","group":"colord","mode":"0750"}]}]}"#,
    );
    let r = s.root();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nalice:x:1001:100::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\nwheel:x:1:alice\n").unwrap();
    std::fs::create_dir_all(r.join("var/lib/nixos")).unwrap();
    std::fs::write(r.join("var/lib/nixos/uid-map"), r#"{"colord": 997}"#).unwrap();
    std::fs::write(r.join("var/lib/nixos/gid-map"), r#"{"colord": 996}"#).unwrap();
    // A persisted map inside the storage, as impermanence users keep /var/lib/nixos.
    std::fs::create_dir_all(r.join("persist/var/lib/nixos")).unwrap();
    std::fs::write(
        r.join("persist/var/lib/nixos/uid-map"),
        r#"{"onlyinstorage": 555}"#,
    )
    .unwrap();
    s.run(&["apply"]).assert_code(0);
    assert_eq!(stat(r.join("persist/var/lib/a")), (0o700, 1001, 1));
    assert_eq!(stat(r.join("persist/var/lib/b")), (0o750, 997, 996));
    assert_eq!(stat(r.join("persist/var/lib/c")), (0o750, 555, 996));
    assert!(!exists(s.state().join("deferred.json")));
}

#[test]
fn unresolvable_owners_are_deferred_then_finished() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("deferred");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
          {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750","origin":"opt.svc"},
          {"path":"/var/lib/known","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    let r = s.root();
    let run = s.run(&["apply"]);
    // Not resolvable yet is normal in the initrd: it must not fail the boot.
    run.assert_code(0);
    assert!(
        run.stderr.contains("cannot be resolved yet"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("1 deferred"), "{}", run.stderr);
    assert_eq!(stat(r.join("persist/var/lib/svc")), (0o750, 0, 0));
    assert!(exists(s.state().join("deferred.json")));
    s.run(&["check"]).assert_code(1);

    // Still unknown: finish keeps the record and says so.
    let run = s.run(&["finish"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("still cannot be resolved"),
        "{}",
        run.stderr
    );

    // The users appear (as NixOS activation writes them); finish gives the owner.
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        "svc:x:4001:4001::/var/empty:/bin/false\n",
    )
    .unwrap();
    std::fs::write(r.join("etc/group"), "svc:x:4001:\n").unwrap();
    s.run(&["finish"]).assert_code(0);
    assert_eq!(stat(r.join("persist/var/lib/svc")), (0o750, 4001, 4001));
    assert_eq!(stat(r.join("var/lib/svc")), (0o750, 4001, 4001));
    assert!(
        !exists(s.state().join("deferred.json")),
        "the record should be gone"
    );
    s.run(&["check"]).assert_code(0);
}

#[test]
fn finish_leaves_a_replaced_directory_alone() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("replaced");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#,
    );
    s.run(&["apply"]).assert_code(0);
    let r = s.root();
    // Keep the old one around so that the new directory cannot reuse its inode number.
    std::fs::rename(
        r.join("persist/var/lib/svc"),
        r.join("persist/var/lib/svc.old"),
    )
    .unwrap();
    std::fs::create_dir(r.join("persist/var/lib/svc")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(r.join("etc/passwd"), "svc:x:4001:4001::/:/bin/false\n").unwrap();
    std::fs::write(r.join("etc/group"), "svc:x:4001:\n").unwrap();
    let run = s.run(&["finish"]);
    assert!(
        run.stderr
            .contains("not the directory persist-prep created"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stat(r.join("persist/var/lib/svc")).1,
        0,
        "a directory we did not create was chowned"
    );
    assert_eq!(stat(r.join("var/lib/svc")).1, 4001);
}

#[test]
fn nothing_is_created_when_the_storage_mount_is_absent() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("unmounted");
    s.manifest(
        r#"{"version":1,"storages":[
          {"path":"/nix/persist","mountPoint":"/nix","directories":[
            {"path":"/var/log","user":"root","group":"root","mode":"0755"}]},
          {"path":"/other","directories":[{"path":"/srv/x","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    std::fs::create_dir_all(s.root().join("nix")).unwrap();
    let before_nix = s
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("/nix"))
        .collect::<Vec<_>>();
    let run = s.run(&["apply"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("storage /nix/persist:")
            && run
                .stderr
                .contains("is not a mount point, so the persistent volume is not mounted")
            && run
                .stderr
                .contains("fileSystems.\"/nix\".neededForBoot = true"),
        "{}",
        run.stderr
    );
    let after_nix = s
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("/nix"))
        .collect::<Vec<_>>();
    assert_eq!(
        before_nix, after_nix,
        "something was created under an unmounted storage"
    );
    assert!(
        !exists(s.root().join("var/log")),
        "the mount point was created for an unmounted storage"
    );
    // The other storage was still processed.
    assert_eq!(stat(s.root().join("other/srv/x")), (0o700, 0, 0));
    assert!(
        run.stderr.contains("1 created") && run.stderr.contains("1 skipped"),
        "{}",
        run.stderr
    );
}

#[test]
fn storage_is_used_once_its_volume_is_mounted() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("mounted");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/nix/persist","mountPoint":"/nix","directories":[
            {"path":"/var/log","user":"root","group":"systemd-journal","gid":190,"mode":"2755"}]}]}"#,
    );
    std::fs::create_dir_all(s.root().join("nix")).unwrap();
    let run = s.in_namespace(
        r#"mount -t tmpfs tmpfs "$ROOT/nix"
           "$BIN" apply --manifest "$MANIFEST" --root "$ROOT" --state-dir "$STATE"
           stat -c '%a %u:%g' "$ROOT/nix/persist/var/log""#,
    );
    run.assert_code(0);
    assert!(
        run.stdout.trim_end().ends_with("2755 0:190"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    // Created on the mounted volume, which the namespace took away: nothing on the root fs below /nix.
    assert!(!exists(s.root().join("nix/persist")));
    assert_eq!(stat(s.root().join("var/log")), (0o2755, 0, 190));
}

#[test]
fn a_symlink_planted_in_the_storage_cannot_lead_outside() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("symlink");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
            {"path":"/var/lib/evil","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"0700","origin":"opt.evil"},
            {"path":"/srv/good","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    let outside = s.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(s.root().join("persist")).unwrap();
    // Absolute link to the real "/" relative to the root, and a relative one climbing out.
    std::os::unix::fs::symlink(&outside, s.root().join("persist/var")).unwrap();
    let run = s.run(&["apply"]);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("directory /var/lib/evil (from opt.evil)")
            && run.stderr.contains("persist/var is a symlink (->")
            && run.stderr.contains("Fix:"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
    assert!(!exists(s.root().join("var/lib/evil")));
    // Every entry is processed even when one fails.
    assert_eq!(stat(s.root().join("persist/srv/good")), (0o700, 0, 0));

    std::fs::remove_file(s.root().join("persist/var")).unwrap();
    std::os::unix::fs::symlink("../../../outside", s.root().join("persist/var")).unwrap();
    s.run(&["apply"]).assert_code(1);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written outside"
    );
}

#[test]
fn a_symlink_on_the_root_side_is_refused_too() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("rootlink");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/x","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    let outside = s.dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, s.root().join("var")).unwrap();
    let run = s.run(&["apply"]);
    run.assert_code(1);
    assert!(run.stderr.contains("/var is a symlink"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn a_symlinked_storage_path_resolves_inside_the_root() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("storagelink");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/srv/x","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    // `/persist -> /data` is fine: it resolves inside the root, as after switch-root.
    std::fs::create_dir_all(s.root().join("data")).unwrap();
    std::os::unix::fs::symlink("/data", s.root().join("persist")).unwrap();
    s.run(&["apply"]).assert_code(0);
    assert_eq!(stat(s.root().join("data/srv/x")), (0o700, 0, 0));
    // `/persist -> /../../..` cannot climb out of the root either.
    std::fs::remove_file(s.root().join("persist")).unwrap();
    std::os::unix::fs::symlink("/../../..", s.root().join("persist")).unwrap();
    s.run(&["apply"]).assert_code(0);
    assert!(
        exists(s.root().join("srv/x")),
        "IN_ROOT must clamp .. at the root"
    );
    assert!(!exists(s.dir.join("srv")));
}

#[test]
fn a_file_where_a_directory_should_be_is_an_error_for_that_entry() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("file");
    s.manifest(TWO_USERS);
    std::fs::create_dir_all(s.root().join("persist/var/lib")).unwrap();
    std::fs::write(s.root().join("persist/var/lib/app"), "precious").unwrap();
    let run = s.run(&["apply", "--json"]);
    run.assert_code(1);
    assert_eq!(
        std::fs::read_to_string(s.root().join("persist/var/lib/app")).unwrap(),
        "precious"
    );
    let doc = run.json();
    let entry = common::entry(&doc, "/var/lib/app");
    assert_eq!(entry["state"], "not-a-directory");
    assert!(
        entry["fix"]
            .as_str()
            .unwrap()
            .contains("move the file away")
    );
    assert_eq!(doc["summary"]["failed"], 1);
    assert_eq!(doc["summary"]["created"], 3);
}

/// Applies `TWO_USERS` with the storage on a tmpfs mounted with `options`; returns its stderr.
fn apply_on_tmpfs(name: &str, options: &str) -> Option<String> {
    if !require_root() {
        return None;
    }
    let s = Scratch::new(name);
    s.manifest(TWO_USERS);
    std::fs::create_dir_all(s.root().join("persist")).unwrap();
    let run = s.in_namespace(&format!(
        r#"mount -t tmpfs -o {options} tmpfs "$ROOT/persist"
           "$BIN" apply --manifest "$MANIFEST" --root "$ROOT" --state-dir "$STATE" || echo "exit=$?""#
    ));
    assert!(
        run.stdout.contains("exit=1"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    Some(run.stderr)
}

#[test]
fn a_read_only_storage_fails_with_erofs_and_the_fix() {
    let Some(stderr) = apply_on_tmpfs("rofs", "ro") else {
        return;
    };
    assert!(
        stderr.contains("Read-only file system (EROFS)") && stderr.contains("mount it read-write"),
        "{stderr}"
    );
    assert!(stderr.contains("4 failed"), "{stderr}");
}

#[test]
fn a_full_file_system_fails_with_enospc_and_the_fix() {
    // Room for the root inode and three directories, no more.
    let Some(stderr) = apply_on_tmpfs("enospc", "nr_inodes=4,size=64k") else {
        return;
    };
    assert!(
        stderr.contains("No space left on device (ENOSPC)") && stderr.contains("free space"),
        "{stderr}"
    );
}

/// Every directory a `--json` document says was (or would be) made, in order.
fn action_paths(doc: &serde_json::Value) -> Vec<String> {
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["actions"].as_array().unwrap().iter())
        .map(|a| a["path"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn dry_run_creates_nothing_and_lists_the_plan() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("dryrun");
    s.manifest(TWO_USERS);
    let before = s.snapshot();
    let run = s.run(&["apply", "--dry-run", "--json"]);
    run.assert_code(0);
    assert_eq!(before, s.snapshot());
    let doc = run.json();
    assert_eq!(doc["dryRun"], true);
    assert_eq!(doc["summary"]["wouldCreate"], 4);
    let planned = action_paths(&doc);
    // The plan is what apply then does.
    let done = action_paths(&s.run(&["apply", "--json"]).json());
    assert_eq!(planned, done);
}

#[test]
fn invalid_manifests_are_rejected_before_anything_is_created() {
    if !require_root() {
        return;
    }
    let cases = [
        r#"{"version":2,"storages":[]}"#,
        r#"{"version":1,"storages":[{"path":"relative","directories":[]}]}"#,
        r#"{"version":1,"storages":[{"path":"/p","directories":[{"path":"/a/../b","user":"root","group":"root","mode":"0755"}]}]}"#,
        r#"{"version":1,"storages":[{"path":"/p","directories":[{"path":"","user":"root","group":"root","mode":"0755"}]}]}"#,
        r#"{"version":1,"storages":[{"path":"/p","directories":[{"path":"/a","user":"root","group":"root","mode":"0855"}]}]}"#,
        r#"{"version":1,"storages":[{"path":"/p","directories":[
            {"path":"/ok","user":"root","group":"root","mode":"0755"},
            {"path":"/a","user":"root","group":"root","mode":"0755"},
            {"path":"/a","user":"root","group":"root","mode":"0700"}]}]}"#,
        "not json",
    ];
    for (i, text) in cases.iter().enumerate() {
        let s = Scratch::new(&format!("invalid{i}"));
        s.manifest(text);
        let before = s.snapshot();
        let run = s.run(&["apply"]);
        run.assert_code(3);
        assert!(
            run.stderr.contains("nothing was touched"),
            "case {i}: {}",
            run.stderr
        );
        assert_eq!(before, s.snapshot(), "case {i} created something");
        s.run(&["validate"]).assert_code(3);
    }
}

#[test]
fn journald_priority_prefixes_only_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    if !require_root() {
        return;
    }
    let s = Scratch::new("journal");
    s.manifest(TWO_USERS);
    std::fs::create_dir_all(s.root().join("persist/var/lib")).unwrap();
    std::fs::write(s.root().join("persist/var/lib/app"), "x").unwrap();
    // Pretend the stderr file is the journal stream, the way systemd announces it.
    let log = s.dir.join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let m = file.metadata().unwrap();
    let status = std::process::Command::new(common::BIN)
        .args(["apply", "--manifest"])
        .arg(s.dir.join("manifest.json"))
        .arg("--root")
        .arg(s.root())
        .arg("--state-dir")
        .arg(s.state())
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("<3>directory /var/lib/app")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>directory /var/lib/private")),
        "{text}"
    );
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    // A stale JOURNAL_STREAM (e.g. a shell started from a unit) gets plain lines.
    let run = std::process::Command::new(common::BIN)
        .args(["apply", "--manifest"])
        .arg(s.dir.join("manifest.json"))
        .arg("--root")
        .arg(s.root())
        .arg("--state-dir")
        .arg(s.state())
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stderr);
    assert!(
        text.lines()
            .any(|l| l.starts_with("error: directory /var/lib/app")),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec![],
        vec!["bogus"],
        vec!["apply", "--nope"],
        vec!["apply", "--json", "--json"],
        vec!["apply", "--root=/a", "--root", "/b"],
        vec!["apply", "--root"],
        vec!["check", "--dry-run"],
    ] {
        let out = std::process::Command::new(common::BIN)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

#[test]
fn the_log_level_comes_from_the_environment() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("loglevel");
    s.manifest(TWO_USERS);
    let run = |level: &str| {
        std::process::Command::new(common::BIN)
            .args(["apply", "--manifest"])
            .arg(s.dir.join("manifest.json"))
            .arg("--root")
            .arg(s.root())
            .arg("--state-dir")
            .arg(s.state())
            .env("PERSIST_PREP_LOG", level)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap()
    };
    let quiet = run("error");
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let verbose = String::from_utf8_lossy(&run("debug").stderr).into_owned();
    assert!(
        verbose.contains("debug: directory /var/lib/app (from"),
        "{verbose}"
    );
    assert!(verbose.contains(": present"), "{verbose}");
}

#[test]
fn a_storage_path_that_is_a_file_fails_that_storage_only() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("storagefile");
    s.manifest(
        r#"{"version":1,"storages":[
          {"path":"/persist","directories":[{"path":"/a","user":"root","group":"root","mode":"0700"}]},
          {"path":"/other","directories":[{"path":"/b","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    std::fs::write(s.root().join("persist"), "not a directory").unwrap();
    let run = s.run(&["apply", "--json"]);
    run.assert_code(1);
    assert!(
        run.stderr.contains("storage /persist:") && run.stderr.contains("is not a directory"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(s.root().join("persist")).unwrap(),
        "not a directory"
    );
    assert!(!exists(s.root().join("a")));
    assert_eq!(stat(s.root().join("other/b")), (0o700, 0, 0));
    assert_eq!(run.json()["storages"][0]["state"], "error");
}

#[test]
fn modes_are_exact_whatever_the_umask_and_a_setgid_parent() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root() {
        return;
    }
    let s = Scratch::new("exact");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
          {"path":"/shared/root-owned","user":"root","group":"root","mode":"0755"},
          {"path":"/shared/team","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"0770"},
          {"path":"/open/sticky","user":"root","group":"root","mode":"1777"}]}]}"#,
    );
    // A set-group-id parent passes its group and the bit to new directories: they must not stick.
    for side in [s.root().join("persist/shared"), s.root().join("shared")] {
        std::fs::create_dir_all(&side).unwrap();
        std::os::unix::fs::chown(&side, Some(0), Some(100)).unwrap();
        std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o2775)).unwrap();
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 077 && exec \"$@\"")
        .arg("sh")
        .arg(common::BIN)
        .args(["apply", "--manifest"])
        .arg(s.dir.join("manifest.json"))
        .arg("--root")
        .arg(s.root())
        .arg("--state-dir")
        .arg(s.state())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for side in [s.root().join("persist"), s.root()] {
        assert_eq!(stat(side.join("shared/root-owned")), (0o755, 0, 0));
        assert_eq!(stat(side.join("shared/team")), (0o770, 65534, 65534));
        assert_eq!(stat(side.join("open/sticky")), (0o1777, 0, 0));
        assert_eq!(stat(side.join("open")), (0o755, 0, 0));
    }
}

#[test]
fn finish_has_nothing_to_do_for_a_mount_point_its_bind_mount_covers() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("covered");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#,
    );
    s.run(&["apply"]).assert_code(0);
    let r = s.root();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(r.join("etc/passwd"), "svc:x:4001:4001::/:/bin/false\n").unwrap();
    std::fs::write(r.join("etc/group"), "svc:x:4001:\n").unwrap();
    // As in the initrd: the bind mount is up when finish runs.
    let run = s.in_namespace(
        r#"mount --bind "$ROOT/persist/var/lib/svc" "$ROOT/var/lib/svc"
           "$BIN" finish --root "$ROOT" --state-dir "$STATE" --json"#,
    );
    run.assert_code(0);
    let states: Vec<String> = run.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["done", "nothing-to-do"], "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    assert_eq!(stat(r.join("persist/var/lib/svc")), (0o750, 4001, 4001));
    assert!(!exists(s.state().join("deferred.json")));
}

/// A path longer than `PATH_MAX` (4096 bytes) is made from handles, one component at a time.
#[test]
fn a_path_longer_than_path_max_is_created() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("long-path");
    let mut path = String::new();
    for i in 0..20 {
        path.push('/');
        path.push_str(&char::from(b'a' + i).to_string().repeat(250));
    }
    assert!(path.len() > 4096);
    s.manifest(&format!(
        r#"{{"version":1,"storages":[{{"path":"/persist","directories":[
        {{"path":"{path}","user":"root","group":"root","mode":"0700"}},
        {{"path":"{path}/x","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"0750"}}]}}]}}"#
    ));
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    let doc = run.json();
    assert_eq!(doc["summary"]["created"], 2, "{doc}");
    // Check it by handles too: std's stat takes the whole path, which the kernel refuses.
    let mut dir = std::fs::File::open(s.root().join("persist")).unwrap();
    for name in path.split('/').filter(|c| !c.is_empty()) {
        dir = std::fs::File::open(format!(
            "/proc/self/fd/{}/{name}",
            std::os::fd::AsRawFd::as_raw_fd(&dir)
        ))
        .unwrap();
    }
    let st = rustix::fs::statat(&dir, "x", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    assert_eq!((st.st_mode & 0o7777, st.st_uid), (0o750, 65534));
    s.run(&["apply"]).assert_code(0);
    s.run(&["check"]).assert_code(0);
}

/// One component longer than `NAME_MAX` is one clear error for its entry, not the run's end.
#[test]
fn a_component_longer_than_name_max_fails_its_entry_alone() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("long-name");
    let long = "n".repeat(256);
    s.manifest(&format!(
        r#"{{"version":1,"storages":[{{"path":"/persist","directories":[
        {{"path":"/var/{long}","user":"root","group":"root","mode":"0700"}},
        {{"path":"/var/ok","user":"root","group":"root","mode":"0700"}}]}}]}}"#
    ));
    let run = s.run(&["apply", "--json"]);
    run.assert_code(1);
    let doc = run.json();
    assert_eq!(doc["summary"]["failed"], 1, "{doc}");
    assert_eq!(doc["summary"]["created"], 1, "{doc}");
    assert!(
        run.stderr.contains("name too long") || run.stderr.contains("too long"),
        "{}",
        run.stderr
    );
    assert!(exists(s.root().join("persist/var/ok")));
}
