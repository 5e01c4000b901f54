//! Emulated platform devices: COM1, the i8042 reset line, the CMOS RTC and the ACPI sleep /
//! reset register, the ACPI power button (GED). Each one is a `pci::BusDevice` on the port I/O bus.

pub mod acpi_pm;
pub mod cmos;
pub mod ged;
pub mod i8042;
pub mod serial;
pub mod virtio;
#[cfg(test)]
mod virtio_fuzz_replay;
