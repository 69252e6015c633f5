# Misconfigurations the module must refuse at build time: a storage on a file system the initrd
# does not mount, and one directory declared in two storages with different modes.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; };
  fileSystems."/nix" = { device = "/dev/vda3"; fsType = "ext4"; };
  environment.persistence."/persist".directories = [{ directory = "/var/lib/private"; mode = "0700"; }];
  environment.persistence."/nix/persist".directories = [{ directory = "/var/lib/private"; mode = "0755"; }];
}
