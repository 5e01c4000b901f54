//! fw_cfg item keys (selectors) as QEMU numbers them (docs/specs/fw_cfg.rst in QEMU's tree;
//! the x86-only ones are "arch local", bit 15).

pub const SIGNATURE: u16 = 0x00;
pub const ID: u16 = 0x01;
pub const UUID: u16 = 0x02;
pub const RAM_SIZE: u16 = 0x03;
pub const NOGRAPHIC: u16 = 0x04;
pub const NB_CPUS: u16 = 0x05;
pub const MACHINE_ID: u16 = 0x06;
pub const KERNEL_ADDR: u16 = 0x07;
pub const KERNEL_SIZE: u16 = 0x08;
pub const KERNEL_CMDLINE: u16 = 0x09;
pub const INITRD_ADDR: u16 = 0x0a;
pub const INITRD_SIZE: u16 = 0x0b;
pub const BOOT_DEVICE: u16 = 0x0c;
pub const NUMA: u16 = 0x0d;
pub const BOOT_MENU: u16 = 0x0e;
pub const MAX_CPUS: u16 = 0x0f;
pub const KERNEL_ENTRY: u16 = 0x10;
pub const KERNEL_DATA: u16 = 0x11;
pub const INITRD_DATA: u16 = 0x12;
pub const CMDLINE_ADDR: u16 = 0x13;
pub const CMDLINE_SIZE: u16 = 0x14;
pub const CMDLINE_DATA: u16 = 0x15;
pub const SETUP_ADDR: u16 = 0x16;
pub const SETUP_SIZE: u16 = 0x17;
pub const SETUP_DATA: u16 = 0x18;
pub const FILE_DIR: u16 = 0x19;
/// Files get the keys from here up, in directory order.
pub const FILE_FIRST: u16 = 0x20;

/// Set in a selector written by a guest that means to write the item (ignored: no item
/// here is writable).
pub const WRITE_CHANNEL: u16 = 0x4000;
/// x86-specific items.
pub const ARCH_LOCAL: u16 = 0x8000;
pub const ACPI_TABLES: u16 = ARCH_LOCAL;
pub const SMBIOS_ENTRIES: u16 = ARCH_LOCAL + 1;
pub const IRQ0_OVERRIDE: u16 = ARCH_LOCAL + 2;
pub const E820_TABLE: u16 = ARCH_LOCAL + 3;
pub const HPET: u16 = ARCH_LOCAL + 4;

/// FW_CFG_ID bits: the traditional port interface, and the DMA interface.
pub const ID_TRADITIONAL: u32 = 1 << 0;
pub const ID_DMA: u32 = 1 << 1;
