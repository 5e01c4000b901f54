//! An assigned function's config space: the device's own registers, some bits of which the
//! VMM emulates while the others pass through to the device.
//!
//! [`PassthroughConfig`] is a [`ConfigSpace`] (the shadow: values, write masks and RW1C of
//! the emulated bits) plus a mask layer saying, bit by bit, which bits are the device's and
//! which are emulated, and, for emulated bits of a dword that also has device bits, which
//! value the device gets in their place. Pure, like the rest of the crate: a read takes the
//! device's current dword as an argument, a write returns the bytes to forward.

use std::ops::Range;

use crate::config_space::{
    merge_bytes, walk_capabilities, walk_extended_capabilities, CapabilityRef, ConfigSpace, HeaderType,
    CONFIG_SPACE_DWORDS, CONVENTIONAL_DWORDS, EXTENDED_CAPS_START, REG_CAPABILITIES_PTR, REG_COMMAND_STATUS,
    STATUS_CAPABILITIES,
};

/// Bytes of a guest config write that go to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceWrite {
    /// Config-space byte offset of the first byte.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The outcome of hiding capabilities: the ones left in the guest's list, in list order,
/// and the byte ranges blanked (the hidden capabilities' bodies).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityView {
    pub visible: Vec<CapabilityRef>,
    pub hidden: Vec<Range<usize>>,
}

/// A device's config space with a per-bit passthrough layer.
#[derive(Clone)]
pub struct PassthroughConfig {
    space: ConfigSpace,
    /// Bits the VMM emulates (read from and written to `space`); the others are the device's.
    emulated: Box<[u32]>,
    /// For emulated bits of dwords that also hold device bits: what a forwarded write
    /// carries in their place.
    device_value: Box<[u32]>,
}

impl std::fmt::Debug for PassthroughConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let emulated = self.emulated.iter().filter(|e| **e != 0).count();
        f.debug_struct("PassthroughConfig")
            .field("space", &self.space)
            .field("dwords_with_emulated_bits", &emulated)
            .finish_non_exhaustive()
    }
}

impl PassthroughConfig {
    /// Everything passes through at first, except what lies beyond `image` (the device's
    /// config bytes, 256 or 4096 of them), which is emulated and reads 0. Nothing is
    /// writable in the shadow until the owner emulates a bit and gives it a write mask.
    pub fn new(header: HeaderType, image: &[u8]) -> Self {
        let image = &image[..image.len().min(CONFIG_SPACE_DWORDS * 4)];
        let extended = image.len() > CONVENTIONAL_DWORDS * 4;
        let mut emulated = vec![0u32; CONFIG_SPACE_DWORDS].into_boxed_slice();
        for e in emulated.iter_mut().skip(image.len() / 4) {
            *e = u32::MAX;
        }
        let mut space = ConfigSpace::from_image(header, extended, image);
        // A device dword cut short by the image end: its bytes are zero in the shadow.
        for reg in image.len() / 4..CONFIG_SPACE_DWORDS {
            space.set(reg, 0);
        }
        Self { space, emulated, device_value: vec![0u32; CONFIG_SPACE_DWORDS].into_boxed_slice() }
    }

    /// The shadow (emulated bits' values and masks).
    pub fn space(&self) -> &ConfigSpace {
        &self.space
    }

    /// For the owner to set values and masks of emulated bits (masks on device bits have
    /// no effect: writes never change them).
    pub fn space_mut(&mut self) -> &mut ConfigSpace {
        &mut self.space
    }

    /// Emulates the bits of `mask` in dword `reg`; the shadow keeps their current value
    /// (the device's, at first).
    pub fn emulate(&mut self, reg: usize, mask: u32) {
        if let Some(e) = self.emulated.get_mut(reg) {
            *e |= mask;
        }
    }

    /// Emulates the bits of `mask` in dword `reg` with `value`.
    pub fn emulate_value(&mut self, reg: usize, mask: u32, value: u32) {
        self.emulate(reg, mask);
        let cur = self.space.read(reg);
        self.space.set(reg, (cur & !mask) | (value & mask));
    }

    /// Emulates every byte in `bytes` with its current shadow value.
    pub fn emulate_bytes(&mut self, bytes: Range<usize>) {
        for off in bytes.start..bytes.end.min(CONFIG_SPACE_DWORDS * 4) {
            self.emulate(off / 4, 0xff << ((off % 4) * 8));
        }
    }

    /// Emulates every byte in `bytes` as read-only zero.
    pub fn blank(&mut self, bytes: Range<usize>) {
        for off in bytes.start..bytes.end.min(CONFIG_SPACE_DWORDS * 4) {
            let (reg, mask) = (off / 4, 0xffu32 << ((off % 4) * 8));
            self.emulate_value(reg, mask, 0);
            let (wm, w1c) = (self.space.write_mask(reg), self.space.w1c_mask(reg));
            self.space.set_write_mask(reg, wm & !mask);
            self.space.set_w1c_mask(reg, w1c & !mask);
        }
    }

    /// What the device gets for the emulated bits of `mask` in dword `reg` when a guest
    /// write to that dword is forwarded (0 unless set).
    pub fn set_device_value(&mut self, reg: usize, mask: u32, value: u32) {
        if let Some(v) = self.device_value.get_mut(reg) {
            *v = (*v & !mask) | (value & mask);
        }
    }

    /// The emulated bits of dword `reg` (all of them beyond the config space).
    pub fn emulated(&self, reg: usize) -> u32 {
        self.emulated.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// The bits of dword `reg` that come from the device.
    pub fn device_bits(&self, reg: usize) -> u32 {
        !self.emulated(reg)
    }

    /// The value forwarded writes carry in the emulated bits of dword `reg`.
    pub fn device_value(&self, reg: usize) -> u32 {
        self.device_value.get(reg).copied().unwrap_or(0)
    }

    /// The guest's view of dword `reg`, given the device's current value of it (ignored when
    /// [`Self::device_bits`] is 0).
    pub fn read(&self, reg: usize, device: u32) -> u32 {
        if reg >= CONFIG_SPACE_DWORDS {
            return u32::MAX;
        }
        let emulated = self.emulated[reg];
        (device & !emulated) | (self.space.read(reg) & emulated)
    }

    /// A guest write of `data` at byte `offset` of dword `reg`: emulated bits change in the
    /// shadow by its masks; the bytes holding device bits are returned for the device, their
    /// emulated bits replaced by [`Self::device_value`]. Malformed writes change nothing.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Vec<DeviceWrite> {
        let mut out = Vec::new();
        if reg >= CONFIG_SPACE_DWORDS || merge_bytes(offset, data).is_none() {
            return out;
        }
        let emulated = self.emulated[reg];
        let before = self.space.read(reg);
        self.space.write(reg, offset, data);
        // Device bits of the shadow are not the device's state: they never change here.
        let after = self.space.read(reg);
        self.space.set(reg, (after & emulated) | (before & !emulated));
        let first = offset as usize;
        let mut run: Option<DeviceWrite> = None;
        for (i, &byte) in data.iter().enumerate() {
            let shift = (first + i) * 8;
            let emu = (emulated >> shift) as u8;
            if emu == 0xff {
                out.extend(run.take());
                continue;
            }
            let fixed = (self.device_value[reg] >> shift) as u8;
            let to_device = (byte & !emu) | (fixed & emu);
            match run.as_mut() {
                Some(r) => r.data.push(to_device),
                None => run = Some(DeviceWrite { offset: (reg * 4 + first + i) as u64, data: vec![to_device] }),
            }
        }
        out.extend(run);
        out
    }

    /// Hides the standard capabilities `keep` says no to: the guest's list skips them
    /// (pointers rewritten, id and next pointer of every visible one emulated read-only) and
    /// their bytes, up to the next capability, read as zero. With nothing left, the status
    /// register's capabilities bit reads 0. Walks the list as the image has it (loops and
    /// pointers into the header end the walk), so call it before emulating anything there.
    pub fn hide_capabilities(&mut self, keep: impl Fn(u16) -> bool) -> CapabilityView {
        let caps = walk_capabilities(|reg| self.space.read(reg));
        self.emulate(REG_CAPABILITIES_PTR, 0xff);
        let (visible, hidden) = self.split(&caps, &keep, CONVENTIONAL_DWORDS * 4);
        let first = visible.first().map_or(0, |c| c.offset as u32);
        self.emulate_value(REG_CAPABILITIES_PTR, 0xff, first);
        for (i, cap) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |c| c.offset as u32);
            self.emulate_value(cap.offset / 4, 0xffff, (next << 8) | u32::from(cap.id));
        }
        if visible.is_empty() {
            self.emulate_value(REG_COMMAND_STATUS, u32::from(STATUS_CAPABILITIES) << 16, 0);
        }
        CapabilityView { visible, hidden }
    }

    /// Hides the extended capabilities `keep` says no to, as [`Self::hide_capabilities`]
    /// does for standard ones. The list must start at 0x100, so a hidden first capability
    /// leaves a null header there (id 0, version 0) pointing at the first visible one.
    pub fn hide_extended_capabilities(&mut self, keep: impl Fn(u16) -> bool) -> CapabilityView {
        let caps = walk_extended_capabilities(|reg| self.space.read(reg));
        let (visible, hidden) = self.split(&caps, &keep, CONFIG_SPACE_DWORDS * 4);
        let first_hidden = caps.first().is_some_and(|c| !keep(c.id));
        if first_hidden {
            let next = visible.first().map_or(0, |c| c.offset as u32);
            self.emulate_value(EXTENDED_CAPS_START / 4, u32::MAX, next << 20);
        }
        for (i, cap) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |c| c.offset as u32);
            let header = self.space.read(cap.offset / 4) & 0x000f_ffff;
            self.emulate_value(cap.offset / 4, u32::MAX, header | (next << 20));
        }
        CapabilityView { visible, hidden }
    }

    /// Splits a walked list into what stays and what goes, blanking each hidden capability
    /// from its header to the next capability in address order (or `end`).
    fn split(
        &mut self,
        caps: &[CapabilityRef],
        keep: &impl Fn(u16) -> bool,
        end: usize,
    ) -> (Vec<CapabilityRef>, Vec<Range<usize>>) {
        let mut starts: Vec<usize> = caps.iter().map(|c| c.offset).collect();
        starts.sort_unstable();
        let end_of = |off: usize| starts.iter().copied().find(|&s| s > off).unwrap_or(end);
        let mut visible = Vec::new();
        let mut hidden = Vec::new();
        for cap in caps {
            if keep(cap.id) {
                visible.push(*cap);
            } else {
                hidden.push(cap.offset..end_of(cap.offset));
            }
        }
        for range in &hidden {
            self.blank(range.clone());
        }
        (visible, hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0x40 PM -> 0x50 MSI -> 0x68 vendor-specific -> 0x80 PCIe; extended: SR-IOV at 0x100
    /// -> AER at 0x140 -> ARI at 0x180.
    fn image() -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        let mut put = |off: usize, v: u32| c[off..off + 4].copy_from_slice(&v.to_le_bytes());
        put(0x00, 0x0010_1b36);
        put(0x04, 0x0010_0406);
        put(0x34, 0x40);
        put(0x3c, 0x0000_010b);
        put(0x40, 0x0003_5001);
        put(0x44, 0x0000_0008);
        put(0x50, 0x0086_6805);
        put(0x68, 0x0008_8009);
        put(0x6c, 0x1234_5678);
        put(0x80, 0x0002_0010);
        put(0x100, 0x1401_0010);
        put(0x104, 0xdead_beef);
        put(0x140, 0x1801_0001);
        put(0x180, 0x0001_000e);
        c
    }

    fn pt() -> PassthroughConfig {
        PassthroughConfig::new(HeaderType::Endpoint, &image())
    }

    fn device_dword(img: &[u8], reg: usize) -> u32 {
        u32::from_le_bytes(img[reg * 4..reg * 4 + 4].try_into().unwrap())
    }

    #[test]
    fn untouched_space_passes_everything_through() {
        let mut p = pt();
        let img = image();
        for reg in 0..CONFIG_SPACE_DWORDS {
            assert_eq!(p.emulated(reg), 0);
            assert_eq!(p.read(reg, device_dword(&img, reg)), device_dword(&img, reg));
        }
        assert_eq!(p.read(1024, 0), u32::MAX);
        assert_eq!(p.write(1, 0, &[0xff, 0xff]), vec![DeviceWrite { offset: 4, data: vec![0xff, 0xff] }]);
        assert_eq!(p.space().read(1), 0x0010_0406, "the shadow of device bits never changes");
    }

    #[test]
    fn a_short_image_emulates_the_rest_as_zero() {
        let mut p = PassthroughConfig::new(HeaderType::Endpoint, &image()[..0x100]);
        assert!(!p.space().is_extended());
        assert_eq!((p.emulated(63), p.emulated(64)), (0, u32::MAX));
        assert_eq!(p.read(0x40, 0x1234), 0);
        assert!(p.write(0x40, 0, &[1, 2, 3, 4]).is_empty());
        let odd = PassthroughConfig::new(HeaderType::Endpoint, &image()[..0x42]);
        assert_eq!((odd.emulated(0x0f), odd.emulated(0x10)), (0, u32::MAX));
    }

    #[test]
    fn mixed_dword_write_is_split_and_fixed_bits_replaced() {
        let mut p = pt();
        // Command: decode bits emulated (writable), the device always gets both on.
        p.emulate_value(1, 0x3, 0);
        p.space_mut().set_write_mask(1, 0x3);
        p.set_device_value(1, 0x3, 0x3);
        // Interrupt line emulated and writable, pin emulated read-only.
        p.emulate(15, 0xffff);
        p.space_mut().set_write_mask(15, 0xff);
        assert_eq!(p.write(1, 0, &[0x04]), vec![DeviceWrite { offset: 4, data: vec![0x07] }]);
        assert_eq!(p.read(1, 0x0010_0007) & 0xffff, 0x0004, "guest sees its own decode bits");
        assert_eq!(p.write(1, 0, &[0x06, 0x01]), vec![DeviceWrite { offset: 4, data: vec![0x07, 0x01] }]);
        assert_eq!(p.space().command() & 0x3, 0x2);
        assert_eq!(
            p.write(15, 0, &[0x0a, 0x04, 0x11, 0x22]),
            vec![DeviceWrite { offset: 0x3e, data: vec![0x11, 0x22] }],
            "fully emulated bytes split the run"
        );
        assert_eq!(p.read(15, 0), 0x0000_010a);
        // Runs split around an emulated byte in the middle.
        p.emulate(16, 0x0000_ff00);
        assert_eq!(
            p.write(16, 0, &[1, 2, 3, 4]),
            vec![DeviceWrite { offset: 0x40, data: vec![1] }, DeviceWrite { offset: 0x42, data: vec![3, 4] }]
        );
        for bad in [(1, 3, vec![1u8, 2]), (1, 4, vec![1]), (1, 0, vec![]), (1024, 0, vec![1])] {
            assert!(p.write(bad.0, bad.1, &bad.2).is_empty());
        }
    }

    #[test]
    fn hiding_capabilities_rewrites_both_lists() {
        let mut p = pt();
        let std = p.hide_capabilities(|id| id != 0x09);
        assert_eq!(
            std.visible.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(),
            [(1, 0x40), (5, 0x50), (0x10, 0x80)]
        );
        assert_eq!(std.hidden, vec![0x68..0x80]);
        let img = image();
        let read = |p: &PassthroughConfig, off: usize| p.read(off / 4, device_dword(&img, off / 4));
        assert_eq!(read(&p, 0x50) & 0xffff, 0x8005, "MSI now points past the hidden capability");
        assert_eq!(read(&p, 0x50) >> 16, 0x0086, "the rest of the dword is the device's");
        assert_eq!((read(&p, 0x68), read(&p, 0x6c)), (0, 0));
        assert!(p.write(0x68 / 4, 0, &[0xff; 4]).is_empty());
        assert_eq!(p.write(0x40 / 4, 0, &[0xff; 4]), vec![DeviceWrite { offset: 0x42, data: vec![0xff, 0xff] }]);

        let ext = p.hide_extended_capabilities(|id| !matches!(id, 0x10 | 0x0e));
        assert_eq!(ext.visible.iter().map(|c| c.offset).collect::<Vec<_>>(), [0x140]);
        assert_eq!(ext.hidden, vec![0x100..0x140, 0x180..0x1000]);
        assert_eq!(read(&p, 0x100), 0x140 << 20, "null capability pointing at AER");
        assert_eq!((read(&p, 0x104), read(&p, 0x180)), (0, 0));
        assert_eq!(read(&p, 0x140), 0x0001_0001, "AER ends the list now");
    }

    #[test]
    fn hiding_every_capability_clears_the_status_bit() {
        let mut p = pt();
        let view = p.hide_capabilities(|_| false);
        assert!(view.visible.is_empty());
        assert_eq!(p.read(1, 0x0010_0406), 0x0000_0406);
        assert_eq!(p.read(13, 0x40), 0);
        // A device without a list: nothing to walk, the pointer reads 0.
        let mut img = image();
        img[6] = 0;
        let mut p = PassthroughConfig::new(HeaderType::Endpoint, &img);
        assert!(p.hide_capabilities(|_| true).visible.is_empty());
        assert_eq!(p.read(13, 0x40), 0);
    }

    #[test]
    fn looping_lists_end_the_walk() {
        let mut img = image();
        img[0x81] = 0x40; // PCIe -> PM
        img[0x102..0x104].copy_from_slice(&[0x00, 0x10]); // SR-IOV -> itself
        let mut p = PassthroughConfig::new(HeaderType::Endpoint, &img);
        assert_eq!(p.hide_capabilities(|_| true).visible.len(), 4);
        let ext = p.hide_extended_capabilities(|id| id != 0x10);
        assert!(ext.visible.is_empty());
        assert_eq!(p.read(0x40, u32::MAX), 0);
    }

    proptest::proptest! {
        /// Any write to a space with arbitrary emulated bits: device bits of the shadow never
        /// change, and every forwarded byte holds the written device bits and the fixed
        /// value in its emulated bits.
        #[test]
        fn writes_respect_the_passthrough_layer(
            reg in 0usize..64, offset in 0u64..5, data in proptest::collection::vec(proptest::num::u8::ANY, 0..5),
            emulated in proptest::num::u32::ANY, wmask in proptest::num::u32::ANY, fixed in proptest::num::u32::ANY,
        ) {
            let mut p = pt();
            p.emulate(reg, emulated);
            p.space_mut().set_write_mask(reg, wmask);
            p.set_device_value(reg, emulated, fixed);
            let before = p.space().read(reg);
            let writes = p.write(reg, offset, &data);
            let after = p.space().read(reg);
            proptest::prop_assert_eq!((before ^ after) & !(emulated & wmask), 0);
            for w in &writes {
                for (i, b) in w.data.iter().enumerate() {
                    let at = w.offset as usize + i - reg * 4;
                    let (emu, written) = ((emulated >> (at * 8)) as u8, data[at - offset as usize]);
                    proptest::prop_assert!(emu != 0xff);
                    proptest::prop_assert_eq!(*b, (written & !emu) | ((fixed >> (at * 8)) as u8 & emu));
                }
            }
            let forwarded: usize = writes.iter().map(|w| w.data.len()).sum();
            let expect = match merge_bytes(offset, &data) {
                Some(_) => (0..data.len()).filter(|i| (emulated >> ((offset as usize + i) * 8)) as u8 != 0xff).count(),
                None => 0,
            };
            proptest::prop_assert_eq!(forwarded, expect);
        }
    }
}
