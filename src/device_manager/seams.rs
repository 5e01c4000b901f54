//! The KVM calls devices make at attach, detach and run time, behind traits so the device
//! manager runs in unit tests without /dev/kvm: interrupt routing and irqfds
//! ([`IrqChip`]), queue-notification ioeventfds ([`NotifyRegistry`]) and memory slots
//! ([`MemslotMap`]). [`Vm`] implements all three; [`fake`] records them.

use std::collections::BTreeMap;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::pci::NotifyRegistry;
use crate::irq::IrqChip;
use crate::vstate::vm::{MemSlot, Vm, VmError};

/// KVM memory slots over host memory that is not guest RAM (an assigned device's BARs).
pub trait MemslotMap: Send + Sync {
    fn map_memslot(&self, guest_addr: u64, size: u64, host_addr: u64, read_only: bool) -> Result<MemSlot, VmError>;
    fn unmap_memslot(&self, slot: MemSlot) -> Result<(), VmError>;
}

impl MemslotMap for Vm {
    fn map_memslot(&self, guest_addr: u64, size: u64, host_addr: u64, read_only: bool) -> Result<MemSlot, VmError> {
        Vm::map_memslot(self, guest_addr, size, host_addr, read_only)
    }

    fn unmap_memslot(&self, slot: MemSlot) -> Result<(), VmError> {
        Vm::unmap_memslot(self, slot)
    }
}

/// Queue notifications become KVM ioeventfds on the notify area.
impl NotifyRegistry for Vm {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        use kvm_ioctls::{IoEventAddress, NoDatamatch};
        self.fd
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        use kvm_ioctls::{IoEventAddress, NoDatamatch};
        self.fd
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// The VM as devices see it.
#[derive(Clone)]
pub struct VmSeams {
    pub irq: Arc<dyn IrqChip>,
    pub ioevents: Arc<dyn NotifyRegistry>,
    pub memslots: Arc<dyn MemslotMap>,
}

impl VmSeams {
    pub fn of(vm: &Arc<Vm>) -> Self {
        Self { irq: vm.clone(), ioevents: vm.clone(), memslots: vm.clone() }
    }
}

/// The memory slots over devices' BAR mmaps (the relocator's, `pci::BusRelocator`), each
/// given back when the relocator unmaps it or, at the latest, when the relocator is gone.
pub struct DeviceSlots {
    map: Arc<dyn MemslotMap>,
    live: BTreeMap<u32, MemSlot>,
}

impl DeviceSlots {
    pub fn new(map: Arc<dyn MemslotMap>) -> Self {
        Self { map, live: BTreeMap::new() }
    }
}

impl pci::MemorySlots for DeviceSlots {
    fn map_slot(&mut self, gpa: u64, size: u64, host_addr: u64) -> std::io::Result<u32> {
        let slot = self.map.map_memslot(gpa, size, host_addr, false).map_err(std::io::Error::other)?;
        self.live.insert(slot.slot, slot);
        Ok(slot.slot)
    }

    fn unmap_slot(&mut self, slot: u32) -> std::io::Result<()> {
        let s = self.live.remove(&slot).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        self.map.unmap_memslot(s).map_err(std::io::Error::other)
    }
}

impl Drop for DeviceSlots {
    fn drop(&mut self) {
        for (_, s) in std::mem::take(&mut self.live) {
            if let Err(e) = self.map.unmap_memslot(s) {
                log::warn!("removing memory slot {} at {:#x}: {e}", s.slot, s.guest_addr);
            }
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! Recording fakes of the seams; what is live is what a test asserts on.
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[derive(Default)]
    pub struct FakeIoevents {
        pub live: Mutex<Vec<u64>>,
    }

    impl NotifyRegistry for FakeIoevents {
        fn register(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            self.live.lock().unwrap().push(addr);
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, addr: u64) -> std::io::Result<()> {
            let mut live = self.live.lock().unwrap();
            let i =
                live.iter().position(|a| *a == addr).ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
            live.remove(i);
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct FakeMemslots {
        pub live: Mutex<BTreeMap<u32, MemSlot>>,
    }

    impl MemslotMap for FakeMemslots {
        fn map_memslot(&self, guest_addr: u64, size: u64, host_addr: u64, read_only: bool) -> Result<MemSlot, VmError> {
            let mut live = self.live.lock().unwrap();
            let slot = (0..).find(|s| !live.contains_key(s)).unwrap_or_default();
            let m = MemSlot { slot, guest_addr, size, host_addr, read_only };
            live.insert(slot, m);
            Ok(m)
        }
        fn unmap_memslot(&self, slot: MemSlot) -> Result<(), VmError> {
            self.live.lock().unwrap().remove(&slot.slot);
            Ok(())
        }
    }

    /// The three fakes, and the seams over them.
    pub struct FakeVm {
        pub chip: Arc<FakeChip>,
        pub ioevents: Arc<FakeIoevents>,
        pub memslots: Arc<FakeMemslots>,
    }

    impl FakeVm {
        pub fn new() -> Self {
            Self { chip: Arc::default(), ioevents: Arc::default(), memslots: Arc::default() }
        }

        pub fn seams(&self) -> VmSeams {
            VmSeams { irq: self.chip.clone(), ioevents: self.ioevents.clone(), memslots: self.memslots.clone() }
        }

        /// GSIs with an irqfd registered now.
        pub fn live_irqfds(&self) -> Vec<u32> {
            let mut live = Vec::new();
            for c in self.chip.calls.lock().unwrap().iter() {
                match c {
                    Call::Register(g) | Call::RegisterResample(g) => live.push(*g),
                    Call::Unregister(g) => {
                        if let Some(i) = live.iter().position(|x| x == g) {
                            live.remove(i);
                        }
                    }
                    Call::Routes(_) => {}
                }
            }
            live
        }

        /// MSI routes in the last routing table pushed.
        pub fn msi_routes(&self) -> Vec<u32> {
            let calls = self.chip.calls.lock().unwrap();
            let last = calls.iter().rev().find_map(|c| match c {
                Call::Routes(r) => Some(r.clone()),
                _ => None,
            });
            last.unwrap_or_default()
                .iter()
                .filter(|(_, r)| matches!(r, crate::irq::Route::Msi(_)))
                .map(|(g, _)| *g)
                .collect()
        }
    }
}
