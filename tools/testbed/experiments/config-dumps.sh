# tb-description: tool (not in the suite): config-space captures of the passthrough devices for vfio's golden tests
# tb-devices: nic-pair ahci
# tb-timeout: 300
# tb-check: dumps
# Run: tools/testbed/run --no-build --script tools/testbed/experiments/config-dumps.sh
# Prints `lspci -xxxx` and the sysfs `resource` file of the NVMe, an igb VF, the e1000e meant
# for passthrough and the AHCI controller between @@DUMP-BEGIN NAME BDF / @@DUMP-END NAME
# lines of scenarios/config-dumps.log; vfio/tests/data/*.cfg are these, with the all-zero
# lines left out and the region sizes from `resource` (see that directory's files).
# shellcheck shell=dash  # busybox ash in level 1
dump() {
    echo "@@DUMP-BEGIN $1 $2"
    lspci -xxxx -s "$2"
    echo "@@RESOURCE"
    cat "/sys/bus/pci/devices/$2/resource"
    echo "@@DUMP-END $1"
}
dump nvme "$TB_NVME"
vf=$(tb_create_vfs "$TB_IGB_PF" 1 | head -n1)
dump igbvf "$vf"
dump e1000e "$TB_NIC_PT"
for a in $(tb_find_devs 8086 2922); do
    case "$a" in *00:1f.2) ;; *) dump ahci "$a" ;; esac
done
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
tb_check dumps pass "nvme igbvf e1000e ahci"
true
