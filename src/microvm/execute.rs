//! Carries out a plan, step by step, and records what happened to each step.

use std::collections::BTreeSet;

use rustix::fs::FileType;
use rustix::io::Errno;
use serde::Serialize;

use crate::escape;

use super::plan::Step;
use super::rootfs::{self, Root};
use super::systemd;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Done,
    Failed,
    Skipped,
}

#[derive(Serialize, Clone, Debug)]
pub struct Outcome {
    /// Index into the plan.
    pub step: usize,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Runs the steps in order. A VM whose stop failed keeps everything else: deleting the units of
/// a VM that still runs would leave it unstoppable.
pub fn execute(root: &Root, live: bool, steps: &[Step]) -> Vec<Outcome> {
    let mut stop_failed: BTreeSet<String> = BTreeSet::new();
    let mut outcomes = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let outcome = |status, message| Outcome {
            step: index,
            status,
            message,
        };
        if let Some(vm) = step.vm().filter(|vm| stop_failed.contains(*vm)) {
            let message = format!("skipped: stopping VM '{vm}' failed");
            log::warn!(
                "{} {}: {message}",
                step.action(),
                escape::text(step.target())
            );
            outcomes.push(outcome(Status::Skipped, Some(message)));
            continue;
        }
        match run_step(root, live, step) {
            Ok(note) => {
                log::debug!("{} {}: done", step.action(), escape::text(step.target()));
                outcomes.push(outcome(Status::Done, note));
            }
            Err(message) => {
                log::error!(
                    "{} {} failed: {}",
                    step.action(),
                    escape::text(step.target()),
                    escape::text(&message)
                );
                if let Step::Stop { vm, .. } = step {
                    stop_failed.insert(vm.clone());
                }
                outcomes.push(outcome(Status::Failed, Some(message)));
            }
        }
    }
    outcomes
}

fn run_step(root: &Root, live: bool, step: &Step) -> Result<Option<String>, String> {
    let needs_host = matches!(
        step,
        Step::Stop { .. }
            | Step::ResetFailed { .. }
            | Step::DeleteInterface { .. }
            | Step::DaemonReload
    );
    if needs_host && !live {
        return Err("refused: --root is not the running system".into());
    }
    let removed = |result: Result<(), super::rootfs::FsError>| match result {
        Ok(()) => Ok(None),
        Err(e) if e.errno == Errno::NOENT => Ok(Some("already gone".to_owned())),
        Err(e) => Err(format!("cannot remove {e}")),
    };
    match step {
        // Stopping the VM stops its PartOf helpers too, and a unit that stopped cleanly is
        // unloaded at once: "not loaded" then means there is nothing left to stop or reset.
        Step::Stop { unit, .. } => tolerate_unloaded(&["stop", "--", unit]),
        Step::ResetFailed { unit, .. } => tolerate_unloaded(&["reset-failed", "--", unit]),
        Step::DeleteInterface {
            interface, kind, ..
        } => {
            if !std::path::Path::new("/sys/class/net")
                .join(interface)
                .exists()
            {
                return Ok(Some("already gone".into()));
            }
            let shown = systemd::output("ip", &["-d", "-j", "link", "show", "dev", interface])?;
            interface_is(&shown, kind)?;
            systemd::run("ip", &["link", "delete", "dev", interface]).map(|()| None)
        }
        Step::DaemonReload => systemd::run("systemctl", &["daemon-reload"]).map(|()| None),
        Step::RemoveEnablementLink { path, .. }
        | Step::RemoveUnitFile { path, .. }
        | Step::RemoveGcRoot { path, .. } => removed(root.unlink(path)),
        Step::RemoveDropIn { path, .. } | Step::RemoveDependencyDir { path, .. } => {
            match root.lstat(path) {
                Ok(Some(stat)) if rootfs::file_type(&stat) == FileType::Symlink => {
                    removed(root.unlink(path))
                }
                _ => removed(root.remove_tree(path)),
            }
        }
        Step::PurgeState { path, vm } => {
            unused_now(root, vm, path)?;
            removed(root.remove_tree(path))
        }
    }
}

/// Checks that `ip -d -j link show` describes a `tap` (a tun device in tap mode) or `macvtap`:
/// a runner may list a name that is now the host's bridge or another tool's device, and
/// deleting that would take the host's network down.
fn interface_is(shown: &str, kind: &str) -> Result<(), String> {
    let links: serde_json::Value = serde_json::from_str(shown)
        .map_err(|e| format!("cannot read `ip -j link show` ({e}); left alone"))?;
    let info = &links[0]["linkinfo"];
    let found = match (
        info["info_kind"].as_str(),
        info["info_data"]["type"].as_str(),
    ) {
        (Some("tun"), Some(mode)) => mode.to_owned(),
        (Some(other), _) => other.to_owned(),
        (None, _) => links[0]["link_type"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
    };
    if found == kind {
        Ok(())
    } else {
        Err(format!(
            "refused: it is a {found} interface, not a {kind}; the VM's runner lists a name that \
             is not its interface now, so it is left alone"
        ))
    }
}

/// The scan saw no process using the directory, but a VM may have started since (`microvm -r`,
/// `systemctl start`, while an earlier step waited): look again right before deleting its disks.
fn unused_now(root: &Root, vm: &str, path: &str) -> Result<(), String> {
    let dirs = [(vm.to_owned(), path.to_owned())];
    let owners = super::proc::identities(root, &dirs);
    match super::proc::users(&dirs, &owners) {
        Ok(users) if users.is_empty() => Ok(()),
        Ok(users) => Err(format!(
            "refused: process {} uses it now (the VM started after the scan?); nothing of it \
             was deleted",
            users
                .values()
                .flatten()
                .map(|user| user.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(why) => Err(format!(
            "refused: whether a process uses it now cannot be known: {why}"
        )),
    }
}

fn tolerate_unloaded(args: &[&str]) -> Result<Option<String>, String> {
    match systemd::run("systemctl", args) {
        Ok(()) => Ok(None),
        Err(message) if message.contains("not loaded") => Ok(Some("not loaded any more".into())),
        Err(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_tap_or_macvtap_is_deleted() {
        let link =
            |info: &str| format!(r#"[{{"ifname":"x","link_type":"ether","linkinfo":{info}}}]"#);
        let tap = link(r#"{"info_kind":"tun","info_data":{"type":"tap"}}"#);
        let tun = link(r#"{"info_kind":"tun","info_data":{"type":"tun"}}"#);
        let macvtap = link(r#"{"info_kind":"macvtap","info_data":{"mode":"bridge"}}"#);
        let bridge = link(r#"{"info_kind":"bridge","info_data":{}}"#);
        let physical = r#"[{"ifname":"eth0","link_type":"ether"}]"#.to_owned();
        let table = [
            (&tap, "tap", true),
            (&tun, "tap", false),
            (&macvtap, "macvtap", true),
            (&tap, "macvtap", false),
            (&bridge, "tap", false),
            (&physical, "tap", false),
        ];
        for (shown, kind, ok) in table {
            assert_eq!(interface_is(shown, kind).is_ok(), ok, "{shown} as {kind}");
        }
        assert!(
            interface_is(&bridge, "tap")
                .unwrap_err()
                .contains("it is a bridge interface, not a tap")
        );
        assert!(interface_is("not json", "tap").is_err());
    }
}
