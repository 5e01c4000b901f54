# tb-description: viaduct gives one guest an igb VF, the whole NVMe and the NVMe SR-IOV VF: every driver binds, both NVMes read their level-0 signature and write, each device counts MSI-X interrupts, no admin command times out; reset methods in vm.info match level 1's sysfs; a host-side remove of the NVMe leaves viaduct running
# tb-timeout: 300
# tb-run: trio
# tb-check: setup vfio-bind trio/igbvf-bound trio/nvme-both-bound trio/nvme-read-signature trio/nvme-write
# tb-check: trio/nvmevf-read-signature trio/nvmevf-write trio/read-* trio/msix-* trio/no-timeouts
# tb-check: trio/reset-method-igbvf trio/reset-method-nvme trio/reset-method-nvmevf
# tb-check: trio/vmm-alive-during-remove trio/api-during-remove
# tb-check: trio/reads-during-remove trio/remove-completed trio/rescan
# Three assigned functions from three IOMMU groups in one guest, two of them SR-IOV VFs.
# Why it is a test of its own: the NVMe VF's admin completions were lost whenever MSI-X was
# enabled on the host only at the guest's first vector unmask (QEMU's NVMe marks a completion
# queue's vector as used only if MSI-X is on when the queue is created, and Linux's nvme
# driver enables the controller before it requests its interrupt). viaduct now enables host
# MSI-X at the guest's MSI-X Enable (vfio/src/interrupts.rs); the nvme driver's
# "QID 0 timeout, completion polled" must not appear. tests/vfio_guest_trio.rs asserts the
# checks and finds both writes in the level-0 images.
# Device faults and resets, in the same guest: while it runs, level 1 asks viaduct's API
# (vm.info) for each device's reset method, which must be the first of level 1's sysfs
# reset_method for that device; then level 1 removes the whole NVMe
# (echo 1 > .../remove) while the guest keeps reading it: viaduct goes on (API answers,
# the guest's reads return the signature or fail once the device is gone, never other
# bytes), the guest ends normally, viaduct exits 0, the host's remove completes and a
# rescan brings the NVMe back.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

run=trio
igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
nvme_vf=$(tb_nvme_sriov_vf 2>/dev/null)
[ -n "$igb_vf" ] && [ -n "$nvme_vf" ] && tb_check setup pass "igb VF $igb_vf, NVMe VF $nvme_vf" ||
    { tb_check setup fail "igb VF '$igb_vf', NVMe VF '$nvme_vf'"; exit 0; }
for b in $igb_vf $TB_NVME $nvme_vf; do
    tb_bind_vfio "$b" >/dev/null || { tb_check vfio-bind fail "$b: driver $(tb_driver "$b")"; exit 0; }
done
tb_check vfio-bind pass "$igb_vf $TB_NVME $nvme_vf"
token="$TB_RUN_ID-trio-$(date +%s)-$$"
tb_value $run/token "$token"

cat >/tmp/trio-guest.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_SRIOV='$TB_SIG_SRIOV'
TOKEN='$token'
GUEST
cat >>/tmp/trio-guest.sh <<'GUEST'
vf=$(g_find_devs 8086 10ca)
[ -n "$vf" ] && [ "$(g_driver $vf)" = igbvf ] && g_check igbvf-bound pass "$vf" || g_check igbvf-bound fail "'$vf' driver=$(g_driver $vf)"
nv=$(g_find_devs 1b36 0010 | tr '\n' ' ')
n=0; for b in $nv; do [ "$(g_driver $b)" = nvme ] && n=$((n + 1)); done
[ "$n" = 2 ] && g_check nvme-both-bound pass "$nv" || g_check nvme-both-bound fail "$n of '$nv' on nvme"
g_wait_for /dev/nvme0n1 30; g_wait_for /dev/nvme1n1 30
for d in /dev/nvme0n1 /dev/nvme1n1; do
    sig=$(g_read_sector "$d" 0)
    case "$sig" in
    "$SIG_NVME") name=nvme ;;
    "$SIG_SRIOV") name=nvmevf ;;
    *) g_check "read-$(basename $d)" fail "read '$sig'"; continue ;;
    esac
    g_check "$name-read-signature" pass "$d: $sig"
    g_write_check "$name-write" "$d" 6200 "VIADUCT-TRIO-WROTE $TOKEN"
done
sync
for b in $vf $nv; do
    c=$(g_dev_irq_count $b); g_value "irqs_$b" "${c:-0}"
done
for b in $nv; do
    c=$(g_dev_irq_count $b)
    [ "${c:-0}" -gt 0 ] && g_check "msix-$b" pass "$c interrupts on $(g_msi_vectors $b) vectors" || g_check "msix-$b" fail "no interrupts"
done
t=$(dmesg | grep -ci 'nvme.*timeout')
[ "$t" = 0 ] && g_check no-timeouts pass "no nvme command timed out" || g_check no-timeouts fail "$t timeouts: $(dmesg | grep -i 'nvme.*timeout' | head -n2 | tr '\n' '|')"
# Level 1 removes the whole NVMe's host device now: keep reading it for 6 s. Each read
# returns the level-0 signature or fails (the device gone); never other bytes.
for d in /dev/nvme0n1 /dev/nvme1n1; do [ "$(g_read_sector $d 0)" = "$SIG_NVME" ] && whole=$d; done
echo "TRIO-READY"
ok=0 failed=0 wrong=0 n=0
while [ $n -lt 12 ]; do
    sig=$(g_read_sector "$whole" 0)
    if [ "$sig" = "$SIG_NVME" ]; then ok=$((ok + 1)); elif [ -z "$sig" ]; then failed=$((failed + 1)); else wrong=$((wrong + 1)); fi
    sleep 0.5; n=$((n + 1))
done
[ "$wrong" = 0 ] && [ "$ok" -gt 0 ] && g_check reads-during-remove pass "$ok read the signature, $failed failed, none other bytes" ||
    g_check reads-during-remove fail "$ok signature, $failed failed, $wrong other bytes ($whole)"
GUEST

sock=/tmp/trio-api.sock
log=/tmp/l2/$run/console.log
rm -f $sock "$log"
# api METHOD ENDPOINT: the HTTP status on stdout, the body in /tmp/trio-api.out.
api() { curl -s -m 20 -o /tmp/trio-api.out -w '%{http_code}' --unix-socket "$sock" -X "$1" "http://localhost/api/v1/$2"; }
# The driver: beside the guest, once it printed TRIO-READY.
drive_trio() {
    local i=0 id host want got info
    while ! grep -q TRIO-READY "$log" 2>/dev/null; do
        i=$((i + 1)); [ "$i" -gt 2000 ] && return
        # viaduct ended without the guest getting there: nothing to drive.
        [ "$i" -gt 100 ] && ! pidof viaduct >/dev/null && return
        sleep 0.1
    done
    api GET vm.info >/dev/null
    info=$(cat /tmp/trio-api.out)
    tb_value $run/info "$info"
    for id in igbvf nvme nvmevf; do
        host=$(printf '%s' "$info" | grep -o '{[^{}]*"id":"'$id'"[^{}]*}' | grep -o '"host_bdf":"[^"]*"' | cut -d'"' -f4)
        got=$(printf '%s' "$info" | grep -o '{[^{}]*"id":"'$id'"[^{}]*}' | grep -o '"reset_method":"[^"]*"' | cut -d'"' -f4)
        want=$(cut -d' ' -f1 "/sys/bus/pci/devices/$host/reset_method" 2>/dev/null)
        [ -n "$host" ] && [ "$got" = "${want:-none}" ] && tb_check "$run/reset-method-$id" pass "$host: $got (level 1: $(cat /sys/bus/pci/devices/$host/reset_method))" ||
            tb_check "$run/reset-method-$id" fail "$id on '$host': viaduct says '$got', level 1's reset_method '$(cat /sys/bus/pci/devices/$host/reset_method 2>&1)'"
    done
    # The host takes the NVMe back while the guest reads it; `remove` may wait for viaduct.
    rm -f /tmp/trio-remove.done
    (if echo 1 >"/sys/bus/pci/devices/$TB_NVME/remove"; then echo 0; else echo 1; fi >/tmp/trio-remove.done) &
    sleep 2
    pidof viaduct >/dev/null && tb_check $run/vmm-alive-during-remove pass "viaduct $(pidof viaduct) runs" ||
        tb_check $run/vmm-alive-during-remove fail "viaduct is gone"
    got=$(api GET vmm.ping)
    [ "$got" = 200 ] && tb_check $run/api-during-remove pass "vmm.ping $got" || tb_check $run/api-during-remove fail "vmm.ping '$got'"
}
drive_trio &
driver=$!
tb_run_l2 $run 200 /tmp/trio-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --api-socket $sock \
    --device "path=/sys/bus/pci/devices/$igb_vf,id=igbvf" --device "path=/sys/bus/pci/devices/$TB_NVME,id=nvme" \
    --device "path=/sys/bus/pci/devices/$nvme_vf,id=nvmevf"
wait $driver
# viaduct has released the NVMe: the host's remove completes, a rescan brings it back.
i=0
while [ ! -e /tmp/trio-remove.done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /tmp/trio-remove.done ] && [ ! -e "/sys/bus/pci/devices/$TB_NVME" ] &&
    tb_check $run/remove-completed pass "$TB_NVME removed (status $(cat /tmp/trio-remove.done)); $(dmesg | grep -c 'blocked until released') 'blocked until released' kernel lines" ||
    tb_check $run/remove-completed fail "remove done: '$(cat /tmp/trio-remove.done 2>&1)', device there: $(ls -d /sys/bus/pci/devices/$TB_NVME 2>&1)"
echo 1 >/sys/bus/pci/rescan
i=0
while [ ! -e "/sys/bus/pci/devices/$TB_NVME/driver" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e "/sys/bus/pci/devices/$TB_NVME" ] && tb_check $run/rescan pass "$TB_NVME back, driver $(tb_driver "$TB_NVME")" ||
    tb_check $run/rescan fail "$TB_NVME not back after rescan"
for b in $igb_vf $TB_NVME $nvme_vf; do tb_unbind "$b"; done
tb_bind nvme "$TB_NVME"
echo 0 >/sys/bus/pci/devices/$TB_NVME_SRIOV_PF/sriov_numvfs
true
