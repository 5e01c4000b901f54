# tb-description: viaductctl on a real host: list, check, sriov, vf settings via rtnetlink, bind/unbind/restore round trips, bad input
# tb-timeout: 300
# tb-devices: pci-bridge
# tb-check: list-pf check-passes sriov-create vf-set bad-input-changed-nothing bind-vf0-devnode
# tb-check: vf0-round-trip nvme-round-trip group-bind-devnode check-fix
#
# Results go out as values holding viaductctl's JSON (newlines squeezed) so tests/viaductctl.rs
# asserts on the documents themselves; the tb_checks here make the log readable on its own.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

PF=$TB_IGB_PF
NVME=$TB_NVME
C=viaductctl

if ! command -v $C >/dev/null 2>&1; then
    tb_skip "viaductctl is not in level 1 (not built?)"
    exit 0
fi

# jfield FILE KEY: the first value of "KEY": in pretty-printed JSON (numbers, strings, null).
jfield() { sed -n "s/^ *\"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n1; }

# run NAME ARGS...: runs viaductctl, keeps stdout/stderr/rc in /tmp/NAME.{out,err,rc} and
# reports them as values NAME_json / NAME_err / NAME_rc.
run() {
    local name=$1; shift
    $C "$@" >/tmp/$name.out 2>/tmp/$name.err
    echo $? >/tmp/$name.rc
    tb_value "${name}_rc" "$(cat /tmp/$name.rc)"
    tb_value "${name}_json" "$(cat /tmp/$name.out)"
    [ -s /tmp/$name.err ] && tb_value "${name}_err" "$(cat /tmp/$name.err)"
    return "$(cat /tmp/$name.rc)"
}

# Leftovers of earlier scenarios in this boot (records in the state file) go back first, so
# the counts below are this scenario's own.
run preflight_restore restore --json

# Start from no VFs.
echo 0 >/sys/bus/pci/devices/$PF/sriov_numvfs
IF=$(ls /sys/bus/pci/devices/$PF/net 2>/dev/null | head -n1)
tb_value pf_if "$IF"
tb_value pf_group "$(tb_iommu_group $PF)"
tb_value nvme_group "$(tb_iommu_group $NVME)"

# --- list ---
if run list_pf list $PF --json && [ "$(jfield /tmp/list_pf.out total_vfs)" = 7 ] &&
    [ "$(jfield /tmp/list_pf.out iommu_group)" = "$(tb_iommu_group $PF)" ]; then
    tb_check list-pf pass "8086:10c9 with 7 VFs, group $(tb_iommu_group $PF)"
else
    tb_check list-pf fail "$(cat /tmp/list_pf.err)"
fi
run list_all list --json
$C list >/tmp/list.txt 2>&1
cat /tmp/list.txt
tb_value list_text_pf "$(grep "^$PF" /tmp/list.txt)"

# --- check ---
run check check $PF $NVME --memory 1G --json
if [ "$(cat /tmp/check.rc)" = 0 ]; then tb_check check-passes pass
else tb_check check-passes fail "rc=$(cat /tmp/check.rc): $(grep -B1 -A3 '"block"' /tmp/check.out | tr '\n' ' ')"; fi
$C check $PF --memory 1G

# --- sriov ---
if run sriov_create sriov $PF --num-vfs 2 --json && [ "$(jfield /tmp/sriov_create.out num_vfs)" = 2 ]; then
    tb_check sriov-create pass "$(ls -d /sys/bus/pci/devices/$PF/virtfn* | wc -l) virtfn links"
else
    tb_check sriov-create fail "$(cat /tmp/sriov_create.err)"
fi
VF0=$(basename "$(readlink /sys/bus/pci/devices/$PF/virtfn0)")
VF1=$(basename "$(readlink /sys/bus/pci/devices/$PF/virtfn1)")
tb_value vfs "$VF0 $VF1"
run list_pf_vfs list $PF --json
run list_vfs list $VF0 $VF1 --json
$C list $PF $VF0 $VF1

# --- vf settings through rtnetlink ---
# Not `dmesg -c`: later scenarios may read the boot messages.
DMESG_START=$(dmesg | wc -l)
if run vf_set vf $PF 0 --mac 02:00:00:00:00:aa --vlan 100 --json; then
    tb_check vf-set pass "$(cat /tmp/vf_set.out | tr '\n' ' ')"
else
    tb_check vf-set fail "$(cat /tmp/vf_set.err)"
fi
run vf_set1 vf "$IF" 1 --mac 02:00:00:00:00:bb --trust on --spoofchk off --json
# A fresh netlink read, separate from the reply of the set command.
run vf_show vf $PF --json
$C vf $PF
# The driver's own account of what it was asked to do.
tb_value vf_dmesg "$(dmesg | tail -n +$((DMESG_START + 1)) | grep -i -e 'on VF' -e 'VF [0-9]' | head -n 30)"
ip link show "$IF" >/tmp/iplink.txt 2>&1
tb_value vf_iplink "$(cat /tmp/iplink.txt)"

# link-state: igb has no ndo_set_vf_link_state: a clear error, and nothing else changed.
run vf_linkstate vf $PF 0 --mac 02:00:00:00:00:cc --link-state disable --json
run vf_after_linkstate vf $PF --json

# --- bad input: clear errors, nothing changed ---
run bad_vf_index vf $PF 2 --mac 02:00:00:00:00:dd
run bad_mac vf $PF 0 --mac 01:00:5e:00:00:01
run bad_sriov_nvme sriov $NVME --num-vfs 1
run bad_sriov_count sriov $PF --num-vfs 8
run bad_bind bind 0000:0f:00.0
run bad_vlan vf $PF 0 --vlan 5000
run vf_after_bad vf $PF --json
run list_after_bad list $PF $VF0 $VF1 $NVME --json
if cmp -s /tmp/vf_show.out /tmp/vf_after_bad.out; then tb_check bad-input-changed-nothing pass
else tb_check bad-input-changed-nothing fail "VF settings differ after refused requests"; fi

# --- bind / unbind / restore ---
VF0_DRV=$(tb_driver $VF0)
tb_value vf0_driver_before "$VF0_DRV"
run bind_vf0 bind $VF0 --json
tb_value bind_vf0_driver "$(tb_driver $VF0)"
G=$(tb_iommu_group $VF0)
tb_value vf0_group "$G"
[ -e /dev/vfio/$G ] && tb_check bind-vf0-devnode pass "/dev/vfio/$G" || tb_check bind-vf0-devnode fail "no /dev/vfio/$G"
tb_value state_after_bind "$(cat /run/viaduct/bindings 2>/dev/null)"
# Which VFIO driver it is on, as list and check report it, and the kernel's own signs of a
# VFIO driver (hostadmin's vfio_driver rule): vfio-dev/vfioN, vfio_pci_core's holders.
run list_vf0_bound list "$VF0" --json
run check_vf0_bound check "$VF0" --json
tb_value vf0_vfio_dev "$(cd "/sys/bus/pci/devices/$VF0/vfio-dev" 2>/dev/null && echo *)"
tb_value vfio_pci_core_holders "$(cd /sys/module/vfio_pci_core/holders 2>/dev/null && echo *)"
run bind_vf0_again bind $VF0 --json
run restore_vf0 restore $VF0 --json
tb_value restore_vf0_driver "$(tb_driver $VF0)"
run restore_vf0_again restore $VF0 --json
[ "$(tb_driver $VF0)" = "$VF0_DRV" ] && tb_check vf0-round-trip pass "$VF0_DRV" || tb_check vf0-round-trip fail "now $(tb_driver $VF0), was $VF0_DRV"

# A VMM killed by SIGKILL leaves its managed devices on vfio-pci with records owned by
# viaduct[PID] in the state file: `viaductctl restore` puts them back. Made here the way
# the library leaves things (record first, then override + unbind + probe).
VF1_DRV=$(tb_driver $VF1)
tb_value vf1_driver_before "$VF1_DRV"
mkdir -p /run/viaduct
echo "$VF1 driver=$VF1_DRV override=- owner=viaduct[4242]" >>/run/viaduct/bindings
echo vfio-pci >/sys/bus/pci/devices/$VF1/driver_override
[ "$VF1_DRV" != none ] && echo $VF1 >/sys/bus/pci/devices/$VF1/driver/unbind
echo $VF1 >/sys/bus/pci/drivers_probe
tb_value killed_vmm_vf1_driver "$(tb_driver $VF1)"
run restore_killed restore --json
tb_value restore_killed_vf1_driver "$(tb_driver $VF1)"
tb_value restore_killed_override "$(cat /sys/bus/pci/devices/$VF1/driver_override)"

# A PF with VFs is refused: unbinding igb would tear its VFs down.
run bad_bind_pf bind $PF

tb_value nvme_driver_before "$(tb_driver $NVME)"
run bind_nvme bind $NVME --group --json
tb_value bind_nvme_driver "$(tb_driver $NVME)"
run unbind_nvme unbind $NVME --json
tb_value unbind_nvme_driver "$(tb_driver $NVME)"
run bind_nvme2 bind $NVME --json
run restore_all restore --json
tb_value restore_all_nvme_driver "$(tb_driver $NVME)"
tb_value state_after_restore "$(cat /run/viaduct/bindings 2>/dev/null || echo absent)"
[ "$(tb_driver $NVME)" = nvme ] && tb_check nvme-round-trip pass || tb_check nvme-round-trip fail "now $(tb_driver $NVME)"

# --- VFs left unprobed, bound from no driver and restored to no driver ---
run sriov_noprobe sriov $PF --num-vfs 2 --no-probe --json
VF0=$(basename "$(readlink /sys/bus/pci/devices/$PF/virtfn0)")
tb_value noprobe_vf0_driver "$(tb_driver $VF0)"
tb_value noprobe_autoprobe "$(cat /sys/bus/pci/devices/$PF/sriov_drivers_autoprobe)"
run bind_unprobed bind $VF0 --json
tb_value bind_unprobed_driver "$(tb_driver $VF0)"
run restore_unprobed restore $VF0 --json
tb_value restore_unprobed_driver "$(tb_driver $VF0)"

# --- an IOMMU group of several devices: the two edu functions behind a PCIe-to-PCI bridge ---
EDU1=0000:08:01.0
EDU2=0000:08:02.0
if [ -e /sys/bus/pci/devices/$EDU1 ]; then
    tb_value group_members "$(ls "/sys/kernel/iommu_groups/$(tb_iommu_group $EDU1)/devices" | tr '\n' ' ')"
    tb_value edu_drivers_before "$(tb_driver $EDU1) $(tb_driver $EDU2) $(tb_driver $TB_BRIDGE)"
    run group_bind bind $EDU1 --group --json
    tb_value group_bind_drivers "$(tb_driver $EDU1) $(tb_driver $EDU2) $(tb_driver $TB_BRIDGE)"
    G=$(tb_iommu_group $EDU1)
    [ -e /dev/vfio/$G ] && tb_check group-bind-devnode pass "/dev/vfio/$G" || tb_check group-bind-devnode fail "no /dev/vfio/$G"
    run group_check check $EDU1 --json
    run group_restore restore --json
    tb_value group_restore_drivers "$(tb_driver $EDU1) $(tb_driver $EDU2) $(tb_driver $TB_BRIDGE)"
else
    tb_check group-bind-devnode fail "no $EDU1: the pci-bridge devices are missing"
fi

# --- check names missing VFIO modules, and --fix loads them ---
if rmmod vfio_pci 2>/tmp/rmmod.err; then
    run check_nomod check --json
    run check_fix check --fix --json
    tb_value check_fix_vfio_loaded "$([ -d /sys/bus/pci/drivers/vfio-pci ] && echo yes || echo no)"
else
    tb_check check-fix fail "rmmod vfio_pci: $(cat /tmp/rmmod.err)"
fi
modprobe vfio-pci 2>/dev/null

# --- clean up: no VFs ---
run sriov_remove sriov $PF --num-vfs 0 --json
tb_value vfs_after_remove "$(ls -d /sys/bus/pci/devices/$PF/virtfn* 2>/dev/null | wc -l)"

# --- a device the host uses is refused: the PF with its interface up ---
IF_FLAGS=$(cat /sys/class/net/$IF/flags)
ip link set "$IF" up
tb_value inuse_flags "$(cat /sys/class/net/$IF/flags)"
run bind_inuse bind $PF --json
tb_value bind_inuse_driver "$(tb_driver $PF)"
run check_inuse check $PF --json
[ $((IF_FLAGS & 1)) = 0 ] && ip link set "$IF" down
true
