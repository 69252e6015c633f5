# No impermanence: hand-written bind mounts, described to persist-prep through its own option.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/state" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  fileSystems."/var/lib/private" = { device = "/state/var/lib/private"; fsType = "none"; options = [ "bind" ]; neededForBoot = true; };
  users.users.app = { uid = 400; isSystemUser = true; group = "app"; };
  users.groups.app.gid = 400;
  boot.initrd.persist-prep.storages."/state" = {
    mountPoint = "/state";
    directories = [
      "/var/lib/nixos"
      { path = "/var/lib/private"; mode = "0700"; }
      { path = "/var/lib/app/data"; user = "app"; group = "app"; mode = "0750"; parent = { mode = "0711"; }; }
      { path = "/var/lib/later"; user = "later"; group = "later"; uid = 990; mode = "0700"; }
    ];
    files = [ "/etc/machine-id" ];
  };
}
