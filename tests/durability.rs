//! Power loss on a file system that does not order metadata: a directory made under its
//! temporary name is written to disk (fsync of it and its parent) before the rename, on ext4
//! without a journal; on a journaled ext4 that order holds already, and nothing is fsynced.

mod common;

use common::{Scratch, require_root, skip};

const MANIFEST: &str = r#"{"version":1,"storages":[{"path":"/persist","directories":[
  {"path":"/var/lib/svc","user":"nobody","group":"nogroup","uid":65534,"gid":65534,"mode":"0750"}]}]}"#;

/// Runs apply under strace with the storage on an ext4 image made with `mkfs_options`, the
/// root on a tmpfs, and `/sys` hidden when `hide_sys`; returns how many `fsync` calls apply
/// made.
fn fsyncs(name: &str, mkfs_options: &str, hide_sys: bool) -> Option<usize> {
    let s = Scratch::new(name);
    s.manifest(MANIFEST);
    let image = s.dir.join("image");
    let script = format!(
        r#"truncate -s 32M "{image}"
        mkfs.ext4 -q -F {mkfs_options} "{image}"
        mount -t tmpfs tmpfs "$ROOT"
        mkdir "$ROOT/persist"
        mount -o loop "{image}" "$ROOT/persist"
        {hide}
        strace -f -qq -e trace=fsync,renameat2 -o "$ROOT/../trace" "$BIN" apply --manifest "$MANIFEST" --root "$ROOT" --state-dir "$STATE"
        stat -c '%a %u' "$ROOT/persist/var/lib/svc" > "$ROOT/../svc""#,
        image = image.display(),
        hide = if hide_sys {
            "mount -t tmpfs tmpfs /sys"
        } else {
            ""
        }
    );
    let run = s.in_namespace(&script);
    if run.stderr.contains("failed to set up loop device")
        || run.stderr.contains("mkfs.ext4: not found")
    {
        skip(&format!(
            "no loop devices or mkfs.ext4 here: {}",
            run.stderr
        ));
        return None;
    }
    run.assert_code(0);
    assert_eq!(
        std::fs::read_to_string(s.dir.join("svc")).unwrap().trim(),
        "750 65534"
    );
    let trace = std::fs::read_to_string(s.dir.join("trace")).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let fsyncs = lines.iter().filter(|l| l.contains("fsync(")).count();
    // The storage's stage (`var`, on the image; the root is a tmpfs 1777, where nothing is
    // staged) is renamed into place right after the fsync of its parent.
    if fsyncs > 0 {
        let at = lines
            .iter()
            .position(|l| l.contains("renameat2(") && l.contains(r#""var""#))
            .unwrap_or_else(|| panic!("no rename of the stage:\n{trace}"));
        assert!(
            at > 0 && lines[at - 1].contains("fsync("),
            "the stage was renamed before its fsync:\n{trace}"
        );
    }
    Some(fsyncs)
}

#[test]
fn on_ext4_without_a_journal_a_directory_is_on_disk_before_its_rename() {
    if !require_root() {
        return;
    }
    let Some(count) = fsyncs("durable-nojournal", "-O ^has_journal", false) else {
        return;
    };
    // At least the staged directory and its parent.
    assert!(count >= 2, "{count} fsync calls");
}

#[test]
fn on_journaled_ext4_nothing_is_fsynced() {
    if !require_root() {
        return;
    }
    let Some(count) = fsyncs("durable-journal", "", false) else {
        return;
    };
    assert_eq!(count, 0);
}

/// Without `/sys` (an installer's chroot) nothing says whether an ext4 runs its journal: it is
/// then taken for one without, and pays the fsyncs rather than the risk.
#[test]
fn on_ext4_whose_journal_cannot_be_seen_the_directory_is_written_to_disk() {
    if !require_root() {
        return;
    }
    let Some(count) = fsyncs("durable-nosys", "", true) else {
        return;
    };
    assert!(count >= 2, "{count} fsync calls");
}
