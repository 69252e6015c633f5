# shellcheck shell=bash disable=SC2034
description="control: scenario 10 with persist-prep masked must FAIL, proving its checks can fail"
control_of=10-nixos-anywhere
control_cmdline="rd.systemd.mask=persist-prep.service"
