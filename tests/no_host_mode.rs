//! The initrd build (`--no-default-features`) has no host mode and says so.
//!
//! Only compiled without the `microvm` feature: `tests/run` runs
//! `cargo test --no-default-features --test no_host_mode`, which builds that binary.
#![cfg(not(feature = "microvm"))]

mod common;

use std::process::Command;

#[test]
fn microvm_says_this_build_has_no_host_mode() {
    for args in [
        &["microvm"][..],
        &["microvm", "status", "--declared", ""][..],
    ] {
        let run = common::Run::from(Command::new(common::BIN).args(args).output().unwrap());
        run.assert_code(2);
        assert!(
            run.stderr.contains("this build has no microvm host mode"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    // The rest of the binary is all there.
    let help = common::Run::from(Command::new(common::BIN).arg("--help").output().unwrap());
    help.assert_code(0);
}
