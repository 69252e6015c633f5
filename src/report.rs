//! How we speak: journald priority prefixes under systemd, plain lines on a terminal, and the
//! words and fixes for the errors a person will meet.

use std::io::Write as _;
use std::os::fd::AsFd;

use rustix::io::Errno;

/// Writes `log` records to stderr: with `<3>`/`<4>`/`<6>` prefixes when stderr is the journal,
/// with `error: `/`warning: ` prefixes otherwise. Small enough not to need a logging crate.
struct Logger {
    journal: bool,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        let prefix = if self.journal {
            match level {
                log::Level::Error => "<3>",
                log::Level::Warn => "<4>",
                log::Level::Info => "<6>",
                log::Level::Debug | log::Level::Trace => "<7>",
            }
        } else {
            match level {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                log::Level::Info => "",
                log::Level::Debug | log::Level::Trace => "debug: ",
            }
        };
        // One write per line, so that lines from concurrent units never interleave.
        let line = format!("{prefix}{}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Sets up logging; the level comes from `PERSIST_PREP_LOG` (error, warn, info, debug).
pub fn init_logging() {
    let level = match std::env::var("PERSIST_PREP_LOG").as_deref().map(str::trim) {
        Ok("error") => log::LevelFilter::Error,
        Ok("warn" | "warning") => log::LevelFilter::Warn,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    let logger = Logger {
        journal: stderr_is_journal(),
        level,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

/// systemd sets `JOURNAL_STREAM=dev:ino` for the stream it connected; only trust it when stderr is
/// that very stream, so that a shell started from a unit does not inherit the prefixes.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr().as_fd())
        .is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// The errno's symbolic name, for people who search for it.
pub fn errno_name(errno: Errno) -> String {
    let name = match errno {
        Errno::ACCESS => "EACCES",
        Errno::PERM => "EPERM",
        Errno::NOENT => "ENOENT",
        Errno::NOTDIR => "ENOTDIR",
        Errno::ISDIR => "EISDIR",
        Errno::EXIST => "EEXIST",
        Errno::LOOP => "ELOOP",
        Errno::ROFS => "EROFS",
        Errno::NOSPC => "ENOSPC",
        Errno::DQUOT => "EDQUOT",
        Errno::IO => "EIO",
        Errno::NAMETOOLONG => "ENAMETOOLONG",
        Errno::XDEV => "EXDEV",
        Errno::INVAL => "EINVAL",
        Errno::NOSYS => "ENOSYS",
        Errno::MLINK => "EMLINK",
        Errno::NOMEM => "ENOMEM",
        Errno::UCLEAN => "EUCLEAN",
        Errno::STALE => "ESTALE",
        Errno::BUSY => "EBUSY",
        _ => return format!("errno {}", errno.raw_os_error()),
    };
    name.to_owned()
}

/// The errno in words, e.g. `Read-only file system (EROFS)`.
pub fn errno_words(errno: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    format!("{text} ({})", errno_name(errno))
}

/// Like [`errno_words`], for errors that come from std.
pub fn io_error_words(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(raw) => errno_words(Errno::from_raw_os_error(raw)),
        None => error.to_string(),
    }
}

/// What a person can do about a failed create, chown or chmod.
pub fn errno_fix(errno: Errno) -> &'static str {
    match errno {
        Errno::ROFS => {
            "the file system is mounted read-only; mount it read-write before persist-prep runs (check the fileSystems options and the mount unit)"
        }
        Errno::NOSPC | Errno::DQUOT => {
            "the file system is full or over quota; free space on it or grow it, then run `persist-prep apply` again"
        }
        Errno::ACCESS | Errno::PERM => {
            "persist-prep must run as root with CAP_CHOWN, CAP_FOWNER and CAP_DAC_OVERRIDE; check the unit's capability settings and immutable attributes (lsattr)"
        }
        Errno::IO | Errno::UCLEAN => {
            "the device reported an error; check the kernel log (dmesg) and run fsck on the volume"
        }
        Errno::NAMETOOLONG => "shorten the path in the configuration",
        Errno::MLINK => "the directory has too many subdirectories for this file system",
        _ => "check the path and the file system it is on, then run `persist-prep apply` again",
    }
}

/// Time taken, shown as milliseconds with one decimal. Integer maths keeps float formatting
/// code out of the binary.
#[derive(Clone, Copy)]
pub struct Elapsed(u64);

impl Elapsed {
    pub fn since(start: std::time::Instant) -> Self {
        Elapsed(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// For JSON documents.
    #[allow(clippy::cast_precision_loss)]
    pub fn millis(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0 / 1000, self.0 % 1000 / 100)
    }
}

/// Writes a JSON document to stdout on one line.
pub fn print_json(value: &serde_json::Value) {
    print_serialized(value);
}

/// Writes any serialisable document to stdout on one line.
pub fn print_serialized(value: &impl serde::Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, value);
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(errno_words(Errno::ROFS), "Read-only file system (EROFS)");
        assert_eq!(
            errno_words(Errno::NOSPC),
            "No space left on device (ENOSPC)"
        );
        assert!(errno_fix(Errno::ROFS).contains("read-write"));
    }
}
