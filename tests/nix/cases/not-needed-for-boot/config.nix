# Misconfigurations the module must refuse at build time, in a configuration NixOS itself accepts
# (persist-prep's own storages, which impermanence does not check): a storage on a file system the
# initrd does not mount, and one directory declared in two storages with different modes.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; };
  fileSystems."/nix" = { device = "/dev/vda3"; fsType = "ext4"; };
  boot.initrd.persist-prep.storages."/persist".directories = [{ path = "/var/lib/private"; mode = "0700"; }];
  boot.initrd.persist-prep.storages."/nix/persist".directories = [{ path = "/var/lib/private"; mode = "0755"; }];
}
