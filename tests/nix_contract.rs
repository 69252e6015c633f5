//! The Nix side writes the manifest and the binary reads it: these tests hold that seam.
//!
//! Always run (need only `nix-instantiate`, Debian's `nix-bin`):
//! - every tracked `.nix` file parses;
//! - the builtins-only generator (`nix/lib/manifest.nix`), fed each case's impermanence-evaluated
//!   configuration (`tests/nix/cases/*/evaluated.json`), gives exactly `expected.json`, and the
//!   built binary's `validate` accepts the result; a bad one is refused with exit code 3.
//!
//! Inside real NixOS (need the nixos-kit, `PERSIST_PREP_NIXOS_KIT` or `../shared/nixos-kit`; skipped
//! without it, a failure under `PERSIST_PREP_REQUIRE_ALL=1`): each case's `config.nix` is evaluated
//! with nix/module.nix inside the kit's real NixOS modules with `_module.check = true`
//! (`tests/nix/kit.nix`), and must reproduce `evaluated.json`, the expected manifest and problems,
//! pass NixOS's assertions, render units that agree with `initrd/*.service` and load without
//! ordering cycles in the boot and switch-root transactions.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_all() -> bool {
    std::env::var("PERSIST_PREP_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// `nix-instantiate` can always be installed here, so its absence fails under `PERSIST_PREP_REQUIRE_ALL=1`.
fn have_nix() -> bool {
    let found = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        nix_ready();
    } else {
        assert!(
            !require_all(),
            "nix-instantiate is missing and PERSIST_PREP_REQUIRE_ALL=1 (apt-get install nix-bin)"
        );
        eprintln!(
            "SKIP: nix-instantiate not found (apt-get install nix-bin); Nix contract not tested"
        );
    }
    found
}

/// Runs `tests/nix/ready` once, alone, before any test evaluates: on a fresh machine the first
/// evaluations race to create Nix's state (tests/setup does it too, for CI).
fn nix_ready() {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        let out = Command::new(repo().join("tests/nix/ready"))
            .output()
            .expect("run tests/nix/ready");
        assert!(
            out.status.success(),
            "tests/nix/ready failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A fresh machine: Nix's state directory absent. `tests/nix/ready` creates it, after which
/// evaluations in parallel (as the tests run them) all succeed.
#[test]
fn nix_ready_prepares_a_fresh_machine() {
    if !have_nix() {
        return;
    }
    let fresh = std::env::temp_dir().join(format!("persist-prep-fresh-nix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(&fresh).unwrap();
    let state = fresh.join("var/nix");
    let with_state = |cmd: &mut Command| {
        cmd.env("NIX_STATE_DIR", &state)
            .env("NIX_LOG_DIR", fresh.join("var/log/nix"));
    };
    let mut ready = Command::new(repo().join("tests/nix/ready"));
    with_state(&mut ready);
    let out = ready.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        state.join("db").is_dir(),
        "no Nix database after tests/nix/ready"
    );
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut cmd = Command::new("nix-instantiate");
            cmd.args(["--readonly-mode", "--eval", "-E", &format!("{i} + 1")]);
            with_state(&mut cmd);
            cmd.stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&fresh).unwrap();
}

/// The nixos-kit (`PERSIST_PREP_NIXOS_KIT`, else `../shared/nixos-kit` next to the repository):
/// the real NixOS, impermanence, preservation, Home Manager and microvm.nix sources the module is
/// evaluated in. Absent, the evaluation tests skip; under `PERSIST_PREP_REQUIRE_ALL=1` they fail.
fn kit() -> Option<String> {
    let dir = std::env::var_os("PERSIST_PREP_NIXOS_KIT")
        .map_or_else(|| repo().join("../shared/nixos-kit"), PathBuf::from);
    if dir.join("nixpkgs/lib/default.nix").is_file()
        && dir
            .join("nixpkgs/nixos/modules/system/boot/systemd/initrd.nix")
            .is_file()
    {
        let dir = dir.canonicalize().expect("canonical kit path");
        return Some(dir.to_str().expect("UTF-8 kit path").to_owned());
    }
    common::skip(&format!(
        "the nixos-kit is not at {} (set PERSIST_PREP_NIXOS_KIT); module evaluation not tested",
        dir.display()
    ));
    None
}

/// The kit, when both Nix and the kit are here; else the test skips (see [`have_nix`], [`kit`]).
fn nix_and_kit() -> Option<String> {
    if !have_nix() {
        return None;
    }
    kit()
}

/// The `system` case, which most module tests evaluate with extra configuration.
fn system_case() -> PathBuf {
    repo().join("tests/nix/cases/system")
}

/// Evaluates `select` in a case's configuration with no extra configuration.
fn eval_case_as_is(kit: &str, dir: &Path, select: &str) -> Result<Value, String> {
    eval_case(kit, dir, &serde_json::json!({}), select)
}

/// Evaluates `expr` (a function of the `--argstr` names) strictly to JSON.
fn eval(expr: &str, args: &[(&str, &str)]) -> Result<Value, String> {
    let mut cmd = Command::new("nix-instantiate");
    cmd.args([
        "--readonly-mode",
        "--eval",
        "--strict",
        "--json",
        "-E",
        expr,
    ]);
    for (name, value) in args {
        cmd.args(["--argstr", name, value]);
    }
    let out = cmd.output().expect("run nix-instantiate");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("nix-instantiate printed JSON"))
}

fn eval_ok(expr: &str, args: &[(&str, &str)]) -> Value {
    eval(expr, args).unwrap_or_else(|e| panic!("evaluation failed:\n{e}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case_dirs(group: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/nix").join(group))
        .expect("read case directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("config.nix").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases under tests/nix/{group}");
    dirs
}

fn name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

const GENERATE: &str = r#"{ repo, dir }:
  let g = (import (/. + repo + "/nix/lib/manifest.nix")).generate
            (builtins.fromJSON (builtins.readFile (/. + dir + "/evaluated.json")));
  in { inherit (g) manifest problems storagePaths mountUnitPaths; }"#;

fn generate(dir: &Path) -> Value {
    let repo = repo();
    eval_ok(
        GENERATE,
        &[
            ("repo", repo.to_str().unwrap()),
            ("dir", dir.to_str().unwrap()),
        ],
    )
}

/// Runs `persist-prep validate` on `manifest` and returns its exit code and stderr.
fn validate(manifest: &Value, label: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("persist-prep-nix-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("manifest.json");
    std::fs::write(&file, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_persist-prep"))
        .args(["validate", "--manifest"])
        .arg(&file)
        .env("PERSIST_PREP_LOG", "info")
        .output()
        .expect("run persist-prep");
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository's `.nix` files: tracked and new ones from git, or a walk of the tree when the
/// source is not a git checkout (a release tarball).
fn tracked_nix_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.nix",
        ])
        .current_dir(repo())
        .output();
    match out {
        Ok(out) if out.status.success() => out
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| repo().join(String::from_utf8_lossy(s).as_ref()))
            .filter(|p| p.is_file())
            .collect(),
        _ => {
            let mut found = Vec::new();
            walk_nix(&repo(), &mut found);
            found.sort();
            found
        }
    }
}

fn walk_nix(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if name == ".git" || name == "target" || name == ".cache" || name == ".work" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            walk_nix(&path, found);
        } else if path.extension().is_some_and(|e| e == "nix") {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    if !have_nix() {
        return;
    }
    let files = tracked_nix_files();
    for required in [
        "nix/lib/manifest.nix",
        "nix/module.nix",
        "nix/package.nix",
        "flake.nix",
    ] {
        assert!(
            files.contains(&repo().join(required)),
            "{required} is not tracked; found {files:?}"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let out = Command::new("nix-instantiate")
            .args(["--readonly-mode", "--parse"])
            .arg(file)
            .output()
            .expect("run nix-instantiate --parse");
        if !out.status.success() {
            failures.push(format!(
                "{}:\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "unparsable .nix files:\n{}",
        failures.join("\n")
    );
}

#[test]
fn parse_check_can_fail() {
    if !have_nix() {
        return;
    }
    let out = Command::new("nix-instantiate")
        .args(["--readonly-mode", "--parse", "-E", "{ a = ; }"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nix-instantiate --parse accepted broken Nix"
    );
}

/// `nixpkgs-fmt` (crates.io) is installed by `tests/setup`, so its absence fails under
/// `PERSIST_PREP_REQUIRE_ALL=1`.
fn have_nixpkgs_fmt() -> bool {
    // `nixpkgs-fmt --version` prints its version but exits 1, so judge by what it prints.
    let found = Command::new("nixpkgs-fmt")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("nixpkgs-fmt"));
    if !found {
        assert!(
            !require_all(),
            "nixpkgs-fmt is missing and PERSIST_PREP_REQUIRE_ALL=1 (cargo install --locked nixpkgs-fmt)"
        );
        eprintln!(
            "SKIP: nixpkgs-fmt not found (cargo install --locked nixpkgs-fmt); Nix formatting not checked"
        );
    }
    found
}

#[test]
fn every_nix_file_is_formatted() {
    if !have_nixpkgs_fmt() {
        return;
    }
    let files = tracked_nix_files();
    assert!(files.len() >= 4, "too few .nix files found: {files:?}");
    let out = Command::new("nixpkgs-fmt")
        .arg("--check")
        .args(&files)
        .output()
        .expect("run nixpkgs-fmt --check");
    assert!(
        out.status.success(),
        "unformatted .nix files (run nixpkgs-fmt on them):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn format_check_can_fail() {
    if !have_nixpkgs_fmt() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("persist-prep-nixfmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ugly.nix");
    std::fs::write(&file, "{a=1;\n      b =   2;}\n").unwrap();
    let out = Command::new("nixpkgs-fmt")
        .arg("--check")
        .arg(&file)
        .output()
        .expect("run nixpkgs-fmt --check");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        !out.status.success(),
        "nixpkgs-fmt --check accepted unformatted Nix"
    );
}

#[test]
fn generator_gives_expected_manifests() {
    if !have_nix() {
        return;
    }
    for dir in case_dirs("cases") {
        let got = generate(&dir);
        let expected = read_json(&dir.join("expected.json"));
        assert_eq!(
            got["manifest"],
            expected["manifest"],
            "{}: generated manifest differs from expected.json",
            name(&dir)
        );
        assert_eq!(
            got["problems"],
            expected["problems"],
            "{}: problems differ",
            name(&dir)
        );
    }
}

#[test]
fn binary_accepts_generated_manifests() {
    if !have_nix() {
        return;
    }
    let mut checked = 0;
    for dir in case_dirs("cases") {
        let got = generate(&dir);
        // A case with problems is refused at build time by the module; its manifest is never used.
        if got["problems"].as_array().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let (code, stderr) = validate(&got["manifest"], &name(&dir));
        assert_eq!(
            code,
            0,
            "{}: persist-prep validate refused the generated manifest:\n{stderr}",
            name(&dir)
        );
        checked += 1;
    }
    assert!(checked >= 3, "too few valid cases: {checked}");
}

#[test]
fn binary_rejects_bad_generated_manifest() {
    if !have_nix() {
        return;
    }
    for dir in case_dirs("invalid") {
        let got = generate(&dir);
        let (code, stderr) = validate(&got["manifest"], &name(&dir));
        assert_eq!(
            code,
            3,
            "{}: persist-prep validate should refuse this manifest with 3:\n{stderr}",
            name(&dir)
        );
    }
}

#[test]
fn generator_orders_mounts_and_requires_storages() {
    if !have_nix() {
        return;
    }
    // The bind-mount targets persist-prep orders itself before, and the mounts it requires.
    let got = generate(&repo().join("tests/nix/cases/multi"));
    assert_eq!(
        got["storagePaths"],
        serde_json::json!(["/persist", "/scratch", "/scratch/fast/cache"])
    );
    let units = got["mountUnitPaths"].as_array().unwrap();
    assert!(units.contains(&Value::from("/var/lib/postgresql")));
    assert!(units.contains(&Value::from("/etc/nix")));
    // A hand-written bind mount of a storage (or of an ancestor of one) must come first, not after.
    let generated = eval_ok(
        r#"{ repo }: ((import (/. + repo + "/nix/lib/manifest.nix")).generate {
              fileSystems."/persist" = { neededForBoot = true; };
              extraStorages = [ { path = "/persist/state"; directories = [ "/persist" "/var/lib/x" ]; } ];
            }).mountUnitPaths"#,
        &[("repo", repo().to_str().unwrap())],
    );
    assert_eq!(generated, serde_json::json!(["/var/lib/x"]));
}

#[test]
fn generator_refuses_entries_overlapping_a_storage() {
    if !have_nix() {
        return;
    }
    // The binary refuses these manifests (exit 3); the build must refuse them first.
    let problems = eval_ok(
        r#"{ repo }: ((import (/. + repo + "/nix/lib/manifest.nix")).generate {
              fileSystems."/persist" = { neededForBoot = true; };
              extraStorages = [ { path = "/persist/state"; directories = [ "/persist" "/persist/state/x" "/var/lib/ok" ]; } ];
            }).problems"#,
        &[("repo", repo().to_str().unwrap())],
    );
    let problems: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("persist-prep: /persist (")
            && problems[0].contains("overlaps the storage /persist/state")
    );
    assert!(problems[1].starts_with("persist-prep: /persist/state/x ("));
}

#[test]
fn evaluated_fixtures_match_impermanence() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    for dir in case_dirs("cases").into_iter().chain(case_dirs("invalid")) {
        let got = eval_ok(
            r#"{ kit, dir }: (import (/. + dir + "/../../case.nix") { kit = /. + kit; dir = /. + dir; }).generatorArgs"#,
            &[("kit", &kit), ("dir", dir.to_str().unwrap())],
        );
        assert_eq!(
            got,
            read_json(&dir.join("evaluated.json")),
            "{}: evaluated.json is stale (tests/nix/regenerate)",
            name(&dir)
        );
    }
}

const CASE: &str = r#"{ kit, dir, extra }:
  import (/. + dir + "/../../case.nix") { kit = /. + kit; dir = /. + dir; extra = builtins.fromJSON extra; }"#;

/// Evaluates `select` with the attributes of `tests/nix/case.nix`'s result in scope; `extra` is
/// more configuration, as JSON.
fn eval_case(kit: &str, dir: &Path, extra: &Value, select: &str) -> Result<Value, String> {
    let extra = extra.to_string();
    eval(
        &format!("{{ kit, dir, extra }}@args: with (({CASE}) args); {select}"),
        &[
            ("kit", kit),
            ("dir", dir.to_str().unwrap()),
            ("extra", &extra),
        ],
    )
}

#[test]
fn module_writes_expected_manifest_and_assertions() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    for dir in case_dirs("cases") {
        let got = eval_case_as_is(&kit, &dir, "{ inherit manifest problems assertions; }")
            .unwrap_or_else(|e| panic!("{}: {e}", name(&dir)));
        // A case is a configuration NixOS accepts: only persist-prep's own assertions may fail.
        let others: Vec<&Value> = got["assertions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| !m.as_str().unwrap().starts_with("persist-prep:"))
            .collect();
        assert!(
            others.is_empty(),
            "{}: NixOS rejects the case: {others:?}",
            name(&dir)
        );
        let expected = read_json(&dir.join("expected.json"));
        assert_eq!(
            got["manifest"],
            expected["manifest"],
            "{}: module manifest",
            name(&dir)
        );
        assert_eq!(
            got["problems"],
            expected["problems"],
            "{}: module assertions",
            name(&dir)
        );
    }
}

#[test]
fn module_units_mirror_the_initrd_unit() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let got = eval_case_as_is(
        &kit,
        &dir,
        "{ inherit initrdServices services contents extraBin assertions; }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let unit = &got["initrdServices"]["persist-prep"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(unit["unitConfig"]["DefaultDependencies"], false);
    assert_eq!(
        unit["unitConfig"]["ConditionPathExists"],
        "/etc/initrd-release"
    );
    assert_eq!(strings(&unit["after"]), ["sysroot.mount"]);
    assert_eq!(
        strings(&unit["unitConfig"]["RequiresMountsFor"]),
        ["/sysroot", "/sysroot/persist"]
    );
    let before = strings(&unit["before"]);
    for needed in [
        "initrd-fs.target",
        "systemd-tmpfiles-setup-sysroot.service",
        "initrd-nixos-activation.service",
        // The two initrd bind mounts impermanence generates for this configuration.
        "sysroot-var-log.mount",
        "sysroot-var-lib-nixos.mount",
    ] {
        assert!(
            before.contains(&needed.to_owned()),
            "Before= lacks {needed}: {before:?}"
        );
    }
    assert_eq!(unit["serviceConfig"]["Type"], "oneshot");
    assert_eq!(unit["serviceConfig"]["RemainAfterExit"], true);
    assert!(
        unit["unitConfig"].get("OnFailure").is_none(),
        "default failure policy must not stop the boot"
    );
    assert_eq!(
        got["contents"]["/etc/persist-prep/manifest.json"]["source"]
            .as_str()
            .map(|s| s.ends_with("-persist-prep-manifest.json")),
        Some(true)
    );
    // The initrd gets the feature-less build, the host's units the full one.
    assert!(
        got["extraBin"]["persist-prep"]
            .as_str()
            .unwrap()
            .ends_with("-persist-prep-initrd-0.1.0/bin/persist-prep"),
        "{}",
        got["extraBin"]
    );

    // Finish joins the switch-root transaction right after NixOS's activation (>= 24.11 runs it
    // there), never the boot transaction, which would run it before the users exist.
    let finish = &got["initrdServices"]["persist-prep-finish"];
    let after = strings(&finish["after"]);
    assert!(after.contains(&"initrd-nixos-activation.service".to_owned()));
    assert!(after.contains(&"initrd-switch-root.target".to_owned()));
    assert_eq!(strings(&finish["before"]), ["initrd-switch-root.service"]);
    assert_eq!(strings(&finish["wantedBy"]), ["initrd-switch-root.service"]);
    let late = &got["services"]["persist-prep-finish-late"];
    assert!(
        late["serviceConfig"]["ExecStart"]
            .as_str()
            .unwrap()
            .contains("-persist-prep-0.1.0/bin/persist-prep finish"),
        "{}",
        late["serviceConfig"]
    );
    assert!(strings(&late["after"]).contains(&"systemd-sysusers.service".to_owned()));
    assert!(strings(&late["after"]).contains(&"userborn.service".to_owned()));
    assert!(strings(&late["before"]).contains(&"sysinit.target".to_owned()));
    assert_eq!(got["assertions"], serde_json::json!([]));
}

#[test]
fn module_failure_action_and_systemd_initrd_assertion() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let stop = eval_case(
        &kit,
        &dir,
        &serde_json::json!({ "boot": { "initrd": { "persist-prep": { "failureAction": "emergency" } } } }),
        "initrdServices.persist-prep.unitConfig",
    )
    .unwrap();
    assert_eq!(stop["OnFailure"], "emergency.target");
    assert_eq!(stop["OnFailureJobMode"], "replace-irreversibly");
    // OnFailure alone does not stop the boot (the boot tests showed switch-root goes on):
    // initrd-cleanup must require persist-prep, as initrd/stop-boot/ does for dracut.
    let cleanup = eval_case(
        &kit,
        &dir,
        &serde_json::json!({ "boot": { "initrd": { "persist-prep": { "failureAction": "emergency" } } } }),
        "initrdServices.initrd-cleanup",
    )
    .unwrap();
    assert_eq!(
        cleanup["requires"],
        serde_json::json!(["persist-prep.service"])
    );
    assert_eq!(
        cleanup["after"],
        serde_json::json!(["persist-prep.service"])
    );
    let default = eval_case_as_is(&kit, &dir, "initrdServices").unwrap();
    assert!(
        default.get("initrd-cleanup").is_none(),
        "continue must leave initrd-cleanup alone"
    );

    let scripted = eval_case(
        &kit,
        &dir,
        &serde_json::json!({ "boot": { "initrd": { "systemd": { "enable": false } } } }),
        "assertions",
    )
    .unwrap();
    let messages = scripted.to_string();
    assert!(
        messages.contains("boot.initrd.systemd.enable = true"),
        "no assertion for the scripted initrd: {messages}"
    );
}

#[test]
fn module_microvm_prune_service() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let extra = serde_json::json!({
        "services": { "persist-prep": { "microvm-prune": { "enable": true, "extraArgs": ["--stop"] } } },
        "microvm": { "vms": { "web": {}, "db": {} }, "autostart": ["web", "ci"], "stateDir": "/srv/microvms" },
    });
    let got = eval_case(&kit, &dir, &extra, "{ inherit services etc assertions; }").unwrap();
    let unit = &got["services"]["persist-prep-microvm-prune"];
    let exec = unit["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert!(
        exec.contains("/bin/persist-prep microvm prune --manifest /nix/store/"),
        "{exec}"
    );
    assert!(exec.ends_with("--stop"), "{exec}");
    assert_eq!(unit["wantedBy"], serde_json::json!(["multi-user.target"]));
    assert!(!unit["restartTriggers"].as_array().unwrap().is_empty());
    assert_eq!(got["assertions"], serde_json::json!([]));
    // The host manifest the service reads: declared VMs, which autostart, and the whole
    // `microvm.autostart` list, which may name VMs that `microvm.vms` does not (`ci`, installed
    // with `microvm -c`): the pruner must keep those too.
    let manifest = eval_case(&kit, &dir, &extra, "hostManifest");
    assert_eq!(
        manifest.unwrap(),
        serde_json::json!({ "version": 1, "stateDir": "/srv/microvms", "vms": [
            { "name": "db", "autostart": false }, { "name": "web", "autostart": true } ],
            "autostart": ["web", "ci"] })
    );
    // microvm.nix's default state directory when the configuration leaves it alone.
    let extra = serde_json::json!({
        "services": { "persist-prep": { "microvm-prune": { "enable": true } } },
        "microvm": { "vms": { "web": {} } },
    });
    let manifest = eval_case(&kit, &dir, &extra, "hostManifest").unwrap();
    assert_eq!(manifest["stateDir"], "/var/lib/microvms");
}

/// nix/package.nix with a stand-in `buildRustPackage` that returns its arguments, and flake.nix's
/// outputs with stand-in inputs: their shape, without building (no nixpkgs here).
const PACKAGE_AND_FLAKE: &str = r#"{ repo, lib, imp }:
  let
    l = import (/. + lib + "/lib");
    pkgs = {
      lib = l;
      pkgsStatic.callPackage = f: args:
        import f ({ lib = l; rustPlatform.buildRustPackage = a: a // a.passthru or { } // { type = "derivation"; }; } // args);
      testers.runNixOSTest = t: t;
    };
    drv = pkgs.pkgsStatic.callPackage (/. + repo + "/nix/package.nix") { vmTests.a-test = { }; };
    flake = import (/. + repo + "/flake.nix");
    outputs = flake.outputs {
      self = outputs;
      nixpkgs = { lib = l; legacyPackages = l.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs); };
      impermanence = imp;
    };
  in {
    package = {
      inherit (drv) pname version doCheck cargoTestFlags buildNoDefaultFeatures;
      initrd = { inherit (drv.initrd) pname doCheck buildNoDefaultFeatures; };
      tests = builtins.attrNames drv.tests;
      lockFile = toString drv.cargoLock.lockFile;
      meta = { inherit (drv.meta) description mainProgram platforms; license = drv.meta.license.spdxId; };
    };
    flake = {
      inputs = builtins.attrNames flake.inputs;
      packages = builtins.attrNames outputs.packages.x86_64-linux;
      defaultPname = outputs.packages.x86_64-linux.default.pname;
      initrdPname = outputs.packages.x86_64-linux.persist-prep-initrd.pname;
      packageTests = builtins.attrNames outputs.packages.x86_64-linux.default.tests;
      module = builtins.isFunction outputs.nixosModules.default;
      checks = builtins.attrNames outputs.checks.x86_64-linux;
      testNames = map (n: outputs.checks.x86_64-linux.${n}.name)
        [ "persist-prep-first-boot" "persist-prep-missing-mount" ];
    };
  }"#;

#[test]
fn package_and_flake_outputs() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let (lib, imp) = (format!("{kit}/nixpkgs"), format!("{kit}/impermanence"));
    let repo = repo();
    let got = eval_ok(
        PACKAGE_AND_FLAKE,
        &[
            ("repo", repo.to_str().unwrap()),
            ("lib", &lib),
            ("imp", &imp),
        ],
    );
    let package = &got["package"];
    assert_eq!(package["pname"], "persist-prep");
    // The unit tests need no root: the full build runs them, the initrd build only builds.
    assert_eq!(package["doCheck"], true);
    assert_eq!(
        package["cargoTestFlags"],
        serde_json::json!(["--lib", "--bins"])
    );
    assert_eq!(package["buildNoDefaultFeatures"], false);
    assert_eq!(
        package["initrd"],
        serde_json::json!({ "pname": "persist-prep-initrd", "doCheck": false, "buildNoDefaultFeatures": true })
    );
    assert_eq!(package["tests"], serde_json::json!(["a-test"]));
    assert_eq!(package["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(package["meta"]["license"], "MIT");
    assert_eq!(package["meta"]["mainProgram"], "persist-prep");
    assert_eq!(
        package["meta"]["description"],
        env!("CARGO_PKG_DESCRIPTION")
    );
    let platforms = package["meta"]["platforms"].as_array().unwrap();
    assert!(platforms.contains(&Value::from("x86_64-linux")));
    assert!(
        platforms
            .iter()
            .all(|p| p.as_str().unwrap().ends_with("-linux"))
    );
    assert_eq!(
        package["lockFile"],
        repo.join("Cargo.lock").to_str().unwrap()
    );

    let flake = &got["flake"];
    assert_eq!(
        flake["inputs"],
        serde_json::json!(["impermanence", "nixpkgs"])
    );
    assert_eq!(
        flake["packages"],
        serde_json::json!(["default", "persist-prep", "persist-prep-initrd"])
    );
    assert_eq!(flake["defaultPname"], "persist-prep");
    assert_eq!(flake["initrdPname"], "persist-prep-initrd");
    assert_eq!(
        flake["packageTests"],
        serde_json::json!(["persist-prep-first-boot", "persist-prep-missing-mount"])
    );
    assert_eq!(flake["module"], true);
    assert_eq!(
        flake["checks"],
        serde_json::json!([
            "package",
            "persist-prep-first-boot",
            "persist-prep-missing-mount"
        ])
    );
    assert_eq!(
        flake["testNames"],
        serde_json::json!(["persist-prep-first-boot", "persist-prep-missing-mount"])
    );
}

/// The VM tests' machines, evaluated through the same stand-ins: they must pass every assertion
/// and yield the manifest the test scripts rely on.
const VM_NODE: &str = r#"{ repo, kit, test }:
  let
    t = import (/. + repo + "/nix/tests/${test}.nix") { module = /. + repo + "/nix/module.nix"; impermanence = kit + "/impermanence"; };
    # What the test framework adds to every machine: qemu-vm.nix's root on tmpfs without a disk
    # image, and test-instrumentation.nix's empty root password.
    framework = { lib, ... }: {
      virtualisation.fileSystems."/" = { device = "tmpfs"; fsType = "tmpfs"; neededForBoot = true; };
      users.users.root.initialHashedPassword = lib.mkOverride 150 "";
    };
    e = import (/. + repo + "/tests/nix/kit.nix") { kit = /. + kit; config = { imports = [ t.nodes.machine framework ]; }; };
    c = e.config;
  in {
    inherit (c.boot.initrd.persist-prep) manifest;
    assertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
    before = c.boot.initrd.systemd.services.persist-prep.before;
  }"#;

#[test]
fn vm_test_machines_evaluate() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let repo = repo();
    for test in ["first-boot", "missing-mount"] {
        let got = eval_ok(
            VM_NODE,
            &[
                ("repo", repo.to_str().unwrap()),
                ("kit", &kit),
                ("test", test),
            ],
        );
        assert_eq!(got["assertions"], serde_json::json!([]), "{test}");
        let storages = got["manifest"]["storages"].as_array().unwrap();
        assert_eq!(storages.len(), 1, "{test}");
        assert_eq!(storages[0]["path"], "/persist");
        assert_eq!(storages[0]["mountPoint"], "/persist");
        let dirs = storages[0]["directories"].as_array().unwrap();
        let find = |path: &str| {
            dirs.iter()
                .find(|d| d["path"] == path)
                .unwrap_or_else(|| panic!("{test}: no {path}"))
        };
        // No static id: the binary must defer it in the initrd (what first-boot.nix checks).
        assert!(find("/var/lib/svc").get("uid").is_none());
        assert_eq!(find("/var/lib/svc")["mode"], "u=rwx,g=rx,o=");
        assert_eq!(find("/home/alice")["uid"], 1000);
        assert_eq!(find("/home/alice/.ssh")["mode"], "0700");
        assert!(
            got["before"]
                .as_array()
                .unwrap()
                .contains(&Value::from("sysroot-var-log.mount")),
            "{test}"
        );
    }
}

/// The generated manifest, applied by the binary to an empty root with the storage's file system
/// mounted, must give what impermanence's own activation gives: homes user-owned 0700 under a
/// root-owned /home, user entries' missing parents user-owned 0755, both on the volume and as mount
/// points; an owner without a static id deferred and finished once it appears in /etc/passwd.
#[test]
fn generated_manifest_applies_like_impermanence() {
    if !have_nix() || !common::require_root() {
        return;
    }
    let got = generate(&repo().join("tests/nix/cases/users"));
    // The binary promises the same result whatever the entries' order; the generator's order
    // (homes first) must not be what makes it right.
    let mut reversed = got["manifest"].clone();
    for list in ["directories", "files"] {
        reversed["storages"][0][list]
            .as_array_mut()
            .unwrap()
            .reverse();
    }
    for (label, manifest) in [("generated", &got["manifest"]), ("reversed", &reversed)] {
        check_users_tree(label, manifest);
    }
}

fn check_users_tree(label: &str, manifest: &Value) {
    let scratch = common::Scratch::new(&format!("nix-users-{label}"));
    scratch.manifest(&manifest.to_string());
    std::fs::create_dir_all(scratch.root().join("nix")).unwrap();
    let run = scratch.in_namespace(
        r#"mount -t tmpfs none "$ROOT/nix"
        "$BIN" apply --root "$ROOT" --state-dir "$STATE" --manifest "$MANIFEST" >/dev/null 2>&1 || echo "APPLY-EXIT=$?"
        test -e "$STATE/deferred.json" && echo DEFERRED
        mkdir -p "$ROOT/etc"
        echo 'bob:x:1001:100::/srv/home/bob:/bin/sh' >"$ROOT/etc/passwd"
        echo 'users:x:100:' >"$ROOT/etc/group"
        "$BIN" finish --root "$ROOT" --state-dir "$STATE" >/dev/null 2>&1 || echo "FINISH-EXIT=$?"
        test -e "$STATE/deferred.json" && echo STILL-DEFERRED
        cd "$ROOT"
        for p in home home/alice home/alice/.ssh home/alice/Documents home/alice/Documents/projects \
                 "home/alice/VirtualBox VMs" home/alice/.config home/alice/.config/app \
                 srv srv/home srv/home/bob srv/home/bob/.gnupg var/lib/nixos; do
            echo "$p|$(stat -c '%u:%g %a' "nix/persist/$p")|$(stat -c '%u:%g %a' "$p")"
        done"#,
    );
    let want = "\
DEFERRED
home|0:0 755|0:0 755
home/alice|1000:100 700|1000:100 700
home/alice/.ssh|1000:100 700|1000:100 700
home/alice/Documents|1000:100 755|1000:100 755
home/alice/Documents/projects|1000:100 755|1000:100 755
home/alice/VirtualBox VMs|1000:100 755|1000:100 755
home/alice/.config|1000:100 755|1000:100 755
home/alice/.config/app|1000:100 755|1000:100 755
srv|0:0 755|0:0 755
srv/home|0:0 755|0:0 755
srv/home/bob|1001:100 700|1001:100 700
srv/home/bob/.gnupg|1001:100 700|1001:100 700
var/lib/nixos|0:0 755|0:0 755
";
    assert_eq!(
        run.stdout, want,
        "{label} manifest; stderr:\n{}",
        run.stderr
    );
}

/// Numeric ids are `types.ints.u32`: a negative or too large id fails evaluation instead of
/// reaching the binary.
#[test]
fn module_ids_are_u32() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    for uid in [-1_i64, 4_294_967_296] {
        let extra = serde_json::json!({ "boot": { "initrd": { "persist-prep": { "storages": {
            "/persist": { "directories": [ { "path": "/var/lib/x", "uid": uid } ] } } } } } });
        let err = eval_case(&kit, &dir, &extra, "manifest").expect_err("uid accepted");
        assert!(err.contains("32 bit unsigned integer"), "uid {uid}: {err}");
    }
    let extra = serde_json::json!({ "boot": { "initrd": { "persist-prep": { "storages": {
        "/persist": { "directories": [ { "path": "/var/lib/x", "uid": 4_294_967_295_u32 } ] } } } } } });
    let manifest = eval_case(&kit, &dir, &extra, "manifest").unwrap();
    assert!(manifest.to_string().contains("4294967295"));
}

/// preservation's own initrd mounts (`inInitrd`, a directory and a file) come after persist-prep,
/// as impermanence's do; a disabled preservation contributes nothing.
#[test]
fn module_orders_before_preservation_mounts() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = repo().join("tests/nix/cases/preservation");
    let before = eval_case_as_is(&kit, &dir, "initrdServices.persist-prep.before").unwrap();
    let before: Vec<&str> = before
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for unit in [
        "sysroot-var-lib-nixos.mount",
        "sysroot-etc-machine\\x2did.mount",
        "systemd-tmpfiles-setup-sysroot.service",
    ] {
        assert!(before.contains(&unit), "Before= lacks {unit}: {before:?}");
    }
    let off = eval_case(
        &kit,
        &dir,
        &serde_json::json!({ "preservation": { "enable": false } }),
        "{ inherit manifest warnings; }",
    )
    .unwrap();
    assert_eq!(off["manifest"]["storages"], serde_json::json!([]));
    let off = eval_case(
        &kit,
        &dir,
        &serde_json::json!({ "boot": { "initrd": { "persist-prep": { "fromPreservation": false } } } }),
        "manifest",
    )
    .unwrap();
    assert_eq!(off["storages"], serde_json::json!([]));
}

/// A masked tmpfiles mode (`~0755`) depends on what exists; the build refuses it, naming the
/// entry. A create-only one (`:0700`) is what persist-prep does anyway.
#[test]
fn generator_refuses_masked_preservation_modes() {
    if !have_nix() {
        return;
    }
    let got = eval_ok(
        r#"{ repo }: (import (/. + repo + "/nix/lib/manifest.nix")).generate {
              fileSystems."/persist" = { neededForBoot = true; };
              preservation."/persist".directories = [
                { directory = "/var/lib/a"; mode = "~0755"; }
                { directory = "/var/lib/b"; mode = ":0700"; }
              ];
            }"#,
        &[("repo", repo().to_str().unwrap())],
    );
    let problems = got["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.contains("preservation.preserveAt.\"/persist\".directories (/var/lib/a)")
            && problem.contains("\"~0755\""),
        "{problem}"
    );
    let dirs = &got["manifest"]["storages"][0]["directories"];
    assert_eq!(dirs[1]["path"], "/var/lib/b");
    assert_eq!(dirs[1]["mode"], "0700");
}

/// The preservation manifest applied to an empty root: declared owners and modes on both sides,
/// a `configureParent` parent with its own mode, and for `how = "symlink"` entries only the
/// parents of the source, never the source itself nor anything at the link's place.
#[test]
fn preservation_manifest_applies_as_declared() {
    if !have_nix() || !common::require_root() {
        return;
    }
    let got = generate(&repo().join("tests/nix/cases/preservation"));
    let scratch = common::Scratch::new("nix-preservation");
    scratch.manifest(&got["manifest"].to_string());
    std::fs::create_dir_all(scratch.root().join("persist")).unwrap();
    let run = scratch.in_namespace(
        r#"mount -t tmpfs none "$ROOT/persist"
        "$BIN" apply --root "$ROOT" --state-dir "$STATE" --manifest "$MANIFEST" >/dev/null 2>&1 || echo "APPLY-EXIT=$?"
        cd "$ROOT"
        for p in var/lib/private etc/NetworkManager etc/NetworkManager/system-connections \
                 var/lib/secrets home/alice home/alice/.ssh home/alice/.local/share var/cache; do
            echo "$p|$(stat -c '%u:%g %a' "persist/$p")|$(stat -c '%u:%g %a' "$p")"
        done
        for p in var/cache/big etc/wpa_supplicant.conf home/alice/.local/share/Steam home/alice/.bashrc \
                 var/lib/secrets/token etc/machine-id; do
            test -e "persist/$p" && echo "SOURCE-MADE $p"
            test -e "$p" && echo "TARGET-MADE $p"
        done
        true"#,
    );
    let want = "\
var/lib/private|0:0 700|0:0 700
etc/NetworkManager|0:0 750|0:0 750
etc/NetworkManager/system-connections|0:0 700|0:0 700
var/lib/secrets|0:0 700|0:0 700
home/alice|1000:100 700|1000:100 700
home/alice/.ssh|1000:100 700|1000:100 700
home/alice/.local/share|1000:100 755|1000:100 755
var/cache|0:0 755|0:0 755
";
    assert_eq!(run.stdout, want, "stderr:\n{}", run.stderr);
}

/// The Home Manager manifest applied to an empty root gives what impermanence's activation gives
/// for `home.persistence`: homes user-owned 0700 under root-owned parents, entries and their
/// missing parents owned by the user and their group, a file's `parentDirectory` with its mode,
/// on the volume and as mount points; a storage of its own for a second user.
#[test]
fn home_manager_manifest_applies_like_impermanence() {
    if !have_nix() || !common::require_root() {
        return;
    }
    let got = generate(&repo().join("tests/nix/cases/home-manager"));
    let scratch = common::Scratch::new("nix-home-manager");
    scratch.manifest(&got["manifest"].to_string());
    std::fs::create_dir_all(scratch.root().join("persist")).unwrap();
    let run = scratch.in_namespace(
        r#"mount -t tmpfs none "$ROOT/persist"
        "$BIN" apply --root "$ROOT" --state-dir "$STATE" --manifest "$MANIFEST" >/dev/null 2>&1 || echo "APPLY-EXIT=$?"
        test -e "$STATE/deferred.json" && echo DEFERRED
        cd "$ROOT"
        for p in home home/alice home/alice/.ssh home/alice/.local home/alice/.local/share/keyrings \
                 home/alice/.config home/alice/.config/gh; do
            echo "$p|$(stat -c '%u:%g %a' "persist/$p")|$(stat -c '%u:%g %a' "$p")"
        done
        for p in srv srv/carol srv/carol/.gnupg; do
            echo "$p|$(stat -c '%U:%g %a' "persist/carol/$p")|$(stat -c '%U:%g %a' "$p")"
        done
        test -e home/alice/.cache && echo DISABLED-STORAGE-USED
        true"#,
    );
    // carol has no static uid: deferred, root-owned meanwhile, with the group's static gid.
    let want = "\
DEFERRED
home|0:0 755|0:0 755
home/alice|1000:100 700|1000:100 700
home/alice/.ssh|1000:100 700|1000:100 700
home/alice/.local|1000:100 755|1000:100 755
home/alice/.local/share/keyrings|1000:100 755|1000:100 755
home/alice/.config|1000:100 755|1000:100 755
home/alice/.config/gh|1000:100 700|1000:100 700
srv|root:0 755|root:0 755
srv/carol|root:50 700|root:50 700
srv/carol/.gnupg|root:50 700|root:50 700
";
    assert_eq!(run.stdout, want, "stderr:\n{}", run.stderr);
}

/// The ids rule: a number goes into the manifest only where the configuration fixes it
/// (`users.users.<n>.uid`, `users.groups.<n>.gid`, the entry's own ids). A system user without
/// `uid` gets a dynamic id at activation, whatever `ids.uids` holds for the name (git is 41
/// there), so it must stay a name for the binary to resolve or defer.
#[test]
fn module_bakes_only_ids_the_configuration_fixes() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let extra = serde_json::json!({
        "users": { "users": { "git": { "isSystemUser": true, "group": "git" } }, "groups": { "git": {} } },
        "environment": { "persistence": { "/persist": { "directories": [
            { "directory": "/var/lib/git", "user": "git", "group": "git", "mode": "0750" },
            { "directory": "/var/lib/gitea", "user": "gitea", "group": "gitea" } ] } } },
    });
    let manifest = eval_case(&kit, &dir, &extra, "manifest").unwrap();
    let dirs = manifest["storages"][0]["directories"].as_array().unwrap();
    let find = |path: &str| {
        dirs.iter()
            .find(|d| d["path"] == path)
            .unwrap_or_else(|| panic!("no {path}"))
    };
    for path in ["/var/lib/git", "/var/lib/gitea", "/srv/www/static"] {
        let d = find(path);
        assert!(
            d.get("uid").is_none() && d.get("gid").is_none(),
            "{path}: an id NixOS does not fix was baked in: {d}"
        );
    }
    // Fixed by the configuration: users.users.colord.uid, users.groups.colord.gid, and the
    // journal's group, whose gid journald.nix sets.
    assert_eq!(find("/var/lib/colord")["uid"], 997);
    assert_eq!(find("/var/lib/colord")["gid"], 996);
    assert_eq!(find("/var/log")["gid"], 62);
}

/// A unit file's directives, section by section merged: key -> values. List-valued keys are split
/// into words; booleans are spelled one way.
fn directives(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    const LISTS: &[&str] = &[
        "After",
        "Before",
        "Wants",
        "Requires",
        "WantedBy",
        "RequiredBy",
        "Conflicts",
        "RequiresMountsFor",
    ];
    let mut map = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        let values = map.entry(key.to_owned()).or_default();
        if LISTS.contains(&key) {
            values.extend(value.split_whitespace().map(str::to_owned));
        } else {
            values.push(
                match value {
                    "true" => "yes",
                    "false" => "no",
                    v => v,
                }
                .to_owned(),
            );
        }
    }
    map
}

/// What a unit must say the same way for dracut and NixOS: everything but the machine's own
/// parts (the storages' `RequiresMountsFor=` and the bind mounts' `Before=`, which dracut gets from a
/// drop-in), the environment (log level, PATH) and where the binary and manifest live.
fn ordering(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut map = directives(text);
    map.remove("Environment");
    if let Some(before) = map.get_mut("Before") {
        before.retain(|u| Path::new(u).extension().is_none_or(|e| e != "mount"));
    }
    if let Some(mounts) = map.get_mut("RequiresMountsFor") {
        mounts.retain(|p| p == "/sysroot");
    }
    if let Some(exec) = map.get_mut("ExecStart") {
        for e in exec.iter_mut() {
            let (bin, args) = e.split_once(' ').unwrap_or((e.as_str(), ""));
            let bin = bin.rsplit('/').next().unwrap();
            *e = format!(
                "{bin} {}",
                args.replace(" --manifest /etc/persist-prep/manifest.json", "")
            );
        }
    }
    map
}

/// One source for the units: initrd/*.service (what dracut installs) and the texts the kit's
/// systemd-lib.nix renders from nix/module.nix (what NixOS users run) order and run the same way:
/// persist-prep, finish, the stage-2 finish, and the stop-the-boot drop-ins.
#[test]
fn rendered_units_agree_with_dracut_units() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let emergency = serde_json::json!({ "boot": { "initrd": { "persist-prep": { "failureAction": "emergency" } } } });
    let got = eval_case(&kit, &dir, &emergency, "{ inherit initrdUnits units; }").unwrap();
    let file = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap();
    let rendered = |set: &str, name: &str| {
        got[set][name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} not rendered"))
            .to_owned()
    };
    // The emergency drop-in is part of the rendered persist-prep.service.
    let mut dracut_prep = file("initrd/persist-prep.service");
    dracut_prep.push_str(&file(
        "initrd/stop-boot/persist-prep.service.d/50-stop-boot.conf",
    ));
    for (label, dracut, nixos) in [
        (
            "persist-prep.service",
            dracut_prep,
            rendered("initrdUnits", "persist-prep.service"),
        ),
        (
            "persist-prep-finish.service",
            file("initrd/persist-prep-finish.service"),
            rendered("initrdUnits", "persist-prep-finish.service"),
        ),
        (
            "persist-prep-finish-late.service",
            file("initrd/persist-prep-finish-late.service"),
            rendered("units", "persist-prep-finish-late.service"),
        ),
        (
            "initrd-cleanup.service drop-in",
            file("initrd/stop-boot/initrd-cleanup.service.d/50-persist-prep-stop-boot.conf"),
            rendered("initrdUnits", "initrd-cleanup.service"),
        ),
    ] {
        assert_eq!(
            ordering(&dracut),
            ordering(&nixos),
            "{label}: initrd/ and the NixOS module disagree"
        );
    }
}

const UPSTREAM_UNITS: &str = "/usr/lib/systemd/system";

/// Lays out a rendered initrd unit set the way NixOS's generateUnits does: a drop-in where
/// systemd ships the unit, else a file, plus the .wants/.requires links of wantedBy/requiredBy.
fn lay_out_units(set: &Value, dir: &Path) {
    for (name, unit) in set.as_object().unwrap() {
        let text = unit["text"].as_str().unwrap();
        if Path::new(UPSTREAM_UNITS).join(name).exists()
            && unit["overrideStrategy"] == "asDropinIfExists"
        {
            std::fs::create_dir_all(dir.join(format!("{name}.d"))).unwrap();
            std::fs::write(dir.join(format!("{name}.d/overrides.conf")), text).unwrap();
        } else {
            std::fs::write(dir.join(name), text).unwrap();
        }
        for (kind, attr) in [
            ("wants", "wantedBy"),
            ("requires", "requiredBy"),
            ("upholds", "upheldBy"),
        ] {
            for target in unit[attr].as_array().unwrap() {
                let links = dir.join(format!("{}.{kind}", target.as_str().unwrap()));
                std::fs::create_dir_all(&links).unwrap();
                std::os::unix::fs::symlink(format!("../{name}"), links.join(name)).unwrap();
            }
        }
    }
}

/// `systemd-analyze verify` of `units` (one transaction each, in turn; the earlier ones' jobs stay
/// pending) over the laid-out set and systemd's own units; returns what it says about ordering
/// cycles and deleted jobs (it exits 0 even then).
fn ordering_problems(dir: &Path, units: &[&str]) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .env(
            "SYSTEMD_UNIT_PATH",
            format!("{}:{UPSTREAM_UNITS}:", dir.display()),
        )
        .env("SYSTEMD_LOG_LEVEL", "info")
        .current_dir(dir)
        .output()
        .expect("run systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("cycle") || l.contains("deleted")
        })
        .map(str::to_owned)
        .collect()
}

/// The three transactions an initrd runs: boot (initrd.target), switch-root
/// (initrd-switch-root.target) and both pending at once (the boot transaction's jobs still
/// installed when the switch-root one comes: deterministic, unlike one target wanting both, where
/// systemd resolves the conflicting jobs in a random order before it looks for cycles).
fn verify_transactions(set: &Value, label: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "persist-prep-verify-{}-{label}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    lay_out_units(set, &dir);
    let mut problems = Vec::new();
    for units in [
        &["initrd.target"][..],
        &["initrd-switch-root.target"],
        &["initrd.target", "initrd-switch-root.target"],
    ] {
        let label = units.join("+");
        problems.extend(
            ordering_problems(&dir, units)
                .into_iter()
                .map(|l| format!("{label}: {l}")),
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    problems
}

fn have_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new(UPSTREAM_UNITS)
            .join("initrd-switch-root.target")
            .exists();
    if !found {
        common::skip("systemd-analyze and systemd's initrd units (apt-get install systemd)");
    }
    found
}

/// For every case, the initrd units NixOS renders (NixOS's own and persist-prep's) load into the
/// boot, the switch-root and the combined transaction without an ordering cycle or deleted job;
/// also with failureAction = "emergency" (its initrd-cleanup drop-in).
#[test]
fn rendered_initrd_units_have_no_ordering_cycle() {
    if !have_nix() || !have_systemd_analyze() {
        return;
    }
    let Some(kit) = kit() else {
        return;
    };
    let emergency = serde_json::json!({ "boot": { "initrd": { "persist-prep": { "failureAction": "emergency" } } } });
    let mut runs: Vec<(PathBuf, Value, String)> = case_dirs("cases")
        .into_iter()
        .map(|d| {
            let n = name(&d);
            (d, serde_json::json!({}), n)
        })
        .collect();
    runs.push((system_case(), emergency, "system-emergency".into()));
    for (dir, extra, label) in runs {
        let set = eval_case(&kit, &dir, &extra, "initrdUnitSet")
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let problems = verify_transactions(&set, &label);
        assert!(problems.is_empty(), "{label}: {problems:#?}");
    }
}

/// The check above can fail: finish ordered as it was before (WantedBy=initrd.target,
/// Before=initrd.target initrd-switch-root.target, After=initrd-nixos-activation.service) forms
/// the cycle NixOS >= 24.11 breaks by deleting a job.
#[test]
fn ordering_cycle_check_can_fail() {
    if !have_nix() || !have_systemd_analyze() {
        return;
    }
    let Some(kit) = kit() else {
        return;
    };
    let dir = system_case();
    let mut set = eval_case_as_is(&kit, &dir, "initrdUnitSet").unwrap();
    set["persist-prep-finish.service"] = serde_json::json!({
        "text": "[Unit]\nDefaultDependencies=no\nAfter=persist-prep.service initrd-fs.target initrd-nixos-activation.service\nBefore=initrd.target initrd-cleanup.service initrd-switch-root.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
        "wantedBy": ["initrd.target"], "requiredBy": [], "upheldBy": [], "overrideStrategy": "asDropinIfExists",
    });
    let problems = verify_transactions(&set, "old-finish");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("deleted to break ordering cycle")),
        "the pre-24.11 ordering was not caught: {problems:#?}"
    );
}

/// Who makes the users decides who finishes deferred owners. NixOS's activation in the initrd
/// (the default): persist-prep-finish in the switch-root transaction, after it. userborn or
/// systemd-sysusers (and nixos-init, which needs one of them) make them in stage 2: no initrd
/// finish (it could only fail), persist-prep-finish-late after them, before sysinit.target.
#[test]
fn deferred_owners_follow_whoever_makes_the_users() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let select = "{ initrd = builtins.attrNames initrdServices; inherit services assertions; }";
    let default = eval_case_as_is(&kit, &dir, select).unwrap();
    assert_eq!(
        default["initrd"],
        serde_json::json!(["persist-prep", "persist-prep-finish"])
    );
    for (label, extra) in [
        (
            "userborn",
            serde_json::json!({ "services": { "userborn": { "enable": true } } }),
        ),
        (
            "sysusers",
            serde_json::json!({ "systemd": { "sysusers": { "enable": true } } }),
        ),
        (
            "nixos-init",
            serde_json::json!({ "system": { "nixos-init": { "enable": true } }, "services": { "userborn": { "enable": true } } }),
        ),
    ] {
        let got = eval_case(&kit, &dir, &extra, select).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(
            got["initrd"],
            serde_json::json!(["persist-prep"]),
            "{label}"
        );
        let late = &got["services"]["persist-prep-finish-late"];
        for unit in ["systemd-sysusers.service", "userborn.service"] {
            assert!(
                late["after"]
                    .as_array()
                    .unwrap()
                    .contains(&Value::from(unit)),
                "{label}: {late}"
            );
        }
        assert!(
            late["before"]
                .as_array()
                .unwrap()
                .contains(&Value::from("sysinit.target")),
            "{label}"
        );
        assert_eq!(
            late["wantedBy"],
            serde_json::json!(["sysinit.target"]),
            "{label}"
        );
    }
}

/// The boot tests' stand-in for NixOS's activation (tests/boot/units/fake-nixos-activation) is
/// ordered exactly as the kit renders initrd-nixos-activation.service, so the boot scenarios test
/// the NixOS of today: same [Unit] ordering, same `RequiredBy=`.
#[test]
fn activation_stand_in_orders_like_nixos() {
    let Some(kit) = nix_and_kit() else {
        return;
    };
    let dir = system_case();
    let set = eval_case_as_is(&kit, &dir, "initrdUnitSet").unwrap();
    let nixos = &set["initrd-nixos-activation.service"];
    let unit_section = |text: &str| -> String {
        text.lines()
            .skip_while(|l| l.trim() != "[Unit]")
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let stand_in = std::fs::read_to_string(
        repo().join("tests/boot/units/fake-nixos-activation/initrd-nixos-activation.service"),
    )
    .unwrap();
    let mut want = directives(&unit_section(nixos["text"].as_str().unwrap()));
    let mut have = directives(&unit_section(&stand_in));
    want.remove("Description");
    have.remove("Description");
    assert_eq!(have, want, "the stand-in's [Unit] differs from NixOS's");
    let required_by: Vec<String> = directives(&stand_in)
        .remove("RequiredBy")
        .unwrap_or_default();
    assert_eq!(
        serde_json::json!(required_by),
        nixos["requiredBy"],
        "RequiredBy="
    );
}
