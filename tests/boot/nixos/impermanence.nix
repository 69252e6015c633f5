# Scenario 11-nixos-units: a real impermanence configuration whose initrd units (persist-prep,
# finish, impermanence's initrd bind mounts, NixOS's activation) the kit's NixOS modules render.
# /var/lib/late belongs to a system user without a static uid: only activation creates it.
{
  fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
  fileSystems."/persist" = { device = "/dev/vdb"; fsType = "ext4"; neededForBoot = true; };
  users.users.late = { isSystemUser = true; group = "late"; };
  users.groups.late = { };
  environment.persistence."/persist" = {
    directories = [
      "/var/lib/nixos"
      { directory = "/var/log"; mode = "0750"; }
      { directory = "/var/lib/late"; user = "late"; group = "late"; mode = "0750"; }
    ];
  };
}
