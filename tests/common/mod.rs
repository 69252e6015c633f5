//! Helpers for the integration tests: real trees, the real binary, real ownership.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_persist-prep");

/// These tests chown and mount; without root they skip, unless CI demands everything run.
pub fn require_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("PERSIST_PREP_REQUIRE_ALL").is_none(),
        "PERSIST_PREP_REQUIRE_ALL is set but the integration tests are not running as root"
    );
    record_skip("integration tests need root (run `sudo tests/run`)");
    false
}

/// Skips a test whose prerequisite `why` describes is missing, unless CI demands everything run.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("PERSIST_PREP_REQUIRE_ALL").is_none(),
        "PERSIST_PREP_REQUIRE_ALL is set but a prerequisite is missing: {why}"
    );
    record_skip(why);
}

/// Says why a test returns early, and, where `tests/run` asks for it (`PERSIST_PREP_SKIP_LOG`),
/// names the test in that file: cargo counts a test that returned as passed, and the suite's
/// total must count it as skipped.
fn record_skip(why: &str) {
    use std::io::Write as _;
    eprintln!("SKIP: {why}");
    let Some(log) = std::env::var_os("PERSIST_PREP_SKIP_LOG") else {
        return;
    };
    let exe = std::env::current_exe().unwrap_or_default();
    let exe = exe
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log);
    // One short write per line: the test threads append to one file at once.
    if let Ok(mut file) = file {
        let _ = file.write_all(format!("{exe} {test}\n").as_bytes());
    }
}

/// A scratch directory removed on drop (after unmounting anything a test left).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("persist-prep-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        Scratch { dir }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn manifest(&self, text: &str) -> PathBuf {
        let path = self.dir.join("manifest.json");
        std::fs::write(&path, text).unwrap();
        path
    }
    /// Runs a subcommand against this scratch root and state dir.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            .env_remove("PERSIST_PREP_LOG");
        if args[0] != "validate" {
            cmd.arg("--root")
                .arg(self.root())
                .arg("--state-dir")
                .arg(self.state());
        }
        if args[0] != "finish" && !args.contains(&"--manifest") {
            cmd.arg("--manifest").arg(self.dir.join("manifest.json"));
        }
        Run::from(cmd.output().unwrap())
    }
    /// The binary run through `wrapper` (strace, timeout) on this scratch tree, for
    /// `wrapper... persist-prep COMMAND --manifest M --root R --state-dir S`.
    pub fn wrapped(&self, wrapper: &[&str], command: &str) -> Command {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(BIN)
            .arg(command)
            .arg("--manifest")
            .arg(self.dir.join("manifest.json"))
            .arg("--root")
            .arg(self.root())
            .arg("--state-dir")
            .arg(self.state())
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs a shell script in a private mount namespace; `$BIN`, `$ROOT`, `$STATE`, `$MANIFEST` are set.
    pub fn in_namespace(&self, script: &str) -> Run {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec", script])
            .env("BIN", BIN)
            .env("ROOT", self.root())
            .env("STATE", self.state())
            .env("MANIFEST", self.dir.join("manifest.json"))
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        Run::from(out)
    }
    /// Every path under the root with its owner, mode, inode and change time.
    pub fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.root(), &mut out);
        out.sort();
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let m = std::fs::symlink_metadata(&path).unwrap();
        out.push(format!(
            "{} {:o} {}:{} ino={} ctime={}.{}",
            path.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec()
        ));
        if m.is_dir() {
            walk(&path, out);
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The entry for PATH in a `--json` document's `entries`; panics, showing the document, when it
/// has none.
pub fn entry<'a>(doc: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("{path} missing from {doc}"))
}

/// `(mode, uid, gid)` of a path, as stat(2) reports it, without following a final symlink.
pub fn stat(path: impl AsRef<Path>) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.as_ref().display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

pub fn exists(path: impl AsRef<Path>) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
