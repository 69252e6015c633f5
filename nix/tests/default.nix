# NixOS VM tests (nixosTest). They need Nix with nixpkgs and, to be quick, KVM; they run with
#   nix flake check            or   nix-build nix/ -A tests.<name>
# They were only parsed, never run, where this repository was written (see nix/README.md).
{ pkgs, module, impermanence }:
let
  run = file: pkgs.testers.runNixOSTest (import file { inherit module impermanence; });
in
{
  # First boot on an empty persistent disk with non-root owners and non-0755 modes, then a second
  # boot on the same disk that changes nothing.
  persist-prep-first-boot = run ./first-boot.nix;
  # The persistent disk is absent: the boot stops, nothing lands on the ephemeral root, and
  # `persist-prep check` in the initrd's emergency shell explains why.
  persist-prep-missing-mount = run ./missing-mount.nix;
}
