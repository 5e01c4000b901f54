# tb-description: one guest with the NVMe passed through (VFIO, MSI-X) and virtio-blk + virtio-rng beside it: both disks read what level 1/level 0 wrote and keep what the guest wrote
# tb-timeout: 300
# tb-run: viaduct-virtio-vfio
# tb-check: viaduct-virtio-vfio/vfio-bind viaduct-virtio-vfio/nvme-bound viaduct-virtio-vfio/virtio-bound
# tb-check: viaduct-virtio-vfio/nvme-read viaduct-virtio-vfio/virtio-read viaduct-virtio-vfio/copy-nvme-to-virtio
# tb-check: viaduct-virtio-vfio/nvme-write viaduct-virtio-vfio/virtio-write viaduct-virtio-vfio/hwrng
# tb-check: viaduct-virtio-vfio/msix-both viaduct-virtio-vfio/l1-sees-virtio-write viaduct-virtio-vfio/nvme-restored
# The NVMe 0000:02:00.0 goes to vfio-pci and into the guest next to a virtio-blk disk (a raw
# image in level 1) and virtio-rng, all on the guest's bus 0. The guest finds both drivers,
# reads disk.img's signature through nvme and the image's signature through virtio-blk,
# writes a token through each (nvme at LBA 120008 of disk.img, virtio-blk at LBA 2048 of the
# image), and both devices count MSI-X interrupts. tests/virtio_vfio.rs checks the token in
# disk.img on level 0; level 1 checks its image. The NVMe goes back to the nvme driver.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1 (build failed?)"; exit 0; }

run=viaduct-virtio-vfio
img=/tmp/virtio-vfio.img
token="$TB_RUN_ID-vv-$(date +%s)-$$"
sig_img="VIADUCT-VIRTIO-VFIO-IMAGE $token"
nvme_lba=120008
rm -f $img
dd if=/dev/zero of=$img bs=1M count=4 2>/dev/null
printf '%s\n' "$sig_img" | dd of=$img conv=notrunc 2>/dev/null
tb_value $run/token "$token"
tb_value $run/nvme_lba $nvme_lba

if g=$(tb_bind_vfio "$TB_NVME"); then tb_check $run/vfio-bind pass "$TB_NVME group $g"
else tb_check $run/vfio-bind fail "driver=$(tb_driver $TB_NVME)"; tb_bind nvme "$TB_NVME"; exit 1; fi

cat >/tmp/virtio-vfio-guest.sh <<GUEST
SIG_NVME='$TB_SIG_NVME'
SIG_IMG='$sig_img'
TOKEN='$token'
NVME_LBA=$nvme_lba
GUEST
cat >>/tmp/virtio-vfio-guest.sh <<'GUEST'
g_lspci
nv=$(g_find_devs 1b36 0010)
blk=$(g_find_devs 1af4 1042)
rng=$(g_find_devs 1af4 1044)
g_value functions "nvme=$nv blk=$blk rng=$rng"
[ -n "$nv" ] && [ "$(g_driver $nv)" = nvme ] && g_check nvme-bound pass "$nv" || g_check nvme-bound fail "nvme '$nv' driver=$(g_driver $nv)"
[ -n "$blk" ] && [ "$(g_driver $blk)" = virtio-pci ] && [ -n "$rng" ] && [ "$(g_driver $rng)" = virtio-pci ] &&
    g_check virtio-bound pass "blk $blk rng $rng" || g_check virtio-bound fail "blk '$blk' rng '$rng'"
g_wait_for /dev/nvme0n1 30
g_wait_for /dev/vda 10
sig=$(dd if=/dev/nvme0n1 bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$sig" = "$SIG_NVME" ] && g_check nvme-read pass "$sig" || g_check nvme-read fail "read '$sig'"
got=$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$got" = "$SIG_IMG" ] && g_check virtio-read pass "$got" || g_check virtio-read fail "read '$got'"
# Both at once: a 1 MiB copy from the NVMe to the virtio disk and back, compared.
if dd if=/dev/nvme0n1 of=/dev/vda bs=64k count=16 skip=16 seek=16 iflag=direct oflag=direct 2>/dev/null &&
    dd if=/dev/vda of=/tmp/a bs=64k count=16 skip=16 iflag=direct 2>/dev/null &&
    dd if=/dev/nvme0n1 of=/tmp/b bs=64k count=16 skip=16 iflag=direct 2>/dev/null && cmp -s /tmp/a /tmp/b; then
    g_check copy-nvme-to-virtio pass "1 MiB copied and compared"
else
    g_check copy-nvme-to-virtio fail "copy or compare failed"
fi
printf 'VIADUCT-VIRTIO-VFIO-NVME %s\n' "$TOKEN" | dd of=/dev/nvme0n1 bs=512 seek=$NVME_LBA conv=sync,fsync 2>/dev/null
back=$(dd if=/dev/nvme0n1 bs=512 skip=$NVME_LBA count=1 iflag=direct 2>/dev/null | head -n1)
[ "$back" = "VIADUCT-VIRTIO-VFIO-NVME $TOKEN" ] && g_check nvme-write pass "LBA $NVME_LBA" || g_check nvme-write fail "read back '$back'"
printf 'VIADUCT-GUEST-WROTE %s\n' "$TOKEN" | dd of=/dev/vda bs=512 seek=2048 conv=sync,fsync 2>/dev/null
back=$(dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -n1)
[ "$back" = "VIADUCT-GUEST-WROTE $TOKEN" ] && g_check virtio-write pass "LBA 2048" || g_check virtio-write fail "read back '$back'"
n=$(dd if=/dev/hwrng bs=1024 count=4 2>/dev/null | wc -c)
[ "$n" -eq 4096 ] && g_check hwrng pass "4096 bytes" || g_check hwrng fail "$n bytes"
sync
g_value nvme_irqs "$(g_dev_irq_count $nv)"
g_value virtio_blk_irqs "$(g_dev_irq_count $blk)"
[ "$(g_dev_irq_count $nv)" -gt 0 ] && [ "$(g_dev_irq_count $blk)" -gt 0 ] &&
    g_check msix-both pass "nvme $(g_dev_irq_count $nv), virtio-blk $(g_dev_irq_count $blk)" ||
    g_check msix-both fail "nvme $(g_dev_irq_count $nv), virtio-blk $(g_dev_irq_count $blk)"
GUEST

tb_run_l2 "$run" 240 /tmp/virtio-vfio-guest.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
    --cmdline "@CMDLINE@" --memory 256M --log-level info \
    --device "$TB_NVME" --disk path=$img,id=vv0 --rng

line=$(dd if=$img bs=512 skip=2048 count=1 2>/dev/null | head -n1)
[ "$line" = "VIADUCT-GUEST-WROTE $token" ] && tb_check $run/l1-sees-virtio-write pass "$line" ||
    tb_check $run/l1-sees-virtio-write fail "LBA 2048 holds '$line'"
tb_bind nvme "$TB_NVME"
[ "$(tb_driver $TB_NVME)" = nvme ] && tb_check $run/nvme-restored pass "nvme" || tb_check $run/nvme-restored fail "driver $(tb_driver $TB_NVME)"
rm -f $img
true
