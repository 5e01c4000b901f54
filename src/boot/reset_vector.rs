//! A reset stub at the x86 reset vector (F000:FFF0), standing in for the BIOS we do not have.
//!
//! Why: with hardware-reduced ACPI and no EFI, Linux (arch/x86/kernel/reboot.c, `reboot_init`)
//! picks `reboot_type = BOOT_EFI` because `efi_reboot_required()` is true on hardware-reduced
//! platforms and `efi_runtime_disabled()` only reflects `efi=noruntime`. On reboot,
//! `efi_reboot()` then returns at once (no EFI runtime), the next method is BOOT_BIOS, and
//! `machine_real_restart()` drops to real mode and far-jumps to F000:FFF0 — never trying the
//! ACPI reset register or the i8042. Without code there, the vCPU executes zeroed memory
//! forever and the VM hangs. The stub writes the FADT reset value to the ACPI reset register,
//! so every reboot method ends in a reset the VMM sees (the same path a real BIOS takes on a
//! warm boot, done in one instruction).

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vstate::memory::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum ResetVectorError {
    #[error("writing the reset stub at {addr:#x} failed")]
    Write {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// 16-bit real-mode code: `mov dx, PORT; mov al, VALUE; out dx, al; cli; hlt; jmp hlt`.
/// The halt loop is only reached if the write somehow did not end the VM.
fn stub() -> [u8; 10] {
    let [lo, hi] = (layout::ACPI_SLEEP_CONTROL_PORT as u16).to_le_bytes();
    [0xba, lo, hi, 0xb0, layout::ACPI_RESET_VALUE, 0xee, 0xfa, 0xf4, 0xeb, 0xfd]
}

pub fn write(mem: &GuestMemory) -> Result<(), ResetVectorError> {
    mem.write_slice(&stub(), GuestAddress(layout::RESET_VECTOR))
        .map_err(|source| ResetVectorError::Write { addr: layout::RESET_VECTOR, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_writes_the_fadt_reset_value_to_the_reset_port() {
        let s = stub();
        // mov dx, 0x600
        assert_eq!(&s[..3], &[0xba, 0x00, 0x06]);
        // mov al, reset value; out dx, al
        assert_eq!(&s[3..6], &[0xb0, layout::ACPI_RESET_VALUE, 0xee]);
        // jmp rel8 lands on the hlt (offset 7): next ip 10, 10 + (-3) = 7.
        assert_eq!(s[7], 0xf4);
        assert_eq!(10 + i32::from(s[9] as i8), 7);
        // Fits below 1 MiB, where the reset vector segment ends.
        assert!(layout::RESET_VECTOR + s.len() as u64 <= layout::HIGH_RAM_START);
    }

    #[test]
    fn stub_lands_at_the_reset_vector() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem).unwrap();
        let mut got = [0u8; 10];
        mem.read_slice(&mut got, GuestAddress(0xf_fff0)).unwrap();
        assert_eq!(got, stub());
    }
}
