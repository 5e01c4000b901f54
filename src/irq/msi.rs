//! MSI/MSI-X vectors of one device as KVM irqfds (the [`pci::MsiVectors`] seam).
//!
//! Ordering on commit (the guest may unmask while the device fires): first unregister the
//! irqfds of vectors that became masked, so no stale route is used; then push the routing
//! table once; then register the irqfds of vectors that became unmasked. KVM's irqfd
//! registration polls the eventfd and injects at once if it was signalled while masked
//! (virt/kvm/eventfd.c, kvm_irqfd_assign), which is the "fire the pending bit on unmask" rule.

use std::sync::{Arc, Mutex};

use pci::{InterruptError, MsiMessage, MsiVectors, VectorIndex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::gsi::GsiRouting;

struct Vector {
    gsi: u32,
    fd: EventFd,
    /// What the guest asked for (applied on commit).
    wanted: Option<MsiMessage>,
    /// Whether the irqfd is registered with KVM now.
    registered: bool,
}

pub struct KvmMsiVectors {
    routing: Arc<Mutex<GsiRouting>>,
    vectors: Vec<Vector>,
}

impl KvmMsiVectors {
    /// One vector per GSI in `gsis` (allocated by the caller from the VM's MSI GSI range).
    pub fn new(routing: Arc<Mutex<GsiRouting>>, gsis: &[u32]) -> std::io::Result<Self> {
        let vectors = gsis
            .iter()
            .map(|&gsi| Ok(Vector { gsi, fd: EventFd::new(EFD_NONBLOCK)?, wanted: None, registered: false }))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { routing, vectors })
    }
}

fn routing_err(e: super::gsi::GsiError) -> InterruptError {
    InterruptError::Routing(std::io::Error::other(e.to_string()))
}

impl MsiVectors for KvmMsiVectors {
    fn len(&self) -> usize {
        self.vectors.len()
    }

    fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
        self.vectors.get(v.0 as usize).map(|x| &x.fd)
    }

    fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
        let vector = self.vectors.get_mut(v.0 as usize).ok_or(InterruptError::NoSuchVector(v))?;
        vector.wanted = msg;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), InterruptError> {
        // Poisoned: a panic while the VM's table was being changed, which is stopping the
        // VM; its routes are no longer trusted, so nothing more is routed.
        let mut routing = self.routing.lock().map_err(|_| {
            InterruptError::Routing(std::io::Error::other("the GSI routing table is poisoned by a panic"))
        })?;
        let chip = routing.chip().clone();
        for (i, v) in self.vectors.iter_mut().enumerate() {
            if v.wanted.is_none() && v.registered {
                chip.unregister_irqfd(&v.fd, v.gsi)
                    .map_err(|source| InterruptError::Irqfd { vector: VectorIndex(i as u16), source })?;
                v.registered = false;
            }
        }
        for v in &self.vectors {
            match v.wanted {
                Some(m) => routing.set_msi(v.gsi, m).map_err(routing_err)?,
                None => routing.remove(v.gsi),
            }
        }
        routing.commit().map_err(routing_err)?;
        for (i, v) in self.vectors.iter_mut().enumerate() {
            if v.wanted.is_some() && !v.registered {
                chip.register_irqfd(&v.fd, v.gsi)
                    .map_err(|source| InterruptError::Irqfd { vector: VectorIndex(i as u16), source })?;
                v.registered = true;
            }
        }
        Ok(())
    }
}

impl Drop for KvmMsiVectors {
    fn drop(&mut self) {
        // Teardown takes the vectors' irqfds and routes out even after a panic poisoned the
        // table (the VM is stopping with that panic as its error).
        let mut routing = self.routing.lock().unwrap_or_else(|e| e.into_inner());
        let chip = routing.chip().clone();
        for v in &mut self.vectors {
            if v.registered {
                let _ = chip.unregister_irqfd(&v.fd, v.gsi);
            }
            routing.remove(v.gsi);
        }
        if let Err(e) = routing.commit() {
            log::warn!("removing MSI routes: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[test]
    fn mask_unmask_ordering() {
        let chip = Arc::new(FakeChip::default());
        let routing = Arc::new(Mutex::new(GsiRouting::new(chip.clone(), 4096)));
        let mut v = KvmMsiVectors::new(routing, &[30, 31]).unwrap();
        let m = MsiMessage { address: 0xfee0_0000, data: 0x41 };
        v.set_route(VectorIndex(0), Some(m)).unwrap();
        v.commit().unwrap();
        v.set_route(VectorIndex(0), None).unwrap();
        v.set_route(VectorIndex(1), Some(m)).unwrap();
        v.commit().unwrap();
        assert!(v.set_route(VectorIndex(2), Some(m)).is_err());
        let calls = chip.calls.lock().unwrap().clone();
        assert!(matches!(calls[0], Call::Routes(ref r) if r.iter().any(|&(g, _)| g == 30)));
        assert_eq!(calls[1], Call::Register(30));
        assert_eq!(calls[2], Call::Unregister(30), "mask: irqfd off before the table changes");
        assert!(
            matches!(calls[3], Call::Routes(ref r) if r.iter().any(|&(g, _)| g == 31) && !r.iter().any(|&(g, _)| g == 30))
        );
        assert_eq!(calls[4], Call::Register(31), "unmask: irqfd on after the route exists");
        // A signal while masked is kept in the eventfd for KVM to pick up on re-registration.
        v.irqfd(VectorIndex(0)).unwrap().write(1).unwrap();
        assert_eq!(v.irqfd(VectorIndex(0)).unwrap().read().unwrap(), 1);
    }
}
