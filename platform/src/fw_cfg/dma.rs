//! The fw_cfg DMA interface: the guest writes the guest-physical address of a
//! `FWCfgDmaAccess` descriptor to the DMA address register; the device carries out what the
//! descriptor's control word asks (select, read, skip, write) and then writes the control
//! word back, zero on success or with the error bit. Every field is big-endian.

/// Guest memory as the fw_cfg DMA engine reaches it.
pub trait DmaMemory: Send + Sync {
    /// Reads `buf.len()` bytes at guest-physical `addr`; false if any byte is not RAM.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at guest-physical `addr`; false if any byte is not RAM.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

pub const CONTROL_ERROR: u32 = 1 << 0;
pub const CONTROL_READ: u32 = 1 << 1;
pub const CONTROL_SKIP: u32 = 1 << 2;
pub const CONTROL_SELECT: u32 = 1 << 3;
pub const CONTROL_WRITE: u32 = 1 << 4;

/// The descriptor's size in guest memory.
pub const DESCRIPTOR_LEN: usize = 16;

/// The DMA address register reads as this (big-endian "QEMU CFG"), which is how firmware
/// confirms the interface.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// A parsed `FWCfgDmaAccess`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAccess {
    pub control: u32,
    pub length: u32,
    pub address: u64,
}

/// The operation a control word asks for after an optional select. QEMU gives read
/// precedence over skip, and skip over write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaOp {
    Read,
    Skip,
    Write,
    None,
}

impl DmaAccess {
    pub fn parse(bytes: &[u8; DESCRIPTOR_LEN]) -> Self {
        let be32 = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut address = [0u8; 8];
        address.copy_from_slice(&bytes[8..16]);
        Self { control: be32(0), length: be32(4), address: u64::from_be_bytes(address) }
    }

    /// The key to select first, if the control word asks for a select.
    pub fn select(&self) -> Option<u16> {
        (self.control & CONTROL_SELECT != 0).then_some((self.control >> 16) as u16)
    }

    pub fn op(&self) -> DmaOp {
        if self.control & CONTROL_READ != 0 {
            DmaOp::Read
        } else if self.control & CONTROL_SKIP != 0 {
            DmaOp::Skip
        } else if self.control & CONTROL_WRITE != 0 {
            DmaOp::Write
        } else {
            DmaOp::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_big_endian_fields() {
        let mut d = [0u8; DESCRIPTOR_LEN];
        d[..4].copy_from_slice(&0x0019_000au32.to_be_bytes());
        d[4..8].copy_from_slice(&4u32.to_be_bytes());
        d[8..].copy_from_slice(&0x1234_5678_9abcu64.to_be_bytes());
        let a = DmaAccess::parse(&d);
        assert_eq!(a, DmaAccess { control: 0x0019_000a, length: 4, address: 0x1234_5678_9abc });
        assert_eq!((a.select(), a.op()), (Some(0x19), DmaOp::Read));
        let skip_write = DmaAccess { control: CONTROL_SKIP | CONTROL_WRITE, length: 0, address: 0 };
        assert_eq!((skip_write.select(), skip_write.op()), (None, DmaOp::Skip));
        assert_eq!(DmaAccess { control: CONTROL_WRITE, length: 0, address: 0 }.op(), DmaOp::Write);
        assert_eq!(DmaAccess { control: CONTROL_ERROR, length: 0, address: 0 }.op(), DmaOp::None);
    }
}
