# nix-community/preservation as the source (preservation.preserveAt): system and user
# directories and files, owners and octal modes, `configureParent` with `parent.*`, `inInitrd`,
# and `how = "symlink"` entries, whose sources get their parents but are never created here.
{ lib, ... }:
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  # NixOS declares root itself; preservation's defaults read users.users.root.group.
  users.users.root = { uid = 0; group = "root"; home = "/root"; };
  users.groups.root.gid = 0;
  users.groups.users.gid = 100;
  users.users.alice = { isNormalUser = true; uid = 1000; };
  users.users.colord = { isSystemUser = true; group = "colord"; };
  users.groups.colord = { };
  preservation.enable = lib.mkDefault true;
  preservation.preserveAt."/persist" = {
    directories = [
      "/var/log"
      { directory = "/var/lib/nixos"; inInitrd = true; }
      { directory = "/var/lib/colord"; user = "colord"; group = "colord"; mode = "0750"; }
      { directory = "/var/lib/private"; mode = "0700"; }
      {
        directory = "/etc/NetworkManager/system-connections";
        mode = "0700";
        configureParent = true;
        parent.mode = "0750";
      }
      { directory = "/var/cache/big"; how = "symlink"; }
    ];
    files = [
      { file = "/etc/machine-id"; inInitrd = true; }
      { file = "/etc/wpa_supplicant.conf"; how = "symlink"; }
      { file = "/var/lib/secrets/token"; mode = "0600"; configureParent = true; parent.mode = "0700"; }
    ];
    users.alice = {
      directories = [
        { directory = ".ssh"; mode = "0700"; }
        "Documents/projects"
        { directory = ".local/share/Steam"; how = "symlink"; }
      ];
      files = [
        ".config/gh/hosts.yml"
        { file = ".bashrc"; how = "symlink"; }
      ];
    };
  };
}
