//! The fw_cfg items that describe the machine to firmware, the ones QEMU's q35 machine
//! provides by default (its fw_cfg_arch_create and pc_machine_done): CPU counts, RAM size
//! and map, UUID, graphics, boot menu and order, SMBIOS.
//!
//! Not provided, since nothing here needs them: `etc/reserved-memory-end` (memory
//! hot-plug), `etc/msr_feature_control` (locks IA32_FEATURE_CONTROL for nested VMX/SMX
//! guests), `etc/smi/*` (SMM feature negotiation), NUMA tables.

use super::items::{bootorder_blob, e820_blob, le16, le32, le64, E820Entry, E820Type};
use super::{keys, FwCfgBuilder, FwCfgError};
use crate::smbios::SmbiosTables;

/// QEMU's value for `IRQ0_OVERRIDE`: the PIT's IRQ 0 arrives on IOAPIC pin 2 (SeaBIOS puts
/// that in the MP table it builds).
const IRQ0_OVERRIDE_PIN2: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineItems {
    pub vcpus: u16,
    /// RAM regions `(start, size)`.
    pub ram: Vec<(u64, u64)>,
    /// Extra reserved ranges for `etc/e820` (firmware adds its own on top).
    pub reserved: Vec<(u64, u64)>,
    pub uuid: [u8; 16],
    /// No display: SeaBIOS then mirrors its screen to COM1.
    pub nographic: bool,
    /// OpenFirmware paths, most preferred first (empty: the firmware's own order).
    pub boot_order: Vec<String>,
    /// How long SeaBIOS waits before rebooting when nothing boots, in milliseconds.
    pub boot_fail_wait_ms: u32,
    pub smbios: Option<SmbiosTables>,
}

impl MachineItems {
    pub fn e820(&self) -> Vec<E820Entry> {
        let ram = self.ram.iter().map(|&(addr, len)| E820Entry { addr, len, kind: E820Type::Ram });
        let reserved = self.reserved.iter().map(|&(addr, len)| E820Entry { addr, len, kind: E820Type::Reserved });
        ram.chain(reserved).collect()
    }

    pub fn add_to(&self, fw: &mut FwCfgBuilder) -> Result<(), FwCfgError> {
        let ram_size: u64 = self.ram.iter().map(|(_, s)| s).sum();
        fw.add_item(keys::UUID, self.uuid.to_vec())?;
        fw.add_item(keys::RAM_SIZE, le64(ram_size))?;
        fw.add_item(keys::NOGRAPHIC, le16(u16::from(self.nographic)))?;
        fw.add_item(keys::NB_CPUS, le16(self.vcpus))?;
        fw.add_item(keys::MAX_CPUS, le16(self.vcpus))?;
        // No boot menu: SeaBIOS would otherwise wait for a key press.
        fw.add_item(keys::BOOT_MENU, le16(0))?;
        fw.add_item(keys::NUMA, le64(0))?;
        fw.add_item(keys::IRQ0_OVERRIDE, le32(IRQ0_OVERRIDE_PIN2))?;
        // The legacy reservations table is empty: `etc/e820` carries the whole map.
        fw.add_item(keys::E820_TABLE, le32(0))?;
        fw.add_file("etc/e820", e820_blob(&self.e820()))?;
        fw.add_file("etc/boot-fail-wait", le32(self.boot_fail_wait_ms))?;
        if !self.boot_order.is_empty() {
            fw.add_file("bootorder", bootorder_blob(&self.boot_order))?;
        }
        if let Some(s) = &self.smbios {
            fw.add_file("etc/smbios/smbios-anchor", s.anchor.clone())?;
            fw.add_file("etc/smbios/smbios-tables", s.tables.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fw_cfg::tests::{read_file, read_port, select, Ram};

    #[test]
    fn items_firmware_reads() {
        let m = MachineItems {
            vcpus: 2,
            ram: vec![(0, 0x8000_0000), (1 << 32, 1 << 30)],
            reserved: vec![(0xfeff_c000, 0x4000)],
            uuid: [7; 16],
            nographic: true,
            boot_order: vec!["/pci@i0cf8/scsi@2/disk@0,0".into()],
            boot_fail_wait_ms: 5000,
            smbios: Some(SmbiosTables { anchor: vec![1; 24], tables: vec![2; 10] }),
        };
        let mut b = FwCfgBuilder::new();
        m.add_to(&mut b).unwrap();
        let mut fw = b.build(Ram::new(16));
        select(&mut fw, keys::NB_CPUS);
        assert_eq!(read_port(&mut fw, 2), [2, 0]);
        select(&mut fw, keys::RAM_SIZE);
        assert_eq!(read_port(&mut fw, 8), (0x8000_0000u64 + (1 << 30)).to_le_bytes());
        select(&mut fw, keys::BOOT_MENU);
        assert_eq!(read_port(&mut fw, 2), [0, 0]);
        assert_eq!(read_file(&mut fw, "etc/e820").unwrap().len(), 60);
        assert_eq!(read_file(&mut fw, "bootorder").unwrap(), b"/pci@i0cf8/scsi@2/disk@0,0\0");
        assert_eq!(read_file(&mut fw, "etc/boot-fail-wait").unwrap(), 5000u32.to_le_bytes());
        assert_eq!(read_file(&mut fw, "etc/smbios/smbios-anchor").unwrap(), [1; 24]);
        let mut empty = m.clone();
        empty.boot_order.clear();
        empty.smbios = None;
        let mut b = FwCfgBuilder::new();
        empty.add_to(&mut b).unwrap();
        let mut fw = b.build(Arc::new(Ram(Default::default())));
        assert!(read_file(&mut fw, "bootorder").is_none());
    }
}
