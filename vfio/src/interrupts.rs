//! Interrupts of an assigned device: the emulated MSI-X table, MSI, and INTx.
//!
//! Each guest vector is an eventfd from [`MsiVectors`] that the VMM wired to a KVM irqfd;
//! VFIO signals it directly, so after set-up no interrupt wakes the VMM. When the guest sets
//! MSI-X Enable, MSI-X is enabled on the host at once for the whole table with no eventfd
//! attached (-1: Linux 6.1 cannot grow an enabled MSI-X block, so every host vector is
//! allocated once); each vector's first unmask then only attaches its eventfd. Enabling at
//! once matters: a device may decide how to signal from its own MSI-X Enable bit long before
//! the guest unmasks a vector (QEMU's NVMe marks a completion queue's vector as used only if
//! MSI-X is on when the queue is created, and the guest's nvme driver enables the controller
//! before it requests the interrupt: enabling lazily at the first unmask lost every admin
//! completion of an NVMe SR-IOV VF). Guest masking only detaches the KVM route (irqfd): host
//! vectors are never freed on mask/unmask, and an interrupt that arrives while masked stays
//! in the eventfd until the route returns.

use std::os::unix::io::{AsRawFd, RawFd};

use pci::capability::msix::{MsixChange, MsixConfig, Table};
use pci::{InterruptError, MsiMessage, MsiVectors, VectorIndex};

use crate::config::AssignedConfig;
use crate::host::{HostDevice, HostError, IrqIndex};

/// pci's table model takes accesses of at most 8 bytes; wider ones are split.
const MAX_ACCESS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    #[error("enabling host interrupts failed")]
    EnableHost(#[source] HostError),
    #[error("{bdf}: updating guest interrupt routes failed")]
    Route {
        bdf: String,
        #[source]
        source: InterruptError,
    },
    #[error("{bdf}: vector {vector} has no eventfd (the VMM created {have} vectors)")]
    NoIrqfd { bdf: String, vector: u32, have: usize },
}

/// The INTx line's eventfds: `trigger` raises the guest's level-triggered GSI, `resample`
/// is signalled by KVM when the guest EOIs it (then VFIO unmasks the host line).
pub trait IntxLine: Send {
    fn trigger_fd(&self) -> RawFd;
    fn resample_fd(&self) -> RawFd;
}

/// Which interrupt mode the host device is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    None,
    Intx,
    Msi(u32),
    Msix,
}

pub struct Interrupts {
    bdf: String,
    vectors: Box<dyn MsiVectors>,
    intx: Option<Box<dyn IntxLine>>,
    /// The device's interrupt pin (0: no INTx).
    pin: u8,
    msix: Option<MsixConfig>,
    /// The guest's vector table (pure model from the pci crate: path B of the architecture).
    table: Option<Table>,
    /// Whether vector v has its eventfd attached on the host.
    wired: Vec<bool>,
    /// The route last given to the VMM for vector v.
    routes: Vec<Option<MsiMessage>>,
    mode: Mode,
    /// Host vectors enabled (MSI-X: table size, MSI: vector count).
    host_msix_count: u32,
}

impl Interrupts {
    pub fn new(bdf: &str, cfg: &AssignedConfig, vectors: Box<dyn MsiVectors>, intx: Option<Box<dyn IntxLine>>) -> Self {
        let msix = cfg.msix().map(|m| m.config());
        let table = msix.and_then(|m| Table::new(m.vectors).ok());
        let n = table.as_ref().map_or(0, |t| t.len());
        Self {
            bdf: bdf.into(),
            vectors,
            intx,
            pin: cfg.interrupt_pin(),
            msix,
            table,
            wired: vec![false; n],
            routes: vec![None; Self::vectors_needed(cfg)],
            mode: Mode::None,
            host_msix_count: 0,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of vectors the VMM must provide in [`MsiVectors`] for this device.
    pub fn vectors_needed(cfg: &AssignedConfig) -> usize {
        let msix = cfg.msix().map_or(0, |m| usize::from(m.config().vectors));
        msix.max(cfg.msi().map_or(0, |m| usize::from(m.vectors())))
    }

    fn fd(&self, v: u32) -> Result<RawFd, InterruptsError> {
        self.vectors.irqfd(VectorIndex(v as u16)).map(|e| e.as_raw_fd()).ok_or(InterruptsError::NoIrqfd {
            bdf: self.bdf.clone(),
            vector: v,
            have: self.vectors.len(),
        })
    }

    fn route_err(&self) -> impl Fn(InterruptError) -> InterruptsError + '_ {
        move |source| InterruptsError::Route { bdf: self.bdf.clone(), source }
    }

    /// Enables INTx on the host (device start and after MSI/MSI-X is turned off).
    pub fn enable_intx(&mut self, host: &dyn HostDevice) -> Result<(), InterruptsError> {
        let Some(line) = self.intx.as_ref() else { return Ok(()) };
        if self.pin == 0 || host.irq_count(IrqIndex::Intx) == 0 {
            return Ok(());
        }
        host.set_irqs(IrqIndex::Intx, 0, &[Some(line.trigger_fd())]).map_err(InterruptsError::EnableHost)?;
        host.set_intx_unmask_fd(line.resample_fd()).map_err(InterruptsError::EnableHost)?;
        self.mode = Mode::Intx;
        Ok(())
    }

    /// VFIO refuses MSI/MSI-X while INTx is enabled: leave the current mode first.
    fn leave_mode(&mut self, host: &dyn HostDevice) -> Result<(), InterruptsError> {
        match self.mode {
            Mode::None => {}
            Mode::Intx => host.disable_irqs(IrqIndex::Intx).map_err(InterruptsError::EnableHost)?,
            Mode::Msi(_) => host.disable_irqs(IrqIndex::Msi).map_err(InterruptsError::EnableHost)?,
            Mode::Msix => {
                // Host MSI-X may be off although the guest enabled it (the device reports
                // no MSI-X IRQs to VFIO, or enabling failed), and VFIO refuses to disable
                // what is not enabled (EINVAL).
                if self.host_msix_count > 0 {
                    host.disable_irqs(IrqIndex::Msix).map_err(InterruptsError::EnableHost)?;
                }
                self.wired.iter_mut().for_each(|w| *w = false);
                self.host_msix_count = 0;
            }
        }
        self.mode = Mode::None;
        Ok(())
    }

    fn set_route(&mut self, v: u32, msg: Option<MsiMessage>) -> Result<bool, InterruptsError> {
        let Some(slot) = self.routes.get_mut(v as usize) else { return Ok(false) };
        if *slot == msg {
            return Ok(false);
        }
        *slot = msg;
        self.vectors
            .set_route(VectorIndex(v as u16), msg)
            .map_err(|source| InterruptsError::Route { bdf: self.bdf.clone(), source })?;
        Ok(true)
    }

    fn clear_routes(&mut self) -> Result<(), InterruptsError> {
        let mut changed = false;
        for v in 0..self.routes.len() as u32 {
            changed |= self.set_route(v, None)?;
        }
        if changed {
            self.vectors.commit().map_err(self.route_err())?;
        }
        Ok(())
    }

    /// The guest changed the MSI capability.
    pub fn update_msi(&mut self, host: &dyn HostDevice, cfg: &AssignedConfig) -> Result<(), InterruptsError> {
        let Some(msi) = cfg.msi() else { return Ok(()) };
        if matches!(self.mode, Mode::Msix) {
            return Ok(());
        }
        let space = cfg.space();
        if !msi.enabled(space) {
            if let Mode::Msi(_) = self.mode {
                self.clear_routes()?;
                self.leave_mode(host)?;
                self.enable_intx(host)?;
            }
            return Ok(());
        }
        let vectors = u32::from(msi.enabled_vectors(space))
            .min(host.irq_count(IrqIndex::Msi).max(1))
            .min(self.routes.len() as u32);
        // Routes first, so the first interrupt after enabling lands.
        let routes = msi.routes(space);
        let mut changed = false;
        for v in 0..self.routes.len() as u32 {
            let msg = if v < vectors { routes.get(v as usize).copied().flatten() } else { None };
            changed |= self.set_route(v, msg)?;
        }
        if changed {
            self.vectors.commit().map_err(self.route_err())?;
        }
        if self.mode != Mode::Msi(vectors) {
            self.leave_mode(host)?;
            let fds = (0..vectors).map(|v| self.fd(v).map(Some)).collect::<Result<Vec<_>, _>>()?;
            host.set_irqs(IrqIndex::Msi, 0, &fds).map_err(InterruptsError::EnableHost)?;
            self.mode = Mode::Msi(vectors);
        }
        Ok(())
    }

    /// The guest changed the MSI-X control register (enable, function mask).
    pub fn update_msix_control(&mut self, host: &dyn HostDevice, cfg: &AssignedConfig) -> Result<(), InterruptsError> {
        let Some((enabled, function_mask)) = cfg.msix().map(|m| m.control(cfg.space())) else { return Ok(()) };
        if !enabled && self.mode == Mode::Msix {
            if let Some(t) = self.table.as_mut() {
                t.set_control(false, function_mask);
            }
            self.clear_routes()?;
            self.leave_mode(host)?;
            return self.enable_intx(host);
        }
        if enabled && self.mode != Mode::Msix {
            if let Mode::Msi(_) = self.mode {
                self.clear_routes()?;
            }
            self.leave_mode(host)?;
            self.mode = Mode::Msix;
            self.enable_host_msix(host, None)?;
        }
        let change = match self.table.as_mut() {
            Some(t) => t.set_control(enabled, function_mask),
            None => return Ok(()),
        };
        self.apply(host, change)
    }

    /// Applies a table change: routes (one commit), host eventfds for first unmasks, and a
    /// one-shot signal for vectors unmasked with their pending bit set.
    fn apply(&mut self, host: &dyn HostDevice, change: MsixChange) -> Result<(), InterruptsError> {
        if self.mode != Mode::Msix || change.is_empty() {
            return Ok(());
        }
        let mut changed = false;
        let mut to_wire = Vec::new();
        for (v, msg) in change.routes {
            let v = u32::from(v.0);
            changed |= self.set_route(v, msg)?;
            if msg.is_some() && !self.wired.get(v as usize).copied().unwrap_or(true) {
                to_wire.push(v);
            }
        }
        if changed {
            self.vectors.commit().map_err(self.route_err())?;
        }
        for v in to_wire {
            self.wire(host, v)?;
        }
        for v in change.fire {
            self.vectors.trigger(v).map_err(self.route_err())?;
        }
        Ok(())
    }

    /// Enables MSI-X on the host for the whole table, every vector without an eventfd except
    /// `first` (vector, fd) if given.
    fn enable_host_msix(&mut self, host: &dyn HostDevice, first: Option<(u32, RawFd)>) -> Result<(), InterruptsError> {
        let count = (self.wired.len() as u32).min(host.irq_count(IrqIndex::Msix));
        if count == 0 {
            return Ok(());
        }
        let mut fds = vec![None; count as usize];
        if let Some(slot) = first.and_then(|(v, _)| fds.get_mut(v as usize)) {
            *slot = first.map(|(_, fd)| fd);
        }
        host.set_irqs(IrqIndex::Msix, 0, &fds).map_err(InterruptsError::EnableHost)?;
        self.host_msix_count = count;
        log::debug!("{}: MSI-X enabled on the host ({count} vectors)", self.bdf);
        Ok(())
    }

    /// Attaches vector v's eventfd on the host (first unmask of v).
    fn wire(&mut self, host: &dyn HostDevice, v: u32) -> Result<(), InterruptsError> {
        let fd = self.fd(v)?;
        if self.host_msix_count == 0 {
            // The enable at the guest's MSI-X Enable did not happen (it failed): try again.
            self.enable_host_msix(host, Some((v, fd)))?;
            if self.host_msix_count == 0 {
                return Ok(());
            }
        } else {
            host.set_irqs(IrqIndex::Msix, v, &[Some(fd)]).map_err(InterruptsError::EnableHost)?;
        }
        log::debug!("{}: MSI-X vector {v} enabled on the host", self.bdf);
        if let Some(w) = self.wired.get_mut(v as usize) {
            *w = true;
        }
        Ok(())
    }

    /// Guest read of the MSI-X table at `offset` (relative to the table start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(t) = self.table.as_ref() else { return };
        for (i, chunk) in data.chunks_mut(MAX_ACCESS).enumerate() {
            if let Some(off) = offset.checked_add((i * MAX_ACCESS) as u64) {
                t.read(off, chunk);
            }
        }
    }

    /// Guest write to the MSI-X table; out-of-range accesses are dropped (pci's Table checks
    /// every bound), wider-than-qword ones split.
    pub fn write_table(&mut self, host: &dyn HostDevice, offset: u64, data: &[u8]) {
        let mut total = MsixChange::default();
        let Some(t) = self.table.as_mut() else { return };
        for (i, chunk) in data.chunks(MAX_ACCESS).enumerate() {
            let Some(off) = offset.checked_add((i * MAX_ACCESS) as u64) else { break };
            let c = t.write(off, chunk);
            total.routes.extend(c.routes);
            total.fire.extend(c.fire);
        }
        if let Err(e) = self.apply(host, total) {
            self.warn_once(format_args!("MSI-X update failed: {e}"));
        }
    }

    /// Guest read of the PBA. Host vectors are never masked at the device (masking detaches
    /// KVM's irqfd instead), so pending interrupts wait in their eventfds, not in the PBA.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        match self.table.as_ref() {
            Some(t) => t.read_pba(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Guest-caused interrupt errors (rate-limited).
    fn warn_once(&self, args: std::fmt::Arguments<'_>) {
        ratelog::warn_limited!("{}: {args}", self.bdf);
    }

    /// Guest reset: everything off, entries masked, INTx back on.
    pub fn reset(&mut self, host: &dyn HostDevice) -> Result<(), InterruptsError> {
        self.clear_routes()?;
        self.leave_mode(host)?;
        self.table = self.msix.and_then(|m| Table::new(m.vectors).ok());
        self.enable_intx(host)
    }

    /// Releases the host vectors (device teardown).
    pub fn shutdown(&mut self, host: &dyn HostDevice) {
        let _ = self.clear_routes();
        if let Err(e) = self.leave_mode(host) {
            log::warn!("{}: disabling interrupts at teardown: {e}", self.bdf);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{sample_config, sample_sizes};
    use crate::config::RomOptions;
    use crate::host::{FakeHost, IrqCall};
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    /// Each route change: vector and message (`None`: route removed).
    pub type RouteLog = Arc<Mutex<Vec<(u16, Option<MsiMessage>)>>>;

    /// Records routes and commits like the KVM implementation would see them.
    #[derive(Clone, Default)]
    pub struct Recorder {
        pub routes: RouteLog,
        pub commits: Arc<Mutex<u32>>,
    }

    pub struct FakeVectors {
        fds: Vec<EventFd>,
        rec: Recorder,
    }

    impl FakeVectors {
        pub fn new(n: usize, rec: Recorder) -> Self {
            Self { fds: (0..n).map(|_| EventFd::new(0).unwrap()).collect(), rec }
        }
    }

    impl MsiVectors for FakeVectors {
        fn len(&self) -> usize {
            self.fds.len()
        }
        fn irqfd(&self, v: VectorIndex) -> Option<&EventFd> {
            self.fds.get(v.0 as usize)
        }
        fn set_route(&mut self, v: VectorIndex, msg: Option<MsiMessage>) -> Result<(), InterruptError> {
            if v.0 as usize >= self.fds.len() {
                return Err(InterruptError::NoSuchVector(v));
            }
            self.rec.routes.lock().unwrap().push((v.0, msg));
            Ok(())
        }
        fn commit(&mut self) -> Result<(), InterruptError> {
            *self.rec.commits.lock().unwrap() += 1;
            Ok(())
        }
    }

    struct Line(EventFd, EventFd);
    impl IntxLine for Line {
        fn trigger_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
        fn resample_fd(&self) -> RawFd {
            self.1.as_raw_fd()
        }
    }

    fn setup() -> (FakeHost, AssignedConfig, Interrupts, Recorder) {
        let host = FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 4]);
        let cfg = AssignedConfig::new("t", &sample_config(), sample_sizes(), RomOptions::default()).unwrap();
        let rec = Recorder::default();
        let n = Interrupts::vectors_needed(&cfg);
        let line = Line(EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        let irq = Interrupts::new("t", &cfg, Box::new(FakeVectors::new(n, rec.clone())), Some(Box::new(line)));
        (host, cfg, irq, rec)
    }

    fn entry(addr: u32, data: u32, masked: bool) -> Vec<u8> {
        [addr, 0, data, masked as u32].iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn set_irq_calls(host: &FakeHost) -> Vec<IrqCall> {
        host.irq_calls.lock().unwrap().clone()
    }

    #[test]
    fn msix_lazy_enable_and_mask_storm() {
        let (host, mut cfg, mut irq, rec) = setup();
        irq.enable_intx(&host).unwrap();
        cfg.write(0x70 / 4, 2, &[0x00, 0x80]);
        irq.update_msix_control(&host, &cfg).unwrap();
        assert_eq!(set_irq_calls(&host)[2], IrqCall::Disable(IrqIndex::Intx));
        // The guest's MSI-X Enable puts the host in MSI-X mode at once, no eventfd attached.
        assert_eq!(set_irq_calls(&host)[3], IrqCall::Set { index: IrqIndex::Msix, start: 0, fds: vec![None; 4] });
        assert_eq!(set_irq_calls(&host).len(), 4);
        irq.write_table(&host, 16, &entry(0xfee0_0000, 0x31, false));
        let fd = |v: u16| irq.vectors.irqfd(VectorIndex(v)).map(|e| e.as_raw_fd());
        assert_eq!(set_irq_calls(&host)[4], IrqCall::Set { index: IrqIndex::Msix, start: 1, fds: vec![fd(1)] });
        assert_eq!(
            rec.routes.lock().unwrap().last(),
            Some(&(1, Some(MsiMessage { address: 0xfee0_0000, data: 0x31 })))
        );
        // 1000 mask/unmask cycles: routes follow, the host is not touched again.
        for i in 0..1000 {
            irq.write_table(&host, 16 + 12, &[(i % 2 == 0) as u8, 0, 0, 0]);
        }
        assert_eq!(set_irq_calls(&host).len(), 5);
        assert!(rec.routes.lock().unwrap().last().unwrap().1.is_some());
        // Second vector: one more single-vector attach.
        irq.write_table(&host, 32, &entry(0xfee0_0000, 0x32, false));
        let fd2 = irq.vectors.irqfd(VectorIndex(2)).map(|e| e.as_raw_fd());
        assert_eq!(set_irq_calls(&host)[5], IrqCall::Set { index: IrqIndex::Msix, start: 2, fds: vec![fd2] });
        // Function mask routes everything off without touching the host.
        cfg.write(0x70 / 4, 3, &[0xc0]);
        irq.update_msix_control(&host, &cfg).unwrap();
        assert!(irq.routes.iter().all(|r| r.is_none()));
        assert_eq!(set_irq_calls(&host).len(), 6);
        // Disable: host MSI-X off, INTx back.
        cfg.write(0x70 / 4, 3, &[0x00]);
        irq.update_msix_control(&host, &cfg).unwrap();
        let calls = set_irq_calls(&host);
        assert_eq!(calls[6], IrqCall::Disable(IrqIndex::Msix));
        assert!(matches!(calls[7], IrqCall::Set { index: IrqIndex::Intx, .. }));
        assert_eq!(irq.mode(), Mode::Intx);
    }

    #[test]
    fn msix_enabled_but_never_unmasked_is_on_at_the_host_and_off_at_shutdown() {
        let (host, mut cfg, mut irq, _) = setup();
        cfg.write(0x70 / 4, 2, &[0x00, 0x80]);
        irq.update_msix_control(&host, &cfg).unwrap();
        assert_eq!(irq.mode(), Mode::Msix);
        assert!(set_irq_calls(&host).contains(&IrqCall::Set { index: IrqIndex::Msix, start: 0, fds: vec![None; 4] }));
        irq.shutdown(&host);
        assert_eq!(set_irq_calls(&host).last(), Some(&IrqCall::Disable(IrqIndex::Msix)));
        assert_eq!(irq.mode(), Mode::None);
    }

    #[test]
    fn msix_the_host_cannot_enable_is_never_disabled() {
        // VFIO reports no MSI-X IRQs: nothing is enabled, so nothing may be disabled (VFIO
        // would say EINVAL), and an unmask does not try either.
        let host = FakeHost::new(&sample_config(), sample_sizes(), [1, 8, 0]);
        let mut cfg = AssignedConfig::new("t", &sample_config(), sample_sizes(), RomOptions::default()).unwrap();
        let n = Interrupts::vectors_needed(&cfg);
        let mut irq = Interrupts::new("t", &cfg, Box::new(FakeVectors::new(n, Recorder::default())), None);
        cfg.write(0x70 / 4, 2, &[0x00, 0x80]);
        irq.update_msix_control(&host, &cfg).unwrap();
        irq.write_table(&host, 16, &entry(0xfee0_0000, 0x31, false));
        irq.shutdown(&host);
        assert!(set_irq_calls(&host)
            .iter()
            .all(|c| !matches!(c, IrqCall::Set { index: IrqIndex::Msix, .. } | IrqCall::Disable(IrqIndex::Msix))));
        assert_eq!(irq.mode(), Mode::None);
    }

    #[test]
    fn table_bounds() {
        let (host, _cfg, mut irq, _) = setup();
        irq.write_table(&host, 63, &[1, 2]);
        irq.write_table(&host, u64::MAX, &[1]);
        let mut b = [0u8; 8];
        irq.read_table(60, &mut b[..4]);
        assert_eq!(&b[..4], &[1, 0, 0, 0]);
        irq.read_table(60, &mut b);
        assert_eq!(b, [0xff; 8], "a read running off the table end is all-ones");
        irq.read_table(u64::MAX - 2, &mut b);
        assert_eq!(b, [0xff; 8]);
        irq.read_table(12, &mut b[..4]);
        assert_eq!(&b[..4], &[1, 0, 0, 0], "entries start masked");
    }

    #[test]
    fn msi_multi_message() {
        let (host, mut cfg, mut irq, rec) = setup();
        cfg.write(0x54 / 4, 0, &0xfee0_2000u32.to_le_bytes());
        cfg.write(0x5c / 4, 0, &[0x40, 0x00]);
        cfg.write(0x60 / 4, 0, &[0x02, 0, 0, 0]); // mask vector 1
        cfg.write(0x50 / 4, 2, &[0x21, 0x00]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(irq.mode(), Mode::Msi(4));
        let routes = rec.routes.lock().unwrap().clone();
        assert!(routes.contains(&(3, Some(MsiMessage { address: 0xfee0_2000, data: 0x43 }))));
        assert!(!routes.iter().any(|(v, m)| *v == 1 && m.is_some()));
        assert!(
            matches!(&set_irq_calls(&host)[..], [IrqCall::Set { index: IrqIndex::Msi, start: 0, fds }] if fds.len() == 4)
        );
        cfg.write(0x50 / 4, 2, &[0x00]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(set_irq_calls(&host)[1], IrqCall::Disable(IrqIndex::Msi));
    }

    /// A device like e1000e: one MSI vector, 64-bit address, no per-vector mask, and INTx.
    /// The sequence Linux's MSI set-up and affinity changes produce.
    #[test]
    fn msi_single_vector_64bit_from_intx_and_back() {
        let mut dump = sample_config();
        dump[0x52..0x54].copy_from_slice(&0x0080u16.to_le_bytes()); // 64-bit, MMC=0, no PVM
        let host = FakeHost::new(&dump, sample_sizes(), [1, 1, 4]);
        let mut cfg = AssignedConfig::new("t", &dump, sample_sizes(), RomOptions::default()).unwrap();
        let rec = Recorder::default();
        let n = Interrupts::vectors_needed(&cfg);
        let line = Line(EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        let mut irq = Interrupts::new("t", &cfg, Box::new(FakeVectors::new(n, rec.clone())), Some(Box::new(line)));
        irq.enable_intx(&host).unwrap();
        assert_eq!(irq.mode(), Mode::Intx);
        let fd0 = irq.vectors.irqfd(VectorIndex(0)).map(|e| e.as_raw_fd());

        // Address (both halves) and data first, then enable with MME=3: the device has one
        // vector, so one is all it gets and the data is used as written.
        cfg.write(0x54 / 4, 0, &0xfee0_1000u32.to_le_bytes());
        cfg.write(0x58 / 4, 0, &0u32.to_le_bytes());
        cfg.write(0x5c / 4, 0, &[0x41, 0x00]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(set_irq_calls(&host).len(), 2, "nothing changes on the host before the enable bit");
        cfg.write(0x50 / 4, 2, &[0x31]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(irq.mode(), Mode::Msi(1));
        assert_eq!(
            set_irq_calls(&host)[2..],
            [IrqCall::Disable(IrqIndex::Intx), IrqCall::Set { index: IrqIndex::Msi, start: 0, fds: vec![fd0] }],
            "INTx off before MSI on (VFIO refuses both at once), one host vector"
        );
        assert_eq!(
            rec.routes.lock().unwrap().last(),
            Some(&(0, Some(MsiMessage { address: 0xfee0_1000, data: 0x41 })))
        );

        // Linux moves the interrupt (new vector, then a destination above 255 in the high
        // address) with MSI enabled: only the KVM route follows, the host is not touched.
        cfg.write(0x5c / 4, 0, &[0x42, 0x00]);
        irq.update_msi(&host, &cfg).unwrap();
        cfg.write(0x58 / 4, 0, &0x0000_0100u32.to_le_bytes());
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(set_irq_calls(&host).len(), 4);
        let routes = rec.routes.lock().unwrap().clone();
        assert_eq!(routes[routes.len() - 2], (0, Some(MsiMessage { address: 0xfee0_1000, data: 0x42 })));
        assert_eq!(routes.last(), Some(&(0, Some(MsiMessage { address: 0x100_fee0_1000, data: 0x42 }))));
        // An unchanged rewrite neither re-routes nor commits.
        let commits = *rec.commits.lock().unwrap();
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!((rec.routes.lock().unwrap().len(), *rec.commits.lock().unwrap()), (routes.len(), commits));

        // Disable (driver unload, pci=nomsi fallback): route gone, host MSI off, INTx back.
        cfg.write(0x50 / 4, 2, &[0x00]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(rec.routes.lock().unwrap().last(), Some(&(0, None)));
        let calls = set_irq_calls(&host);
        assert_eq!(calls[4], IrqCall::Disable(IrqIndex::Msi));
        assert!(matches!(calls[5], IrqCall::Set { index: IrqIndex::Intx, .. }));
        assert_eq!(irq.mode(), Mode::Intx);
        // Enabled again (driver reload): MSI comes back with the same single vector.
        cfg.write(0x50 / 4, 2, &[0x01]);
        irq.update_msi(&host, &cfg).unwrap();
        assert_eq!(irq.mode(), Mode::Msi(1));
        assert_eq!(set_irq_calls(&host).last(), Some(&IrqCall::Set { index: IrqIndex::Msi, start: 0, fds: vec![fd0] }));
    }
}
