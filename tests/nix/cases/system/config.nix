# A plain impermanent server: tmpfs root, one persistent volume mounted for the initrd.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  users.users.colord = { uid = 997; isSystemUser = true; group = "colord"; };
  users.groups.colord.gid = 996;
  environment.persistence."/persist" = {
    directories = [
      "/var/lib/nixos"
      { directory = "/var/log"; group = "systemd-journal"; mode = "2755"; }
      { directory = "/var/lib/private"; mode = "0700"; }
      { directory = "/var/lib/colord"; user = "colord"; group = "colord"; mode = "u=rwx,g=rx,o="; }
      { directory = "/srv/www/static"; user = "nginx"; group = "nginx"; mode = "0750"; }
    ];
    files = [
      "/etc/machine-id"
      "/etc/ssh/ssh_host_ed25519_key"
    ];
  };
}
