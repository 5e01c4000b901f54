//! The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table, so exactly one
//! owner keeps it: the default irqchip routes (what KVM installs at KVM_CREATE_IRQCHIP: GSI
//! 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC) plus every MSI route.

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
    dirty: bool,
}

impl GsiRouting {
    pub fn new(chip: Arc<dyn IrqChip>) -> Self {
        Self { chip, msi: BTreeMap::new(), dirty: false }
    }

    pub fn chip(&self) -> &Arc<dyn IrqChip> {
        &self.chip
    }

    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), GsiError> {
        if gsi < 24 {
            return Err(GsiError::ReservedGsi { gsi });
        }
        if self.msi.insert(gsi, msg) != Some(msg) {
            self.dirty = true;
        }
        Ok(())
    }

    pub fn remove(&mut self, gsi: u32) {
        self.dirty |= self.msi.remove(&gsi).is_some();
    }

    /// Pushes the table if anything changed since the last push.
    pub fn commit(&mut self) -> Result<(), GsiError> {
        if !self.dirty {
            return Ok(());
        }
        let mut routes = default_routes();
        routes.extend(self.msi.iter().map(|(&gsi, &m)| (gsi, Route::Msi(m))));
        self.chip.set_routes(&routes).map_err(|source| GsiError::SetRouting { routes: routes.len(), source })?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::fake::{Call, FakeChip};

    #[test]
    fn defaults_kept_and_batched() {
        let chip = Arc::new(FakeChip::default());
        let mut r = GsiRouting::new(chip.clone());
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
}
