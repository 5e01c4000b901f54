//! Power management capability (PCI PM 1.2): D0/D3hot with No_Soft_Reset, so a guest's
//! D3hot -> D0 round trip keeps the function's state.

use super::CAP_ID_PM;
use crate::config_space::{ConfigSpace, ConfigSpaceError};

/// PMC: version 3 (PM 1.2).
const PMC: u16 = 0x0003;
/// PMCSR: PowerState (1:0) and PME_En (8) are writable.
const PMCSR_WRITABLE: u32 = 0x0103;
const PMCSR_NO_SOFT_RESET: u32 = 1 << 3;
const PMCSR_PME_STATUS: u32 = 1 << 15;

/// Adds the PM capability and returns its offset.
pub fn add_pm_capability(config: &mut ConfigSpace) -> Result<usize, ConfigSpaceError> {
    let mut body = [0u8; 6];
    body[..2].copy_from_slice(&PMC.to_le_bytes());
    body[2..6].copy_from_slice(&PMCSR_NO_SOFT_RESET.to_le_bytes());
    let off = config.add_capability(CAP_ID_PM, &body)?;
    config.set_write_mask(off / 4 + 1, PMCSR_WRITABLE);
    config.set_w1c_mask(off / 4 + 1, PMCSR_PME_STATUS);
    Ok(off)
}

/// The power state (0 = D0 .. 3 = D3hot) the guest selected.
pub fn power_state(config: &ConfigSpace, offset: usize) -> u8 {
    (config.dword(offset + 4) & 0x3) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::{DeviceIds, HeaderType};

    #[test]
    fn pmcsr_masks() {
        let ids = DeviceIds {
            vendor_id: 1,
            device_id: 2,
            class_code: 0,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        let mut cs = ConfigSpace::new(ids, HeaderType::Endpoint, false);
        let off = add_pm_capability(&mut cs).unwrap();
        assert_eq!(cs.read(off / 4), 0x0003_0001);
        cs.write(off / 4 + 1, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(cs.read(off / 4 + 1), 0x0000_010b);
        assert_eq!(power_state(&cs, off), 3);
        cs.set(off / 4 + 1, 0x8008);
        cs.write(off / 4 + 1, 1, &[0x80]);
        assert_eq!(cs.read(off / 4 + 1), 0x0008, "PME status is RW1C");
    }
}
