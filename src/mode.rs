//! Directory modes as impermanence accepts them: octal (`"0750"`) or symbolic (`"u=rwx,g=rx,o="`).
//!
//! impermanence passes the mode to `mkdir --mode`, so the symbolic form means what GNU `mkdir`
//! makes of it: the clauses are applied in order to `a=rwx` (0777), for a directory. Where a clause
//! names no `who` (`+x`, `=rwx`), the umask limits it; we use 0022, the umask NixOS activation
//! runs with, so that the result does not depend on the umask of the initrd.

use std::fmt;

/// The umask assumed for symbolic clauses without a `who`.
const ASSUMED_UMASK: u32 = 0o022;
const ALL_BITS: u32 = 0o7777;
const SUID: u32 = 0o4000;
const SGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXEC: u32 = 0o111;

/// Why a mode string was rejected; shown to the user with the entry it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeError(String);

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a mode string into permission bits (at most `0o7777`).
pub fn parse(text: &str) -> Result<u32, ModeError> {
    if text.is_empty() {
        return Err(ModeError("the mode is empty".into()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_octal(text);
    }
    parse_symbolic(text)
}

fn parse_octal(text: &str) -> Result<u32, ModeError> {
    if text.len() > 4 && text.trim_start_matches('0').len() > 4 {
        return Err(ModeError(format!(
            "octal mode {text:?} has more than four digits"
        )));
    }
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= ALL_BITS)
        .ok_or_else(|| {
            ModeError(format!(
                "{text:?} is not an octal mode (digits 0-7, at most 7777)"
            ))
        })
}

/// Bits a `who` letter governs: its rwx bits plus its special bit.
fn who_bits(c: u8) -> Option<u32> {
    match c {
        b'u' => Some(SUID | 0o700),
        b'g' => Some(SGID | 0o070),
        b'o' => Some(STICKY | 0o007),
        b'a' => Some(ALL_BITS),
        _ => None,
    }
}

fn parse_symbolic(text: &str) -> Result<u32, ModeError> {
    let bad = |why: &str| ModeError(format!("{text:?} is not a valid mode: {why}"));
    let mut mode = 0o777;
    // The bits the clauses speak of; mkdir(1) only chmods after mkdir(2) when they differ.
    let mut mentioned_bits = 0;
    for clause in text.split(',') {
        let bytes = clause.as_bytes();
        let mut i = 0;
        let mut affected = 0;
        while i < bytes.len() {
            match who_bits(bytes[i]) {
                Some(bits) => affected |= bits,
                None => break,
            }
            i += 1;
        }
        if i == bytes.len() {
            return Err(bad(&format!(
                "clause {clause:?} has no operator (one of + - =)"
            )));
        }
        while i < bytes.len() {
            let op = bytes[i];
            if !matches!(op, b'+' | b'-' | b'=') {
                return Err(bad(&format!(
                    "unexpected {:?} in clause {clause:?}",
                    char::from(op)
                )));
            }
            i += 1;
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b'+' | b'-' | b'=') {
                i += 1;
            }
            let value = permission_value(&bytes[start..i], mode, affected).ok_or_else(|| {
                bad(&format!(
                    "{:?} in clause {clause:?} is not a permission (rwxXst, or one of u g o alone)",
                    String::from_utf8_lossy(&bytes[start..i])
                ))
            })?;
            let (new_mode, bits) = apply_op(mode, op, value, affected);
            mode = new_mode;
            mentioned_bits |= bits;
        }
    }
    Ok(as_gnu_mkdir_leaves_it(mode, mentioned_bits))
}

/// GNU `mkdir --mode` runs mkdir(2) under umask 0 with the computed mode, minus group and other
/// write while set-id or sticky bits are involved; mkdir(2) drops set-id bits. It then chmods
/// only if a bit the clauses mention came out wrong. So `+t` leaves 1755 but `+s` gives 6777.
fn as_gnu_mkdir_leaves_it(mode: u32, mentioned_bits: u32) -> u32 {
    let special = (mentioned_bits & (SUID | SGID)) | (mode & STICKY) != 0;
    let mkdir_mode = if special { mode & !0o022 } else { mode };
    let created = mkdir_mode & (STICKY | 0o777);
    if (created ^ mode) & mentioned_bits != 0 {
        mode | (created & ALL_BITS & !mentioned_bits)
    } else {
        created
    }
}

/// The bits a permission list stands for, before the `who` mask is applied.
fn permission_value(perms: &[u8], current: u32, affected: u32) -> Option<u32> {
    // A single u, g or o copies that class's current bits to the affected classes.
    if let [class @ (b'u' | b'g' | b'o')] = perms {
        let shift = match class {
            b'u' => 6,
            b'g' => 3,
            _ => 0,
        };
        let rwx = (current >> shift) & 0o7;
        return Some((rwx * 0o111) & if affected == 0 { 0o777 } else { affected });
    }
    let mut value = 0;
    for p in perms {
        value |= match p {
            b'r' => READ,
            b'w' => WRITE,
            // For a directory, X always means x.
            b'x' | b'X' => EXEC,
            b's' => SUID | SGID,
            b't' => STICKY,
            _ => return None,
        };
    }
    Some(value)
}

/// Applies one operator the way GNU's `mode_adjust` does for a directory; also returns the
/// bits the operator sets or clears.
fn apply_op(mode: u32, op: u8, value: u32, affected: u32) -> (u32, u32) {
    // For directories, set-id bits not named by the clause are left as they are.
    let mentioned = if affected == 0 {
        value
    } else {
        affected & value
    };
    let omit = (SUID | SGID) & !mentioned;
    let limit = if affected == 0 {
        !ASSUMED_UMASK
    } else {
        affected
    };
    let value = value & limit & !omit & ALL_BITS;
    match op {
        b'=' => {
            let preserved = (if affected == 0 { 0 } else { !affected } | omit) & ALL_BITS;
            ((mode & preserved) | value, ALL_BITS & !preserved)
        }
        b'+' => (mode | value, value),
        _ => (mode & !value, value),
    }
}

/// Formats a mode the way messages and `stat -c %a` show it, with four digits.
pub fn display(mode: u32) -> String {
    format!("{mode:04o}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_forms() {
        assert_eq!(parse("0750"), Ok(0o750));
        assert_eq!(parse("750"), Ok(0o750));
        assert_eq!(parse("2755"), Ok(0o2755));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("00700"), Ok(0o700));
        assert!(parse("0800").is_err());
        assert!(parse("17777").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn symbolic_forms() {
        assert_eq!(parse("u=rwx,g=rx,o="), Ok(0o750));
        assert_eq!(parse("u=rwx,go="), Ok(0o700));
        assert_eq!(parse("a=rx"), Ok(0o555));
        assert_eq!(parse("go-w"), Ok(0o755));
        assert_eq!(parse("o-rwx"), Ok(0o770));
        assert_eq!(parse("g+s"), Ok(0o2777));
        assert_eq!(parse("+t"), Ok(0o1755));
        assert_eq!(parse("=rwx"), Ok(0o755));
        assert_eq!(parse("u=rwx,g=u,o="), Ok(0o770));
        assert_eq!(parse("u=rw,g=r-r"), Ok(0o607));
    }

    #[test]
    fn symbolic_errors() {
        for bad in ["u", "rwx", "u=rwq", "z=rwx", "u=rwx,", "u=rwx;g=rx", "u=ug"] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    /// The reference is GNU `mkdir --mode` itself, under the umask we assume.
    #[test]
    fn matches_gnu_mkdir() {
        let cases = [
            "u=rwx,g=rx,o=",
            "u=rwx,g=,o=",
            "a=rwx",
            "go-rwx",
            "u+s",
            "g+s,o-w",
            "+t",
            "=rx",
            "+w",
            "-x",
            "a=r,u+w",
            "u=rwx,g=u-w,o=g",
            "o=u",
            "u=rwX,g=rX,o=",
            "ug=rwx,o=rx,+t",
            "0750",
            "2770",
            "1777",
            "755",
            "+s",
            "a+st",
            "=rwxt",
            "o+t",
            "a=rwx,+t",
            "=rwxs",
            "+s,o-r",
            "a+rwx",
        ];
        let dir = std::env::temp_dir().join(format!("persist-prep-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, case) in cases.iter().enumerate() {
            let path = dir.join(i.to_string());
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg("umask 022 && mkdir --mode=\"$1\" \"$2\"")
                .arg("sh")
                .arg(case)
                .arg(&path)
                .status()
                .expect("run mkdir");
            assert!(status.success(), "mkdir --mode={case} failed");
            let actual = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions(),
            ) & ALL_BITS;
            assert_eq!(
                parse(case),
                Ok(actual),
                "mode {case:?}: ours {:o}, mkdir {actual:o}",
                parse(case).unwrap_or(0)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Clauses of the chmod grammar, the way people write them.
        fn clause() -> impl Strategy<Value = String> {
            let who = prop::sample::select(vec!["", "u", "g", "o", "a", "ug", "go", "uo", "ugo"]);
            let op = prop::sample::select(vec!["=", "+", "-"]);
            let perms = prop::sample::select(vec![
                "", "r", "w", "x", "X", "s", "t", "rw", "rx", "rwx", "rwX", "rwxs", "rwxt", "xs",
                "u", "g", "o",
            ]);
            (who, prop::collection::vec((op, perms), 1..3)).prop_map(|(who, actions)| {
                let mut c = who.to_owned();
                for (op, perms) in actions {
                    c.push_str(op);
                    c.push_str(perms);
                }
                c
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Whatever a manifest says, parsing a mode never panics and stays within 07777.
            #[test]
            fn never_panics(text in "\\PC{0,24}") {
                if let Ok(mode) = parse(&text) {
                    prop_assert!(mode <= ALL_BITS);
                }
            }

            #[test]
            fn octal_round_trips(mode in 0u32..=0o7777) {
                prop_assert_eq!(parse(&format!("{mode:o}")), Ok(mode));
                prop_assert_eq!(parse(&display(mode)), Ok(mode));
            }
        }

        proptest! {
            // Each case runs GNU mkdir, so fewer of them.
            #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

            /// Generated symbolic modes give exactly what `mkdir --mode` gives under umask 022.
            #[test]
            fn symbolic_matches_gnu_mkdir(clauses in prop::collection::vec(clause(), 1..4)) {
                let text = clauses.join(",");
                let dir = std::env::temp_dir().join(format!("persist-prep-prop-{}", std::process::id()));
                let _ = std::fs::remove_dir(&dir);
                let status = std::process::Command::new("sh")
                    .arg("-c")
                    .arg("umask 022 && mkdir --mode=\"$1\" \"$2\" 2>/dev/null")
                    .arg("sh")
                    .arg(&text)
                    .arg(&dir)
                    .status()
                    .expect("run mkdir");
                if status.success() {
                    let actual = std::os::unix::fs::PermissionsExt::mode(
                        &std::fs::metadata(&dir).unwrap().permissions(),
                    ) & ALL_BITS;
                    std::fs::remove_dir(&dir).unwrap();
                    prop_assert_eq!(parse(&text), Ok(actual), "mode {:?}", text);
                } else {
                    prop_assert!(parse(&text).is_err(), "mkdir rejects {:?} but we accept it", text);
                }
            }
        }
    }
}
