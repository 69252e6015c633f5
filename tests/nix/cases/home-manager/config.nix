# Home Manager users' paths through impermanence's Home Manager module
# (home-manager.users.<name>.home.persistence."<storage>"), relative to home.homeDirectory: a user
# with a static uid who also has NixOS-side entries in the same storage, a user with a home
# outside /home, a group of their own and a storage of its own, and a disabled storage.
{
  fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
  fileSystems."/persist" = { device = "/dev/vda2"; fsType = "ext4"; neededForBoot = true; };
  users.users.alice = { isNormalUser = true; uid = 1000; };
  users.users.carol = { isNormalUser = true; home = "/srv/carol"; group = "staff"; };
  users.groups.staff.gid = 50;
  environment.persistence."/persist" = {
    directories = [ "/var/lib/nixos" ];
    users.alice.directories = [ "Music" ];
  };
  home-manager.users.alice.home.persistence."/persist" = {
    directories = [
      "Documents"
      { directory = ".ssh"; mode = "0700"; }
      ".local/share/keyrings"
    ];
    files = [
      ".bash_history"
      { file = ".config/gh/hosts.yml"; parentDirectory.mode = "0700"; }
    ];
  };
  home-manager.users.alice.home.persistence."/scratch" = {
    enable = false;
    directories = [ ".cache" ];
  };
  home-manager.users.carol.home.persistence."/persist/carol" = {
    directories = [{ directory = ".gnupg"; mode = "0700"; }];
  };
}
