//! Leftovers of an interrupted run (`.persist-prep.<hash>`): removed only where only root can
//! write, only whole, only what persist-prep can prove it made; elsewhere reported and left.

mod common;

use std::path::Path;

use common::{Scratch, exists, require_root};

/// The temporary name persist-prep gives a directory named `leaf` (FNV-1a of the name).
fn temp_name(leaf: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in leaf.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!(".persist-prep.{hash:016x}")
}

/// Alice's directory in her home, hers alone.
const ALICE_DATA: &str = r#"{"path":"/home/alice/data","user":"alice","group":"alice","uid":1000,"gid":1000,"mode":"0700"}"#;

/// A root-only service directory.
const ROOT_SVC: &str = r#"{"path":"/var/lib/svc","user":"root","group":"root","mode":"0700"}"#;

/// A scratch tree whose manifest declares one directory ENTRY (JSON) in the storage STORAGE.
fn scratch(name: &str, storage: &str, entry: &str) -> Scratch {
    let s = Scratch::new(name);
    s.manifest(&format!(
        r#"{{"version":1,"storages":[{{"path":"{storage}","directories":[
        {entry}]}}]}}"#
    ));
    s
}

fn chmod(path: impl AsRef<Path>, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A field of the first leftover in a `--json` document ("" when there is none).
fn first_leftover<'a>(doc: &'a serde_json::Value, field: &str) -> &'a str {
    doc["leftovers"][0][field].as_str().unwrap_or_default()
}

/// Asserts a path's (mode, uid, gid), showing the run's log when it differs.
fn assert_stat(path: impl AsRef<Path>, expected: (u32, u32, u32), run: &common::Run) {
    assert_eq!(common::stat(path), expected, "{}", run.stderr);
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    for e in std::fs::read_dir(path).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chown_tree(&e.path(), uid);
        } else {
            std::os::unix::fs::chown(e.path(), Some(uid), Some(uid)).unwrap();
        }
    }
}

#[test]
fn a_users_tree_under_the_temporary_name_in_her_directory_survives() {
    if !require_root() {
        return;
    }
    let s = scratch("leftover-user", "/persist", ALICE_DATA);
    let home = s.root().join("persist/home/alice");
    let planted = home.join(temp_name("data"));
    std::fs::create_dir_all(planted.join("x/y")).unwrap();
    chown_tree(&home, 1000);
    let run = s.run(&["apply"]);
    assert!(
        exists(planted.join("x/y")),
        "her tree was removed: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&temp_name("data")) && run.stderr.contains("left it alone"),
        "{}",
        run.stderr
    );
    // A name she can predict must not let her block the entry: it is made all the same.
    run.assert_code(0);
    assert_stat(home.join("data"), (0o700, 1000, 1000), &run);
    assert_eq!(s.run(&["apply"]).code, 0);
}

#[test]
fn a_killed_runs_leftover_in_a_users_directory_blocks_nothing() {
    if !require_root() {
        return;
    }
    let s = scratch("leftover-user-killed", "/persist", ALICE_DATA);
    let home = s.root().join("persist/home/alice");
    std::fs::create_dir_all(&home).unwrap();
    chown_tree(&home, 1000);
    // As a run killed between its mkdir and its chown leaves it: root's, private.
    let leftover = home.join(temp_name("data"));
    std::fs::create_dir(&leftover).unwrap();
    chmod(&leftover, 0o700);
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    assert_stat(home.join("data"), (0o700, 1000, 1000), &run);
    assert!(exists(&leftover), "{}", run.stderr);
    assert!(run.stderr.contains(&temp_name("data")), "{}", run.stderr);
    // The document names it too.
    let doc = run.json();
    let path = first_leftover(&doc, "path");
    assert!(
        path.ends_with(&format!("/home/alice/{}", temp_name("data"))),
        "{doc}"
    );
    let warning = first_leftover(&doc, "warning");
    assert!(warning.contains("left it alone"), "{doc}");
    assert!(warning.contains("fix: nothing waits on it"), "{doc}");
    // Nothing else of persist-prep's stays in her directory.
    let names: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_mixed_leftover_is_not_partly_removed() {
    if !require_root() {
        return;
    }
    let s = scratch("leftover-mixed", "/persist", ROOT_SVC);
    let lib = s.root().join("persist/var/lib");
    let leftover = lib.join(temp_name("svc"));
    // Many empty directories and one with a file: whatever order the directory lists them in,
    // an empty one comes before the file's.
    for i in 0..16 {
        std::fs::create_dir_all(leftover.join(format!("e{i}"))).unwrap();
    }
    std::fs::create_dir_all(leftover.join("c")).unwrap();
    std::fs::write(leftover.join("c/file"), "data").unwrap();
    let run = s.run(&["apply"]);
    run.assert_code(1);
    for i in 0..16 {
        assert!(
            exists(leftover.join(format!("e{i}"))),
            "part of it was removed: {}",
            run.stderr
        );
    }
    assert!(exists(leftover.join("c/file")));
    assert!(run.stderr.contains(&temp_name("svc")), "{}", run.stderr);
}

#[test]
fn a_leftover_persist_prep_made_is_removed_and_named() {
    if !require_root() {
        return;
    }
    let s = scratch(
        "leftover-ours",
        "/persist",
        r#"{"path":"/var/lib/svc/a","user":"root","group":"root","mode":"0700"}"#,
    );
    let lib = s.root().join("persist/var/lib");
    let leftover = lib.join(temp_name("svc"));
    // As a killed run staged it: the directory and one below it, each as it makes them.
    std::fs::create_dir_all(leftover.join("a")).unwrap();
    chmod(leftover.join("a"), 0o700);
    let run = s.run(&["apply"]);
    run.assert_code(0);
    assert!(!exists(&leftover), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("{}/a", temp_name("svc"))),
        "the message does not say exactly what was removed: {}",
        run.stderr
    );
}

#[test]
fn a_leftover_holding_a_directory_persist_prep_would_not_make_stays() {
    if !require_root() {
        return;
    }
    let s = scratch("leftover-foreign", "/persist", ROOT_SVC);
    let leftover = s.root().join("persist/var/lib").join(temp_name("svc"));
    std::fs::create_dir_all(leftover.join("other")).unwrap();
    let run = s.run(&["apply"]);
    run.assert_code(1);
    assert!(exists(leftover.join("other")), "{}", run.stderr);
}

#[test]
fn a_leftover_in_a_group_writable_root_directory_stays() {
    if !require_root() {
        return;
    }
    let s = scratch(
        "leftover-group",
        "/persist",
        r#"{"path":"/srv/share/data","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"0700"}"#,
    );
    let share = s.root().join("persist/srv/share");
    std::fs::create_dir_all(&share).unwrap();
    // Root's, but a group can write to it: a member could have made the name.
    chmod(&share, 0o775);
    let leftover = share.join(temp_name("data"));
    std::fs::create_dir(&leftover).unwrap();
    let run = s.run(&["apply"]);
    assert!(exists(&leftover), "{}", run.stderr);
    assert!(run.stderr.contains("left it alone"), "{}", run.stderr);
    run.assert_code(0);
    assert_stat(share.join("data"), (0o700, 65534, 65534), &run);
}

#[test]
fn a_storage_made_in_a_users_directory_is_not_blocked_by_a_predicted_name() {
    if !require_root() {
        return;
    }
    let s = scratch("leftover-storage", "/srv/alice/persist", ROOT_SVC);
    let alice = s.root().join("srv/alice");
    let planted = alice.join(temp_name("persist"));
    std::fs::create_dir_all(&planted).unwrap();
    chown_tree(&alice, 1000);
    // Set-group-id: mkdir alone would not make the storage root:root, so it is staged.
    chmod(&alice, 0o2755);
    let run = s.run(&["apply", "--json"]);
    run.assert_code(0);
    assert_stat(alice.join("persist"), (0o755, 0, 0), &run);
    assert!(exists(alice.join("persist/var/lib/svc")), "{}", run.stderr);
    assert!(exists(&planted), "{}", run.stderr);
    let doc = run.json();
    let path = first_leftover(&doc, "path");
    assert!(path.ends_with(&temp_name("persist")), "{doc}");
}
