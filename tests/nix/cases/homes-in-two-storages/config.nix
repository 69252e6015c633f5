# One user with entries in two storages: impermanence creates the home, user-owned 0700, in each
# storage, so the manifest declares /home/alice once per storage with identical attributes.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  fileSystems."/nix" = { device = "/dev/vda3"; fsType = "ext4"; };
  users.users.alice = { isNormalUser = true; uid = 1000; };
  environment.persistence."/persist".users.alice.directories = [{ directory = ".ssh"; mode = "0700"; }];
  environment.persistence."/nix/persist".users.alice.directories = [ "Downloads" ];
}
