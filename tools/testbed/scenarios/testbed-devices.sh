# tb-description: the optional L0 devices: ivshmem with a 4 GiB 64-bit BAR holding L0's pattern; two devices behind a PCIe-to-PCI bridge share one IOMMU group
# tb-timeout: 90
# tb-devices: ivshmem pci-bridge
# tb-check: ivshmem-present ivshmem-bar-size ivshmem-bar-64bit ivshmem-pattern-0x* bridge-shared-group
# tb-check: bridge-group-vfio
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

d=/sys/bus/pci/devices/$TB_IVSHMEM
id="$(cut -c3- $d/vendor 2>/dev/null):$(cut -c3- $d/device 2>/dev/null)"
[ "$id" = 1af4:1110 ] && tb_check ivshmem-present pass "$TB_IVSHMEM $id" || tb_check ivshmem-present fail "$TB_IVSHMEM is '$id'"
# resource line 3 = BAR2: start end flags.
# shellcheck disable=SC2046 # start, end and flags: one word each
set -- $(sed -n 3p $d/resource 2>/dev/null)
start=$(($1)); end=$(($2)); flags=$(($3))
size=$((end - start + 1))
tb_value ivshmem_bar2_start "$(printf 0x%x $start)"
tb_value ivshmem_bar2_size "$size"
[ "$size" -ge $((1 << 32)) ] && tb_check ivshmem-bar-size pass "BAR2 $size bytes at $(printf 0x%x $start)" || tb_check ivshmem-bar-size fail "BAR2 size $size"
# IORESOURCE_MEM_64 = 0x100000, IORESOURCE_PREFETCH = 0x2000
[ $((flags & 0x100000)) -ne 0 ] && tb_check ivshmem-bar-64bit pass "flags $(printf 0x%x $flags)" || tb_check ivshmem-bar-64bit fail "flags $(printf 0x%x $flags)"
# L0 wrote "VIADUCT-IVSHMEM@0x..." at 0 and at size/2: "VIAD" reads 0x44414956 (little endian).
setpci -s "${TB_IVSHMEM#0000:}" COMMAND=0x02:0x02 2>/dev/null || true
for off in 0 $((size / 2)); do
    v=$(devmem $((start + off)) 32 2>&1)
    [ "$v" = 0x44414956 ] && tb_check "ivshmem-pattern-$(printf 0x%x $off)" pass "read $v" ||
        tb_check "ivshmem-pattern-$(printf 0x%x $off)" fail "read '$v' at BAR2+$(printf 0x%x $off)"
done

# The bridge group: the bridge and both devices behind it in one IOMMU group.
gb=$(tb_iommu_group "$TB_BRIDGE"); g1=$(tb_iommu_group 0000:08:01.0); g2=$(tb_iommu_group 0000:08:02.0)
tb_value bridge_groups "$gb $g1 $g2"
members=$(ls /sys/kernel/iommu_groups/$g1/devices 2>/dev/null | tr '\n' ' ')
tb_value bridge_group_members "$members"
[ -n "$g1" ] && [ "$g1" = "$g2" ] && [ "$g1" = "$gb" ] && tb_check bridge-shared-group pass "group $g1: $members" ||
    tb_check bridge-shared-group fail "bridge '$gb', 08:01.0 '$g1', 08:02.0 '$g2'"
n=0; for b in 0000:08:01.0 0000:08:02.0; do tb_bind_vfio $b >/dev/null && n=$((n + 1)); done
[ "$n" = 2 ] && [ -e /dev/vfio/$g1 ] && tb_check bridge-group-vfio pass "/dev/vfio/$g1 with both devices on vfio-pci" || tb_check bridge-group-vfio fail "$n of 2 bound, /dev/vfio/$g1 $( [ -e /dev/vfio/$g1 ] && echo exists || echo missing)"
for b in 0000:08:01.0 0000:08:02.0; do tb_unbind $b; done
true
