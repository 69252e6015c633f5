//! persist-prep: create the missing sources of impermanence bind mounts from the initrd, and prune
//! what microvm.nix leaves behind on hosts.
//!
//! `main` only parses arguments and maps outcomes to exit codes; the work lives in the modules.

mod deferred;
mod exit;
mod fs;
mod manifest;
#[cfg(feature = "microvm")]
mod microvm;
mod mode;
mod owner;
mod prepare;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use exit::Exit;

const USAGE: &str = "\
usage: persist-prep apply    [--manifest PATH] [--root DIR] [--state-dir DIR] [--dry-run] [--json]
       persist-prep check    [--manifest PATH] [--root DIR] [--state-dir DIR] [--json]
       persist-prep finish   [--root DIR] [--state-dir DIR] [--json]
       persist-prep validate [--manifest PATH] [--json]
       persist-prep microvm  status|prune ...   (see `persist-prep microvm --help`)

  apply     create the missing persistent directories and their mount points
  check     read-only: report the state of every storage and entry
  finish    give deferred entries their owners once the names resolve
  validate  only read and validate the manifest

defaults: --manifest /etc/persist-prep/manifest.json
          --root /sysroot when /etc/initrd-release exists, else /
          --state-dir /run/persist-prep
exit codes: 0 ok, 1 some entries failed or are not ok, 2 usage error, 3 invalid manifest
log level: PERSIST_PREP_LOG=error|warn|info|debug (default info)";

const DEFAULT_MANIFEST: &str = "/etc/persist-prep/manifest.json";
const DEFAULT_STATE_DIR: &str = "/run/persist-prep";

/// What a subcommand was asked to do, after argument parsing.
pub struct Options {
    pub manifest: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub dry_run: bool,
    pub json: bool,
}

fn default_root() -> PathBuf {
    if std::path::Path::new("/etc/initrd-release").exists() {
        PathBuf::from("/sysroot")
    } else {
        PathBuf::from("/")
    }
}

fn usage_error(message: &str) -> Exit {
    eprintln!("persist-prep: {message}\n{USAGE}");
    Exit::Usage
}

/// Parses the common options; `allowed` names the flags this subcommand accepts.
fn parse_options(args: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut options = Options {
        manifest: PathBuf::from(DEFAULT_MANIFEST),
        root: default_root(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        dry_run: false,
        json: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        if !allowed.contains(&flag) {
            return Err(format!("unknown argument {arg:?}"));
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--manifest" => options.manifest = PathBuf::from(value()?),
            "--root" => options.root = PathBuf::from(value()?),
            "--state-dir" => options.state_dir = PathBuf::from(value()?),
            "--dry-run" | "--json" if inline.is_some() => {
                return Err(format!("{flag} takes no value"));
            }
            "--dry-run" => options.dry_run = true,
            "--json" => options.json = true,
            _ => unreachable!("flag {flag} is allowed but not handled"),
        }
    }
    Ok(options)
}

fn run(args: &[String]) -> Exit {
    let Some((command, rest)) = args.split_first() else {
        return usage_error("no command given");
    };
    let allowed: &[&str] = match command.as_str() {
        "apply" => &["--manifest", "--root", "--state-dir", "--dry-run", "--json"],
        "check" => &["--manifest", "--root", "--state-dir", "--json"],
        "finish" => &["--root", "--state-dir", "--json"],
        "validate" => &["--manifest", "--json"],
        "microvm" => return microvm_main(rest.iter().map(std::ffi::OsString::from)),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Exit::Ok;
        }
        "-V" | "--version" => {
            println!("persist-prep {}", env!("CARGO_PKG_VERSION"));
            return Exit::Ok;
        }
        other => return usage_error(&format!("unknown command {other:?}")),
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Exit::Ok;
    }
    let options = match parse_options(rest, allowed) {
        Ok(options) => options,
        Err(message) => return usage_error(&message),
    };
    report::init_logging();
    match command.as_str() {
        "apply" => prepare::apply(&options),
        "check" => prepare::check(&options),
        "finish" => deferred::finish(&options),
        _ => manifest::validate_command(&options),
    }
}

/// Host mode, when this build has it (the `microvm` cargo feature).
#[cfg(feature = "microvm")]
fn microvm_main(args: impl Iterator<Item = std::ffi::OsString>) -> Exit {
    report::init_logging();
    microvm::main(args)
}

/// The initrd build leaves host mode out; say so instead of calling it an unknown command.
#[cfg(not(feature = "microvm"))]
fn microvm_main(_args: impl Iterator<Item = std::ffi::OsString>) -> Exit {
    eprintln!(
        "persist-prep: this build has no microvm host mode (it was built without the `microvm` \
         feature, as the initrd binary is); run the host's persist-prep, built with default \
         features, for `persist-prep microvm`"
    );
    Exit::Usage
}

fn main() -> ExitCode {
    // Host mode reads its arguments as OsStrings, so that a non-UTF-8 path cannot panic here.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "microvm")
    {
        return microvm_main(std::env::args_os().skip(2)).into();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args).into()
}
