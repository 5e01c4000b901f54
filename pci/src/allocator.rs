//! Guest address allocation for BARs and root port windows, over vm-allocator.
//!
//! Three pools: the 32-bit MMIO hole, the 64-bit MMIO window above RAM (sized from the
//! host's physical address bits, so a 64 GiB BAR fits), and I/O ports. Every BAR is
//! naturally aligned. A root port's windows are sized to what sits behind it plus an
//! optional reserve, and the BARs behind it are carved out of those windows.

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::bdf::Bdf;
use crate::bridge::{BridgeWindows, Window, IO_WINDOW_GRANULE, MEM_WINDOW_GRANULE};
use crate::device::{BarIndex, BarKind};

/// Which pool a request is served from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Mmio32,
    Mmio64,
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("PCI {pool:?} window {base:#x}+{size:#x} is invalid")]
    CreatePool {
        pool: Pool,
        base: u64,
        size: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error(
        "{bdf}: no space for BAR {bar:?} ({size:#x} bytes, {kind:?}) in the {pool:?} window; \
             give the VM a larger window or fewer/smaller devices"
    )]
    AllocateBar {
        bdf: Bdf,
        bar: BarIndex,
        kind: BarKind,
        size: u64,
        pool: Pool,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("{port}: no space for a {size:#x}-byte {pool:?} bridge window")]
    AllocateWindow {
        port: Bdf,
        pool: Pool,
        size: u64,
        #[source]
        source: vm_allocator::Error,
    },
    #[error("{bdf}: BAR {bar:?} size {size:#x} is not a power of two")]
    BarSize { bdf: Bdf, bar: BarIndex, size: u64 },
    #[error("{port}: the devices behind it need {size:#x} bytes of {pool:?} space, more than can be addressed")]
    WindowSize { port: Bdf, pool: Pool, size: u64 },
}

/// The address windows the VMM gives the root complex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    pub mmio32: Window,
    pub mmio64: Window,
    pub io: Window,
}

/// The 64-bit MMIO window: from `start` (after RAM) to the top of the guest physical
/// address space the CPU can reach with `phys_bits` (CPUID 0x8000_0008 EAX[7:0]). Capped
/// at 2^48 to stay inside 4-level paging's reach.
pub fn mmio64_window(start: u64, phys_bits: u8) -> Window {
    let top = 1u64 << phys_bits.clamp(32, 48);
    Window { base: start, size: top.saturating_sub(start) }
}

/// One BAR to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRequest {
    pub bdf: Bdf,
    pub bar: BarIndex,
    pub kind: BarKind,
    pub size: u64,
}

/// Where a BAR went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarPlacement {
    pub bdf: Bdf,
    pub bar: BarIndex,
    pub addr: u64,
}

/// Extra space to leave in a root port's windows (e.g. for a device re-sizing its BARs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowReserve {
    pub mem: u64,
    pub prefetch: u64,
    pub io: u64,
}

/// A root port's windows and the BARs placed inside them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortLayout {
    pub windows: BridgeWindows,
    pub bars: Vec<BarPlacement>,
}

/// Which pool and bridge window a BAR belongs in. 64-bit prefetchable BARs go high; a
/// bridge's non-prefetchable window is 32-bit only, so every other memory BAR goes low
/// (PCI-to-PCI bridge spec 4.1).
pub fn pool_for(kind: BarKind) -> Pool {
    match kind {
        BarKind::Io => Pool::Io,
        BarKind::Mem64 { prefetchable: true } => Pool::Mmio64,
        _ => Pool::Mmio32,
    }
}

/// One bridge window a root port needs: its pool, size, alignment, and where each BAR
/// behind the port sits inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    pub pool: Pool,
    pub size: u64,
    pub align: u64,
    /// (request, offset from the window base)
    pub bars: Vec<(BarRequest, u64)>,
}

/// A root port's windows, sized before any address is known, so the VMM can carve them
/// from whichever allocator owns its address space ([`BarAllocator`] or its own).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub windows: Vec<WindowPlan>,
}

impl PortPlan {
    /// Sizes the windows for `bars` plus `reserve`: each window holds its BARs largest
    /// first, so with power-of-two sizes every BAR is naturally aligned inside a window
    /// aligned to the largest one; sizes round up to the bridge's window granule.
    pub fn new(port: Bdf, bars: &[BarRequest], reserve: WindowReserve) -> Result<Self, AllocError> {
        let mut windows = Vec::new();
        for (pool, granule, extra) in [
            (Pool::Mmio32, MEM_WINDOW_GRANULE, reserve.mem),
            (Pool::Mmio64, MEM_WINDOW_GRANULE, reserve.prefetch),
            (Pool::Io, IO_WINDOW_GRANULE, reserve.io),
        ] {
            let mut group: Vec<BarRequest> = bars.iter().filter(|b| pool_for(b.kind) == pool).copied().collect();
            if let Some(b) = group.iter().find(|b| !b.size.is_power_of_two()) {
                return Err(AllocError::BarSize { bdf: b.bdf, bar: b.bar, size: b.size });
            }
            group.sort_by_key(|b| std::cmp::Reverse(b.size));
            let too_big = AllocError::WindowSize { port, pool, size: u64::MAX };
            let total = group.iter().try_fold(extra, |acc, b| acc.checked_add(b.size));
            let size = total.and_then(|t| t.checked_next_multiple_of(granule)).ok_or(too_big)?;
            if size == 0 {
                continue;
            }
            let align = group.first().map_or(granule, |b| b.size.max(granule));
            let mut offset = 0;
            let mut placed = Vec::with_capacity(group.len());
            for b in group {
                placed.push((b, offset));
                offset += b.size;
            }
            windows.push(WindowPlan { pool, size, align, bars: placed });
        }
        Ok(Self { windows })
    }

    /// The layout once window `i` of [`Self::windows`] starts at `bases[i]` (a missing base
    /// leaves that window closed and its BARs unplaced).
    pub fn place(&self, bases: &[u64]) -> PortLayout {
        let mut layout = PortLayout::default();
        for (w, &base) in self.windows.iter().zip(bases) {
            let window = Window { base, size: w.size };
            for (b, off) in &w.bars {
                layout.bars.push(BarPlacement { bdf: b.bdf, bar: b.bar, addr: base.saturating_add(*off) });
            }
            match w.pool {
                Pool::Mmio32 => layout.windows.mem = Some(window),
                Pool::Mmio64 => layout.windows.prefetch = Some(window),
                Pool::Io => layout.windows.io = Some(window),
            }
        }
        layout
    }
}

pub struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    io: AddressAllocator,
}

impl BarAllocator {
    pub fn new(w: PciWindows) -> Result<Self, AllocError> {
        let make = |pool, win: Window| {
            AddressAllocator::new(win.base, win.size).map_err(|source| AllocError::CreatePool {
                pool,
                base: win.base,
                size: win.size,
                source,
            })
        };
        Ok(Self {
            mmio32: make(Pool::Mmio32, w.mmio32)?,
            mmio64: make(Pool::Mmio64, w.mmio64)?,
            io: make(Pool::Io, w.io)?,
        })
    }

    fn pool(&mut self, pool: Pool) -> &mut AddressAllocator {
        match pool {
            Pool::Mmio32 => &mut self.mmio32,
            Pool::Mmio64 => &mut self.mmio64,
            Pool::Io => &mut self.io,
        }
    }

    /// Places a BAR of a function on bus 0, naturally aligned.
    pub fn allocate_bar(&mut self, req: BarRequest) -> Result<u64, AllocError> {
        if !req.size.is_power_of_two() {
            return Err(AllocError::BarSize { bdf: req.bdf, bar: req.bar, size: req.size });
        }
        let pool = pool_for(req.kind);
        self.pool(pool).allocate(req.size, req.size, AllocPolicy::FirstMatch).map(|r| r.start()).map_err(|source| {
            AllocError::AllocateBar { bdf: req.bdf, bar: req.bar, kind: req.kind, size: req.size, pool, source }
        })
    }

    /// Sizes and allocates a root port's windows for the BARs behind it (plus `reserve`)
    /// and places those BARs inside them.
    pub fn allocate_port(
        &mut self,
        port: Bdf,
        bars: &[BarRequest],
        reserve: WindowReserve,
    ) -> Result<PortLayout, AllocError> {
        let plan = PortPlan::new(port, bars, reserve)?;
        let mut bases = Vec::with_capacity(plan.windows.len());
        for w in &plan.windows {
            let range = self
                .pool(w.pool)
                .allocate(w.size, w.align, AllocPolicy::FirstMatch)
                .map_err(|source| AllocError::AllocateWindow { port, pool: w.pool, size: w.size, source })?;
            bases.push(range.start());
        }
        Ok(plan.place(&bases))
    }

    /// Returns a BAR's or window's range to its pool (device detach).
    pub fn free(&mut self, pool: Pool, window: Window) -> Result<(), vm_allocator::Error> {
        let last = window.last().ok_or(vm_allocator::Error::InvalidSize(window.size))?;
        let range = RangeInclusive::new(window.base, last)?;
        self.pool(pool).free(&range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn windows() -> PciWindows {
        PciWindows {
            mmio32: Window { base: 0xc000_0000, size: 0x2000_0000 },
            mmio64: mmio64_window(4 * GIB, 40),
            io: Window { base: 0x1000, size: 0xf000 },
        }
    }

    fn req(bus: u8, bar: u8, kind: BarKind, size: u64) -> BarRequest {
        BarRequest { bdf: Bdf::from_devfn(0, bus, 0), bar: BarIndex(bar), kind, size }
    }

    #[test]
    fn natural_alignment_on_bus0() {
        let mut a = BarAllocator::new(windows()).unwrap();
        let x = a.allocate_bar(req(0, 0, BarKind::Mem32 { prefetchable: false }, 0x1000)).unwrap();
        let y = a.allocate_bar(req(0, 1, BarKind::Mem32 { prefetchable: false }, 0x10_0000)).unwrap();
        assert_eq!(x, 0xc000_0000);
        assert_eq!(y % 0x10_0000, 0);
        let io = a.allocate_bar(req(0, 2, BarKind::Io, 0x20)).unwrap();
        assert_eq!(io, 0x1000);
        let hi = a.allocate_bar(req(0, 3, BarKind::Mem64 { prefetchable: true }, 64 * GIB)).unwrap();
        assert_eq!(hi % (64 * GIB), 0);
        assert!(hi >= 4 * GIB);
    }

    #[test]
    fn port_with_a_64_gib_bar() {
        let mut a = BarAllocator::new(windows()).unwrap();
        let port: Bdf = "00:01.0".parse().unwrap();
        let bars = [
            req(1, 0, BarKind::Mem32 { prefetchable: false }, 0x4000),
            req(1, 1, BarKind::Mem64 { prefetchable: true }, 64 * GIB),
            req(1, 3, BarKind::Mem64 { prefetchable: true }, 32 << 20),
            req(1, 5, BarKind::Io, 0x80),
        ];
        let l = a.allocate_port(port, &bars, WindowReserve::default()).unwrap();
        let pref = l.windows.prefetch.unwrap();
        assert_eq!(pref.size, 64 * GIB + (32 << 20));
        assert_eq!(pref.base % (64 * GIB), 0);
        assert_eq!(l.windows.mem.unwrap().size, MEM_WINDOW_GRANULE);
        assert_eq!(l.windows.io.unwrap().size, IO_WINDOW_GRANULE);
        for p in &l.bars {
            let b = bars.iter().find(|b| b.bar == p.bar).unwrap();
            assert_eq!(p.addr % b.size, 0, "{:?} naturally aligned", p.bar);
            let w = match pool_for(b.kind) {
                Pool::Mmio32 => l.windows.mem,
                Pool::Mmio64 => l.windows.prefetch,
                Pool::Io => l.windows.io,
            }
            .unwrap();
            assert!(w.contains(p.addr, b.size));
        }
        // A second port gets disjoint windows.
        let l2 = a
            .allocate_port("00:02.0".parse().unwrap(), &bars[..1], WindowReserve { mem: 3 << 20, ..Default::default() })
            .unwrap();
        assert_eq!(l2.windows.mem.unwrap().size, 4 << 20);
        assert!(l2.windows.prefetch.is_none() && l2.windows.io.is_none());
        assert_ne!(l2.windows.mem.unwrap().base, l.windows.mem.unwrap().base);
    }

    #[test]
    fn port_plan_places_bars_at_any_window_base() {
        let port: Bdf = "00:1f.0".parse().unwrap();
        let mem32 = BarKind::Mem32 { prefetchable: false };
        let bars = [
            req(1, 0, mem32, 0x4000),
            req(1, 1, BarKind::Io, 0x100),
            req(1, 2, BarKind::Mem64 { prefetchable: true }, 16 * GIB),
            req(1, 4, mem32, 0x10_0000),
        ];
        let plan = PortPlan::new(port, &bars, WindowReserve::default()).unwrap();
        let shape: Vec<_> = plan.windows.iter().map(|w| (w.pool, w.size, w.align)).collect();
        assert_eq!(
            shape,
            vec![
                (Pool::Mmio32, 2 << 20, 1 << 20),
                (Pool::Mmio64, 16 * GIB, 16 * GIB),
                (Pool::Io, IO_WINDOW_GRANULE, IO_WINDOW_GRANULE),
            ]
        );
        let layout = plan.place(&[0xc040_0000, 16 * GIB, 0x3000]);
        let at = |bar: u8| layout.bars.iter().find(|p| p.bar.0 == bar).unwrap().addr;
        // Largest first inside each window.
        assert_eq!((at(4), at(0), at(2), at(1)), (0xc040_0000, 0xc050_0000, 16 * GIB, 0x3000));
        assert_eq!(layout.windows.mem.unwrap().size, 2 << 20);
        // Fewer bases than windows: the rest stay closed and their BARs unplaced.
        let partial = plan.place(&[0xc040_0000]);
        assert!(partial.windows.prefetch.is_none() && partial.windows.io.is_none());
        assert_eq!(partial.bars.len(), 2);
        // Sizes that overflow are an error, not a wrap.
        let huge = [req(1, 0, BarKind::Mem64 { prefetchable: true }, 1 << 63); 2];
        assert!(matches!(PortPlan::new(port, &huge, WindowReserve::default()), Err(AllocError::WindowSize { .. })));
    }

    #[test]
    fn clear_errors_when_full() {
        let mut a = BarAllocator::new(windows()).unwrap();
        let e = a.allocate_bar(req(3, 2, BarKind::Mem32 { prefetchable: false }, 1 << 30)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("0000:03:00.0") && msg.contains("BarIndex(2)") && msg.contains("Mmio32"), "{msg}");
        let e = a.allocate_bar(req(3, 2, BarKind::Io, 3)).unwrap_err();
        assert!(matches!(e, AllocError::BarSize { .. }));
        let small = PciWindows { mmio64: mmio64_window(4 * GIB, 36), ..windows() };
        let mut a = BarAllocator::new(small).unwrap();
        let e = a.allocate_port(
            "00:01.0".parse().unwrap(),
            &[req(1, 0, BarKind::Mem64 { prefetchable: true }, 64 * GIB)],
            WindowReserve::default(),
        );
        assert!(matches!(e, Err(AllocError::AllocateWindow { pool: Pool::Mmio64, .. })));
    }

    #[test]
    fn mmio64_window_from_phys_bits() {
        assert_eq!(mmio64_window(4 * GIB, 40), Window { base: 4 * GIB, size: (1 << 40) - 4 * GIB });
        assert_eq!(mmio64_window(4 * GIB, 60).end(), 1 << 48);
        assert_eq!(mmio64_window(1 << 40, 36).size, 0);
    }

    #[test]
    fn free_returns_space() {
        let mut a = BarAllocator::new(windows()).unwrap();
        let x = a.allocate_bar(req(0, 0, BarKind::Mem32 { prefetchable: false }, 0x2000_0000)).unwrap();
        assert!(a.allocate_bar(req(0, 1, BarKind::Mem32 { prefetchable: false }, 0x1000)).is_err());
        a.free(Pool::Mmio32, Window { base: x, size: 0x2000_0000 }).unwrap();
        assert!(a.allocate_bar(req(0, 1, BarKind::Mem32 { prefetchable: false }, 0x1000)).is_ok());
    }
}
