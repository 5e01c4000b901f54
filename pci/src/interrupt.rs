//! Interrupt seams shared by MSI, MSI-X and INTx users (emulated and assigned devices).
//! The KVM implementation lives in the VMM; tests use recording fakes.

use vmm_sys_util::eventfd::EventFd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VectorIndex(pub u16);

/// An MSI message as programmed by the guest (x86: address 0xFEEx_xxxx).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("interrupt vector {0:?} is out of range")]
    NoSuchVector(VectorIndex),
    #[error("updating the interrupt routing failed")]
    Routing(#[source] std::io::Error),
    #[error("irqfd operation failed for vector {vector:?}")]
    Irqfd {
        vector: VectorIndex,
        #[source]
        source: std::io::Error,
    },
}

/// The MSI/MSI-X vectors of one device, each an eventfd wired (by the VMM) to a KVM irqfd.
/// Route changes are batched: `set_route` records, `commit` pushes one routing update.
pub trait MsiVectors: Send {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The eventfd that raises vector `v` in the guest when signalled.
    fn irqfd(&self, v: VectorIndex) -> Option<&EventFd>;
    /// `None` masks the vector: its irqfd is detached and signals are not delivered.
    fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError>;
    fn commit(&mut self) -> Result<(), InterruptError>;
    /// Raises vector `v` from the VMM itself (emulated devices, pending bits on unmask).
    fn trigger(&self, v: VectorIndex) -> Result<(), InterruptError> {
        self.irqfd(v)
            .ok_or(InterruptError::NoSuchVector(v))?
            .write(1)
            .map_err(|source| InterruptError::Irqfd { vector: v, source })
    }
}
