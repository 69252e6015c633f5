{ module, impermanence }:
{
  name = "persist-prep-missing-mount";

  nodes.machine = { lib, ... }: {
    imports = [ (import ./common.nix { inherit module impermanence; }) ];
    # No disk carries the serial: the persistent volume is missing.
    virtualisation.fileSystems."/persist".options = [ "x-systemd.device-timeout=5s" ];
    boot.initrd.systemd.emergencyAccess = true;
  };

  testScript = ''
    machine.start(allow_reboot=False)
    # The storage mount fails, initrd-fs.target fails, and the boot stops in the emergency shell.
    machine.wait_for_console_text("emergency mode")
    machine.send_console("\n")
    machine.send_console("persist-prep check; echo CHECK-EXIT=$?\n")
    machine.wait_for_console_text("CHECK-EXIT=1")
    machine.wait_for_console_text("neededForBoot")
    # Nothing was created on the ephemeral root in place of the missing volume.
    machine.send_console("test -e /sysroot/persist/var/lib/private && echo LEAKED || echo NOTHING-CREATED\n")
    machine.wait_for_console_text("NOTHING-CREATED")
  '';
}
