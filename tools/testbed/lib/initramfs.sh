# Building the cpio archives (sourced by tools/testbed/run, after common.sh).
#
# Level 1's initrd is several uncompressed "newc" cpio archives concatenated: the kernel
# unpacks them in order. Uncompressed because L1 runs under TCG, where gunzip of ~100 MiB costs
# more than copying it. The base archive (busybox, modules, tools, guest kernel and guest base
# initramfs) and the QEMU archive are cached by a hash of their inputs; only a small per-run
# archive (scenarios, binaries under test) is rebuilt each time.
# shellcheck shell=bash  # sourced by the bash scripts tools/testbed/run and setup

L1_MODULES="kvm-amd vfio-pci vfio_iommu_type1 igb igbvf nvme e1000e virtio_net virtio_pci tun pci-pf-stub"
L2_MODULES="igbvf igb nvme e1000e e1000 virtio_pci virtio_net virtio_blk virtio_rng virtio_console ahci sd_mod button evdev"

# copy_file SRC DEST_ROOT: copy SRC to the same absolute path under DEST_ROOT.
copy_file() {
    mkdir -p "$2$(dirname "$1")"
    cp -L "$1" "$2$1"
}

# copy_elf BIN DEST_ROOT [AS]: copy a dynamic executable with its shared libraries and
# loader. AS is the path inside DEST_ROOT (default: BIN's own path).
copy_elf() {
    local bin=$1 root=$2 as=${3:-$1} lib
    mkdir -p "$root$(dirname "$as")"
    cp -L "$bin" "$root$as"
    for lib in $(ldd "$bin" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}'); do
        [ -e "$root$lib" ] || copy_file "$lib" "$root"
    done
}

# copy_modules DEST_ROOT MODULE...: the modules with their dependency chains, then depmod.
copy_modules() {
    local root=$1 ver m f; shift
    ver=$(kernel_version)
    for m in "$@"; do
        for f in $(modprobe -d "$TB_KDIR/root" -S "$ver" --show-depends "$m" | awk '$1=="insmod" {print $2}'); do
            local rel=${f#"$TB_KDIR/root"}
            [ -e "$root$rel" ] || { mkdir -p "$root$(dirname "$rel")"; cp "$f" "$root$rel"; }
        done
    done
    cp "$TB_KDIR/root/lib/modules/$ver"/modules.{builtin,builtin.modinfo,order} \
        "$root/lib/modules/$ver/" 2>/dev/null || true
    depmod -b "$root" "$ver"
}

# busybox_root DEST_ROOT: a static busybox; its applet links are made at boot.
busybox_root() {
    mkdir -p "$1"/{bin,sbin,dev,proc,sys,tmp,run,etc,usr/bin,usr/sbin,usr/share/misc}
    cp /bin/busybox "$1/bin/busybox"
    ln -sf busybox "$1/bin/sh"
}

# make_cpio DIR OUT: an uncompressed newc archive of DIR, owned by root.
make_cpio() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2.tmp"
    mv "$2.tmp" "$2"
}

inputs_hash() {
    { for f in "$@"; do
        if [ -d "$f" ]; then find "$f" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        elif [ -e "$f" ]; then sha256sum "$f"; else echo "$f"; fi
      done; } | sha256sum | cut -c1-16
}

# build_l2_base OUT: the guest's initramfs base: busybox, guest modules, lspci, generic /init.
build_l2_base() {
    local out=$1 d; d=$(mktemp -d)
    busybox_root "$d"
    copy_modules "$d" $L2_MODULES
    copy_elf /usr/bin/lspci "$d"
    cp /usr/share/misc/pci.ids "$d/usr/share/misc/" 2>/dev/null || true
    install -m 755 "$TB_ROOT/l2/init" "$d/init"
    install -m 644 "$TB_ROOT/l2/guest.sh" "$d/guest-lib.sh"
    make_cpio "$d" "$out"
    rm -rf "$d"
}

# l1_base_archive: prints the path of the cached L1 base archive, building it if needed.
l1_base_archive() {
    local ver h out d
    ver=$(kernel_version)
    h=$(inputs_hash "$TB_ROOT/lib/initramfs.sh" "$TB_ROOT/l2" /bin/busybox /usr/bin/lspci /usr/sbin/nvme /usr/bin/curl "$TB_KDIR/vmlinuz" "$ver")
    out="$TB_CACHE/initramfs/l1-base-$h.cpio"
    if [ ! -f "$out" ]; then
        log "building the L1 base archive ($h)"
        mkdir -p "$TB_CACHE/initramfs"
        rm -f "$TB_CACHE"/initramfs/l1-base-*.cpio
        d=$(mktemp -d)
        busybox_root "$d"
        copy_modules "$d" $L1_MODULES
        copy_elf /usr/bin/lspci "$d"
        copy_elf /usr/sbin/nvme "$d"
        # curl talks to viaduct's API socket (scenario api).
        copy_elf /usr/bin/curl "$d"
        cp /usr/share/misc/pci.ids "$d/usr/share/misc/" 2>/dev/null || true
        mkdir -p "$d/tb/l2"
        cp "$TB_KDIR/vmlinuz" "$d/tb/l2/vmlinuz"
        build_l2_base "$d/tb/l2/base.cpio"
        make_cpio "$d" "$out"
        rm -rf "$d"
    fi
    echo "$out"
}

# l1_qemu_archive: QEMU as the reference L2 VMM (binary, libraries, firmware), cached.
l1_qemu_archive() {
    local q h out d
    q=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 missing: run tools/testbed/setup"
    h=$(inputs_hash "$TB_ROOT/lib/initramfs.sh" "$q" /usr/share/qemu /usr/share/seabios)
    out="$TB_CACHE/initramfs/l1-qemu-$h.cpio"
    if [ ! -f "$out" ]; then
        log "building the L1 QEMU archive ($h)"
        mkdir -p "$TB_CACHE/initramfs"
        rm -f "$TB_CACHE"/initramfs/l1-qemu-*.cpio
        d=$(mktemp -d)
        copy_elf "$q" "$d" /usr/bin/qemu-system-x86_64
        mkdir -p "$d/usr/share"
        cp -rL /usr/share/qemu "$d/usr/share/qemu"
        cp -rL /usr/share/seabios "$d/usr/share/seabios"
        make_cpio "$d" "$out"
        rm -rf "$d"
    fi
    echo "$out"
}

# The firmware files viaduct's --firmware scenarios use, at their Debian paths, cached.
FW_FILES="/usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin /usr/share/ovmf/OVMF.fd
/usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd /usr/share/OVMF/OVMF_CODE_4M.secboot.fd"

# l1_firmware_archive: prints the path of the cached firmware archive, building it if needed.
l1_firmware_archive() {
    local h out d f
    for f in $FW_FILES; do [ -e "$f" ] || die "$f missing: run tools/testbed/setup"; done
    # shellcheck disable=SC2086 # a list of paths
    h=$(inputs_hash "$TB_ROOT/lib/initramfs.sh" $FW_FILES)
    out="$TB_CACHE/initramfs/l1-firmware-$h.cpio"
    if [ ! -f "$out" ]; then
        log "building the L1 firmware archive ($h)"
        mkdir -p "$TB_CACHE/initramfs"
        rm -f "$TB_CACHE"/initramfs/l1-firmware-*.cpio
        d=$(mktemp -d)
        for f in $FW_FILES; do copy_file "$f" "$d"; done
        make_cpio "$d" "$out"
        rm -rf "$d"
    fi
    echo "$out"
}
