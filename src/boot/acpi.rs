//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced: sleep control/status and reset
//! registers), MADT, MCFG and a DSDT with the PCI host bridge. Built with the `acpi_tables`
//! crate, once, as QEMU hands tables to firmware: a tables file whose pointers hold offsets
//! inside it, an RSDP file, and a linker/loader script that places both and patches the
//! pointers and checksums. Firmware runs the script (fw_cfg `etc/table-loader`); direct kernel
//! boot runs the same script itself ([`write_tables`]), so both boots describe one machine.

use std::collections::BTreeMap;

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use platform::table_loader::{LoaderError, TableLoader, Zone};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vstate::memory::GuestMemory;

/// The fw_cfg files (QEMU's names, which SeaBIOS and OVMF look for).
pub const TABLES_FILE: &str = "etc/acpi/tables";
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
pub const LOADER_FILE: &str = "etc/table-loader";

const OEM_ID: [u8; 6] = *b"VIADCT";
const OEM_TABLE_ID: [u8; 8] = *b"VIADUCT ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: no VGA. No 8042 bit, so Linux skips probing a keyboard we do not have;
/// the i8042 reset line still works (reboot=k).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// FADT offsets (ACPI 6.5, 5.2.9) of the fields the loader patches.
const FADT_X_DSDT: u32 = 140;
/// RSDP (ACPI 6.5, 5.2.5.3): checksum over the first 20 bytes, extended checksum over all
/// 36, and the XSDT address.
const RSDP_CHECKSUM: u32 = 8;
const RSDP_V1_LEN: u32 = 20;
const RSDP_EXT_CHECKSUM: u32 = 32;
const RSDP_XSDT: u32 = 24;
const SDT_HEADER_LEN: usize = 36;
const SDT_CHECKSUM: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({size} bytes) do not fit in the {room}-byte BIOS area")]
    TooLarge { size: usize, room: u64 },
    #[error("writing ACPI tables into guest memory failed")]
    Write(#[source] vm_memory::GuestMemoryError),
    #[error("linking ACPI tables failed")]
    Link(#[source] LoaderError),
    #[error("describing the PCI host bridge: {0}")]
    Aml(String),
}

/// Where the guest finds the registers the FADT describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmRegisters {
    /// Direct boot: viaduct's one-byte sleep control/status and reset port.
    SleepPort,
    /// Through firmware: the ICH9 PM block at `pm_base` (sleep control at PM1_CNT + 1 and
    /// sleep status at PM1_STS + 1, whose bits sit where the hardware-reduced registers
    /// have them) and the reset control register at 0xCF9.
    Ich9 { pm_base: u16 },
}

pub struct AcpiConfig<'a> {
    pub vcpus: u8,
    /// MCFG's end bus: the ECAM window it advertises covers buses 0..=pci_last_bus.
    pub pci_last_bus: u8,
    /// Where ECAM is (MCFG's base address).
    pub ecam_base: u64,
    pub pm: PmRegisters,
    /// Devices placed in `\_SB` besides COM1 and the RTC: the PCI host bridge `PCI0` with
    /// its `_CRS`/`_PRT` and the ECAM reservation (from `pci::aml`), ...
    pub sb_aml: &'a [&'a dyn Aml],
}

/// The tables as the linker/loader hands them over.
pub struct AcpiTables {
    /// Every table but the RSDP; pointers in it hold offsets into this file.
    pub tables: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub loader: TableLoader,
}

fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    // COM1 as a PNP device: in hardware-reduced mode Linux has no legacy PIC and maps ISA
    // IRQs only for devices the DSDT describes (8250_pnp then binds ttyS0 with IRQ 4).
    let com1_port = layout::COM1_PORT as u16;
    let com1_io = aml::IO::new(com1_port, com1_port, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::COM1_GSI);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);
    // The CMOS RTC, without an IRQ: we raise none, and an undescribed ISA IRQ 8 makes
    // rtc_cmos fail its probe in hardware-reduced mode (no legacy PIC to map it).
    let cmos_port = layout::CMOS_PORT as u16;
    let rtc_io = aml::IO::new(cmos_port, cmos_port, 1, layout::CMOS_LEN as u8);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    let rtc_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00"));
    let rtc_crs = aml::Name::new("_CRS".into(), &rtc_crs);
    let rtc = aml::Device::new("RTC_".into(), vec![&rtc_hid, &rtc_crs]);
    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &rtc];
    sb_children.extend_from_slice(cfg.sb_aml);
    let sb = aml::Scope::new("\\_SB_".into(), sb_children);
    // \_S5_: the sleep type Linux writes to the sleep control register on poweroff.
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&layout::ACPI_S5_SLEEP_TYPE, &layout::ACPI_S5_SLEEP_TYPE]),
    );

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64, pm: PmRegisters) -> Vec<u8> {
    let byte_port = |port: u64| GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    let (sleep_control, sleep_status, reset, reset_value) = match pm {
        PmRegisters::SleepPort => {
            let port = byte_port(layout::ACPI_SLEEP_CONTROL_PORT);
            (port, port, port, layout::ACPI_RESET_VALUE)
        }
        PmRegisters::Ich9 { pm_base } => (
            byte_port(u64::from(pm_base) + 5),
            byte_port(u64::from(pm_base) + 1),
            byte_port(platform::q35::reset::RESET_CONTROL_PORT),
            platform::q35::reset::RESET_VALUE,
        ),
    };
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    b.sleep_control_reg = sleep_control;
    b.sleep_status_reg = sleep_status;
    b.reset_reg = reset;
    b.reset_value = reset_value;
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt =
        MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(layout::LAPIC_START as u32));
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, layout::IOAPIC_START as u32, 0));
    let mut out = Vec::new();
    madt.to_aml_bytes(&mut out);
    out
}

fn mcfg(base: u64, last_bus: u8) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(base, 0, 0, last_bus);
    let mut out = Vec::new();
    mcfg.to_aml_bytes(&mut out);
    out
}

/// Builds the tables and the script that links them.
pub fn build(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    let mut tables = Vec::new();
    let mut loader = TableLoader::new();
    loader.allocate(TABLES_FILE, 64, Zone::High).map_err(AcpiError::Link)?;
    loader.allocate(RSDP_FILE, 16, Zone::FSeg).map_err(AcpiError::Link)?;
    let mut placed = Vec::new();
    let mut place = |tables: &mut Vec<u8>, table: Vec<u8>| {
        tables.resize(tables.len().next_multiple_of(16), 0);
        let offset = tables.len() as u32;
        placed.push((offset, table.len() as u32));
        tables.extend_from_slice(&table);
        offset
    };
    let dsdt = place(&mut tables, dsdt(cfg));
    let fadt = place(&mut tables, fadt(u64::from(dsdt), cfg.pm));
    let madt = place(&mut tables, madt(cfg.vcpus));
    let mcfg = place(&mut tables, mcfg(cfg.ecam_base, cfg.pci_last_bus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for offset in [fadt, madt, mcfg] {
        xsdt.add_entry(u64::from(offset));
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt = place(&mut tables, xsdt_bytes);
    let link = |r: Result<(), LoaderError>| r.map_err(AcpiError::Link);
    link(loader.add_pointer(TABLES_FILE, TABLES_FILE, fadt + FADT_X_DSDT, 8))?;
    for i in 0..3 {
        link(loader.add_pointer(TABLES_FILE, TABLES_FILE, xsdt + SDT_HEADER_LEN as u32 + 8 * i, 8))?;
    }
    for (offset, len) in placed {
        link(loader.add_checksum(TABLES_FILE, offset + SDT_CHECKSUM as u32, offset, len))?;
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, u64::from(xsdt)).to_aml_bytes(&mut rsdp);
    link(loader.add_pointer(RSDP_FILE, TABLES_FILE, RSDP_XSDT, 8))?;
    link(loader.add_checksum(RSDP_FILE, RSDP_CHECKSUM, 0, RSDP_V1_LEN))?;
    link(loader.add_checksum(RSDP_FILE, RSDP_EXT_CHECKSUM, 0, rsdp.len() as u32))?;
    Ok(AcpiTables { tables, rsdp, loader })
}

/// Direct boot: runs the loader with the RSDP at [`layout::ACPI_START`] (where Linux scans
/// for it) and the tables after it, writes both and returns the RSDP address.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let AcpiTables { tables, rsdp, loader } = build(cfg)?;
    let tables_at = (layout::ACPI_START + rsdp.len() as u64).next_multiple_of(64);
    let room = layout::ACPI_END - layout::ACPI_START;
    let end = tables_at + tables.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooLarge { size: (end - layout::ACPI_START) as usize, room });
    }
    let mut files = BTreeMap::from([(TABLES_FILE.to_string(), tables), (RSDP_FILE.to_string(), rsdp)]);
    let placed = loader
        .execute(&mut files, |_, _, _, zone| Ok(if zone == Zone::FSeg { layout::ACPI_START } else { tables_at }))
        .map_err(AcpiError::Link)?;
    for (name, data) in &files {
        let addr = placed.get(name).copied().unwrap_or(tables_at);
        mem.write_slice(data, GuestAddress(addr)).map_err(AcpiError::Write)?;
    }
    Ok(layout::ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn table_at(blob: &[u8], base: u64, addr: u64) -> &[u8] {
        let off = (addr - base) as usize;
        let len = u32::from_le_bytes(blob[off + 4..off + 8].try_into().unwrap()) as usize;
        &blob[off..off + len]
    }

    /// The tables linked as firmware links them: the RSDP at 0xf0000, the rest at 0x7fff0000.
    fn linked(cfg: &AcpiConfig) -> (Vec<u8>, Vec<u8>, u64) {
        let t = build(cfg).unwrap();
        let mut files =
            BTreeMap::from([(TABLES_FILE.to_string(), t.tables.clone()), (RSDP_FILE.to_string(), t.rsdp.clone())]);
        let base = 0x7fff_0000;
        t.loader.execute(&mut files, |_, _, _, zone| Ok(if zone == Zone::FSeg { 0xf_0000 } else { base })).unwrap();
        (files.remove(TABLES_FILE).unwrap(), files.remove(RSDP_FILE).unwrap(), base)
    }

    #[test]
    fn tables_link_up_with_valid_checksums() {
        let marker = aml::Name::new("MARK".into(), &aml::ONE);
        let cfg = AcpiConfig {
            vcpus: 2,
            pci_last_bus: 3,
            ecam_base: layout::PCI_ECAM_START,
            pm: PmRegisters::SleepPort,
            sb_aml: &[&marker],
        };
        let (blob, rsdp, base) = linked(&cfg);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]));
        assert!(checksum_ok(&rsdp[..36]));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table_at(&blob, base, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(xsdt));
        let mut sigs = Vec::new();
        for entry in xsdt[36..].chunks(8) {
            let t = table_at(&blob, base, u64::from_le_bytes(entry.try_into().unwrap()));
            assert!(checksum_ok(t), "{:?}", &t[..4]);
            sigs.push(t[..4].to_vec());
            if &t[..4] == b"MCFG" {
                // One allocation: base, segment 0, buses 0..=pci_last_bus.
                assert_eq!(t.len(), 44 + 16);
                assert_eq!(u64::from_le_bytes(t[44..52].try_into().unwrap()), layout::PCI_ECAM_START);
                assert_eq!((t[54], t[55]), (0, 3));
            }
            if &t[..4] == b"APIC" {
                // Header (44 bytes) + 2 local APICs (8 each) + 1 IOAPIC (12).
                assert_eq!(t.len(), 44 + 16 + 12);
            }
            if &t[..4] == b"FACP" {
                let dsdt_addr = u64::from_le_bytes(t[140..148].try_into().unwrap());
                let dsdt = table_at(&blob, base, dsdt_addr);
                assert_eq!(&dsdt[..4], b"DSDT");
                assert!(checksum_ok(dsdt));
                assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
                assert!(dsdt.windows(4).any(|w| w == b"MARK"));
                assert!(dsdt.windows(4).any(|w| w == b"RTC_"));
                assert!(dsdt.windows(4).any(|w| w == b"COM1"));
                // Sleep control and reset: one byte at port 0x600.
                assert_eq!(u64::from_le_bytes(t[176..184].try_into().unwrap()), 0, "no PM1 blocks");
                assert_eq!(&t[244..248], &[1, 8, 0, 1], "sleep control GAS: I/O, 8 bits, byte access");
                assert_eq!(u64::from_le_bytes(t[248..256].try_into().unwrap()), layout::ACPI_SLEEP_CONTROL_PORT);
                assert_eq!(u64::from_le_bytes(t[120..128].try_into().unwrap()), layout::ACPI_SLEEP_CONTROL_PORT);
                assert_eq!(t[128], layout::ACPI_RESET_VALUE);
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]);
    }

    #[test]
    fn firmware_tables_point_at_the_ich9_registers() {
        let cfg = AcpiConfig {
            vcpus: 1,
            pci_last_bus: 2,
            ecam_base: 0xb000_0000,
            pm: PmRegisters::Ich9 { pm_base: 0x600 },
            sb_aml: &[],
        };
        let (blob, rsdp, base) = linked(&cfg);
        let xsdt = table_at(&blob, base, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        let entry =
            |i: usize| table_at(&blob, base, u64::from_le_bytes(xsdt[36 + 8 * i..44 + 8 * i].try_into().unwrap()));
        let fadt = entry(0);
        assert!(checksum_ok(fadt));
        assert_eq!(u64::from_le_bytes(fadt[248..256].try_into().unwrap()), 0x605, "sleep control: PM1_CNT + 1");
        assert_eq!(u64::from_le_bytes(fadt[260..268].try_into().unwrap()), 0x601, "sleep status: PM1_STS + 1");
        assert_eq!(u64::from_le_bytes(fadt[120..128].try_into().unwrap()), 0xcf9);
        assert_eq!(fadt[128], 6);
        let mcfg = entry(2);
        assert_eq!(u64::from_le_bytes(mcfg[44..52].try_into().unwrap()), 0xb000_0000);
        // The pointers in the unlinked tables are offsets, and the loader script is whole.
        let t = build(&cfg).unwrap();
        assert_eq!(t.rsdp.len(), 36);
        assert_eq!(t.loader.len(), 2 + 4 + 5 + 3);
        let unlinked_xsdt = u64::from_le_bytes(t.rsdp[24..32].try_into().unwrap());
        assert_eq!(&t.tables[unlinked_xsdt as usize..unlinked_xsdt as usize + 4], b"XSDT");
    }
}
