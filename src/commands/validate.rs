//! `persist-prep validate`: read and validate the manifest, touch nothing.

use serde::Serialize;

use super::Options;
use crate::escape;
use crate::exit::Exit;
use crate::manifest;
use crate::report;

/// The `validate --json` document.
#[derive(Serialize)]
struct Verdict<'a> {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    storages: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<usize>,
    errors: &'a [String],
}

pub fn run(options: &Options) -> Exit {
    match manifest::load(&options.manifest) {
        Ok(manifest) => {
            let entries: usize = manifest.storages.iter().map(|s| s.entries.len()).sum();
            if options.json {
                report::print_serialized(&Verdict {
                    valid: true,
                    storages: Some(manifest.storages.len()),
                    entries: Some(entries),
                    errors: &[],
                });
            }
            log::info!(
                "manifest {} is valid: {} storages, {entries} entries",
                escape::bytes(options.manifest.as_os_str().as_encoded_bytes()),
                manifest.storages.len()
            );
            Exit::Ok
        }
        Err(errors) => {
            report_invalid(options, &errors);
            if options.json {
                report::print_serialized(&Verdict {
                    valid: false,
                    storages: None,
                    entries: None,
                    errors: &errors,
                });
            }
            Exit::InvalidManifest
        }
    }
}

/// Logs every validation error and the verdict.
pub fn report_invalid(options: &Options, errors: &[String]) {
    let path = escape::bytes(options.manifest.as_os_str().as_encoded_bytes());
    for error in errors {
        log::error!("invalid manifest {path}: {error}");
    }
    log::error!(
        "manifest {path} has {} problem(s); nothing was touched",
        errors.len()
    );
}
