//! The documented exit codes, shared by every subcommand.

use std::process::ExitCode;

/// Exit statuses. Their numbers are part of the interface (README, units, monitoring).
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything was done, or everything is as declared.
    Ok = 0,
    /// Some entries failed (`apply`), or something is not ok (`check`); the rest was processed.
    Failed = 1,
    /// The command line was wrong; nothing was done.
    Usage = 2,
    /// The manifest could not be read or is invalid; nothing was touched.
    InvalidManifest = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
