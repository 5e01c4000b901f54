//! Initial CPU state for the boot vCPU: GDT, identity page tables, segment and control
//! registers for the Linux 64-bit boot protocol and for PVH (32-bit protected mode).

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::vstate::memory::GuestMemory;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT entries. Linux's boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS (KVM wants a valid one for VM entry)
];
/// PVH enters in 32-bit protected mode: a flat 32-bit code segment.
const GDT_PVH_CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
const CODE_SELECTOR: u16 = 0x10;
const DATA_SELECTOR: u16 = 0x18;
const TSS_SELECTOR: u16 = 0x20;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let limit = ((entry & 0x000f_0000_0000_0000) >> 32) as u32 | (entry & 0xffff) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        // With 4 KiB granularity the limit counts pages.
        limit: if granularity == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    #[error("writing the {what} into guest memory failed")]
    WriteGuestMemory {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemory, what: &'static str, v: T, at: u64) -> Result<(), CpuSetupError> {
    mem.write_obj(v, GuestAddress(at)).map_err(|source| CpuSetupError::WriteGuestMemory { what, source })
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64 { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { entry: u64 },
}

/// Writes the GDT, an empty IDT and page tables identity-mapping the first 4 GiB.
pub fn write_boot_structures(mem: &GuestMemory, entry: BootEntry) -> Result<(), CpuSetupError> {
    let mut gdt = GDT;
    if matches!(entry, BootEntry::Pvh { .. }) {
        gdt[usize::from(CODE_SELECTOR / 8)] = GDT_PVH_CODE32;
    }
    for (i, e) in gdt.iter().enumerate() {
        write(mem, "GDT", *e, layout::GDT_START + 8 * i as u64)?;
    }
    write(mem, "IDT", 0u64, layout::IDT_START)?;
    write(mem, "PML4", layout::PDPTE_START | 0x3, layout::PML4_START)?;
    for i in 0..4u64 {
        write(mem, "PDPT", (layout::PDE_START + i * 0x1000) | 0x3, layout::PDPTE_START + i * 8)?;
    }
    // 2048 entries of 2 MiB pages: present | writable | page size.
    for i in 0..2048u64 {
        write(mem, "page directory", (i << 21) | 0x83, layout::PDE_START + i * 8)?;
    }
    Ok(())
}

/// Segment and control registers for the boot vCPU (on top of its reset state).
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    let code_entry = match entry {
        BootEntry::Linux64 { .. } => GDT[2],
        BootEntry::Pvh { .. } => GDT_PVH_CODE32,
    };
    let code = segment_from_gdt(code_entry, CODE_SELECTOR / 8);
    let data = segment_from_gdt(GDT[3], DATA_SELECTOR / 8);
    let tss = segment_from_gdt(GDT[4], TSS_SELECTOR / 8);
    sregs.gdt.base = layout::GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = layout::PVH_INFO_START;
        }
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_code_segment_decodes() {
        let cs = segment_from_gdt(GDT[2], 2);
        assert_eq!((cs.selector, cs.l, cs.db, cs.present, cs.type_), (0x10, 1, 0, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment_from_gdt(GDT[3], 3);
        assert_eq!((ds.selector, ds.db, ds.type_, ds.base), (0x18, 1, 3, 0));
        let pvh = segment_from_gdt(GDT_PVH_CODE32, 2);
        assert_eq!((pvh.l, pvh.db), (0, 1));
    }

    #[test]
    fn long_mode_sregs() {
        let s = boot_sregs(kvm_sregs::default(), BootEntry::Linux64 { entry: 0x100200 });
        assert_eq!(s.cr3, layout::PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_ne!(s.cr0 & CR0_PG, 0);
        let r = boot_regs(BootEntry::Linux64 { entry: 0x100200 });
        assert_eq!((r.rip, r.rsi), (0x100200, layout::ZERO_PAGE_START));
    }
}
