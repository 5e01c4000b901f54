//! The q35 MCH host bridge (8086:29c0) as QEMU presents it without SMM:
//!
//! - PCIEXBAR (0x60, 64-bit): where ECAM is decoded (base, 256/128/64 MiB length, enable);
//!   firmware writes it early (SeaBIOS and OVMF both pick 0xB000_0000) and the move comes
//!   back as a window effect;
//! - PAM0-6 (0x90-0x96): accepted and kept; the BIOS area is always RAM here, which is
//!   what SeaBIOS's shadowing code ends up with anyway;
//! - SMRAM (0x9d) and ESMRAMC (0x9e): writable as on hardware, including the D_LCK lock,
//!   but open no SMRAM: there is no SMM;
//! - EXT_TSEG_MBYTES (0x50): only an OVMF built with SMM_REQUIRE writes its query value
//!   (0xffff) here (PlatformPei's Q35TsegMbytesInitialization). Such a build cannot run
//!   without SMM, so the write is reported as [`PowerRequest::Unsupported`].

use std::sync::Arc;

use pci::bridge::Window;
use pci::{BarIndex, BarRegion, ConfigEffects, ConfigSpace, PciDevice, WindowMove, WindowSpace};

use super::{config_space, effects_with, touches};
use crate::{PowerControl, PowerRequest};

pub const DEVICE_ID_Q35_MCH: u16 = 0x29c0;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// The window id of the ECAM in `pci::WindowMove`.
pub const MCH_WINDOW_ECAM: u8 = 0;

const REG_EXT_TSEG_MB: usize = 0x50;
const EXT_TSEG_QUERY: u16 = 0xffff;
const REG_PCIEXBAR: usize = 0x60;
const PCIEXBAR_EN: u64 = 1;
/// Base bits 35:26 (the length field decides how many of the low ones count).
const PCIEXBAR_BASE_MASK: u64 = 0xf_fc00_0000;
const REG_PAM0: usize = 0x90;
const PAM_COUNT: usize = 7;
const REG_SMRAM: usize = 0x9d;
const SMRAM_D_OPEN: u8 = 1 << 6;
const SMRAM_D_CLS: u8 = 1 << 5;
const SMRAM_D_LCK: u8 = 1 << 4;
const SMRAM_G_SMRAME: u8 = 1 << 3;
/// C_BASE_SEG = 010b: the compatible SMRAM window is at 0xA0000 (RO).
const SMRAM_DEFAULT: u8 = 0x02;
const REG_ESMRAMC: usize = 0x9e;
const ESMRAMC_H_SMRAME: u8 = 1 << 7;
const ESMRAMC_E_SMERR: u8 = 1 << 6;
/// SM_CACHE, SM_L1, SM_L2: RO 1.
const ESMRAMC_DEFAULT: u8 = 0x38;
const ESMRAMC_TSEG_SZ: u8 = 0x06;
const ESMRAMC_T_EN: u8 = 1 << 0;

pub struct Q35HostBridge {
    config: ConfigSpace,
    ecam: Option<Window>,
    power: Arc<dyn PowerControl>,
}

/// The ECAM window a PCIEXBAR value decodes.
fn decode_pciexbar(v: u64) -> Option<Window> {
    if v & PCIEXBAR_EN == 0 {
        return None;
    }
    let size: u64 = match (v >> 1) & 3 {
        0 => 256 << 20,
        1 => 128 << 20,
        2 => 64 << 20,
        // Reserved length: QEMU decodes nothing.
        _ => return None,
    };
    Some(Window { base: v & PCIEXBAR_BASE_MASK & !(size - 1), size })
}

fn set_byte_mask(cs: &mut ConfigSpace, offset: usize, mask: u8) {
    let reg = offset / 4;
    let shift = (offset % 4) * 8;
    let m = (cs.write_mask(reg) & !(0xff << shift)) | (u32::from(mask) << shift);
    cs.set_write_mask(reg, m);
}

impl Q35HostBridge {
    pub fn new(power: Arc<dyn PowerControl>) -> Self {
        let mut config = config_space(DEVICE_ID_Q35_MCH, CLASS_HOST_BRIDGE, 0);
        config.set_write_mask(REG_EXT_TSEG_MB / 4, 0xffff);
        config.set_write_mask(REG_PCIEXBAR / 4, (PCIEXBAR_BASE_MASK as u32) | 0x7);
        config.set_write_mask(REG_PCIEXBAR / 4 + 1, (PCIEXBAR_BASE_MASK >> 32) as u32);
        for i in 0..PAM_COUNT {
            // PAM0 holds only the 0xF0000 segment's attributes (bits 5:4).
            set_byte_mask(&mut config, REG_PAM0 + i, if i == 0 { 0x30 } else { 0x33 });
        }
        config.set_bytes(REG_SMRAM, &[SMRAM_DEFAULT, ESMRAMC_DEFAULT]);
        Self::unlock_smram(&mut config);
        Self { config, ecam: None, power }
    }

    fn unlock_smram(cs: &mut ConfigSpace) {
        set_byte_mask(cs, REG_SMRAM, SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME);
        set_byte_mask(cs, REG_ESMRAMC, ESMRAMC_H_SMRAME | ESMRAMC_TSEG_SZ | ESMRAMC_T_EN);
        let reg = REG_ESMRAMC / 4;
        let shift = (REG_ESMRAMC % 4) * 8;
        cs.set_w1c_mask(reg, cs.w1c_mask(reg) | (u32::from(ESMRAMC_E_SMERR) << shift));
    }

    /// Where ECAM is decoded now.
    pub fn ecam(&self) -> Option<Window> {
        self.ecam
    }

    fn pciexbar(&self) -> u64 {
        u64::from(self.config.dword(REG_PCIEXBAR)) | (u64::from(self.config.dword(REG_PCIEXBAR + 4)) << 32)
    }

    /// After a write to SMRAM: with D_LCK set, D_OPEN clears and only D_CLS stays writable,
    /// and the ESMRAMC settings freeze (as on the chipset and in QEMU's mch_write_config).
    fn apply_smram_lock(&mut self) {
        let [smram] = self.config.bytes::<1>(REG_SMRAM);
        if smram & SMRAM_D_LCK == 0 {
            return;
        }
        if smram & SMRAM_D_OPEN != 0 {
            self.config.set_bytes(REG_SMRAM, &[smram & !SMRAM_D_OPEN]);
        }
        set_byte_mask(&mut self.config, REG_SMRAM, SMRAM_D_CLS);
        set_byte_mask(&mut self.config, REG_ESMRAMC, 0);
    }
}

impl PciDevice for Q35HostBridge {
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
        if touches(start, data.len(), REG_EXT_TSEG_MB, 2) && self.config.word(REG_EXT_TSEG_MB) == EXT_TSEG_QUERY {
            // Answer "no extended TSEG" (the query value reads back) and stop the VM.
            self.power.request(PowerRequest::Unsupported(
                "the firmware is a build that needs SMM (System Management Mode), which viaduct does not emulate; \
                 use an OVMF built without SMM_REQUIRE (Debian: OVMF_CODE_4M.fd, not OVMF_CODE_4M.secboot.fd)"
                    .into(),
            ));
        }
        if touches(start, data.len(), REG_SMRAM, 1) {
            self.apply_smram_lock();
        }
        if touches(start, data.len(), REG_PCIEXBAR, 8) {
            let new = decode_pciexbar(self.pciexbar());
            if new != self.ecam {
                let old = std::mem::replace(&mut self.ecam, new);
                log::info!("00:00.0: ECAM window {old:x?} -> {new:x?}");
                let window = WindowMove { window: MCH_WINDOW_ECAM, space: WindowSpace::Memory, old, new };
                return effects_with(vec![window]);
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
    use crate::testing::Requests;

    fn mch() -> (Q35HostBridge, Arc<Requests>) {
        let r = Arc::new(Requests::default());
        (Q35HostBridge::new(r.clone()), r)
    }

    fn w32(m: &mut Q35HostBridge, offset: usize, v: u32) -> ConfigEffects {
        m.write_config(offset / 4, 0, &v.to_le_bytes())
    }

    fn byte(m: &mut Q35HostBridge, offset: usize) -> u8 {
        (m.read_config(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    #[test]
    fn identity_is_qemus_q35() {
        let (mut m, _) = mch();
        assert_eq!(m.read_config(0), 0x29c0_8086);
        assert_eq!(m.read_config(2) >> 8, 0x060000);
        assert_eq!(m.read_config(11), 0x1100_1af4, "SeaBIOS checks the subsystem IDs");
        assert!(m.bars().is_empty());
    }

    #[test]
    fn pciexbar_places_ecam_as_firmware_programs_it() {
        let (mut m, _) = mch();
        // SeaBIOS / OVMF order: disable, high half, then low half with enable.
        assert!(w32(&mut m, 0x60, 0).is_empty());
        assert!(w32(&mut m, 0x64, 0).is_empty());
        let e = w32(&mut m, 0x60, 0xb000_0001);
        let want = Window { base: 0xb000_0000, size: 256 << 20 };
        assert_eq!(e.windows, vec![WindowMove { window: 0, space: WindowSpace::Memory, old: None, new: Some(want) }]);
        assert_eq!(m.ecam(), Some(want));
        assert_eq!(m.read_config(0x60 / 4), 0xb000_0001);
        // 64 MiB length at a 64 MiB-aligned base above 4 GiB.
        w32(&mut m, 0x64, 0x3);
        let e = w32(&mut m, 0x60, 0x0400_0005);
        assert_eq!(e.windows[0].new, Some(Window { base: 0x3_0400_0000, size: 64 << 20 }));
        // Reserved length decodes nothing; the unwritable bits stay clear.
        let e = w32(&mut m, 0x60, 0xffff_ffff);
        assert_eq!(e.windows[0].new, None);
        assert_eq!(m.read_config(0x60 / 4), 0xfc00_0007);
        assert_eq!(m.read_config(0x64 / 4), 0x3);
        w32(&mut m, 0x64, u32::MAX);
        assert_eq!(m.read_config(0x64 / 4), 0xf, "base bits above 35 are RO 0");
        assert!(w32(&mut m, 0x60, 0xffff_fffe).is_empty(), "still disabled");
    }

    #[test]
    fn pam_and_smram_accepted_without_smm() {
        let (mut m, r) = mch();
        w32(&mut m, 0x90, 0xffff_ffff);
        assert_eq!(m.read_config(0x90 / 4), 0x3333_3330);
        assert_eq!(byte(&mut m, 0x9d), 0x02);
        assert_eq!(byte(&mut m, 0x9e), 0x38);
        // SeaBIOS's SMM set-up sequence (skipped when SMI_EN says "done", but harmless).
        m.write_config(0x9d / 4, 1, &[0x4a]);
        assert_eq!(byte(&mut m, 0x9d), 0x4a);
        m.write_config(0x9e / 4, 2, &[0x81]);
        assert_eq!(byte(&mut m, 0x9e), 0xb9);
        // D_LCK: D_OPEN clears, ESMRAMC freezes, only D_CLS stays writable.
        m.write_config(0x9d / 4, 1, &[0x5a]);
        assert_eq!(byte(&mut m, 0x9d), 0x1a);
        m.write_config(0x9e / 4, 2, &[0x00]);
        assert_eq!(byte(&mut m, 0x9e), 0xb9);
        m.write_config(0x9d / 4, 1, &[0x60]);
        assert_eq!(byte(&mut m, 0x9d), 0x3a);
        assert!(r.taken().is_empty());
    }

    #[test]
    fn smm_build_query_is_reported() {
        let (mut m, r) = mch();
        m.write_config(0x50 / 4, 0, &0x1234u16.to_le_bytes());
        assert!(r.taken().is_empty());
        m.write_config(0x50 / 4, 0, &0xffffu16.to_le_bytes());
        assert!(matches!(r.taken().as_slice(), [PowerRequest::Unsupported(msg)] if msg.contains("SMM")));
        assert_eq!(m.read_config(0x50 / 4) & 0xffff, 0xffff);
    }
}
