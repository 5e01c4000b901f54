//! CMOS RTC and NVRAM (MC146818) at ports 0x70/0x71, reading the host's UTC time.
//! Hand-rolled: vm-superio only has the ARM PL031 RTC. Guest writes to the clock (hwclock -w)
//! are kept as an offset from host time.

use std::time::{SystemTime, UNIX_EPOCH};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
// Memory size registers, as PC BIOSes (SeaBIOS, OVMF's fallback without fw_cfg) read them.
const REG_BASE_MEM_KIB: u8 = 0x15;
const REG_EXT_MEM_KIB: u8 = 0x17;
const REG_EXT_MEM_KIB_COPY: u8 = 0x30;
const REG_MEM_ABOVE_16M_64K: u8 = 0x34;
const REG_MEM_ABOVE_4G_64K: u8 = 0x5b;
const REG_CPU_COUNT_MINUS_1: u8 = 0x5f;

/// Register A: 32.768 kHz time base, 1024 Hz rate; update-in-progress never set.
const REG_A_DEFAULT: u8 = 0x26;
const REG_B_SET: u8 = 1 << 7;
const REG_B_DATA_MODE_BINARY: u8 = 1 << 2;
const REG_B_24_HOUR: u8 = 1 << 1;
/// Register D: valid RAM and time.
const REG_D_VRT: u8 = 1 << 7;

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) for days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: u32, // 1 = Sunday
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            // 1970-01-01 was a Thursday (weekday 5 with Sunday = 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u32,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xf)
}

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    now: fn() -> i64,
}

fn host_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    fn with_clock(now: fn() -> i64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = REG_A_DEFAULT;
        nvram[REG_B as usize] = REG_B_24_HOUR;
        nvram[REG_D as usize] = REG_D_VRT;
        Self { index: 0, nvram, offset: 0, now }
    }

    /// Fills in the memory size registers the way QEMU's PC does: conventional memory (KiB,
    /// at most 640), memory from 1 MiB up (KiB, at most 64 MiB), memory from 16 MiB to the
    /// end of RAM below 4 GiB (64 KiB units) and memory above 4 GiB (64 KiB units, 24 bits).
    pub fn set_memory_size(&mut self, below_4g: u64, above_4g: u64) {
        let base = (below_4g >> 10).min(640);
        let ext = (below_4g.saturating_sub(1 << 20) >> 10).min(0xffff);
        let above_16m = (below_4g.saturating_sub(16 << 20) >> 16).min(0xffff);
        let above_4g = (above_4g >> 16).min(0xff_ffff);
        self.set_le(REG_BASE_MEM_KIB, base, 2);
        self.set_le(REG_EXT_MEM_KIB, ext, 2);
        self.set_le(REG_EXT_MEM_KIB_COPY, ext, 2);
        self.set_le(REG_MEM_ABOVE_16M_64K, above_16m, 2);
        self.set_le(REG_MEM_ABOVE_4G_64K, above_4g, 3);
    }

    /// SeaBIOS also takes the CPU count from here (the larger of this and fw_cfg's).
    pub fn set_cpu_count(&mut self, vcpus: u8) {
        self.nvram[REG_CPU_COUNT_MINUS_1 as usize] = vcpus.saturating_sub(1);
    }

    fn set_le(&mut self, reg: u8, value: u64, bytes: usize) {
        for i in 0..bytes {
            self.nvram[reg as usize + i] = (value >> (8 * i)) as u8;
        }
    }

    fn binary(&self) -> bool {
        self.nvram[REG_B as usize] & REG_B_DATA_MODE_BINARY != 0
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        u32::from(if self.binary() { v } else { from_bcd(v) })
    }

    fn current(&self) -> DateTime {
        DateTime::from_unix((self.now)() + self.offset)
    }

    fn read_register(&self, reg: u8) -> u8 {
        // While SET is on, the guest sees what it wrote (it is updating the clock).
        let frozen = self.nvram[REG_B as usize] & REG_B_SET != 0;
        let t = self.current();
        let hour_value = |h: u32| {
            if self.nvram[REG_B as usize] & REG_B_24_HOUR != 0 {
                self.encode(h)
            } else {
                // 12-hour mode: 12, 1..11, with bit 7 for PM.
                let h12 = if h % 12 == 0 { 12 } else { h % 12 };
                self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
            }
        };
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR | REG_CENTURY
                if frozen =>
            {
                self.nvram[reg as usize]
            }
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => hour_value(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u32),
            REG_C => 0,
            _ => self.nvram[(reg & 0x7f) as usize],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_A => self.nvram[REG_A as usize] = value & 0x7f,
            REG_B => {
                let was_set = self.nvram[REG_B as usize] & REG_B_SET != 0;
                if !was_set && value & REG_B_SET != 0 {
                    // Freeze the current time, encoded in the new data mode, so partial
                    // updates read back consistently.
                    self.nvram[REG_B as usize] = value & !REG_B_SET;
                    self.freeze();
                }
                self.nvram[REG_B as usize] = value;
                if was_set && value & REG_B_SET == 0 {
                    self.commit_guest_time();
                }
            }
            REG_C | REG_D => {}
            _ => self.nvram[(reg & 0x7f) as usize] = value,
        }
    }

    fn freeze(&mut self) {
        let regs = [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY];
        let values: Vec<u8> = regs.iter().map(|r| self.read_register(*r)).collect();
        for (r, v) in regs.iter().zip(values) {
            self.nvram[*r as usize] = v;
        }
    }

    fn commit_guest_time(&mut self) {
        let n = &self.nvram;
        let raw_hour = n[REG_HOURS as usize];
        let hour = if n[REG_B as usize] & REG_B_24_HOUR != 0 {
            self.decode(raw_hour)
        } else {
            let h = self.decode(raw_hour & 0x7f) % 12;
            if raw_hour & 0x80 != 0 {
                h + 12
            } else {
                h
            }
        };
        let t = DateTime {
            year: i64::from(self.decode(n[REG_CENTURY as usize])) * 100 + i64::from(self.decode(n[REG_YEAR as usize])),
            month: self.decode(n[REG_MONTH as usize]).clamp(1, 12),
            day: self.decode(n[REG_DAY as usize]).clamp(1, 31),
            hour: hour.min(23),
            minute: self.decode(n[REG_MINUTES as usize]).min(59),
            second: self.decode(n[REG_SECONDS as usize]).min(59),
            weekday: 1,
        };
        self.offset = t.to_unix() - (self.now)();
        log::debug!("cmos: guest set the clock; offset from host time {}s", self.offset);
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl pci::BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [v]) => *v = self.index,
            (1, [v]) => *v = self.read_register(self.index),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            // Bit 7 of the index port is the NMI mask, not part of the index.
            (0, [v]) => self.index = v & 0x7f,
            (1, [v]) => self.write_register(self.index, *v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::BusDevice;

    // 2026-11-25 10:08:30 UTC, a Wednesday.
    const NOW: i64 = 1_795_601_310;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for d in [-1000, 0, 59, 10_957, 20_000, 60_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        let t = DateTime::from_unix(NOW);
        assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), (2026, 11, 25, 10, 8, 30));
        assert_eq!(t.weekday, 4);
        assert_eq!(t.to_unix(), NOW);
    }

    #[test]
    fn bcd_time_registers() {
        let mut c = Cmos::with_clock(|| NOW);
        assert_eq!(read(&mut c, REG_SECONDS), 0x30);
        assert_eq!(read(&mut c, REG_MINUTES), 0x08);
        assert_eq!(read(&mut c, REG_HOURS), 0x10);
        assert_eq!(read(&mut c, REG_DAY), 0x25);
        assert_eq!(read(&mut c, REG_MONTH), 0x11);
        assert_eq!(read(&mut c, REG_YEAR), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_D), REG_D_VRT);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "update in progress must stay clear");
    }

    #[test]
    fn memory_size_registers() {
        let mut c = Cmos::with_clock(|| NOW);
        c.set_memory_size(0x8000_0000, 6 << 30);
        c.set_cpu_count(4);
        let word = |c: &mut Cmos, r: u8| u32::from(read(c, r)) | (u32::from(read(c, r + 1)) << 8);
        assert_eq!(word(&mut c, 0x15), 640);
        assert_eq!(word(&mut c, 0x17), 0xffff);
        assert_eq!(word(&mut c, 0x30), 0xffff);
        // (2 GiB - 16 MiB) / 64 KiB, as OVMF and SeaBIOS read it back (+ 16 MiB).
        assert_eq!(word(&mut c, 0x34), (0x8000_0000 - (16 << 20)) >> 16);
        let high = word(&mut c, 0x5b) | (u32::from(read(&mut c, 0x5d)) << 16);
        assert_eq!(u64::from(high) << 16, 6 << 30);
        assert_eq!(read(&mut c, 0x5f), 3);
        // A small guest: 8 MiB.
        c.set_memory_size(8 << 20, 0);
        assert_eq!((word(&mut c, 0x17), word(&mut c, 0x34), read(&mut c, 0x5b)), (7 << 10, 0, 0));
    }

    #[test]
    fn binary_mode_and_guest_set_time() {
        let mut c = Cmos::with_clock(|| NOW);
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_24_HOUR | REG_B_DATA_MODE_BINARY | REG_B_SET]);
        assert_eq!(read(&mut c, REG_YEAR), 26);
        // Set the clock one hour ahead.
        c.write(0, &[REG_HOURS]);
        c.write(1, &[11]);
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_24_HOUR | REG_B_DATA_MODE_BINARY]);
        assert_eq!(c.offset, 3600);
        assert_eq!(read(&mut c, REG_HOURS), 11);
        // Index port masks the NMI bit; bad sizes read all-ones.
        c.write(0, &[0x80 | REG_MINUTES]);
        let mut b = [0u8];
        c.read(1, &mut b);
        assert_eq!(b[0], 8);
        let mut two = [0u8; 2];
        c.read(1, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }
}
