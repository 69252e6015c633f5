//! The root every path is resolved from: its handle and how it is shown.
//!
//! Built once per run, so that every message shows `root + storage + path` the same way. (The
//! lock that keeps two runs apart is not on the root, which any user can open, but in the
//! state directory: see `lock`.)

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;

use crate::escape;
use crate::fs;

/// An open root directory and the way it is shown.
pub struct Root {
    fd: OwnedFd,
    /// `/sysroot`, or empty for `/`, escaped for one line.
    shown: String,
}

impl Root {
    /// Opens the root every path is resolved from.
    pub fn open(path: &Path) -> Result<Self, Errno> {
        let fd = fs::open_root(path)?;
        Ok(Root {
            fd,
            shown: shown_of(path),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The root as it prefixes every path in messages: `/sysroot`, or empty for `/`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `root + storage + path` as data (JSON, and problems that output escapes later).
    pub fn path(&self, storage: Option<&str>, path: &str) -> String {
        format!("{}{}{path}", self.shown, storage.unwrap_or(""))
    }

    /// `root + storage + path` for one line of output: every byte from the manifest escaped.
    pub fn display(&self, storage: Option<&str>, path: &str) -> String {
        format!(
            "{}{}{}",
            self.shown,
            escape::text(storage.unwrap_or("")),
            escape::text(path)
        )
    }
}

/// How a root path prefixes the paths under it: `/sysroot/nix/persist`, or `/nix/persist`
/// for `/`.
pub fn shown_of(root: &Path) -> String {
    let text = escape::bytes(root.as_os_str().as_encoded_bytes());
    text.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_root_are_shown_once_escaped() {
        assert_eq!(shown_of(Path::new("/")), "");
        assert_eq!(shown_of(Path::new("/sysroot/")), "/sysroot");
        let root = Root::open(Path::new("/")).unwrap();
        assert_eq!(root.path(Some("/p"), "/a\n"), "/p/a\n");
        assert_eq!(
            root.display(Some("/p"), "/a\n\u{202e}"),
            "/p/a\\n\\xe2\\x80\\xae"
        );
        assert_eq!(root.display(None, "/x"), "/x");
    }
}
