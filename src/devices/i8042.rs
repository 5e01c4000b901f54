//! The i8042 keyboard controller: its CPU reset line (command 0xFE on port 0x64, through
//! vm-superio) and the answers firmware waits for when it probes for a PS/2 keyboard.
//!
//! vm-superio's device models only the reset line and reads 0, so a BIOS probing the
//! controller (SeaBIOS always does: its Debian build does not read the DSDT) waits for each
//! answer until its timeout. Here the controller passes its self-test and a keyboard answers
//! its commands (ACK, reset OK, its ID), with no keys ever pressed and no interrupt raised.
//! Linux is not told about the controller (no PNP0303 device, no 8042 flag in the FADT),
//! so it never probes it.

use std::collections::VecDeque;

use vm_superio::I8042Device;

use crate::stop::StopTrigger;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Set once the controller passed its self-test.
const STATUS_SYSTEM: u8 = 1 << 2;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
const KBD_RESEND: u8 = 0xfe;
/// An MF2 keyboard's ID.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// What the next byte written to the data port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataWrite {
    Keyboard,
    KeyboardArgument,
    Ctr,
    OutputPort,
    Aux,
}

pub struct I8042 {
    dev: I8042Device<StopTrigger>,
    output: VecDeque<u8>,
    last: u8,
    ctr: u8,
    status: u8,
    next: DataWrite,
}

impl I8042 {
    pub fn new(reset: StopTrigger) -> Self {
        Self {
            dev: I8042Device::new(reset),
            output: VecDeque::new(),
            last: 0,
            ctr: 0,
            status: 0,
            next: DataWrite::Keyboard,
        }
    }

    fn answer(&mut self, bytes: &[u8]) {
        // A guest that never reads cannot make the queue grow without bound.
        if self.output.len() < 16 {
            self.output.extend(bytes);
        }
    }

    fn reset(&mut self) {
        // The trigger is infallible.
        let _ = self.dev.write(COMMAND as u8, CMD_RESET_CPU);
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            CMD_READ_CTR => self.answer(&[self.ctr]),
            CMD_WRITE_CTR => self.next = DataWrite::Ctr,
            CMD_SELF_TEST => {
                self.status |= STATUS_SYSTEM;
                self.answer(&[SELF_TEST_OK]);
            }
            CMD_KBD_TEST | CMD_AUX_TEST => self.answer(&[INTERFACE_OK]),
            CMD_WRITE_OUTPUT_PORT => self.next = DataWrite::OutputPort,
            CMD_WRITE_AUX => self.next = DataWrite::Aux,
            CMD_RESET_CPU => self.reset(),
            // Enable/disable the keyboard or the aux port, and the rest: nothing to do.
            _ => log::trace!("i8042: command {cmd:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        let to = std::mem::replace(&mut self.next, DataWrite::Keyboard);
        match to {
            DataWrite::Ctr => self.ctr = value,
            // Output port bit 0 low holds the CPU in reset.
            DataWrite::OutputPort if value & 1 == 0 => self.reset(),
            DataWrite::OutputPort => {}
            // No mouse: the aux device never answers.
            DataWrite::Aux => self.answer(&[KBD_RESEND]),
            DataWrite::KeyboardArgument => self.answer(&[KBD_ACK]),
            DataWrite::Keyboard => match value {
                0xff => self.answer(&[KBD_ACK, KBD_RESET_OK]),
                0xf2 => {
                    self.answer(&[KBD_ACK]);
                    self.answer(&KBD_ID);
                }
                // Set LEDs, typematic rate, scan code set: an argument follows.
                0xed | 0xf3 | 0xf0 => {
                    self.answer(&[KBD_ACK]);
                    self.next = DataWrite::KeyboardArgument;
                }
                0xee => self.answer(&[KBD_ECHO]),
                _ => self.answer(&[KBD_ACK]),
            },
        }
    }
}

impl pci::BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [value] = data else {
            data.fill(0xff);
            return;
        };
        *value = match offset {
            DATA => {
                if let Some(b) = self.output.pop_front() {
                    self.last = b;
                }
                self.last
            }
            COMMAND => self.status | if self.output.is_empty() { 0 } else { STATUS_OUTPUT_FULL },
            other => self.dev.read(other as u8),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        log::trace!("i8042: write {value:#x} at offset {offset}");
        match offset {
            DATA => self.data(*value),
            COMMAND => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::{StopNotifier, StopReason};
    use pci::BusDevice;

    fn dev() -> (I8042, std::sync::Arc<StopNotifier>) {
        let n = StopNotifier::new().unwrap();
        (I8042::new(StopTrigger { notifier: n.clone(), reason: StopReason::Reset }), n)
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_requests_reset() {
        let (mut d, n) = dev();
        d.write(4, &[0xaa]);
        assert_eq!(n.reason(), None);
        d.write(4, &[0xfe]);
        assert_eq!(n.reason(), Some(StopReason::Reset));
        let (mut d, n) = dev();
        d.write(4, &[CMD_WRITE_OUTPUT_PORT]);
        d.write(0, &[0xfe]);
        assert_eq!(n.reason(), Some(StopReason::Reset), "output port bit 0 low");
    }

    #[test]
    fn firmware_keyboard_probe_gets_answers() {
        let (mut d, n) = dev();
        assert_eq!(read(&mut d, 4) & STATUS_OUTPUT_FULL, 0);
        // SeaBIOS: CTR write, self-test, interface test, keyboard reset, scan set, enable.
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[0x30]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!((read(&mut d, 4) & STATUS_OUTPUT_FULL, read(&mut d, 0)), (1, 0x30));
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, 0), SELF_TEST_OK);
        assert_eq!(read(&mut d, 4), STATUS_SYSTEM, "system flag, buffer empty");
        d.write(4, &[CMD_KBD_TEST]);
        assert_eq!(read(&mut d, 0), INTERFACE_OK);
        d.write(0, &[0xff]);
        assert_eq!((read(&mut d, 0), read(&mut d, 0)), (KBD_ACK, KBD_RESET_OK));
        d.write(0, &[0xf0]);
        d.write(0, &[0x02]);
        assert_eq!((read(&mut d, 0), read(&mut d, 0)), (KBD_ACK, KBD_ACK));
        d.write(0, &[0xf2]);
        assert_eq!([read(&mut d, 0), read(&mut d, 0), read(&mut d, 0)], [KBD_ACK, 0xab, 0x83]);
        // An empty buffer repeats the last byte; a flood of commands stays bounded.
        assert_eq!(read(&mut d, 0), 0x83);
        for _ in 0..100 {
            d.write(0, &[0xf4]);
        }
        assert!(d.output.len() <= 16);
        d.write(4, &[CMD_WRITE_AUX]);
        d.write(0, &[0xff]);
        assert_eq!(n.reason(), None);
    }
}
