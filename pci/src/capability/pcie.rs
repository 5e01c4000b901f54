//! PCI Express capability (PCIe base spec 7.5.3), version 2, for endpoints, root complex
//! integrated endpoints and root ports. Link registers report a trained x1 Gen1 link.

use super::CAP_ID_PCIE;
use crate::config_space::{ConfigSpace, ConfigSpaceError};

/// Device/port type (PCIe capabilities register bits 7:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciePortType {
    Endpoint = 0,
    LegacyEndpoint = 1,
    RootPort = 4,
    RootComplexIntegratedEndpoint = 9,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCapabilityConfig {
    pub port_type: PciePortType,
    /// Root ports: the port number (link capabilities bits 31:24) and physical slot number.
    pub port_number: u8,
    /// Root ports: whether a device sits behind the port (slot presence detect).
    pub slot_occupied: bool,
}

/// Body length after the 2-byte header: the v2 structure is 0x3c bytes.
const BODY_LEN: usize = 0x3c - 2;

/// Adds the capability with its write masks; returns its offset.
pub fn add_pcie_capability(config: &mut ConfigSpace, cfg: PcieCapabilityConfig) -> Result<usize, ConfigSpaceError> {
    let root = cfg.port_type == PciePortType::RootPort;
    let has_link = cfg.port_type != PciePortType::RootComplexIntegratedEndpoint;
    let mut b = [0u8; BODY_LEN];
    // `b[n]` is the byte at capability offset n + 2.
    let mut put = |cap_off: usize, v: &[u8]| b[cap_off - 2..cap_off - 2 + v.len()].copy_from_slice(v);
    let caps: u16 = 2 | ((cfg.port_type as u16) << 4) | (u16::from(root) << 8);
    put(0x02, &caps.to_le_bytes());
    // Device capabilities: 128 B max payload, role-based error reporting.
    put(0x04, &(1u32 << 15).to_le_bytes());
    if has_link {
        // Link capabilities: 2.5 GT/s, x1, DLL link active reporting on root ports.
        let link_cap = 1 | (1 << 4) | (u32::from(root) << 20) | (u32::from(cfg.port_number) << 24);
        put(0x0c, &link_cap.to_le_bytes());
        // Link status: 2.5 GT/s x1; DLL link active when something is behind a root port.
        let link_status: u16 = 1 | (1 << 4) | (u16::from(root && cfg.slot_occupied) << 13);
        put(0x12, &link_status.to_le_bytes());
        // Link capabilities 2: supported speeds vector = 2.5 GT/s.
        put(0x2c, &(1u32 << 1).to_le_bytes());
        // Link control 2: target link speed 2.5 GT/s.
        put(0x30, &1u16.to_le_bytes());
    }
    if root {
        // Slot capabilities: physical slot number; no hot-plug.
        put(0x14, &(u32::from(cfg.port_number) << 19).to_le_bytes());
        // Slot status: presence detect state.
        put(0x1a, &(u16::from(cfg.slot_occupied) << 6).to_le_bytes());
    }
    let off = config.add_capability(CAP_ID_PCIE, &b)?;
    let reg = off / 4;
    // Device control (writable: error reporting, payload/read request size, etc.; the FLR
    // bit 15 reads 0) and device status (bits 3:0 RW1C).
    config.set_write_mask(reg + 2, 0x0000_7fff);
    config.set_w1c_mask(reg + 2, 0x000f << 16);
    if has_link {
        // Link control: ASPM, RCB, common clock, extended synch, clock PM, bandwidth irqs.
        config.set_write_mask(reg + 4, 0x0000_0ffb);
        // Device control 2 and link control 2 (target speed and the like).
        config.set_write_mask(reg + 10, 0x0000_ffff);
        config.set_write_mask(reg + 12, 0x0000_ffff);
    }
    if root {
        // Slot control: writable storage, no hot-plug events behind it.
        config.set_write_mask(reg + 6, 0x0000_1fff);
        // Root control: error/PME interrupt enables; root status PME status is RW1C.
        config.set_write_mask(reg + 7, 0x0000_001f);
        config.set_w1c_mask(reg + 8, 1 << 16);
    }
    Ok(off)
}

/// Root ports: reports whether a device sits behind the port (slot presence detect and
/// data link layer link active), for the port whose PCIe capability is at `offset`.
pub fn set_slot_occupied(config: &mut ConfigSpace, offset: usize, occupied: bool) {
    let link = config.dword(offset + 0x10);
    let slot = config.dword(offset + 0x18);
    let (link_active, presence) = (1u32 << (16 + 13), 1u32 << (16 + 6));
    let pick = |v: u32, bit: u32| if occupied { v | bit } else { v & !bit };
    config.set((offset + 0x10) / 4, pick(link, link_active));
    config.set((offset + 0x18) / 4, pick(slot, presence));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::{DeviceIds, HeaderType};

    fn cs() -> ConfigSpace {
        let ids = DeviceIds {
            vendor_id: 1,
            device_id: 2,
            class_code: 0x060400,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        ConfigSpace::new(ids, HeaderType::Bridge, true)
    }

    #[test]
    fn root_port_layout_and_masks() {
        let mut c = cs();
        let cfg = PcieCapabilityConfig { port_type: PciePortType::RootPort, port_number: 3, slot_occupied: true };
        let off = add_pcie_capability(&mut c, cfg).unwrap();
        let r = off / 4;
        assert_eq!(c.read(r), 0x0142_0010, "v2, root port, slot implemented");
        assert_eq!(c.read(r + 3), 0x0310_0011);
        assert_eq!(c.read(r + 4) >> 16, 0x2011, "x1 Gen1, link active");
        assert_eq!(c.read(r + 5) >> 19, 3);
        assert_eq!(c.read(r + 6) >> 16, 0x40);
        c.write(r + 4, 0, &[0xff; 4]);
        assert_eq!(c.read(r + 4), 0x2011_0ffb, "link status is RO");
        c.write(r, 0, &[0xff; 4]);
        assert_eq!(c.read(r), 0x0142_0010);
        c.set(r + 2, 0x0005_0000);
        c.write(r + 2, 2, &[0x01, 0x00]);
        assert_eq!(c.read(r + 2), 0x0004_0000, "device status RW1C");
        assert_eq!(c.capabilities().last().map(|c| c.offset), Some(off));
        set_slot_occupied(&mut c, off, false);
        assert_eq!(c.read(r + 4) >> 16, 0x0011);
        assert_eq!(c.read(r + 6) >> 16, 0);
        set_slot_occupied(&mut c, off, true);
        assert_eq!((c.read(r + 4) >> 16, c.read(r + 6) >> 16), (0x2011, 0x40));
    }

    #[test]
    fn integrated_endpoint_has_no_link() {
        let mut c = cs();
        let cfg = PcieCapabilityConfig {
            port_type: PciePortType::RootComplexIntegratedEndpoint,
            port_number: 0,
            slot_occupied: false,
        };
        let off = add_pcie_capability(&mut c, cfg).unwrap();
        assert_eq!(c.read(off / 4 + 3), 0);
        c.write(off / 4 + 4, 0, &[0xff; 4]);
        assert_eq!(c.read(off / 4 + 4), 0);
    }
}
