//! persist-prep: create the missing sources of impermanence bind mounts from the initrd, and prune
//! what microvm.nix leaves behind on hosts.
//!
//! `main` only parses arguments and maps outcomes to exit codes; the work lives in the modules.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use persist_prep::Options;
use persist_prep::commands;
use persist_prep::escape;
use persist_prep::exit::Exit;
use persist_prep::report;

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
lock wait: PERSIST_PREP_LOCK_TIMEOUT=SECONDS (default 30) before apply/finish give up
log level: RUST_LOG=error|warn|info|debug|trace or env_logger filters (module=level,...);
           PERSIST_PREP_LOG=error|warn|info|debug when RUST_LOG is unset (default info)";

const DEFAULT_MANIFEST: &str = "/etc/persist-prep/manifest.json";
const DEFAULT_STATE_DIR: &str = "/run/persist-prep";

fn default_root() -> PathBuf {
    if std::path::Path::new("/etc/initrd-release").exists() {
        PathBuf::from("/sysroot")
    } else {
        PathBuf::from("/")
    }
}

/// Prints a usage error. Arguments are bytes the caller chose, so every message shows them
/// escaped: a newline in one must not start a line of its own.
fn usage_error(message: &str) -> Exit {
    let _ = writeln!(std::io::stderr(), "persist-prep: {message}\n{USAGE}");
    Exit::Usage
}

/// `--help`. A closed stdout (`| head`) is not an error worth a panic.
fn print_usage() -> Exit {
    let _ = writeln!(std::io::stdout(), "{USAGE}");
    Exit::Ok
}

/// A lexopt error in words, its bytes escaped.
fn arg_error(e: &lexopt::Error) -> String {
    escape::text(&e.to_string()).into_owned()
}

/// What the command line asks for once parsed.
enum Parsed {
    Run(Options),
    Help,
}

/// Parses the common options; `allowed` names the flags this subcommand accepts. Paths stay
/// `OsString`: on Linux they are bytes, and a path that is not UTF-8 is still a path.
fn parse_options(parser: &mut lexopt::Parser, allowed: &[&str]) -> Result<Parsed, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut options = Options {
        manifest: PathBuf::from(DEFAULT_MANIFEST),
        root: default_root(),
        state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        dry_run: false,
        json: false,
    };
    let mut seen: Vec<String> = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| arg_error(&e))? {
        let flag = match arg {
            Long("help") | Short('h') => return Ok(Parsed::Help),
            Long(name) if allowed.contains(&format!("--{name}").as_str()) => name.to_owned(),
            Long(name) => {
                return Err(format!("unknown argument \"--{}\"", escape::text(name)));
            }
            Short(c) => {
                let c = c.to_string();
                return Err(format!("unknown argument \"-{}\"", escape::text(&c)));
            }
            Value(value) => {
                return Err(format!(
                    "unexpected argument \"{}\"",
                    escape::bytes(value.as_encoded_bytes())
                ));
            }
        };
        // A flag given twice is most likely a unit line duplicated by mistake: say so rather
        // than let one of the two silently win.
        if seen.contains(&flag) {
            return Err(format!("--{flag} is given more than once"));
        }
        seen.push(flag.clone());
        match flag.as_str() {
            "manifest" => options.manifest = path_value(parser, &flag)?,
            "root" => options.root = path_value(parser, &flag)?,
            "state-dir" => options.state_dir = path_value(parser, &flag)?,
            "dry-run" => options.dry_run = true,
            "json" => options.json = true,
            _ => return Err(format!("unknown argument \"--{flag}\"")),
        }
    }
    Ok(Parsed::Run(options))
}

/// The value of a path option, which must not be empty.
fn path_value(parser: &mut lexopt::Parser, flag: &str) -> Result<PathBuf, String> {
    let value = parser
        .value()
        .map_err(|_| format!("--{flag} needs a value"))?;
    if value.is_empty() {
        return Err(format!("--{flag} needs a value"));
    }
    Ok(PathBuf::from(value))
}

/// The command word, or the exit for `--help`, `--version` and a missing command.
fn command(parser: &mut lexopt::Parser) -> Result<std::ffi::OsString, Exit> {
    match parser.next() {
        Ok(Some(lexopt::Arg::Value(command))) => Ok(command),
        Ok(Some(lexopt::Arg::Long("help") | lexopt::Arg::Short('h'))) => Err(print_usage()),
        Ok(Some(lexopt::Arg::Long("version") | lexopt::Arg::Short('V'))) => {
            let _ = writeln!(
                std::io::stdout(),
                "persist-prep {}",
                env!("CARGO_PKG_VERSION")
            );
            Err(Exit::Ok)
        }
        Ok(None) => Err(usage_error("no command given")),
        Ok(Some(arg)) => {
            let shown = arg_error(&arg.unexpected());
            Err(usage_error(&format!("no command given ({shown})")))
        }
        Err(e) => Err(usage_error(&arg_error(&e))),
    }
}

fn run(mut parser: lexopt::Parser) -> Exit {
    let command = match command(&mut parser) {
        Ok(command) => command,
        Err(exit) => return exit,
    };
    let allowed: &[&str] = match command.to_str() {
        Some("apply") => &["--manifest", "--root", "--state-dir", "--dry-run", "--json"],
        Some("check") => &["--manifest", "--root", "--state-dir", "--json"],
        Some("finish") => &["--root", "--state-dir", "--json"],
        Some("validate") => &["--manifest", "--json"],
        Some("microvm") => {
            return match parser.raw_args() {
                Ok(rest) => microvm_main(rest),
                Err(e) => usage_error(&arg_error(&e)),
            };
        }
        Some("help") => {
            return print_usage();
        }
        _ => {
            let shown = escape::bytes(command.as_encoded_bytes());
            return usage_error(&format!("unknown command \"{shown}\""));
        }
    };
    let options = match parse_options(&mut parser, allowed) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            return print_usage();
        }
        Err(message) => return usage_error(&message),
    };
    report::init_logging();
    match command.to_str() {
        Some("apply") => commands::apply::apply(&options),
        Some("check") => commands::apply::check(&options),
        Some("finish") => commands::finish::run(&options),
        _ => commands::validate::run(&options),
    }
}

/// Host mode, when this build has it (the `microvm` cargo feature).
#[cfg(feature = "microvm")]
fn microvm_main(args: impl Iterator<Item = std::ffi::OsString>) -> Exit {
    report::init_logging();
    persist_prep::microvm::main(args)
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
    run(lexopt::Parser::from_env()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;

    const ALL: &[&str] = &["--manifest", "--root", "--state-dir", "--dry-run", "--json"];

    fn parse(args: Vec<OsString>) -> Result<Options, String> {
        let mut parser = lexopt::Parser::from_args(args);
        match parse_options(&mut parser, ALL)? {
            Parsed::Run(options) => Ok(options),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn paths_are_bytes() {
        let root = OsString::from_vec(b"/sys\xffroot".to_vec());
        let o = parse(vec!["--root".into(), root.clone(), "--manifest=/m".into()]).unwrap();
        assert_eq!(o.root.as_os_str(), root);
        assert_eq!(o.manifest, PathBuf::from("/m"));
        let inline = OsString::from_vec(b"--state-dir=\xfe".to_vec());
        let o = parse(vec![inline, "--dry-run".into(), "--json".into()]).unwrap();
        assert_eq!(o.state_dir.as_os_str().as_encoded_bytes(), b"\xfe");
        assert!(o.dry_run && o.json);
    }

    #[test]
    fn refusals() {
        for (args, why) in [
            (vec!["--root"], "--root needs a value"),
            (vec!["--root="], "--root needs a value"),
            (vec!["--json=1"], "--json"),
            (vec!["--nope"], "unknown argument \"--nope\""),
            (vec!["-r"], "unknown argument \"-r\""),
            (vec!["extra"], "unexpected argument \"extra\""),
            (vec!["--help"], "help"),
            (vec!["--json", "-h"], "help"),
        ] {
            let e = parse(args.iter().map(OsString::from).collect())
                .err()
                .unwrap();
            assert!(e.contains(why), "{args:?}: {e}");
        }
        let mut parser = lexopt::Parser::from_args(["--dry-run"]);
        let e = parse_options(&mut parser, &["--json"]).err().unwrap();
        assert!(e.contains("--dry-run"), "{e}");
    }
}
