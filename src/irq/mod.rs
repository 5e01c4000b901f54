//! Interrupt plumbing between assigned/emulated devices and KVM: the GSI routing table
//! (one owner for the whole VM), MSI/MSI-X vectors as irqfds, INTx as an irqfd with resample.

pub mod gsi;
pub mod intx;
pub mod msi;

use vmm_sys_util::eventfd::EventFd;

pub use gsi::{GsiRouting, Route};
pub use intx::{IntxHandle, KvmIntx};
pub use msi::KvmMsiVectors;

/// The KVM calls interrupt wiring needs. Implemented for [`crate::vstate::vm::Vm`]; tests use a
/// recording fake, so the ordering rules below are checked without /dev/kvm.
pub trait IrqChip: Send + Sync {
    /// KVM_SET_GSI_ROUTING with the complete table.
    fn set_routes(&self, routes: &[(u32, Route)]) -> std::io::Result<()>;
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()>;
    /// A level-triggered irqfd: KVM signals `resample` when the guest EOIs the line.
    fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> std::io::Result<()>;
}

impl IrqChip for crate::vstate::vm::Vm {
    fn set_routes(&self, routes: &[(u32, Route)]) -> std::io::Result<()> {
        let table = gsi::kvm_table(routes)?;
        self.fd.set_gsi_routing(&table).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd.unregister_irqfd(fd, gsi).map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn register_irqfd_with_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> std::io::Result<()> {
        self.fd
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    /// Every KVM call in order, for asserting on the ordering rules.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Routes(Vec<(u32, Route)>),
        Register(u32),
        Unregister(u32),
        RegisterResample(u32),
    }

    #[derive(Default)]
    pub struct FakeChip {
        pub calls: Mutex<Vec<Call>>,
    }

    impl IrqChip for FakeChip {
        fn set_routes(&self, routes: &[(u32, Route)]) -> std::io::Result<()> {
            gsi::kvm_table(routes)?;
            self.calls.lock().unwrap().push(Call::Routes(routes.to_vec()));
            Ok(())
        }
        fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(Call::Register(gsi));
            Ok(())
        }
        fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(Call::Unregister(gsi));
            Ok(())
        }
        fn register_irqfd_with_resample(&self, _fd: &EventFd, _r: &EventFd, gsi: u32) -> std::io::Result<()> {
            self.calls.lock().unwrap().push(Call::RegisterResample(gsi));
            Ok(())
        }
    }
}
