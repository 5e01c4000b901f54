//! INTx of an assigned device: a level-triggered KVM irqfd with a resample eventfd. VFIO
//! masks the host line when it fires (VFIO_IRQ_INFO_AUTOMASKED); when the guest EOIs, KVM
//! de-asserts the GSI and signals the resample eventfd, on which VFIO unmasks the host line
//! (VFIO_IRQ_SET_ACTION_UNMASK with that eventfd). If the device still asserts, it fires
//! again: level semantics, and safe for a line shared in the guest.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::IrqChip;

pub struct KvmIntx {
    chip: Arc<dyn IrqChip>,
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
}

impl KvmIntx {
    pub fn new(chip: Arc<dyn IrqChip>, gsi: u32) -> std::io::Result<Self> {
        let trigger = EventFd::new(EFD_NONBLOCK)?;
        let resample = EventFd::new(EFD_NONBLOCK)?;
        chip.register_irqfd_with_resample(&trigger, &resample, gsi)?;
        Ok(Self { chip, gsi, trigger, resample })
    }

    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl vfio::interrupts::IntxLine for KvmIntx {
    fn trigger_fd(&self) -> RawFd {
        self.trigger.as_raw_fd()
    }

    fn resample_fd(&self) -> RawFd {
        self.resample.as_raw_fd()
    }
}

impl Drop for KvmIntx {
    fn drop(&mut self) {
        if let Err(e) = self.chip.unregister_irqfd(&self.trigger, self.gsi) {
            log::warn!("unregistering INTx irqfd on GSI {}: {e}", self.gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[test]
    fn registers_with_resample_and_unregisters() {
        let chip = Arc::new(FakeChip::default());
        let line = KvmIntx::new(chip.clone(), 18).unwrap();
        assert_eq!(line.gsi(), 18);
        drop(line);
        assert_eq!(*chip.calls.lock().unwrap(), vec![Call::RegisterResample(18), Call::Unregister(18)]);
    }
}
