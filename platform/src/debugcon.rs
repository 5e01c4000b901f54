//! The firmware debug console: QEMU's `isa-debugcon` at port 0x402, where SeaBIOS (and
//! debug builds of OVMF) write their log. Reads return 0xe9, which is how SeaBIOS tells the
//! port exists before it writes to it. Lines are handed to the VMM's log at debug level.

/// The port (QEMU's default for the firmware log).
pub const DEBUGCON_PORT: u64 = 0x402;
const READBACK: u8 = 0xe9;
const MAX_LINE: usize = 512;

pub struct DebugCon {
    line: Vec<u8>,
    sink: Box<dyn FnMut(&str) + Send>,
}

impl DebugCon {
    /// `sink` gets every completed line (without its newline).
    pub fn new(sink: Box<dyn FnMut(&str) + Send>) -> Self {
        Self { line: Vec::new(), sink }
    }

    fn flush(&mut self) {
        let text = String::from_utf8_lossy(&self.line).trim_end_matches('\r').to_string();
        (self.sink)(&text);
        self.line.clear();
    }
}

impl pci::BusDevice for DebugCon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(READBACK);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        for &b in data {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.flush();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use pci::BusDevice;

    use super::*;

    #[test]
    fn lines_reach_the_sink_and_the_port_reads_back() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let mut d = DebugCon::new(Box::new(move |s| l.lock().unwrap().push(s.to_string())));
        let mut b = [0u8; 1];
        d.read(0, &mut b);
        assert_eq!(b[0], 0xe9);
        d.write(0, b"Found 1 cpu(s)\r\nhalf");
        d.write(0, b" line\n");
        d.write(0, &[b'x'; 600]);
        assert_eq!(lines.lock().unwrap()[..2], ["Found 1 cpu(s)".to_string(), "half line".to_string()]);
        assert_eq!(lines.lock().unwrap()[2].len(), MAX_LINE);
    }
}
