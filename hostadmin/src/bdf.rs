//! PCI addresses as sysfs spells them (`DDDD:BB:DD.F`).
//!
//! The sysfs layer keeps its own `Bdf` (infallible const `new`, public fields), which other
//! vfio modules already build on; it converts to and from `pci::Bdf` both ways, and its
//! accessors mirror `pci::Bdf`'s so a later switch to that type is mechanical.

use std::fmt;
use std::str::FromStr;

/// A PCI function address: segment (domain), bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BdfError {
    #[error("'{input}' is not a PCI address: expected DDDD:BB:DD.F or BB:DD.F (hex), e.g. 0000:01:00.0")]
    Parse { input: String },
}

impl Bdf {
    /// Device bits above 31 and function bits above 7 are masked off.
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Self {
        Self { domain, bus, device: device & 0x1f, function: function & 7 }
    }

    pub const fn segment(self) -> u16 {
        self.domain
    }

    pub const fn bus(self) -> u8 {
        self.bus
    }

    pub const fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }
}

/// A `Bdf` from constant parts (same as `Bdf::new`).
pub const fn pci_address(segment: u16, bus: u8, device: u8, function: u8) -> Bdf {
    Bdf::new(segment, bus, device, function)
}

impl From<pci::Bdf> for Bdf {
    fn from(b: pci::Bdf) -> Self {
        Bdf::new(b.segment(), b.bus(), b.device(), b.function())
    }
}

impl From<Bdf> for pci::Bdf {
    fn from(b: Bdf) -> Self {
        pci::Bdf::from_devfn(b.domain, b.bus, b.devfn())
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.device, self.function)
    }
}

fn hex_field(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = BdfError;

    /// Accepts the full sysfs form and lspci's short form (domain 0).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || BdfError::Parse { input: input.to_string() };
        let (head, function) = input.rsplit_once('.').ok_or_else(err)?;
        let mut parts: Vec<&str> = head.split(':').collect();
        let domain = match parts.len() {
            3 => hex_field(parts.remove(0), 4).ok_or_else(err)?,
            2 => 0,
            _ => return Err(err()),
        };
        let bus = hex_field(parts[0], 2).ok_or_else(err)?;
        let device = hex_field(parts[1], 2).ok_or_else(err)?;
        let function = hex_field(function, 1).ok_or_else(err)?;
        if device > 0x1f || function > 7 {
            return Err(err());
        }
        // The field widths above bound every value to its type.
        Ok(Bdf::new(domain as u16, bus as u8, device as u8, function as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        assert_eq!("0000:01:00.0".parse(), Ok(Bdf::new(0, 1, 0, 0)));
        assert_eq!("01:10.2".parse(), Ok(Bdf::new(0, 1, 0x10, 2)));
        assert_eq!("abcd:ff:1f.7".parse(), Ok(Bdf::new(0xabcd, 0xff, 0x1f, 7)));
        assert_eq!(Bdf::new(0, 1, 0x10, 2).to_string(), "0000:01:10.2");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "eth0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "00000:01:00.0",
            "0000:001:00.0",
            "0000:01:00.0.1",
            "x0:00.0",
            "0000:01:00.+",
            "1:2:3:4.0",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn converts_with_the_pci_crate() {
        let ours = Bdf::new(0x12, 1, 0x10, 2);
        let theirs: pci::Bdf = ours.into();
        assert_eq!(theirs.to_string(), ours.to_string());
        assert_eq!(Bdf::from(theirs), ours);
    }
}
