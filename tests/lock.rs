//! The lock that keeps two runs apart: only root can hold it, nobody waits for it without a
//! bound, output is written after it is released, and a file system without locks is no
//! reason to create nothing.

mod common;

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, exists, require_root};

const ONE: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/a","user":"root","group":"root","mode":"0700"}]}]}"#;

/// `flock ARGS... PATH sleep 30` in the background, holding its lock until killed (`-o`: the
/// `sleep` does not inherit it).
fn hold(args: &[&str], path: &std::path::Path) -> Child {
    hold_for(args, path, "30")
}

/// `flock ARGS... PATH sleep SECONDS` in the background, given time to take its lock.
fn hold_for(args: &[&str], path: &std::path::Path, seconds: &str) -> Child {
    let child = Command::new(args[0])
        .args(&args[1..])
        .arg(path)
        .args(["sleep", seconds])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child
}

/// A scratch tree whose manifest is [`ONE`].
fn scratch_one(name: &str) -> Scratch {
    let s = Scratch::new(name);
    s.manifest(ONE);
    s
}

/// Asserts that the run's log says TEXT, showing the log when it does not.
fn assert_said(run: &common::Run, text: &str) {
    assert!(run.stderr.contains(text), "{}", run.stderr);
}

/// Mode 1777, as `/tmp`: anyone may create names in it.
fn open_to_others(path: &std::path::Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Asserts that a refused `COMMAND --json` printed its one document: the command, an error
/// containing ERROR and a fix containing FIX.
fn assert_error_document(run: &common::Run, command: &str, error: &str, fix: &str) {
    let doc = run.json();
    assert_eq!(doc["command"], command, "{doc}");
    assert!(
        doc["error"].as_str().is_some_and(|e| e.contains(error)),
        "{doc}"
    );
    assert!(
        doc["fix"].as_str().is_some_and(|f| f.contains(fix)),
        "{doc}"
    );
}

fn release(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A run that would wait for ever is killed by `timeout` (exit 124).
fn apply_within(s: &Scratch, seconds: &str, env: &[(&str, &str)]) -> (common::Run, Duration) {
    let mut cmd = s.wrapped(&["timeout", seconds], "apply");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let run = common::Run::from(cmd.output().unwrap());
    (run, start.elapsed())
}

#[test]
fn only_root_can_hold_the_lock_and_a_lock_on_the_root_stalls_nothing() {
    if !require_root() {
        return;
    }
    let s = scratch_one("lock-root");
    // Any user who can open the root can flock it; that must not stall a run.
    std::fs::set_permissions(s.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = hold(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-x",
            "-o",
        ],
        &s.root(),
    );
    let (run, _) = apply_within(&s, "10", &[]);
    release(user);
    run.assert_code(0);
    assert!(exists(s.root().join("persist/var/lib/a")));
    let lock = s.state().join("lock");
    let meta = std::fs::metadata(&lock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    // A user cannot even open it, so cannot hold it.
    let status = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-n",
        ])
        .arg(&lock)
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "a user could take the lock");
}

#[test]
fn a_held_lock_is_waited_for_within_a_bound_and_its_holder_named() {
    if !require_root() {
        return;
    }
    let s = scratch_one("lock-bound");
    let holder = hold(&["flock", "-x", "-o"], &s.state().join("lock"));
    let pid = holder.id();
    let (run, took) = apply_within(&s, "20", &[("PERSIST_PREP_LOCK_TIMEOUT", "1")]);
    release(holder);
    run.assert_code(1);
    assert!(took < Duration::from_secs(10), "waited {took:?}");
    assert_said(&run, &format!("pid {pid} (flock)"));
    assert_said(&run, "nothing was done");
    assert!(!exists(s.root().join("persist")));
    // Released within the bound, the lock is taken and the run goes on.
    let holder = hold_for(&["flock", "-x", "-o"], &s.state().join("lock"), "1");
    let (run, _) = apply_within(&s, "20", &[("PERSIST_PREP_LOCK_TIMEOUT", "10")]);
    release(holder);
    run.assert_code(0);
    assert_said(&run, "waiting for another persist-prep run");
}

#[test]
fn a_check_blocked_on_its_output_holds_no_lock() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("lock-pager");
    // A table far larger than a pipe holds, so that `check` blocks writing it.
    let entries: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"path":"/var/lib/entry-with-a-long-name-{i:05}","user":"root","group":"root","mode":"0700"}}"#))
        .collect();
    s.manifest(&format!(
        r#"{{"version":1,"storages":[{{"path":"/persist","directories":[{}]}}]}}"#,
        entries.join(",")
    ));
    let mut check = s
        .wrapped(&["env"], "check")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A pager that has not read yet: `check` is now stuck in write.
    std::thread::sleep(Duration::from_millis(1500));
    let (run, _) = apply_within(&s, "20", &[]);
    let mut table = String::new();
    check
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut table)
        .unwrap();
    check.wait().unwrap();
    run.assert_code(0);
    assert!(
        table.len() > 128 * 1024,
        "the table fits a pipe: {}",
        table.len()
    );
    assert!(exists(
        s.root()
            .join("persist/var/lib/entry-with-a-long-name-02999")
    ));
}

#[test]
fn a_file_system_without_locks_is_warned_about_and_the_run_goes_on() {
    if !require_root() {
        return;
    }
    for errno in ["ENOLCK", "EOPNOTSUPP"] {
        let s = scratch_one(&format!("lock-{errno}"));
        let inject = format!("inject=flock:error={errno}");
        let out = s
            .wrapped(
                &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject],
                "apply",
            )
            .output()
            .expect("strace runs (apt-get install strace)");
        let run = common::Run::from(out);
        run.assert_code(0);
        assert!(exists(s.root().join("persist/var/lib/a")), "{errno}");
        assert_said(&run, "keeps no locks");
        assert_said(&run, "going on without the lock");
    }
}

#[test]
fn a_state_directory_others_can_write_to_is_refused_for_the_lock() {
    if !require_root() {
        return;
    }
    let s = scratch_one("lock-unsafe");
    open_to_others(&s.state());
    let (run, _) = apply_within(&s, "10", &[]);
    run.assert_code(1);
    assert_said(&run, "so others could take or replace its lock");
    assert!(!exists(s.root().join("persist")));
    // `check` only reads: it says so and goes on without the lock.
    let check = s.run(&["check"]);
    assert_said(&check, "going on without the lock");
}

#[test]
fn a_run_refused_the_lock_still_prints_one_json_document() {
    if !require_root() {
        return;
    }
    let s = scratch_one("lock-json");
    open_to_others(&s.state());
    for command in ["apply", "finish"] {
        let run = s.run(&[command, "--json"]);
        run.assert_code(1);
        assert_error_document(
            &run,
            command,
            "others could take or replace its lock",
            "chown root",
        );
    }
    assert!(!exists(s.root().join("persist")));
}

#[test]
fn a_finish_that_cannot_read_its_record_still_prints_one_json_document() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("record-json");
    std::fs::write(s.state().join("deferred.json"), "not json").unwrap();
    let run = s.run(&["finish", "--json"]);
    run.assert_code(1);
    assert_error_document(&run, "finish", "deferred-owner record", "remove it");
}

/// A holder that the run's pid namespace cannot see shows in `/proc/locks` as pid 0: the run
/// says so, instead of naming a process 0 that does not exist.
#[test]
fn a_holder_in_another_pid_namespace_is_named_as_such() {
    if !require_root() {
        return;
    }
    if !Command::new("unshare")
        .args(["--pid", "--fork", "--mount", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return common::skip("unshare --pid --mount-proc is not available here");
    }
    let s = scratch_one("lock-pidns");
    let holder = hold(&["flock", "-x", "-o"], &s.state().join("lock"));
    let mut cmd = s.wrapped(
        &["unshare", "--pid", "--fork", "--mount", "--mount-proc"],
        "apply",
    );
    cmd.env("PERSIST_PREP_LOCK_TIMEOUT", "1");
    let run = common::Run::from(cmd.output().unwrap());
    release(holder);
    run.assert_code(1);
    assert!(!run.stderr.contains("pid 0"), "{}", run.stderr);
    assert_said(&run, "another pid namespace");
}

/// Whatever stands at the lock's name instead of a regular file (a symlink, a directory, a
/// FIFO), the run refuses it and the fix is to remove it, not to change the state directory.
#[test]
fn anything_but_a_file_at_the_locks_name_is_named_with_the_right_fix() {
    if !require_root() {
        return;
    }
    let s = scratch_one("lock-not-a-file");
    let lock = s.state().join("lock");
    let make = |kind: &str, p: &std::path::Path| match kind {
        "symlink" => std::os::unix::fs::symlink("/etc/passwd", p).unwrap(),
        "directory" => std::fs::create_dir(p).unwrap(),
        _ => assert!(Command::new("mkfifo").arg(p).status().unwrap().success()),
    };
    for kind in ["symlink", "directory", "fifo"] {
        make(kind, &lock);
        let (run, _) = apply_within(&s, "10", &[]);
        run.assert_code(1);
        assert!(
            run.stderr.contains("is not a regular file that root owns")
                && run.stderr.contains("Fix: remove"),
            "{kind}: {}",
            run.stderr
        );
        assert!(!exists(s.root().join("persist")), "{kind}");
        if kind == "directory" {
            std::fs::remove_dir(&lock).unwrap();
        } else {
            std::fs::remove_file(&lock).unwrap();
        }
    }
}
