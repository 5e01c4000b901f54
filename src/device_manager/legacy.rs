//! Wiring of the legacy platform devices onto the port I/O bus and their KVM interrupts.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::DeviceManagerError;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::cmos::Cmos;
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::layout;
use crate::stop::{StopNotifier, StopReason, StopTrigger};
use crate::vstate::vm::Vm;

pub struct LegacyDevices {
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
}

fn insert(
    bus: &pci::Bus,
    what: &'static str,
    dev: Arc<Mutex<dyn pci::BusDevice>>,
    base: u64,
    len: u64,
) -> Result<(), DeviceManagerError> {
    bus.insert(dev, base, len).map_err(|source| DeviceManagerError::InsertDevice { what, base, source })
}

/// Puts COM1 (when `console` is given), i8042, CMOS and the ACPI sleep/reset port on `pio`.
/// The CMOS is passed in because it outlives a guest reset, like a battery-backed one.
pub fn attach(
    vm: &Vm,
    pio: &pci::Bus,
    stop: &Arc<StopNotifier>,
    console: Option<ConsoleOut>,
    cmos: Arc<Mutex<Cmos>>,
) -> Result<LegacyDevices, DeviceManagerError> {
    let serial = match console {
        Some(out) => {
            let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::CreateEventFd)?;
            vm.fd.register_irqfd(&irq, layout::COM1_GSI).map_err(|source| DeviceManagerError::RegisterIrqfd {
                what: "COM1",
                gsi: layout::COM1_GSI,
                source,
            })?;
            let dev = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
            insert(pio, "COM1", dev.clone(), layout::COM1_PORT, 8)?;
            Some(dev)
        }
        None => None,
    };
    let reset = StopTrigger { notifier: stop.clone(), reason: StopReason::Reset };
    insert(pio, "i8042", Arc::new(Mutex::new(I8042::new(reset))), layout::I8042_PORT, layout::I8042_LEN)?;
    insert(pio, "CMOS RTC", cmos, layout::CMOS_PORT, layout::CMOS_LEN)?;
    insert(
        pio,
        "ACPI sleep/reset",
        Arc::new(Mutex::new(AcpiPm::new(stop.clone()))),
        layout::ACPI_SLEEP_CONTROL_PORT,
        1,
    )?;
    Ok(LegacyDevices { serial })
}
