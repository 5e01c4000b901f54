//! Capabilities a function model can carry. Each module adds its structure to a
//! [`crate::ConfigSpace`] (with its write masks) and interprets guest writes as data.

pub mod msi;
pub mod msix;
pub mod pcie;
pub mod pm;

pub const CAP_ID_PM: u8 = 0x01;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;

/// Whether byte range `[start, start + len)` and dword `reg` share any byte.
pub(crate) fn touches(start: usize, len: usize, reg: usize) -> bool {
    let (lo, hi) = (reg * 4, reg * 4 + 4);
    lo < start + len && start < hi
}
