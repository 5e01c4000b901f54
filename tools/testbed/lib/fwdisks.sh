# Bootable test disks for firmware boot (sourced by tools/testbed/run, after common.sh and
# initramfs.sh). Each holds the level-2 guest kernel, the guest's base initramfs and a
# second archive with the fixed firmware guest script (l2/fw-guest.sh), in a FAT partition:
#
#   fw-mbr.img: MBR, one bootable FAT16 partition with SYSLINUX (legacy BIOS: SeaBIOS);
#   fw-gpt.img: GPT, one EFI system partition with a standalone GRUB as \EFI\BOOT\BOOTX64.EFI
#               (UEFI: OVMF).
#
# The bootloaders pass the kernel `fwdisk=mbr|gpt` on top of the usual guest command line, so
# the guest can tell it was booted from the disk. Everything comes from Debian's packages
# (syslinux, syslinux-common, grub-efi-amd64-bin, grub2-common, mtools, dosfstools, fdisk).
# shellcheck shell=bash  # sourced by the bash script tools/testbed/run

FW_DISK_MIB=64
FW_PART_START=2048
FW_CMDLINE="console=ttyS0 quiet panic=-1 no_timer_check"

# fw_guest_archives DIR: DIR/base.cpio and DIR/guest.cpio for the disks.
fw_guest_archives() {
    local dir=$1 d
    build_l2_base "$dir/base.cpio"
    d=$(mktemp -d)
    install -m 644 "$TB_ROOT/l2/fw-guest.sh" "$d/guest.sh"
    make_cpio "$d" "$dir/guest.cpio"
    rm -rf "$d"
}

# fw_fat IMG: formats the partition at FW_PART_START and prints the mtools image spec.
fw_fat() {
    local img=$1 off=$((FW_PART_START * 512)) kib
    kib=$(((FW_DISK_MIB * 1024 * 1024 - off) / 1024))
    mkfs.vfat -F 16 -n VIADUCT --offset "$FW_PART_START" "$img" "$kib" >/dev/null
    echo "$img@@$off"
}

# make_fw_mbr_disk IMG ARCHIVE_DIR
make_fw_mbr_disk() {
    local img=$1 dir=$2 fat cfg
    rm -f "$img"; truncate -s ${FW_DISK_MIB}M "$img"
    printf 'label: dos\nstart=%s, type=6, bootable\n' "$FW_PART_START" | sfdisk -q "$img"
    fat=$(fw_fat "$img")
    cfg=$(mktemp)
    cat >"$cfg" <<CFG
SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /base.cpio,/guest.cpio
  APPEND $FW_CMDLINE fwdisk=mbr
CFG
    mcopy -i "$fat" "$TB_KDIR/vmlinuz" ::/vmlinuz
    mcopy -i "$fat" "$dir/base.cpio" ::/base.cpio
    mcopy -i "$fat" "$dir/guest.cpio" ::/guest.cpio
    mcopy -i "$fat" "$cfg" ::/syslinux.cfg
    rm -f "$cfg"
    syslinux --offset $((FW_PART_START * 512)) --install "$img"
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
}

# make_fw_gpt_disk IMG ARCHIVE_DIR
make_fw_gpt_disk() {
    local img=$1 dir=$2 fat cfg efi
    rm -f "$img"; truncate -s ${FW_DISK_MIB}M "$img"
    printf 'label: gpt\nstart=%s, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' "$FW_PART_START" | sfdisk -q "$img"
    fat=$(fw_fat "$img")
    cfg=$(mktemp); efi=$(mktemp)
    cat >"$cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_output serial console
search --no-floppy --set=root --file /vmlinuz
linux /vmlinuz $FW_CMDLINE fwdisk=gpt
initrd /base.cpio /guest.cpio
boot
CFG
    grub-mkstandalone -O x86_64-efi -o "$efi" "boot/grub/grub.cfg=$cfg"
    mmd -i "$fat" ::/EFI ::/EFI/BOOT
    mcopy -i "$fat" "$efi" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$fat" "$TB_KDIR/vmlinuz" ::/vmlinuz
    mcopy -i "$fat" "$dir/base.cpio" ::/base.cpio
    mcopy -i "$fat" "$dir/guest.cpio" ::/guest.cpio
    rm -f "$cfg" "$efi"
}

# make_fw_disks OUT: both disks into OUT (fw-mbr.img, fw-gpt.img).
make_fw_disks() {
    local out=$1 dir
    dir=$(mktemp -d)
    fw_guest_archives "$dir"
    make_fw_mbr_disk "$out/fw-mbr.img" "$dir"
    make_fw_gpt_disk "$out/fw-gpt.img" "$dir"
    rm -rf "$dir"
}
