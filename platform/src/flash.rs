//! A CFI flash with the Intel/Sharp command set, 8 bits wide, as QEMU's pflash_cfi01
//! presents the UEFI variable store to OVMF (QemuFlashFvbServicesRuntimeDxe): reads return
//! the array until a command switches the read mode; byte/word program (0x10/0x40 then
//! data), block erase (0x20/0x28 then 0xd0), read status (0x70), clear status (0x50), read
//! identifier (0x90), CFI query (0x98), block lock set-up (0x60, accepted, locks nothing)
//! and read array (0xff, 0xf0, 0x00).
//!
//! In read-array mode the VMM maps the array straight into the guest (reads never exit),
//! and only writes reach [`CfiFlash::write`]; any other mode needs every read to come here.
//! [`FlashWrite::array_mode`] tells the VMM when that changes, [`FlashWrite::dirty`] which
//! bytes of the store a write changed (to persist them).
//!
//! OVMF probes for flash by writing 0x50 then 0x70 and expects to read status 0x00 (not
//! its own command byte back, which RAM would give, nor the array, which ROM would).

use std::ops::Range;

const CMD_PROGRAM: u8 = 0x10;
const CMD_PROGRAM_ALT: u8 = 0x40;
const CMD_ERASE: u8 = 0x20;
const CMD_ERASE_ALT: u8 = 0x28;
const CMD_ERASE_CONFIRM: u8 = 0xd0;
const CMD_CLEAR_STATUS: u8 = 0x50;
const CMD_LOCK_SETUP: u8 = 0x60;
const CMD_LOCK_SET: u8 = 0x01;
const CMD_LOCK_DOWN: u8 = 0x2f;
const CMD_READ_STATUS: u8 = 0x70;
const CMD_READ_ID: u8 = 0x90;
const CMD_CFI_QUERY: u8 = 0x98;
const CMD_READ_ARRAY: u8 = 0xff;
const CMD_READ_ARRAY_ALT: u8 = 0xf0;
const CMD_READ_ARRAY_ZERO: u8 = 0x00;

/// Status register: write state machine ready.
const STATUS_READY: u8 = 0x80;
/// Erase and program error bits (a bad command sequence sets both).
const STATUS_SEQUENCE_ERROR: u8 = 0x30;
const STATUS_PROGRAM_ERROR: u8 = 0x10;

/// Intel's manufacturer code and a device code of a 28F-series part.
const MANUFACTURER_ID: u8 = 0x89;
const DEVICE_ID: u8 = 0x18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlashError {
    #[error("flash size {size:#x} is not a non-zero multiple of its {block:#x}-byte blocks")]
    Geometry { size: usize, block: usize },
    #[error("flash block size {0:#x} is not a power of two of at least 256 bytes")]
    BlockSize(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    Cfi,
    /// The next write is data for a program command.
    Program,
    /// The next write must be the erase confirm.
    EraseSetup,
    /// The next write is the lock command.
    LockSetup,
}

/// What a guest write asks the VMM to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlashWrite {
    /// `Some(on)` when reads switch to / away from the array (map / unmap it).
    pub array_mode: Option<bool>,
    /// Bytes of the store that changed.
    pub dirty: Option<Range<usize>>,
}

/// The bytes behind the flash: a `Vec` in tests, the mapped variable store file in the VMM
/// (which the guest also reads directly while the array is mapped).
pub trait FlashStore: Send {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Byte `at` (< `len()`).
    fn byte(&self, at: usize) -> u8;
    /// Writes `data` at `at`; the range is inside the store.
    fn write(&mut self, at: usize, data: &[u8]);
    /// Sets `range` (inside the store) to `value`.
    fn fill(&mut self, range: Range<usize>, value: u8);
}

impl FlashStore for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn byte(&self, at: usize) -> u8 {
        self[at]
    }
    fn write(&mut self, at: usize, data: &[u8]) {
        self[at..at + data.len()].copy_from_slice(data);
    }
    fn fill(&mut self, range: Range<usize>, value: u8) {
        self[range].fill(value);
    }
}

/// The flash device over `store` (the variable store file's bytes).
pub struct CfiFlash<S> {
    store: S,
    block_size: usize,
    mode: Mode,
    status: u8,
    cfi: Vec<u8>,
}

impl<S: FlashStore> CfiFlash<S> {
    pub fn new(store: S, block_size: usize) -> Result<Self, FlashError> {
        if !block_size.is_power_of_two() || block_size < 256 {
            return Err(FlashError::BlockSize(block_size));
        }
        let size = store.len();
        if size == 0 || size % block_size != 0 {
            return Err(FlashError::Geometry { size, block: block_size });
        }
        let cfi = cfi_table(size, block_size);
        Ok(Self { store, block_size, mode: Mode::ReadArray, status: STATUS_READY, cfi })
    }

    pub fn size(&self) -> usize {
        self.store.len()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether reads return the array (the VMM may map it).
    pub fn in_array_mode(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let size = self.size();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = match (self.mode, at) {
                (_, None) => 0xff,
                (Mode::ReadArray, Some(a)) => {
                    if a < size {
                        self.store.byte(a)
                    } else {
                        0xff
                    }
                }
                (Mode::ReadId, Some(a)) => match a % 4 {
                    0 => MANUFACTURER_ID,
                    1 => DEVICE_ID,
                    // Block lock status: unlocked.
                    _ => 0,
                },
                (Mode::Cfi, Some(a)) => self.cfi.get(a & 0xff).copied().unwrap_or(0),
                // Status (also while a two-cycle command waits for its second write).
                (_, Some(_)) => self.status,
            };
        }
    }

    /// A guest write of `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FlashWrite {
        let was_array = self.in_array_mode();
        let dirty = self.step(offset, data);
        let now_array = self.in_array_mode();
        FlashWrite { array_mode: (was_array != now_array).then_some(now_array), dirty }
    }

    fn in_store(&self, offset: u64, len: usize) -> Option<Range<usize>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        (len > 0 && end <= self.size()).then_some(start..end)
    }

    fn step(&mut self, offset: u64, data: &[u8]) -> Option<Range<usize>> {
        let &cmd = data.first()?;
        match self.mode {
            Mode::Program => {
                // The data cycle programs as many bytes as the access carries.
                self.mode = Mode::ReadStatus;
                let Some(range) = self.in_store(offset, data.len()) else {
                    self.status |= STATUS_PROGRAM_ERROR | STATUS_READY;
                    self.note_bad(offset, cmd);
                    return None;
                };
                self.store.write(range.start, data);
                self.status |= STATUS_READY;
                Some(range)
            }
            Mode::EraseSetup => {
                if cmd != CMD_ERASE_CONFIRM {
                    self.status |= STATUS_SEQUENCE_ERROR | STATUS_READY;
                    self.mode = Mode::ReadStatus;
                    self.note_bad(offset, cmd);
                    return None;
                }
                self.mode = Mode::ReadStatus;
                self.status |= STATUS_READY;
                let start = usize::try_from(offset).ok().filter(|o| *o < self.size())? & !(self.block_size - 1);
                let range = start..start + self.block_size;
                self.store.fill(range.clone(), 0xff);
                Some(range)
            }
            Mode::LockSetup => {
                if !matches!(cmd, CMD_LOCK_SET | CMD_LOCK_DOWN | CMD_ERASE_CONFIRM) {
                    self.status |= STATUS_SEQUENCE_ERROR;
                    self.note_bad(offset, cmd);
                }
                self.status |= STATUS_READY;
                self.mode = Mode::ReadStatus;
                None
            }
            Mode::ReadArray | Mode::ReadStatus | Mode::ReadId | Mode::Cfi => {
                self.command(offset, cmd);
                None
            }
        }
    }

    fn command(&mut self, offset: u64, cmd: u8) {
        self.mode = match cmd {
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::Program,
            CMD_ERASE | CMD_ERASE_ALT => Mode::EraseSetup,
            CMD_LOCK_SETUP => Mode::LockSetup,
            CMD_CLEAR_STATUS => {
                self.status = 0;
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::ReadStatus,
            CMD_READ_ID => Mode::ReadId,
            CMD_CFI_QUERY => Mode::Cfi,
            CMD_READ_ARRAY | CMD_READ_ARRAY_ALT | CMD_READ_ARRAY_ZERO => Mode::ReadArray,
            _ => {
                // QEMU drops an unknown command and goes back to reading the array.
                self.note_bad(offset, cmd);
                Mode::ReadArray
            }
        };
    }

    fn note_bad(&mut self, offset: u64, cmd: u8) {
        ratelog::warn_limited!("flash: unexpected command {cmd:#04x} at {offset:#x} in mode {:?}", self.mode);
    }
}

/// The CFI query table (JEDEC JESD68.01), as read in query mode at byte offsets of an
/// 8-bit device: "QRY", the Intel command set, one erase region of `size / block` blocks.
fn cfi_table(size: usize, block: usize) -> Vec<u8> {
    let mut t = vec![0u8; 0x40];
    t[0x10..0x13].copy_from_slice(b"QRY");
    // Primary command set 0x0001 (Intel/Sharp extended), its table at 0x31; no alternate.
    t[0x13] = 0x01;
    t[0x15] = 0x31;
    // Vcc 4.5-5.5 V (BCD), no Vpp, typical timings 2^n: 16 us program, 1 s erase.
    t[0x1b] = 0x45;
    t[0x1c] = 0x55;
    t[0x1f] = 0x04;
    t[0x21] = 0x0a;
    t[0x23] = 0x04;
    t[0x25] = 0x04;
    // Device size 2^n bytes (rounded up for odd sizes), x8 interface, no write buffer.
    t[0x27] = size.next_power_of_two().trailing_zeros() as u8;
    t[0x2c] = 1;
    let blocks = (size / block).saturating_sub(1).min(0xffff) as u16;
    t[0x2d..0x2f].copy_from_slice(&blocks.to_le_bytes());
    let units = ((block / 256).min(0xffff) as u16).to_le_bytes();
    t[0x2f..0x31].copy_from_slice(&units);
    // Primary extended table: "PRI", version 1.0.
    t[0x31..0x34].copy_from_slice(b"PRI");
    t[0x34] = b'1';
    t[0x35] = b'0';
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flash() -> CfiFlash<Vec<u8>> {
        let mut store = vec![0xffu8; 0x4000];
        store[..16].fill(0);
        store[0x10..0x14].copy_from_slice(&[0x8d, 0x2b, 0xf1, 0xff]);
        CfiFlash::new(store, 0x1000).unwrap()
    }

    fn rd(f: &mut CfiFlash<Vec<u8>>, off: u64) -> u8 {
        let mut b = [0u8];
        f.read(off, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_detects_flash() {
        let mut f = flash();
        // QemuFlashDetected: the first byte that is not 0x50, 0x70 or 0x00.
        let probe = (0..0x1000u64).find(|o| ![0x50, 0x70, 0x00].contains(&rd(&mut f, *o))).unwrap();
        assert_eq!(probe, 0x10);
        let original = rd(&mut f, probe);
        assert_eq!(f.write(probe, &[CMD_CLEAR_STATUS]), FlashWrite::default(), "stays in array mode");
        assert_eq!(rd(&mut f, probe), original, "not RAM");
        assert_eq!(f.write(probe, &[CMD_READ_STATUS]).array_mode, Some(false));
        assert_eq!(rd(&mut f, probe), 0x00, "cleared status: flash");
        assert_eq!(f.write(probe, &[CMD_READ_ARRAY]).array_mode, Some(true));
        assert_eq!(rd(&mut f, probe), original);
    }

    #[test]
    fn program_and_erase_like_the_variable_driver() {
        let mut f = flash();
        // QemuFlashWrite: 0x10 then the byte, for each byte; then read array.
        for (i, b) in [0xaau8, 0x55].iter().enumerate() {
            let at = 0x2000 + i as u64;
            // Only the first command leaves array mode: the next starts from status mode.
            assert_eq!(f.write(at, &[CMD_PROGRAM]).array_mode, (i == 0).then_some(false));
            assert_eq!(f.write(at, &[*b]).dirty, Some(at as usize..at as usize + 1));
            assert_eq!(rd(&mut f, at), STATUS_READY, "status until read array");
        }
        assert_eq!(f.write(0x2001, &[CMD_READ_ARRAY]).array_mode, Some(true));
        assert_eq!(&f.store()[0x2000..0x2002], &[0xaa, 0x55]);
        // A word program through 0x40 with a 4-byte data access.
        f.write(0x3000, &[CMD_PROGRAM_ALT]);
        assert_eq!(f.write(0x3000, &[1, 2, 3, 4]).dirty, Some(0x3000..0x3004));
        // QemuFlashEraseBlock: 0x20, 0xd0 at the block's start.
        f.write(0x2000, &[CMD_READ_ARRAY]);
        f.write(0x2000, &[CMD_ERASE]);
        assert_eq!(f.write(0x2800, &[CMD_ERASE_CONFIRM]).dirty, Some(0x2000..0x3000));
        assert!(f.store()[0x2000..0x3000].iter().all(|b| *b == 0xff));
        assert_eq!(f.store()[0x3000], 1, "the next block is untouched");
    }

    #[test]
    fn identifiers_cfi_and_bad_sequences() {
        let mut f = flash();
        f.write(0, &[CMD_READ_ID]);
        assert_eq!((rd(&mut f, 0), rd(&mut f, 1), rd(&mut f, 2)), (MANUFACTURER_ID, DEVICE_ID, 0));
        f.write(0, &[CMD_CFI_QUERY]);
        let mut q = [0u8; 3];
        f.read(0x10, &mut q);
        assert_eq!(&q, b"QRY");
        assert_eq!(rd(&mut f, 0x27), 14, "16 KiB");
        assert_eq!((rd(&mut f, 0x2d), rd(&mut f, 0x2f)), (3, 0x10), "4 blocks of 16 * 256 bytes");
        // Erase set-up followed by anything but confirm: sequence error, nothing erased.
        f.write(0, &[CMD_ERASE]);
        assert_eq!(f.write(0, &[0x77]).dirty, None);
        assert_eq!(rd(&mut f, 0) & STATUS_SEQUENCE_ERROR, STATUS_SEQUENCE_ERROR);
        f.write(0, &[CMD_CLEAR_STATUS]);
        assert_eq!(rd(&mut f, 0x10), 0x8d);
        // Lock set-up is accepted; unknown commands go back to the array.
        f.write(0, &[CMD_LOCK_SETUP]);
        f.write(0, &[CMD_LOCK_SET]);
        assert_eq!(rd(&mut f, 0), STATUS_READY);
        assert_eq!(f.write(0, &[0x42]).array_mode, Some(true));
        // Program or erase beyond the end: nothing changes, no panic.
        f.write(0, &[CMD_PROGRAM]);
        assert_eq!(f.write(0x3fff, &[1, 2]).dirty, None);
        f.write(0, &[CMD_ERASE]);
        assert_eq!(f.write(u64::MAX, &[CMD_ERASE_CONFIRM]).dirty, None);
        f.write(0, &[CMD_READ_ARRAY]);
        let mut far = [0u8; 2];
        f.read(u64::MAX, &mut far);
        assert_eq!(far, [0xff; 2]);
        assert_eq!(f.write(0, &[]), FlashWrite::default());
    }

    #[test]
    fn geometry_is_checked() {
        assert_eq!(
            CfiFlash::new(vec![0u8; 0x1800], 0x1000).err(),
            Some(FlashError::Geometry { size: 0x1800, block: 0x1000 })
        );
        assert_eq!(CfiFlash::new(vec![0u8; 0], 0x1000).err(), Some(FlashError::Geometry { size: 0, block: 0x1000 }));
        assert_eq!(CfiFlash::new(vec![0u8; 0x1000], 0x300).err(), Some(FlashError::BlockSize(0x300)));
    }
}
