# Home directories: storage under /nix (implicitly needed for boot), user entries relative to the
# home, a user with a static uid and one without, files directly in a home and deeper.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/nix" = { device = "/dev/vda2"; fsType = "ext4"; };
  users.users.alice = { isNormalUser = true; uid = 1000; };
  users.users.bob = { isNormalUser = true; home = "/srv/home/bob"; };
  environment.persistence."/nix/persist" = {
    directories = [ "/var/lib/nixos" ];
    users.alice = {
      directories = [
        { directory = ".ssh"; mode = "0700"; }
        { directory = "Documents/projects"; mode = "u=rwx,g=rx,o=rx"; }
        "VirtualBox VMs"
      ];
      # The parent of .netrc is the home itself, which keeps its 0700.
      files = [ ".screenrc" ".config/app/token" { file = ".netrc"; parentDirectory.mode = "0700"; } ];
    };
    users.bob.files = [{ file = ".gnupg/pubring.kbx"; parentDirectory.mode = "0700"; }];
  };
}
