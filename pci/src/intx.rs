//! INTx routing: which IOAPIC input a function's interrupt pin reaches, and the `_PRT`
//! that tells the guest the same thing.
//!
//! Every slot on bus 0 gets a `_PRT` entry per pin: `gsi = base + (slot + pin) % lines`
//! (the classic rotation that spreads functions over the lines). Functions behind a root
//! port are not in the `_PRT`; the guest swizzles their pin through the port (PCI-to-PCI
//! bridge spec 9.1, Linux `pci_swizzle_interrupt_pin`), and [`IntxRouting::gsi`] does the
//! same so the VMM wires the line the guest expects.

/// An interrupt pin (config register 0x3d: 1 = INTA .. 4 = INTD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntxPin {
    A = 1,
    B = 2,
    C = 3,
    D = 4,
}

impl IntxPin {
    /// From the interrupt pin register; 0 (no INTx) and invalid values give `None`.
    pub fn from_register(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::A),
            2 => Some(Self::B),
            3 => Some(Self::C),
            4 => Some(Self::D),
            _ => None,
        }
    }

    fn index(self) -> u8 {
        self as u8 - 1
    }

    fn from_index(i: u8) -> Self {
        match i % 4 {
            0 => Self::A,
            1 => Self::B,
            2 => Self::C,
            _ => Self::D,
        }
    }

    /// The pin seen on the upstream side of a bridge for a function at `device` below it.
    pub fn swizzle(self, device: u8) -> Self {
        Self::from_index(self.index().wrapping_add(device % 4))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntxError {
    #[error("INTx routing needs at least one interrupt line")]
    NoLines,
}

/// The IOAPIC lines PCI INTx is spread over: `base_gsi .. base_gsi + lines`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxRouting {
    base_gsi: u32,
    lines: u32,
}

impl IntxRouting {
    pub fn new(base_gsi: u32, lines: u32) -> Result<Self, IntxError> {
        if lines == 0 {
            return Err(IntxError::NoLines);
        }
        Ok(Self { base_gsi, lines })
    }

    pub fn base_gsi(&self) -> u32 {
        self.base_gsi
    }

    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// The GSI for `pin` of a slot on bus 0 (the `_PRT` entry).
    pub fn slot_gsi(&self, slot: u8, pin: IntxPin) -> u32 {
        self.base_gsi + (u32::from(slot) + u32::from(pin.index())) % self.lines
    }

    /// The GSI for `pin` of a function reached through `path`: the bus-0 slot first, then
    /// the device number on each bus below (one entry per bridge crossed). `path` of just
    /// `[slot]` is a bus-0 function.
    pub fn gsi(&self, path: &[u8], pin: IntxPin) -> u32 {
        let Some((&slot, below)) = path.split_first() else {
            return self.slot_gsi(0, pin);
        };
        let pin = below.iter().rev().fold(pin, |p, &dev| p.swizzle(dev));
        self.slot_gsi(slot, pin)
    }

    /// Every `_PRT` entry: (slot, pin, gsi) for slots 0..32.
    pub fn prt_entries(&self) -> impl Iterator<Item = (u8, IntxPin, u32)> + '_ {
        (0u8..32).flat_map(move |slot| {
            [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D]
                .into_iter()
                .map(move |pin| (slot, pin, self.slot_gsi(slot, pin)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_and_swizzle() {
        let r = IntxRouting::new(16, 8).unwrap();
        assert_eq!(r.slot_gsi(0, IntxPin::A), 16);
        assert_eq!(r.slot_gsi(3, IntxPin::B), 20);
        assert_eq!(r.slot_gsi(7, IntxPin::B), 16);
        // Device 0 behind the root port in slot 2: no swizzle, the port's own pin.
        assert_eq!(r.gsi(&[2, 0], IntxPin::A), r.slot_gsi(2, IntxPin::A));
        assert_eq!(r.gsi(&[2, 0], IntxPin::C), r.slot_gsi(2, IntxPin::C));
        // Device 1 behind a bridge: INTA becomes INTB upstream (Linux's swizzle).
        assert_eq!(IntxPin::A.swizzle(1), IntxPin::B);
        assert_eq!(IntxPin::D.swizzle(1), IntxPin::A);
        assert_eq!(IntxPin::C.swizzle(5), IntxPin::D);
        assert_eq!(r.gsi(&[2, 0, 1], IntxPin::A), r.slot_gsi(2, IntxPin::B));
        assert_eq!(r.prt_entries().count(), 128);
        assert!(r.prt_entries().all(|(_, _, g)| (16..24).contains(&g)));
    }

    #[test]
    fn pin_register_and_errors() {
        assert_eq!(IntxPin::from_register(0), None);
        assert_eq!(IntxPin::from_register(4), Some(IntxPin::D));
        assert_eq!(IntxPin::from_register(5), None);
        assert_eq!(IntxRouting::new(16, 0), Err(IntxError::NoLines));
    }
}
