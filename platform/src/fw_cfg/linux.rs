//! A Linux bzImage, initramfs and command line as fw_cfg items, laid out the way QEMU's
//! `-kernel` does it (its `x86_load_linux`), which is what both firmware paths consume:
//! OVMF's kernel loader reads `SETUP_DATA` + `KERNEL_DATA` as one image and boots its EFI
//! stub; under SeaBIOS a boot option ROM (`linuxboot_dma.bin`) copies each part to the
//! address in its `*_ADDR` item and jumps into the real-mode setup code.
//!
//! The real-mode part (setup) gets the boot protocol fields a loader fills in (Linux's
//! Documentation/arch/x86/boot.rst): loader type, command line pointer, heap end, initrd
//! address and size.

use super::keys;
use super::{FwCfgBuilder, FwCfgError};

const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21c;
const OFF_HEAP_END_PTR: usize = 0x224;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: usize = 0x22c;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
/// The setup header ends before this offset in every protocol version.
const HEADER_END: usize = 0x268;

const LOADFLAGS_LOADED_HIGH: u8 = 1 << 0;
const LOADFLAGS_CAN_USE_HEAP: u8 = 1 << 7;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// "Undefined" boot loader: QEMU's value, which is what the kernel sees under QEMU.
const LOADER_TYPE_QEMU: u8 = 0xb0;

/// Where the parts go (protocol 2.02 and later): real-mode code at 64 KiB, the command line
/// after it, the protected-mode kernel at 1 MiB.
const REAL_ADDR: u32 = 0x1_0000;
const CMDLINE_ADDR: u32 = 0x2_0000;
const PROT_ADDR: u32 = 0x10_0000;
/// What QEMU keeps free at the top of low RAM for firmware tables, below which the
/// initramfs ends.
const TOP_RESERVE: u64 = 0x2_8000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinuxError {
    #[error("the kernel image is not a bzImage (no Linux boot protocol header)")]
    NotBzImage,
    #[error("the kernel's boot protocol {major}.{minor:02} is older than 2.02, which booting through firmware needs")]
    OldProtocol { major: u8, minor: u8 },
    #[error("the kernel image is a zImage (loaded low); only bzImages boot through firmware")]
    ZImage,
    #[error("the kernel image ({len} bytes) is shorter than its {setup} bytes of setup code")]
    Truncated { len: usize, setup: usize },
    #[error("the kernel command line ({len} bytes) is longer than the kernel's limit of {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the initramfs ({len} bytes) does not fit below {max:#x}, the highest address this kernel accepts")]
    InitrdTooLarge { len: usize, max: u64 },
}

/// The items for `-kernel`, ready for [`LinuxBoot::add_to`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    pub setup: Vec<u8>,
    pub kernel: Vec<u8>,
    /// NUL-terminated.
    pub cmdline: Vec<u8>,
    pub initrd: Option<(u32, Vec<u8>)>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl LinuxBoot {
    /// Splits `image` (a bzImage) into setup and kernel and fills in the setup header.
    /// `low_ram_end` is the end of RAM below 4 GiB: the initramfs goes as high below it as
    /// the kernel allows.
    pub fn new(image: &[u8], initrd: Option<Vec<u8>>, cmdline: &str, low_ram_end: u64) -> Result<Self, LinuxError> {
        if image.len() < HEADER_END || le32(image, OFF_HEADER) != HEADER_MAGIC {
            return Err(LinuxError::NotBzImage);
        }
        let version = le16(image, OFF_VERSION);
        if version < 0x202 {
            return Err(LinuxError::OldProtocol { major: (version >> 8) as u8, minor: version as u8 });
        }
        if image[OFF_LOADFLAGS] & LOADFLAGS_LOADED_HIGH == 0 {
            return Err(LinuxError::ZImage);
        }
        let sects = match image[OFF_SETUP_SECTS] {
            0 => 4,
            n => usize::from(n),
        };
        let setup_len = (sects + 1) * 512;
        if image.len() < setup_len {
            return Err(LinuxError::Truncated { len: image.len(), setup: setup_len });
        }
        let max_cmdline = if version >= 0x206 { le32(image, OFF_CMDLINE_SIZE) as usize } else { 255 };
        if cmdline.len() > max_cmdline {
            return Err(LinuxError::CmdlineTooLong { len: cmdline.len(), max: max_cmdline });
        }
        let mut setup = image[..setup_len].to_vec();
        setup[OFF_TYPE_OF_LOADER] = LOADER_TYPE_QEMU;
        setup[OFF_LOADFLAGS] |= LOADFLAGS_CAN_USE_HEAP;
        let heap_end = (CMDLINE_ADDR - REAL_ADDR - 0x200) as u16;
        setup[OFF_HEAP_END_PTR..OFF_HEAP_END_PTR + 2].copy_from_slice(&heap_end.to_le_bytes());
        setup[OFF_CMD_LINE_PTR..OFF_CMD_LINE_PTR + 4].copy_from_slice(&CMDLINE_ADDR.to_le_bytes());
        let initrd = match initrd {
            Some(data) => {
                let kernel_max = if version >= 0x20c && le16(image, OFF_XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
                    u64::from(u32::MAX)
                } else if version >= 0x203 {
                    u64::from(le32(image, OFF_INITRD_ADDR_MAX))
                } else {
                    0x37ff_ffff
                };
                let max = kernel_max.min(low_ram_end.saturating_sub(TOP_RESERVE + 1));
                let len = data.len() as u64;
                let addr = max
                    .checked_sub(len)
                    .map(|a| a & !0xfff)
                    .filter(|a| *a >= u64::from(PROT_ADDR) + (image.len() - setup_len) as u64)
                    .and_then(|a| u32::try_from(a).ok())
                    .ok_or(LinuxError::InitrdTooLarge { len: data.len(), max })?;
                setup[OFF_RAMDISK_IMAGE..OFF_RAMDISK_IMAGE + 4].copy_from_slice(&addr.to_le_bytes());
                // Bounded by `addr + len <= max < 4 GiB` above.
                setup[OFF_RAMDISK_SIZE..OFF_RAMDISK_SIZE + 4].copy_from_slice(&(len as u32).to_le_bytes());
                Some((addr, data))
            }
            None => None,
        };
        let mut cmd = cmdline.as_bytes().to_vec();
        cmd.push(0);
        Ok(Self { setup, kernel: image[setup_len..].to_vec(), cmdline: cmd, initrd })
    }

    /// Adds the `KERNEL_*`, `SETUP_*`, `CMDLINE_*` and `INITRD_*` items.
    pub fn add_to(self, fw: &mut FwCfgBuilder) -> Result<(), FwCfgError> {
        let le32 = |v: u32| v.to_le_bytes().to_vec();
        let len32 = |v: &[u8]| le32(v.len() as u32);
        fw.add_item(keys::KERNEL_ADDR, le32(PROT_ADDR))?;
        fw.add_item(keys::KERNEL_SIZE, len32(&self.kernel))?;
        fw.add_item(keys::KERNEL_DATA, self.kernel)?;
        fw.add_item(keys::SETUP_ADDR, le32(REAL_ADDR))?;
        fw.add_item(keys::SETUP_SIZE, len32(&self.setup))?;
        fw.add_item(keys::SETUP_DATA, self.setup)?;
        fw.add_item(keys::CMDLINE_ADDR, le32(CMDLINE_ADDR))?;
        fw.add_item(keys::CMDLINE_SIZE, len32(&self.cmdline))?;
        fw.add_item(keys::CMDLINE_DATA, self.cmdline)?;
        if let Some((addr, data)) = self.initrd {
            fw.add_item(keys::INITRD_ADDR, le32(addr))?;
            fw.add_item(keys::INITRD_SIZE, len32(&data))?;
            fw.add_item(keys::INITRD_DATA, data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: 2 setup sectors after the boot sector, then `payload` bytes.
    pub(crate) fn bzimage(version: u16, payload: usize) -> Vec<u8> {
        let mut img = vec![0u8; 3 * 512 + payload];
        img[OFF_SETUP_SECTS] = 2;
        img[OFF_HEADER..OFF_HEADER + 4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        img[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        img[OFF_LOADFLAGS] = LOADFLAGS_LOADED_HIGH;
        img[OFF_INITRD_ADDR_MAX..OFF_INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[OFF_CMDLINE_SIZE..OFF_CMDLINE_SIZE + 4].copy_from_slice(&2048u32.to_le_bytes());
        img[3 * 512..].fill(0xcc);
        img
    }

    #[test]
    fn splits_and_fills_the_setup_header() {
        let img = bzimage(0x20f, 5000);
        let b = LinuxBoot::new(&img, Some(vec![1; 10_000]), "console=ttyS0", 0x8000_0000).unwrap();
        assert_eq!((b.setup.len(), b.kernel.len()), (1536, 5000));
        assert!(b.kernel.iter().all(|x| *x == 0xcc));
        assert_eq!(b.setup[OFF_TYPE_OF_LOADER], LOADER_TYPE_QEMU);
        assert_eq!(b.setup[OFF_LOADFLAGS], LOADFLAGS_LOADED_HIGH | LOADFLAGS_CAN_USE_HEAP);
        assert_eq!(le32(&b.setup, OFF_CMD_LINE_PTR), CMDLINE_ADDR);
        assert_eq!(le16(&b.setup, OFF_HEAP_END_PTR), 0xfe00);
        let (addr, data) = b.initrd.clone().unwrap();
        // Below the kernel's limit (0x7fffffff) and QEMU's reserve under the top of RAM.
        assert_eq!(u64::from(addr), (0x8000_0000 - TOP_RESERVE - 1 - 10_000) & !0xfff);
        assert_eq!(le32(&b.setup, OFF_RAMDISK_IMAGE), addr);
        assert_eq!(le32(&b.setup, OFF_RAMDISK_SIZE), 10_000);
        assert_eq!(data.len(), 10_000);
        assert_eq!(b.cmdline, b"console=ttyS0\0");
        let mut fw = FwCfgBuilder::new();
        b.add_to(&mut fw).unwrap();
    }

    #[test]
    fn refuses_what_firmware_cannot_boot() {
        assert_eq!(LinuxBoot::new(&[0; 100], None, "", 1 << 30), Err(LinuxError::NotBzImage));
        assert_eq!(
            LinuxBoot::new(&bzimage(0x201, 10), None, "", 1 << 30),
            Err(LinuxError::OldProtocol { major: 2, minor: 1 })
        );
        let mut z = bzimage(0x20f, 10);
        z[OFF_LOADFLAGS] = 0;
        assert_eq!(LinuxBoot::new(&z, None, "", 1 << 30), Err(LinuxError::ZImage));
        let mut t = bzimage(0x20f, 0);
        t[OFF_SETUP_SECTS] = 9;
        assert!(matches!(LinuxBoot::new(&t, None, "", 1 << 30), Err(LinuxError::Truncated { .. })));
        let long = "x".repeat(2049);
        assert!(matches!(
            LinuxBoot::new(&bzimage(0x20f, 10), None, &long, 1 << 30),
            Err(LinuxError::CmdlineTooLong { .. })
        ));
        assert!(matches!(
            LinuxBoot::new(&bzimage(0x20f, 10), Some(vec![0; 64 << 20]), "", 32 << 20),
            Err(LinuxError::InitrdTooLarge { .. })
        ));
    }
}
