{
  description = "persist-prep: create missing persistent directories for impermanent NixOS systems from the initrd";

  # No flake.lock is committed: it could not be generated offline where this was written. The first
  # `nix flake check` / `nix build` writes one; commit it, or pin explicitly with
  #   nix flake lock --override-input nixpkgs github:NixOS/nixpkgs/<rev>
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
  # Only the VM tests in `checks` use it; consumers may `follows` their own.
  inputs.impermanence.url = "github:nix-community/impermanence";

  outputs = { self, nixpkgs, impermanence }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        persist-prep = pkgs.pkgsStatic.callPackage ./nix/package.nix {
          # passthru.tests; lazy, so building the package does not evaluate them.
          vmTests = import ./nix/tests { inherit pkgs impermanence; module = self.nixosModules.default; };
        };
        # The initrd's build, without the microvm host mode.
        persist-prep-initrd = persist-prep.initrd;
        default = persist-prep;
      });

      overlays.default = final: _prev: {
        persist-prep = final.pkgsStatic.callPackage ./nix/package.nix { };
      };

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nix/module.nix ];
        boot.initrd.persist-prep.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      lib.manifest = import ./nix/lib/manifest.nix;

      checks = forAll (pkgs:
        { package = self.packages.${pkgs.stdenv.hostPlatform.system}.default; }
        // import ./nix/tests { inherit pkgs impermanence; module = self.nixosModules.default; });
    };
}
