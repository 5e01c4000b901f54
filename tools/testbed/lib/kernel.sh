# shellcheck shell=bash
# Level-1 kernels (sourced by setup and run, after common.sh).
#
#   debian    Debian's packaged kernel ($TB_KDIR, from tools/testbed/setup): modules, no iommufd.
#   iommufd   built here from Debian's linux-source-6.12 with l1/kernel-iommufd.config on top of
#             `allnoconfig`: everything built in, with IOMMUFD and VFIO_DEVICE_CDEV. Cached in
#             $TB_CACHE/l1-kernel/iommufd-KEY/, KEY a hash of the config fragment, the recipe
#             version below and the source package's version: a change to any of them builds a
#             new one.

L1_KERNELS="debian iommufd"
# Raise it when l1_kernel_build changes what it makes.
L1_KBUILD_RECIPE=1
L1_KSRC_PKG=linux-source-6.12
L1_KSRC_TARBALL=/usr/src/linux-source-6.12.tar.xz
# What building needs besides the compiler (setup installs these).
L1_KBUILD_PKGS="$L1_KSRC_PKG bc bison flex libelf-dev make gcc"

l1_kernel_valid() {
    case " $L1_KERNELS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

# l1_kernel_key: the cache key of the iommufd kernel (empty when the source is not installed).
l1_kernel_key() {
    local v
    v=$(dpkg-query -W -f='${Version}' "$L1_KSRC_PKG" 2>/dev/null) || return 0
    [ -n "$v" ] && [ -f "$L1_KSRC_TARBALL" ] || return 0
    { sha256sum <"$TB_ROOT/l1/kernel-iommufd.config"
      echo "recipe $L1_KBUILD_RECIPE $L1_KSRC_PKG=$v"; } | sha256sum | cut -c1-16
}

# l1_kernel_image NAME: prints the bzImage of level-1 kernel NAME, building the iommufd one
# when it is not cached yet (which takes minutes; dies with what to do when it cannot).
l1_kernel_image() {
    local key dir
    case "$1" in
    debian) kernel_version >/dev/null; echo "$TB_KDIR/vmlinuz"; return 0 ;;
    iommufd) ;;
    *) die "unknown level-1 kernel '$1' (one of: $L1_KERNELS)" ;;
    esac
    key=$(l1_kernel_key)
    [ -n "$key" ] || die "the iommufd level-1 kernel is built from $L1_KSRC_PKG, which is not installed: run tools/testbed/setup"
    dir="$TB_CACHE/l1-kernel/iommufd-$key"
    [ -f "$dir/bzImage" ] || l1_kernel_build "$dir" >&2
    echo "$dir/bzImage"
}

# l1_kernel_build DIR: build the iommufd kernel into DIR (bzImage, config, build.txt). One
# build at a time per cache; a build that another process finished meanwhile is reused.
l1_kernel_build() {
    local dir=$1 frag="$TB_ROOT/l1/kernel-iommufd.config" src new t0 t1 jobs objs line sym val have
    mkdir -p "$TB_CACHE/l1-kernel"
    exec 8>"$TB_CACHE/l1-kernel/.lock"
    flock 8
    if [ -f "$dir/bzImage" ]; then exec 8>&-; return 0; fi
    for line in $L1_KBUILD_PKGS; do
        dpkg -s "$line" >/dev/null 2>&1 || die "building the iommufd kernel needs the package $line: run tools/testbed/setup"
    done
    t0=$(date +%s)
    src=$(mktemp -d "$TB_CACHE/l1-kernel/build.XXXXXX")
    log "building the iommufd level-1 kernel from $L1_KSRC_PKG in $src (several minutes)"
    tar -xaf "$L1_KSRC_TARBALL" -C "$src" --strip-components=1
    make -C "$src" -s KCONFIG_ALLCONFIG="$frag" allnoconfig >"$src/viaduct-config.log" 2>&1 ||
        { cat "$src/viaduct-config.log" >&2; die "kernel config failed (kept in $src)"; }
    # A symbol whose dependencies are not met is silently dropped by Kconfig: refuse that.
    while IFS= read -r line; do
        case "$line" in CONFIG_*=*) ;; *) continue ;; esac
        sym=${line%%=*} val=${line#*=}
        have=$(sed -n "s/^$sym=//p" "$src/.config")
        [ "$have" = "$val" ] || die "kernel config: $sym is '${have:-not set}', $frag wants $val (kept in $src)"
    done <"$frag"
    # Two cores: one job more than CPUs keeps both busy while one job waits for the disk.
    jobs=$(($(nproc) + 1))
    make -C "$src" -s -j"$jobs" bzImage >"$src/viaduct-build.log" 2>&1 ||
        { tail -n 40 "$src/viaduct-build.log" >&2; die "kernel build failed (tree kept in $src)"; }
    t1=$(date +%s)
    objs=$(find "$src" -name '*.o' | wc -l)
    new="$TB_CACHE/l1-kernel/new.tmp"
    rm -rf "$new"; mkdir -p "$new"
    cp "$src/arch/x86/boot/bzImage" "$new/bzImage"
    cp "$src/.config" "$new/config"
    printf 'version %s\nbuild_seconds %s\njobs %s\nobjects %s\n' \
        "$(make -C "$src" -s kernelrelease)" "$((t1 - t0))" "$jobs" "$objs" >"$new/build.txt"
    # Older builds (other keys) are of no use any more.
    rm -rf "$TB_CACHE"/l1-kernel/iommufd-*
    mv "$new" "$dir"
    rm -rf "$src"
    log "iommufd level-1 kernel built in $((t1 - t0)) s ($objs objects, make -j$jobs): $dir"
    exec 8>&-
}
