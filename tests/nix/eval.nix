# Offline evaluation harness for the contract tests; not part of the product.
#
# Full nixpkgs cannot be had on the test machine, so this evaluates modules with nixpkgs' `lib`
# alone (`lib.evalModules`) against hand-written stand-ins for the few NixOS options that
# impermanence and persist-prep's module read or write. Everything else NixOS would define is
# ignored (`_module.check = false`).
#
#   lib           nixpkgs' lib/ directory (nix-community/nixpkgs.lib), imported
#   impermanence  impermanence's checkout (its nixos.nix), or null
#   preservation  nix-community/preservation's checkout (its module.nix), or null
#   withModule    also import ../../nix/module.nix
#   config        the NixOS-style configuration under test (an attribute set or module)
{ lib, impermanence ? null, preservation ? null, withModule ? false, config }:
let
  inherit (lib) mkOption types;

  # Stand-ins for what impermanence and the module take from `pkgs`; only forced when a
  # derivation would be built, which these tests never do.
  pkgs = {
    callPackage = fn: args: import fn ({ inherit lib; } // args);
    runCommand = name: _: _: "/nix/store/00000000000000000000000000000000-${name}";
    writeShellScript = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    writeText = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    bash = "/nix/store/00000000000000000000000000000000-bash";
    util-linux = "/nix/store/00000000000000000000000000000000-util-linux";
    # nixpkgs' pkgs-lib/formats.nix: the JSON value type, and a file in the store.
    formats.json = {}: {
      type =
        let
          valueType = types.nullOr
            (types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]) // { description = "JSON value"; };
        in
        valueType;
      generate = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    };
    persist-prep = {
      name = "persist-prep-0.1.0";
      outPath = "/nix/store/00000000000000000000000000000000-persist-prep-0.1.0";
      meta.mainProgram = "persist-prep";
      type = "derivation";
      # nix/package.nix's feature-less build, for the initrd.
      initrd = {
        name = "persist-prep-initrd-0.1.0";
        outPath = "/nix/store/00000000000000000000000000000000-persist-prep-initrd-0.1.0";
        meta.mainProgram = "persist-prep";
        type = "derivation";
      };
    };
  };

  # nixpkgs' nixos/lib/utils.nix equivalents, reduced to what is used here.
  utils = {
    pathsNeededForBoot = [ "/" "/nix" "/nix/store" "/var" "/var/log" "/var/lib" "/var/lib/nixos" "/etc" "/usr" ];
    escapeSystemdPath = s:
      lib.replaceStrings [ "/" "-" " " ] [ "-" "\\x2d" "\\x20" ] (lib.removePrefix "/" s);
  };

  fileSystemsType = types.attrsOf (types.submodule ({ name, ... }: {
    options = {
      mountPoint = mkOption { type = types.str; default = name; };
      device = mkOption { type = types.nullOr types.str; default = null; };
      fsType = mkOption { type = types.str; default = "auto"; };
      options = mkOption { type = types.listOf types.str; default = [ "defaults" ]; };
      neededForBoot = mkOption { type = types.bool; default = false; };
    };
  }));

  # Home Manager's NixOS module reduced to what impermanence uses (home-manager's
  # nixos/common.nix): each user is a submodule of the shared modules, with `home.username` and
  # `home.homeDirectory` taken from `users.users.<name>`.
  homeManagerUser = osConfig: { name, ... }: {
    options.home.username = mkOption { type = types.str; };
    options.home.homeDirectory = mkOption { type = types.path; };
    options.assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    config.home.username = osConfig.users.users.${name}.name;
    config.home.homeDirectory = osConfig.users.users.${name}.home;
    config._module.args.pkgs = pkgs;
  };

  stubs = { config, ... }: {
    options = {
      users.users = mkOption {
        default = { };
        type = types.attrsOf (types.submodule ({ name, config, ... }: {
          options = {
            name = mkOption { type = types.str; default = name; };
            uid = mkOption { type = types.nullOr types.int; default = null; };
            homeMode = mkOption { type = types.strMatching "[0-7]{1,5}"; default = "700"; };
            isNormalUser = mkOption { type = types.bool; default = false; };
            isSystemUser = mkOption { type = types.bool; default = false; };
            group = mkOption { type = types.str; default = if config.isNormalUser then "users" else ""; };
            home = mkOption { type = types.str; default = if config.isNormalUser then "/home/${name}" else "/var/empty"; };
          };
        }));
      };
      users.groups = mkOption {
        default = { };
        type = types.attrsOf (types.submodule {
          options.gid = mkOption { type = types.nullOr types.int; default = null; };
        });
      };
      ids.uids = mkOption { type = types.attrsOf types.int; default = { }; };
      ids.gids = mkOption { type = types.attrsOf types.int; default = { }; };
      fileSystems = mkOption {
        default = { };
        type = fileSystemsType;
      };
      # nixpkgs' qemu-vm.nix (VM tests) overrides fileSystems with this.
      virtualisation.fileSystems = mkOption {
        default = { };
        type = fileSystemsType;
      };
      boot.initrd.systemd = {
        enable = mkOption { type = types.bool; default = false; };
        services = mkOption { type = types.attrsOf types.anything; default = { }; };
        mounts = mkOption { type = types.listOf types.anything; default = [ ]; };
        contents = mkOption { type = types.attrsOf types.anything; default = { }; };
        storePaths = mkOption { type = types.listOf types.anything; default = [ ]; };
        extraBin = mkOption { type = types.attrsOf types.anything; default = { }; };
        suppressedUnits = mkOption { type = types.listOf types.str; default = [ ]; };
      };
      systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
      environment.etc = mkOption { type = types.attrsOf types.anything; default = { }; };
      assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      home-manager.sharedModules = mkOption { type = types.listOf types.raw; default = [ ]; };
      home-manager.users = mkOption {
        default = { };
        type = types.attrsOf (types.submoduleWith {
          modules = [ (homeManagerUser config) ] ++ config.home-manager.sharedModules;
        });
      };
      microvm.stateDir = mkOption { type = types.path; default = "/var/lib/microvms"; };
      microvm.vms = mkOption { type = types.attrsOf types.anything; default = { }; };
      microvm.autostart = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    config.fileSystems = lib.mkIf (config.virtualisation.fileSystems != { }) (lib.mkOverride 10 config.virtualisation.fileSystems);
    config._module.check = false;
    config._module.args = { inherit pkgs utils; };
  };

  evaluated = lib.evalModules {
    modules = [ stubs config ]
      ++ lib.optional (impermanence != null) (/. + "${toString impermanence}/nixos.nix")
      ++ lib.optional (preservation != null) (/. + "${toString preservation}/module.nix")
      ++ lib.optional withModule ../../nix/module.nix;
  };
  c = evaluated.config;

  # Exactly the attributes of impermanence's evaluated entries that the generator reads (the rest
  # includes removed options that throw when forced).
  pick = names: a: lib.filterAttrs (n: _: builtins.elem n names) a;
  perms = pick [ "user" "group" "mode" ];
  owner = pick [ "user" "group" "uid" "gid" ];
  dir = d: pick [ "directory" "dirPath" "user" "group" "mode" "persistentStoragePath" "home" ] d
    // { defaultPerms = perms d.defaultPerms; };
  file = f: pick [ "file" "filePath" "persistentStoragePath" "home" ] f // {
    parentDirectory = dir f.parentDirectory;
  };
  entries = s: { directories = map dir s.directories; files = map file s.files; };
  storage = s: pick [ "enable" "persistentStoragePath" ] s // entries s // {
    users = lib.mapAttrs (_: entries) s.users;
  };
  homeManagerUsers = lib.mapAttrs
    (_: u: {
      inherit (u.home) username;
      home = u.home.homeDirectory;
      persistence = lib.mapAttrs (_: s: pick [ "enable" "persistentStoragePath" ] s // entries s) (u.home.persistence or { });
    })
    c.home-manager.users;

  # preservation's evaluated entries, with exactly the attributes the generator reads; the
  # intermediate directories preservation adds for user paths are plain sets without `parent`.
  preserved = e: pick [ "directory" "file" "how" "user" "group" "mode" "configureParent" "inInitrd" "createLinkTarget" ] e
    // { parent = perms (e.parent or { }); };
  preservedEntries = s: { directories = map preserved s.directories; files = map preserved s.files; };
  preservedStorage = s: pick [ "persistentStoragePath" ] s // preservedEntries s // {
    users = lib.mapAttrs (_: u: pick [ "username" "home" "homeMode" "homeGroup" ] u // preservedEntries u) s.users;
  };
in
{
  inherit (evaluated) config options;

  # What nix/module.nix hands to the generator, for comparison with a case's evaluated.json.
  generatorArgs = {
    persistence = lib.mapAttrs (_: storage) (c.environment.persistence or { });
    homeManager = homeManagerUsers;
    preservation = if c.preservation.enable or false then lib.mapAttrs (_: preservedStorage) c.preservation.preserveAt else { };
    fileSystems = c.fileSystems;
    users = lib.mapAttrs (_: u: { inherit (u) uid group home; }) c.users.users;
    groups = lib.mapAttrs (_: g: { inherit (g) gid; }) c.users.groups;
    ids = { inherit (c.ids) uids gids; };
  } // lib.optionalAttrs withModule {
    # persist-prep's own storages as the module hands them over (plain data, ids possibly null).
    extraStorages = map
      (st: {
        inherit (st) path mountPoint;
        directories = map (d: owner d // { inherit (d) path mode; parent = owner d.parent // { inherit (d.parent) mode; }; }) st.directories;
        files = map (f: { inherit (f) path; parent = owner f.parent // { inherit (f.parent) mode; }; }) st.files;
      })
      (lib.attrValues c.boot.initrd.persist-prep.storages);
  };
}
