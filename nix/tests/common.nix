# The impermanent machine the VM tests share: root on tmpfs, one persistent ext4 disk mounted at
# /persist in the initrd, impermanence plus persist-prep.
{ module, impermanence }:
{ lib, ... }:
{
  imports = [ module "${impermanence}/nixos.nix" ];

  boot.initrd.systemd.enable = true;
  boot.initrd.persist-prep.enable = true;
  boot.initrd.persist-prep.logLevel = "debug";

  # No root disk: / is a tmpfs, so everything not persisted is gone on the next boot.
  virtualisation.diskImage = null;
  virtualisation.fileSystems."/persist" = {
    # The test disk carries this serial (first-boot.nix); in missing-mount.nix there is none.
    device = "/dev/disk/by-id/virtio-persist";
    fsType = "ext4";
    neededForBoot = true;
  };

  users.mutableUsers = false;
  users.users.alice = { isNormalUser = true; uid = 1000; };
  # No static id: the initrd cannot resolve it on a fresh root, so persist-prep defers it.
  users.users.svc = { isSystemUser = true; group = "svc"; };
  users.groups.svc = { };

  environment.persistence."/persist" = {
    hideMounts = true;
    directories = [
      "/var/lib/nixos"
      "/var/log"
      { directory = "/var/lib/private"; mode = "0700"; }
      { directory = "/var/lib/svc"; user = "svc"; group = "svc"; mode = "u=rwx,g=rx,o="; }
    ];
    files = [ "/etc/machine-id" ];
    users.alice.directories = [{ directory = ".ssh"; mode = "0700"; }];
  };
}
