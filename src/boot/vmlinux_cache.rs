//! Boot a bzImage's kernel without its in-guest decompressor: the xz payload is unpacked once
//! on the host into a cache, and the resulting ELF vmlinux is entered through PVH.
//!
//! Why: a bzImage decompresses itself inside the guest, which in a nested or emulated setting
//! is one of the largest parts of the time to init (Debian's 8 MiB bzImage holds a 64 MiB
//! xz-compressed vmlinux) and is repeated on every boot. Unpacked once and cached, later boots
//! just copy the ELF segments. Trade-off: a PVH-entered kernel runs at its link address (no
//! KASLR from the decompressor), as with every VMM that boots a vmlinux; `--kernel-cache off`
//! keeps the bzImage path. Only xz payloads are handled (Debian's and Ubuntu's default); any
//! other bzImage boots as is.
//!
//! Entries are keyed by the SHA-256 of the bzImage's content (`vmlinux-HASH`). So that a
//! warm boot does not read and hash the whole bzImage, an `id-` record named after the
//! file's identity (device, inode, size, modification and change times) holds that hash and
//! the entry's size, or that the bzImage cannot be extracted (booted as is): a file that changes gets a new identity and is hashed again; the same kernel under
//! another name or touched is found by its hash and not extracted again. The cache
//! directory and every file in it are trusted only under the rules of `cache_dir`.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cache_dir::{CacheDir, CacheDirError};

/// bzImage header fields (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// payload_offset/payload_length exist from boot protocol 2.08 on.
const MIN_VERSION: u16 = 0x0208;
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// A PVH entry note: namesz 4, descsz 4 (or 8: x86-64 kernels emit the address with
/// _ASM_PTR), type XEN_ELFNOTE_PHYS32_ENTRY (18), name "Xen".
const PVH_NOTE: [u8; 16] = [4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
const PVH_NOTE_DESC8: [u8; 16] = [4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
/// Refuse absurd sizes from a corrupt header before allocating.
const MAX_VMLINUX: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum VmlinuxCacheError {
    #[error("reading kernel image {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: its xz payload does not decompress")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: decompressed {got} bytes, the bzImage says {want}")]
    SizeMismatch { path: PathBuf, got: usize, want: usize },
    #[error("writing the extracted kernel to {path} failed (use --kernel-cache off to skip it)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    CacheDir(#[from] CacheDirError),
}

/// The xz stream of a bzImage's payload and the vmlinux size appended after it, if `image`
/// is an xz bzImage.
fn xz_payload(image: &[u8]) -> Option<(&[u8], usize)> {
    let u16_at = |o: usize| image.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| image.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") || u16_at(VERSION)? < MIN_VERSION {
        return None;
    }
    let setup_sects = match *image.get(SETUP_SECTS)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1).checked_mul(512)?.checked_add(usize::try_from(u32_at(PAYLOAD_OFFSET)?).ok()?)?;
    let len = usize::try_from(u32_at(PAYLOAD_LENGTH)?).ok()?;
    let payload = image.get(start..start.checked_add(len)?)?;
    if !payload.starts_with(&XZ_MAGIC) || payload.len() < 4 {
        return None;
    }
    // The kernel build appends the uncompressed size, little-endian (scripts/Makefile.lib,
    // size_append), after the xz stream.
    let tail = payload.get(payload.len() - 4..)?;
    let size = usize::try_from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]])).ok()?;
    let stream = payload.get(..payload.len() - 4)?;
    (size <= MAX_VMLINUX).then_some((stream, size))
}

/// What the decompressed kernel turned out to be, seen while it streamed to the cache file.
struct Extracted {
    elf64: bool,
    pvh: bool,
}

fn has_pvh_note(bytes: &[u8]) -> bool {
    bytes.windows(PVH_NOTE.len()).any(|w| w == PVH_NOTE || w == PVH_NOTE_DESC8)
}

/// Zero blocks of the extracted vmlinux are left as holes (`boot::sparse` skips them when
/// loading); 4 KiB, the page size, so a hole is a whole page of guest RAM left untouched.
const HOLE_BLOCK: u64 = 4096;

/// Writes `data`, which belongs at file offset `at`, seeking over every whole aligned zero
/// block instead of writing it. The caller sets the file's length at the end (a trailing
/// hole is not written either).
fn write_sparse(out: &mut (impl Write + Seek), data: &[u8], at: u64) -> std::io::Result<()> {
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = at + pos as u64;
        // The end of the block `abs` is in, as an index into `data`.
        let end = usize::try_from((abs / HOLE_BLOCK + 1) * HOLE_BLOCK - at).map_or(data.len(), |e| e.min(data.len()));
        let piece = &data[pos..end];
        if piece.len() as u64 == HOLE_BLOCK && piece.iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(HOLE_BLOCK as i64))?;
        } else {
            out.write_all(piece)?;
        }
        pos = end;
    }
    Ok(())
}

/// Decompresses `stream` into `out` in 1 MiB pieces (the VMM never holds the whole vmlinux)
/// and checks the result is `size` bytes long. Zero blocks become holes (see `write_sparse`).
fn extract_to(
    path: &Path,
    stream: &[u8],
    size: usize,
    out: &mut (impl Write + Seek),
    out_path: &Path,
) -> Result<Extracted, VmlinuxCacheError> {
    use xz2::stream::{Action, Status, Stream};
    const CHUNK: usize = 1 << 20;
    let fail = |source: std::io::Error| VmlinuxCacheError::Decompress { path: path.into(), source };
    let mismatch = |got| VmlinuxCacheError::SizeMismatch { path: path.into(), got, want: size };
    let mut xz = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| fail(e.into()))?;
    let mut buf = Vec::with_capacity(CHUNK);
    // The end of the previous piece, so a note split across two pieces is still found.
    let mut carry: Vec<u8> = Vec::new();
    let mut found = Extracted { elf64: false, pvh: false };
    let mut total = 0usize;
    loop {
        buf.clear();
        let consumed = usize::try_from(xz.total_in()).unwrap_or(usize::MAX);
        let input = stream.get(consumed..).unwrap_or_default();
        let status = xz.process_vec(input, &mut buf, Action::Finish).map_err(|e| fail(e.into()))?;
        if total == 0 {
            found.elf64 = buf.starts_with(b"\x7fELF\x02");
        }
        total += buf.len();
        if total > size {
            return Err(mismatch(total));
        }
        if !found.pvh {
            carry.extend_from_slice(&buf[..buf.len().min(PVH_NOTE.len())]);
            found.pvh = has_pvh_note(&carry) || has_pvh_note(&buf);
            carry = buf[buf.len().saturating_sub(PVH_NOTE.len())..].to_vec();
        }
        write_sparse(out, &buf, (total - buf.len()) as u64)
            .map_err(|source| VmlinuxCacheError::Write { path: out_path.into(), source })?;
        let progressed = !buf.is_empty() || usize::try_from(xz.total_in()).unwrap_or(usize::MAX) != consumed;
        match status {
            Status::StreamEnd => break,
            // A truncated stream stops making progress before its end.
            _ if !progressed => return Err(mismatch(total)),
            _ => {}
        }
    }
    if total != size {
        return Err(mismatch(total));
    }
    Ok(found)
}

/// How a cache entry is found without reading the bzImage: the file's identity (device,
/// inode, size, modification and change times; the change time cannot be set back by hand)
/// names an `id-` file holding the SHA-256 of the bzImage's content and what it led to.
fn identity(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    for v in [meta.dev(), meta.ino(), meta.size()] {
        h.update(v.to_le_bytes());
    }
    for v in [meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()] {
        h.update(v.to_le_bytes());
    }
    hex(&h.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an `id-` file says about the bzImage with that identity.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    /// Extracted to `vmlinux-HASH`, this many bytes long.
    Extracted { hash: String, size: u64 },
    /// Not extractable (`vmlinux-HASH.no-pvh`): boot the bzImage.
    NoPvh { hash: String },
}

impl Known {
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let hash = words.next().filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))?.to_string();
        let known = match words.next()? {
            "no-pvh" => Self::NoPvh { hash },
            size => Self::Extracted { hash, size: size.parse().ok()? },
        };
        words.next().is_none().then_some(known)
    }

    fn text(&self) -> String {
        match self {
            Self::Extracted { hash, size } => format!("{hash} {size}\n"),
            Self::NoPvh { hash } => format!("{hash} no-pvh\n"),
        }
    }
}

/// The default cache: /var/cache/viaduct for root, else $XDG_CACHE_HOME/viaduct or
/// ~/.cache/viaduct; None when there is nowhere to put it.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/cache/viaduct"));
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("viaduct"))
}

/// The kernel to boot for `kernel`: a cached PVH vmlinux extracted from it when it is an xz
/// bzImage whose kernel has a PVH entry, else `kernel` itself. The cache directory must be
/// trusted (see `cache_dir`): an untrusted one is an error, for the caller to report or to
/// boot the bzImage instead.
pub fn resolve(kernel: &Path, cache_dir: &Path) -> Result<PathBuf, VmlinuxCacheError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let cache = CacheDir::open(cache_dir, unsafe { libc::geteuid() })?;
    let read_err = |source| VmlinuxCacheError::Read { path: kernel.into(), source };
    let meta = fs::metadata(kernel).map_err(read_err)?;
    let id_name = format!("id-{}", identity(&meta));
    // Warm path: the identity leads to a known result without reading the bzImage.
    if let Some(known) = read_known(&cache, &id_name) {
        match &known {
            Known::NoPvh { .. } => return Ok(kernel.to_path_buf()),
            Known::Extracted { hash, size } => {
                if let Some(path) = trusted_entry(&cache, hash, *size) {
                    log::info!("booting {} through PVH from the extracted kernel {}", kernel.display(), path.display());
                    return Ok(path);
                }
            }
        }
    }
    // Only the header first: an ELF vmlinux (tens of MiB) is not read for nothing.
    let mut header = [0u8; PAYLOAD_LENGTH + 4];
    let is_bzimage = fs::File::open(kernel).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header)).is_ok()
        && &header[HEADER_MAGIC..HEADER_MAGIC + 4] == b"HdrS";
    if !is_bzimage {
        log::debug!("{}: not a bzImage, booting it as is", kernel.display());
        return Ok(kernel.to_path_buf());
    }
    let image = fs::read(kernel).map_err(read_err)?;
    let hash = hex(&Sha256::digest(&image));
    let remember = |known: Known| {
        if let Err(e) = cache.write_file(&id_name, known.text().as_bytes()) {
            log::warn!("{:#}", anyhow::Error::from(e));
        }
    };
    let Some((payload, size)) = xz_payload(&image) else {
        log::info!("{}: not an xz-compressed bzImage, booting it as is", kernel.display());
        remember(Known::NoPvh { hash });
        return Ok(kernel.to_path_buf());
    };
    // The same kernel under another name, or touched: its extraction is there already.
    if let Some(path) = trusted_entry(&cache, &hash, size as u64) {
        remember(Known::Extracted { hash, size: size as u64 });
        log::info!("booting {} through PVH from the extracted kernel {}", kernel.display(), path.display());
        return Ok(path);
    }
    let (file, temp) = cache.create_temp(&format!("vmlinux-{hash}"))?;
    let temp_path = cache.path().join(&temp);
    let write_err = |source| VmlinuxCacheError::Write { path: temp_path.clone(), source };
    let mut f = std::io::BufWriter::new(file);
    let extracted = extract_to(kernel, payload, size, &mut f, &temp_path).and_then(|found| {
        f.flush().map_err(write_err)?;
        // A vmlinux ending in zero blocks ends in a hole that was never written.
        f.get_ref().set_len(size as u64).map_err(write_err)?;
        Ok(found)
    });
    drop(f);
    let found = match extracted {
        Ok(found) => found,
        Err(e) => {
            cache.remove(&temp);
            return Err(e);
        }
    };
    if !(found.elf64 && found.pvh) {
        cache.remove(&temp);
        // Remember it, so later boots skip the decompression and boot the bzImage at once.
        log::info!("{}: the kernel has no PVH entry, booting the bzImage", kernel.display());
        remember(Known::NoPvh { hash });
        return Ok(kernel.to_path_buf());
    }
    let name = format!("vmlinux-{hash}");
    cache.publish(&temp, &name).inspect_err(|_| cache.remove(&temp))?;
    remember(Known::Extracted { hash, size: size as u64 });
    let path = cache.path().join(name);
    log::info!("extracted the kernel of {} to {}; booting it through PVH", kernel.display(), path.display());
    Ok(path)
}

/// The `id-` file's word, if it is there, trusted and well-formed (else logged and ignored:
/// the bzImage is read and hashed again).
fn read_known(cache: &CacheDir, id_name: &str) -> Option<Known> {
    let mut text = String::new();
    match cache.open_trusted(id_name) {
        Ok(Some(f)) => {
            std::io::Read::read_to_string(&mut std::io::Read::take(f, 256), &mut text).ok()?;
        }
        Ok(None) => return None,
        Err(why) => {
            log::warn!("kernel cache {}: ignoring {why}", cache.path().display());
            return None;
        }
    }
    let known = Known::parse(&text);
    if known.is_none() {
        log::warn!("kernel cache {}: ignoring {id_name}: not a cache record", cache.path().display());
    }
    known
}

/// The extracted kernel `vmlinux-HASH` if it is a trusted file of the expected size (a
/// truncated, replaced or linked entry is ignored and extracted again).
fn trusted_entry(cache: &CacheDir, hash: &str, size: u64) -> Option<PathBuf> {
    let name = format!("vmlinux-{hash}");
    match cache.open_trusted(&name) {
        Ok(Some(f)) if f.metadata().is_ok_and(|m| m.len() == size) => Some(cache.path().join(name)),
        Ok(Some(_)) => {
            log::warn!("kernel cache {}: {name} has the wrong size; extracting it again", cache.path().display());
            None
        }
        Ok(None) => None,
        Err(why) => {
            log::warn!("kernel cache {}: ignoring {why}; extracting it again", cache.path().display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage header around `payload` (setup_sects 1, payload right after setup).
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 1024];
        img[SETUP_SECTS] = 1;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    fn xz_with_size(data: &[u8]) -> Vec<u8> {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(data).unwrap();
        let mut out = enc.finish().unwrap();
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn fake_vmlinux(pvh: bool) -> Vec<u8> {
        let mut v = b"\x7fELF\x02\x01\x01".to_vec();
        v.resize(4096, 0x90);
        if pvh {
            v.extend_from_slice(&PVH_NOTE);
            v.extend_from_slice(&0x100_0000u32.to_le_bytes());
        }
        v
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("viaduct-vmlinux-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn extracts_once_then_reuses_the_cache() {
        let dir = temp_dir("once");
        let vmlinux = fake_vmlinux(true);
        let kernel = dir.join("bzImage");
        fs::write(&kernel, bzimage(&xz_with_size(&vmlinux))).unwrap();
        let cache = dir.join("cache");
        let got = resolve(&kernel, &cache).unwrap();
        assert_ne!(got, kernel);
        assert_eq!(fs::read(&got).unwrap(), vmlinux);
        // A second resolve finds the same file (no temp files left behind): the entry and
        // the identity record leading to it.
        assert_eq!(resolve(&kernel, &cache).unwrap(), got);
        let mut names: Vec<String> =
            fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("id-") && names[1].starts_with("vmlinux-"), "{names:?}");
    }

    /// The entry's inode, to tell a reuse from a new extraction.
    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn entries_are_keyed_by_content() {
        let dir = temp_dir("content");
        let cache = dir.join("cache");
        let image = bzimage(&xz_with_size(&fake_vmlinux(true)));
        let a = dir.join("a");
        fs::write(&a, &image).unwrap();
        let first = resolve(&a, &cache).unwrap();
        let ino = inode(&first);
        // A copy elsewhere, and the same file rewritten (new mtime): no new extraction.
        let b = dir.join("b");
        fs::write(&b, &image).unwrap();
        assert_eq!(resolve(&b, &cache).unwrap(), first);
        fs::write(&a, &image).unwrap();
        assert_eq!(resolve(&a, &cache).unwrap(), first);
        assert_eq!(inode(&first), ino, "the entry was extracted again");
        assert_eq!(
            fs::read_dir(&cache)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("vmlinux-"))
                .count(),
            1
        );
    }

    #[test]
    fn tampered_entries_are_not_booted() {
        let dir = temp_dir("tampered");
        let cache = dir.join("cache");
        let vmlinux = fake_vmlinux(true);
        let kernel = dir.join("bzImage");
        fs::write(&kernel, bzimage(&xz_with_size(&vmlinux))).unwrap();
        let entry = resolve(&kernel, &cache).unwrap();
        // Truncated: extracted again.
        fs::write(&entry, b"\x7fELF").unwrap();
        assert_eq!(resolve(&kernel, &cache).unwrap(), entry);
        assert_eq!(fs::read(&entry).unwrap(), vmlinux);
        // Replaced by a link to another file: the link is not followed, and is replaced.
        let other = dir.join("other");
        fs::write(&other, vec![0x90; vmlinux.len()]).unwrap();
        fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(&other, &entry).unwrap();
        assert_eq!(resolve(&kernel, &cache).unwrap(), entry);
        assert_eq!(fs::read(&entry).unwrap(), vmlinux);
        assert!(fs::symlink_metadata(&entry).unwrap().is_file());
        assert_eq!(fs::read(&other).unwrap(), vec![0x90; vmlinux.len()], "written through the link");
        // Writable by others: not trusted, extracted again.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(resolve(&kernel, &cache).unwrap(), entry);
        assert_eq!(fs::metadata(&entry).unwrap().permissions().mode() & 0o022, 0);
        // A garbled identity record: ignored, the kernel is hashed again.
        for e in fs::read_dir(&cache).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("id-") {
                fs::write(&p, b"../../etc/passwd 1\n").unwrap();
            }
        }
        assert_eq!(resolve(&kernel, &cache).unwrap(), entry);
    }

    #[test]
    fn an_untrusted_cache_directory_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("untrusted");
        let kernel = dir.join("bzImage");
        fs::write(&kernel, bzimage(&xz_with_size(&fake_vmlinux(true)))).unwrap();
        let open = dir.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = resolve(&kernel, &open).unwrap_err();
        assert!(matches!(e, VmlinuxCacheError::CacheDir(_)), "{e}");
        assert_eq!(fs::read_dir(&open).unwrap().count(), 0, "nothing written into it");
        let link = dir.join("link");
        let private = dir.join("private");
        fs::create_dir(&private).unwrap();
        std::os::unix::fs::symlink(&private, &link).unwrap();
        assert!(resolve(&kernel, &link).is_err());
    }

    #[test]
    fn known_records_parse_strictly() {
        let h = "ab".repeat(32);
        assert_eq!(Known::parse(&format!("{h} 123\n")), Some(Known::Extracted { hash: h.clone(), size: 123 }));
        assert_eq!(Known::parse(&format!("{h} no-pvh")), Some(Known::NoPvh { hash: h.clone() }));
        for bad in ["", "abc 1", h.as_str(), &format!("{h} -1"), &format!("{h} 1 2"), &format!("{}/ 1", &h[..63])] {
            assert_eq!(Known::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_note_across_piece_boundaries_is_found() {
        let dir = temp_dir("split");
        let mut vmlinux = b"\x7fELF\x02\x01\x01".to_vec();
        // Pseudo-random filler (compresses poorly, so pieces really are 1 MiB of output).
        let mut x = 0x2545_f491u32;
        while vmlinux.len() < (1 << 20) - 7 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            vmlinux.push(x as u8 | 1);
        }
        vmlinux.extend_from_slice(&PVH_NOTE_DESC8);
        vmlinux.resize(3 << 20, 0);
        let kernel = dir.join("bzImage");
        fs::write(&kernel, bzimage(&xz_with_size(&vmlinux))).unwrap();
        let got = resolve(&kernel, &dir.join("cache")).unwrap();
        assert_ne!(got, kernel, "the note straddling the 1 MiB boundary was missed");
        assert_eq!(fs::read(&got).unwrap(), vmlinux);
    }

    #[test]
    fn zero_blocks_become_holes_and_read_back_as_zeros() {
        // write_sparse alone, pieces at unaligned offsets: the bytes are the input's.
        let mut data = vec![0u8; 5 * HOLE_BLOCK as usize + 100];
        data[10] = 1;
        data[3 * HOLE_BLOCK as usize + 5] = 2;
        let mut out = std::io::Cursor::new(Vec::new());
        let (a, b) = data.split_at(4000);
        write_sparse(&mut out, a, 0).unwrap();
        write_sparse(&mut out, b, 4000).unwrap();
        let mut got = out.into_inner();
        // The trailing partial block is written; whole zero blocks before it are skipped.
        got.resize(data.len(), 0);
        assert_eq!(got, data);

        // Through resolve: a kernel with zero blocks inside and at the end.
        let dir = temp_dir("sparse");
        let mut vmlinux = fake_vmlinux(true);
        vmlinux.resize(64 << 10, 0);
        vmlinux.extend_from_slice(&[0x90; 5000]);
        vmlinux.resize(256 << 10, 0);
        let kernel = dir.join("bzImage");
        fs::write(&kernel, bzimage(&xz_with_size(&vmlinux))).unwrap();
        let got = resolve(&kernel, &dir.join("cache")).unwrap();
        assert_ne!(got, kernel);
        assert_eq!(fs::read(&got).unwrap(), vmlinux, "the cached kernel differs");
        use std::os::unix::fs::MetadataExt;
        let probe = dir.join("probe");
        let f = fs::File::create(&probe).unwrap();
        f.set_len(1 << 20).unwrap();
        if f.metadata().unwrap().blocks() == 0 {
            // This filesystem keeps holes: most of the cached kernel must be one.
            let allocated = fs::metadata(&got).unwrap().blocks() * 512;
            assert!(allocated < 64 << 10, "{allocated} bytes allocated for a mostly-zero kernel");
        }
    }

    #[test]
    fn a_changed_kernel_gets_a_new_extraction() {
        let dir = temp_dir("changed");
        let kernel = dir.join("bzImage");
        let cache = dir.join("cache");
        fs::write(&kernel, bzimage(&xz_with_size(&fake_vmlinux(true)))).unwrap();
        let first = resolve(&kernel, &cache).unwrap();
        let mut other = fake_vmlinux(true);
        other[100] = 1;
        fs::write(&kernel, bzimage(&xz_with_size(&other))).unwrap();
        let second = resolve(&kernel, &cache).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(&second).unwrap(), other);
    }

    #[test]
    fn other_images_boot_as_they_are() {
        let dir = temp_dir("other");
        let cache = dir.join("cache");
        // Not a bzImage; a bzImage with a gzip payload; one whose kernel has no PVH note.
        let elf = dir.join("vmlinux");
        fs::write(&elf, fake_vmlinux(true)).unwrap();
        assert_eq!(resolve(&elf, &cache).unwrap(), elf);
        let gz = dir.join("gz");
        fs::write(&gz, bzimage(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(resolve(&gz, &cache).unwrap(), gz);
        let nopvh = dir.join("nopvh");
        fs::write(&nopvh, bzimage(&xz_with_size(&fake_vmlinux(false)))).unwrap();
        assert_eq!(resolve(&nopvh, &cache).unwrap(), nopvh);
        assert_eq!(resolve(&nopvh, &cache).unwrap(), nopvh);
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let dir = temp_dir("corrupt");
        let cache = dir.join("cache");
        let mut payload = xz_with_size(&fake_vmlinux(true));
        let n = payload.len();
        payload[n / 2] ^= 0xff;
        let k = dir.join("bad");
        fs::write(&k, bzimage(&payload)).unwrap();
        assert!(resolve(&k, &cache).is_err());
        // Wrong appended size.
        let mut payload = xz_with_size(&fake_vmlinux(true));
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&7u32.to_le_bytes());
        fs::write(&k, bzimage(&payload)).unwrap();
        assert!(matches!(resolve(&k, &cache), Err(VmlinuxCacheError::SizeMismatch { .. })));
        // Failed extractions leave nothing behind.
        assert_eq!(fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0), 0);
        // Truncated header fields never index out of bounds.
        for len in [0, 0x203, 0x249, 0x24e, 1030] {
            let img = bzimage(&xz_with_size(b"x"));
            assert!(xz_payload(&img[..len.min(img.len())]).is_none() || len >= img.len());
        }
    }
}
