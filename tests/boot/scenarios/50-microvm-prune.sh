# shellcheck shell=bash disable=SC2034
description="microvm host mode on a real manager: a bad --purge-state stops nothing; without --stop a running orphan is kept; prune --stop stops, resets and forgets it, deletes its tap and purged state, keeps declared and imperative VMs"
units=(report persist-volume microvm)
# The stand-in template goes to the vendor directory: prune only changes writable directories.
files=(
    "fixtures/microvm/microvm@.service:/usr/lib/systemd/system/microvm@.service"
    "guest/microvm-prune:/usr/lib/pp-test/microvm-prune"
)
# ip(8) and the tun driver, to give the orphan a real tap interface.
dracut_settings=('install_items+=" /usr/sbin/ip "' 'add_drivers+=" tun "')
expect_units=("pp-test-microvm.service active=active result=success status=0")
report_units=(pp-test-microvm.service)
expect_markers=(
    "microvm setup tap=created"
    "microvm before unit=microvm@old.service active=active load=loaded listed=1"
    "microvm before unit=microvm@imp.service active=active load=loaded listed=1"
    "microvm before unit=microvm@web.service active=active load=loaded listed=1"
    "microvm before unit=microvm@gone.service active=failed load=loaded listed=1"
    "microvm before unit=microvm-tap-interfaces@old.service active=active load=not-found listed=1"
    "microvm abort exit=2"
    "microvm abort-out error: --purge-state web: VM 'web' is declared .*Nothing was changed"
    "microvm after-abort unit=microvm@old.service active=active load=loaded listed=1"
    "microvm nostop exit=0"
    "microvm nostop-out plan: 1 steps"
    "microvm nostop-out warning: VM 'old' is orphaned but running \(microvm@old\.service, microvm-tap-interfaces@old\.service\).*--stop"
    "microvm nostop-out done +reset-failed +microvm@gone\.service +\[vm gone\]"
    "microvm after-nostop unit=microvm@old.service active=active load=loaded listed=1"
    "microvm after-nostop unit=microvm@gone.service active=inactive load=loaded listed=0"
    "microvm after-nostop path=/run/systemd/system/microvm@old.service.d exists=yes"
    "microvm prune exit=0"
    "microvm out plan: 10 steps"
    "microvm out done +stop +microvm@old\.service +\[vm old\]"
    "microvm out done +stop +microvm-tap-interfaces@old\.service +\[vm old\]( .*)?"
    "microvm out done +reset-failed +microvm-tap-interfaces@old\.service +\[vm old\]( .*)?"
    "microvm out done +delete-interface +vm-old0 +\[vm old\]"
    "microvm out done +reset-failed +microvm@old\.service +\[vm old\]( .*)?"
    "microvm out done +remove-drop-in +/run/systemd/system/microvm@old\.service\.d +\[vm old\]"
    "microvm out done +remove-gc-root +/nix/var/nix/gcroots/microvm/old +\[vm old\]"
    "microvm out done +remove-gc-root +/nix/var/nix/gcroots/microvm/booted-old +\[vm old\]"
    "microvm out done +purge-state +/var/lib/microvms/old +\[vm old\]"
    "microvm out done +daemon-reload +"
    "microvm out prune: summary: 10 done, 0 failed, 0 skipped in .* ms"
    "microvm after unit=microvm@old.service active=inactive load=loaded listed=0"
    "microvm after unit=microvm@gone.service active=inactive load=loaded listed=0"
    "microvm after unit=microvm-tap-interfaces@old.service active=inactive load=not-found listed=0"
    "microvm after unit=microvm@imp.service active=active load=loaded listed=1"
    "microvm after unit=microvm@web.service active=active load=loaded listed=1"
    "microvm path=/run/systemd/system/microvm@old.service.d exists=no"
    "microvm path=/run/systemd/system/microvm@imp.service.d exists=yes"
    "microvm path=/nix/var/nix/gcroots/microvm/old exists=no"
    "microvm path=/nix/var/nix/gcroots/microvm/booted-old exists=no"
    "microvm path=/var/lib/microvms/old exists=no"
    "microvm path=/var/lib/microvms/imp exists=yes"
    "microvm path=/usr/lib/systemd/system/microvm@.service exists=yes"
    "microvm tap vm-old0 exists=no"
    "microvm dropins old="
    "microvm second exit=0 plan: 0 steps"
)
expect_console=('!Ordering cycle|ordering cycle')
