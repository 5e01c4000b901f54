//! Firmware images for `--firmware`: what they are, whether they fit this platform, and
//! their memory at the top of 4 GiB (see `layout`): the code as a read-only ROM, and for
//! OVMF with a separate variable store, that store as a CFI flash backed by the per-VM
//! vars file (created from a template when missing), written back as the guest programs it.
//!
//! Checks made before anything starts (one error line each): readable files, sizes that a
//! flash device can have, a variable store that fits the code image it belongs to, a
//! writable vars file, and no Secure Boot build of OVMF (those are built with SMM, which
//! viaduct does not emulate; an SMM build not recognised here is stopped when it probes
//! the host bridge for SMRAM, see `platform::q35::mch`).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use platform::flash::FlashStore;
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, VolatileMemory};

use crate::config::FirmwareSpec;
use crate::layout;

/// OVMF's flash block size (PcdOvmfFirmwareBlockSize), also the granule of every image size.
pub const FLASH_BLOCK_SIZE: usize = 0x1000;
const MIN_IMAGE_SIZE: u64 = 64 << 10;
/// A firmware volume header has "_FVH" at offset 0x28 and its file system GUID at 0x10.
const FV_SIGNATURE_OFFSET: usize = 0x28;
const FV_GUID_OFFSET: usize = 0x10;
/// EFI_SYSTEM_NV_DATA_FV_GUID (FFF12B8D-7696-4C8B-A985-2747075B4F50): the variable store's
/// volume, first in a combined OVMF image and in a vars file.
const NV_DATA_FV_GUID: [u8; 16] =
    [0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50];
/// Debian's names for the Secure Boot builds, which need SMM (the `.ms`/`.snakeoil`
/// variants are links to them).
const SMM_BUILD_MARKERS: [&str; 3] = [".secboot.", ".ms.", ".snakeoil."];

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("opening firmware {path} failed")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firmware {path}: {size} bytes is not a firmware image size (a multiple of 4 KiB from 64 KiB to {max} MiB)", max = layout::FIRMWARE_MAX_SIZE >> 20)]
    Size { path: PathBuf, size: u64 },
    #[error(
        "firmware {path} is OVMF's Secure Boot build, which needs SMM (System Management Mode): viaduct does not \
         emulate SMM; use the build without it (Debian: OVMF_CODE_4M.fd with a copy of OVMF_VARS_4M.fd)"
    )]
    SmmBuild { path: PathBuf },
    #[error("firmware {path} is an OVMF code image without its variable store: give --firmware code={path},vars=VARS")]
    CodeOnly { path: PathBuf },
    #[error("--firmware code={path} is not a UEFI (OVMF) image: give a SeaBIOS image as --firmware PATH")]
    NotUefi { path: PathBuf },
    #[error("{path} is not an OVMF variable store (no NV data firmware volume at its start)")]
    NotVars { path: PathBuf },
    #[error(
        "OVMF code {code} ({code_size} bytes) and vars {vars} ({vars_size} bytes) do not make up one flash device \
         (1, 2, 4, 8 or 16 MiB together): is the vars file from the same OVMF build?"
    )]
    Mismatch { code: PathBuf, code_size: u64, vars: PathBuf, vars_size: u64 },
    #[error("vars file {path} does not exist and there is no template {template} to create it from: give vars-template=PATH")]
    NoTemplate { path: PathBuf, template: PathBuf },
    #[error("creating vars file {path} from {template} failed")]
    CreateVars {
        path: PathBuf,
        template: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vars file {path} cannot be opened for writing (UEFI variables are stored in it)")]
    VarsNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {what} failed")]
    Map {
        what: &'static str,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareKind {
    /// SeaBIOS: boots `--kernel` through QEMU's linuxboot option ROM.
    LegacyBios,
    /// OVMF: loads `--kernel` itself.
    Uefi,
}

/// The checked images, ready to map.
#[derive(Debug)]
pub struct FirmwareFiles {
    pub code: Vec<u8>,
    pub code_path: PathBuf,
    pub kind: FirmwareKind,
    /// OVMF's separate variable store, opened read-write.
    pub vars: Option<(PathBuf, File, u64)>,
}

impl FirmwareFiles {
    /// Where the whole image (variable store included) starts.
    pub fn base(&self) -> u64 {
        layout::MEM_32BIT_HOLE_END - self.code.len() as u64 - self.vars.as_ref().map_or(0, |v| v.2)
    }

    pub fn code_base(&self) -> u64 {
        layout::MEM_32BIT_HOLE_END - self.code.len() as u64
    }

    /// The last 128 KiB of the image, copied to 0xE0000 (the BIOS entry after reset).
    pub fn bios_alias(&self) -> &[u8] {
        &self.code[self.code.len() - layout::BIOS_ALIAS_SIZE as usize..]
    }
}

fn open_err(path: &Path) -> impl FnOnce(std::io::Error) -> FirmwareError + '_ {
    move |source| FirmwareError::Open { path: path.to_path_buf(), source }
}

fn check_size(path: &Path, size: u64, min: u64) -> Result<(), FirmwareError> {
    if size < min || size > layout::FIRMWARE_MAX_SIZE || size % FLASH_BLOCK_SIZE as u64 != 0 {
        return Err(FirmwareError::Size { path: path.to_path_buf(), size });
    }
    Ok(())
}

fn read_image(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let mut f = File::open(path).map_err(open_err(path))?;
    let meta = f.metadata().map_err(open_err(path))?;
    if meta.is_dir() {
        return Err(FirmwareError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::other("it is a directory"),
        });
    }
    check_size(path, meta.len(), MIN_IMAGE_SIZE.max(layout::BIOS_ALIAS_SIZE))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut data).map_err(open_err(path))?;
    check_size(path, data.len() as u64, MIN_IMAGE_SIZE.max(layout::BIOS_ALIAS_SIZE))?;
    if is_smm_build(path) {
        return Err(FirmwareError::SmmBuild { path: path.to_path_buf() });
    }
    Ok(data)
}

/// Debian's Secure Boot builds by name (also through the `.ms.fd` links).
fn is_smm_build(path: &Path) -> bool {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    [path, real.as_path()].iter().any(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        SMM_BUILD_MARKERS.iter().any(|m| name.contains(m))
    })
}

fn is_fv(data: &[u8]) -> bool {
    data.get(FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4) == Some(b"_FVH")
}

fn starts_with_nv_store(data: &[u8]) -> bool {
    is_fv(data) && data.get(FV_GUID_OFFSET..FV_GUID_OFFSET + 16) == Some(&NV_DATA_FV_GUID[..])
}

/// Where a missing vars file is copied from by default: the VARS file of the same build
/// beside the code file (OVMF_CODE_4M.fd -> OVMF_VARS_4M.fd).
fn default_template(code: &Path) -> Option<PathBuf> {
    let name = code.file_name()?.to_str()?;
    name.contains("CODE").then(|| code.with_file_name(name.replacen("CODE", "VARS", 1)))
}

/// The template a missing vars file is made from (checked, not yet copied).
fn read_vars_template(vars: &Path, template: Option<&Path>, code: &Path) -> Result<Vec<u8>, FirmwareError> {
    let template = template.map(Path::to_path_buf).or_else(|| default_template(code)).unwrap_or_default();
    if template.as_os_str().is_empty() || !template.is_file() {
        return Err(FirmwareError::NoTemplate { path: vars.to_path_buf(), template });
    }
    let image = read_image(&template)?;
    if !starts_with_nv_store(&image) {
        return Err(FirmwareError::NotVars { path: template });
    }
    Ok(image)
}

fn create_vars(vars: &Path, image: &[u8], template: &Path) -> Result<(), FirmwareError> {
    let create =
        |source| FirmwareError::CreateVars { path: vars.to_path_buf(), template: template.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).open(vars).map_err(create)?;
    if let Err(e) = std::io::Write::write_all(&mut f, image).and_then(|_| f.sync_all()) {
        let _ = std::fs::remove_file(vars);
        return Err(create(e));
    }
    log::info!("created UEFI variable store {} from {}", vars.display(), template.display());
    Ok(())
}

fn open_vars(vars: &Path) -> Result<(File, u64), FirmwareError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(vars)
        .map_err(|source| FirmwareError::VarsNotWritable { path: vars.to_path_buf(), source })?;
    let size = f.metadata().map_err(open_err(vars))?.len();
    check_size(vars, size, FLASH_BLOCK_SIZE as u64)?;
    let mut head = vec![0u8; 0x40];
    (&f).read_exact(&mut head).map_err(open_err(vars))?;
    if !starts_with_nv_store(&head) {
        return Err(FirmwareError::NotVars { path: vars.to_path_buf() });
    }
    Ok((f, size))
}

/// Checks and loads what `--firmware` names.
pub fn open(spec: &FirmwareSpec) -> Result<FirmwareFiles, FirmwareError> {
    match spec {
        FirmwareSpec::Image(path) => {
            let code = read_image(path)?;
            let kind = if is_fv(&code) { FirmwareKind::Uefi } else { FirmwareKind::LegacyBios };
            if kind == FirmwareKind::Uefi && !starts_with_nv_store(&code) {
                return Err(FirmwareError::CodeOnly { path: path.clone() });
            }
            Ok(FirmwareFiles { code, code_path: path.clone(), kind, vars: None })
        }
        FirmwareSpec::Split { code: code_path, vars, vars_template } => {
            let code = read_image(code_path)?;
            if !is_fv(&code) {
                return Err(FirmwareError::NotUefi { path: code_path.clone() });
            }
            // An existing vars file must open read-write; a missing one is checked against
            // the code before it is created.
            let existing = if vars.exists() { Some(open_vars(vars)?) } else { None };
            let template = match existing {
                Some(_) => None,
                None => {
                    let t = vars_template.clone().or_else(|| default_template(code_path)).unwrap_or_default();
                    Some((read_vars_template(vars, vars_template.as_deref(), code_path)?, t))
                }
            };
            let vars_size = match (&existing, &template) {
                (Some((_, size)), _) => *size,
                (None, Some((image, _))) => image.len() as u64,
                (None, None) => 0,
            };
            let total = code.len() as u64 + vars_size;
            if !total.is_power_of_two() || !(1 << 20..=layout::FIRMWARE_MAX_SIZE).contains(&total) {
                return Err(FirmwareError::Mismatch {
                    code: code_path.clone(),
                    code_size: code.len() as u64,
                    vars: vars.clone(),
                    vars_size,
                });
            }
            let (file, vars_size) = match (existing, template) {
                (Some(opened), _) => opened,
                (None, template) => {
                    if let Some((image, template)) = template {
                        create_vars(vars, &image, &template)?;
                    }
                    open_vars(vars)?
                }
            };
            Ok(FirmwareFiles {
                code,
                code_path: code_path.clone(),
                kind: FirmwareKind::Uefi,
                vars: Some((vars.clone(), file, vars_size)),
            })
        }
    }
}

/// The read-only code image in host memory (a KVM read-only memory slot maps it).
pub struct RomImage {
    region: MmapRegion,
}

impl RomImage {
    pub fn new(data: &[u8]) -> Result<Self, FirmwareError> {
        let region =
            MmapRegion::new(data.len()).map_err(|source| FirmwareError::Map { what: "the firmware image", source })?;
        // The region is exactly data.len() bytes, freshly mapped.
        if let Ok(s) = region.get_slice(0, data.len()) {
            s.copy_from(data);
        }
        Ok(Self { region })
    }

    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.region.size()
    }
}

/// The vars file mapped shared: what the guest programs lands in the file's page cache at
/// once (so it survives viaduct being killed), and is flushed to disk as it changes and when
/// the store is dropped.
pub struct VarsStore {
    region: MmapRegion,
    path: PathBuf,
}

impl VarsStore {
    pub fn new(path: &Path, file: File, size: u64) -> Result<Self, FirmwareError> {
        let region = MmapRegion::from_file(FileOffset::new(file, 0), size as usize)
            .map_err(|source| FirmwareError::Map { what: "the vars file", source })?;
        Ok(Self { region, path: path.to_path_buf() })
    }

    pub fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }

    /// Starts writing back the pages of `range` (MS_ASYNC: the page cache already holds
    /// the data; this only hastens it to disk).
    pub fn flush(&self, range: std::ops::Range<usize>, sync: bool) {
        let page = FLASH_BLOCK_SIZE;
        let start = range.start / page * page;
        let end = range.end.next_multiple_of(page).min(self.region.size());
        if start >= end {
            return;
        }
        let flags = if sync { libc::MS_SYNC } else { libc::MS_ASYNC };
        // SAFETY: [start, end) lies inside our own live mapping; msync only writes it back.
        let rc = unsafe { libc::msync(self.region.as_ptr().add(start).cast(), end - start, flags) };
        if rc != 0 {
            log::warn!("writing back {} failed: {}", self.path.display(), std::io::Error::last_os_error());
        }
    }
}

impl Drop for VarsStore {
    fn drop(&mut self) {
        self.flush(0..self.region.size(), true);
    }
}

impl FlashStore for VarsStore {
    fn len(&self) -> usize {
        self.region.size()
    }

    fn byte(&self, at: usize) -> u8 {
        let mut b = [0u8; 1];
        if let Ok(s) = self.region.get_slice(at, 1) {
            s.copy_to(&mut b[..]);
        }
        b[0]
    }

    fn write(&mut self, at: usize, data: &[u8]) {
        if let Ok(s) = self.region.get_slice(at, data.len()) {
            s.copy_from(data);
            self.flush(at..at + data.len(), false);
        }
    }

    fn fill(&mut self, range: std::ops::Range<usize>, value: u8) {
        if let Ok(s) = self.region.get_slice(range.start, range.len()) {
            s.copy_from(&vec![value; range.len()]);
            self.flush(range, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("viaduct-fw-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An image starting with a firmware volume (`nv`: the variable store's).
    fn fv(size: usize, nv: bool) -> Vec<u8> {
        let mut d = vec![0u8; size];
        d[FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4].copy_from_slice(b"_FVH");
        if nv {
            d[FV_GUID_OFFSET..FV_GUID_OFFSET + 16].copy_from_slice(&NV_DATA_FV_GUID);
        }
        d
    }

    #[test]
    fn seabios_and_combined_ovmf_images() {
        let d = dir();
        let bios = d.join("bios-256k.bin");
        std::fs::write(&bios, vec![0x90u8; 256 << 10]).unwrap();
        let f = open(&FirmwareSpec::Image(bios)).unwrap();
        assert_eq!((f.kind, f.base(), f.bios_alias().len()), (FirmwareKind::LegacyBios, 0xfffc_0000, 128 << 10));
        let ovmf = d.join("OVMF.fd");
        std::fs::write(&ovmf, fv(2 << 20, true)).unwrap();
        let f = open(&FirmwareSpec::Image(ovmf)).unwrap();
        assert_eq!((f.kind, f.base()), (FirmwareKind::Uefi, 0xffe0_0000));
        let code = d.join("OVMF_CODE_4M.fd");
        std::fs::write(&code, fv(0x37c000, false)).unwrap();
        assert!(matches!(open(&FirmwareSpec::Image(code)), Err(FirmwareError::CodeOnly { .. })));
        for size in [0usize, 1000, 100 << 10, 32 << 20] {
            let p = d.join(format!("bad-{size}"));
            std::fs::write(&p, vec![0u8; size]).unwrap();
            assert!(matches!(open(&FirmwareSpec::Image(p)), Err(FirmwareError::Size { .. })), "{size}");
        }
        assert!(matches!(open(&FirmwareSpec::Image(d.join("missing"))), Err(FirmwareError::Open { .. })));
        assert!(matches!(open(&FirmwareSpec::Image(d.clone())), Err(FirmwareError::Open { .. })));
        let sb = d.join("OVMF_CODE_4M.secboot.fd");
        std::fs::write(&sb, fv(0x37c000, false)).unwrap();
        let ms = d.join("OVMF_CODE_4M.ms.fd");
        let _ = std::fs::remove_file(&ms);
        std::os::unix::fs::symlink(&sb, &ms).unwrap();
        let vars = d.join("vm-vars.fd");
        for code in [sb, ms] {
            let spec = FirmwareSpec::Split { code, vars: vars.clone(), vars_template: None };
            assert!(matches!(open(&spec), Err(FirmwareError::SmmBuild { .. })));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn vars_created_from_the_template_beside_the_code() {
        let d = dir();
        let code = d.join("OVMF_CODE_4M.fd");
        std::fs::write(&code, fv(0x37c000, false)).unwrap();
        let vars = d.join("vm1.fd");
        let spec = FirmwareSpec::Split { code: code.clone(), vars: vars.clone(), vars_template: None };
        assert!(matches!(open(&spec), Err(FirmwareError::NoTemplate { .. })));
        let mut template = fv(0x84000, true);
        template[0x1000] = 0x5a;
        std::fs::write(d.join("OVMF_VARS_4M.fd"), &template).unwrap();
        let f = open(&spec).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap(), template);
        assert_eq!((f.base(), f.code_base()), (0xffc0_0000, 0xffc8_4000));
        // The store writes through to the file.
        let (path, file, size) = f.vars.unwrap();
        let mut store = VarsStore::new(&path, file, size).unwrap();
        assert_eq!(store.byte(0x1000), 0x5a);
        store.write(0x2000, b"var");
        store.fill(0x3000..0x4000, 0xee);
        drop(store);
        let on_disk = std::fs::read(&vars).unwrap();
        assert_eq!(&on_disk[0x2000..0x2003], b"var");
        assert!(on_disk[0x3000..0x4000].iter().all(|b| *b == 0xee));
        // An existing vars file is used as it is; a mismatched one is refused.
        open(&spec).unwrap();
        let small = d.join("small.fd");
        std::fs::write(&small, fv(0x20000, true)).unwrap();
        let spec = FirmwareSpec::Split { code: code.clone(), vars: small, vars_template: None };
        assert!(matches!(open(&spec), Err(FirmwareError::Mismatch { .. })));
        let not_vars = d.join("notvars.fd");
        std::fs::write(&not_vars, fv(0x84000, false)).unwrap();
        let spec = FirmwareSpec::Split { code: code.clone(), vars: not_vars, vars_template: None };
        assert!(matches!(open(&spec), Err(FirmwareError::NotVars { .. })));
        let bios = d.join("bios.bin");
        std::fs::write(&bios, vec![0u8; 128 << 10]).unwrap();
        let spec = FirmwareSpec::Split { code: bios, vars: vars.clone(), vars_template: None };
        assert!(matches!(open(&spec), Err(FirmwareError::NotUefi { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_vars_file() {
        let d = dir();
        let code = d.join("OVMF_CODE.fd");
        std::fs::write(&code, fv(0x1e0000, false)).unwrap();
        let vars = d.join("ro-vars.fd");
        std::fs::write(&vars, fv(0x20000, true)).unwrap();
        let mut perms = std::fs::metadata(&vars).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&vars, perms).unwrap();
        let spec = FirmwareSpec::Split { code, vars, vars_template: None };
        let r = open(&spec);
        // Root can write anyway; everyone else gets the error.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(matches!(r, Err(FirmwareError::VarsNotWritable { .. })), "{r:?}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
