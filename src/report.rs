//! How we speak: journald priority prefixes under systemd, plain lines on a terminal, and the
//! words and fixes for the errors a person will meet.

use std::io::Write as _;
use std::os::fd::AsFd;

use rustix::io::Errno;

/// The line prefix: a journald priority when stderr is the journal, words otherwise.
fn prefix(journal: bool, level: log::Level) -> &'static str {
    use log::Level::{Debug, Error, Info, Trace, Warn};
    match (journal, level) {
        (true, Error) => "<3>",
        (true, Warn) => "<4>",
        (true, Info) => "<6>",
        (true, Debug | Trace) => "<7>",
        (false, Error) => "error: ",
        (false, Warn) => "warning: ",
        (false, Info) => "",
        (false, Debug | Trace) => "debug: ",
    }
}

/// One record as one line. A control character that reached the message unescaped (a path
/// some call site printed raw) is escaped here, so that no message can span two lines or start
/// a line with a forged journal priority. Backslashes are left alone: call sites escape the
/// bytes they take from the tree and the manifest (`escape::text`), and escaping them again
/// would double every backslash they wrote.
fn line(journal: bool, level: log::Level, message: &str) -> String {
    let prefix = prefix(journal, level);
    let mut out = String::with_capacity(prefix.len() + message.len() + 1);
    out.push_str(prefix);
    if message.contains(char::is_control) {
        let mut buf = [0; 4];
        for c in message.chars() {
            if c.is_control() {
                out.push_str(&crate::escape::text(c.encode_utf8(&mut buf)));
            } else {
                out.push(c);
            }
        }
    } else {
        out.push_str(message);
    }
    out.push('\n');
    out
}

/// The filter: `RUST_LOG` as `env_logger` reads it (a level, or `module=level` filters), else
/// `PERSIST_PREP_LOG` (error, warn, info, debug, trace, off), else info.
fn filters() -> String {
    if let Some(spec) = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return spec;
    }
    let level = match std::env::var("PERSIST_PREP_LOG").as_deref().map(str::trim) {
        Ok("error") => "error",
        Ok("warn" | "warning") => "warn",
        Ok("debug") => "debug",
        Ok("trace") => "trace",
        Ok("off") => "off",
        _ => "info",
    };
    level.to_owned()
}

/// Sets up logging to stderr, one write per line, so that lines from concurrent units never
/// interleave.
pub fn init_logging() {
    use std::io::Write as _;
    let journal = stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(log::LevelFilter::Info)
        .parse_filters(&filters())
        .target(env_logger::Target::Stderr)
        .format(move |buf, record| {
            let message = match record.args().as_str() {
                Some(text) => line(journal, record.level(), text),
                None => line(journal, record.level(), &record.args().to_string()),
            };
            buf.write_all(message.as_bytes())
        });
    let _ = builder.try_init();
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
#[must_use]
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
#[must_use]
pub fn errno_words(errno: Errno) -> String {
    let text = std::io::Error::from_raw_os_error(errno.raw_os_error()).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_owned();
    format!("{text} ({})", errno_name(errno))
}

/// Like [`errno_words`], for errors that come from std.
#[must_use]
pub fn io_error_words(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(raw) => errno_words(Errno::from_raw_os_error(raw)),
        None => error.to_string(),
    }
}

/// What a person can do about a failed create, chown or chmod.
#[must_use]
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
    #[must_use]
    pub fn since(start: std::time::Instant) -> Self {
        Elapsed(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// For JSON documents.
    #[allow(clippy::cast_precision_loss)]
    #[must_use]
    pub fn millis(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0 / 1000, self.0 % 1000 / 100)
    }
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
    fn a_message_is_one_line_whatever_it_holds() {
        for journal in [true, false] {
            let out = line(
                journal,
                log::Level::Error,
                "cannot open /x\n<0>forged\r\u{1b}[2J",
            );
            assert_eq!(out.matches('\n').count(), 1, "{out:?}");
            assert!(out.ends_with("/x\\n<0>forged\\r\\x1b[2J\n"), "{out:?}");
            assert!(
                out.starts_with(if journal { "<3>" } else { "error: " }),
                "{out:?}"
            );
        }
        // Backslashes escaped by the call site stay as written.
        assert_eq!(line(false, log::Level::Info, "a\\xff"), "a\\xff\n");
        assert_eq!(line(true, log::Level::Warn, "w"), "<4>w\n");
    }

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
