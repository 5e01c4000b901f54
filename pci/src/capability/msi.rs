//! MSI capability (PCI 3.0 6.8.1): 32- or 64-bit address, 1..=32 vectors (multi-message),
//! optional per-vector masking. Guest writes are interpreted as a list of route changes.

use super::{touches, CAP_ID_MSI};
use crate::config_space::{ConfigSpace, ConfigSpaceError, CONVENTIONAL_DWORDS};
use crate::interrupt::{MsiMessage, VectorIndex};

const CONTROL_ENABLE: u16 = 1 << 0;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsiError {
    #[error("MSI supports 1, 2, 4, 8, 16 or 32 vectors, not {0}")]
    VectorCount(u8),
    #[error("adding the MSI capability failed")]
    AddCapability(#[source] ConfigSpaceError),
    #[error("the MSI capability at {offset:#x} does not fit in conventional config space")]
    Placement { offset: usize },
}

/// What the function offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiConfig {
    pub vectors: u8,
    pub address_64bit: bool,
    pub per_vector_mask: bool,
}

/// The MSI capability's place and layout in one config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    offset: usize,
    config: MsiConfig,
}

impl MsiCapability {
    pub fn add(cs: &mut ConfigSpace, config: MsiConfig) -> Result<Self, MsiError> {
        let n = config.vectors;
        if !n.is_power_of_two() || n > 32 {
            return Err(MsiError::VectorCount(n));
        }
        let body = vec![0u8; Self { offset: 0, config }.size() - 2];
        let offset = cs.add_capability(CAP_ID_MSI, &body).map_err(MsiError::AddCapability)?;
        let cap = Self { offset, config };
        cap.init(cs);
        Ok(cap)
    }

    /// The MSI capability a function already has at `offset` (an assigned device's, as its
    /// config space holds it): the layout comes from its Message Control (a reserved
    /// Multiple Message Capable value counts as 32 vectors); the registers then start as
    /// [`Self::add`] leaves them: disabled, message and mask zero, the same write masks.
    pub fn parse(cs: &mut ConfigSpace, offset: usize) -> Result<Self, MsiError> {
        let control = cs.word(offset + 2);
        let config = MsiConfig {
            vectors: 1 << ((control >> 1) & 0x7).min(5),
            address_64bit: control & CONTROL_64BIT != 0,
            per_vector_mask: control & CONTROL_PER_VECTOR_MASK != 0,
        };
        let cap = Self { offset, config };
        if offset < 0x40 || offset + cap.size() > CONVENTIONAL_DWORDS * 4 {
            return Err(MsiError::Placement { offset });
        }
        cap.init(cs);
        Ok(cap)
    }

    /// Registers at their reset values and the write masks.
    fn init(&self, cs: &mut ConfigSpace) {
        let config = self.config;
        let mmc = config.vectors.trailing_zeros() as u16;
        let control = (mmc << 1)
            | if config.address_64bit { CONTROL_64BIT } else { 0 }
            | if config.per_vector_mask { CONTROL_PER_VECTOR_MASK } else { 0 };
        cs.set_bytes(self.offset + 2, &control.to_le_bytes());
        cs.set_bytes(self.offset + 4, &vec![0; self.size() - 4]);
        let reg = self.offset / 4;
        // Enable (bit 0) and Multiple Message Enable (6:4).
        cs.set_write_mask(reg, 0x0071 << 16);
        cs.set_write_mask(reg + 1, 0xffff_fffc);
        if config.address_64bit {
            cs.set_write_mask(reg + 2, u32::MAX);
        }
        cs.set_write_mask(self.data_offset() / 4, 0x0000_ffff);
        if let Some(mask_off) = self.mask_offset() {
            cs.set_write_mask(mask_off / 4, self.all_vectors_mask());
        }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn vectors(&self) -> u8 {
        self.config.vectors
    }

    /// Bytes the capability takes in config space, header included.
    pub fn size(&self) -> usize {
        match (self.config.address_64bit, self.config.per_vector_mask) {
            (false, false) => 0x0c,
            (true, false) => 0x10,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    fn data_offset(&self) -> usize {
        self.offset + if self.config.address_64bit { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.config.per_vector_mask.then(|| self.data_offset() + 4)
    }

    fn all_vectors_mask(&self) -> u32 {
        if self.config.vectors >= 32 {
            u32::MAX
        } else {
            (1u32 << self.config.vectors) - 1
        }
    }

    /// Whether a write to dword `reg` can change MSI state.
    pub fn covers(&self, reg: usize) -> bool {
        touches(self.offset, self.size(), reg)
    }

    pub fn enabled(&self, cs: &ConfigSpace) -> bool {
        cs.word(self.offset + 2) & CONTROL_ENABLE != 0
    }

    /// Vectors the guest enabled: 2^MME, clamped to what the function offers.
    pub fn enabled_vectors(&self, cs: &ConfigSpace) -> u8 {
        let mme = (cs.word(self.offset + 2) >> 4) & 0x7;
        let n = 1u32 << mme.min(5);
        n.min(u32::from(self.config.vectors)) as u8
    }

    /// The route of every vector the function offers: `Some` when enabled and unmasked.
    /// Vector `v` of a multi-message block carries the base data with its low bits
    /// replaced by `v` (PCI 3.0 6.8.1.6).
    pub fn routes(&self, cs: &ConfigSpace) -> Vec<Option<MsiMessage>> {
        let mut out = vec![None; usize::from(self.config.vectors)];
        if !self.enabled(cs) {
            return out;
        }
        let mut address = u64::from(cs.dword(self.offset + 4));
        if self.config.address_64bit {
            address |= u64::from(cs.dword(self.offset + 8)) << 32;
        }
        let data = u32::from(cs.word(self.data_offset()));
        let n = u32::from(self.enabled_vectors(cs));
        let mask = self.mask_offset().map(|o| cs.dword(o)).unwrap_or(0);
        for (v, slot) in out.iter_mut().enumerate().take(n as usize) {
            if mask & (1 << v) == 0 {
                *slot = Some(MsiMessage { address, data: (data & !(n - 1)) | v as u32 });
            }
        }
        out
    }

    /// Whether vector `v` is masked by its per-vector mask bit.
    pub fn is_masked(&self, cs: &ConfigSpace, v: VectorIndex) -> bool {
        self.mask_offset().is_some_and(|o| v.0 < 32 && cs.dword(o) & (1 << v.0) != 0)
    }

    /// Device-side update of a pending bit (only with per-vector masking).
    pub fn set_pending(&self, cs: &mut ConfigSpace, v: VectorIndex, pending: bool) {
        let Some(p) = self.mask_offset().map(|o| o + 4) else {
            return;
        };
        if v.0 >= u16::from(self.config.vectors) {
            return;
        }
        let bit = 1u32 << v.0;
        let cur = cs.dword(p);
        cs.set(p / 4, if pending { cur | bit } else { cur & !bit });
    }

    pub fn pending(&self, cs: &ConfigSpace) -> u32 {
        self.mask_offset().map(|o| cs.dword(o + 4)).unwrap_or(0)
    }
}

/// The vectors whose route differs between two snapshots from [`MsiCapability::routes`].
pub fn route_changes(
    before: &[Option<MsiMessage>],
    after: &[Option<MsiMessage>],
) -> Vec<(VectorIndex, Option<MsiMessage>)> {
    (0..before.len().max(after.len()))
        .filter_map(|i| {
            let (b, a) = (before.get(i).copied().flatten(), after.get(i).copied().flatten());
            (b != a).then_some((VectorIndex(i as u16), a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_space::{DeviceIds, HeaderType};

    fn cs() -> ConfigSpace {
        let ids = DeviceIds {
            vendor_id: 1,
            device_id: 2,
            class_code: 0,
            revision: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        ConfigSpace::new(ids, HeaderType::Endpoint, false)
    }

    fn w(cs: &mut ConfigSpace, off: usize, v: u32) {
        cs.write(off / 4, (off % 4) as u64, &v.to_le_bytes()[..4 - off % 4]);
    }

    #[test]
    fn layouts() {
        for (is64, pvm, len) in [(false, false, 0x0c), (true, false, 0x10), (false, true, 0x14), (true, true, 0x18)] {
            let mut c = cs();
            let cap = MsiCapability::add(&mut c, MsiConfig { vectors: 4, address_64bit: is64, per_vector_mask: pvm })
                .unwrap();
            assert_eq!(cap.size(), len);
            let control = c.word(cap.offset() + 2);
            assert_eq!(control, (2 << 1) | ((is64 as u16) << 7) | ((pvm as u16) << 8));
        }
        assert_eq!(
            MsiCapability::add(&mut cs(), MsiConfig { vectors: 3, address_64bit: false, per_vector_mask: false }),
            Err(MsiError::VectorCount(3))
        );
        assert_eq!(
            MsiCapability::add(&mut cs(), MsiConfig { vectors: 64, address_64bit: false, per_vector_mask: false }),
            Err(MsiError::VectorCount(64))
        );
    }

    #[test]
    fn enable_multi_message_and_mask() {
        let mut c = cs();
        let cap =
            MsiCapability::add(&mut c, MsiConfig { vectors: 4, address_64bit: true, per_vector_mask: true }).unwrap();
        let o = cap.offset();
        w(&mut c, o + 4, 0xfee0_1003);
        w(&mut c, o + 8, 0x0000_0001);
        w(&mut c, o + 0xc, 0xabcd_0043);
        assert_eq!(c.dword(o + 4), 0xfee0_1000, "address bits 1:0 RO");
        assert_eq!(c.dword(o + 0xc), 0x0043, "16-bit data");
        let before = cap.routes(&c);
        assert_eq!(before, vec![None; 4]);
        // Enable with MME = 8 vectors: clamped to the 4 offered.
        c.write(o / 4, 2, &[0x31, 0xff]);
        assert_eq!(c.word(o + 2) & 0x71, 0x31, "MMC bits RO, enable + MME written");
        let after = cap.routes(&c);
        assert_eq!(cap.enabled_vectors(&c), 4);
        let addr = 0x1_fee0_1000;
        assert_eq!(after[0], Some(MsiMessage { address: addr, data: 0x40 }));
        assert_eq!(after[3], Some(MsiMessage { address: addr, data: 0x43 }));
        assert_eq!(route_changes(&before, &after).len(), 4);
        w(&mut c, o + 0x10, 0xffff_fffa);
        assert_eq!(c.dword(o + 0x10), 0xa, "only 4 mask bits exist");
        let masked = cap.routes(&c);
        assert_eq!(route_changes(&after, &masked), vec![(VectorIndex(1), None), (VectorIndex(3), None)]);
        assert!(cap.is_masked(&c, VectorIndex(1)));
        w(&mut c, o + 0x14, u32::MAX);
        assert_eq!(cap.pending(&c), 0, "pending bits RO to the guest");
        cap.set_pending(&mut c, VectorIndex(1), true);
        cap.set_pending(&mut c, VectorIndex(9), true);
        assert_eq!(cap.pending(&c), 2);
        c.write(o / 4, 2, &[0x00]);
        assert_eq!(cap.routes(&c), vec![None; 4]);
    }

    #[test]
    fn parse_an_existing_capability() {
        use crate::config_space::HeaderType;
        let mut image = vec![0u8; 0x100];
        // 64-bit, per-vector mask, MMC = 3 (8 vectors), enabled with a stale message.
        image[0x50..0x54].copy_from_slice(&0x0187_7005u32.to_le_bytes());
        image[0x54..0x68].copy_from_slice(&[0xaa; 0x14]);
        let mut c = ConfigSpace::from_image(HeaderType::Endpoint, false, &image);
        let cap = MsiCapability::parse(&mut c, 0x50).unwrap();
        assert_eq!((cap.vectors(), cap.size()), (8, 0x18));
        assert_eq!(c.read(0x50 / 4), 0x0186_7005, "disabled, id and next pointer kept");
        assert!((0x54..0x68).step_by(4).all(|o| c.dword(o) == 0), "message, mask, pending cleared");
        c.write(0x50 / 4, 2, &[0x31, 0xff]);
        assert_eq!(c.word(0x52), 0x01b7, "enable and MME writable, the rest read-only");
        w(&mut c, 0x60, u32::MAX);
        w(&mut c, 0x64, u32::MAX);
        assert_eq!((c.dword(0x60), c.dword(0x64)), (0xff, 0), "8 mask bits, pending read-only");
        assert_eq!(cap.routes(&c).len(), 8);
        // Reserved MMC values count as 32 vectors; a capability running past 0x100 is refused.
        c.set_bytes(0x52, &0x000eu16.to_le_bytes());
        assert_eq!(MsiCapability::parse(&mut c, 0x50).map(|m| m.vectors()), Ok(32));
        c.set_bytes(0xf2, &0x0180u16.to_le_bytes());
        assert_eq!(MsiCapability::parse(&mut c, 0xf0), Err(MsiError::Placement { offset: 0xf0 }));
    }

    #[test]
    fn single_vector_32bit() {
        let mut c = cs();
        let cap =
            MsiCapability::add(&mut c, MsiConfig { vectors: 1, address_64bit: false, per_vector_mask: false }).unwrap();
        let o = cap.offset();
        w(&mut c, o + 4, 0xfee0_0000);
        w(&mut c, o + 8, 0x0000_0031);
        c.write(o / 4, 2, &[0x71]);
        assert_eq!(cap.routes(&c), vec![Some(MsiMessage { address: 0xfee0_0000, data: 0x31 })]);
        assert!(!cap.covers(o / 4 + 3));
        assert!(cap.covers(o / 4 + 2));
    }
}
