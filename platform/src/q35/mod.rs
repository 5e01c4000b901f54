//! The q35 chipset functions firmware programs: the MCH host bridge at 00:00.0 and the
//! ICH9 LPC bridge at 00:1f.0, the ACPI PM register block the LPC decodes at PMBASE, and
//! the reset control register at port 0xCF9.
//!
//! Both functions are PCI functions whose config registers place chipset windows (the
//! ECAM, the PM block); a move is returned as `pci::WindowMove` in the write's effects,
//! naming the window with [`MCH_WINDOW_ECAM`] or [`LPC_WINDOW_PM`].

pub mod lpc;
pub mod mch;
pub mod pm;
pub mod reset;

pub use lpc::{Ich9Lpc, LPC_WINDOW_PM};
pub use mch::{Q35HostBridge, MCH_WINDOW_ECAM};
pub use pm::AcpiPmBlock;
pub use reset::ResetControl;

use pci::{ConfigEffects, ConfigSpace, DeviceIds, HeaderType};

pub const VENDOR_INTEL: u16 = 0x8086;
/// SeaBIOS treats the machine as QEMU's only when the host bridge carries QEMU's subsystem
/// IDs (paravirt.c `qemu_detect`), and reads fw_cfg only then.
pub const SUBSYSTEM_VENDOR_QEMU: u16 = 0x1af4;
pub const SUBSYSTEM_QEMU: u16 = 0x1100;

/// Where the LPC bridge sits: firmware looks for it at 00:1f.0.
pub const LPC_SLOT: u8 = 0x1f;

fn config_space(device_id: u16, class_code: u32, revision: u8) -> ConfigSpace {
    let ids = DeviceIds {
        vendor_id: VENDOR_INTEL,
        device_id,
        class_code,
        revision,
        subsystem_vendor_id: SUBSYSTEM_VENDOR_QEMU,
        subsystem_id: SUBSYSTEM_QEMU,
    };
    ConfigSpace::new(ids, HeaderType::Endpoint, false)
}

/// Byte `offset` of the config space is touched by a write of `len` bytes at byte `start`.
fn touches(start: usize, len: usize, offset: usize, width: usize) -> bool {
    start < offset + width && offset < start + len
}

fn effects_with(windows: Vec<pci::WindowMove>) -> ConfigEffects {
    ConfigEffects { windows, ..ConfigEffects::default() }
}
