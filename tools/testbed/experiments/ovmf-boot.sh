# tb-description: experiment (not in the suite): OVMF in level 2 (QEMU and viaduct) booting the GPT/GRUB test disk from virtio-blk; level 0's QEMU may abort (see docs/firmware.md)
# tb-timeout: 900
# tb-needs: qemu firmware
# tb-devices: fw-disks
# tb-run: ovmf-qemu ovmf-viaduct
# tb-check: kvm-amd-options gpt-disk ovmf-qemu/unexpected ovmf-viaduct/unexpected
# tb-check: ovmf-qemu/booted-from-disk ovmf-viaduct/booted-from-disk ovmf-qemu/efivar-write ovmf-viaduct/efivar-write
# Run: tools/testbed/run --script tools/testbed/experiments/ovmf-boot.sh [--env KEY=VALUE]...
#   OVMF_VMMS="qemu viaduct"   which VMMs try, in this order
#   OVMF_KVM_AMD="vgif=0"      options level 1's kvm_amd is reloaded with
#   OVMF_QEMU_IRQCHIP=off      QEMU with its own (userspace) interrupt controllers, which
#                              makes level 1's KVM intercept every CR8 write of level 2
# and TB_L0_ACCEL on level 0. An abort of level 0's QEMU (tcg_handle_interrupt: assertion
# failed: (bql_locked())) ends level 1 mid-run: the console then shows how far it got.
# Why it aborts (QEMU 10.0, target/i386/tcg/system/misc_helper.c): a MOV to CR8 executed in
# SVM guest mode while the VMCB holds a pending virtual interrupt (V_IRQ, what KVM sets to
# ask for an interrupt window) calls cpu_interrupt() without the big QEMU lock. OVMF's
# interrupt entry code restores CR8 at the end of every handler, so a timer tick arriving
# during a handler is enough; SeaBIOS and Linux do not write CR8.
# shellcheck shell=dash  # busybox ash in level 1/2
if [ -n "${OVMF_KVM_AMD:-}" ]; then
    # shellcheck disable=SC2086 # options are split on purpose
    { rmmod kvm_amd && modprobe kvm_amd $OVMF_KVM_AMD; } && tb_check kvm-amd-options pass "$OVMF_KVM_AMD" ||
        tb_check kvm-amd-options fail "reloading kvm_amd with $OVMF_KVM_AMD failed"
    tb_value kvm_amd_params "$(grep -H . /sys/module/kvm_amd/parameters/* 2>/dev/null | sed 's|.*/||' | tr '\n' ' ')"
fi
gpt=$(tb_nvme_by_serial fwgpt001) || { tb_check gpt-disk fail "no NVMe with serial fwgpt001"; exit 0; }
dev=/dev/$(tb_nvme_ctrl "$gpt")n1
tb_value gpt_dev "$dev"
echo 'g_check unexpected fail "the disk guest script runs from the disk"' >/tmp/fw-unused.sh
cp /usr/share/OVMF/OVMF_VARS_4M.fd /tmp/ovmf-vars-qemu.fd
case " ${OVMF_VMMS:-qemu viaduct} " in *" qemu "*)
    tb_run_l2 ovmf-qemu 400 /tmp/fw-unused.sh -- qemu-system-x86_64 \
        -M "q35${OVMF_QEMU_IRQCHIP:+,kernel-irqchip=$OVMF_QEMU_IRQCHIP}" -accel kvm -cpu host -m 512M \
        -smp 1 -nodefaults -display none -no-reboot -serial stdio \
        -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
        -drive if=pflash,format=raw,file=/tmp/ovmf-vars-qemu.fd \
        -drive file="$dev",if=virtio,format=raw,readonly=on ;;
esac
case " ${OVMF_VMMS:-qemu viaduct} " in *" viaduct "*)
    rm -f /tmp/ovmf-vars-viaduct.fd
    tb_run_l2 ovmf-viaduct 400 /tmp/fw-unused.sh -- viaduct \
        --firmware code=/usr/share/OVMF/OVMF_CODE_4M.fd,vars=/tmp/ovmf-vars-viaduct.fd \
        --memory 512M --disk path="$dev",readonly=on --log-level info ;;
esac
true
