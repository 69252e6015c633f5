//! Crash safety, by fault injection: `apply` is killed at every call of every system call that
//! changes the tree or the state, in turn (`strace -e inject=SYSCALL:signal=KILL:when=N`).
//!
//! The rule: at every instant, a path persist-prep creates either does not exist or has its
//! final owner and mode (a deferred owner is root until `finish`), apart from empty temporary
//! directories named `.persist-prep.*`. A run after the killed one finishes the job, removes
//! those leftovers, and the tree then equals the one a run without faults makes.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Scratch, require_root};

/// Non-root owners, a set-group-id mode, root-owned parents, a deferred owner and a file.
const MANIFEST: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/app","user":"app","group":"app","mode":"0750"},
  {"path":"/var/lib/app/cache","user":"app","group":"app","mode":"0700"},
  {"path":"/var/lib/private","user":"root","group":"root","mode":"0700"},
  {"path":"/srv/share","user":"root","group":"app","mode":"2770"},
  {"path":"/home/later","user":"later","group":"later","mode":"0700",
   "parent":{"user":"root","group":"root","mode":"0755"}},
  {"path":"/var/log","user":"root","group":"root","mode":"0755"}],
  "files":[{"path":"/etc/ssh/ssh_host_ed25519_key","parent":{"mode":"0751"}}]}]}"#;

const CALLS: &[&str] = &[
    "mkdirat",
    "fchownat",
    "fchmodat",
    "fchown",
    "fchmod",
    "fsetxattr",
    "renameat2",
    "renameat",
    "unlinkat",
    "openat",
    "write",
    "flock",
    "fsync",
];

fn prepare(s: &Scratch) {
    s.manifest(MANIFEST);
    std::fs::create_dir_all(s.root().join("etc")).unwrap();
    std::fs::write(
        s.root().join("etc/passwd"),
        "app:x:4100:4100::/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(s.root().join("etc/group"), "app:x:4100:\n").unwrap();
}

/// Path below the root -> (mode, uid, gid) for every directory.
fn tree(root: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, (m.mode() & 0o7777, m.uid(), m.gid()));
                stack.push(e.path());
            }
        }
    }
    out
}

fn is_leftover(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(".persist-prep."))
}

/// How often a clean apply makes each call, from strace's own count.
fn call_counts() -> BTreeMap<String, usize> {
    let s = Scratch::new("faults-count");
    prepare(&s);
    let log = s.dir.join("strace.log");
    let trace = format!("trace={}", CALLS.join(","));
    let log_path = log.display().to_string();
    let out = s
        .wrapped(
            &["strace", "-f", "-qq", "-o", &log_path, "-e", &trace],
            "apply",
        )
        .output()
        .expect("strace runs (apt-get install strace)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or("");
        let name = call.split('(').next().unwrap_or("");
        if CALLS.contains(&name) {
            *counts.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn apply_killed_at(s: &Scratch, call: &str, n: usize) -> bool {
    let inject = format!("inject={call}:signal=KILL:when={n}");
    let out = s
        .wrapped(
            &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject],
            "apply",
        )
        .env("PERSIST_PREP_LOG", "off")
        .output()
        .unwrap();
    // strace exits with the tracee's signal as 128 + 9, or kills itself with it.
    !out.status.success()
}

#[test]
fn killed_at_any_call_apply_leaves_only_final_directories_and_the_next_run_completes() {
    if !require_root() {
        return;
    }
    let reference = Scratch::new("faults-ref");
    prepare(&reference);
    reference.run(&["apply"]).assert_code(0);
    let expected = tree(&reference.root());
    let counts = call_counts();
    assert!(
        counts.get("renameat2").copied().unwrap_or(0) >= 4,
        "{counts:?}"
    );
    let mut kills = 0;
    for (call, &count) in &counts {
        for n in 1..=count {
            let s = Scratch::new(&format!("faults-{call}-{n}"));
            prepare(&s);
            if !apply_killed_at(&s, call, n) {
                continue;
            }
            kills += 1;
            for (path, attrs) in tree(&s.root()) {
                // A leftover is a tree of directories under a temporary name (`tree` lists
                // directories only); anything at a final path must be final.
                if path.split('/').any(|c| c.starts_with(".persist-prep.")) {
                    let files = std::fs::read_dir(s.root().join(&path))
                        .unwrap()
                        .flatten()
                        .filter(|e| !e.file_type().unwrap().is_dir())
                        .count();
                    assert_eq!(
                        files, 0,
                        "killed at {call} #{n}: leftover {path} holds a file"
                    );
                    continue;
                }
                assert_eq!(
                    expected.get(&path),
                    Some(&attrs),
                    "killed at {call} #{n}: {path} exists with {attrs:?} before it is final"
                );
            }
            let again = s.run(&["apply"]);
            again.assert_code(0);
            let after = tree(&s.root());
            assert!(
                !after.keys().any(|p| is_leftover(p)),
                "killed at {call} #{n}: a leftover survived the next run: {after:?}"
            );
            assert_eq!(
                after, expected,
                "killed at {call} #{n}: the next run did not finish the job\n{}",
                again.stderr
            );
            // The deferred owner still arrives, though the record of the killed run may be gone.
            std::fs::write(
                s.root().join("etc/passwd"),
                "app:x:4100:4100::/:/bin/false\nlater:x:4200:4200::/:/bin/false\n",
            )
            .unwrap();
            std::fs::write(s.root().join("etc/group"), "app:x:4100:\nlater:x:4200:\n").unwrap();
            s.run(&["apply"]).assert_code(0);
            s.run(&["finish"]).assert_code(0);
            let check = s.run(&["check"]);
            assert_eq!(
                check.code, 0,
                "killed at {call} #{n}: check after finish\n{}{}",
                check.stdout, check.stderr
            );
        }
    }
    assert!(kills >= 20, "only {kills} runs were killed: {counts:?}");
    eprintln!("killed apply at {kills} system calls: {counts:?}");
}
