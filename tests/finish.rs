//! `finish` speaks as `apply` does, and deferred owners need no marks where `trusted.*`
//! attributes are refused.

mod common;

use common::{Scratch, require_root, stat};

const SVC: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#;

fn add_svc_user(s: &Scratch) {
    let etc = s.root().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "svc:x:4001:4001::/:/bin/false\n").unwrap();
    std::fs::write(etc.join("group"), "svc:x:4001:\n").unwrap();
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
    assert_eq!(
        run.json()["entries"][0]["state"],
        "deferred",
        "{}",
        run.stderr
    );
    let source = s.root().join("persist/var/lib/svc");
    assert_eq!(stat(&source), (0o750, 0, 0));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.state().join("deferred.json")).unwrap()).unwrap();
    let pending = record["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{record}");
    assert!(pending.iter().all(|p| p["marked"] == false), "{record}");
    add_svc_user(&s);
    s.run(&["finish"]).assert_code(0);
    assert_eq!(stat(&source), (0o750, 4001, 4001));
    assert_eq!(stat(s.root().join("var/lib/svc")), (0o750, 4001, 4001));
}
