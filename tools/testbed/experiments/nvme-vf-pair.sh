# tb-description: reproducer (not in the suite): the NVMe SR-IOV VF under viaduct, alone and next to another assigned device; its admin queue times out
# tb-timeout: 420
# Run: tools/testbed/run --no-build --script tools/testbed/experiments/nvme-vf-pair.sh
# Seen 2026-11-25: alone the VF passed in vfio-guest-more (11:24) but timed out in tools/demo
# (11:58, with 2 igb VFs created and the whole NVMe used by an earlier guest); with the whole
# NVMe or with the igb VF in the same guest the guest logs "nvme nvme1: I/O 4 QID 0 timeout,
# completion polled" (its MSI-X interrupt never arrives) and never finishes. ignore_loglevel shows the guest's
# kernel messages on the console despite the guest init's printk setting.
command -v viaduct >/dev/null || { tb_skip "viaduct is not in level 1"; exit 0; }
igb_vf=$(tb_create_vfs "$TB_IGB_PF" 1 0 | head -n1)
nvme_vf=$(tb_nvme_sriov_vf 2>/dev/null) || { tb_check nvme-vf fail "no NVMe SR-IOV VF"; exit 0; }
for b in $igb_vf $TB_NVME $nvme_vf; do tb_bind_vfio "$b" >/dev/null; done
cat >/tmp/g.sh <<'G'
g_wait_for /dev/nvme0n1 30
for d in /sys/bus/pci/devices/*; do b=$(basename $d); [ -d $d/msi_irqs ] && g_value irqs_$b "$(g_driver $b) $(g_msi_vectors $b) vectors $(g_dev_irq_count $b) irqs"; done
n=$(dmesg | grep -c 'QID 0 timeout')
g_check no-admin-timeouts "$([ "$n" = 0 ] && echo pass || echo fail)" "$n admin-queue timeouts"
G
export TB_L2_CMDLINE="console=ttyS0 panic=-1 no_timer_check quiet ignore_loglevel"
for pair in "$nvme_vf" "$TB_NVME $nvme_vf" "$igb_vf $nvme_vf"; do
    set -- $(for b in $pair; do echo --device "path=/sys/bus/pci/devices/$b"; done)
    run=vf-with-$(echo "$pair" | wc -w)-devices-$(echo "$pair" | awk '{print $1}' | tr ':.' '--')
    tb_run_l2 "$run" 150 /tmp/g.sh -- viaduct --kernel @KERNEL@ --initramfs @INITRD@ \
        --cmdline "@CMDLINE@" --memory 256M --log-level debug "$@"
done
true
