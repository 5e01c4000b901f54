# tb-description: viaduct gives a Linux guest three virtio-blk disks (read-write file, read-only file, level 1's NVMe block device) and virtio-rng; bytes cross both ways, flushes reach the device, the read-only disk refuses writes, /dev/hwrng gives data
# tb-timeout: 300
# tb-run: viaduct-virtio
# tb-check: viaduct-virtio/l1-nvme-blockdev viaduct-virtio/blk-functions viaduct-virtio/virtio-pci-bound
# tb-check: viaduct-virtio/disk-serials viaduct-virtio/disk-capacity viaduct-virtio/read-rw-signature
# tb-check: viaduct-virtio/read-ro-signature viaduct-virtio/rw-pattern viaduct-virtio/write-rw viaduct-virtio/flush
# tb-check: viaduct-virtio/nvme-disk-signature viaduct-virtio/nvme-disk-write viaduct-virtio/ro-flag
# tb-check: viaduct-virtio/ro-write-refused viaduct-virtio/hwrng-virtio viaduct-virtio/hwrng-data
# tb-check: viaduct-virtio/blk-msix-interrupts viaduct-virtio/l1-sees-guest-write
# tb-check: viaduct-virtio/l1-sees-nvme-write viaduct-virtio/l1-ro-image-unchanged
# Level 1 writes a signature into two raw images, viaduct boots the guest with
# --disk (rw + readonly=on) and --rng; the guest checks the virtio-pci functions, reads the
# signatures, writes a line at LBA 2048 of the rw disk, tries to write the read-only disk at
# the device level (blockdev --setrw + O_DIRECT), and reads /dev/hwrng. Level 1 then checks
# the images. A third disk is level 1's NVMe namespace (block device, backed by OUT/disk.img on
# level 0): the guest reads its signature and writes a token at LBA $NVME_LBA, which
# tests/virtio.rs then finds in disk.img itself. tests/virtio.rs asserts on these checks.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

run=viaduct-virtio
rw=/tmp/virtio-rw.img
ro=/tmp/virtio-ro.img
token="$TB_RUN_ID-$(date +%s)-$$"
sig_rw="VIADUCT-VIRTIO-RW-SIGNATURE $token"
sig_ro="VIADUCT-VIRTIO-RO-SIGNATURE $token"
rm -f $rw $ro
dd if=/dev/zero of=$rw bs=1M count=8 2>/dev/null
dd if=/dev/zero of=$ro bs=1M count=2 2>/dev/null
printf '%s\n' "$sig_rw" | dd of=$rw conv=notrunc 2>/dev/null
printf '%s\n' "$sig_ro" | dd of=$ro conv=notrunc 2>/dev/null
ro_sum_before=$(md5sum $ro | cut -d' ' -f1)
tb_value $run/token "$token"
# Level 1's NVMe (on its nvme driver) as a block-device disk; LBA 120000 is used by no other
# scenario (they write at 2048-2064).
nvme_lba=120000
nvme_dev=""
if [ "$(tb_driver $TB_NVME)" = nvme ] && c=$(tb_nvme_ctrl $TB_NVME) && [ -b /dev/${c}n1 ]; then
    nvme_dev=/dev/${c}n1
    tb_check $run/l1-nvme-blockdev pass "$nvme_dev"
else
    tb_check $run/l1-nvme-blockdev fail "NVMe $TB_NVME on driver $(tb_driver $TB_NVME), no namespace block device"
fi
tb_value $run/nvme_lba $nvme_lba

cat >/tmp/virtio-guest.sh <<GUEST
SIG_RW="$sig_rw"
SIG_RO="$sig_ro"
TOKEN="$token"
SIG_NVME='$TB_SIG_NVME'
NVME_LBA=$nvme_lba
WANT_BLKS=$([ -n "$nvme_dev" ] && echo 3 || echo 2)
GUEST
cat >>/tmp/virtio-guest.sh <<'GUEST'
g_lspci
# The functions: 1af4:1042 (block, twice) and 1af4:1044 (entropy), bound to virtio-pci.
blks=$(g_find_devs 1af4 1042 | tr '\n' ' ')
rngs=$(g_find_devs 1af4 1044 | tr '\n' ' ')
g_value virtio_blk_functions "$blks"
g_value virtio_rng_functions "$rngs"
set -- $blks
[ $# -eq $WANT_BLKS ] && g_check blk-functions pass "$blks" || g_check blk-functions fail "want $WANT_BLKS virtio-blk functions, saw '$blks'"
nbound=0
for b in $blks $rngs; do
    [ "$(g_driver $b)" = virtio-pci ] && nbound=$((nbound + 1))
    g_value "msix_vectors_$b" "$(g_msi_vectors $b)"
done
want=$((WANT_BLKS + 1))
[ "$nbound" -eq $want ] && g_check virtio-pci-bound pass "$want functions on virtio-pci" || g_check virtio-pci-bound fail "$nbound of $want functions bound to virtio-pci"

# Disks by serial number (the --disk id).
disk_by_serial() {
    for d in /sys/block/vd*; do
        [ -e "$d" ] || continue
        [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && basename $d
    done
    return 0
}
i=0
while [ -z "$(disk_by_serial vro0)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
rwd=$(disk_by_serial vrw0)
rod=$(disk_by_serial vro0)
g_value disks "$(ls /sys/block | tr '\n' ' ') rw=$rwd ro=$rod"
[ -n "$rwd" ] && [ -n "$rod" ] && g_check disk-serials pass "vrw0=$rwd vro0=$rod" || g_check disk-serials fail "serials: $(cat /sys/block/vd*/serial 2>/dev/null | tr '\n' ' ')"
[ -n "$rwd" ] || rwd=vda
[ -n "$rod" ] || rod=vdb
g_value rw_sectors "$(cat /sys/block/$rwd/size)"
g_value ro_sectors "$(cat /sys/block/$rod/size)"
[ "$(cat /sys/block/$rwd/size)" = 16384 ] && [ "$(cat /sys/block/$rod/size)" = 4096 ] &&
    g_check disk-capacity pass "8 MiB and 2 MiB" || g_check disk-capacity fail "sizes $(cat /sys/block/$rwd/size) $(cat /sys/block/$rod/size) sectors"

got=$(dd if=/dev/$rwd bs=512 count=1 2>/dev/null | head -n1)
[ "$got" = "$SIG_RW" ] && g_check read-rw-signature pass "$got" || g_check read-rw-signature fail "read '$got', want '$SIG_RW'"
got=$(dd if=/dev/$rod bs=512 count=1 2>/dev/null | head -n1)
[ "$got" = "$SIG_RO" ] && g_check read-ro-signature pass "$got" || g_check read-ro-signature fail "read '$got', want '$SIG_RO'"

# A 1 MiB pattern read back through the device (many requests, several segments each).
dd if=/dev/urandom of=/tmp/pattern bs=64k count=16 2>/dev/null
if dd if=/tmp/pattern of=/dev/$rwd bs=64k seek=32 oflag=direct conv=fsync 2>/tmp/dd.err &&
    dd if=/dev/$rwd of=/tmp/back bs=64k skip=32 count=16 iflag=direct 2>/dev/null &&
    cmp -s /tmp/pattern /tmp/back; then
    g_check rw-pattern pass "1 MiB at offset 2 MiB written and read back (O_DIRECT)"
else
    g_check rw-pattern fail "$(cat /tmp/dd.err | tail -n1)"
fi
g_value pattern_md5 "$(md5sum /tmp/pattern | cut -d' ' -f1)"

# The line level 1 looks for at LBA 2048.
printf 'VIADUCT-GUEST-WROTE %s\n' "$TOKEN" > /tmp/line
if dd if=/tmp/line of=/dev/$rwd bs=512 seek=2048 conv=sync,fsync 2>/tmp/dd.err; then
    g_check write-rw pass "LBA 2048"
else
    g_check write-rw fail "$(tail -n1 /tmp/dd.err)"
fi

# Flush: the disk is write-back (VIRTIO_BLK_F_FLUSH) and the fsyncs above sent flushes
# (field 16 of /sys/block/X/stat: flush requests completed).
g_value rw_write_cache "$(cat /sys/block/$rwd/queue/write_cache)"
flushes=$(awk '{print $16}' /sys/block/$rwd/stat)
g_value rw_flushes "$flushes"
[ "$(cat /sys/block/$rwd/queue/write_cache)" = "write back" ] && [ "${flushes:-0}" -gt 0 ] &&
    g_check flush pass "write back, $flushes flushes completed" ||
    g_check flush fail "write_cache '$(cat /sys/block/$rwd/queue/write_cache)', flushes '$flushes'"

# Level 1's NVMe through virtio-blk: its signature, and a token at NVME_LBA.
nvd=$(disk_by_serial vnvme0)
if [ "$WANT_BLKS" = 3 ] && [ -n "$nvd" ]; then
    got=$(dd if=/dev/$nvd bs=512 count=1 2>/dev/null | head -n1)
    [ "$got" = "$SIG_NVME" ] && g_check nvme-disk-signature pass "$got" || g_check nvme-disk-signature fail "read '$got', want '$SIG_NVME'"
    printf 'VIADUCT-VIRTIO-WROTE %s\n' "$TOKEN" | dd of=/dev/$nvd bs=512 seek=$NVME_LBA conv=sync,fsync 2>/tmp/dd.err &&
        g_check nvme-disk-write pass "LBA $NVME_LBA" || g_check nvme-disk-write fail "$(tail -n1 /tmp/dd.err)"
elif [ "$WANT_BLKS" = 3 ]; then
    g_check nvme-disk-signature fail "no disk with serial vnvme0"
fi

# Read-only: the kernel sees it (VIRTIO_BLK_F_RO) ...
[ "$(cat /sys/block/$rod/ro)" = 1 ] && g_check ro-flag pass "/sys/block/$rod/ro = 1" || g_check ro-flag fail "/sys/block/$rod/ro = $(cat /sys/block/$rod/ro)"
# ... and the device itself refuses a write the kernel lets through.
blockdev --setrw /dev/$rod 2>/dev/null
g_value ro_after_setrw "$(cat /sys/block/$rod/ro)"
if dd if=/tmp/line of=/dev/$rod bs=512 seek=8 count=1 conv=sync,fsync oflag=direct 2>/tmp/dd.err; then
    g_check ro-write-refused fail "a write to the read-only disk succeeded"
else
    g_check ro-write-refused pass "$(grep -m1 "dd:" /tmp/dd.err)"
fi
g_value ro_dmesg "$(dmesg | grep -i -m1 "$rod" | tr -s ' ')"

# Entropy.
g_value hwrng_current "$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
case "$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)" in
    virtio_rng*) g_check hwrng-virtio pass "$(cat /sys/class/misc/hw_random/rng_current)" ;;
    *) g_check hwrng-virtio fail "rng_current '$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)'" ;;
esac
a=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
n=$(dd if=/dev/hwrng bs=4096 count=4 2>/dev/null | wc -c)
b=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
z=$(dd if=/dev/zero bs=64 count=1 2>/dev/null | md5sum | cut -d' ' -f1)
g_value hwrng_bytes "$n"
if [ "$n" -eq 16384 ] && [ "$a" != "$b" ] && [ "$a" != "$z" ]; then
    g_check hwrng-data pass "16384 bytes, two 64-byte reads differ"
else
    g_check hwrng-data fail "read $n bytes, md5 $a / $b"
fi

# Interrupts arrived on the MSI-X vectors (irqfd path).
for b in $blks $rngs; do
    g_value "irqs_$b" "$(g_dev_irq_count $b)"
done
n=0
for b in $blks; do [ "$(g_dev_irq_count $b)" -gt 0 ] && n=$((n + 1)); done
[ "$n" -eq "$WANT_BLKS" ] && g_check blk-msix-interrupts pass "all $n disks" || g_check blk-msix-interrupts fail "$n of $WANT_BLKS disks had MSI-X interrupts"
sync
GUEST

tb_run_l2 "$run" 200 /tmp/virtio-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M \
    --disk path=$rw,id=vrw0 --disk path=$ro,readonly=on,id=vro0 ${nvme_dev:+--disk path=$nvme_dev,id=vnvme0} \
    --rng --log-level info

# Level 1 looks at the images after viaduct exited.
line=$(dd if=$rw bs=512 skip=2048 count=1 2>/dev/null | head -n1)
want="VIADUCT-GUEST-WROTE $token"
[ "$line" = "$want" ] && tb_check $run/l1-sees-guest-write pass "$line" || tb_check $run/l1-sees-guest-write fail "LBA 2048 holds '$line', want '$want'"
tb_value $run/l1_pattern_md5 "$(dd if=$rw bs=64k skip=32 count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
if [ -n "$nvme_dev" ]; then
    line=$(dd if=$nvme_dev bs=512 skip=$nvme_lba count=1 iflag=direct 2>/dev/null | head -n1)
    want="VIADUCT-VIRTIO-WROTE $token"
    [ "$line" = "$want" ] && tb_check $run/l1-sees-nvme-write pass "$line" || tb_check $run/l1-sees-nvme-write fail "LBA $nvme_lba holds '$line', want '$want'"
fi
ro_sum_after=$(md5sum $ro | cut -d' ' -f1)
[ "$ro_sum_before" = "$ro_sum_after" ] && tb_check $run/l1-ro-image-unchanged pass "$ro_sum_after" ||
    tb_check $run/l1-ro-image-unchanged fail "md5 $ro_sum_before -> $ro_sum_after"
grep -E "virtio|panicked|ERROR" /tmp/l2/$run/console.log 2>/dev/null | grep -v "^l2" | head -n 20
rm -f $rw $ro
true
