# tb-description: viaduct boots Debian's SeaBIOS on its q35 platform: a SYSLINUX/MBR disk from virtio-blk and from an assigned NVMe, and a kernel given with --kernel through the firmware; the guests see viaduct's SMBIOS, ACPI and chipset and power off cleanly
# tb-timeout: 720
# tb-needs: firmware
# tb-devices: fw-disks
# tb-run: seabios-virtio seabios-nvme seabios-kernel
# tb-check: firmware-files mbr-disk mbr-blockdev vfio-bind
# tb-check: seabios-virtio/booted-from-disk seabios-nvme/booted-from-disk seabios-kernel/kernel-cmdline
# tb-check: seabios-virtio/unexpected seabios-nvme/unexpected
# The MBR disk (lib/fwdisks.sh) is level 0's fw-mbr.img behind an NVMe controller (serial
# fwmbr001): first level 1's block device of it goes to the guest as a virtio-blk disk,
# then the controller itself is assigned. Its bootloader's guest script (l2/fw-guest.sh)
# reports what the firmware handed over; tests/firmware.rs asserts on it.
# shellcheck shell=dash  # busybox ash in level 1/2

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
bios=/usr/share/seabios/bios-256k.bin
[ -f $bios ] || { tb_check firmware-files fail "$bios missing in level 1"; exit 0; }
mbr=$(tb_nvme_by_serial fwmbr001) && tb_check mbr-disk pass "$mbr" || { tb_check mbr-disk fail "no NVMe with serial fwmbr001"; exit 0; }
tb_value mbr_bdf "$mbr"
ctrl=$(tb_nvme_ctrl "$mbr")
dev=/dev/${ctrl}n1
[ -b "$dev" ] && tb_check mbr-blockdev pass "$dev" || tb_check mbr-blockdev fail "no $dev"
tb_value mbr_md5_before "$(md5sum <"$dev" | cut -d' ' -f1)"

# Disk boots run the script on the disk; tb_run_l2 still wants one for its initramfs.
echo 'g_check unexpected fail "the disk guest script runs from the disk"' >/tmp/fw-unused.sh

# 1. SeaBIOS -> virtio-blk (level 1's block device of the NVMe namespace).
tb_run_l2 seabios-virtio 300 /tmp/fw-unused.sh -- viaduct --firmware $bios --memory 256M \
    --disk path=$dev,readonly=on --log-level info

# 2. SeaBIOS -> the assigned NVMe controller (its backing image on level 0 is the same disk).
if g=$(tb_bind_vfio "$mbr"); then
    tb_check vfio-bind pass "group $g"
    tb_run_l2 seabios-nvme 300 /tmp/fw-unused.sh -- viaduct --firmware $bios --memory 256M \
        --device "$mbr" --log-level info
    tb_unbind "$mbr"
else
    tb_check vfio-bind fail "driver $(tb_driver "$mbr")"
fi
tb_bind nvme "$mbr"

# 3. --firmware + --kernel: SeaBIOS boots the kernel through fw_cfg (QEMU's linuxboot ROM).
cat >/tmp/fw-kernel-guest.sh <<'GUEST'
g_value cmdline "$(cat /proc/cmdline)"
grep -q 'fwkernel=1' /proc/cmdline && g_check kernel-cmdline pass "$(cat /proc/cmdline)" || g_check kernel-cmdline fail "$(cat /proc/cmdline)"
g_value dmi_sys_vendor "$(cat /sys/class/dmi/id/sys_vendor 2>/dev/null)"
g_value dmi_bios_vendor "$(cat /sys/class/dmi/id/bios_vendor 2>/dev/null)"
g_value host_bridge "$(cat /sys/bus/pci/devices/0000:00:00.0/vendor):$(cat /sys/bus/pci/devices/0000:00:00.0/device)"
g_value boot_loader_type "$(dmesg | grep -m1 -o 'loader type.*' || true)"
[ -d /sys/firmware/efi ] && g_value firmware uefi || g_value firmware bios
true
GUEST
tb_run_l2 seabios-kernel 300 /tmp/fw-kernel-guest.sh -- viaduct --firmware $bios --kernel @KERNEL@ \
    --initramfs @INITRD@ --cmdline "@CMDLINE@ fwkernel=1" --memory 256M --log-level info

tb_value mbr_md5_after "$(md5sum <"$dev" | cut -d' ' -f1)"
true
