//! The ICH9 LPC bridge (8086:2918 at 00:1f.0) as QEMU presents it: PMBASE (0x40) and
//! ACPI_CNTL (0x44) place and enable the 128-byte ACPI PM I/O block (both firmwares put it
//! at 0x600 once fw_cfg offers a table-loader); the PIRQ routing (0x60-0x6b), GEN_PMCON
//! (0xa0-0xa4), RCBA (0xf0) and the decode-range registers are kept for firmware to read
//! back but change nothing: interrupts of this machine are routed by its ACPI `_PRT`, and
//! nothing sits behind the root complex register block.

use pci::bridge::Window;
use pci::{BarIndex, BarRegion, ConfigEffects, ConfigSpace, PciDevice, WindowMove, WindowSpace};

use super::{config_space, effects_with, touches};

pub const DEVICE_ID_ICH9_LPC: u16 = 0x2918;
const CLASS_ISA_BRIDGE: u32 = 0x06_01_00;
/// ICH9 A2 stepping, as QEMU reports it.
const REVISION: u8 = 0x02;

/// The window id of the ACPI PM block in `pci::WindowMove`.
pub const LPC_WINDOW_PM: u8 = 0;
/// The PM block's size in ports.
pub const PM_BLOCK_LEN: u64 = 0x80;

const REG_PMBASE: usize = 0x40;
/// Bit 0 reads 1: an I/O-space base.
const PMBASE_RTE: u32 = 1;
const PMBASE_MASK: u32 = 0xff80;
const REG_ACPI_CNTL: usize = 0x44;
const ACPI_CNTL_ACPI_EN: u8 = 1 << 7;
/// ACPI_EN and the SCI IRQ select.
const ACPI_CNTL_MASK: u32 = 0x87;
const REG_GPIOBASE: usize = 0x48;
const REG_GPIO_CNTL: usize = 0x4c;
const REG_PIRQA_ROUT: usize = 0x60;
const REG_PIRQE_ROUT: usize = 0x68;
/// IRQEN (bit 7, 1 = routing disabled) set, IRQ 0: the reset value of every PIRQ route.
const PIRQ_DEFAULT: u32 = 0x8080_8080;
const PIRQ_MASK: u32 = 0x8f8f_8f8f;
const REG_SIRQ_CNTL: usize = 0x64;
const REG_LPC_IO_DEC: usize = 0x80;
const REG_GEN1_DEC: usize = 0x84;
const REG_GEN_PMCON_1: usize = 0xa0;
const REG_GEN_PMCON_3: usize = 0xa4;
const REG_BIOS_CNTL: usize = 0xdc;
const REG_RCBA: usize = 0xf0;

pub struct Ich9Lpc {
    config: ConfigSpace,
    pm: Option<Window>,
}

impl Default for Ich9Lpc {
    fn default() -> Self {
        Self::new()
    }
}

impl Ich9Lpc {
    pub fn new() -> Self {
        let mut cs = config_space(DEVICE_ID_ICH9_LPC, CLASS_ISA_BRIDGE, REVISION);
        cs.set(REG_PMBASE / 4, PMBASE_RTE);
        cs.set_write_mask(REG_PMBASE / 4, PMBASE_MASK);
        cs.set_write_mask(REG_ACPI_CNTL / 4, ACPI_CNTL_MASK);
        cs.set(REG_GPIOBASE / 4, 1);
        cs.set_write_mask(REG_GPIOBASE / 4, 0xffc0);
        cs.set_write_mask(REG_GPIO_CNTL / 4, 0x10);
        for reg in [REG_PIRQA_ROUT, REG_PIRQE_ROUT] {
            cs.set(reg / 4, PIRQ_DEFAULT);
            cs.set_write_mask(reg / 4, PIRQ_MASK);
        }
        cs.set(REG_SIRQ_CNTL / 4, 0x10);
        cs.set_write_mask(REG_SIRQ_CNTL / 4, 0xc3);
        cs.set_write_mask(REG_LPC_IO_DEC / 4, 0x3f0f_1377);
        for i in 0..4 {
            cs.set_write_mask(REG_GEN1_DEC / 4 + i, 0x00fc_fffd);
        }
        cs.set_write_mask(REG_GEN_PMCON_1 / 4, 0x00ff_0fff);
        cs.set_write_mask(REG_GEN_PMCON_3 / 4, 0x0000_00ff);
        cs.set_write_mask(REG_BIOS_CNTL / 4, 0x0000_003f);
        cs.set_write_mask(REG_RCBA / 4, 0xffff_c001);
        Self { config: cs, pm: None }
    }

    /// Where the ACPI PM block is decoded now.
    pub fn pm_block(&self) -> Option<Window> {
        self.pm
    }

    fn decoded_pm(&self) -> Option<Window> {
        let [cntl] = self.config.bytes::<1>(REG_ACPI_CNTL);
        if cntl & ACPI_CNTL_ACPI_EN == 0 {
            return None;
        }
        let base = u64::from(self.config.dword(REG_PMBASE) & PMBASE_MASK);
        Some(Window { base, size: PM_BLOCK_LEN })
    }
}

impl PciDevice for Ich9Lpc {
    fn bars(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
        self.config.write(reg, offset, data);
        if pci::config_space::merge_bytes(offset, data).is_none() {
            // Dropped by the config space (bad size or straddling a dword).
            return ConfigEffects::default();
        }
        let start = reg * 4 + offset as usize;
        if touches(start, data.len(), REG_PMBASE, 4) || touches(start, data.len(), REG_ACPI_CNTL, 1) {
            let new = self.decoded_pm();
            if new != self.pm {
                let old = std::mem::replace(&mut self.pm, new);
                log::info!("00:1f.0: ACPI PM block {old:x?} -> {new:x?}");
                return effects_with(vec![WindowMove { window: LPC_WINDOW_PM, space: WindowSpace::Io, old, new }]);
            }
        }
        ConfigEffects::default()
    }

    fn read_bar(&mut self, _bar: BarIndex, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: BarIndex, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_sequence_places_the_pm_block() {
        let mut l = Ich9Lpc::new();
        assert_eq!(l.read_config(0), 0x2918_8086);
        assert_eq!(l.read_config(2), 0x0601_0002);
        assert_eq!(l.read_config(REG_PMBASE / 4), 1);
        assert_eq!(l.read_config(REG_PIRQA_ROUT / 4), PIRQ_DEFAULT);
        // OVMF's PlatformPei: PMBASE, then ACPI_EN.
        assert!(l.write_config(REG_PMBASE / 4, 0, &0x601u32.to_le_bytes()).is_empty(), "not enabled yet");
        let e = l.write_config(REG_ACPI_CNTL / 4, 0, &[0x80]);
        let want = Window { base: 0x600, size: 0x80 };
        assert_eq!(
            e.windows,
            vec![WindowMove { window: LPC_WINDOW_PM, space: WindowSpace::Io, old: None, new: Some(want) }]
        );
        assert_eq!(l.pm_block(), Some(want));
        // Moving it while enabled, with low bits the register ignores.
        let e = l.write_config(REG_PMBASE / 4, 0, &0xb07fu32.to_le_bytes());
        assert_eq!(e.windows[0].old, Some(want));
        assert_eq!(e.windows[0].new, Some(Window { base: 0xb000, size: 0x80 }));
        assert_eq!(l.read_config(REG_PMBASE / 4), 0xb001);
        // Rewriting the same value changes nothing; disabling removes it.
        assert!(l.write_config(REG_ACPI_CNTL / 4, 0, &[0x89]).is_empty());
        assert_eq!(l.read_config(REG_ACPI_CNTL / 4), 0x81);
        let e = l.write_config(REG_ACPI_CNTL / 4, 0, &[0]);
        assert_eq!(e.windows[0].new, None);
        // PIRQ routes, RCBA and PMCON are plain storage.
        l.write_config(REG_PIRQE_ROUT / 4, 0, &0x0b0a_0b0au32.to_le_bytes());
        assert_eq!(l.read_config(REG_PIRQE_ROUT / 4), 0x0b0a_0b0a);
        l.write_config(REG_RCBA / 4, 0, &0xfed1_c001u32.to_le_bytes());
        assert_eq!(l.read_config(REG_RCBA / 4), 0xfed1_c001);
        // A dword write over PMBASE..ACPI_CNTL from the other side (byte at 0x44 in a
        // straddling access is dropped by the config space, not mis-decoded).
        assert!(l.write_config(REG_PMBASE / 4, 3, &[1, 2]).is_empty());
    }
}
