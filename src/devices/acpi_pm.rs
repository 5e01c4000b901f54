//! Hardware-reduced ACPI sleep control / status and reset register (one I/O port, see the
//! FADT in `boot::acpi`): the guest's `poweroff` and `reboot` end up here.

use std::sync::Arc;

use crate::layout;
use crate::stop::{StopNotifier, StopReason};

/// ACPI 6.5, 4.8.3.7 Sleep Control Register: SLP_TYPx in bits 4:2, SLP_EN in bit 5.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

pub struct AcpiPm {
    stop: Arc<StopNotifier>,
}

impl AcpiPm {
    pub fn new(stop: Arc<StopNotifier>) -> Self {
        Self { stop }
    }
}

impl pci::BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS clear, nothing pending.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let [value] = data else {
            ratelog::debug_limited!("ACPI sleep/reset register: {}-byte write ignored", data.len());
            return;
        };
        ratelog::debug_limited!("ACPI sleep/reset register write {value:#x}");
        if *value == layout::ACPI_RESET_VALUE {
            log::info!("guest requested a reset through the ACPI reset register");
            self.stop.request(StopReason::Reset);
        } else if value & SLP_EN != 0 {
            let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
            if sleep_type == layout::ACPI_S5_SLEEP_TYPE {
                log::info!("guest powered off (ACPI S5)");
                self.stop.request(StopReason::PowerOff);
            } else {
                ratelog::warn_limited!("guest asked for sleep type {sleep_type}, which is not supported; ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::BusDevice;

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let n = StopNotifier::new().unwrap();
        let mut pm = AcpiPm::new(n.clone());
        pm.write(0, &[(3 << 2) | SLP_EN]);
        pm.write(0, &[5 << 2]);
        pm.write(0, &[1, 2]);
        assert_eq!(n.reason(), None);
        pm.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(n.reason(), Some(StopReason::PowerOff));
        let n = StopNotifier::new().unwrap();
        AcpiPm::new(n.clone()).write(0, &[layout::ACPI_RESET_VALUE]);
        assert_eq!(n.reason(), Some(StopReason::Reset));
    }
}
