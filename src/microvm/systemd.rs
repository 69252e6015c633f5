//! The running host: systemd's view of the units, and the network interfaces.
//!
//! Only consulted when `--root` is this system's `/` and systemd runs; a mounted tree's manager
//! and interfaces are not this host's.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::rootfs::Root;

/// A unit as `systemctl list-units` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    pub load: String,
    pub active: String,
    pub sub: String,
}

/// What the running host told us.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    pub units: Vec<UnitState>,
    pub interfaces: BTreeSet<String>,
}

/// Whether `root` is the running system and systemd is its manager.
pub fn is_live(root: &Root) -> bool {
    root.is_host_root() && Path::new("/run/systemd/system").is_dir()
}

/// Asks systemd for every loaded microvm unit and reads the host's interfaces.
pub fn query() -> Result<LiveState, String> {
    let output = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            "--full",
            "--",
            "microvm*",
            "install-microvm-*",
        ])
        .output()
        .map_err(|e| {
            format!(
                "cannot run systemctl: {}",
                crate::report::io_error_words(&e)
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "`systemctl list-units` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let units = parse_list_units(&String::from_utf8_lossy(&output.stdout));
    let interfaces = std::fs::read_dir("/sys/class/net")
        .map_err(|e| {
            format!(
                "cannot list /sys/class/net: {}",
                crate::report::io_error_words(&e)
            )
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    Ok(LiveState { units, interfaces })
}

/// Parses `systemctl list-units --plain --no-legend` lines: UNIT LOAD ACTIVE SUB DESCRIPTION.
pub fn parse_list_units(text: &str) -> Vec<UnitState> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mut name = fields.next()?;
            // Older systemctl marks failed units with a bullet even with --plain.
            if name == "●" || name == "*" {
                name = fields.next()?;
            }
            Some(UnitState {
                name: name.to_owned(),
                load: fields.next()?.to_owned(),
                active: fields.next()?.to_owned(),
                sub: fields.next()?.to_owned(),
            })
        })
        .collect()
}

/// Runs a command; the error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(drop)
}

/// Runs a command and returns its standard output; the error carries its stderr.
pub fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        format!(
            "cannot run {program}: {}",
            crate::report::io_error_words(&e)
        )
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_units() {
        let units = parse_list_units(
            "microvm@web.service loaded active running MicroVM 'web'\n\
             ● microvm@old.service not-found failed failed microvm@old.service\n\
             microvms.target loaded active active microvms.target\n",
        );
        assert_eq!(units.len(), 3);
        assert_eq!(units[1].name, "microvm@old.service");
        assert_eq!(units[1].load, "not-found");
        assert_eq!(units[1].active, "failed");
        assert_eq!(units[2].sub, "active");
    }
}
