# Impermanence accepts any string as a mode and the generator passes it through; the binary must
# refuse the manifest (exit 3) rather than guess. "u=rwz" is not a mode `mkdir --mode` accepts.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  environment.persistence."/persist".directories = [
    "/var/lib/nixos"
    { directory = "/var/lib/broken"; mode = "u=rwz"; }
  ];
}
