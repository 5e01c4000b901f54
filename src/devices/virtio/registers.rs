//! The virtio-pci modern register file in BAR 0 (virtio 1.2 spec 4.1.4): common
//! configuration, ISR status, device configuration and queue notification. Pure state: the
//! transport ([`super::pci`]) acts on the [`Transition`]s it reports (start or stop the I/O
//! thread), so this file has no side effects beyond signalling queue eventfds.

use pci::{BarIndex, FunctionBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// BAR 0 layout: one 4 KiB page per structure.
pub const COMMON_OFFSET: u64 = 0x0000;
pub const COMMON_LEN: u64 = 0x40;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 4;
pub const DEVICE_OFFSET: u64 = 0x2000;
pub const DEVICE_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Queue `q` is notified at NOTIFY_OFFSET + q * NOTIFY_MULTIPLIER (queue_notify_off = q).
pub const NOTIFY_MULTIPLIER: u32 = 4;
pub const NOTIFY_LEN: u64 = 0x1000;
pub const BAR0_SIZE: u64 = 0x4000;
pub const REGISTERS_BAR: BarIndex = BarIndex(0);

/// "No MSI-X vector" (spec 4.1.4.3).
pub const NO_VECTOR: u16 = 0xffff;

// Device status bits (spec 2.1).
#[cfg(test)]
pub const STATUS_ACKNOWLEDGE: u8 = 1;
#[cfg(test)]
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;

/// One queue as the driver configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub vector: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self { max_size, size: max_size, ready: false, vector: NO_VECTOR, desc: 0, avail: 0, used: 0 }
    }
}

/// What a register write asks the transport to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// DRIVER_OK was set: start serving the queues.
    Activate,
    /// The driver wrote 0 to device_status: stop serving and forget the queues.
    Reset,
}

pub struct VirtioRegisters {
    name: String,
    device: Box<dyn VirtioDevice>,
    msix_vectors: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    /// One eventfd per queue: the ioeventfd KVM signals, also signalled here when a
    /// notification reaches the trap (before the ioeventfd is registered, or at a moved BAR).
    queue_evts: Vec<EventFd>,
    transition: Option<Transition>,
    /// Set by a reset until the transport says it is complete (its I/O thread has ended):
    /// device_status reads this (non-zero) meanwhile. The driver polls device_status for 0
    /// after writing it (virtio 1.2, 4.1.4.3.2), so it reinitializes only a quiet device.
    resetting: Option<u8>,
}

impl VirtioRegisters {
    pub fn new(name: String, device: Box<dyn VirtioDevice>, msix_vectors: u16, queue_evts: Vec<EventFd>) -> Self {
        let queues = device.queue_max_sizes().iter().map(|&m| QueueConfig::new(m)).collect();
        Self {
            name,
            device,
            msix_vectors,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            queues,
            queue_evts,
            transition: None,
            resetting: None,
        }
    }

    pub fn device_features(&self) -> u64 {
        self.device.features()
            | (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn take_transition(&mut self) -> Option<Transition> {
        self.transition.take()
    }

    /// The driver may not use the device any more (e.g. the I/O thread could not start).
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
    }

    fn reset(&mut self) {
        let name = std::mem::take(&mut self.name);
        let device = std::mem::replace(&mut self.device, Box::new(NoDevice));
        let evts = std::mem::take(&mut self.queue_evts);
        let before = self.status;
        *self = Self::new(name, device, self.msix_vectors, evts);
        // Complete when the transport says so (a reset of an untouched device at once).
        self.resetting = (before != 0).then_some(before);
    }

    /// The reset the driver asked for is complete: device_status reads 0 from now on.
    pub fn reset_done(&mut self) {
        self.resetting = None;
    }

    pub fn is_resetting(&self) -> bool {
        self.resetting.is_some()
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&mut self, offset: u64) -> u64 {
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let qf = |f: fn(&QueueConfig) -> u64| q.as_ref().map_or(0, f);
        match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.device_features() & 0xffff_ffff,
                1 => self.device_features() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.resetting.unwrap_or(self.status)),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => qf(|q| u64::from(q.size)),
            0x1a => q.as_ref().map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => qf(|q| u64::from(q.ready)),
            0x1e => u64::from(self.queue_select),
            0x20 => qf(|q| q.desc & 0xffff_ffff),
            0x24 => qf(|q| q.desc >> 32),
            0x28 => qf(|q| q.avail & 0xffff_ffff),
            0x2c => qf(|q| q.avail >> 32),
            0x30 => qf(|q| q.used & 0xffff_ffff),
            0x34 => qf(|q| q.used >> 32),
            _ => 0,
        }
    }

    fn write_common(&mut self, offset: u64, value: u64) {
        let v32 = value as u32;
        let v16 = value as u16;
        // Queue layout may only change before DRIVER_OK (spec 4.1.4.3.2).
        let live = self.status & STATUS_DRIVER_OK != 0;
        let vectors = self.msix_vectors;
        match offset {
            0x00 => self.device_feature_select = v32,
            0x08 => self.driver_feature_select = v32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v32),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v32) << 32),
                _ => {}
            },
            // A vector the function does not have reads back as NO_VECTOR, which is how the
            // driver learns the assignment failed (spec 4.1.5.1.2).
            0x10 => self.config_vector = if v16 < vectors { v16 } else { NO_VECTOR },
            0x14 => self.write_status(value as u8),
            0x16 => self.queue_select = v16,
            0x18 if !live => {
                if let Some(q) = self.selected() {
                    if v16.is_power_of_two() && v16 <= q.max_size {
                        q.size = v16;
                    } else {
                        ratelog::debug_limited!("virtio queue size {v16} refused (max {})", q.max_size);
                    }
                }
            }
            0x1a => {
                if let Some(q) = self.selected() {
                    q.vector = if v16 < vectors { v16 } else { NO_VECTOR };
                }
            }
            0x1c if !live => {
                if let Some(q) = self.selected() {
                    q.ready = v16 == 1;
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 if !live => {
                let high = offset & 4 != 0;
                let Some(q) = self.selected() else { return };
                let field = match offset & !4 {
                    0x20 => &mut q.desc,
                    0x28 => &mut q.avail,
                    _ => &mut q.used,
                };
                *field = if high {
                    (*field & 0xffff_ffff) | (u64::from(v32) << 32)
                } else {
                    (*field & !0xffff_ffff) | u64::from(v32)
                };
            }
            _ => ratelog::debug_limited!("{}: virtio common config write at {offset:#x} dropped", self.name),
        }
    }

    fn write_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            self.transition = Some(Transition::Reset);
            return;
        }
        let mut status = status;
        let newly = status & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let acked = self.driver_features;
            // FEATURES_OK only sticks for a subset of what we offered that includes VERSION_1
            // (spec 3.1.1): the driver reads it back to learn the outcome.
            let ok = acked & !self.device_features() == 0 && acked & (1 << VIRTIO_F_VERSION_1) != 0;
            if !ok {
                ratelog::warn_limited!(
                    "{}: driver features {acked:#x} refused (offered {:#x})",
                    self.name,
                    self.device_features()
                );
                status &= !STATUS_FEATURES_OK;
            }
        }
        let features_ok = (self.status | status) & STATUS_FEATURES_OK != 0;
        if newly & STATUS_DRIVER_OK != 0 && features_ok {
            self.transition = Some(Transition::Activate);
        }
        // The driver cannot clear bits except by reset; NEEDS_RESET is the device's.
        self.status = (self.status | status) & !STATUS_NEEDS_RESET | (self.status & STATUS_NEEDS_RESET);
    }
}

/// Placeholder while the register file is rebuilt in [`VirtioRegisters::reset`].
struct NoDevice;

impl VirtioDevice for NoDevice {
    fn device_type(&self) -> u32 {
        0
    }
    fn pci_class(&self) -> u32 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, _acked: u64) -> Result<Box<dyn super::QueueHandler>, super::VirtioError> {
        Err(super::VirtioError::EventFd { name: "none".into(), source: std::io::Error::other("no device") })
    }
}

fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Accesses to the common configuration must be naturally aligned, of the field's width or
/// a 32-bit half of a 64-bit field (spec 4.1.3.1); others are dropped.
fn common_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 && offset + len as u64 <= COMMON_LEN
}

impl FunctionBackend for VirtioRegisters {
    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != REGISTERS_BAR {
            data.fill(0xff);
            return;
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => {
                if !common_access_ok(o, data.len()) {
                    return;
                }
                // Read the whole field and pick the requested bytes (byte reads of status etc.).
                let field = match o {
                    0x14 | 0x15 => o,
                    _ if o >= 0x20 => o & !3,
                    _ if o >= 0x10 => o & !1,
                    _ => o & !3,
                };
                let value = self.read_common(field);
                let shift = (o - field) * 8;
                let bytes = (value >> shift).to_le_bytes();
                data.copy_from_slice(&bytes[..data.len()]);
            }
            o if (ISR_OFFSET..ISR_OFFSET + ISR_LEN).contains(&o) => {
                // Interrupts are MSI-X only, so the ISR never has a bit to report (and
                // reading it would clear it, spec 4.1.4.5).
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data);
            }
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        if bar != REGISTERS_BAR {
            return;
        }
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => {
                if common_access_ok(o, data.len()) {
                    self.write_common(o, le_value(data));
                } else {
                    ratelog::debug_limited!("{}: misaligned common config write at {o:#x} dropped", self.name);
                }
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + NOTIFY_LEN).contains(&o) => {
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.queue_evts.get(q) {
                    if let Err(e) = evt.write(1) {
                        ratelog::warn_limited!("{}: queue {q} notification lost: {e}", self.name);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn regs() -> VirtioRegisters {
        let rng = Rng::open().unwrap();
        let evts = vec![EventFd::new(EFD_NONBLOCK).unwrap()];
        VirtioRegisters::new("t".into(), Box::new(rng), 2, evts)
    }

    fn w(r: &mut VirtioRegisters, off: u64, data: &[u8]) {
        r.write_bar(REGISTERS_BAR, off, data);
    }

    fn r32(r: &mut VirtioRegisters, off: u64) -> u32 {
        let mut b = [0u8; 4];
        r.read_bar(REGISTERS_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r16(r: &mut VirtioRegisters, off: u64) -> u16 {
        let mut b = [0u8; 2];
        r.read_bar(REGISTERS_BAR, off, &mut b);
        u16::from_le_bytes(b)
    }

    fn r8(r: &mut VirtioRegisters, off: u64) -> u8 {
        let mut b = [0u8; 1];
        r.read_bar(REGISTERS_BAR, off, &mut b);
        b[0]
    }

    #[test]
    fn feature_negotiation_and_activation() {
        let mut r = regs();
        w(&mut r, 0x00, &1u32.to_le_bytes());
        assert_eq!(r32(&mut r, 0x04), 1, "VERSION_1 in the high word");
        w(&mut r, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        // Acking a feature we do not offer: FEATURES_OK does not stick.
        w(&mut r, 0x08, &0u32.to_le_bytes());
        w(&mut r, 0x0c, &(1u32 << 3).to_le_bytes());
        w(&mut r, 0x08, &1u32.to_le_bytes());
        w(&mut r, 0x0c, &1u32.to_le_bytes());
        w(&mut r, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
        assert_eq!(r8(&mut r, 0x14) & STATUS_FEATURES_OK, 0);
        w(&mut r, 0x08, &0u32.to_le_bytes());
        w(&mut r, 0x0c, &0u32.to_le_bytes());
        w(&mut r, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
        assert_ne!(r8(&mut r, 0x14) & STATUS_FEATURES_OK, 0);
        // Queue 0 set-up, 64-bit addresses as two halves.
        w(&mut r, 0x16, &0u16.to_le_bytes());
        assert_eq!(r16(&mut r, 0x18), 256);
        w(&mut r, 0x18, &100u16.to_le_bytes());
        assert_eq!(r16(&mut r, 0x18), 256, "not a power of two");
        w(&mut r, 0x18, &64u16.to_le_bytes());
        w(&mut r, 0x1a, &1u16.to_le_bytes());
        w(&mut r, 0x20, &0x1000u32.to_le_bytes());
        w(&mut r, 0x24, &0x1u32.to_le_bytes());
        w(&mut r, 0x1c, &1u16.to_le_bytes());
        assert_eq!(r.queues()[0].desc, 0x1_0000_1000);
        assert_eq!(r.queues()[0].size, 64);
        assert_eq!(r.queues()[0].vector, 1);
        w(&mut r, 0x1a, &7u16.to_le_bytes());
        assert_eq!(r16(&mut r, 0x1a), NO_VECTOR, "vector beyond the table");
        assert_eq!(r.take_transition(), None);
        w(&mut r, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
        assert_eq!(r.take_transition(), Some(Transition::Activate));
        // Reset forgets everything; device_status reads 0 once the transport completed it.
        w(&mut r, 0x14, &[0]);
        assert_eq!(r.take_transition(), Some(Transition::Reset));
        assert_eq!(r.queues()[0].size, 256);
        assert_ne!(r8(&mut r, 0x14), 0, "reset still in progress");
        r.reset_done();
        assert_eq!(r8(&mut r, 0x14), 0);
    }

    #[test]
    fn notify_signals_the_queue_eventfd_and_bad_accesses_are_harmless() {
        let mut r = regs();
        w(&mut r, NOTIFY_OFFSET, &0u16.to_le_bytes());
        assert_eq!(r.queue_evts()[0].read().unwrap(), 1);
        w(&mut r, NOTIFY_OFFSET + 400, &0u16.to_le_bytes());
        w(&mut r, 0x03, &[1, 2]);
        w(&mut r, 0x16, &9u16.to_le_bytes());
        w(&mut r, 0x20, &1u32.to_le_bytes());
        assert_eq!((r16(&mut r, 0x18), r16(&mut r, 0x1a)), (0, NO_VECTOR), "no such queue");
        let mut big = [0u8; 8];
        r.read_bar(REGISTERS_BAR, 0x20, &mut big);
        r.read_bar(BarIndex(3), 0, &mut big);
        assert_eq!(big, [0xff; 8]);
    }
}
