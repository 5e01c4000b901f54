//! Type 1 functions of our root complex: the PCIe root port's bus numbers and forwarding
//! windows, and the constructors for the host bridge and root ports.

use crate::capability::pcie::{PcieCapabilityConfig, PciePortType};
use crate::config_space::{
    ConfigSpace, DeviceIds, HeaderType, REG_BRIDGE_BUSES, REG_BRIDGE_IO_STATUS, REG_BRIDGE_MEMORY, REG_BRIDGE_PREFETCH,
    REG_BRIDGE_PREFETCH_BASE_UPPER, REG_BRIDGE_PREFETCH_LIMIT_UPPER,
};
use crate::function::{EmulatedFunction, FunctionConfig, FunctionError, NoRegisters};

/// Vendor ID used for our own bridges (Red Hat / QEMU's PCI ID space, which Linux drives
/// with the generic host bridge and pcieport code and no quirks).
pub const VENDOR_ID_REDHAT: u16 = 0x1b36;
pub const DEVICE_ID_HOST_BRIDGE: u16 = 0x0008;
pub const DEVICE_ID_ROOT_PORT: u16 = 0x000c;
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;
pub const CLASS_PCI_BRIDGE: u32 = 0x06_04_00;

/// Bridge windows are 1 MiB (memory) and 4 KiB (I/O) granular (PCI-to-PCI bridge spec 3.2.5).
pub const MEM_WINDOW_GRANULE: u64 = 1 << 20;
pub const IO_WINDOW_GRANULE: u64 = 1 << 12;

/// An inclusive-exclusive address window `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub base: u64,
    pub size: u64,
}

impl Window {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// The last address, `None` when empty.
    pub fn last(&self) -> Option<u64> {
        self.size.checked_sub(1).and_then(|s| self.base.checked_add(s))
    }

    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|e| e <= self.end())
    }
}

/// What a bridge forwards downstream. `None` = window disabled (base above limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeWindows {
    pub io: Option<Window>,
    pub mem: Option<Window>,
    pub prefetch: Option<Window>,
}

/// Programs the forwarding windows as firmware would. Windows are rounded out to the
/// bridge granularity by the caller (the allocator does).
pub fn write_bridge_windows(cs: &mut ConfigSpace, w: &BridgeWindows) {
    let status = cs.read(REG_BRIDGE_IO_STATUS) & 0xffff_0000;
    let io = match w.io.and_then(|io| Some((io.base, io.last()?))) {
        Some((base, last)) => ((base >> 8) & 0xf0) as u32 | ((((last >> 8) & 0xf0) as u32) << 8),
        None => 0x00f0,
    };
    cs.set(REG_BRIDGE_IO_STATUS, status | io);
    let mem = match w.mem.and_then(|m| Some((m.base, m.last()?))) {
        Some((base, last)) => ((base >> 16) & 0xfff0) as u32 | (((last >> 16) & 0xfff0) as u32) << 16,
        None => 0x0000_fff0,
    };
    cs.set(REG_BRIDGE_MEMORY, mem);
    let (pref, base_hi, limit_hi) = match w.prefetch.and_then(|p| Some((p.base, p.last()?))) {
        Some((base, last)) => (
            ((base >> 16) & 0xfff0) as u32 | (((last >> 16) & 0xfff0) as u32) << 16,
            (base >> 32) as u32,
            (last >> 32) as u32,
        ),
        None => (0x0000_fff0, u32::MAX, 0),
    };
    // Bits 3:0 of base and limit say "64-bit window" (RO 1).
    cs.set(REG_BRIDGE_PREFETCH, pref | 0x0001_0001);
    cs.set(REG_BRIDGE_PREFETCH_BASE_UPPER, base_hi);
    cs.set(REG_BRIDGE_PREFETCH_LIMIT_UPPER, limit_hi);
}

/// Decodes the forwarding windows the guest (or firmware) programmed.
pub fn read_bridge_windows(cs: &ConfigSpace) -> BridgeWindows {
    let window = |base: u64, last: u64| (base <= last).then(|| Window { base, size: last - base + 1 });
    let io_reg = cs.read(REG_BRIDGE_IO_STATUS);
    let io = window(u64::from(io_reg & 0xf0) << 8, (u64::from(io_reg & 0xf000)) | 0xfff);
    let mem_reg = cs.read(REG_BRIDGE_MEMORY);
    let mem = window(u64::from(mem_reg & 0xfff0) << 16, (u64::from(mem_reg >> 16 & 0xfff0) << 16) | 0xf_ffff);
    let p = cs.read(REG_BRIDGE_PREFETCH);
    let pbase = (u64::from(p & 0xfff0) << 16) | (u64::from(cs.read(REG_BRIDGE_PREFETCH_BASE_UPPER)) << 32);
    let plast =
        (u64::from(p >> 16 & 0xfff0) << 16) | 0xf_ffff | (u64::from(cs.read(REG_BRIDGE_PREFETCH_LIMIT_UPPER)) << 32);
    BridgeWindows { io, mem, prefetch: window(pbase, plast) }
}

/// Primary, secondary and subordinate bus numbers of a bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusNumbers {
    pub primary: u8,
    pub secondary: u8,
    pub subordinate: u8,
}

pub fn write_bus_numbers(cs: &mut ConfigSpace, b: BusNumbers) {
    let keep = cs.read(REG_BRIDGE_BUSES) & 0xff00_0000;
    cs.set(
        REG_BRIDGE_BUSES,
        keep | u32::from(b.primary) | (u32::from(b.secondary) << 8) | (u32::from(b.subordinate) << 16),
    );
}

pub fn read_bus_numbers(cs: &ConfigSpace) -> BusNumbers {
    let r = cs.read(REG_BRIDGE_BUSES);
    BusNumbers { primary: r as u8, secondary: (r >> 8) as u8, subordinate: (r >> 16) as u8 }
}

/// The host bridge at 00:00.0: identity only, no BARs.
pub fn host_bridge() -> Result<EmulatedFunction<NoRegisters>, FunctionError> {
    let cfg = FunctionConfig {
        ids: DeviceIds {
            vendor_id: VENDOR_ID_REDHAT,
            device_id: DEVICE_ID_HOST_BRIDGE,
            class_code: CLASS_HOST_BRIDGE,
            revision: 0,
            subsystem_vendor_id: VENDOR_ID_REDHAT,
            subsystem_id: 0x1100,
        },
        header: HeaderType::Endpoint,
        pcie: None,
        power_management: false,
        bars: Vec::new(),
        msi: None,
        msix: None,
        interrupt_pin: 0,
    };
    EmulatedFunction::new("0000:00:00.0", &cfg, NoRegisters)
}

/// A PCIe root port with its bus numbers programmed; windows are set once the devices
/// behind it are known.
pub fn root_port(
    name: &str,
    port_number: u8,
    buses: BusNumbers,
) -> Result<EmulatedFunction<NoRegisters>, FunctionError> {
    let cfg = FunctionConfig {
        ids: DeviceIds {
            vendor_id: VENDOR_ID_REDHAT,
            device_id: DEVICE_ID_ROOT_PORT,
            class_code: CLASS_PCI_BRIDGE,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        },
        header: HeaderType::Bridge,
        pcie: Some(PcieCapabilityConfig { port_type: PciePortType::RootPort, port_number, slot_occupied: false }),
        power_management: true,
        bars: Vec::new(),
        msi: None,
        msix: None,
        interrupt_pin: 0,
    };
    let mut port = EmulatedFunction::new(name, &cfg, NoRegisters)?;
    write_bus_numbers(port.config_mut(), buses);
    write_bridge_windows(port.config_mut(), &BridgeWindows::default());
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PciDevice;

    #[test]
    fn windows_round_trip() {
        let mut port = root_port("rp", 1, BusNumbers { primary: 0, secondary: 1, subordinate: 1 }).unwrap();
        assert_eq!(read_bridge_windows(port.config()), BridgeWindows::default());
        let w = BridgeWindows {
            io: Some(Window { base: 0x2000, size: 0x1000 }),
            mem: Some(Window { base: 0xc010_0000, size: 0x20_0000 }),
            prefetch: Some(Window { base: 0x10_0000_0000, size: 64 << 30 }),
        };
        write_bridge_windows(port.config_mut(), &w);
        assert_eq!(read_bridge_windows(port.config()), w);
        assert_eq!(port.read_config(8), 0xc020_c010);
        assert_eq!(port.read_config(9), 0x0001_0001 | 0xfff0_0000);
        assert_eq!(port.read_config(10), 0x10);
        assert_eq!(port.read_config(11), 0x1f);
        assert_eq!(read_bus_numbers(port.config()).secondary, 1);
        // The guest may reprogram them; the flag bits stay.
        port.write_config(9, 0, &[0; 4]);
        assert_eq!(port.read_config(9), 0x0001_0001);
    }

    #[test]
    fn host_bridge_identity() {
        let mut hb = host_bridge().unwrap();
        assert_eq!(hb.read_config(0), 0x0008_1b36);
        assert_eq!(hb.read_config(2) >> 8, CLASS_HOST_BRIDGE);
        assert!(hb.bars().is_empty());
    }
}
