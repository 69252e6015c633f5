# Renders nixos/impermanence.nix inside the kit's real NixOS modules (tests/nix/kit.nix): the
# manifest, and the initrd units scenario 11 boots, as NixOS's systemd-lib.nix writes them.
{ kit }:
let
  lib = import (kit + "/nixpkgs/lib");
  e = import ../../nix/kit.nix {
    inherit kit;
    config = {
      imports = [ ./impermanence.nix ];
      boot.initrd.systemd.enable = true;
      boot.initrd.persist-prep.enable = true;
    };
  };
  c = e.config;
  units = lib.filterAttrs
    (n: _: lib.elem n [ "persist-prep.service" "persist-prep-finish.service" "initrd-nixos-activation.service" ]
      || (lib.hasPrefix "sysroot-" n && lib.hasSuffix ".mount" n && n != "sysroot-run.mount"))
    c.boot.initrd.systemd.units;
in
{
  inherit (c.boot.initrd.persist-prep) manifest;
  assertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  units = lib.mapAttrs (_: u: { inherit (u) text wantedBy requiredBy; }) units;
}
