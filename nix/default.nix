# Non-flake entry point.
#   nix-build nix/ -A package          # the static binary
#   imports = [ (import ./nix { }).module ];   # in a NixOS configuration
#   nix-build nix/ -A tests.persist-prep-first-boot   # one VM test (KVM makes it fast)
# nixpkgs comes from <nixpkgs> unless given; pin it by passing a fetched tree, for example
#   import ./nix { pkgs = import (fetchTarball "https://github.com/NixOS/nixpkgs/archive/<rev>.tar.gz") { }; }
{ pkgs ? import <nixpkgs> { }
  # Only the VM tests use it; fetched lazily, pinned to the revision the fixtures were made with.
, impermanence ? builtins.fetchTarball "https://github.com/nix-community/impermanence/archive/7b1d382faf603b6d264f58627330f9faa5cba149.tar.gz"
}:
let
  package = pkgs.pkgsStatic.callPackage ./package.nix { vmTests = tests; };
  module = { lib, ... }: {
    imports = [ ./module.nix ];
    boot.initrd.persist-prep.package = lib.mkDefault package;
  };
  tests = import ./tests { inherit pkgs module impermanence; };
in
{
  inherit package module tests;
  manifestLib = import ./lib/manifest.nix;
}
