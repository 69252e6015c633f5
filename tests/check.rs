//! `persist-prep check`: read-only state of every storage and entry, as a table and as JSON.

mod common;

use common::{Scratch, require_root};

const MANIFEST: &str = r#"{"version":1,"storages":[
  {"path":"/persist","directories":[
    {"path":"/var/lib/ok","user":"root","group":"root","mode":"0700"},
    {"path":"/var/lib/drift","user":"u","group":"g","uid":1000,"gid":100,"mode":"0750","origin":"opt.drift"},
    {"path":"/var/lib/missing","user":"root","group":"root","mode":"0755"},
    {"path":"/var/lib/file","user":"root","group":"root","mode":"0755"},
    {"path":"/var/lib/ghost","user":"ghost","group":"ghost","mode":"0700"}]},
  {"path":"/nix/persist","mountPoint":"/nix","directories":[
    {"path":"/srv/x","user":"root","group":"root","mode":"0755"}]}]}"#;

fn prepare(s: &Scratch) {
    s.manifest(MANIFEST);
    let p = s.root().join("persist/var/lib");
    for d in ["ok", "drift", "ghost"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
        std::fs::create_dir_all(s.root().join("var/lib").join(d)).unwrap();
    }
    for d in ["ok", "ghost"] {
        std::fs::set_permissions(
            p.join(d),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
    }
    std::fs::write(p.join("file"), "x").unwrap();
    std::fs::create_dir_all(s.root().join("nix")).unwrap();
}

#[test]
fn check_reports_every_state_and_touches_nothing() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("check-json");
    prepare(&s);
    let before = s.snapshot();
    let run = s.run(&["check", "--json"]);
    run.assert_code(1);
    assert_eq!(before, s.snapshot(), "check changed something");
    let doc = run.json();
    assert_eq!(doc["command"], "check");
    let state = |path: &str| {
        common::entry(&doc, path)["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state("/var/lib/ok"), "ok");
    assert_eq!(state("/var/lib/drift"), "drift");
    assert_eq!(state("/var/lib/missing"), "missing");
    assert_eq!(state("/var/lib/file"), "not-a-directory");
    assert_eq!(state("/var/lib/ghost"), "owner-unresolvable");
    assert_eq!(state("/srv/x"), "storage-not-mounted");
    let storages = doc["storages"].as_array().unwrap();
    assert_eq!(storages[0]["state"], "ok");
    assert_eq!(storages[1]["state"], "not-mounted");
    assert!(
        storages[1]["message"]
            .as_str()
            .unwrap()
            .contains("neededForBoot")
    );
    let drift = common::entry(&doc, "/var/lib/drift");
    assert_eq!(drift["declared"]["mode"], "0750");
    assert_eq!(drift["actual"]["mode"], "0755");
    assert_eq!(drift["origin"], "opt.drift");
    assert_eq!(doc["summary"]["notOk"], 6);
}

#[test]
fn check_table_has_one_line_per_storage_and_entry() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("check-table");
    prepare(&s);
    let run = s.run(&["check"]);
    run.assert_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("STATE"), "{}", run.stdout);
    assert_eq!(lines.len(), 1 + 2 + 6, "{}", run.stdout);
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l.contains(path))
            .copied()
            .unwrap_or_default()
    };
    assert!(
        line("/var/lib/drift").starts_with("drift")
            && line("/var/lib/drift").contains("declared u:g (1000:100) 0750, actual 0:0 0755"),
        "{}",
        run.stdout
    );
    assert!(
        line("/var/lib/file").starts_with("not-a-directory"),
        "{}",
        run.stdout
    );
    assert!(
        line("/var/lib/missing").starts_with("missing"),
        "{}",
        run.stdout
    );
    assert!(
        line("/nix/persist").starts_with("not-mounted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("check: 1 ok, 1 missing, 1 drift"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_is_zero_when_everything_is_as_declared() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("check-ok");
    s.manifest(r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/a/b","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"u=rwx,g=rx,o="}]}]}"#);
    s.run(&["check"]).assert_code(1);
    s.run(&["apply"]).assert_code(0);
    let run = s.run(&["check", "--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["summary"]["notOk"], 0);
}

#[test]
fn check_rejects_an_invalid_manifest_with_exit_3() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("check-invalid");
    s.manifest(r#"{"version":1,"storages":[{"path":"/p","directories":[{"path":"/a","user":"root","group":"root","mode":"rwx"}]}]}"#);
    let run = s.run(&["check", "--json"]);
    run.assert_code(3);
    assert_eq!(run.json()["valid"], false);
    assert!(run.json()["errors"][0].as_str().unwrap().contains(".mode"));
}
