# Evaluates a configuration inside the real NixOS modules of the nixos-kit (../shared/nixos-kit,
# see its README) with `_module.check = true`: systemd initrd, stage-2 systemd, tmpfiles,
# fileSystems, users and groups, ids, assertions, /etc and build, plus the real impermanence,
# preservation, Home Manager and microvm.nix host modules, and nix/module.nix.
#
# Only two things are stand-ins: `pkgs` (derivations are never built here; a store path is all a
# unit needs), and the options of NixOS modules the kit does not hold, declared below with the
# types NixOS gives them. Everything else is upstream code, so an option nix/module.nix sets and
# NixOS does not declare, a wrong type, or a failing NixOS assertion is an error here.
#
#   kit          the kit's directory (a path)
#   config       the configuration under test (a module)
#   homeManager  also import Home Manager's NixOS module (with impermanence's Home Manager module)
#   microvm      also import the options of microvm.nix's host module (its config needs much of NixOS the kit lacks)
{ kit, config, homeManager ? false, microvm ? false }:
let
  lib = import (kit + "/nixpkgs/lib");
  inherit (lib) mkOption types;
  nixos = kit + "/nixpkgs/nixos";

  # A store path that is never built: units and the manifest only need its name.
  drv = name:
    let
      d = {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        outputName = "out";
        overrideAttrs = _: d;
        meta.mainProgram = name;
      };
    in
    d;

  pkgs = rec {
    inherit lib;
    path = kit + "/nixpkgs";
    stdenv.hostPlatform = lib.systems.elaborate "x86_64-linux";
    stdenv.buildPlatform = stdenv.hostPlatform;
    buildPackages = pkgs;
    systemd = drv "systemd" // { util-linux = drv "util-linux"; kmod = drv "kmod"; withCryptsetup = false; withTpm2Units = false; };
    util-linux = drv "util-linux";
    coreutils = drv "coreutils";
    bash = drv "bash";
    bashInteractive = drv "bash-interactive";
    runtimeShell = "${bash}/bin/bash";
    shadow = drv "shadow";
    glibc = drv "glibc";
    glibcLocales = drv "glibc-locales-2.40" // { version = "2.40"; };
    chroot-realpath = drv "chroot-realpath";
    gnused = drv "gnused";
    gnugrep = drv "gnugrep";
    findutils = drv "findutils";
    kmod = drv "kmod";
    less = drv "less";
    kmod-blacklist-ubuntu = drv "kmod-blacklist-ubuntu";
    kmod-debian-aliases = drv "kmod-debian-aliases";
    # The shells users-groups.nix checks `users.users.<name>.shell` against.
    fish = drv "fish";
    xonsh = drv "xonsh";
    zsh = drv "zsh";
    nologin = drv "nologin";
    writeText = name: _: drv name;
    writeTextFile = a: drv a.name;
    writeTextDir = name: _: drv name;
    writeShellScript = name: _: drv name;
    writeShellScriptBin = name: _: drv name;
    writeShellApplication = a: drv a.name;
    runCommand = name: _: _: drv name;
    runCommandLocal = runCommand;
    linkFarm = name: _: drv name;
    buildEnv = a: drv a.name;
    symlinkJoin = a: drv a.name;
    callPackage = fn: args: import fn ({ inherit lib; } // args);
    # nixpkgs' pkgs-lib/formats.nix: a value type, and a file in the store. JSON's type is the
    # real one (the module's manifest option has it); the other formats only need to exist.
    formats =
      let
        format = type: _: { inherit type; generate = name: _: drv name; lib.types.atom = types.anything; };
        json = types.nullOr
          (types.oneOf [
            types.bool
            types.int
            types.float
            types.str
            types.path
            (types.attrsOf json)
            (types.listOf json)
          ]) // { description = "JSON value"; };
      in
      lib.genAttrs [ "ini" "iniWithGlobalSection" "javaProperties" "keyValue" "rasi" "toml" "xml" "yaml" ] (_: format types.anything)
      // { json = format json; };
    persist-prep = drv "persist-prep-0.1.0" // { initrd = drv "persist-prep-initrd-0.1.0"; };
  };

  # Options of NixOS modules absent from the kit (stage-1.nix, kernel.nix, sysctl.nix, activation,
  # environment, userborn, sysusers, nixos-init, ...) that the kit's modules or the module under
  # test read or write, with NixOS's types and defaults.
  absent = { config, utils, ... }: {
    options = {
      boot.initrd.enable = mkOption { type = types.bool; default = true; };
      boot.initrd.availableKernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.initrd.kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.initrd.osRelease = mkOption { type = types.package; default = drv "initrd-release"; };
      boot.kernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.kernel.sysctl = mkOption { type = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.str types.int ])); default = { }; };
      boot.kernelParams = mkOption { type = types.listOf types.str; default = [ ]; };
      boot.kernelPackages = mkOption { type = types.raw; default = { kernel = drv "linux-6.12" // { version = "6.12"; modDirVersion = "6.12"; }; }; };
      boot.isContainer = mkOption { type = types.bool; default = false; };
      boot.resumeDevice = mkOption { type = types.str; default = ""; };
      environment.profiles = mkOption { type = types.listOf types.str; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.pathsToLink = mkOption { type = types.listOf types.str; default = [ ]; };
      hardware.firmware = mkOption { type = types.listOf types.package; default = [ ]; };
      networking.hostName = mkOption { type = types.str; default = "nixos"; };
      security.googleOsLogin.enable = lib.mkEnableOption "Google OS Login";
      services.dbus.enable = mkOption { type = types.bool; default = false; };
      services.logrotate.settings = mkOption { type = types.attrsOf types.anything; default = { }; };
      services.openssh.enable = lib.mkEnableOption "the OpenSSH secure shell daemon";
      services.userborn.enable = lib.mkEnableOption "userborn";
      systemd.sysusers.enable = lib.mkEnableOption "systemd-sysusers";
      system.nixos-init.enable = lib.mkEnableOption "nixos-init, a system for bashless initialization";
      system.activationScripts = mkOption {
        default = { };
        type = types.attrsOf (types.coercedTo types.str (text: { inherit text; }) (types.submodule {
          options.deps = mkOption { type = types.listOf types.str; default = [ ]; };
          options.text = mkOption { type = types.lines; };
          options.supportsDryActivation = mkOption { type = types.bool; default = false; };
        }));
      };
      system.userActivationScripts = mkOption { type = types.attrsOf types.unspecified; default = { }; };
      system.modulesTree = mkOption { type = types.listOf types.path; default = [ ]; };
      system.nssDatabases = mkOption { type = types.attrsOf (types.listOf types.str); default = { }; };
      system.nssModules = mkOption { type = types.listOf types.path; default = [ ]; };
      system.requiredKernelConfig = mkOption { type = types.listOf types.attrs; default = [ ]; };
      system.fsPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      # systemd/user.nix
      systemd.user.services = mkOption { type = utils.systemdUtils.types.services; default = { }; };
      systemd.additionalUpstreamUserUnits = mkOption { type = types.listOf types.str; default = [ ]; };
      # The OpenSSH module adds each user's authorized keys (users-groups.nix reads them).
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          options.openssh.authorizedKeys.keys = mkOption { type = types.listOf types.singleLineStr; default = [ ]; };
          options.openssh.authorizedKeys.keyFiles = mkOption { type = types.listOf types.path; default = [ ]; };
        });
      };
      # stage-1.nix adds neededForBoot to every file system.
      fileSystems = mkOption {
        type = types.attrsOf (types.submodule {
          options.neededForBoot = mkOption { type = types.bool; default = false; };
        });
      };
      # nixpkgs' qemu-vm.nix (the VM tests) overrides fileSystems with this.
      # shells-environment.nix
      users.defaultUserShell = mkOption { type = types.either types.path types.package; default = pkgs.shadow; };
      virtualisation.fileSystems = mkOption { type = types.attrsOf types.anything; default = { }; };
      virtualisation.diskImage = mkOption { type = types.nullOr types.str; default = "./nixos.qcow2"; };
      virtualisation.emptyDiskImages = mkOption { type = types.listOf types.anything; default = [ ]; };
    };
    config = {
      # journald.nix (absent) gives the journal's group its static gid.
      users.groups.systemd-journal.gid = config.ids.gids.systemd-journal;
      fileSystems = lib.mkIf (config.virtualisation.fileSystems != { }) (lib.mkOverride 10 config.virtualisation.fileSystems);
    };
  };

  # The scripted initrd's hooks (stage-1.nix); initrd.nix asserts they stay empty.
  scriptedHooks = {
    options.boot.initrd = lib.genAttrs
      [ "preFailCommands" "preDeviceCommands" "preLVMCommands" "postDeviceCommands" "postResumeCommands" "postMountCommands" "extraUdevRulesCommands" "extraUtilsCommands" "extraUtilsCommandsTest" ]
      (_: mkOption { type = types.lines; default = ""; }) // {
      network.postCommands = mkOption { type = types.lines; default = ""; };
    };
  };

  evaluated = lib.evalModules {
    specialArgs = { modulesPath = nixos + "/modules"; };
    modules = map (p: nixos + "/modules/${p}") [
      "system/boot/systemd/initrd.nix"
      "system/boot/systemd.nix"
      "system/boot/systemd/tmpfiles.nix"
      "tasks/filesystems.nix"
      "config/users-groups.nix"
      "misc/ids.nix"
      "misc/assertions.nix"
      "misc/meta.nix"
      "system/etc/etc.nix"
      "system/build.nix"
    ] ++ [
      absent
      scriptedHooks
      ({ config, ... }: {
        _module.check = true;
        _module.args = {
          inherit pkgs;
          utils = import (nixos + "/lib/utils.nix") { inherit lib config pkgs; };
        };
      })
      (kit + "/impermanence/nixos.nix")
      (kit + "/preservation/module.nix")
      ../../nix/module.nix
      config
    ] ++ lib.optionals homeManager [
      (kit + "/home-manager/nixos")
      {
        home-manager.useGlobalPkgs = true;
        home-manager.sharedModules = [ (kit + "/impermanence/home-manager.nix") { home.stateVersion = "25.05"; } ];
      }
    ] ++ lib.optional microvm (kit + "/microvm.nix/nixos-modules/host/options.nix");
  };
in
evaluated
