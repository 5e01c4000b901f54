//! The ACPI power button of a hardware-reduced platform: a Generic Event Device (GED,
//! `ACPI0013`, ACPI 6.5 section 5.6.9) whose interrupt runs its `_EVT` method, which reads
//! the pending events from one I/O port and notifies the power button device (`PNP0C0C`,
//! section 4.8.2.2.1.2). Linux's `evged` driver runs `_EVT`, its `button` driver turns the
//! notification into a KEY_POWER press on the "Power Button" input device. Without fixed
//! hardware (the FADT says hardware-reduced) this is the way a button reaches the guest.

use acpi_tables::aml;
use acpi_tables::{Aml, AmlSink};
use vmm_sys_util::eventfd::EventFd;

use crate::layout;

/// The event bit `_EVT` tests for the power button.
const EVENT_POWER_BUTTON: u8 = 1;

/// The event register: reads return and clear the pending events.
pub struct Ged {
    pending: u8,
    irq: EventFd,
}

impl Ged {
    /// `irq` is an irqfd on [`layout::GED_GSI`].
    pub fn new(irq: EventFd) -> Self {
        Self { pending: 0, irq }
    }

    /// Presses the power button: the event is latched and the interrupt raised.
    pub fn press_power_button(&mut self) -> std::io::Result<()> {
        self.pending |= EVENT_POWER_BUTTON;
        self.irq.write(1)
    }
}

impl pci::BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        log::debug!("GED: {}-byte write to the event register ignored", data.len());
    }
}

/// The DSDT's view of it: `\_SB.GED_` and `\_SB.PWRB`.
pub struct GedAml;

impl Aml for GedAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let port = layout::GED_PORT as u16;
        let irq = aml::Interrupt::new(true, true, false, false, layout::GED_GSI);
        let crs = aml::ResourceTemplate::new(vec![&irq]);
        let hid = aml::Name::new("_HID".into(), &"ACPI0013");
        let uid = aml::Name::new("_UID".into(), &aml::ZERO);
        let crs = aml::Name::new("_CRS".into(), &crs);
        let region = aml::OpRegion::new("GDST".into(), aml::OpRegionSpace::SystemIO, &port, &1u8);
        let field = aml::Field::new(
            "GDST".into(),
            aml::FieldAccessType::Byte,
            aml::FieldLockRule::NoLock,
            aml::FieldUpdateRule::WriteAsZeroes,
            vec![aml::FieldEntry::Named(*b"GDAT", 8)],
        );
        // Local0 = GDAT (read-to-clear); If (Local0 & 1) { Notify (PWRB, 0x80) }
        let gdat = aml::Path::new("GDAT");
        let read = aml::Store::new(&aml::Local(0), &gdat);
        let masked = aml::And::new(&aml::ZERO, &aml::Local(0), &EVENT_POWER_BUTTON);
        let pressed = aml::Equal::new(&masked, &EVENT_POWER_BUTTON);
        let pwrb = aml::Path::new("\\_SB_.PWRB");
        let notify = aml::Notify::new(&pwrb, &0x80u8);
        let if_pressed = aml::If::new(&pressed, vec![&notify]);
        let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &if_pressed]);
        aml::Device::new("GED_".into(), vec![&hid, &uid, &crs, &region, &field, &evt]).to_aml_bytes(sink);

        let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C0C"));
        aml::Device::new("PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::BusDevice;

    #[test]
    fn a_press_raises_the_interrupt_and_reads_once() {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut ged = Ged::new(irq.try_clone().unwrap());
        let mut b = [0xffu8];
        ged.read(0, &mut b);
        assert_eq!(b, [0]);
        ged.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        ged.read(0, &mut b);
        assert_eq!(b, [EVENT_POWER_BUTTON]);
        ged.read(0, &mut b);
        assert_eq!(b, [0], "read-to-clear");
    }

    #[test]
    fn aml_names_both_devices() {
        let mut bytes = Vec::new();
        GedAml.to_aml_bytes(&mut bytes);
        for name in [&b"GED_"[..], b"ACPI0013", b"_EVT", b"GDAT", b"PWRB"] {
            assert!(bytes.windows(name.len()).any(|w| w == name), "{}", String::from_utf8_lossy(name));
        }
        // PNP0C0C as an EISA id.
        let mut eisa = Vec::new();
        aml::EISAName::new("PNP0C0C").to_aml_bytes(&mut eisa);
        assert!(bytes.windows(eisa.len()).any(|w| w == eisa.as_slice()));
    }
}
