# tb-description: level 1 itself: /dev/kvm, IOMMU groups, igb SR-IOV VFs, binding to vfio-pci
# tb-timeout: 120
# tb-check: kvm-dev kvm-amd iommu-groups group-per-device igb-pf nvme igb-totalvfs vfs-created
# tb-check: vf-own-group vf-vfio-bind nvme-vfio-bind
# The testbed's own health. If this fails, every other scenario's result is suspect.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

[ -c /dev/kvm ] && tb_check kvm-dev pass "/dev/kvm present" || tb_check kvm-dev fail "no /dev/kvm"
if grep -q '^kvm_amd ' /proc/modules; then tb_check kvm-amd pass "kvm_amd loaded"
else tb_check kvm-amd fail "kvm_amd not loaded: $(dmesg | grep -i -m1 'kvm\|svm')"; fi
tb_value l1_kernel "$(uname -r)"
tb_value l1_cpus "$(nproc)"

# One IOMMU group per device on its own root port.
ngroups=$(ls /sys/kernel/iommu_groups | wc -l)
tb_value iommu_groups "$ngroups"
[ "$ngroups" -gt 0 ] && tb_check iommu-groups pass "$ngroups groups" || tb_check iommu-groups fail "no IOMMU groups (is intel_iommu=on working?)"
g_igb=$(tb_iommu_group "$TB_IGB_PF"); g_nvme=$(tb_iommu_group "$TB_NVME"); g_sr=$(tb_iommu_group "$TB_NVME_SRIOV_PF")
tb_value group_igb "$g_igb"; tb_value group_nvme "$g_nvme"; tb_value group_nvme_sriov "$g_sr"
if [ -n "$g_igb" ] && [ -n "$g_nvme" ] && [ -n "$g_sr" ] && [ "$g_igb" != "$g_nvme" ] && [ "$g_igb" != "$g_sr" ] && [ "$g_nvme" != "$g_sr" ] &&
    [ "$(ls /sys/kernel/iommu_groups/$g_igb/devices | wc -l)" = 1 ] && [ "$(ls /sys/kernel/iommu_groups/$g_nvme/devices | wc -l)" = 1 ]; then
    tb_check group-per-device pass "igb=$g_igb nvme=$g_nvme nvme-sriov=$g_sr, one device each"
else
    tb_check group-per-device fail "igb=$g_igb nvme=$g_nvme nvme-sriov=$g_sr"
fi

# The devices are where the README says.
pci_id() { echo "$(cut -c3- /sys/bus/pci/devices/$1/vendor):$(cut -c3- /sys/bus/pci/devices/$1/device)"; }
tb_value igb_pf_id "$(pci_id $TB_IGB_PF)"
tb_value nvme_id "$(pci_id $TB_NVME)"
[ "$(pci_id $TB_IGB_PF)" = 8086:10c9 ] && tb_check igb-pf pass "$TB_IGB_PF 8086:10c9 driver=$(tb_driver $TB_IGB_PF)" || tb_check igb-pf fail "$TB_IGB_PF is $(pci_id $TB_IGB_PF)"
[ "$(pci_id $TB_NVME)" = 1b36:0010 ] && tb_check nvme pass "$TB_NVME 1b36:0010 driver=$(tb_driver $TB_NVME)" || tb_check nvme fail "$TB_NVME is $(pci_id $TB_NVME)"

total=$(cat /sys/bus/pci/devices/$TB_IGB_PF/sriov_totalvfs 2>/dev/null)
tb_value igb_sriov_totalvfs "$total"
[ "$total" = 7 ] && tb_check igb-totalvfs pass "sriov_totalvfs=7" || tb_check igb-totalvfs fail "sriov_totalvfs=$total"

# VFs without a driver, then one bound to vfio-pci.
vfs=$(tb_create_vfs "$TB_IGB_PF" 2 0)
nvf=$(echo $vfs | wc -w)
tb_value igb_vfs "$(echo $vfs)"
vf=$(echo $vfs | cut -d' ' -f1)
if [ "$nvf" = 2 ] && [ "$(pci_id $vf)" = 8086:10ca ]; then tb_check vfs-created pass "$(echo $vfs)"
else tb_check vfs-created fail "got '$(echo $vfs)'"; fi
gvf=$(tb_iommu_group "$vf")
[ -n "$gvf" ] && [ "$gvf" != "$g_igb" ] && tb_check vf-own-group pass "VF $vf group $gvf" || tb_check vf-own-group fail "VF $vf group '$gvf' (PF $g_igb)"

modprobe vfio-pci
if g=$(tb_bind_vfio "$vf"); then tb_check vf-vfio-bind pass "$vf -> vfio-pci, /dev/vfio/$g"
else tb_check vf-vfio-bind fail "$vf driver=$(tb_driver $vf)"; fi
if g=$(tb_bind_vfio "$TB_NVME"); then tb_check nvme-vfio-bind pass "$TB_NVME -> vfio-pci, /dev/vfio/$g"
else tb_check nvme-vfio-bind fail "$TB_NVME driver=$(tb_driver $TB_NVME)"; fi
tb_value dev_vfio "$(ls /dev/vfio | tr '\n' ' ')"

# Back to how other scenarios expect level 1: NVMe on nvme, no VFs.
tb_unbind "$TB_NVME"; tb_bind nvme "$TB_NVME"
tb_unbind "$vf"
tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
[ -x /usr/bin/viaduct ] && tb_value viaduct_present yes || tb_value viaduct_present no
true
