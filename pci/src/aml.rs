//! The DSDT pieces for the PCI host bridge: `Device (PCI0)` with `_CRS` (bus range, I/O,
//! 32-bit and 64-bit memory windows, the 0xCF8 ports) and `_PRT`, plus a motherboard
//! resource device reserving the ECAM window (Linux wants MCFG areas reserved, see
//! `pci_mmcfg_reserved`). Built with acpi_tables' aml module; the VMM places both objects
//! inside `Scope (\_SB_)`.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::{Aml, AmlSink};

use crate::bridge::Window;
use crate::intx::IntxRouting;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmlError {
    #[error("PCI {what} window {base:#x}+{size:#x} cannot be described in ACPI")]
    Window { what: &'static str, base: u64, size: u64 },
}

/// Everything the host bridge's ACPI description says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridgeResources {
    pub segment: u16,
    pub last_bus: u8,
    pub io: Window,
    pub mmio32: Window,
    /// A second 32-bit range, for firmware that places ECAM inside the 32-bit hole and
    /// allocates on both sides of it.
    pub mmio32_above: Option<Window>,
    /// Also route the ISA I/O range below the config ports (0x0000-0x0CF7) to the bus, as on
    /// a PC whose LPC bridge decodes it (and as QEMU's q35 says): the chipset registers
    /// firmware places there (the ACPI PM block at PMBASE) then lie inside a host bridge window.
    pub io_isa: bool,
    pub mmio64: Window,
    /// The ECAM window (MCFG) covering buses 0..=last_bus.
    pub ecam: Window,
    pub intx: IntxRouting,
}

/// `Device (PCI0)` and `Device (PCI0.MRES)`-style ECAM reservation, as AML bytes.
pub struct PciHostBridgeAml {
    res: HostBridgeResources,
}

fn check_32(what: &'static str, w: Window) -> Result<(u32, u32), AmlError> {
    let err = AmlError::Window { what, base: w.base, size: w.size };
    let last = w.last().ok_or(err.clone())?;
    Ok((u32::try_from(w.base).map_err(|_| err.clone())?, u32::try_from(last).map_err(|_| err)?))
}

impl PciHostBridgeAml {
    /// Validates the windows: 32-bit ones must lie below 4 GiB, I/O below 64 Ki.
    pub fn new(res: HostBridgeResources) -> Result<Self, AmlError> {
        check_32("32-bit MMIO", res.mmio32)?;
        if let Some(w) = res.mmio32_above {
            check_32("32-bit MMIO", w)?;
        }
        check_32("ECAM", res.ecam)?;
        if u32::try_from(res.ecam.size).is_err() {
            return Err(AmlError::Window { what: "ECAM", base: res.ecam.base, size: res.ecam.size });
        }
        let (io_base, io_last) = check_32("I/O", res.io)?;
        if io_last > 0xffff || io_base == 0 {
            return Err(AmlError::Window { what: "I/O", base: res.io.base, size: res.io.size });
        }
        if res.mmio64.last().is_none() {
            return Err(AmlError::Window { what: "64-bit MMIO", base: res.mmio64.base, size: res.mmio64.size });
        }
        Ok(Self { res })
    }

    /// The last bus of the `_CRS` bus range (MCFG must end there too).
    pub fn last_bus(&self) -> u8 {
        self.res.last_bus
    }

    fn prt(&self) -> aml::PackageBuilder {
        let mut prt = aml::PackageBuilder::new();
        for (slot, pin, gsi) in self.res.intx.prt_entries() {
            let address: u32 = (u32::from(slot) << 16) | 0xffff;
            let pin_index: u8 = pin as u8 - 1;
            // Source 0 = the GSI in the fourth element is a global system interrupt (ACPI
            // 6.5 6.2.13), level-triggered active-low like every PCI INTx line.
            let entry = aml::Package::new(vec![&address, &pin_index, &aml::ZERO, &gsi]);
            prt.add_element(&entry);
        }
        prt
    }
}

impl Aml for PciHostBridgeAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let r = &self.res;
        // Validated in `new`: these conversions cannot fail.
        let (m32_base, m32_last) = (r.mmio32.base as u32, r.mmio32.last().unwrap_or(r.mmio32.base) as u32);
        let (io_base, io_last) = (r.io.base as u16, r.io.last().unwrap_or(r.io.base) as u16);
        let m64_last = r.mmio64.last().unwrap_or(r.mmio64.base);
        let bus = AddressSpace::<u16>::new_bus_number(0, u16::from(r.last_bus));
        let cf8 = aml::IO::new(0xcf8, 0xcf8, 1, 8);
        let io = AddressSpace::<u16>::new_io(io_base, io_last, None);
        let io_isa = AddressSpace::<u16>::new_io(0, 0xcf7, None);
        let mem32 =
            AddressSpace::<u32>::new_memory(AddressSpaceCacheable::NotCacheable, true, m32_base, m32_last, None);
        let mem32_above = r.mmio32_above.map(|w| {
            let (base, last) = (w.base as u32, w.last().unwrap_or(w.base) as u32);
            AddressSpace::<u32>::new_memory(AddressSpaceCacheable::NotCacheable, true, base, last, None)
        });
        let mem64 =
            AddressSpace::<u64>::new_memory(AddressSpaceCacheable::Cacheable, true, r.mmio64.base, m64_last, None);
        let mut resources: Vec<&dyn Aml> = vec![&bus, &cf8];
        if r.io_isa {
            resources.push(&io_isa);
        }
        resources.extend([&io as &dyn Aml, &mem32]);
        if let Some(m) = &mem32_above {
            resources.push(m);
        }
        resources.push(&mem64);
        let crs = aml::ResourceTemplate::new(resources);
        let prt = self.prt();
        let hid = aml::EISAName::new("PNP0A08");
        let cid = aml::EISAName::new("PNP0A03");
        let segment = u64::from(r.segment);
        aml::Device::new(
            "PCI0".into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_CID".into(), &cid),
                &aml::Name::new("_ADR".into(), &aml::ZERO),
                &aml::Name::new("_SEG".into(), &segment),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_BBN".into(), &aml::ZERO),
                &aml::Name::new("_CRS".into(), &crs),
                &aml::Name::new("_PRT".into(), &prt),
            ],
        )
        .to_aml_bytes(sink);

        // A consumer range on a motherboard device, as Linux's `check_mcfg_resource` expects.
        let ecam = aml::Memory32Fixed::new(true, r.ecam.base as u32, r.ecam.size as u32);
        let ecam_crs = aml::ResourceTemplate::new(vec![&ecam]);
        let mres_hid = aml::EISAName::new("PNP0C02");
        aml::Device::new(
            "MRES".into(),
            vec![
                &aml::Name::new("_HID".into(), &mres_hid),
                &aml::Name::new("_UID".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &ecam_crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> HostBridgeResources {
        HostBridgeResources {
            segment: 0,
            last_bus: 3,
            io: Window { base: 0x1000, size: 0xf000 },
            mmio32: Window { base: 0xc000_0000, size: 0x2000_0000 },
            mmio32_above: None,
            io_isa: false,
            mmio64: Window { base: 1 << 32, size: 1 << 39 },
            ecam: Window { base: 0xe000_0000, size: 4 << 20 },
            intx: IntxRouting::new(16, 8).unwrap(),
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn bytes_carry_the_windows() {
        let mut bytes = Vec::new();
        PciHostBridgeAml::new(res()).unwrap().to_aml_bytes(&mut bytes);
        assert!(find(&bytes, b"PCI0").is_some() && find(&bytes, b"_PRT").is_some() && find(&bytes, b"MRES").is_some());
        // WordBusNumber descriptor: 0x88, length, type 2, ..., min 0, max 3.
        let bus = find(&bytes, &[0x88, 0x0d, 0x00, 0x02]).expect("bus number descriptor");
        assert_eq!(&bytes[bus + 8..bus + 12], &[0, 0, 3, 0]);
        // DWordMemory 0xc0000000..0xdfffffff.
        let m32 = find(&bytes, &[0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xdf]);
        assert!(m32.is_some(), "32-bit window");
        // QWordMemory min 4 GiB, max 4 GiB + 512 GiB - 1.
        let mut q = (1u64 << 32).to_le_bytes().to_vec();
        q.extend_from_slice(&((1u64 << 32) + (1 << 39) - 1).to_le_bytes());
        assert!(find(&bytes, &q).is_some(), "64-bit window");
        // 128 _PRT entries: the package count byte follows the PkgLength.
        let prt = find(&bytes, b"_PRT").unwrap();
        assert_eq!(bytes[prt + 4], 0x12, "PackageOp");
        assert!(bytes[prt + 5..prt + 9].contains(&128));
        // The ECAM reservation: Memory32Fixed at 0xe0000000, 4 MiB.
        assert!(find(&bytes, &[0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xe0, 0x00, 0x00, 0x40, 0x00]).is_some());
    }

    #[test]
    fn second_32bit_window() {
        let mut r = res();
        r.mmio32 = Window { base: 0x1000_0000, size: 0xa000_0000 };
        r.mmio32_above = Some(Window { base: 0xc000_0000, size: 0x3ec0_0000 });
        let mut bytes = Vec::new();
        PciHostBridgeAml::new(r).unwrap().to_aml_bytes(&mut bytes);
        assert!(find(&bytes, &[0x00, 0x00, 0x00, 0x10, 0xff, 0xff, 0xff, 0xaf]).is_some());
        assert!(find(&bytes, &[0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xbf, 0xfe]).is_some());
    }

    #[test]
    fn isa_io_range() {
        // WordIO descriptor: 0x88, length 0x0d, type 1, general flags, type-specific flags,
        // granularity 0, min, max.
        let word_io = |min: u16, max: u16| {
            let mut d = vec![0x88, 0x0d, 0x00, 0x01];
            d.extend_from_slice(&[0x0c, 0x03, 0x00, 0x00]);
            d.extend_from_slice(&min.to_le_bytes());
            d.extend_from_slice(&max.to_le_bytes());
            d
        };
        let mut bytes = Vec::new();
        PciHostBridgeAml::new(res()).unwrap().to_aml_bytes(&mut bytes);
        assert!(find(&bytes, &word_io(0x1000, 0xffff)).is_some());
        assert!(find(&bytes, &word_io(0, 0xcf7)).is_none());
        let mut r = res();
        r.io_isa = true;
        let mut bytes = Vec::new();
        PciHostBridgeAml::new(r).unwrap().to_aml_bytes(&mut bytes);
        assert!(find(&bytes, &word_io(0, 0xcf7)).is_some());
        assert!(find(&bytes, &word_io(0x1000, 0xffff)).is_some());
    }

    #[test]
    fn invalid_windows_rejected() {
        let mut r = res();
        r.mmio32 = Window { base: 0xf000_0000, size: 0x2000_0000 };
        assert!(matches!(PciHostBridgeAml::new(r), Err(AmlError::Window { what: "32-bit MMIO", .. })));
        let mut r = res();
        r.mmio32_above = Some(Window { base: 0xfec0_0000, size: 0x1_0000_0000 });
        assert!(PciHostBridgeAml::new(r).is_err());
        let mut r = res();
        r.io = Window { base: 0x1000, size: 0x10000 };
        assert!(PciHostBridgeAml::new(r).is_err());
        let mut r = res();
        r.mmio64.size = 0;
        assert!(PciHostBridgeAml::new(r).is_err());
    }
}
