//! How we speak: journald priority prefixes under systemd, plain lines on a terminal, and the
//! words and fixes for the errors a person will meet.

use std::io::Write as _;
use std::os::fd::AsFd;

use rustix::io::Errno;

/// Sets up `log` output on stderr: `<3>`/`<4>`/`<6>` prefixes when stderr is the journal,
/// `error: `/`warning: ` prefixes otherwise. The level comes from `PERSIST_PREP_LOG`.
pub fn init_logging() {
    let journal = stderr_is_journal();
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Info);
    if let Ok(spec) = std::env::var("PERSIST_PREP_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(move |out, record| {
        let level = record.level();
        if journal {
            let priority = match level {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(out, "<{priority}>{}", record.args())
        } else {
            let prefix = match level {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                log::Level::Info => "",
                log::Level::Debug | log::Level::Trace => "debug: ",
            };
            writeln!(out, "{prefix}{}", record.args())
        }
    });
    builder.target(env_logger::Target::Stderr);
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

/// Monotonic milliseconds since `start`, for the summary.
pub fn elapsed_ms(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Writes a JSON document to stdout on one line.
pub fn print_json(value: &serde_json::Value) {
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
