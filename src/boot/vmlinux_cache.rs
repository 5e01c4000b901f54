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

use std::fs;
use std::hash::Hasher as _;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// Cache key from the bzImage's identity (device, inode, size, modification time), so a warm
/// boot never reads or hashes the image: a rebuilt or replaced kernel gets a new mtime or
/// inode and with it a new extraction.
fn cache_key(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut h = std::hash::DefaultHasher::new();
    for v in [meta.dev(), meta.ino(), meta.size()] {
        h.write_u64(v);
    }
    h.write_i64(meta.mtime());
    h.write_i64(meta.mtime_nsec());
    format!("{}-{:016x}", meta.size(), h.finish())
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
/// bzImage whose kernel has a PVH entry, else `kernel` itself.
pub fn resolve(kernel: &Path, cache_dir: &Path) -> Result<PathBuf, VmlinuxCacheError> {
    let read_err = |source| VmlinuxCacheError::Read { path: kernel.into(), source };
    let meta = fs::metadata(kernel).map_err(read_err)?;
    let key = cache_key(&meta);
    let cached = cache_dir.join(format!("vmlinux-{key}"));
    // Marks a bzImage that cannot be extracted (not xz, or no PVH entry): boot it as is.
    let no_pvh = cache_dir.join(format!("vmlinux-{key}.no-pvh"));
    if cached.is_file() {
        log::info!("booting {} through PVH from the extracted kernel {}", kernel.display(), cached.display());
        return Ok(cached);
    }
    if no_pvh.exists() {
        return Ok(kernel.to_path_buf());
    }
    // Only the header first: an ELF vmlinux (tens of MiB) is not read for nothing.
    let mut header = [0u8; PAYLOAD_LENGTH + 4];
    let is_bzimage = fs::File::open(kernel).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header)).is_ok()
        && &header[HEADER_MAGIC..HEADER_MAGIC + 4] == b"HdrS";
    if !is_bzimage {
        log::debug!("{}: not a bzImage, booting it as is", kernel.display());
        return Ok(kernel.to_path_buf());
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VmlinuxCacheError::Write { path, source }
    };
    let image = fs::read(kernel).map_err(read_err)?;
    let Some((payload, size)) = xz_payload(&image) else {
        log::info!("{}: not an xz-compressed bzImage, booting it as is", kernel.display());
        fs::create_dir_all(cache_dir).map_err(write_err(cache_dir))?;
        fs::write(&no_pvh, b"").map_err(write_err(&no_pvh))?;
        return Ok(kernel.to_path_buf());
    };
    fs::create_dir_all(cache_dir).map_err(write_err(cache_dir))?;
    // Write then rename: a concurrent viaduct never sees a partial file.
    let tmp = cache_dir.join(format!(".vmlinux-{key}.{}", std::process::id()));
    let mut f = std::io::BufWriter::new(fs::File::create(&tmp).map_err(write_err(&tmp))?);
    let extracted = extract_to(kernel, payload, size, &mut f, &tmp).and_then(|found| {
        f.flush().map_err(write_err(&tmp))?;
        // A vmlinux ending in zero blocks ends in a hole that was never written.
        f.get_ref().set_len(size as u64).map_err(write_err(&tmp))?;
        Ok(found)
    });
    drop(f);
    let found = match extracted {
        Ok(found) => found,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if !(found.elf64 && found.pvh) {
        let _ = fs::remove_file(&tmp);
        // Remember it, so later boots skip the decompression and boot the bzImage at once.
        log::info!("{}: the kernel has no PVH entry, booting the bzImage", kernel.display());
        fs::write(&no_pvh, b"").map_err(write_err(&no_pvh))?;
        return Ok(kernel.to_path_buf());
    }
    fs::rename(&tmp, &cached).map_err(write_err(&cached))?;
    log::info!("extracted the kernel of {} to {}; booting it through PVH", kernel.display(), cached.display());
    Ok(cached)
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
        // A second resolve finds the same file (no temp files left behind).
        assert_eq!(resolve(&kernel, &cache).unwrap(), got);
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
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
