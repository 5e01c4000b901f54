//! The legacy platform devices on the port I/O bus: COM1 (when there is a console), the
//! i8042 (its reset line), the CMOS RTC and the ACPI sleep/reset port. Built here; the device
//! manager attaches them (bus range and interrupt) like any other device.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{DeviceId, DeviceManagerError};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::cmos::Cmos;
use crate::devices::ged::Ged;
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleOut, SerialDevice};
use crate::layout;
use crate::stop::{StopNotifier, StopReason, StopTrigger};

/// A device on the port I/O bus, ready to attach.
pub struct PlatformDevice {
    pub id: DeviceId,
    pub device: Arc<dyn pci::BusAccess>,
    pub port: u64,
    pub len: u64,
    /// The eventfd the device raises its interrupt with, and the GSI it goes to.
    pub irq: Option<(EventFd, u32)>,
}

pub struct LegacyDevices {
    pub devices: Vec<PlatformDevice>,
    /// COM1, for console input.
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    /// The ACPI power button's event device.
    pub ged: Arc<Mutex<Ged>>,
}

/// Builds COM1 (when `console` is given), i8042, CMOS, the GED (the ACPI power button) and
/// (with `sleep_port`, for direct boot; firmware boot has the ICH9 PM block instead) the
/// ACPI sleep/reset port. The CMOS is passed in because it outlives a guest reset, like a
/// battery-backed one.
pub fn build(
    stop: &Arc<StopNotifier>,
    console: Option<ConsoleOut>,
    cmos: Arc<Mutex<Cmos>>,
    sleep_port: bool,
) -> Result<LegacyDevices, DeviceManagerError> {
    let mut devices = Vec::new();
    let serial = match console {
        Some(out) => {
            let irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::CreateEventFd)?;
            let kvm_side = irq.try_clone().map_err(DeviceManagerError::CreateEventFd)?;
            let dev = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
            devices.push(PlatformDevice {
                id: DeviceId::from("com1"),
                device: dev.clone(),
                port: layout::COM1_PORT,
                len: 8,
                irq: Some((kvm_side, layout::COM1_GSI)),
            });
            Some(dev)
        }
        None => None,
    };
    let reset = StopTrigger { notifier: stop.clone(), reason: StopReason::Reset };
    let platform = |id: &str, device: Arc<dyn pci::BusAccess>, port: u64, len: u64| PlatformDevice {
        id: DeviceId::from(id),
        device,
        port,
        len,
        irq: None,
    };
    devices.push(platform("i8042", Arc::new(Mutex::new(I8042::new(reset))), layout::I8042_PORT, layout::I8042_LEN));
    devices.push(platform("cmos", cmos, layout::CMOS_PORT, layout::CMOS_LEN));
    if sleep_port {
        devices.push(platform(
            "acpi-pm",
            Arc::new(Mutex::new(AcpiPm::new(stop.clone()))),
            layout::ACPI_SLEEP_CONTROL_PORT,
            1,
        ));
    }
    let ged_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::CreateEventFd)?;
    let kvm_side = ged_irq.try_clone().map_err(DeviceManagerError::CreateEventFd)?;
    let ged = Arc::new(Mutex::new(Ged::new(ged_irq)));
    devices.push(PlatformDevice {
        id: DeviceId::from("ged"),
        device: ged.clone(),
        port: layout::GED_PORT,
        len: 1,
        irq: Some((kvm_side, layout::GED_GSI)),
    });
    Ok(LegacyDevices { devices, serial, ged })
}
