# persist-prep built from this repository. Call it from pkgsStatic for the static musl binary the
# initrd wants (that is what nix/default.nix, flake.nix and the module's default do):
#   pkgs.pkgsStatic.callPackage ./nix/package.nix { }
#
# The result is the full binary (host mode included) for the running system; `passthru.initrd` is
# the same source built without default features (no microvm host mode), smaller, for the initrd.
# `vmTests` are the NixOS VM tests (nix/tests), handed in by the flake and nix/default.nix because
# they need the module and impermanence; they become `passthru.tests`.
{ lib, rustPlatform, vmTests ? { } }:
let
  cargo = builtins.fromTOML (builtins.readFile ../Cargo.toml);
  root = ../.;
  # Only what the build reads, so that editing docs, Nix files or tests does not rebuild it.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };

  build = { initrd, passthru }: rustPlatform.buildRustPackage {
    pname = if initrd then "${cargo.package.name}-initrd" else cargo.package.name;
    inherit (cargo.package) version;
    inherit src passthru;
    cargoLock.lockFile = ../Cargo.lock;

    # `--no-default-features` leaves out the `microvm` host mode, which the initrd never runs.
    buildNoDefaultFeatures = initrd;

    # The unit tests (in the library and the binary) need neither root nor a VM; the integration tests in tests/
    # do (root, mount namespaces, QEMU, nix-instantiate), and tests/run runs them outside Nix.
    # Run them once, on the full build, where every module is compiled in.
    doCheck = !initrd;
    cargoTestFlags = [ "--lib" "--bins" ];

    meta = {
      description = cargo.package.description;
      license = lib.licenses.mit;
      mainProgram = "persist-prep";
      platforms = lib.platforms.linux;
    };
  };

  initrdBuild = build { initrd = true; passthru = { }; };
in
build {
  initrd = false;
  passthru = {
    initrd = initrdBuild;
    tests = vmTests;
  };
}
