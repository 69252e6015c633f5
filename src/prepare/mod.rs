//! The domain of `apply`, `apply --dry-run` and `check` (their command is
//! `commands/apply.rs`).
//!
//! The manifest flows one way: it is validated whole (`manifest`), the planner reads the tree
//! and returns the plan (`plan`, after `volume` has checked each storage's volume), the
//! executor carries it out (`execute`, `apply` only), and the report prints it (`output`).
//! So a dry run prints the very plan that `apply` executes.

pub mod execute;
pub mod output;
pub mod plan;
mod volume;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    Apply,
    DryRun,
    Check,
}

impl Intent {
    /// The command's name in messages and documents.
    pub fn command(self) -> &'static str {
        if self == Intent::Check {
            "check"
        } else {
            "apply"
        }
    }
}
