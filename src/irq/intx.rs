//! INTx of an assigned device: a level-triggered KVM irqfd with a resample eventfd. VFIO
//! masks the host line when it fires (VFIO_IRQ_INFO_AUTOMASKED); when the guest EOIs, KVM
//! de-asserts the GSI and signals the resample eventfd, on which VFIO unmasks the host line
//! (VFIO_IRQ_SET_ACTION_UNMASK with that eventfd). If the device still asserts, it fires
//! again: level semantics, and safe for a line shared in the guest (KVM keeps one resampler
//! per GSI for all irqfds on it).
//!
//! The eventfds exist from the start (VFIO gets them when the device starts); the GSI is
//! known only once the device has its slot (the `_PRT` entry), so [`KvmIntx::connect`]
//! registers the irqfd then.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::IrqChip;

pub struct KvmIntx {
    chip: Arc<dyn IrqChip>,
    /// Only an assignment happens under this lock (the ioctls' results are checked
    /// before), so a poisoned lock still holds the GSI the irqfd is on.
    gsi: Mutex<Option<u32>>,
    trigger: EventFd,
    resample: EventFd,
}

impl KvmIntx {
    pub fn new(chip: Arc<dyn IrqChip>) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            chip,
            gsi: Mutex::new(None),
            trigger: EventFd::new(EFD_NONBLOCK)?,
            resample: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    /// Wires the line to `gsi` (level-triggered, with resample); moves it if already wired.
    pub fn connect(&self, gsi: u32) -> std::io::Result<()> {
        let mut cur = self.gsi.lock().unwrap_or_else(|e| e.into_inner());
        if *cur == Some(gsi) {
            return Ok(());
        }
        if let Some(old) = cur.take() {
            self.chip.unregister_irqfd(&self.trigger, old)?;
        }
        self.chip.register_irqfd_with_resample(&self.trigger, &self.resample, gsi)?;
        *cur = Some(gsi);
        Ok(())
    }

    /// Takes the line off its GSI (the device is being detached); a no-op if not wired.
    pub fn disconnect(&self) {
        let mut cur = self.gsi.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gsi) = cur.take() {
            if let Err(e) = self.chip.unregister_irqfd(&self.trigger, gsi) {
                log::warn!("unregistering INTx irqfd on GSI {gsi}: {e}");
            }
        }
    }

    #[cfg(test)]
    pub fn gsi(&self) -> Option<u32> {
        *self.gsi.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device's side of the line (what VFIO signals and listens on).
pub struct IntxHandle(pub Arc<KvmIntx>);

impl vfio::interrupts::IntxLine for IntxHandle {
    fn trigger_fd(&self) -> RawFd {
        self.0.trigger.as_raw_fd()
    }

    fn resample_fd(&self) -> RawFd {
        self.0.resample.as_raw_fd()
    }
}

impl Drop for KvmIntx {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[test]
    fn connects_with_resample_moves_and_unregisters() {
        let chip = Arc::new(FakeChip::default());
        let line = KvmIntx::new(chip.clone()).unwrap();
        assert_eq!(line.gsi(), None);
        line.connect(18).unwrap();
        line.connect(18).unwrap();
        line.connect(19).unwrap();
        drop(line);
        assert_eq!(
            *chip.calls.lock().unwrap(),
            vec![Call::RegisterResample(18), Call::Unregister(18), Call::RegisterResample(19), Call::Unregister(19)]
        );
    }
}
