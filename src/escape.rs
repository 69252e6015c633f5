//! Showing bytes that come from the tree or the manifest.
//!
//! A user who owns a persistent directory chooses the names and symlink targets in it, and the
//! manifest's strings come from configuration. Printed raw, a newline in one of them would start a
//! line of its own, for example a forged `<0>` journal line. So every such byte is shown escaped,
//! the way systemd and coreutils show file names: `\n`, `\t`, `\\`, and `\xNN` for any other
//! control byte and for bytes that are not UTF-8. JSON output carries the exact text instead.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Escapes text from the manifest or the tree for one line of output; free when nothing needs it.
#[must_use]
pub fn text(text: &str) -> Cow<'_, str> {
    if text.chars().all(|c| !needs_escape(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// Escapes raw bytes (a symlink target, a name read from a directory), invalid UTF-8 included.
#[must_use]
pub fn bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_bidi_control(c)
}

/// Bidirectional overrides and isolates: not control characters, but they make a line display
/// in another order than it reads, which can disguise a path.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\\' => out.push_str("\\\\"),
        c if c.is_control() || is_bidi_control(c) => {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(text("/var/lib/ü x"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(
            text("a\n<0>persist-prep: b\t\\\u{1b}[31m\u{85}"),
            "a\\n<0>persist-prep: b\\t\\\\\\x1b[31m\\xc2\\x85"
        );
    }

    #[test]
    fn bidirectional_overrides_are_escaped() {
        assert_eq!(text("/a\u{202e}b"), "/a\\xe2\\x80\\xaeb");
    }

    #[test]
    fn invalid_utf8_is_shown_as_hex() {
        assert_eq!(bytes(b"/x\xff\n\xc3"), "/x\\xff\\n\\xc3");
        assert_eq!(bytes("é".as_bytes()), "é");
    }

    proptest::proptest! {
        /// Whatever the bytes, the result is one line of printable text.
        #[test]
        fn never_a_control_character(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let shown = bytes(&data);
            proptest::prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
            let lossy = String::from_utf8_lossy(&data);
            proptest::prop_assert!(!text(&lossy).chars().any(char::is_control));
        }
    }
}
