# NixOS module for persist-prep: bakes a manifest from impermanence's `environment.persistence`
# (with its Home Manager users' `home.persistence`), from preservation's `preservation.preserveAt`
# and from its own `storages` into the systemd initrd, and runs persist-prep there after the
# persistent volumes are mounted and before any bind mount needs a source.
#
# The units order and run exactly as initrd/persist-prep.service, persist-prep-finish.service,
# persist-prep-finish-late.service and initrd/stop-boot/ (tests/nix_contract.rs compares them with
# what NixOS's systemd-lib.nix renders from this module).
{ config, options, lib, pkgs, utils, ... }:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.boot.initrd.persist-prep;
  hostCfg = config.services.persist-prep.microvm-prune;
  generator = import ./lib/manifest.nix;

  stateDir = "/run/persist-prep";

  # Who makes the users: NixOS's activation in the initrd (update-users-groups.pl, the default),
  # or userborn / systemd-sysusers in stage 2. Those options live in modules a configuration may
  # lack (the test kit does), hence `or false`.
  usersInStage2 = config.services.userborn.enable or false || config.systemd.sysusers.enable or false;
  usersInInitrd = !usersInStage2;

  # The three persist-prep units run once, stay active, and speak on the console and in the journal.
  oneshotOnConsole = execStart: {
    Type = "oneshot";
    RemainAfterExit = true;
    ExecStart = execStart;
    StandardOutput = "journal+console";
    StandardError = "journal+console";
  };

  ownerOptions = {
    user = mkOption { type = types.str; default = "root"; description = "Owner name."; };
    group = mkOption { type = types.str; default = "root"; description = "Group name."; };
    uid = mkOption {
      type = types.nullOr types.ints.u32;
      default = null;
      description = "Numeric owner; when null it comes from `users.users.<user>.uid` if that is set (never from `ids.uids`, which NixOS does not apply to a user without `uid`), else the binary resolves the name at boot.";
    };
    gid = mkOption {
      type = types.nullOr types.ints.u32;
      default = null;
      description = "Numeric group; when null it comes from `users.groups.<group>.gid` if that is set (never from `ids.gids`), else the binary resolves the name at boot.";
    };
  };

  parentOption = mkOption {
    default = { };
    description = "Attributes for missing ancestors of the entry inside the storage and on the root.";
    type = types.submodule {
      options = ownerOptions // {
        mode = mkOption { type = types.str; default = "0755"; description = "Mode of missing ancestors."; };
      };
    };
  };

  directoryType = types.coercedTo types.str (path: { inherit path; }) (types.submodule {
    options = ownerOptions // {
      path = mkOption { type = types.str; example = "/var/lib/private"; description = "Absolute path as seen on the running system."; };
      mode = mkOption {
        type = types.str;
        default = "0755";
        example = "u=rwx,g=rx,o=";
        description = "Mode, octal or symbolic as `mkdir --mode` reads it.";
      };
      parent = parentOption;
    };
  });

  fileType = types.coercedTo types.str (path: { inherit path; }) (types.submodule {
    options = {
      path = mkOption { type = types.str; example = "/etc/machine-id"; description = "Absolute path of the file; only its parent directories are created."; };
      parent = parentOption;
    };
  });

  storageType = types.submodule ({ name, ... }: {
    options = {
      path = mkOption {
        type = types.str;
        default = name;
        defaultText = literalExpression "<name>";
        description = "Absolute path of the persistent storage on the real root.";
      };
      mountPoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/persist";
        description = ''
          Mount that must be mounted before anything is created under the storage. When null, the
          longest `fileSystems` mount point containing the storage path is used (and must be
          `neededForBoot`).
        '';
      };
      directories = mkOption {
        type = types.listOf directoryType;
        default = [ ];
        example = literalExpression ''[ "/var/lib/nixos" { path = "/var/lib/private"; mode = "0700"; } ]'';
        description = "Directories to create in the storage and as bind-mount points on the root.";
      };
      files = mkOption {
        type = types.listOf fileType;
        default = [ ];
        example = [ "/etc/machine-id" ];
        description = "Files whose parent directories are created.";
      };
    };
  });

  # Plain data for the generator: option values without the module system's internals.
  plainOwner = o: { inherit (o) user group uid gid; } // optionalAttrs (o ? mode) { inherit (o) mode; };
  plainStorage = s: {
    inherit (s) path mountPoint;
    directories = map (d: plainOwner d // { inherit (d) path; parent = plainOwner d.parent; }) s.directories;
    files = map (f: { inherit (f) path; parent = plainOwner f.parent; }) s.files;
  };

  hasPersistence = options ? environment && options.environment ? persistence;
  hasHomeManager = options ? home-manager && options.home-manager ? users;
  hasPreservation = options ? preservation && options.preservation ? preserveAt;

  # Impermanence's Home Manager module declares `home.persistence` in every Home Manager user
  # (through home-manager.sharedModules); its entries are relative to `home.homeDirectory`.
  homeManagerUsers = lib.mapAttrs
    (_: u: {
      inherit (u.home) username;
      home = u.home.homeDirectory;
      persistence = u.home.persistence or { };
    })
    config.home-manager.users;

  generated = generator.generate {
    persistence = if cfg.fromImpermanence && hasPersistence then config.environment.persistence else { };
    homeManager = if cfg.fromImpermanence && hasHomeManager then homeManagerUsers else { };
    preservation = if cfg.fromPreservation && hasPreservation && config.preservation.enable then config.preservation.preserveAt else { };
    extraStorages = map plainStorage (lib.attrValues cfg.storages);
    inherit (config) fileSystems;
    users = lib.mapAttrs (_: u: { inherit (u) uid group home; }) config.users.users;
    groups = lib.mapAttrs (_: g: { inherit (g) gid; }) config.users.groups;
    pathsNeededForBoot = utils.pathsNeededForBoot or generator.defaultPathsNeededForBoot;
  };

  json = pkgs.formats.json { };
  manifestFile = json.generate "persist-prep-manifest.json" cfg.manifest;

  # Bind mounts declared for the initrd by other means (preservation, hand-written units), except
  # those a storage itself needs.
  otherBindMounts = map (m: mountUnit (lib.removePrefix "/sysroot" m.where)) (builtins.filter
    (m: m ? where && lib.hasPrefix "/sysroot/" m.where
      && lib.elem "bind" (lib.splitString "," (m.options or ""))
      && !(builtins.any (s: generator.contains (lib.removePrefix "/sysroot" m.where) s) generated.storagePaths))
    (config.boot.initrd.systemd.mounts or [ ]));

  mountUnit = path: "${utils.escapeSystemdPath "/sysroot${path}"}.mount";

  hostManifest = {
    version = 1;
    stateDir = config.microvm.stateDir or "/var/lib/microvms";
    vms = map (name: { inherit name; autostart = builtins.elem name (config.microvm.autostart or [ ]); })
      (builtins.attrNames (config.microvm.vms or { }));
    # microvm.autostart may name VMs that are not in microvm.vms (installed by CI or `microvm -c`):
    # microvms.target starts them at every boot, so prune must keep them.
    autostart = config.microvm.autostart or [ ];
  };
  hostManifestFile = json.generate "persist-prep-microvm.json" hostCfg.manifest;
in
{
  options.boot.initrd.persist-prep = {
    enable = mkEnableOption "persist-prep, which creates missing persistent directories with their declared owners and modes in the initrd";

    package = mkOption {
      type = types.package;
      default = pkgs.persist-prep or (pkgs.pkgsStatic.callPackage ./package.nix { });
      defaultText = literalExpression "pkgs.persist-prep or (pkgs.pkgsStatic.callPackage ./nix/package.nix { })";
      description = "The persist-prep package; a static build keeps the initrd small. The host's units run it.";
    };

    initrdPackage = mkOption {
      type = types.package;
      default = cfg.package.initrd or cfg.package;
      defaultText = literalExpression "config.boot.initrd.persist-prep.package.initrd or config.boot.initrd.persist-prep.package";
      description = "The build that goes into the initrd: nix/package.nix's `initrd`, built without the microvm host mode the initrd never runs.";
    };

    fromImpermanence = mkOption {
      type = types.bool;
      default = true;
      description = "Derive entries from impermanence's `environment.persistence`, and from the Home Manager users' `home.persistence`, when those options exist.";
    };

    fromPreservation = mkOption {
      type = types.bool;
      default = true;
      description = "Derive entries from preservation's `preservation.preserveAt` when preservation is imported and enabled.";
    };

    storages = mkOption {
      type = types.attrsOf storageType;
      default = { };
      example = literalExpression ''
        { "/persist".directories = [ { path = "/var/lib/private"; mode = "0700"; } ]; }
      '';
      description = "Storages and entries of persist-prep's own, for setups without impermanence or in addition to it.";
    };

    failureAction = mkOption {
      type = types.enum [ "continue" "emergency" ];
      default = "continue";
      description = ''
        What a failure of persist-prep does to the boot. `continue` (default) makes it loud on the
        console and in the journal and lets the boot go on; `emergency` stops the boot in the
        initrd's emergency shell, where `persist-prep check` shows what is wrong.
      '';
    };

    logLevel = mkOption {
      type = types.enum [ "error" "warn" "info" "debug" ];
      default = "info";
      description = "Log level (PERSIST_PREP_LOG).";
    };

    manifest = mkOption {
      type = json.type;
      readOnly = true;
      default = generated.manifest;
      defaultText = literalExpression "generated from environment.persistence, home-manager.users.<name>.home.persistence, preservation.preserveAt and storages";
      description = "The generated manifest, as written to /etc/persist-prep/manifest.json in the initrd.";
    };

    manifestFile = mkOption {
      type = types.path;
      readOnly = true;
      default = manifestFile;
      defaultText = literalExpression "a store path holding the manifest as JSON";
      description = ''
        The manifest alone, as a file in the store: the one the initrd gets. Build it from an
        installer and prepare the new volume before the first boot with
        `persist-prep apply --root /mnt --manifest "$(nix build --print-out-paths .#nixosConfigurations.<host>.config.boot.initrd.persist-prep.manifestFile)"`.
      '';
    };
  };

  options.services.persist-prep.microvm-prune = {
    enable = mkEnableOption "removal of what microvm.nix leaves behind for VMs no longer in `microvm.vms`, after each configuration switch";
    manifest = mkOption {
      type = json.type;
      readOnly = true;
      default = hostManifest;
      defaultText = literalExpression "generated from microvm.stateDir, microvm.vms and microvm.autostart";
      description = "The host manifest given to `persist-prep microvm prune --manifest`, also at /etc/persist-prep/microvm.json.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--stop" ];
      description = "Extra arguments to `persist-prep microvm prune`, such as `--stop` to stop running orphaned VMs.";
    };
  };

  config = mkMerge [
    (mkIf cfg.enable {
      assertions = [
        {
          assertion = config.boot.initrd.systemd.enable;
          message = "boot.initrd.persist-prep needs the systemd initrd: set boot.initrd.systemd.enable = true; (the scripted initrd is not supported).";
        }
      ] ++ map (message: { assertion = false; inherit message; }) generated.problems;

      warnings = optional (cfg.manifest.storages == [ ])
        "boot.initrd.persist-prep is enabled but declares nothing: environment.persistence is empty or absent and boot.initrd.persist-prep.storages is empty.";

      boot.initrd.systemd = {
        contents."/etc/persist-prep/manifest.json".source = manifestFile;
        # On the initrd's PATH, so that `persist-prep check` works in the emergency shell.
        extraBin.persist-prep = "${cfg.initrdPackage}/bin/persist-prep";

        services.persist-prep = {
          description = "Create missing persistent directories (persist-prep)";
          wantedBy = [ "initrd-fs.target" ];
          after = [ "sysroot.mount" ];
          before = [
            "initrd-fs.target"
            "systemd-tmpfiles-setup-sysroot.service"
            "initrd-nixos-activation.service"
          ] ++ lib.unique (map mountUnit generated.mountUnitPaths ++ otherBindMounts);
          unitConfig = {
            DefaultDependencies = false;
            ConditionPathExists = "/etc/initrd-release";
            RequiresMountsFor = [ "/sysroot" ] ++ map (p: "/sysroot${p}") generated.storagePaths;
          } // optionalAttrs (cfg.failureAction == "emergency") {
            OnFailure = "emergency.target";
            OnFailureJobMode = "replace-irreversibly";
          };
          environment.PERSIST_PREP_LOG = cfg.logLevel;
          serviceConfig = oneshotOnConsole "/bin/persist-prep apply --root /sysroot --manifest /etc/persist-prep/manifest.json";
        };

        # Stopping the boot needs more than OnFailure: initrd-cleanup would isolate
        # initrd-switch-root.target and leave the emergency shell. Requiring persist-prep there
        # makes switch-root wait (the same as initrd/stop-boot/ for dracut).
        services.initrd-cleanup = mkIf (cfg.failureAction == "emergency") {
          requires = [ "persist-prep.service" ];
          after = [ "persist-prep.service" ];
        };

        # Deferred owners, when NixOS's activation in the initrd makes the users (the default):
        # since NixOS 24.11 initrd-nixos-activation.service runs in the switch-root transaction
        # (After=initrd-switch-root.target, Before=initrd-switch-root.service), so finish joins
        # that transaction right after it. Ordered before initrd.target as it once was, it ran
        # before activation on a first boot, and with both pending the orderings formed a cycle.
        services.persist-prep-finish = mkIf usersInInitrd {
          description = "Give deferred persistent directories their owners (persist-prep)";
          wantedBy = [ "initrd-switch-root.service" ];
          after = [ "persist-prep.service" "initrd-switch-root.target" "initrd-nixos-activation.service" ];
          before = [ "initrd-switch-root.service" ];
          unitConfig = {
            DefaultDependencies = false;
            ConditionPathExists = [ "/etc/initrd-release" "${stateDir}/deferred.json" ];
            RequiresMountsFor = [ "/sysroot" ];
          };
          environment.PERSIST_PREP_LOG = cfg.logLevel;
          serviceConfig = oneshotOnConsole "/bin/persist-prep finish --root /sysroot";
        };
      };

      # Stage 2: with userborn or systemd-sysusers (nixos-init needs one of them) the users appear
      # only after switch-root; the record survives in /run and this unit finishes it once they
      # exist, before sysinit.target. It also retries whatever the initrd could not finish.
      systemd.services.persist-prep-finish-late = {
        description = "Give deferred persistent directories their owners after user creation (persist-prep)";
        wantedBy = [ "sysinit.target" ];
        after = [ "local-fs.target" "systemd-sysusers.service" "userborn.service" ];
        before = [ "sysinit.target" "systemd-tmpfiles-setup.service" "shutdown.target" ];
        conflicts = [ "shutdown.target" ];
        unitConfig = {
          DefaultDependencies = false;
          ConditionPathExists = [ "!/etc/initrd-release" "${stateDir}/deferred.json" ];
        };
        environment.PERSIST_PREP_LOG = cfg.logLevel;
        serviceConfig = oneshotOnConsole "${cfg.package}/bin/persist-prep finish --root /";
      };
    })

    (mkIf hostCfg.enable {
      assertions = [{
        # Without microvm.nix's options the declared set would be empty and every VM an orphan.
        assertion = options ? microvm && options.microvm ? vms;
        message = "services.persist-prep.microvm-prune needs microvm.nix's host module (microvm.vms is not declared).";
      }];

      environment.etc."persist-prep/microvm.json".source = hostManifestFile;

      # A oneshot rather than an activation snippet: switch-to-configuration restarts it when the
      # declared set changes (restartTriggers), its output lands in the journal, and a failure is a
      # failed unit rather than a failed switch.
      systemd.services.persist-prep-microvm-prune = {
        description = "Remove leftovers of microvm.nix VMs no longer declared (persist-prep)";
        wantedBy = [ "multi-user.target" ];
        after = [ "microvms.target" ];
        restartTriggers = [ hostManifestFile ];
        environment.PERSIST_PREP_LOG = cfg.logLevel;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = lib.escapeShellArgs ([ "${cfg.package}/bin/persist-prep" "microvm" "prune" "--manifest" "${hostManifestFile}" ] ++ hostCfg.extraArgs);
        };
      };
    })
  ];
}
