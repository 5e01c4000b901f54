//! The i8042 keyboard controller, only for its CPU reset line (command 0xFE on port 0x64).

use vm_superio::I8042Device;

use crate::stop::StopTrigger;

pub struct I8042 {
    dev: I8042Device<StopTrigger>,
}

impl I8042 {
    pub fn new(reset: StopTrigger) -> Self {
        Self { dev: I8042Device::new(reset) }
    }
}

impl pci::BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.dev.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            log::trace!("i8042: write {value:#x} at offset {off}");
            // The trigger is infallible.
            let _ = self.dev.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::{StopNotifier, StopReason};
    use pci::BusDevice;

    #[test]
    fn reset_command_requests_reset() {
        let n = StopNotifier::new().unwrap();
        let mut dev = I8042::new(StopTrigger { notifier: n.clone(), reason: StopReason::Reset });
        dev.write(4, &[0xaa]);
        assert_eq!(n.reason(), None);
        dev.write(4, &[0xfe]);
        assert_eq!(n.reason(), Some(StopReason::Reset));
    }
}
