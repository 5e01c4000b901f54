# Guest-side (L2) helpers, sourced before the scenario's guest script. busybox sh.
# Markers go to the console; tb_run_l2 in L1 turns `@@G check NAME ...` into the L1 check
# RUN/NAME and `@@G value KEY ...` into the L1 value RUN/KEY.
# shellcheck shell=dash  # busybox ash in level 1/2: dash plus the few extensions marked below

# g_check NAME pass|fail [DETAIL...]
g_check() {
    local name=$1 status=$2; shift 2
    echo "@@G check $name $status $*"
}

# g_value KEY VALUE...
g_value() {
    local key=$1; shift
    echo "@@G value $key $*"
}

# g_expect NAME CMD...: pass if CMD exits 0.
g_expect() {
    local name=$1; shift
    if "$@" >/tmp/g_expect.out 2>&1; then g_check "$name" pass "$*"
    else g_check "$name" fail "$* -> $(tail -n1 /tmp/g_expect.out)"; fi
}

# g_find_devs VENDOR DEVICE: BDFs of matching PCI functions (hex ids without 0x).
g_find_devs() {
    local d
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor")" = "0x$1" ] && [ "$(cat "$d/device")" = "0x$2" ] && basename "$d"
    done
    return 0
}

# g_driver BDF: the bound driver's name, or "none".
g_driver() {
    local l=/sys/bus/pci/devices/$1/driver
    if [ -e "$l" ]; then basename "$(readlink "$l")"; else echo none; fi
}

# g_wait_for PATH SECONDS: wait until PATH exists.
g_wait_for() {
    local i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1)); [ "$i" -gt $(($2 * 10)) ] && return 1
        sleep 0.1
    done
}

# g_read_sector DEV LBA: the first line of 512-byte sector LBA of block device DEV, read
# past the page cache (so it comes from the device, by DMA).
g_read_sector() {
    dd if="$1" bs=512 skip="$2" count=1 iflag=direct 2>/dev/null | head -n1
}

# g_write_check CHECK DEV LBA TEXT: writes the line TEXT as sector LBA of DEV (synced to the
# device) and reads it back with g_read_sector; check CHECK passes when it matches.
g_write_check() {
    local back
    printf '%s\n' "$4" | dd of="$2" bs=512 seek="$3" conv=sync,fsync 2>/dev/null
    back=$(g_read_sector "$2" "$3")
    if [ "$back" = "$4" ]; then g_check "$1" pass "$2 LBA $3"
    else g_check "$1" fail "$2 LBA $3 read back '$back'"; fi
}

# g_irq_count PATTERN: sum over all CPUs of /proc/interrupts lines matching PATTERN.
g_irq_count() {
    awk -v pat="$1" 'NR == 1 {ncpu = NF; next}
        $0 ~ pat {for (i = 2; i <= ncpu + 1; i++) if ($i ~ /^[0-9]+$/) s += $i}
        END {print s + 0}' /proc/interrupts
}

# g_lspci: one line per function: BDF vendor:device class driver.
g_lspci() {
    local d b
    for d in /sys/bus/pci/devices/*; do
        b=$(basename "$d")
        echo "$b $(cut -c3- "$d/vendor"):$(cut -c3- "$d/device") class=$(cut -c3- "$d/class") driver=$(g_driver "$b")"
    done
}

# g_msi_vectors BDF: how many MSI/MSI-X vectors the guest driver allocated for BDF.
g_msi_vectors() {
    ls "/sys/bus/pci/devices/$1/msi_irqs" 2>/dev/null | wc -l
}

# g_dev_irq_count BDF: interrupts received on all of BDF's MSI/MSI-X vectors, all CPUs.
g_dev_irq_count() {
    local irqs
    irqs=$(ls "/sys/bus/pci/devices/$1/msi_irqs" 2>/dev/null | tr '\n' ' ')
    awk -v irqs=" $irqs" 'NR == 1 {ncpu = NF; next}
        { n = $1; sub(/:$/, "", n) }
        index(irqs, " " n " ") {for (i = 2; i <= ncpu + 1; i++) if ($i ~ /^[0-9]+$/) s += $i}
        END {print s + 0}' /proc/interrupts
}

# g_irq_kind PATTERN [BDF]: how the interrupts of the /proc/interrupts lines matching PATTERN
# (an awk regex on the whole line, e.g. 'nvme[0-9]+q') that counted at least one were
# delivered, from the guest's own view: intx (the line's chip is the IO-APIC), msix or msi
# (an MSI chip; the mode is BDF's msi_irqs/IRQ when BDF is given, else PCI-MSIX/PCI-MSI).
# Several kinds are joined by '+'; "none" when no such line counted.
g_irq_kind() {
    local irq line kind kinds=""
    for irq in $(awk -v pat="$1" 'NR == 1 {ncpu = NF; next}
            $0 ~ pat {s = 0; for (i = 2; i <= ncpu + 1; i++) if ($i ~ /^[0-9]+$/) s += $i
                if (s > 0) {n = $1; sub(/:$/, "", n); print n}}' /proc/interrupts); do
        line=$(grep -E "^ *$irq:" /proc/interrupts)
        case "$line" in
        *IO-APIC*) kind=intx ;;
        *PCI-MSIX*) kind=msix ;;
        *PCI-MSI*) kind=msi ;;
        *) kind=other ;;
        esac
        if [ "$kind" != intx ] && [ "$kind" != other ] && [ -n "$2" ] && [ -r "/sys/bus/pci/devices/$2/msi_irqs/$irq" ]; then
            kind=$(cat "/sys/bus/pci/devices/$2/msi_irqs/$irq")
        fi
        case " $kinds " in *" $kind "*) ;; *) kinds="$kinds $kind" ;; esac
    done
    kinds=$(echo $kinds | tr ' ' '+')
    echo "${kinds:-none}"
}

# g_nvme_regs BDF: "CC CSTS AQA" (hex) of an NVMe function that no driver holds, read from
# BAR0 (memory decoding turned on for the read through sysfs `enable`).
g_nvme_regs() {
    local p=/sys/bus/pci/devices/$1 bar
    bar=$(($(head -n1 "$p/resource" | cut -d' ' -f1)))
    echo 1 >"$p/enable"
    echo "$(devmem $((bar + 0x14)) 32) $(devmem $((bar + 0x1c)) 32) $(devmem $((bar + 0x24)) 32)"
    echo 0 >"$p/enable"
}

# g_nvme_is_reset CC CSTS: the controller registers hold their reset values: CC.EN=0 and
# CC.SHN=00 (all of CC 0), CSTS.RDY=0 and CSTS.SHST=00.
g_nvme_is_reset() {
    [ $(($1)) = 0 ] && [ $(($2 & 0xd)) = 0 ]
}
