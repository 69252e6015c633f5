//! What the admin sees: a table on stdout, messages on stderr (via `log`), or one JSON document.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::escape;

use super::args::{Args, Command};
use super::execute::{Outcome, Status};
use super::manifest::Declared;
use super::plan::Step;
use super::scan::{Inventory, Problem, Severity};

/// Messages carry names and paths from the tree: shown escaped, like the core shows them.
pub fn log_problem(problem: &Problem) {
    let message = escape::text(&problem.message);
    match problem.severity {
        Severity::Error => log::error!("{message}"),
        Severity::Warning => log::warn!("{message}"),
    }
}

/// Collects the parts of the output; text goes out as it is ready, JSON at the end.
pub struct Report {
    json: bool,
    command: Command,
    root: String,
    dry_run: bool,
    declared: Vec<String>,
    /// The stateDir used (known before the scan, also when the run stops early).
    pub state_dir: String,
    pub extra_problems: Vec<Problem>,
    pub aborted: bool,
    pub notes: Vec<Problem>,
    pub plan: Vec<Step>,
    pub results: Vec<Outcome>,
}

impl Report {
    pub fn new(args: &Args, declared: &Declared) -> Self {
        Report {
            json: args.json,
            command: args.command,
            root: args.root.to_string_lossy().into_owned(),
            dry_run: args.dry_run,
            declared: declared.keys().cloned().collect(),
            state_dir: String::new(),
            extra_problems: Vec::new(),
            aborted: false,
            notes: Vec::new(),
            plan: Vec::new(),
            results: Vec::new(),
        }
    }

    pub fn print_status(&self, inv: &Inventory) {
        if self.json {
            return;
        }
        if inv.items.is_empty() {
            println!(
                "nothing microvm-related found under {}",
                escape::text(&self.root)
            );
            return;
        }
        for item in &inv.items {
            let what = item.path.as_deref().unwrap_or(&item.name);
            let kind = serde_plain(&item.kind);
            let class = serde_plain(&item.class);
            let what = escape::text(what);
            let mut line = format!("{class:<16} {kind:<16} {what}");
            if let Some(vm) = &item.vm {
                let _ = write!(line, "  [vm {}]", escape::text(vm));
            }
            if let Some(detail) = &item.detail {
                let _ = write!(line, "  ({})", escape::text(detail));
            }
            println!("{line}");
        }
    }

    pub fn print_plan(&self, steps: &[Step]) {
        if self.json {
            return;
        }
        let heading = if self.dry_run {
            "plan (dry run, nothing is changed)"
        } else {
            "plan"
        };
        println!("{heading}: {} steps", steps.len());
        for step in steps {
            println!("  {:<24} {}", step.action(), describe(step));
        }
    }

    pub fn print_results(&self) {
        if self.json {
            return;
        }
        for outcome in &self.results {
            let step = &self.plan[outcome.step];
            let status = match outcome.status {
                Status::Done => "done",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            let mut line = format!("{status:<8} {:<24} {}", step.action(), describe(step));
            if let Some(message) = &outcome.message {
                let _ = write!(line, "  ({})", escape::text(message));
            }
            println!("{line}");
        }
    }

    pub fn print_json(&self, inv: &Inventory) {
        let mut doc = json!({
            "command": self.command_name(),
            "root": self.root,
            "live": inv.live,
            "stateDir": self.state_dir,
            "declared": self.declared,
            "vms": inv.vms.values().collect::<Vec<_>>(),
            "items": inv.items,
            "problems": inv.problems,
            "aborted": self.aborted,
            "notes": self.notes,
        });
        if self.command == Command::Prune {
            let count = |status| self.results.iter().filter(|r| r.status == status).count();
            doc["dryRun"] = json!(self.dry_run);
            doc["plan"] = json!(self.plan);
            doc["results"] = json!(self.results);
            doc["summary"] = json!({
                "steps": self.plan.len(),
                "done": count(Status::Done),
                "failed": count(Status::Failed),
                "skipped": count(Status::Skipped),
            });
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }

    fn command_name(&self) -> &'static str {
        match self.command {
            Command::Status => "status",
            Command::Prune => "prune",
        }
    }
}

fn describe(step: &Step) -> String {
    let target = escape::text(step.target());
    match step.vm() {
        Some(vm) if !vm.is_empty() => format!("{target}  [vm {}]", escape::text(vm)),
        _ => target.into_owned(),
    }
}

/// The serde name of a unit-like enum value (`"store-managed"`).
fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => text,
        _ => String::new(),
    }
}
