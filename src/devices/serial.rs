//! COM1: a 16550A UART (vm-superio) whose interrupt is a KVM irqfd.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt line through the irqfd this eventfd is registered as.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Flushes after every write so a guest prompt without a newline shows up at once.
pub struct FlushingWriter<W: Write>(pub W);

impl<W: Write> Write for FlushingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.0.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

pub type ConsoleOut = Box<dyn Write + Send>;

pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOut>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self { uart: Serial::new(IrqTrigger(irq), out) }
    }

    /// Queues guest input; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: queueing input failed: {e:?}");
                0
            }
        }
    }
}

impl pci::BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *value) {
                ratelog::warn_limited!("serial: register write failed: {e:?}");
            }
        }
    }
}

/// Where forwarded input goes: a UART, or something that finds the current one.
pub trait InputSink: Send + 'static {
    /// Returns how many bytes were taken (0 when the receive FIFO is full).
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize;
}

impl InputSink for Arc<Mutex<SerialDevice>> {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // A UART a panic left behind takes no input (it is dropped).
        self.lock().map_or(bytes.len(), |mut s| s.enqueue_input(bytes))
    }
}

/// Forwards host input to the UART until `input` reaches end-of-file; EOF or a read error
/// only ends input, never the guest.
pub fn spawn_input_forwarder<R: Read + Send + 'static>(
    mut input: R,
    mut sink: impl InputSink,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::threads::spawn(crate::seccomp::ThreadKind::SerialInput, "serial-input", move || {
        let mut buf = [0u8; 64];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => {
                    log::debug!("serial: input reached end-of-file; the guest keeps running");
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("serial: input read failed ({e}); input disabled");
                    return;
                }
            };
            let mut pending = &buf[..n];
            while !pending.is_empty() {
                let taken = sink.enqueue_input(pending);
                pending = &pending[taken..];
                if taken == 0 {
                    // The guest has not drained the FIFO yet.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    })
}

/// The seccomp filter of the console input thread: read the terminal (or whatever stdin
/// is), hand bytes to the UART (whose interrupt is an eventfd write), sleep while the guest
/// drains its FIFO.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    r.allow(&[libc::SYS_read]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::BusDevice;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_input_reach_their_ends() {
        let sink = Sink::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then feed input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"xy"), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
        // Wrong-sized accesses are dropped / read all-ones, never panic.
        let mut two = [0u8; 2];
        dev.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        dev.write(0, b"ab");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn forwarder_stops_at_eof_and_delivers_bytes() {
        let sink = Sink::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = Arc::new(Mutex::new(SerialDevice::new(irq, Box::new(sink))));
        let h = spawn_input_forwarder(std::io::Cursor::new(b"ok".to_vec()), dev.clone()).unwrap();
        h.join().unwrap();
        let mut b = [0u8];
        dev.lock().unwrap().read(0, &mut b);
        assert_eq!(b[0], b'o');
    }
}
