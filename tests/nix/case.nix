# Evaluates one case directory through impermanence's real options and nix/module.nix (offline,
# with nixpkgs' lib only; see eval.nix). Used by tests/nix_contract.rs and tests/nix/regenerate.
#   lib, impermanence, preservation: as in eval.nix;  dir: the case directory;  extra: more config to merge
{ lib, impermanence, preservation ? null, dir, extra ? { } }:
let
  e = import ./eval.nix {
    inherit lib impermanence preservation;
    withModule = true;
    config = {
      imports = [ (dir + "/config.nix") extra ];
      boot.initrd.persist-prep.enable = lib.mkDefault true;
      boot.initrd.systemd.enable = lib.mkDefault true;
    };
  };
  c = e.config;
  failed = builtins.filter (a: !a.assertion) c.assertions;
in
{
  inherit (e) generatorArgs;
  inherit (c.boot.initrd.persist-prep) manifest;
  # Only persist-prep's own assertions; impermanence adds its own for the same mistakes.
  problems = builtins.filter (m: lib.hasPrefix "persist-prep:" m) (map (a: a.message) failed);
  assertions = map (a: a.message) failed;
  initrdServices = { inherit (c.boot.initrd.systemd.services) persist-prep persist-prep-finish; }
    // lib.optionalAttrs (c.boot.initrd.systemd.services ? initrd-cleanup) {
    inherit (c.boot.initrd.systemd.services) initrd-cleanup;
  };
  inherit (c.boot.initrd.systemd) contents extraBin;
  services = c.systemd.services;
  etc = c.environment.etc;
  inherit (c) warnings;
  hostManifest = c.services.persist-prep.microvm-prune.manifest;
}
