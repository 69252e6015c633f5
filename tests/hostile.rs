//! Hostile trees and odd inputs: output no one can forge, no panic from any input, planted
//! links in the state directory, and a dry run whose plan is what `apply` then does, on random
//! manifests over random trees.

mod common;

use std::os::unix::fs::symlink;

use common::{Run, Scratch, exists, require_root};
use proptest::prelude::*;

fn no_line_forged(run: &Run) {
    for line in run.stderr.lines().chain(run.stdout.lines()) {
        assert!(
            !line.starts_with("<0>"),
            "a forged line: {line:?}\n{}",
            run.stderr
        );
        assert!(!line.contains('\u{1b}'), "a raw escape byte: {line:?}");
    }
}

#[test]
fn a_planted_link_target_cannot_forge_a_journal_line() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("forge");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/app","user":"root","group":"root","mode":"0700"}]}]}"#,
    );
    std::fs::create_dir_all(s.root().join("persist")).unwrap();
    symlink(
        "x\n<0>persist-prep: forged emergency\u{1b}[2J",
        s.root().join("persist/var"),
    )
    .unwrap();
    for args in [&["apply"][..], &["apply", "--dry-run"], &["check"]] {
        let run = s.run(args);
        run.assert_code(1);
        no_line_forged(&run);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(all.contains(r"x\n<0>persist-prep: forged"), "{all}");
    }
    // JSON keeps the exact bytes.
    let doc = s.run(&["check", "--json"]).json();
    assert!(
        doc["entries"][0]["error"]
            .as_str()
            .unwrap()
            .contains(r"x\n<0>")
    );
}

#[test]
fn manifest_strings_with_control_characters_stay_on_one_line() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("ctl");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/a\nb\u001b[31m","user":"root","group":"root","mode":"0700","origin":"opt\n<0>x"}]}]}"#,
    );
    let run = s.run(&["apply"]);
    run.assert_code(0);
    no_line_forged(&run);
    assert!(
        run.stderr.contains(r"/var/lib/a\nb\x1b[31m"),
        "{}",
        run.stderr
    );
    let check = s.run(&["check"]);
    check.assert_code(0);
    no_line_forged(&check);
}

#[test]
fn a_top_level_file_with_the_storage_missing_is_planned_not_a_panic() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("swapfile");
    s.manifest(r#"{"version":1,"storages":[{"path":"/persist","files":[{"path":"/swapfile"}]}]}"#);
    for args in [
        &["check"][..],
        &["apply", "--dry-run"],
        &["check", "--json"],
    ] {
        let run = s.run(args);
        assert!(
            run.code == 0 || run.code == 1,
            "{args:?}: {}\n{}",
            run.code,
            run.stderr
        );
    }
    let dry = s.run(&["apply", "--dry-run", "--json"]).json();
    assert_eq!(dry["storages"][0]["state"], "would-create", "{dry}");
    s.run(&["apply"]).assert_code(0);
    assert!(exists(s.root().join("persist")));
    s.run(&["check"]).assert_code(0);
}

#[test]
fn an_unopenable_root_still_gives_one_json_document() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("noroot");
    s.manifest(r#"{"version":1,"storages":[]}"#);
    std::fs::remove_dir(s.root()).unwrap();
    for cmd in ["apply", "check", "finish"] {
        let run = s.run(&[cmd, "--json"]);
        run.assert_code(1);
        let doc = run.json();
        assert!(
            doc["error"]
                .as_str()
                .unwrap()
                .contains("cannot open the root"),
            "{doc}"
        );
    }
    std::fs::write(s.root(), "a file").unwrap();
    s.run(&["apply", "--json"]).assert_code(1).json();
}

#[test]
fn a_planted_link_in_the_state_directory_redirects_no_write() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("statelink");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#,
    );
    let target = s.dir.join("precious");
    std::fs::write(&target, "keep me").unwrap();
    symlink(&target, s.state().join("deferred.json")).unwrap();
    let run = s.run(&["apply"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("deferred-owner record"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // The record now stands as a file of its own.
    let meta = std::fs::symlink_metadata(s.state().join("deferred.json")).unwrap();
    assert!(meta.file_type().is_file());
}

/// A tree to start from: directories with odd modes, a file and a symlink in the way.
fn tree_strategy() -> impl Strategy<Value = Vec<(String, u8)>> {
    let names = prop::sample::select(vec!["a", "b", "c"]);
    let path = prop::collection::vec(names, 1..4).prop_map(|p| p.join("/"));
    prop::collection::vec((path, 0u8..6), 0..6)
}

fn manifest_strategy() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec!["a", "b", "c"]);
    let path = prop::collection::vec(names, 1..4).prop_map(|p| format!("/{}", p.join("/")));
    let owner = prop::sample::select(vec![
        r#""user":"root","group":"root""#,
        r#""user":"u","group":"g","uid":1500,"gid":1500"#,
        r#""user":"nobody-here","group":"root""#,
    ]);
    let mode = prop::sample::select(vec!["0700", "0755", "2770", "u=rwx,g=rx,o="]);
    let dir = (path.clone(), owner, mode)
        .prop_map(|(p, o, m)| format!(r#"{{"path":"{p}",{o},"mode":"{m}"}}"#));
    let file = path.prop_map(|p| format!(r#"{{"path":"{p}/f"}}"#));
    (
        prop::collection::vec(dir, 0..5),
        prop::collection::vec(file, 0..2),
    )
        .prop_map(|(dirs, files)| {
            format!(
                r#"{{"version":1,"storages":[{{"path":"/p","directories":[{}],"files":[{}]}}]}}"#,
                dirs.join(","),
                files.join(",")
            )
        })
}

fn build_tree(s: &Scratch, tree: &[(String, u8)]) {
    use std::os::unix::fs::PermissionsExt;
    for (path, kind) in tree {
        let side = if kind % 2 == 0 { "p/" } else { "" };
        let full = s.root().join(format!("{side}{path}"));
        let _ = std::fs::create_dir_all(full.parent().unwrap());
        match kind / 2 {
            0 => {
                let _ = std::fs::create_dir_all(&full);
                let _ = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o711));
            }
            1 => {
                let _ = std::fs::write(&full, "a file in the way");
            }
            _ => {
                let _ = symlink("/etc", &full);
            }
        }
    }
}

fn actions(doc: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = doc["storages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["state"].to_string())
        .collect();
    for e in doc["entries"].as_array().into_iter().flatten() {
        for a in e["actions"].as_array().into_iter().flatten() {
            out.push(format!(
                "{} {} {} {} {}",
                a["action"], a["path"], a["user"], a["group"], a["mode"]
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the manifest and the tree: a documented exit code, never a panic, and the dry
    /// run lists exactly the actions apply then carries out.
    #[test]
    fn dry_run_plan_is_what_apply_does(manifest in manifest_strategy(), tree in tree_strategy()) {
        if !require_root() {
            return Ok(());
        }
        let s = Scratch::new("prop");
        s.manifest(&manifest);
        build_tree(&s, &tree);
        let dry = s.run(&["apply", "--dry-run", "--json"]);
        prop_assert!([0, 1, 3].contains(&dry.code), "dry run exit {}: {}", dry.code, dry.stderr);
        let apply = s.run(&["apply", "--json"]);
        prop_assert!([0, 1, 3].contains(&apply.code), "apply exit {}: {}", apply.code, apply.stderr);
        prop_assert_eq!(dry.code == 3, apply.code == 3);
        if apply.code != 3 {
            let (planned, done) = (actions(&dry.json()), actions(&apply.json()));
            let planned: Vec<String> = planned.into_iter().map(|a| a.replace("\"would-create\"", "\"created\"").replace("\"missing\"", "\"created\"")).collect();
            prop_assert_eq!(planned, done, "{}", manifest);
            let check = s.run(&["check", "--json"]);
            prop_assert!([0, 1].contains(&check.code), "check exit {}: {}", check.code, check.stderr);
            let again = s.run(&["apply", "--json"]).json();
            // A second apply finds nothing left to make, but for entries that failed (they
            // are planned whole and make nothing when any part of them fails).
            let left: usize = again["entries"].as_array().into_iter().flatten()
                .filter(|e| !["not-a-directory", "symlink", "error"].contains(&e["state"].as_str().unwrap_or("")))
                .map(|e| e["actions"].as_array().map_or(0, |a| a.iter().filter(|a| a["action"] == "mkdir").count()))
                .sum();
            prop_assert_eq!(left, 0, "{}", again);
        }
    }
}

#[test]
fn a_fifo_planted_as_passwd_does_not_hang_apply() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("fifo-passwd");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/svc","user":"svc","group":"svc","mode":"0750"}]}]}"#,
    );
    std::fs::create_dir_all(s.root().join("etc")).unwrap();
    let fifo = s.root().join("etc/passwd");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let run = s.wrapped(&["timeout", "10"], "apply").output().unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn a_user_who_swaps_a_new_directory_for_a_link_cannot_steer_a_write_outside() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("swap-race");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/home/alice","user":"alice","group":"alice","uid":1000,"gid":1000,"mode":"0700"},
        {"path":"/home/alice/x","user":"root","group":"root","mode":"0755"},
        {"path":"/home/alice/x/y","user":"alice","group":"alice","uid":1000,"gid":1000,"mode":"0700"}]}]}"#,
    );
    let alice = s.root().join("persist/home/alice");
    std::fs::create_dir_all(&alice).unwrap();
    std::os::unix::fs::chown(&alice, Some(1000), Some(1000)).unwrap();
    let outside = s.dir.join("OUTSIDE");
    std::fs::create_dir(&outside).unwrap();
    // Every mkdirat after the first few waits, so that the user's swap lands in between.
    let mut apply = s
        .wrapped(
            &[
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "inject=mkdirat:delay_enter=1500000:when=3+",
            ],
            "apply",
        )
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let swap = format!(
        "cd '{}' && mv x x.old && ln -s '{}' x",
        alice.display(),
        outside.display()
    );
    let swapped = std::process::Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "sh",
            "-c",
            &swap,
        ])
        .status()
        .unwrap();
    apply.wait().unwrap();
    assert!(swapped.success());
    let leaked: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        leaked.is_empty(),
        "apply wrote outside the root: {leaked:?}"
    );
}
