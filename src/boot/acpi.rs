//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced, sleep control + reset register), MADT,
//! MCFG and a DSDT with the PCI host bridge. Built with the `acpi_tables` crate.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vstate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"VIADCT";
const OEM_TABLE_ID: [u8; 8] = *b"VIADUCT ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: no VGA. No 8042 bit, so Linux skips probing a keyboard we do not have;
/// the i8042 reset line still works (reboot=k).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables ({size} bytes) do not fit in the {room}-byte BIOS area")]
    TooLarge { size: usize, room: u64 },
    #[error("writing ACPI tables into guest memory failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

pub struct AcpiConfig<'a> {
    pub vcpus: u8,
    /// MCFG's end bus: the ECAM window it advertises covers buses 0..=pci_last_bus.
    pub pci_last_bus: u8,
    /// Devices placed in `\_SB` besides COM1 and the RTC: the PCI host bridge `PCI0` with
    /// its `_CRS`/`_PRT` and the ECAM reservation (from `pci::aml`), ...
    pub sb_aml: &'a [&'a dyn Aml],
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

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let port = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, layout::ACPI_SLEEP_CONTROL_PORT);
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    b.sleep_control_reg = port;
    b.sleep_status_reg = port;
    b.reset_reg = port;
    b.reset_value = layout::ACPI_RESET_VALUE;
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

fn mcfg(last_bus: u8) -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, last_bus);
    let mut out = Vec::new();
    mcfg.to_aml_bytes(&mut out);
    out
}

/// Lays the tables out from [`layout::ACPI_START`], writes them and returns the RSDP address.
pub fn write_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let tables = build_tables(cfg, layout::ACPI_START);
    let room = layout::ACPI_END - layout::ACPI_START;
    if tables.len() as u64 > room {
        return Err(AcpiError::TooLarge { size: tables.len(), room });
    }
    mem.write_slice(&tables, GuestAddress(layout::ACPI_START)).map_err(AcpiError::Write)?;
    Ok(layout::ACPI_START)
}

/// All tables as one blob meant to sit at `base`, RSDP first.
fn build_tables(cfg: &AcpiConfig, base: u64) -> Vec<u8> {
    let align = |v: &mut Vec<u8>| v.resize(v.len().next_multiple_of(16), 0);
    let mut blob = vec![0u8; Rsdp::len()];
    align(&mut blob);
    let place = |blob: &mut Vec<u8>, table: Vec<u8>| {
        let addr = base + blob.len() as u64;
        blob.extend_from_slice(&table);
        align(blob);
        addr
    };
    let dsdt_addr = place(&mut blob, dsdt(cfg));
    let fadt_addr = place(&mut blob, fadt(dsdt_addr));
    let madt_addr = place(&mut blob, madt(cfg.vcpus));
    let mcfg_addr = place(&mut blob, mcfg(cfg.pci_last_bus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(&mut blob, xsdt_bytes);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    blob[..rsdp.len()].copy_from_slice(&rsdp);
    blob
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

    #[test]
    fn tables_link_up_with_valid_checksums() {
        let marker = aml::Name::new("MARK".into(), &aml::ONE);
        let cfg = AcpiConfig { vcpus: 2, pci_last_bus: 3, sb_aml: &[&marker] };
        let base = layout::ACPI_START;
        let blob = build_tables(&cfg, base);
        assert_eq!(&blob[..8], b"RSD PTR ");
        assert!(checksum_ok(&blob[..20]));
        assert!(checksum_ok(&blob[..36]));
        let xsdt_addr = u64::from_le_bytes(blob[24..32].try_into().unwrap());
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
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]);
    }
}
