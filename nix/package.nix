# persist-prep built from this repository. Call it from pkgsStatic for the static musl binary the
# initrd wants (that is what nix/default.nix, flake.nix and the module's default do):
#   pkgs.pkgsStatic.callPackage ./nix/package.nix { }
{ lib, rustPlatform }:
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
in
rustPlatform.buildRustPackage {
  pname = cargo.package.name;
  inherit (cargo.package) version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;

  # The integration tests need root, QEMU or nix-instantiate; cargo test runs them outside Nix.
  doCheck = false;

  meta = {
    description = cargo.package.description;
    license = lib.licenses.mit;
    mainProgram = "persist-prep";
    platforms = lib.platforms.linux;
  };
}
