//! The ICH9 ACPI PM I/O block (128 ports at PMBASE), the registers firmware uses:
//!
//! - PM1_STS/PM1_EN (+0/+2): kept (status bits are write-1-to-clear); no SCI is raised;
//! - PM1_CNT (+4): SLP_EN with SLP_TYP 0 (QEMU's and OVMF's soft-off) or 5 (the `\_S5`
//!   value viaduct's DSDT gives) powers off; the HW-reduced FADT viaduct's guests read
//!   points its sleep control register at the byte PM1_CNT+1 and its sleep status register
//!   at PM1_STS+1, whose bit layouts match those registers;
//! - PM1_TMR (+8): the 24-bit ACPI PM timer at 3.579545 MHz (FADT TMR_VAL_EXT clear), which
//!   OVMF's AcpiTimerLib and SeaBIOS calibrate their delays with;
//! - GPE0 (+0x20, 16 bytes): kept;
//! - SMI_EN (+0x30): APMC_EN reads 1 from reset, which tells SeaBIOS SMM is "already set
//!   up" so it never raises an SMI (QEMU does the same without SMM); SMI_STS (+0x34) kept.
//!
//! Offsets not listed read 0 and ignore writes. Every register works byte by byte, so any
//! access width does what the bytes say.

use std::sync::Arc;

use crate::{Clock, PowerControl, PowerRequest};

const PM1_STS: usize = 0x00;
const PM1_EN: usize = 0x02;
const PM1_CNT: usize = 0x04;
const PM1_TMR: usize = 0x08;
const GPE0_STS: usize = 0x20;
const GPE0_LEN: usize = 0x10;
const SMI_EN: usize = 0x30;
const SMI_STS: usize = 0x34;

/// PM1_STS bits that exist (write-1-to-clear): TMR, BM, GBL, PWRBTN, SLPBTN, RTC, WAK.
const PM1_STS_BITS: u16 = 0x8d31;
/// PM1_EN bits that exist: TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN.
const PM1_EN_BITS: u16 = 0x0521;
/// PM1_CNT: SCI_EN, BM_RLD, GBL_RLS (write-only), SLP_TYP; SLP_EN is write-only.
const PM1_CNT_SLP_TYP_SHIFT: u16 = 10;
const PM1_CNT_SLP_EN: u16 = 1 << 13;
const PM1_CNT_STORED: u16 = 0x1c03;
const SMI_EN_APMC_EN: u32 = 1 << 5;

/// The ACPI PM timer's frequency (ACPI 6.5, 4.8.3.3).
pub const PM_TIMER_HZ: u128 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;

/// The sleep types that mean soft-off: QEMU's and OVMF's 0, and viaduct's `\_S5` value.
pub const SLEEP_TYPES_SOFT_OFF: [u8; 2] = [0, 5];

pub struct AcpiPmBlock {
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0: [u8; GPE0_LEN],
    smi_en: u32,
    smi_sts: u32,
    clock: Box<dyn Clock>,
    power: Arc<dyn PowerControl>,
}

impl AcpiPmBlock {
    pub fn new(clock: Box<dyn Clock>, power: Arc<dyn PowerControl>) -> Self {
        Self {
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe0: [0; GPE0_LEN],
            smi_en: SMI_EN_APMC_EN,
            smi_sts: 0,
            clock,
            power,
        }
    }

    /// The timer's count now (24 bits).
    pub fn timer(&self) -> u32 {
        let ticks = self.clock.now().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks as u32) & PM_TIMER_MASK
    }

    fn read_byte(&self, offset: usize, timer: u32) -> u8 {
        let byte = |v: u32, base: usize| (v >> ((offset - base) * 8)) as u8;
        match offset {
            PM1_STS..=0x01 => byte(u32::from(self.pm1_sts), PM1_STS),
            PM1_EN..=0x03 => byte(u32::from(self.pm1_en), PM1_EN),
            PM1_CNT..=0x05 => byte(u32::from(self.pm1_cnt), PM1_CNT),
            PM1_TMR..=0x0b => byte(timer, PM1_TMR),
            GPE0_STS..=0x2f => self.gpe0[offset - GPE0_STS],
            SMI_EN..=0x33 => byte(self.smi_en, SMI_EN),
            SMI_STS..=0x37 => byte(self.smi_sts, SMI_STS),
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: usize, v: u8) {
        let set = |reg: &mut u16, shift: usize, mask: u16, v: u8| {
            let m = mask & (0xff << shift);
            *reg = (*reg & !m) | ((u16::from(v) << shift) & m);
        };
        match offset {
            PM1_STS..=0x01 => {
                let shift = (offset - PM1_STS) * 8;
                self.pm1_sts &= !((u16::from(v) << shift) & PM1_STS_BITS);
            }
            PM1_EN..=0x03 => set(&mut self.pm1_en, (offset - PM1_EN) * 8, PM1_EN_BITS, v),
            PM1_CNT..=0x05 => {
                let shift = (offset - PM1_CNT) * 8;
                set(&mut self.pm1_cnt, shift, PM1_CNT_STORED, v);
                if (u16::from(v) << shift) & PM1_CNT_SLP_EN != 0 {
                    self.sleep(((self.pm1_cnt >> PM1_CNT_SLP_TYP_SHIFT) & 7) as u8);
                }
            }
            // The GPE0 status half is write-1-to-clear, the enable half plain storage.
            GPE0_STS..=0x27 => self.gpe0[offset - GPE0_STS] &= !v,
            0x28..=0x2f => self.gpe0[offset - GPE0_STS] = v,
            SMI_EN..=0x33 => {
                let shift = (offset - SMI_EN) * 8;
                self.smi_en = (self.smi_en & !(0xff << shift)) | (u32::from(v) << shift);
            }
            SMI_STS..=0x37 => self.smi_sts &= !(u32::from(v) << ((offset - SMI_STS) * 8)),
            _ => ratelog::debug_limited!("ACPI PM block: write of {v:#x} at +{offset:#x} ignored"),
        }
    }

    fn sleep(&mut self, sleep_type: u8) {
        if SLEEP_TYPES_SOFT_OFF.contains(&sleep_type) {
            log::info!("guest powered off (ACPI PM1_CNT, sleep type {sleep_type})");
            self.power.request(PowerRequest::PowerOff);
        } else {
            ratelog::warn_limited!("guest asked for ACPI sleep type {sleep_type}, which is not supported; ignored");
        }
    }
}

impl pci::BusDevice for AcpiPmBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let timer = self.timer();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).map_or(0, |o| self.read_byte(o, timer));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            if let Some(o) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) {
                self.write_byte(o, *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use pci::BusDevice;

    use super::*;
    use crate::testing::Requests;

    struct FakeClock(Arc<Mutex<Duration>>);
    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            *self.0.lock().unwrap()
        }
    }

    fn block() -> (AcpiPmBlock, Arc<Requests>, Arc<Mutex<Duration>>) {
        let r = Arc::new(Requests::default());
        let t = Arc::new(Mutex::new(Duration::ZERO));
        (AcpiPmBlock::new(Box::new(FakeClock(t.clone())), r.clone()), r, t)
    }

    fn read32(pm: &mut AcpiPmBlock, off: u64) -> u32 {
        let mut b = [0u8; 4];
        pm.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn timer_counts_at_3_58_mhz_and_wraps_at_24_bits() {
        let (mut pm, _, t) = block();
        assert_eq!(read32(&mut pm, 8), 0);
        *t.lock().unwrap() = Duration::from_secs(1);
        assert_eq!(read32(&mut pm, 8), 3_579_545);
        *t.lock().unwrap() = Duration::from_secs(5);
        assert_eq!(read32(&mut pm, 8), (5 * 3_579_545) & 0xff_ffff);
        assert_eq!(read32(&mut pm, 8) >> 24, 0);
        pm.write(8, &[1, 2, 3, 4]);
        assert_eq!(read32(&mut pm, 8), (5 * 3_579_545) & 0xff_ffff, "read-only");
    }

    #[test]
    fn soft_off_through_pm1_cnt() {
        let (mut pm, r, _) = block();
        // OVMF's ResetShutdown: SLP_TYP 0, then SLP_EN (16-bit accesses).
        pm.write(4, &0u16.to_le_bytes());
        assert!(r.taken().is_empty());
        pm.write(4, &PM1_CNT_SLP_EN.to_le_bytes());
        assert_eq!(r.taken(), vec![PowerRequest::PowerOff]);
        // Linux with the HW-reduced FADT: one byte at PM1_CNT+1, SLP_TYP 5 | SLP_EN.
        pm.write(5, &[(5 << 2) | (1 << 5)]);
        assert_eq!(r.taken(), vec![PowerRequest::PowerOff]);
        // S3 is not offered; SLP_EN is not stored.
        pm.write(5, &[(1 << 2) | (1 << 5)]);
        assert!(r.taken().is_empty());
        assert_eq!(read32(&mut pm, 4) & 0xffff, 1 << 10);
    }

    #[test]
    fn status_enable_and_smi_registers() {
        let (mut pm, _, _) = block();
        assert_eq!(read32(&mut pm, 0x30) & SMI_EN_APMC_EN, SMI_EN_APMC_EN, "SMM already 'initialised'");
        pm.write(2, &0xffffu16.to_le_bytes());
        assert_eq!(read32(&mut pm, 0) >> 16, u32::from(PM1_EN_BITS));
        pm.pm1_sts = 0x8001;
        pm.write(1, &[0x80]);
        assert_eq!(read32(&mut pm, 0) & 0xffff, 1, "WAK_STS cleared by writing 1");
        pm.write(0x28, &[0xaa]);
        pm.gpe0[0] = 0x0f;
        pm.write(0x20, &[0x03]);
        let mut g = [0u8; 16];
        pm.read(0x20, &mut g);
        assert_eq!((g[0], g[8]), (0x0c, 0xaa));
        pm.write(0x7f, &[1]);
        pm.write(u64::MAX, &[1, 2]);
        let mut b = [0u8; 2];
        pm.read(u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
