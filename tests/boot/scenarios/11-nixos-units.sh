# shellcheck shell=bash disable=SC2034,SC2154  # scenario_dir comes from lib/scenario.sh
description="the units NixOS renders for a real impermanence configuration (kit evaluation): persist-prep, finish, impermanence's initrd bind mounts, and an activation stand-in ordered exactly as NixOS >= 24.11 orders initrd-nixos-activation.service; a first boot with an owner only activation creates ends with no failed unit, no ordering cycle, and the owner given before switch-root"
# The kit (../shared/nixos-kit, or PERSIST_PREP_NIXOS_KIT) and nix-instantiate render the units.
prepare() {
    local kit=${PERSIST_PREP_NIXOS_KIT:-$REPO_DIR/../shared/nixos-kit}
    local out=$scenario_dir/rendered
    [[ -f $kit/nixpkgs/nixos/modules/system/boot/systemd/initrd.nix ]] ||
        { echo "needs the nixos-kit at $kit (set PERSIST_PREP_NIXOS_KIT)"; return 1; }
    command -v nix-instantiate > /dev/null || { echo "needs nix-instantiate (tests/setup)"; return 1; }
    mkdir -p "$out/units"
    nix-instantiate --eval --strict --json -E "import $BOOT_DIR/nixos/render.nix { kit = $(realpath "$kit"); }" \
        > "$out/render.json" 2> "$out/render.log" || { cat "$out/render.log"; return 1; }
    python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(f"{out}/render.json"))
assert r["assertions"] == [], r["assertions"]
json.dump(r["manifest"], open(f"{out}/manifest.json", "w"), indent=2)
for name, u in r["units"].items():
    text = u["text"]
    if name == "initrd-nixos-activation.service":
        # NixOS's [Unit] exactly; the stand-in's [Service] creates the users.
        text = text[: text.index("[Service]")] + (
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/lib/pp-test/create-users\n"
        )
    if u["requiredBy"]:
        # NixOS links these itself; the harness enables from [Install].
        text += "\n[Install]\nRequiredBy=" + " ".join(u["requiredBy"]) + "\n"
    open(f"{out}/units/{name}", "w").write(text)
# The dracut base initrd's storage drop-in is for its own manifest: masked by an empty one.
os.makedirs(f"{out}/units/persist-prep.service.d")
open(f"{out}/units/persist-prep.service.d/50-storages.conf", "w").write("")
PY
}
manifest=$scenario_dir/rendered/manifest.json
units=(report persist-volume "$scenario_dir/rendered/units")
files=("guest/create-users:/usr/lib/pp-test/create-users")
report_units+=(initrd-nixos-activation.service sysroot-var-log.mount sysroot-var-lib-nixos.mount)
stat_paths=(/sysroot/var/log /sysroot/var/lib/nixos /sysroot/persist/var/lib/late /run/persist-prep/deferred.json)
expect_units=(
    "persist-prep.service active=active result=success status=0"
    "initrd-nixos-activation.service active=active result=success"
    "persist-prep-finish.service active=active result=success status=0"
    "sysroot-var-log.mount active=active result=success"
    "sysroot-var-lib-nixos.mount active=active result=success"
)
expect_order=(
    "persist-prep.service done < sysroot-var-log.mount starting"
    "persist-prep.service done < sysroot-var-lib-nixos.mount starting"
    "initrd-nixos-activation.service done < persist-prep-finish.service starting"
)
expect_summary="deferred=1 failed=0"
expect_markers=("deferred-record present=no" "failed-units count=0" "journal-cycles count=0")
expect_stats=(
    "/sysroot/var/log mount=yes type=directory mode=750 uid=0 gid=0"
    "/sysroot/var/lib/nixos mount=yes type=directory mode=755 uid=0 gid=0"
    "/sysroot/persist/var/lib/late mount=no type=directory mode=750 uid=1500 gid=1500"
    "/run/persist-prep/deferred.json exists=no"
)
expect_disk=(
    "persist /var/lib/late type=directory mode=750 uid=1500 gid=1500"
    "persist /var/log type=directory mode=750 uid=0 gid=0"
)
expect_console=('persist-prep\[[0-9]+\]: gave /sysroot/persist/var/lib/late its owner late:late \(1500:1500\)')
