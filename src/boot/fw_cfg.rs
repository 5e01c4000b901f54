//! What fw_cfg tells the firmware about this VM: the machine items (CPUs, RAM map, UUID,
//! boot order, SMBIOS), a kernel to boot (QEMU's `-kernel` items, and under SeaBIOS the
//! option ROM that boots them), and the ACPI tables through the linker/loader, built once
//! when the firmware first reads them (it has placed ECAM and the PM block by then).

use std::sync::Arc;

use platform::fw_cfg::items::ofw_rom_path;
use platform::fw_cfg::linux::LinuxBoot;
use platform::fw_cfg::machine::MachineItems;
use platform::fw_cfg::{DeferredRefresh, DmaMemory, FwCfg, FwCfgBuilder, FwCfgError};
use platform::smbios::{self, ProcessorInfo, SmbiosConfig};
use vm_memory::{Bytes, GuestAddress};

use super::acpi::{self, AcpiTables};
use crate::layout::{self, RamLayout};
use crate::vstate::memory::GuestMemory;

/// QEMU's option ROM that boots the `-kernel` items under SeaBIOS (Debian: qemu-system-data).
pub const LINUXBOOT_ROM: &str = "/usr/share/qemu/linuxboot_dma.bin";
const LINUXBOOT_FILE: &str = "genroms/linuxboot_dma.bin";
/// SeaBIOS reboots this long after finding nothing to boot.
const BOOT_FAIL_WAIT_MS: u32 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum FwCfgSetupError {
    #[error("fw_cfg: {0}")]
    Item(#[from] FwCfgError),
    #[error("SMBIOS tables: {0}")]
    Smbios(#[from] smbios::SmbiosError),
    #[error("ACPI tables for the firmware: {0}")]
    Acpi(#[from] acpi::AcpiError),
}

/// Guest RAM for fw_cfg DMA.
pub struct GuestDma(pub GuestMemory);

impl DmaMemory for GuestDma {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.0.write_slice(data, GuestAddress(addr)).is_ok()
    }
}

pub struct FirmwareBoot {
    pub vcpus: u8,
    pub ram: RamLayout,
    /// CPUID leaf 1 EAX and EDX, for SMBIOS type 4.
    pub cpuid_1: (u32, u32),
    pub uuid: [u8; 16],
    /// OpenFirmware paths of the boot devices, most preferred first.
    pub boot_order: Vec<String>,
    pub kernel: Option<LinuxBoot>,
    /// The option ROM SeaBIOS boots `kernel` through.
    pub linuxboot_rom: Option<Vec<u8>>,
}

/// Builds the device. `acpi` is called once, when the firmware first selects one of the
/// ACPI files; its tables may not grow past the first build plus the padding allowed here.
pub fn build(
    boot: &FirmwareBoot,
    mem: &GuestMemory,
    acpi: impl Fn() -> Result<AcpiTables, acpi::AcpiError> + Send + 'static,
) -> Result<FwCfg, FwCfgSetupError> {
    let mut fw = FwCfgBuilder::new();
    let (eax, edx) = boot.cpuid_1;
    let regions = boot.ram.regions();
    let smbios = smbios::build(&SmbiosConfig {
        // The firmware describes itself (type 0), as under QEMU.
        bios: None,
        manufacturer: "viaduct".into(),
        product: "viaduct VM".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uuid: boot.uuid,
        processor: ProcessorInfo {
            sockets: 1,
            cores_per_socket: u16::from(boot.vcpus),
            threads_per_core: 1,
            cpuid_1_eax: eax,
            cpuid_1_edx: edx,
        },
        memory: regions.clone(),
    })?;
    let mut boot_order = boot.boot_order.clone();
    if let (Some(_), Some(rom)) = (&boot.kernel, &boot.linuxboot_rom) {
        fw.add_file(LINUXBOOT_FILE, rom.clone())?;
        boot_order.insert(0, ofw_rom_path(LINUXBOOT_FILE));
    }
    MachineItems {
        vcpus: u16::from(boot.vcpus),
        ram: regions,
        reserved: vec![(layout::KVM_IDENTITY_MAP_START, layout::KVM_PRIVATE_SIZE)],
        uuid: boot.uuid,
        nographic: true,
        boot_order,
        boot_fail_wait_ms: BOOT_FAIL_WAIT_MS,
        smbios: Some(smbios),
    }
    .add_to(&mut fw)?;
    if let Some(k) = &boot.kernel {
        k.clone().add_to(&mut fw)?;
    }
    // The first build gives the sizes the directory announces; room is left for the final
    // one, which may describe one more PCI window.
    let first = acpi()?;
    let pad = |n: usize| (n + 1024).next_multiple_of(4096);
    let files = vec![
        (acpi::TABLES_FILE.to_string(), padded(first.tables, pad)),
        (acpi::RSDP_FILE.to_string(), first.rsdp),
        (acpi::LOADER_FILE.to_string(), first.loader.to_bytes()),
    ];
    let refresh: DeferredRefresh = Box::new(move || match acpi() {
        Ok(t) => vec![t.tables, t.rsdp, t.loader.to_bytes()],
        Err(e) => {
            log::error!("building the ACPI tables for the firmware failed: {e}");
            Vec::new()
        }
    });
    fw.add_deferred_files(files, refresh)?;
    Ok(fw.build(Arc::new(GuestDma(mem.clone()))))
}

fn padded(mut v: Vec<u8>, pad: impl Fn(usize) -> usize) -> Vec<u8> {
    v.resize(pad(v.len()), 0);
    v
}

/// A random UUID (version 4) for SMBIOS type 1, from the kernel's generator.
pub fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom fills at most u.len() bytes of our own buffer.
    let n = unsafe { libc::getrandom(u.as_mut_ptr().cast(), u.len(), 0) };
    if n != u.len() as isize {
        log::warn!("no random bytes for the VM's UUID: {}", std::io::Error::last_os_error());
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use pci::BusDevice;
    use platform::fw_cfg::keys;

    use super::*;
    use crate::boot::acpi::{AcpiConfig, PmRegisters};

    fn read(fw: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        fw.write(0, &key.to_le_bytes());
        let mut out = vec![0u8; len];
        for b in out.iter_mut() {
            fw.read(1, std::slice::from_mut(b));
        }
        out
    }

    /// Name -> (key, size) from the directory, as firmware reads it.
    fn directory(fw: &mut FwCfg) -> Vec<(String, u16, usize)> {
        let count = u32::from_be_bytes(read(fw, keys::FILE_DIR, 4).try_into().unwrap()) as usize;
        let dir = read(fw, keys::FILE_DIR, 4 + 64 * count);
        dir[4..]
            .chunks(64)
            .map(|e| {
                let name = String::from_utf8_lossy(&e[8..]).trim_end_matches('\0').to_string();
                (name, u16::from_be_bytes([e[4], e[5]]), u32::from_be_bytes(e[..4].try_into().unwrap()) as usize)
            })
            .collect()
    }

    #[test]
    fn machine_kernel_and_acpi_items() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let builds = Arc::new(AtomicU32::new(0));
        let b = builds.clone();
        let acpi = move || {
            let n = b.fetch_add(1, Ordering::SeqCst);
            acpi::build(&AcpiConfig {
                vcpus: 2,
                pci_last_bus: 0,
                // The second build sees where the firmware put ECAM.
                ecam_base: if n == 0 { layout::FIRMWARE_LOW_RAM_MAX } else { 0xe000_0000 },
                pm: PmRegisters::Ich9 { pm_base: 0x600 },
                sb_aml: &[],
            })
        };
        let boot = FirmwareBoot {
            vcpus: 2,
            ram: RamLayout::firmware(256 << 20),
            cpuid_1: (0x800f12, 0x178bfbff),
            uuid: [9; 16],
            boot_order: vec!["/pci@i0cf8/scsi@1/disk@0,0".into()],
            kernel: None,
            linuxboot_rom: Some(vec![0x55, 0xaa]),
        };
        let mut fw = build(&boot, &mem, acpi).unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 1, "one build for the sizes");
        let dir = directory(&mut fw);
        let names: Vec<&str> = dir.iter().map(|d| d.0.as_str()).collect();
        for want in [
            "bootorder",
            "etc/acpi/rsdp",
            "etc/acpi/tables",
            "etc/e820",
            "etc/smbios/smbios-anchor",
            "etc/table-loader",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&LINUXBOOT_FILE), "no option ROM without a kernel");
        let (_, key, size) = dir.iter().find(|d| d.0 == "etc/acpi/tables").unwrap().clone();
        assert_eq!(size % 4096, 0, "padded to leave room for the final build");
        // The first read of an ACPI file builds the final tables: MCFG now at 0xe0000000.
        let tables = read(&mut fw, key, size);
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        let base = 0xe000_0000u64.to_le_bytes();
        assert!(tables.windows(8).any(|w| w == base), "MCFG base from the final build");
        read(&mut fw, key, 16);
        assert_eq!(builds.load(Ordering::SeqCst), 2, "built once");
        let (_, rsdp, _) = dir.iter().find(|d| d.0 == "etc/acpi/rsdp").unwrap().clone();
        assert_eq!(&read(&mut fw, rsdp, 8), b"RSD PTR ");
        assert_eq!(read(&mut fw, keys::NB_CPUS, 2), [2, 0]);
    }
}
