# Evaluates one case directory inside the kit's real NixOS modules (see kit.nix) with
# nix/module.nix. Used by tests/nix_contract.rs and tests/nix/regenerate.
#   kit: the nixos-kit directory;  dir: the case directory;  extra: more config to merge
{ kit, dir, extra ? { } }:
let
  lib = import (kit + "/nixpkgs/lib");
  text = builtins.readFile (dir + "/config.nix");
  e = import ./kit.nix {
    inherit kit;
    homeManager = lib.hasInfix "home-manager." text;
    microvm = extra ? microvm;
    config = {
      imports = [ (dir + "/config.nix") extra ];
      boot.initrd.persist-prep.enable = lib.mkDefault true;
      boot.initrd.systemd.enable = lib.mkDefault true;
    };
  };
  c = e.config;
  failed = builtins.filter (a: !a.assertion) c.assertions;

  # Exactly the attributes of impermanence's evaluated entries that the generator reads (the rest
  # includes removed options that throw when forced).
  pick = names: a: lib.filterAttrs (n: _: builtins.elem n names) a;
  perms = pick [ "user" "group" "mode" ];
  owner = pick [ "user" "group" "uid" "gid" ];
  dirEntry = d: pick [ "directory" "dirPath" "user" "group" "mode" "persistentStoragePath" "home" ] d
    // { defaultPerms = perms d.defaultPerms; };
  fileEntry = f: pick [ "file" "filePath" "persistentStoragePath" "home" ] f // {
    parentDirectory = dirEntry f.parentDirectory;
  };
  entries = s: { directories = map dirEntry s.directories; files = map fileEntry s.files; };
  storage = s: pick [ "enable" "persistentStoragePath" ] s // entries s // {
    users = lib.mapAttrs (_: entries) s.users;
  };
  homeManagerUsers = lib.mapAttrs
    (_: u: {
      inherit (u.home) username;
      home = u.home.homeDirectory;
      persistence = lib.mapAttrs (_: s: pick [ "enable" "persistentStoragePath" ] s // entries s) (u.home.persistence or { });
    })
    (c.home-manager.users or { });

  # preservation's evaluated entries, with exactly the attributes the generator reads; the
  # intermediate directories preservation adds for user paths are plain sets without `parent`.
  preserved = e: pick [ "directory" "file" "how" "user" "group" "mode" "configureParent" "inInitrd" "createLinkTarget" ] e
    // { parent = perms (e.parent or { }); };
  preservedEntries = s: { directories = map preserved s.directories; files = map preserved s.files; };
  preservedStorage = s: pick [ "persistentStoragePath" ] s // preservedEntries s // {
    users = lib.mapAttrs (_: u: pick [ "username" "home" "homeMode" "homeGroup" ] u // preservedEntries u) s.users;
  };
  unitFields = pick [ "after" "before" "wants" "wantedBy" "requires" "requiredBy" "conflicts" "unitConfig" "serviceConfig" "environment" "restartTriggers" "description" ];
in
{
  inherit e;
  # What nix/module.nix hands to the generator, for comparison with the case's evaluated.json.
  generatorArgs = {
    persistence = lib.mapAttrs (_: storage) c.environment.persistence;
    homeManager = homeManagerUsers;
    preservation = if c.preservation.enable then lib.mapAttrs (_: preservedStorage) c.preservation.preserveAt else { };
    fileSystems = lib.mapAttrs (_: fs: pick [ "mountPoint" "neededForBoot" "enable" ] fs) c.fileSystems;
    users = lib.mapAttrs (_: u: { inherit (u) uid group home; }) c.users.users;
    groups = lib.mapAttrs (_: g: { inherit (g) gid; }) c.users.groups;
    # persist-prep's own storages as the module hands them over (plain data, ids possibly null).
    extraStorages = map
      (st: {
        inherit (st) path mountPoint;
        directories = map (d: owner d // { inherit (d) path mode; parent = owner d.parent // { inherit (d.parent) mode; }; }) st.directories;
        files = map (f: { inherit (f) path; parent = owner f.parent // { inherit (f.parent) mode; }; }) st.files;
      })
      (lib.attrValues c.boot.initrd.persist-prep.storages);
  };
  inherit (c.boot.initrd.persist-prep) manifest;
  # Only persist-prep's own assertions; impermanence adds its own for the same mistakes.
  problems = builtins.filter (m: lib.hasPrefix "persist-prep:" m) (map (a: a.message) failed);
  assertions = map (a: a.message) failed;
  # The persist-prep services (and initrd-cleanup's addition), with the attributes the tests
  # read; the rest of a NixOS service has options without values.
  initrdServices = lib.mapAttrs (_: unitFields) (lib.filterAttrs (n: _: lib.hasPrefix "persist-prep" n || n == "initrd-cleanup") c.boot.initrd.systemd.services);
  # The unit files NixOS renders (systemd-lib.nix), by name.
  initrdUnits = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (_: u: u.enable && u ? text) c.boot.initrd.systemd.units);
  # The same with what generateUnits needs to lay them out: drop-in or file, and .wants links.
  initrdUnitSet = lib.mapAttrs (_: u: { inherit (u) text wantedBy requiredBy upheldBy overrideStrategy; })
    (lib.filterAttrs (_: u: u.enable && u ? text) c.boot.initrd.systemd.units);
  units = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (n: u: u.enable && u ? text && lib.hasPrefix "persist-prep" n) c.systemd.units);
  contents = lib.filterAttrs (n: _: lib.hasInfix "persist-prep" n) c.boot.initrd.systemd.contents;
  extraBin = { inherit (c.boot.initrd.systemd.extraBin) persist-prep; };
  services = lib.mapAttrs (_: unitFields) (lib.filterAttrs (n: _: lib.hasPrefix "persist-prep" n) c.systemd.services);
  etc = lib.mapAttrs (_: pick [ "source" "target" ]) (lib.filterAttrs (n: _: lib.hasPrefix "persist-prep" n) c.environment.etc);
  inherit (c) warnings;
  hostManifest = c.services.persist-prep.microvm-prune.manifest;
}
