//! PCI addresses: segment, bus, device, function. The one address type of the workspace:
//! the device model, the VMM's `--device` and the host's sysfs names all use it.

use std::fmt;
use std::str::FromStr;

/// A PCI function address. Displays as `ssss:bb:dd.f` (sysfs's spelling), parses that form and
/// the short `bb:dd.f` form (segment 0) that lspci prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    /// Device (5 bits) and function (3 bits), as in the ECAM and CF8 encodings.
    devfn: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BdfError {
    #[error("'{input}' is not a PCI address: expected DDDD:BB:DD.F or BB:DD.F (hex), e.g. 0000:01:00.0")]
    Parse { input: String },
    #[error("PCI device number {0} is out of range (0..=31)")]
    DeviceOutOfRange(u8),
    #[error("PCI function number {0} is out of range (0..=7)")]
    FunctionOutOfRange(u8),
}

impl Bdf {
    pub fn new(segment: u16, bus: u8, device: u8, function: u8) -> Result<Self, BdfError> {
        if device > 31 {
            return Err(BdfError::DeviceOutOfRange(device));
        }
        if function > 7 {
            return Err(BdfError::FunctionOutOfRange(function));
        }
        Ok(Self { segment, bus, devfn: (device << 3) | function })
    }

    /// From bus and the combined 8-bit device/function number; cannot fail.
    pub const fn from_devfn(segment: u16, bus: u8, devfn: u8) -> Self {
        Self { segment, bus, devfn }
    }

    pub const fn segment(self) -> u16 {
        self.segment
    }
    pub const fn bus(self) -> u8 {
        self.bus
    }
    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }
    pub const fn function(self) -> u8 {
        self.devfn & 7
    }
    pub const fn devfn(self) -> u8 {
        self.devfn
    }

    /// Byte offset of this function's 4 KiB config space inside an ECAM window that starts
    /// at bus 0 of its segment (PCIe base spec 7.2.2).
    pub const fn ecam_offset(self) -> u64 {
        ((self.bus as u64) << 20) | ((self.devfn as u64) << 12)
    }

    /// Decodes an ECAM window offset into the function and the byte offset in its config
    /// space.
    pub const fn from_ecam_offset(segment: u16, offset: u64) -> (Self, usize) {
        let bus = ((offset >> 20) & 0xff) as u8;
        let devfn = ((offset >> 12) & 0xff) as u8;
        (Self { segment, bus, devfn }, (offset & 0xfff) as usize)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.device(), self.function())
    }
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfError::Parse { input: s.to_string() };
        let parts: Vec<&str> = s.split(':').collect();
        let (segment, bus, devfn) = match parts.as_slice() {
            [seg, bus, devfn] => (*seg, *bus, *devfn),
            [bus, devfn] => ("0", *bus, *devfn),
            _ => return Err(err()),
        };
        let (device, function) = devfn.split_once('.').ok_or_else(err)?;
        let hex = |t: &str, max_len: usize| -> Result<u32, BdfError> {
            if t.is_empty() || t.len() > max_len || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(t, 16).map_err(|_| err())
        };
        let segment = hex(segment, 4)? as u16;
        let bus = hex(bus, 2)? as u8;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        let device = u8::try_from(device).map_err(|_| err())?;
        let function = u8::try_from(function).map_err(|_| err())?;
        Bdf::new(segment, bus, device, function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let b: Bdf = "0000:01:10.2".parse().unwrap();
        assert_eq!((b.segment(), b.bus(), b.device(), b.function()), (0, 1, 0x10, 2));
        assert_eq!(b.to_string(), "0000:01:10.2");
        let short: Bdf = "02:1f.7".parse().unwrap();
        assert_eq!(short.to_string(), "0000:02:1f.7");
        let seg: Bdf = "abcd:ff:00.0".parse().unwrap();
        assert_eq!(seg.segment(), 0xabcd);
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "0000:01:00",
            "01:00.8",
            "01:20.0",
            "x:01:00.0",
            "00000:01:00.0",
            "0000:001:00.0",
            "0000:01:00.0.1",
            "0000:01:+0.0",
            "::.",
            "1:2:3:4.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("01:20.0".parse::<Bdf>(), Err(BdfError::DeviceOutOfRange(0x20)));
    }

    #[test]
    fn ecam_offsets() {
        let b = Bdf::new(0, 3, 2, 1).unwrap();
        assert_eq!(b.ecam_offset(), (3 << 20) | (2 << 15) | (1 << 12));
        assert_eq!(Bdf::from_ecam_offset(0, b.ecam_offset() + 0x104), (b, 0x104));
    }
}
