//! `romfile=`: a file that replaces an assigned device's option ROM. It is checked before it
//! is read: a regular file of at most [`MAX_ROM_SIZE`], so a typo naming a device node, a
//! pipe or a huge image gives a clear error instead of a stuck or memory-hungry start.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest ROM accepted. Expansion ROMs are far smaller (the PCI Firmware spec's images
/// are at most 16 MiB with its 24-bit offsets), and the ROM BAR is sized to the next power
/// of two of the file.
pub const MAX_ROM_SIZE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RomFileError {
    #[error("romfile {path}: opening it failed")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("romfile {path} is not a regular file")]
    NotRegular { path: PathBuf },
    #[error("romfile {path} is empty")]
    Empty { path: PathBuf },
    #[error("romfile {path} is {size} bytes; a device ROM is at most 16 MiB")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("romfile {path}: reading it failed")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a `romfile=` after checking what it is.
pub fn read_romfile(path: &Path) -> Result<Vec<u8>, RomFileError> {
    let open_err = |source| RomFileError::Open { path: path.into(), source };
    // O_NONBLOCK: opening a FIFO (which is refused below) must not wait for a writer.
    let file = std::os::unix::fs::OpenOptionsExt::custom_flags(File::options().read(true), libc::O_NONBLOCK)
        .open(path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    if !meta.is_file() {
        return Err(RomFileError::NotRegular { path: path.into() });
    }
    match meta.len() {
        0 => return Err(RomFileError::Empty { path: path.into() }),
        size if size > MAX_ROM_SIZE => return Err(RomFileError::TooLarge { path: path.into(), size }),
        _ => {}
    }
    // Bounded even if the file grows after the check.
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_ROM_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|source| RomFileError::Read { path: path.into(), source })?;
    match data.len() as u64 {
        0 => Err(RomFileError::Empty { path: path.into() }),
        size if size > MAX_ROM_SIZE => Err(RomFileError::TooLarge { path: path.into(), size }),
        _ => Ok(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfio-rom-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_rom_within_the_limit_is_read() {
        let d = dir("ok");
        let p = d.join("rom.bin");
        std::fs::write(&p, [0x55, 0xaa, 1, 2]).unwrap();
        assert_eq!(read_romfile(&p).unwrap(), [0x55, 0xaa, 1, 2]);
        let max = d.join("max.bin");
        std::fs::File::create(&max).unwrap().set_len(MAX_ROM_SIZE).unwrap();
        assert_eq!(read_romfile(&max).unwrap().len() as u64, MAX_ROM_SIZE);
    }

    #[test]
    fn huge_empty_and_odd_files_are_refused_before_reading() {
        let d = dir("bad");
        let huge = d.join("huge.bin");
        // Sparse: 64 GiB that would never be read.
        std::fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
        let e = read_romfile(&huge).unwrap_err();
        assert!(matches!(e, RomFileError::TooLarge { size, .. } if size == 64 << 30), "{e}");
        assert!(e.to_string().contains("at most 16 MiB"));
        let over = d.join("over.bin");
        std::fs::File::create(&over).unwrap().set_len(MAX_ROM_SIZE + 1).unwrap();
        assert!(matches!(read_romfile(&over), Err(RomFileError::TooLarge { .. })));
        let empty = d.join("empty.bin");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(read_romfile(&empty), Err(RomFileError::Empty { .. })));
        assert!(matches!(read_romfile(&d), Err(RomFileError::NotRegular { .. })));
        assert!(matches!(read_romfile(Path::new("/dev/zero")), Err(RomFileError::NotRegular { .. })));
        assert!(matches!(read_romfile(&d.join("missing")), Err(RomFileError::Open { .. })));
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(read_romfile(&fifo), Err(RomFileError::NotRegular { .. })));
    }
}
