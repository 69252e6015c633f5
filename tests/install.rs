//! The installer path: `persist-prep apply --root /mnt` on a target as nixos-anywhere (disko) or
//! a hand-run `nixos-install` leaves it before the first boot. The persistent volume is freshly
//! formatted and mounted at `/mnt/nix`, the storage `/nix/persist` on it does not exist yet, the
//! target root is empty, and nothing is mounted on `/mnt/var/lib` (the bind mounts only exist
//! once the new system boots). Runs the real binary as root in a private mount namespace.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, Scratch, exists, require_root, stat};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

const BIN: &str = env!("CARGO_BIN_EXE_persist-prep");

/// The manifest the module would build for a typical nixos-anywhere install: storage
/// `/nix/persist` on the `/nix` volume, `/var/lib/nixos` and `/var/log` bound from it in the
/// initrd, a 0700 system directory, a service with a static id, one without (the installer's
/// system has no such user: deferred), a home, and a file.
const MANIFEST: &str = r#"{
  "version": 1,
  "storages": [ {
    "path": "/nix/persist",
    "mountPoint": "/nix",
    "directories": [
      { "path": "/var/lib/nixos", "user": "root", "group": "root", "mode": "0755" },
      { "path": "/var/log", "user": "root", "group": "root", "mode": "0755" },
      { "path": "/var/lib/private", "user": "root", "group": "root", "mode": "0700" },
      { "path": "/var/lib/postgresql", "user": "postgres", "group": "postgres", "uid": 71, "gid": 71,
        "mode": "0750" },
      { "path": "/var/lib/svc", "user": "svc", "group": "svc", "mode": "u=rwx,g=rx,o=" },
      { "path": "/home/alice", "user": "alice", "group": "users", "uid": 1000, "gid": 100,
        "mode": "0700" },
      { "path": "/home/alice/.ssh", "user": "alice", "group": "users", "uid": 1000, "gid": 100,
        "mode": "0700", "parent": { "user": "alice", "group": "users", "uid": 1000, "gid": 100 } }
    ],
    "files": [ { "path": "/etc/machine-id" } ]
  } ]
}"#;

/// Runs the binary with `args` and `--root <mnt> --state-dir <state> [--manifest <file>]`.
fn persist_prep(mnt: &Path, state: &Path, manifest: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--root")
        .arg(mnt)
        .arg("--state-dir")
        .arg(state)
        .env_remove("JOURNAL_STREAM")
        .env("PERSIST_PREP_LOG", "info");
    if let Some(manifest) = manifest {
        cmd.arg("--manifest").arg(manifest);
    }
    Run::from(cmd.output().expect("run persist-prep"))
}

/// Mount points at or below `dir` in this thread's mount namespace.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect()
}

/// What a formatted volume looks like mounted: an empty file system (ext4's `lost+found` too).
fn mount_fresh_volume(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .expect("mount a tmpfs as the fresh volume");
    std::fs::create_dir(at.join("lost+found")).unwrap();
}

/// Runs `body` in a thread with a private mount namespace of its own: the mounts vanish with it.
fn in_private_namespace<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        body()
    })
    .join()
    .unwrap()
}

struct Target {
    mnt: PathBuf,
    state: PathBuf,
    manifest: PathBuf,
}

impl Target {
    fn new(scratch: &Scratch) -> Self {
        let manifest = scratch.manifest(MANIFEST);
        Target {
            mnt: scratch.dir.join("mnt"),
            state: scratch.state(),
            manifest,
        }
    }
    fn run(&self, args: &[&str]) -> Run {
        let manifest = (args[0] != "finish").then_some(self.manifest.as_path());
        persist_prep(&self.mnt, &self.state, manifest, args)
    }
}

#[test]
fn install_prepares_a_fresh_volume_under_mnt() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("install");
    let target = Target::new(&scratch);
    in_private_namespace(move || {
        let mnt = &target.mnt;
        mount_fresh_volume(&mnt.join("nix"));
        assert!(
            !exists(mnt.join("nix/persist")),
            "the storage must not exist yet"
        );
        assert_eq!(mounts_below(mnt), [mnt.join("nix").to_str().unwrap()]);

        let apply = target.run(&["apply"]);
        apply.assert_code(0);
        assert!(
            apply.stderr.contains("1 deferred"),
            "svc has no id on the installer: {}",
            apply.stderr
        );
        // Nothing is mounted by apply: the bind mounts belong to the booted system.
        assert_eq!(mounts_below(mnt), [mnt.join("nix").to_str().unwrap()]);

        check_tree(mnt, (0o750, 0, 0));
        // The file's parents exist on both sides; the file itself is never made.
        assert_eq!(stat(mnt.join("nix/persist/etc")), (0o755, 0, 0));
        assert_eq!(stat(mnt.join("etc")), (0o755, 0, 0));
        assert!(!exists(mnt.join("nix/persist/etc/machine-id")));
        assert!(!exists(mnt.join("etc/machine-id")));
        // The volume's own furniture is untouched.
        assert_eq!(stat(mnt.join("nix/lost+found")).0, 0o755);

        // nixos-install's activation writes the target's users; `finish` in the same installer
        // session (the record is in the installer's /run) gives svc its owner.
        std::fs::write(
            mnt.join("etc/passwd"),
            "svc:x:990:990::/var/empty:/bin/false\n",
        )
        .unwrap();
        std::fs::write(mnt.join("etc/group"), "svc:x:990:\n").unwrap();
        target.run(&["finish"]).assert_code(0);
        check_tree(mnt, (0o750, 990, 990));

        let check = target.run(&["check"]);
        check.assert_code(0);
        let again = target.run(&["apply"]);
        again.assert_code(0);
        assert!(
            again.stderr.contains("summary: 0 created"),
            "a second run must find everything in place: {}",
            again.stderr
        );
    });
}

/// Owners and modes on the volume and on the target root; `svc` is `(mode, uid, gid)` of
/// `/var/lib/svc`, which depends on whether its owner was known yet.
fn check_tree(mnt: &Path, svc: (u32, u32, u32)) {
    assert_eq!(stat(mnt.join("nix/persist")), (0o755, 0, 0));
    for (path, want) in [
        ("var", (0o755, 0, 0)),
        ("var/lib", (0o755, 0, 0)),
        ("var/lib/nixos", (0o755, 0, 0)),
        ("var/log", (0o755, 0, 0)),
        ("var/lib/private", (0o700, 0, 0)),
        ("var/lib/postgresql", (0o750, 71, 71)),
        ("var/lib/svc", svc),
        ("home", (0o755, 0, 0)),
        ("home/alice", (0o700, 1000, 100)),
        ("home/alice/.ssh", (0o700, 1000, 100)),
    ] {
        assert_eq!(
            stat(mnt.join("nix/persist").join(path)),
            want,
            "source {path}"
        );
        assert_eq!(stat(mnt.join(path)), want, "mount point {path}");
    }
}

/// The installer forgot to mount the volume: `/mnt/nix` is a plain directory of the installer's
/// own file system. Nothing may be created there, and the message names the mount.
#[test]
fn install_refuses_an_unmounted_volume() {
    if !require_root() {
        return;
    }
    let scratch = Scratch::new("install-unmounted");
    let target = Target::new(&scratch);
    in_private_namespace(move || {
        let mnt = &target.mnt;
        // A mounted target root, as disko leaves it, but no /mnt/nix volume on it.
        mount_fresh_volume(mnt);
        std::fs::create_dir(mnt.join("nix")).unwrap();
        let apply = target.run(&["apply"]);
        apply.assert_code(1);
        assert!(
            apply.stderr.contains("/nix"),
            "the message names the mount: {}",
            apply.stderr
        );
        assert!(!exists(mnt.join("nix/persist")));
        assert!(!exists(mnt.join("var")));
    });
}
