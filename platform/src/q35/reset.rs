//! The reset control register (RST_CNT) at port 0xCF9 of PIIX/ICH southbridges: writing
//! RST_CPU (bit 2) resets the platform. OVMF's ResetSystemLib writes 0x06 there first;
//! SeaBIOS, and the FADT reset register of a q35 machine, use it too. SYS_RST (bit 1) and
//! FULL_RST (bit 3) are kept for reading back, as in QEMU.

use std::sync::Arc;

use crate::{PowerControl, PowerRequest};

/// The port, and the value that resets (also the FADT reset register's value).
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
pub const RESET_VALUE: u8 = 0x06;
const RST_CPU: u8 = 1 << 2;
const KEPT_BITS: u8 = 0x0a;

pub struct ResetControl {
    value: u8,
    power: Arc<dyn PowerControl>,
}

impl ResetControl {
    pub fn new(power: Arc<dyn PowerControl>) -> Self {
        Self { value: 0, power }
    }
}

impl pci::BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let [v] = data else { return };
        if v & RST_CPU != 0 {
            log::info!("guest requested a reset through port 0xcf9");
            self.power.request(PowerRequest::Reset);
            return;
        }
        self.value = v & KEPT_BITS;
    }
}

#[cfg(test)]
mod tests {
    use pci::BusDevice;

    use super::*;
    use crate::testing::Requests;

    #[test]
    fn rst_cpu_resets() {
        let r = Arc::new(Requests::default());
        let mut rc = ResetControl::new(r.clone());
        rc.write(0, &[0x02]);
        let mut b = [0u8];
        rc.read(0, &mut b);
        assert_eq!((b[0], r.taken()), (0x02, vec![]));
        rc.write(0, &[0x02, 0x04]);
        assert!(r.taken().is_empty(), "one byte only");
        rc.write(0, &[RESET_VALUE]);
        assert_eq!(r.taken(), vec![PowerRequest::Reset]);
    }
}
