//! Strict input: what persist-prep reads (manifest, arguments, environment) ends in a documented
//! exit code with a message, never a hang or a panic.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Scratch};

/// Runs the binary with a deadline, so that a hang fails the test instead of the suite.
fn run_within(cmd: &mut Command, limit: Duration) -> common::Run {
    let mut child = cmd
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    common::Run::from(child.wait_with_output().unwrap())
}

/// A manifest that is not a regular file is refused at once with exit 3, never read.
#[test]
fn manifest_must_be_a_regular_file() {
    let s = Scratch::new("input-fifo");
    let fifo = s.dir.join("fifo.json");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let dir = s.dir.join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let cases = [
        (fifo.as_os_str(), "FIFO"),
        (dir.as_os_str(), "a directory"),
        (std::ffi::OsStr::new("/dev/null"), "character device"),
    ];
    for (path, what) in cases {
        for command in ["validate", "apply", "check"] {
            let mut cmd = Command::new(BIN);
            cmd.args([command, "--manifest"]).arg(path);
            if command == "validate" {
                cmd.args(["--json"]);
            } else {
                cmd.arg("--root")
                    .arg(s.root())
                    .arg("--state-dir")
                    .arg(s.state());
            }
            let run = run_within(&mut cmd, Duration::from_secs(10));
            run.assert_code(3);
            assert!(
                run.stderr.contains(what) && run.stderr.contains("not a regular file"),
                "{command} {path:?}: {}",
                run.stderr
            );
        }
    }
    // A symlink to a regular file is fine: the NixOS initrd links the manifest into the store.
    let real = s.manifest(r#"{"version":1,"storages":[]}"#);
    let link = s.dir.join("link.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let run = run_within(
        Command::new(BIN)
            .arg("validate")
            .arg("--manifest")
            .arg(&link),
        Duration::from_secs(10),
    );
    run.assert_code(0);
}

/// A key given twice in one object is refused, whichever value would have won.
#[test]
fn duplicate_keys_are_refused() {
    let s = Scratch::new("input-dupkey");
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/a","user":"root","group":"root","mode":"0700","mode":"0777"}]}]}"#,
    );
    let run = s.run(&["validate"]);
    run.assert_code(3);
    assert!(
        run.stderr.contains("duplicate field `mode`"),
        "{}",
        run.stderr
    );
}

/// A numeric name is an id, and (uid_t)-1 is no one's id.
#[test]
fn numeric_name_minus_one_is_refused() {
    let s = Scratch::new("input-minus-one");
    for (user, group) in [("4294967295", "root"), ("root", "4294967295")] {
        s.manifest(&format!(
            r#"{{"version":1,"storages":[{{"path":"/persist","directories":[
            {{"path":"/var/lib/a","user":"{user}","group":"{group}","mode":"0700"}}]}}]}}"#
        ));
        let run = s.run(&["validate"]);
        run.assert_code(3);
        assert!(run.stderr.contains("0 to 4294967294"), "{}", run.stderr);
    }
}

/// passwd and the NixOS id maps cannot give a name (uid_t)-1: the name stays unresolved, apply
/// defers it (the directory is root-owned) and warns naming the file.
#[test]
fn minus_one_from_passwd_or_id_maps_does_not_resolve() {
    if !common::require_root() {
        return;
    }
    let s = Scratch::new("input-passwd-minus-one");
    let etc = s.root().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0::/root:/bin/sh\nbad:x:4294967295:0::/:/\n",
    )
    .unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    let maps = s.root().join("var/lib/nixos");
    std::fs::create_dir_all(&maps).unwrap();
    std::fs::write(maps.join("gid-map"), r#"{"badg": 4294967295}"#).unwrap();
    std::fs::create_dir_all(s.root().join("persist")).unwrap();
    s.manifest(
        r#"{"version":1,"storages":[{"path":"/persist","directories":[
        {"path":"/var/lib/u","user":"bad","group":"root","mode":"0700"},
        {"path":"/var/lib/g","user":"root","group":"badg","mode":"0700"}]}]}"#,
    );
    let run = s.run(&["apply"]);
    for file in ["/etc/passwd", "/var/lib/nixos/gid-map"] {
        assert!(
            run.stderr.lines().any(|l| l.starts_with("warning: ")
                && l.contains(file)
                && l.contains("4294967295")
                && l.contains("fix:")),
            "{file}: {}",
            run.stderr
        );
    }
    for dir in ["u", "g"] {
        let (_, uid, gid) = common::stat(s.root().join("persist/var/lib").join(dir));
        assert_eq!((uid, gid), (0, 0), "{dir}");
    }
}

/// Runs the binary with raw argument bytes in the scratch directory (a relative path given
/// there stays there), with a deadline.
fn run_args(s: &Scratch, args: &[&[u8]]) -> common::Run {
    use std::os::unix::ffi::OsStrExt as _;
    let mut cmd = Command::new(BIN);
    cmd.current_dir(&s.dir).env_remove("PERSIST_PREP_LOG");
    for arg in args {
        cmd.arg(std::ffi::OsStr::from_bytes(arg));
    }
    run_within(&mut cmd, Duration::from_secs(20))
}

fn assert_documented(run: &common::Run, what: &str) {
    assert!(
        [0, 1, 2, 3].contains(&run.code),
        "{what}: exit {} is not a documented code\nstderr:\n{}",
        run.code,
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{what}: {}", run.stderr);
}

/// Paths are bytes on Linux: a --root or --manifest that is not UTF-8 is just a path (one that
/// does not exist here), never a panic.
#[test]
fn non_utf8_paths_are_paths() {
    let s = Scratch::new("input-non-utf8");
    let manifest = s.manifest(r#"{"version":1,"storages":[]}"#);
    let manifest = manifest.as_os_str().as_encoded_bytes();
    let bad: &[u8] = b"\xff\xfe/x";
    let state = s.state();
    let state = state.as_os_str().as_encoded_bytes();
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b"validate", b"--manifest", bad],
        vec![b"validate", b"--json", b"--manifest", bad],
        vec![
            b"apply",
            b"--root",
            bad,
            b"--manifest",
            manifest,
            b"--state-dir",
            state,
        ],
        vec![
            b"apply",
            b"--dry-run",
            b"--root",
            bad,
            b"--manifest",
            manifest,
            b"--state-dir",
            state,
        ],
        vec![
            b"apply",
            b"--json",
            b"--root",
            bad,
            b"--manifest",
            manifest,
            b"--state-dir",
            state,
        ],
        vec![
            b"apply",
            b"--manifest",
            bad,
            b"--root",
            b"/nonexistent",
            b"--state-dir",
            state,
        ],
        vec![
            b"check",
            b"--root",
            bad,
            b"--manifest",
            manifest,
            b"--state-dir",
            state,
        ],
        vec![
            b"check",
            b"--json",
            b"--manifest",
            bad,
            b"--root",
            b"/nonexistent",
        ],
        vec![b"finish", b"--root", bad, b"--state-dir", bad],
        vec![
            b"apply",
            b"--root=\xff",
            b"--manifest",
            bad,
            b"--state-dir",
            state,
        ],
    ];
    for args in &cases {
        let run = run_args(&s, args);
        assert_documented(&run, &format!("{args:?}"));
        assert_ne!(
            run.code, 2,
            "{args:?} is a valid command line: {}",
            run.stderr
        );
    }
    // The manifest path is shown escaped, never raw.
    let run = run_args(&s, &[b"validate", b"--manifest", bad]);
    run.assert_code(3);
    assert!(run.stderr.contains("\\xff\\xfe/x"), "{}", run.stderr);
}

/// An unknown argument, command or flag value that is not UTF-8 is a usage error (exit 2 with the
/// usage), and a newline in it cannot start a line of its own.
#[test]
fn non_utf8_and_unknown_arguments_are_usage_errors() {
    let s = Scratch::new("input-unknown-args");
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![b"\xff"],
        vec![b"apply", b"--\xff"],
        vec![b"apply", b"-\xff"],
        vec![b"apply", b"\xff"],
        vec![b"check", b"--root", b"/", b"--bogus\n<0>forged"],
        vec![b"apply\n<0>forged"],
        vec![b"validate", b"--root", b"/"],
        vec![b"validate", b"--json=yes"],
        vec![b"apply", b"--manifest"],
        vec![b"apply", b"--manifest="],
        vec![b"-x"],
    ];
    for args in &cases {
        let run = run_args(&s, args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("usage:"), "{args:?}: {}", run.stderr);
        assert!(
            !run.stderr.lines().any(|l| l.starts_with("<0>")),
            "{args:?} forged a line: {}",
            run.stderr
        );
    }
}

/// `--help` and `--version` to a closed stdout end quietly, not in a panic.
#[test]
fn help_to_a_closed_stdout_does_not_panic() {
    for args in ["--help", "apply --help", "-V", "bogus"] {
        let out = Command::new("sh")
            .args(["-c", &format!("\"$BIN\" {args} >&- 2>&-; echo $?")])
            .env("BIN", BIN)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let expect = if args == "bogus" { "2" } else { "0" };
        assert_eq!(code, expect, "{args}");
    }
}

/// Runs `validate` on a manifest with the given log environment; returns stderr.
fn validate_with_env(s: &Scratch, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("validate")
        .arg("--manifest")
        .arg(s.dir.join("manifest.json"))
        .env_remove("RUST_LOG")
        .env_remove("PERSIST_PREP_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_within(&mut cmd, Duration::from_secs(10)).stderr
}

/// `RUST_LOG` works as Rust users expect (a level, or module filters) and wins over
/// `PERSIST_PREP_LOG`, which stays as an alias when `RUST_LOG` is unset.
#[test]
fn rust_log_and_its_alias() {
    let s = Scratch::new("input-rust-log");
    s.manifest(r#"{"version":1,"storages":[]}"#);
    let valid = "is valid";
    assert!(validate_with_env(&s, &[]).contains(valid));
    assert!(validate_with_env(&s, &[("RUST_LOG", "error")]).is_empty());
    assert!(validate_with_env(&s, &[("PERSIST_PREP_LOG", "error")]).is_empty());
    assert!(validate_with_env(&s, &[("PERSIST_PREP_LOG", "warning")]).is_empty());
    let both = [("RUST_LOG", "info"), ("PERSIST_PREP_LOG", "error")];
    assert!(validate_with_env(&s, &both).contains(valid));
    let both = [("RUST_LOG", ""), ("PERSIST_PREP_LOG", "error")];
    assert!(
        validate_with_env(&s, &both).is_empty(),
        "an empty RUST_LOG counts as unset"
    );
    let filters = [("RUST_LOG", "warn,persist_prep::commands=info")];
    assert!(validate_with_env(&s, &filters).contains(valid));
    s.manifest(r#"{"version":1,"storages":[{"path":"rel"}]}"#);
    assert!(validate_with_env(&s, &[("RUST_LOG", "error")]).contains("error: invalid manifest"));
    let off = [("RUST_LOG", "persist_prep::commands::validate=off")];
    assert!(validate_with_env(&s, &off).is_empty());
}

/// A message that carries a newline (here the --root path, which the caller chooses) stays one
/// line, so it cannot forge a journal priority; in the journal every line has its priority.
#[test]
fn no_message_forges_a_journal_line() {
    use std::os::unix::fs::MetadataExt as _;
    let s = Scratch::new("input-forge");
    s.manifest(r#"{"version":1,"storages":[]}"#);
    let log = s.dir.join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let m = file.metadata().unwrap();
    let status = Command::new(BIN)
        .args(["apply", "--root", "/nonexistent\n<0>forged", "--state-dir"])
        .arg(s.state())
        .arg("--manifest")
        .arg(s.dir.join("manifest.json"))
        .env_remove("RUST_LOG")
        .env_remove("PERSIST_PREP_LOG")
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert!([1, 2, 3].contains(&status.code().unwrap()), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\\n<0>forged"), "{text}");
    assert!(
        text.lines()
            .all(|l| l.starts_with("<3>") || l.starts_with("<4>") || l.starts_with("<6>")),
        "{text}"
    );
}

/// Names starting with `.persist-prep.` are persist-prep's own: an entry declared under one
/// could stand at another entry's temporary name, and the sibling's run would take it for a
/// leftover (and, empty, remove it). They are refused like any other invalid path.
#[test]
fn paths_under_persist_preps_reserved_names_are_refused() {
    let s = Scratch::new("input-reserved");
    for path in [
        "/var/lib/.persist-prep.8267ac195d0787ed",
        "/var/.persist-prep.x/lib",
    ] {
        s.manifest(&format!(
            r#"{{"version":1,"storages":[{{"path":"/persist","directories":[
            {{"path":"{path}","user":"root","group":"root","mode":"0700"}},
            {{"path":"/var/lib/svc","user":"root","group":"root","mode":"0700"}}]}}]}}"#
        ));
        let run = s.run(&["validate"]);
        run.assert_code(3);
        assert!(
            run.stderr.contains(".persist-prep."),
            "{path}: {}",
            run.stderr
        );
    }
}
