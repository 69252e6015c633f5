//! Deferred owners survive an interrupted boot, `finish` touches only what persist-prep made,
//! and two runs at once neither interleave nor lose each other's records.

mod common;

use std::process::{Command, Stdio};

use common::{BIN, Scratch, exists, require_root, stat};

const SVC: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#;

fn add_svc_user(s: &Scratch) {
    let etc = s.root().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "svc:x:4001:4001::/:/bin/false\n").unwrap();
    std::fs::write(etc.join("group"), "svc:x:4001:\n").unwrap();
}

/// The NixOS id maps kept in the storage, which name `svc` 4001.
fn id_maps(s: &Scratch) {
    let nixos = s.root().join("persist/var/lib/nixos");
    std::fs::create_dir_all(&nixos).unwrap();
    std::fs::write(nixos.join("uid-map"), r#"{"svc": 4001}"#).unwrap();
    std::fs::write(nixos.join("gid-map"), r#"{"svc": 4001}"#).unwrap();
}

/// A scratch tree in which `apply` of [`SVC`] made `/persist/var/lib/svc` before the user `svc`
/// exists (its owner deferred); with the path of that source directory.
fn svc_deferred(name: &str) -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new(name);
    s.manifest(SVC);
    s.run(&["apply"]).assert_code(0);
    let source = s.root().join("persist/var/lib/svc");
    (s, source)
}

/// The state of the first entry in a `--json` document.
fn first_state(run: &common::Run) -> serde_json::Value {
    run.json()["entries"][0]["state"].clone()
}

/// The record of deferred owners in the state directory.
fn record(s: &Scratch) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(s.state().join("deferred.json")).unwrap()).unwrap()
}

/// What a reboot of an impermanent machine takes: `/run` and the tmpfs root's mount points.
fn reboot(s: &Scratch) {
    std::fs::remove_dir_all(s.state()).unwrap();
    std::fs::create_dir_all(s.state()).unwrap();
    std::fs::remove_dir_all(s.root().join("var")).unwrap();
}

#[test]
fn an_owner_deferred_on_a_boot_cut_short_arrives_on_a_later_boot() {
    if !require_root() {
        return;
    }
    let (s, source) = svc_deferred("interrupted");
    assert_eq!(stat(&source), (0o750, 0, 0));
    // Two boots cut short before finish: the record in /run is gone each time.
    for _ in 0..2 {
        reboot(&s);
        let run = s.run(&["apply", "--json"]);
        run.assert_code(0);
        assert_eq!(first_state(&run), "deferred", "{}", run.stderr);
        assert!(s.state().join("deferred.json").exists(), "{}", run.stderr);
    }
    add_svc_user(&s);
    s.run(&["finish"]).assert_code(0);
    assert_eq!(stat(&source), (0o750, 4001, 4001));
    // The mount point made on a later boot waited for the owner with its source.
    assert_eq!(stat(s.root().join("var/lib/svc")), (0o750, 4001, 4001));
    s.run(&["check"]).assert_code(0);
}

#[test]
fn an_owner_that_resolves_in_the_initrd_of_a_later_boot_is_given_by_apply() {
    if !require_root() {
        return;
    }
    let (s, _) = svc_deferred("interrupted-map");
    reboot(&s);
    // The next boot knows the name from the NixOS id maps kept in the storage.
    id_maps(&s);
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    let doc = run.json();
    assert_eq!(doc["entries"][0]["state"], "finished", "{doc}");
    // Giving an owner is its own outcome, not a creation.
    assert_eq!(doc["summary"]["ownersGiven"], 1, "{doc}");
    assert!(run.stderr.contains("owners given"), "{}", run.stderr);
    assert_eq!(
        doc["entries"][0]["actions"][0]["action"], "give-owner",
        "{doc}"
    );
    assert_eq!(
        stat(s.root().join("persist/var/lib/svc")),
        (0o750, 4001, 4001)
    );
    // Nothing waits any more: no record, and the storage's pending mark is gone.
    assert!(!s.state().join("deferred.json").exists());
    s.run(&["finish"]).assert_code(0);
    s.run(&["check"]).assert_code(0);
}

#[test]
fn finish_leaves_alone_a_directory_made_anew_on_a_reused_inode() {
    if !require_root() {
        return;
    }
    let (s, source) = svc_deferred("reused-inode");
    std::fs::remove_dir(&source).unwrap();
    // Made again at once: on tmpfs and ext4 it usually gets the very same inode number.
    std::fs::create_dir(&source).unwrap();
    add_svc_user(&s);
    let run = s.run(&["finish"]);
    assert!(
        run.stderr
            .contains("not the directory persist-prep created"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stat(&source).1,
        0,
        "finish chowned a directory it did not make"
    );
}

#[test]
fn a_run_waits_for_the_one_holding_the_lock() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("locked");
    s.manifest(SVC);
    let mut holder = Command::new("flock")
        .args(["-x", "-o"])
        .arg(s.state().join("lock"))
        .args(["sleep", "1"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let run = s.run(&["apply"]);
    holder.wait().unwrap();
    run.assert_code(0);
    assert!(
        run.stderr.contains("waiting for another persist-prep run"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed().as_millis() >= 500, "apply did not wait");
}

#[test]
fn two_runs_at_once_keep_both_records() {
    if !require_root() {
        return;
    }
    for round in 0..10 {
        let s = Scratch::new(&format!("double-{round}"));
        let entries = |prefix: &str| {
            (0..40)
                .map(|i| format!(r#"{{"path":"/{prefix}/d{i}","user":"u{prefix}{i}","group":"g","mode":"0700"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        let write = |name: &str, prefix: &str| {
            let path = s.dir.join(name);
            std::fs::write(
                &path,
                format!(
                    r#"{{"version":1,"storages":[{{"path":"/persist","directories":[{}]}}]}}"#,
                    entries(prefix)
                ),
            )
            .unwrap();
            path
        };
        let (a, b) = (write("a.json", "a"), write("b.json", "b"));
        let spawn = |manifest: &std::path::Path| {
            Command::new(BIN)
                .arg("apply")
                .arg("--manifest")
                .arg(manifest)
                .arg("--root")
                .arg(s.root())
                .arg("--state-dir")
                .arg(s.state())
                .env("PERSIST_PREP_LOG", "error")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn(&a), spawn(&b));
        let (oa, ob) = (
            pa.wait_with_output().unwrap(),
            pb.wait_with_output().unwrap(),
        );
        assert!(oa.status.success() && ob.status.success(), "{oa:?} {ob:?}");
        let record = record(&s);
        let storage_side = record["pending"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["storage"] == "/persist")
            .count();
        assert_eq!(
            storage_side, 80,
            "round {round}: a run lost the other's records"
        );
        assert!(exists(s.root().join("persist/a/d39")) && exists(s.root().join("persist/b/d39")));
    }
}

fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

#[test]
fn an_admins_change_to_a_deferred_directory_is_kept_by_the_next_boot() {
    if !require_root() {
        return;
    }
    let (s, source) = svc_deferred("admin-change");
    // The admin hands it over by hand before the user exists; finish must not undo that.
    std::os::unix::fs::chown(&source, Some(4005), Some(4005)).unwrap();
    reboot(&s);
    id_maps(&s);
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    assert_eq!(stat(&source), (0o750, 4005, 4005), "{}", run.stderr);
    assert_eq!(first_state(&run), "drift", "{}", run.stdout);
    add_svc_user(&s);
    s.run(&["finish"]);
    assert_eq!(stat(&source), (0o750, 4005, 4005));
}

#[test]
fn a_declaration_changed_after_a_boot_cut_short_decides_the_owner() {
    if !require_root() {
        return;
    }
    let changed = [
        r#"{"path":"/var/lib/svc","user":"root","group":"root","mode":"0700"}"#,
        r#"{"path":"/var/lib/svc","user":"svc","group":"svc","uid":1500,"gid":1500,"mode":"0750"}"#,
    ];
    for (i, entry) in changed.iter().enumerate() {
        let (s, source) = svc_deferred(&format!("changed-{i}"));
        reboot(&s);
        id_maps(&s);
        s.manifest(&format!(
            r#"{{"version":1,"storages":[{{"path":"/persist","directories":[{entry}]}}]}}"#
        ));
        let run = s.run(&["apply", "--json"]);
        run.assert_code(0);
        assert_eq!(stat(&source), (0o750, 0, 0), "{i}: {}", run.stderr);
        assert_eq!(first_state(&run), "drift", "{i}: {}", run.stdout);
        add_svc_user(&s);
        s.run(&["finish"]);
        assert_eq!(
            stat(&source),
            (0o750, 0, 0),
            "{i}: finish gave the old owner"
        );
    }
}

#[test]
fn a_mark_restored_onto_a_parent_hands_over_nothing() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("restored-parent");
    s.manifest(SVC);
    add_svc_user(&s);
    let parent = s.root().join("persist/var/lib");
    std::fs::create_dir_all(&parent).unwrap();
    // As `cp -a` or `rsync -X` of a backup brings it, onto a parent that is no entry.
    let mark = br#"{"user":"svc","group":"svc","uid":null,"gid":null,"mode":493}"#;
    set_xattr(&parent, "trusted.persist-prep.owner", mark);
    set_xattr(
        &s.root().join("persist"),
        "trusted.persist-prep.pending",
        b"1",
    );
    // `check --json` names it too: a mark that gives nothing is drift of its own.
    let check = s.run(&["check", "--json"]);
    let doc = check.json();
    let left = &doc["marksLeft"];
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(left[0]["storage"], "/persist", "{doc}");
    assert_eq!(left[0]["path"], "/var/lib", "{doc}");
    assert_eq!(left[0]["why"], "not-an-entry", "{doc}");
    let run = s.run(&["apply"]);
    run.assert_code(0);
    assert_eq!(stat(&parent), (0o755, 0, 0), "{}", run.stderr);
    assert!(run.stderr.contains("mark"), "{}", run.stderr);
    assert_eq!(stat(parent.join("svc")), (0o750, 4001, 4001));
    s.run(&["finish"]).assert_code(0);
    assert_eq!(stat(&parent), (0o755, 0, 0));
}

#[test]
fn finish_leaves_alone_a_deferred_directory_whose_mode_an_admin_changed() {
    if !require_root() {
        return;
    }
    let (s, source) = svc_deferred("admin-chmod");
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    add_svc_user(&s);
    let run = s.run(&["finish"]);
    assert_eq!(stat(&source), (0o700, 0, 0), "{}", run.stderr);
}

/// `finish` shows a path from the manifest exactly as `apply` does: a U+202E override and a
/// newline escaped, on the one line of its message, in the journal and on a terminal alike.
#[test]
fn finish_escapes_paths_exactly_like_apply() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("finish-escape");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/a\u202eb\nc","user":"svc","group":"svc","mode":"0750"}]}]}"#,
    );
    let shown = "persist/var/lib/a\\xe2\\x80\\xaeb\\nc";
    let apply = s.run(&["apply"]);
    apply.assert_code(0);
    assert!(apply.stderr.contains(shown), "{}", apply.stderr);
    let entry = "directory /var/lib/a\\xe2\\x80\\xaeb\\nc (storages[0].directories[0])";
    assert!(apply.stderr.contains(entry), "{}", apply.stderr);
    add_svc_user(&s);
    let finish = s.run(&["finish"]);
    finish.assert_code(0);
    for raw in ['\u{202e}', '\r'] {
        assert!(!finish.stderr.contains(raw), "{}", finish.stderr);
    }
    assert_eq!(finish.stderr.lines().count(), 3, "{}", finish.stderr);
    let gave = finish.stderr.lines().next().unwrap();
    assert!(gave.contains(shown), "{gave}");
    assert!(gave.ends_with(&format!("for {entry}")), "{gave}");
}

/// In a user namespace (as on a sandboxed virtiofs), setting a `trusted.*` attribute fails
/// with EPERM: that means "no marks here", as on a file system without extended attributes,
/// and the record alone carries the deferral, which `finish` then completes.
#[test]
fn trusted_marks_refused_with_eperm_leave_the_deferral_to_the_record() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("userns-marks");
    s.manifest(SVC);
    // Root inside the namespace is our own uid mapped; it lacks CAP_SYS_ADMIN over the files.
    let out = s
        .wrapped(&["unshare", "--user", "--map-root-user"], "apply")
        .arg("--json")
        .output()
        .unwrap();
    let run = common::Run::from(out);
    if run.stderr.contains("unshare failed") || run.stderr.contains("unshare: ") {
        common::skip(&format!("no user namespaces here: {}", run.stderr));
        return;
    }
    run.assert_code(0);
    assert_eq!(first_state(&run), "deferred", "{}", run.stderr);
    let source = s.root().join("persist/var/lib/svc");
    assert_eq!(stat(&source), (0o750, 0, 0));
    let record = record(&s);
    let pending = record["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{record}");
    assert!(pending.iter().all(|p| p["marked"] == false), "{record}");
    add_svc_user(&s);
    s.run(&["finish"]).assert_code(0);
    assert_eq!(stat(&source), (0o750, 4001, 4001));
    assert_eq!(stat(s.root().join("var/lib/svc")), (0o750, 4001, 4001));
}

/// `check` goes on without the lock where the state directory is not root's alone, and must
/// then not believe a record that anyone could have written: a forged one would make a drifted
/// directory look like one waiting for `finish`.
#[test]
fn check_trusts_no_record_in_a_state_directory_others_can_write_to() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("record-unsafe");
    s.manifest(SVC);
    add_svc_user(&s);
    let source = s.root().join("persist/var/lib/svc");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let meta = std::fs::metadata(&source).unwrap();
    let (dev, ino) = (
        std::os::unix::fs::MetadataExt::dev(&meta),
        std::os::unix::fs::MetadataExt::ino(&meta),
    );
    let honest = s.run(&["check", "--json"]);
    assert_eq!(first_state(&honest), "drift", "{}", honest.stdout);
    std::fs::set_permissions(
        s.state(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let forged = format!(
        r#"{{"version":1,"pending":[{{"storage":"/persist","path":"/var/lib/svc","entry":"x","user":"svc","group":"svc","uid":null,"gid":null,"mode":488,"dev":{dev},"ino":{ino}}}]}}"#
    );
    std::fs::write(s.state().join("deferred.json"), forged).unwrap();
    let run = s.run(&["check", "--json"]);
    assert_eq!(first_state(&run), "drift", "{}", run.stderr);
}
