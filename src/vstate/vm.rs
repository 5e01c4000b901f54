//! The KVM VM: in-kernel irqchip and PIT, and guest memory slots.

use std::sync::Mutex;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::kvm::KvmSystem;
use super::memory::GuestMemory;
use crate::layout;

/// The pages KVM needs for the real-mode TSS and identity map on Intel (harmless on AMD);
/// see `layout::KVM_IDENTITY_MAP_START`: below a firmware image at the top of 4 GiB.
const KVM_TSS_ADDRESS: usize = layout::KVM_TSS_START as usize;
const KVM_IDENTITY_MAP_ADDRESS: u64 = layout::KVM_IDENTITY_MAP_START;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed")]
    SetIdentityMap(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot} at {guest_addr:#x} (+{size:#x}) failed")]
    SetMemoryRegion {
        slot: u32,
        guest_addr: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("no free KVM memory slot for {guest_addr:#x} (+{size:#x})")]
    NoFreeSlot { guest_addr: u64, size: u64 },
}

/// A memory slot handed out by [`Vm::map_memslot`]; give it back to [`Vm::unmap_memslot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemSlot {
    pub slot: u32,
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    pub read_only: bool,
}

pub struct Vm {
    pub fd: VmFd,
    /// Only flag flips run under this lock: a poisoned one still holds a whole table.
    used_slots: Mutex<Vec<bool>>,
}

impl Vm {
    pub fn create(kvm: &KvmSystem) -> Result<Self, VmError> {
        let fd = kvm.kvm.create_vm().map_err(VmError::Create)?;
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::SetTssAddress)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS).map_err(VmError::SetIdentityMap)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        // The dummy speaker port (0x61) is emulated in the kernel: no exits for PIT channel 2.
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        let max_slots = u32::try_from(kvm.kvm.get_nr_memslots()).unwrap_or(u32::MAX).min(4096);
        Ok(Self { fd, used_slots: Mutex::new(vec![false; max_slots as usize]) })
    }

    /// How many entries KVM accepts in the GSI routing table (KVM_CAP_IRQ_ROUTING reports
    /// KVM_MAX_IRQ_ROUTES); 1024, the oldest kernels' limit, if it says nothing.
    pub fn max_irq_routes(&self) -> usize {
        usize::try_from(self.fd.check_extension_int(kvm_ioctls::Cap::IrqRouting))
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(1024)
    }

    /// Registers every guest RAM region as a KVM memory slot.
    pub fn map_guest_memory(&self, mem: &GuestMemory) -> Result<Vec<MemSlot>, VmError> {
        mem.iter()
            .map(|region| {
                let host_addr = mem.get_host_address(region.start_addr()).map(|p| p as u64).unwrap_or_default();
                self.map_memslot(region.start_addr().0, region.len(), host_addr, false)
            })
            .collect()
    }

    /// Maps `size` bytes at host virtual address `host_addr` into the guest at `guest_addr`.
    /// Used for RAM and for assigned devices' BAR mmaps.
    pub fn map_memslot(&self, guest_addr: u64, size: u64, host_addr: u64, read_only: bool) -> Result<MemSlot, VmError> {
        let slot = {
            let mut used = self.used_slots.lock().unwrap_or_else(|e| e.into_inner());
            let free = used.iter().position(|u| !u).ok_or(VmError::NoFreeSlot { guest_addr, size })?;
            used[free] = true;
            free as u32
        };
        let memslot = MemSlot { slot, guest_addr, size, host_addr, read_only };
        if let Err(e) = self.set_region(&memslot, size) {
            self.release_slot(slot);
            return Err(e);
        }
        Ok(memslot)
    }

    pub fn unmap_memslot(&self, memslot: MemSlot) -> Result<(), VmError> {
        self.set_region(&memslot, 0)?;
        self.release_slot(memslot.slot);
        Ok(())
    }

    fn release_slot(&self, slot: u32) {
        let mut used = self.used_slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = used.get_mut(slot as usize) {
            *u = false;
        }
    }

    fn set_region(&self, m: &MemSlot, size: u64) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot: m.slot,
            flags: if m.read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: m.guest_addr,
            memory_size: size,
            userspace_addr: m.host_addr,
        };
        // SAFETY: the host range [host_addr, host_addr+size) is a live mapping owned by the
        // caller (guest RAM or a device region mmap) that outlives the slot: RAM lives as long
        // as the Vm, device mappings are unmapped from KVM before they are munmap'ed.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|source| VmError::SetMemoryRegion {
            slot: m.slot,
            guest_addr: m.guest_addr,
            size: m.size,
            source,
        })
    }
}
