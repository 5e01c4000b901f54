//! The virtio-pci modern transport (virtio 1.2 spec 4.1) on our PCI model: an
//! [`EmulatedFunction`] whose BAR 0 holds the virtio registers ([`VirtioRegisters`]) and whose
//! BAR 1 holds the MSI-X table and PBA. On DRIVER_OK the queues go to an I/O thread
//! ([`Worker`]); queue notifications are KVM ioeventfds on the notify area (a trapped notify
//! write signals the same eventfd), interrupts are the MSI-X irqfds.

use std::sync::Arc;

use pci::capability::msix::MsixConfig;
use pci::config_space::{DeviceIds, HeaderType};
use pci::{
    BarIndex, BarKind, BarRegion, BarSpec, ConfigEffects, EmulatedFunction, FunctionConfig, MsiVectors, PciDevice,
    VectorIndex,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::registers::{
    Transition, VirtioRegisters, BAR0_SIZE, COMMON_LEN, COMMON_OFFSET, DEVICE_LEN, DEVICE_OFFSET, ISR_LEN, ISR_OFFSET,
    NOTIFY_LEN, NOTIFY_MULTIPLIER, NOTIFY_OFFSET, REGISTERS_BAR,
};
use super::worker::{build_queue, ActiveQueue, VirtioCounters, Worker};
use super::{VirtioDevice, VirtioError};
use crate::vstate::memory::GuestMemory;

pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern devices: 0x1040 + the virtio device ID (spec 4.1.2.1).
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
const MSIX_BAR: BarIndex = BarIndex(1);
const MSIX_BAR_SIZE: u64 = 0x1000;
const MSIX_PBA_OFFSET: u32 = 0x800;
const CAP_ID_VENDOR: u8 = 0x09;

// virtio_pci_cap cfg_type values (spec 4.1.4).
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const CAP_ISR_CFG: u8 = 3;
const CAP_DEVICE_CFG: u8 = 4;

/// Where queue notifications are delivered as eventfds (KVM ioeventfds for the VM; tests
/// record). Failing to register is not fatal: the trapped write signals the eventfd too.
pub trait NotifyRegistry: Send + Sync {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
}

/// Everything a transport is built from.
pub struct VirtioPciParts {
    /// Prefix of log lines (e.g. "virtio-blk disk0").
    pub name: String,
    pub device: Box<dyn VirtioDevice>,
    /// One vector per queue plus one for configuration changes.
    pub vectors: Box<dyn MsiVectors>,
    pub mem: GuestMemory,
    pub notify: Arc<dyn NotifyRegistry>,
}

pub struct VirtioPciDevice {
    name: String,
    function: EmulatedFunction<VirtioRegisters>,
    /// Clones of the vectors' irqfds, for the I/O thread.
    irqfds: Vec<EventFd>,
    mem: GuestMemory,
    notify: Arc<dyn NotifyRegistry>,
    /// Queue notification eventfds registered with KVM, and where.
    registered: Vec<(EventFd, u64)>,
    worker: Option<Worker>,
    /// The I/O thread of a driver reset, told to stop: device_status reads non-zero until
    /// it has ended (see [`VirtioRegisters::reset_done`]).
    stopping: Option<Worker>,
    counters: Arc<VirtioCounters>,
    device_type: u32,
}

/// A virtio_pci_cap body (from byte 2 on): cap_len, cfg_type, bar, id, padding, offset, length.
fn cap_body(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, REGISTERS_BAR.0, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

impl VirtioPciDevice {
    pub fn new(parts: VirtioPciParts) -> Result<Self, VirtioError> {
        let VirtioPciParts { name, device, vectors, mem, notify } = parts;
        let fn_err = |name: &str| {
            let name = name.to_string();
            move |source| VirtioError::Function { name, source }
        };
        let evt_err = |name: &str| {
            let name = name.to_string();
            move |source| VirtioError::EventFd { name, source }
        };
        let nvec = u16::try_from(vectors.len()).unwrap_or(u16::MAX);
        let device_type = device.device_type();
        let device_id = VIRTIO_PCI_DEVICE_ID_BASE.saturating_add(device_type as u16);
        let cfg = FunctionConfig {
            ids: DeviceIds {
                vendor_id: VIRTIO_PCI_VENDOR_ID,
                device_id,
                class_code: device.pci_class(),
                // Revision 1: a modern-only device (spec 4.1.2.1).
                revision: 1,
                subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
                subsystem_id: 0x40,
            },
            header: HeaderType::Endpoint,
            pcie: None,
            power_management: false,
            bars: vec![
                BarSpec { index: REGISTERS_BAR, kind: BarKind::Mem32 { prefetchable: false }, size: BAR0_SIZE },
                BarSpec { index: MSIX_BAR, kind: BarKind::Mem32 { prefetchable: false }, size: MSIX_BAR_SIZE },
            ],
            msi: None,
            msix: Some(MsixConfig {
                vectors: nvec,
                table_bar: MSIX_BAR,
                table_offset: 0,
                pba_bar: MSIX_BAR,
                pba_offset: MSIX_PBA_OFFSET,
            }),
            // MSI-X only: Linux's virtio_pci uses it whenever the function has it.
            interrupt_pin: 0,
        };
        let irqfds = (0..nvec)
            .filter_map(|v| vectors.irqfd(VectorIndex(v)))
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(evt_err(&name))?;
        let queue_evts = device
            .queue_max_sizes()
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(evt_err(&name))?;
        let regs = VirtioRegisters::new(name.clone(), device, nvec, queue_evts);
        let mut function = EmulatedFunction::new(name.clone(), &cfg, regs).map_err(fn_err(&name))?;
        function.set_vectors(vectors);
        let caps = [
            cap_body(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN, None),
            cap_body(CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, None),
            cap_body(CAP_DEVICE_CFG, DEVICE_OFFSET, DEVICE_LEN, None),
            cap_body(CAP_NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_LEN, Some(NOTIFY_MULTIPLIER)),
        ];
        for body in caps {
            function.config_mut().add_capability(CAP_ID_VENDOR, &body).map_err(|source| VirtioError::Function {
                name: name.clone(),
                source: pci::FunctionError::AddCapability { name: name.clone(), source },
            })?;
        }
        Ok(Self {
            name,
            function,
            irqfds,
            mem,
            notify,
            registered: Vec::new(),
            worker: None,
            stopping: None,
            counters: Arc::default(),
            device_type,
        })
    }

    /// The device's kind as `vm.info` names it.
    pub fn kind(&self) -> &'static str {
        match self.device_type {
            virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK => "virtio-blk",
            virtio_bindings::virtio_ids::VIRTIO_ID_NET => "virtio-net",
            virtio_bindings::virtio_ids::VIRTIO_ID_RNG => "virtio-rng",
            _ => "virtio",
        }
    }

    /// The I/O thread's counters (they survive driver resets).
    pub fn counters(&self) -> Arc<VirtioCounters> {
        self.counters.clone()
    }

    /// Firmware-time BAR placement, before the device is attached.
    pub fn place_bar(&mut self, bar: BarIndex, addr: u64) -> Result<(), VirtioError> {
        self.function.place_bar(bar, addr).map_err(|source| VirtioError::Function { name: self.name.clone(), source })
    }

    /// The BAR sizes to allocate guest addresses for.
    pub fn bar_sizes(&self) -> [(BarIndex, u64); 2] {
        [(REGISTERS_BAR, BAR0_SIZE), (MSIX_BAR, MSIX_BAR_SIZE)]
    }

    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn notify_base(&self) -> Option<u64> {
        self.function.bars().iter().find(|b| b.index == REGISTERS_BAR).map(|b| b.addr + NOTIFY_OFFSET)
    }

    fn register_notifications(&mut self) {
        let Some(base) = self.notify_base() else { return };
        let regs = self.function.backend();
        for (i, q) in regs.queues().iter().enumerate() {
            let Some(evt) = regs.queue_evts().get(i) else { continue };
            if !q.ready {
                continue;
            }
            let addr = base + i as u64 * u64::from(NOTIFY_MULTIPLIER);
            let registered = evt.try_clone().and_then(|fd| self.notify.register(&fd, addr).map(|()| fd));
            match registered {
                Ok(fd) => self.registered.push((fd, addr)),
                // Still correct (the trap signals the eventfd), only slower.
                Err(e) => ratelog::warn_limited!("{}: ioeventfd for queue {i} at {addr:#x}: {e}", self.name),
            }
        }
    }

    fn unregister_notifications(&mut self) {
        for (fd, addr) in self.registered.drain(..) {
            if let Err(e) = self.notify.unregister(&fd, addr) {
                ratelog::warn_limited!("{}: removing the ioeventfd at {addr:#x}: {e}", self.name);
            }
        }
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        let evt_err = |name: &str| {
            let name = name.to_string();
            move |source| VirtioError::EventFd { name, source }
        };
        let regs = self.function.backend_mut();
        let acked = regs.driver_features();
        let kind = super::worker::thread_kind(regs.device_mut().device_type());
        let handler = regs.device_mut().activate(acked)?;
        let regs = self.function.backend();
        let mut queues = Vec::new();
        for (i, cfg) in regs.queues().iter().enumerate() {
            let event_idx = acked & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
            let Some(queue) = build_queue(&self.name, i, cfg, event_idx, &self.mem) else { continue };
            let Some(evt) = regs.queue_evts().get(i) else { continue };
            let interrupt = match self.irqfds.get(usize::from(cfg.vector)) {
                Some(fd) => Some(fd.try_clone().map_err(evt_err(&self.name))?),
                None => None,
            };
            let notify = evt.try_clone().map_err(evt_err(&self.name))?;
            queues.push(ActiveQueue { index: i, queue, notify, interrupt });
        }
        log::info!("{}: driver ready (features {acked:#x}, {} queue(s))", self.name, queues.len());
        self.worker =
            Some(Worker::spawn(kind, self.name.clone(), self.mem.clone(), queues, handler, self.counters.clone())?);
        self.register_notifications();
        Ok(())
    }

    /// Stops the I/O threads and waits for them, then takes the ioeventfds off KVM: the
    /// device does nothing on its own any more (detach, VM teardown, and a driver that
    /// reactivates without waiting for its reset to complete).
    pub fn stop(&mut self) {
        for mut w in [self.worker.take(), self.stopping.take()].into_iter().flatten() {
            w.stop();
        }
        self.unregister_notifications();
        self.function.backend_mut().reset_done();
    }

    /// A driver reset: the I/O thread is told to stop but not waited for here, under the
    /// device lock; [`Self::reap_reset`] completes the reset once it has ended.
    fn begin_reset(&mut self) {
        self.unregister_notifications();
        if let Some(w) = self.worker.take() {
            w.signal_stop();
            log::info!("{}: reset by the driver", self.name);
            self.stopping = Some(w);
        }
        self.reap_reset();
    }

    /// Completes a driver reset whose I/O thread has ended (joining it cannot block then).
    fn reap_reset(&mut self) {
        if self.stopping.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        if let Some(mut w) = self.stopping.take() {
            w.stop();
        }
        if self.function.backend().is_resetting() {
            self.function.backend_mut().reset_done();
        }
    }

    fn handle_transition(&mut self) {
        match self.function.backend_mut().take_transition() {
            Some(Transition::Activate) => {
                self.stop();
                if let Err(e) = self.activate() {
                    ratelog::error_limited!("{}: activation failed: {e}", self.name);
                    self.function.backend_mut().set_needs_reset();
                }
            }
            Some(Transition::Reset) => self.begin_reset(),
            None => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PciDevice for VirtioPciDevice {
    fn bars(&self) -> Vec<BarRegion> {
        self.function.bars()
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        self.function.read_config(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) -> ConfigEffects {
        let effects = self.function.write_config(reg, offset, data);
        // A moved notify area takes its ioeventfds along (the trap covers the gap).
        if self.is_active() && effects.bar_moves.iter().any(|m| m.index == REGISTERS_BAR) {
            self.unregister_notifications();
            self.register_notifications();
        }
        effects
    }

    fn read_bar(&mut self, bar: BarIndex, offset: u64, data: &mut [u8]) {
        self.reap_reset();
        self.function.read_bar(bar, offset, data);
    }

    fn write_bar(&mut self, bar: BarIndex, offset: u64, data: &[u8]) {
        self.reap_reset();
        self.function.write_bar(bar, offset, data);
        self.handle_transition();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::registers::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
    use crate::devices::virtio::rng::Rng;
    use pci::{InterruptError, MsiMessage};
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    struct Vectors(Vec<EventFd>);
    impl MsiVectors for Vectors {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
            self.0.get(usize::from(v.0))
        }
        fn set_route(&mut self, _v: VectorIndex, _m: Option<MsiMessage>) -> Result<(), InterruptError> {
            Ok(())
        }
        fn commit(&mut self) -> Result<(), InterruptError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Registry(Mutex<Vec<(bool, u64)>>);
    impl NotifyRegistry for Registry {
        fn register(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push((true, addr));
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push((false, addr));
            Ok(())
        }
    }

    /// The vendor capabilities, as (cfg_type, bar, offset, length).
    fn virtio_caps(dev: &mut VirtioPciDevice) -> Vec<(u8, u8, u32, u32)> {
        let caps = dev.function.config().capabilities();
        caps.iter()
            .filter(|c| c.id == u16::from(CAP_ID_VENDOR))
            .map(|c| {
                let cfg = dev.function.config();
                let b: [u8; 16] = cfg.bytes(c.offset);
                let le = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                (b[3], b[4], le(8), le(12))
            })
            .collect()
    }

    #[test]
    fn rng_end_to_end_through_the_transport() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let irq: Vec<EventFd> = (0..2).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
        let irq_probe = irq[1].try_clone().unwrap();
        let registry = Arc::new(Registry::default());
        let mut dev = VirtioPciDevice::new(VirtioPciParts {
            name: "rng0".into(),
            device: Box::new(Rng::open().unwrap()),
            vectors: Box::new(Vectors(irq)),
            mem: mem.clone(),
            notify: registry.clone(),
        })
        .unwrap();
        dev.place_bar(REGISTERS_BAR, 0xc000_0000).unwrap();
        dev.place_bar(MSIX_BAR, 0xc001_0000).unwrap();
        assert_eq!(dev.read_config(0), 0x1044_1af4);
        let caps = virtio_caps(&mut dev);
        assert_eq!(caps.len(), 4);
        assert_eq!(caps[0], (CAP_COMMON_CFG, 0, 0, COMMON_LEN as u32));
        assert_eq!(caps[3].0, CAP_NOTIFY_CFG);

        let w = |dev: &mut VirtioPciDevice, off: u64, data: &[u8]| dev.write_bar(REGISTERS_BAR, off, data);
        w(&mut dev, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        w(&mut dev, 0x08, &1u32.to_le_bytes());
        w(&mut dev, 0x0c, &1u32.to_le_bytes());
        w(&mut dev, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK]);
        w(&mut dev, 0x16, &0u16.to_le_bytes());
        w(&mut dev, 0x18, &16u16.to_le_bytes());
        w(&mut dev, 0x1a, &1u16.to_le_bytes());
        for (off, addr) in [(0x20, vq.desc_table_addr()), (0x28, vq.avail_addr()), (0x30, vq.used_addr())] {
            w(&mut dev, off, &(addr.0 as u32).to_le_bytes());
            w(&mut dev, off + 4, &((addr.0 >> 32) as u32).to_le_bytes());
        }
        w(&mut dev, 0x1c, &1u16.to_le_bytes());
        w(&mut dev, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
        assert!(dev.is_active());
        assert_eq!(*registry.0.lock().unwrap(), vec![(true, 0xc000_0000 + NOTIFY_OFFSET)]);

        let flags = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
        vq.add_desc_chains(&[RawDescriptor::from(SplitDescriptor::new(0x8000, 32, flags, 0))], 0).unwrap();
        // A trapped notify write reaches the I/O thread like an ioeventfd would.
        w(&mut dev, NOTIFY_OFFSET, &0u16.to_le_bytes());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while vq.used().idx().load() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 32);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(irq_probe.read().unwrap(), 1, "queue vector 1 raised once");

        w(&mut dev, 0x14, &[0]);
        assert!(!dev.is_active());
        assert_eq!(registry.0.lock().unwrap().last(), Some(&(false, 0xc000_0000 + NOTIFY_OFFSET)));
    }
}
