//! The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so exactly one
//! owner keeps it: the default irqchip routes (what KVM installs at KVM_CREATE_IRQCHIP: GSI
//! 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC) plus every MSI route.
//!
//! KVM limits the table to the number of routes KVM_CAP_IRQ_ROUTING reports (entries, and
//! every GSI below it): an MSI route beyond it is refused here, with the limit named. And the
//! update is all-or-nothing: when KVM refuses a table, the previous one stays in force, so
//! the routes of the refused batch are dropped here too and later updates start from what
//! KVM has.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use pci::MsiMessage;

use super::IrqChip;

/// Where a GSI goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Irqchip { chip: u32, pin: u32 },
    Msi(MsiMessage),
}

#[derive(Debug, thiserror::Error)]
pub enum GsiError {
    #[error("GSI {gsi} is an irqchip pin; MSI routes start at 24")]
    ReservedGsi { gsi: u32 },
    #[error("GSI {gsi} is beyond the {max} interrupt routes KVM allows (KVM_CAP_IRQ_ROUTING)")]
    BeyondLimit { gsi: u32, max: usize },
    #[error("{routes} interrupt routes are more than the {max} KVM allows (KVM_CAP_IRQ_ROUTING)")]
    TooManyRoutes { routes: usize, max: usize },
    #[error("KVM_SET_GSI_ROUTING with {routes} routes failed")]
    SetRouting {
        routes: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Builds KVM's table from `(gsi, route)` pairs.
pub fn kvm_table(routes: &[(u32, Route)]) -> std::io::Result<KvmIrqRouting> {
    let entries: Vec<kvm_irq_routing_entry> = routes
        .iter()
        .map(|&(gsi, route)| {
            let mut e = kvm_irq_routing_entry { gsi, ..Default::default() };
            match route {
                Route::Irqchip { chip, pin } => {
                    e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                    e.u.irqchip.irqchip = chip;
                    e.u.irqchip.pin = pin;
                }
                Route::Msi(m) => {
                    e.type_ = KVM_IRQ_ROUTING_MSI;
                    e.u.msi.address_lo = m.address as u32;
                    e.u.msi.address_hi = (m.address >> 32) as u32;
                    e.u.msi.data = m.data;
                }
            }
            e
        })
        .collect();
    KvmIrqRouting::from_entries(&entries).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))
}

/// Entries of the default irqchip routes: 24 IOAPIC pins, and the 16 ISA IRQs on the PICs.
pub const DEFAULT_ROUTES: usize = 24 + 16;

fn default_routes() -> Vec<(u32, Route)> {
    let mut v = Vec::new();
    for gsi in 0..24u32 {
        v.push((gsi, Route::Irqchip { chip: KVM_IRQCHIP_IOAPIC, pin: gsi }));
        if gsi < 16 {
            let chip = if gsi < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
            v.push((gsi, Route::Irqchip { chip, pin: gsi % 8 }));
        }
    }
    v
}

/// The MSI part of the table; `commit` pushes defaults + MSI routes in one ioctl.
pub struct GsiRouting {
    chip: Arc<dyn IrqChip>,
    msi: BTreeMap<u32, MsiMessage>,
    /// The MSI routes of the last table KVM accepted.
    committed: BTreeMap<u32, MsiMessage>,
    dirty: bool,
    /// Routes KVM accepts in one table; GSIs must be below it too.
    max_routes: usize,
}

impl GsiRouting {
    /// `max_routes`: what KVM_CAP_IRQ_ROUTING reports ([`crate::vstate::vm::Vm::max_irq_routes`]).
    pub fn new(chip: Arc<dyn IrqChip>, max_routes: usize) -> Self {
        Self { chip, msi: BTreeMap::new(), committed: BTreeMap::new(), dirty: false, max_routes }
    }

    pub fn chip(&self) -> &Arc<dyn IrqChip> {
        &self.chip
    }

    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), GsiError> {
        if gsi < 24 {
            return Err(GsiError::ReservedGsi { gsi });
        }
        if usize::try_from(gsi).map_or(true, |g| g >= self.max_routes) {
            return Err(GsiError::BeyondLimit { gsi, max: self.max_routes });
        }
        if self.msi.insert(gsi, msg) != Some(msg) {
            self.dirty = true;
        }
        Ok(())
    }

    pub fn remove(&mut self, gsi: u32) {
        self.dirty |= self.msi.remove(&gsi).is_some();
    }

    /// Pushes the table if anything changed since the last push. On failure the changes
    /// made since the last accepted table are dropped (KVM still has that one): the caller
    /// sets its routes again with its next commit.
    pub fn commit(&mut self) -> Result<(), GsiError> {
        if !self.dirty {
            return Ok(());
        }
        let mut routes = default_routes();
        routes.extend(self.msi.iter().map(|(&gsi, &m)| (gsi, Route::Msi(m))));
        let pushed = if routes.len() > self.max_routes {
            Err(GsiError::TooManyRoutes { routes: routes.len(), max: self.max_routes })
        } else {
            self.chip.set_routes(&routes).map_err(|source| GsiError::SetRouting { routes: routes.len(), source })
        };
        match pushed {
            Ok(()) => self.committed.clone_from(&self.msi),
            Err(_) => self.msi.clone_from(&self.committed),
        }
        self.dirty = false;
        pushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[test]
    fn defaults_kept_and_batched() {
        let chip = Arc::new(FakeChip::default());
        let mut r = GsiRouting::new(chip.clone(), 4096);
        assert!(r.set_msi(5, MsiMessage::default()).is_err());
        r.set_msi(24, MsiMessage { address: 0xfee0_0000, data: 0x31 }).unwrap();
        r.set_msi(25, MsiMessage { address: 0xfee0_0000, data: 0x32 }).unwrap();
        r.commit().unwrap();
        r.commit().unwrap();
        let calls = chip.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1, "one ioctl per batch, none when unchanged");
        let Call::Routes(routes) = &calls[0] else { panic!() };
        assert_eq!(routes.len(), 24 + 16 + 2);
        assert!(routes.contains(&(4, Route::Irqchip { chip: KVM_IRQCHIP_IOAPIC, pin: 4 })));
        assert!(routes.contains(&(9, Route::Irqchip { chip: KVM_IRQCHIP_PIC_SLAVE, pin: 1 })));
        let table = kvm_table(routes).unwrap();
        assert_eq!(table.as_slice().len(), routes.len());
    }

    /// Fails every KVM_SET_GSI_ROUTING while `fail` is set; records the accepted tables.
    #[derive(Default)]
    struct FlakyChip {
        fail: std::sync::atomic::AtomicBool,
        tables: std::sync::Mutex<Vec<Vec<(u32, Route)>>>,
    }

    impl IrqChip for FlakyChip {
        fn set_routes(&self, routes: &[(u32, Route)]) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.tables.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
        fn register_irqfd(&self, _: &vmm_sys_util::eventfd::EventFd, _: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn unregister_irqfd(&self, _: &vmm_sys_util::eventfd::EventFd, _: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn register_irqfd_with_resample(
            &self,
            _: &vmm_sys_util::eventfd::EventFd,
            _: &vmm_sys_util::eventfd::EventFd,
            _: u32,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage { address: 0xfee0_0000, data }
    }

    #[test]
    fn a_refused_update_leaves_the_last_good_table_for_the_next_one() {
        let chip = Arc::new(FlakyChip::default());
        let mut r = GsiRouting::new(chip.clone(), 4096);
        r.set_msi(24, msg(1)).unwrap();
        r.commit().unwrap();
        chip.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        r.set_msi(25, msg(2)).unwrap();
        r.remove(24);
        assert!(matches!(r.commit(), Err(GsiError::SetRouting { .. })));
        chip.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        // The next batch builds on what KVM has (24 routed, 25 not), not on the refused one.
        r.set_msi(26, msg(3)).unwrap();
        r.commit().unwrap();
        let tables = chip.tables.lock().unwrap();
        let msi: Vec<u32> = tables[1].iter().filter(|(_, rt)| matches!(rt, Route::Msi(_))).map(|(g, _)| *g).collect();
        assert_eq!(msi, [24, 26]);
        assert_eq!(tables.len(), 2);
    }

    #[test]
    fn kvm_route_limit_is_respected() {
        let chip = Arc::new(FlakyChip::default());
        // Room for the 40 default routes and 2 MSI routes.
        let mut r = GsiRouting::new(chip.clone(), DEFAULT_ROUTES + 2);
        assert!(matches!(r.set_msi(42, msg(1)), Err(GsiError::BeyondLimit { gsi: 42, max: 42 })));
        r.set_msi(24, msg(1)).unwrap();
        r.set_msi(25, msg(2)).unwrap();
        r.commit().unwrap();
        r.set_msi(26, msg(3)).unwrap();
        let e = r.commit().unwrap_err();
        assert!(matches!(e, GsiError::TooManyRoutes { routes: 43, max: 42 }), "{e}");
        assert!(e.to_string().contains("KVM_CAP_IRQ_ROUTING"));
        // Still usable: a change within the limit goes through, from the accepted table.
        r.set_msi(25, msg(4)).unwrap();
        r.commit().unwrap();
        assert_eq!(chip.tables.lock().unwrap().len(), 2);
    }
}
