# Several storages: a disabled one, an entry that overrides its persistentStoragePath, a file whose
# parent directory has its own mode, and names with no static id (left for the binary).
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "btrfs"; neededForBoot = true; };
  fileSystems."/scratch" = { device = "/dev/vda3"; fsType = "xfs"; neededForBoot = true; };
  fileSystems."/scratch/fast" = { device = "/dev/nvme0n1p1"; fsType = "ext4"; neededForBoot = true; };
  environment.persistence."/persist" = {
    directories = [
      { directory = "/var/lib/postgresql"; user = "postgres"; group = "postgres"; mode = "0750"; }
      # Declared with its own mode; the file's parentDirectory below must not override it.
      { directory = "/etc/wireguard"; mode = "0700"; }
      { directory = "/var/cache/builds"; persistentStoragePath = "/scratch/fast/cache"; user = "builder"; group = "builder"; mode = "0700"; }
    ];
    files = [
      { file = "/etc/nix/id_rsa"; parentDirectory = { mode = "u=rwx,g=,o="; }; }
      { file = "/etc/wireguard/wg0.key"; parentDirectory = { mode = "0750"; }; }
      { file = "/var/lib/tor/keys/secret"; parentDirectory = { user = "tor"; group = "tor"; mode = "0700"; }; }
    ];
  };
  environment.persistence."/old" = {
    enable = false;
    directories = [ "/var/lib/ancient" ];
  };
  environment.persistence."/scratch" = {
    directories = [{ directory = "/var/tmp"; mode = "1777"; }];
  };
}
