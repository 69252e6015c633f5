# shellcheck shell=bash disable=SC2034
description="control: scenario 01 with persist-prep masked must FAIL, proving the checks can fail"
control_of=01-first-boot
control_cmdline="rd.systemd.mask=persist-prep.service"
