# The guest script baked into the firmware test disks (tools/testbed/lib/fwdisks.sh), run
# as /guest.sh by the generic guest init after a firmware booted the disk's bootloader: what
# the firmware and the platform handed to the kernel. busybox sh, guest helpers loaded.
# shellcheck shell=dash  # busybox ash in level 1/2

disk=$(sed -n 's/.*fwdisk=\([a-z]*\).*/\1/p' /proc/cmdline)
g_value cmdline "$(cat /proc/cmdline)"
# The command line comes from the disk's bootloader configuration (SYSLINUX or GRUB): the
# VMM was given none.
[ -n "$disk" ] && g_check booted-from-disk pass "fwdisk=$disk" || g_check booted-from-disk fail "no fwdisk= in '$(cat /proc/cmdline)'"
if [ -d /sys/firmware/efi ]; then g_value firmware uefi; else g_value firmware bios; fi
g_value efi_banner "$(dmesg | grep -m1 'efi: EFI v')"

# SMBIOS (etc/smbios/* through the firmware), as dmidecode would read it.
for f in sys_vendor product_name product_version product_uuid bios_vendor bios_version chassis_vendor; do
    g_value "dmi_$f" "$(cat /sys/class/dmi/id/$f 2>/dev/null)"
done
g_value dmi_tables "$(ls /sys/firmware/dmi/entries 2>/dev/null | sed 's/-[0-9]*$//' | sort -un | tr '\n' ' ')"

# The chipset and the ACPI tables (etc/table-loader through the firmware).
g_value host_bridge "$(cat /sys/bus/pci/devices/0000:00:00.0/vendor 2>/dev/null):$(cat /sys/bus/pci/devices/0000:00:00.0/device 2>/dev/null)"
g_value lpc_bridge "$(cat /sys/bus/pci/devices/0000:00:1f.0/vendor 2>/dev/null):$(cat /sys/bus/pci/devices/0000:00:1f.0/device 2>/dev/null)"
g_value acpi_tables "$(ls /sys/firmware/acpi/tables 2>/dev/null | tr '\n' ' ')"
g_value mmconfig "$(dmesg | grep -m1 'MMCONFIG for domain' | sed 's/^\[[^]]*\] //')"
g_value pci_crs "$(dmesg | grep 'pci_bus 0000:00: root bus resource' | sed 's/^\[[^]]*\] //' | tr '\n' ';')"
conflicts=$(dmesg | grep -i 'no compatible bridge window\|can.t claim\|BAR .* failed to assign' | sed 's/^\[[^]]*\] //')
g_value bar_conflicts "$(printf '%s' "$conflicts" | grep -c .)"
g_value bar_conflict_lines "$(printf '%s' "$conflicts" | head -n 3 | tr '\n' ';')"
g_value memtotal_kb "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
g_value e820_ram "$(dmesg | grep 'BIOS-e820:' | grep ' usable' | sed 's/^\[[^]]*\] //' | tr '\n' ';')"
g_value block_devices "$(ls /sys/block | tr '\n' ' ')"
g_lspci

# A UEFI variable written now must be there after the VM restarts with the same vars file:
# the first boot creates it with a random token, later boots report it.
if [ -d /sys/firmware/efi ]; then
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    v=/sys/firmware/efi/efivars/ViaductTest-6e1f8d3c-2d4b-4b2e-9c51-7a0b3f5e9d21
    if [ -e "$v" ]; then
        g_value efivar_found "$(tail -c +5 "$v")"
    else
        token=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
        # Attributes: non-volatile | boot service | runtime access (0x7), then the data.
        if printf '\007\000\000\000%s' "$token" >"$v"; then
            g_value efivar_created "$token"
        else
            g_check efivar-write fail "writing $v failed"
        fi
    fi
fi
true
