{ module, impermanence }:
{
  name = "persist-prep-first-boot";

  nodes.machine = { lib, pkgs, ... }: {
    imports = [ (import ./common.nix { inherit module impermanence; }) ];
    virtualisation.emptyDiskImages = [{ size = 256; driveConfig.deviceExtraOpts.serial = "persist"; }];
    # The blank disk gets a file system just before its first mount; persist-prep then meets an
    # empty persistent volume, the case that goes wrong without it.
    boot.initrd.systemd.services.format-persist = {
      requiredBy = [ "sysroot-persist.mount" ];
      before = [ "sysroot-persist.mount" ];
      requires = [ "dev-disk-by\\x2did-virtio\\x2dpersist.device" ];
      after = [ "dev-disk-by\\x2did-virtio\\x2dpersist.device" ];
      unitConfig.DefaultDependencies = false;
      serviceConfig.Type = "oneshot";
      script = "blkid /dev/disk/by-id/virtio-persist || mkfs.ext4 -q /dev/disk/by-id/virtio-persist";
    };
    boot.initrd.systemd.initrdBin = [ pkgs.e2fsprogs pkgs.util-linux ];
  };

  testScript = ''
    def attrs(path):
        return machine.succeed(f"stat -c '%U:%G %a' {path}").strip()

    def expect(path, want):
        got = attrs(path)
        assert got == want, f"{path}: {got}, expected {want}"

    def check_tree():
        # On the persistent volume: declared owners and modes, not systemd's root:root 0755.
        expect("/persist/var/lib/private", "root:root 700")
        expect("/persist/var/lib/svc", "svc:svc 750")
        expect("/persist/home/alice", "alice:users 700")
        expect("/persist/home/alice/.ssh", "alice:users 700")
        # Through the bind mounts, as services see them.
        expect("/var/lib/private", "root:root 700")
        expect("/var/lib/svc", "svc:svc 750")
        expect("/home/alice/.ssh", "alice:users 700")
        machine.succeed("findmnt /var/lib/svc")

    machine.start()
    machine.wait_for_unit("multi-user.target")
    check_tree()

    log = machine.succeed("journalctl -b -o cat -u persist-prep.service")
    assert "summary:" in log and " 0 failed" in log, log
    # persist-prep finished before the first bind mount started.
    order = machine.succeed(
        "journalctl -b -o short-monotonic _PID=1 "
        "| grep -E 'Finished .*persist-prep\\)|Mounting .*sysroot/var/lib' | head -n 1"
    )
    assert "persist-prep" in order, order
    # The dynamic owner was deferred in the initrd and finished once users existed.
    machine.succeed("journalctl -b -u persist-prep-finish.service | grep -q Finished")
    machine.fail("test -e /run/persist-prep/deferred.json")

    with subtest("second boot changes nothing"):
        machine.shutdown()
        machine.start()
        machine.wait_for_unit("multi-user.target")
        check_tree()
        log = machine.succeed("journalctl -b -o cat -u persist-prep.service")
        assert " 0 created" in log and " 0 drift" in log and " 0 failed" in log, log
        # Nothing was deferred this time: the persisted /var/lib/nixos/uid-map resolved svc.
        machine.fail("journalctl -b -u persist-prep-finish.service | grep -q Finished")
  '';
}
