# tb-description: viaduct --device ...,managed=on: devices on no driver, igbvf and nvme are bound to vfio-pci by viaduct, driven by the guest, and given back at exit, on SIGTERM, and by `viaductctl restore` after a SIGKILL
# tb-timeout: 720
# tb-run: poweroff sigterm sigkill
# tb-check: setup
# tb-check: poweroff/exit-0 poweroff/bound-while-running poweroff/vfs-on-igbvf poweroff/nvme-bound
# tb-check: poweroff/nvme-read-signature poweroff/vf0-restored poweroff/vf1-restored poweroff/nvme-restored
# tb-check: poweroff/no-records-left
# tb-check: sigterm/viaductctl-bind-vf0 sigterm/guest-ready sigterm/vfs-on-igbvf sigterm/nvme-bound
# tb-check: sigterm/nvme-read-signature sigterm/ready sigterm/exit-143 sigterm/vf1-restored
# tb-check: sigterm/nvme-restored sigterm/vf0-left-to-viaductctl sigterm/no-records-left
# tb-check: sigterm-viaductctl/vf0-restored
# tb-check: sigkill/guest-ready sigkill/vfs-on-igbvf sigkill/nvme-bound sigkill/nvme-read-signature
# tb-check: sigkill/ready sigkill/records-survive sigkill/viaductctl-restore sigkill/vf1-restored
# tb-check: sigkill/nvme-restored sigkill/nvme-works-in-l1
# tb-l1-kernels: iommufd
#
# Devices: the igb VFs VF0 (created with autoprobe off: no driver) and VF1 (bound to igbvf),
# and the NVMe (nvme). Runs:
# 1. poweroff: all three with managed=on; while the guest runs, level 1 sees each on vfio-pci;
#    the guest binds igbvf x2 and nvme and reads the disk signature; the guest powers off,
#    viaduct exits 0, each device is back where it was.
# 2. sigterm: VF0 is first bound by `viaductctl bind` (someone else's binding), then VF0, VF1
#    and the NVMe with managed=on; while the guest runs, level 1 sees VF1 and the NVMe on
#    vfio-pci with records owned by viaduct[PID], and `viaductctl restore VF1 NVME` refuses
#    to take them from the running VMM; SIGTERM: exit 143, VF1 and the NVMe back,
#    VF0 still on vfio-pci with viaductctl's record (viaduct did not bind it, so it does not
#    release it).
# 3. sigkill: VF1 and the NVMe with managed=on; SIGKILL leaves them on vfio-pci with
#    viaduct[PID]'s records; `viaductctl restore` gives them back; level 1's nvme driver then
#    reads the disk signature again.
# Values `STATE_before_X`, `RUN/state_during_X`, `RUN/state_after_X` (X = vf0, vf1, nvme:
# "DRIVER override=OVERRIDE") and `RUN/records_*` are what tests/vfio_managed.rs asserts.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }
command -v viaductctl >/dev/null || { tb_skip "viaductctl is not in level 1 (build failed?)"; exit 0; }

STATE=/run/viaduct/bindings
NVME=$TB_NVME
viaductctl restore >/dev/null 2>&1

# shellcheck disable=SC2046 # one word per VF
set -- $(tb_create_vfs "$TB_IGB_PF" 2 0)
VF0=$1 VF1=$2
tb_value vfs "$VF0 $VF1"
if [ -z "$VF1" ]; then
    tb_check setup fail "could not create 2 VFs on $TB_IGB_PF"
    exit 1
fi
# VF1 on igbvf with no override left behind (as if the kernel had probed it).
tb_bind igbvf "$VF1"
echo >"/sys/bus/pci/devices/$VF1/driver_override"

# state_of BDF: "DRIVER override=OVERRIDE" (an unset override reads "(null)").
state_of() { echo "$(tb_driver "$1") override=$(cat "/sys/bus/pci/devices/$1/driver_override" 2>/dev/null)"; }
# records OWNER: the state file's lines for OWNER, on one line.
records() { grep -F "owner=$1" "$STATE" 2>/dev/null | tr '\n' ';'; }

BEFORE_vf0=$(state_of "$VF0") BEFORE_vf1=$(state_of "$VF1") BEFORE_nvme=$(state_of "$NVME")
tb_value state_before_vf0 "$BEFORE_vf0"
tb_value state_before_vf1 "$BEFORE_vf1"
tb_value state_before_nvme "$BEFORE_nvme"
[ "$BEFORE_vf0" = "none override=(null)" ] && [ "$BEFORE_vf1" = "igbvf override=(null)" ] &&
    [ "$BEFORE_nvme" = "nvme override=(null)" ] && tb_check setup pass "VF0 none, VF1 igbvf, NVMe nvme" ||
    tb_check setup fail "VF0 '$BEFORE_vf0', VF1 '$BEFORE_vf1', NVMe '$BEFORE_nvme'"

# check_back RUN NAME...: each named device (vf0 vf1 nvme) is back where it was.
check_back() {
    local run=$1 n b now want; shift
    for n in "$@"; do
        eval "b=\$$(echo "$n" | tr a-z A-Z)"
        now=$(state_of "$b")
        eval "want=\$BEFORE_$n"
        tb_value "$run/state_after_$n" "$now"
        if [ "$now" = "$want" ]; then
            tb_check "$run/$n-restored" pass "$b: $now"
        else
            tb_check "$run/$n-restored" fail "$b: now '$now', was '$want'; kernel: $(dmesg | grep -e "$b" | tail -n 6 | tr '\n' '|')"
        fi
    done
}

# The guest: the igb VFs on igbvf, the NVMe on nvme reading the disk signature; with MODE
# wait it then reports `ready` and sleeps until viaduct is stopped.
guest_script() {
    cat <<GUEST
SIG_NVME='$TB_SIG_NVME'
WANT_VFS=$1
MODE=$2
GUEST
    cat <<'GUEST'
g_lspci
n=0
for v in $(g_find_devs 8086 10ca); do [ "$(g_driver $v)" = igbvf ] && n=$((n + 1)); done
[ "$n" = "$WANT_VFS" ] && g_check vfs-on-igbvf pass "$n igb VFs on igbvf" || g_check vfs-on-igbvf fail "$n of $WANT_VFS igb VFs on igbvf"
nv=$(g_find_devs 1b36 0010)
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
g_wait_for /dev/nvme0n1 30
sig=$(dd if=/dev/nvme0n1 bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read-signature pass "$sig" || g_check nvme-read-signature fail "read '$sig'"
if [ "$MODE" = wait ]; then
    g_check ready pass "waiting to be stopped"
    sleep 100000
fi
GUEST
}

VIADUCT="viaduct --kernel $TB_L2_KERNEL --memory 256M --log-level info"

# start_bg RUN SCRIPT DEVICE...: starts viaduct in the background with the devices given
# managed=on; sets PID and LOG.
start_bg() {
    local run=$1 script=$2 dir args="" b; shift 2
    dir=/tmp/l2/$run; mkdir -p "$dir"; LOG=$dir/console.log
    tb_l2_initrd "$script" "$dir/initrd.cpio" || { tb_check "$run/boot" fail "cannot build the guest initramfs"; return 1; }
    for b in "$@"; do args="$args --device path=/sys/bus/pci/devices/$b,managed=on"; done
    echo "tb: l2[$run] $VIADUCT --initramfs $dir/initrd.cpio $args"
    $VIADUCT --initramfs "$dir/initrd.cpio" --cmdline "$TB_L2_CMDLINE" $args >"$LOG" 2>&1 </dev/null &
    PID=$!
}

# wait_ready RUN SECS: until the guest reported `ready` (or viaduct ended).
wait_ready() {
    local i=0
    while tb_running "$PID" && ! grep -q '@@G check ready pass' "$LOG"; do
        i=$((i + 1)); [ "$i" -gt $(($2 * 4)) ] && break
        sleep 0.25
    done
    grep -q '@@G check ready pass' "$LOG" && tb_check "$1/guest-ready" pass "after $((i / 4)) s" ||
        tb_check "$1/guest-ready" fail "no ready marker within $2 s (viaduct $(tb_running "$PID" && echo running || echo ended))"
    # The IOMMU backend of the running viaduct (as tb_run_l2 checks it).
    if tb_running "$PID"; then
        ls -l "/proc/$PID/fd" >"/tmp/l2/$1/vmm-fds" 2>/dev/null
        local fds; fds=$(tb_vfio_fds "/tmp/l2/$1/vmm-fds")
        tb_check_iommu_backend "$1" "${fds% }"
    fi
}

# wait_exit RUN SECS: until viaduct exits by itself (SIGKILL and a failed check after SECS).
# Value RUN/exit_after_done_ms: from the guest's last line to viaduct's exit (the VM teardown
# and the managed devices going back to their drivers).
wait_exit() {
    local t0 done_ms="" now
    t0=$(tb_now_ms)
    while tb_running "$PID"; do
        now=$(tb_now_ms)
        [ -z "$done_ms" ] && grep -q '@@G done' "$LOG" && done_ms=$now
        if [ $((now - t0)) -gt $(($2 * 1000)) ]; then
            tb_check "$1/timeout" fail "viaduct still running after $2 s"
            kill -KILL "$PID"
            break
        fi
        sleep 0.25
    done
    [ -n "$done_ms" ] && tb_value "$1/exit_after_done_ms" $(($(tb_now_ms) - done_ms))
}

# finish_bg RUN: waits for viaduct, copies its console, reports the guest's checks and rc.
finish_bg() {
    local run=$1 rc kind k s rest
    wait "$PID"; rc=$?
    sed "s/^/l2[$run]| /" "$LOG"
    tb_value "$run/vmm_rc" "$rc"
    tr -d '\r' <"$LOG" | sed -n 's/.*@@G \(check\|value\) \(.*\)$/\1 \2/p' >"/tmp/l2/$run/markers"
    while read -r kind k s rest; do
        case "$kind" in
        check) tb_check "$run/$k" "$s" "$rest" ;;
        value) tb_value "$run/$k" "$s${rest:+ $rest}" ;;
        esac
    done <"/tmp/l2/$run/markers"
    VMM_RC=$rc
}

# sample_states FILE: while viaduct ($PID) runs, "NAME DRIVER override=..." of VF0, VF1 and
# the NVMe every 0.5 s, as level 1 sees them.
sample_states() {
    while tb_running "$PID"; do
        echo "vf0 $(state_of "$VF0")"; echo "vf1 $(state_of "$VF1")"; echo "nvme $(state_of "$NVME")"
        sleep 0.5
    done >"$1"
}

# --- 1. guest powers off ---
# Not tb_run_l2: it stops a VMM 5 s after the guest is done, and viaduct's exit here includes
# the host drivers' probes (igbvf waits for its PF for seconds under TCG).
guest_script 2 poweroff >/tmp/vfio-managed-1.sh
start_bg poweroff /tmp/vfio-managed-1.sh "$VF0" "$VF1" "$NVME"
sample_states /tmp/vfio-managed-states &
sampler=$!
wait_exit poweroff 300
finish_bg poweroff
wait "$sampler"
grep -q '@@G done rc=0' "$LOG" && tb_check poweroff/done pass "guest script finished" || tb_check poweroff/done fail "no '@@G done rc=0'"
[ "$VMM_RC" = 0 ] && tb_check poweroff/exit-0 pass || tb_check poweroff/exit-0 fail "viaduct exited $VMM_RC"
# Level 1's view while viaduct ran: each device on vfio-pci (viaduct bound them; before the
# run they were on no driver, igbvf and nvme).
seen=""
for n in vf0 vf1 nvme; do grep -q "^$n vfio-pci " /tmp/vfio-managed-states && seen="$seen $n"; done
tb_value poweroff/seen_on_vfio_pci "${seen# }"
[ "$seen" = " vf0 vf1 nvme" ] && tb_check poweroff/bound-while-running pass "vf0 vf1 nvme on vfio-pci while viaduct ran" ||
    tb_check poweroff/bound-while-running fail "seen on vfio-pci while viaduct ran: '${seen# }' ($(sort -u /tmp/vfio-managed-states | tr '\n' ';'))"
check_back poweroff vf0 vf1 nvme
tb_value poweroff/records_left "$(cat $STATE 2>/dev/null | tr '\n' ';')"
[ -z "$(cat $STATE 2>/dev/null)" ] && tb_check poweroff/no-records-left pass || tb_check poweroff/no-records-left fail "$(cat $STATE | tr '\n' ';')"

# --- 2. SIGTERM; VF0 held by viaductctl beforehand ---
viaductctl bind "$VF0" >/dev/null 2>/tmp/bind.err && tb_check sigterm/viaductctl-bind-vf0 pass ||
    tb_check sigterm/viaductctl-bind-vf0 fail "$(cat /tmp/bind.err)"
guest_script 2 wait >/tmp/vfio-managed-2.sh
start_bg sigterm /tmp/vfio-managed-2.sh "$VF0" "$VF1" "$NVME"
wait_ready sigterm 240
for n in vf0 vf1 nvme; do
    eval "b=\$$(echo "$n" | tr a-z A-Z)"
    tb_value "sigterm/state_during_$n" "$(state_of "$b")"
done
tb_value sigterm/pid "$PID"
tb_value sigterm/records_during "$(records "viaduct[$PID]")"
tb_value sigterm/records_viaductctl "$(records viaductctl)"
# `viaductctl restore` leaves the devices of a running viaduct alone (no --force).
viaductctl restore "$VF1" "$NVME" >/tmp/restore-live.out 2>/tmp/restore-live.err
tb_value sigterm/restore_live_rc "$?"
tb_value sigterm/restore_live_err "$(cat /tmp/restore-live.err)"
for n in vf1 nvme; do
    eval "b=\$$(echo "$n" | tr '[:lower:]' '[:upper:]')"
    tb_value "sigterm/state_after_live_restore_$n" "$(state_of "$b")"
done
kill -TERM "$PID"
finish_bg sigterm
[ "$VMM_RC" = 143 ] && tb_check sigterm/exit-143 pass || tb_check sigterm/exit-143 fail "viaduct exited $VMM_RC"
check_back sigterm vf1 nvme
now=$(state_of "$VF0")
tb_value sigterm/state_after_vf0 "$now"
[ "$now" = "vfio-pci override=vfio-pci" ] && [ -n "$(records viaductctl)" ] &&
    tb_check sigterm/vf0-left-to-viaductctl pass "$now; $(records viaductctl)" ||
    tb_check sigterm/vf0-left-to-viaductctl fail "$now; records: $(cat $STATE 2>/dev/null | tr '\n' ';')"
tb_value sigterm/records_after "$(records "viaduct[$PID]")"
[ -z "$(records "viaduct[$PID]")" ] && tb_check sigterm/no-records-left pass || tb_check sigterm/no-records-left fail "$(records "viaduct[$PID]")"
viaductctl restore "$VF0" >/dev/null 2>&1
check_back sigterm-viaductctl vf0

# --- 3. SIGKILL, then viaductctl restore ---
guest_script 1 wait >/tmp/vfio-managed-3.sh
start_bg sigkill /tmp/vfio-managed-3.sh "$VF1" "$NVME"
wait_ready sigkill 240
kill -KILL "$PID"
finish_bg sigkill
sleep 1
tb_value sigkill/pid "$PID"
for n in vf1 nvme; do
    eval "b=\$$(echo "$n" | tr a-z A-Z)"
    tb_value "sigkill/state_killed_$n" "$(state_of "$b")"
done
tb_value sigkill/records_killed "$(records "viaduct[$PID]")"
[ "$(records "viaduct[$PID]" | tr ';' '\n' | grep -c .)" = 2 ] &&
    tb_check sigkill/records-survive pass "$(records "viaduct[$PID]")" ||
    tb_check sigkill/records-survive fail "records: '$(cat $STATE 2>/dev/null | tr '\n' ';')'"
viaductctl restore --json >/tmp/restore.out 2>/tmp/restore.err
rc=$?
tb_value sigkill/restore_rc "$rc"
tb_value sigkill/restore_json "$(cat /tmp/restore.out)"
[ "$rc" = 0 ] && tb_check sigkill/viaductctl-restore pass || tb_check sigkill/viaductctl-restore fail "rc=$rc: $(cat /tmp/restore.err)"
check_back sigkill vf1 nvme
tb_value sigkill/records_after "$(cat $STATE 2>/dev/null | tr '\n' ';')"
# The NVMe works on the host again: level 1's nvme driver reads the signature.
ctrl=$(tb_nvme_ctrl "$NVME")
i=0; while [ ! -e "/dev/${ctrl}n1" ] && [ "$i" -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
sig=$(dd if="/dev/${ctrl}n1" bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$sig" = "$TB_SIG_NVME" ] && tb_check sigkill/nvme-works-in-l1 pass "/dev/${ctrl}n1: $sig" ||
    tb_check sigkill/nvme-works-in-l1 fail "/dev/${ctrl}n1 reads '$sig'"

tb_create_vfs "$TB_IGB_PF" 0 >/dev/null
true
