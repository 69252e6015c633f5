# shellcheck shell=bash disable=SC2034,SC2154  # scenario_dir comes from lib/scenario.sh
description="power cut in the middle of apply (thousands of directories, non-root owners, deferred owners), then again between apply and finish: the next boot leaves the volume exactly as declared, with no leftover"
# The manifest: 2000 entries (4120 directories with parents, both sides), every 16th owned by
# "late", a name that only the stand-in activation creates. Sized so that apply takes seconds
# under TCG and the cut lands inside it.
entries=2000
prepare() { "$BOOT_DIR/manifests/gen-power-cut" "$entries" > "$scenario_dir/manifest.json"; }
manifest=$scenario_dir/manifest.json
units+=(fake-nixos-activation power-cut)
files=(
    "guest/create-users:/usr/lib/pp-test/create-users"
    "guest/power-cut:/usr/lib/pp-test/power-cut"
    "guest/check-clean:/usr/lib/pp-test/check-clean"
)
# Boot 1: the power goes once a third of the entries' sources exist. Boot 2: after apply, before
# the users exist and finish runs. Boot 3 (judged): a full boot.
cut_boots=("mid-apply:some" "before-finish:all")
guest_env=("PPT_CUT_AT=$((entries / 3))")
timeout=420
report_units+=(initrd-nixos-activation.service pp-test-check.service)
expect_units=(
    "persist-prep.service active=active result=success status=0"
    "initrd-nixos-activation.service active=active result=success"
    "pp-test-check.service active=active result=success"
)
expect_order=("initrd-nixos-activation.service done < pp-test-check.service starting")
expect_summary="failed=0 drift=0"
expect_markers=("check-rc=0")
# Judged on the images after boot 3: every declared directory and parent on both sides with its
# owner and mode ("late" as activation made it), and no other name anywhere in them.
tree_images=("persist:/persist" "root:/")
tree_names=("late=1500:1500")
