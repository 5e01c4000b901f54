//! One vCPU: its initial state (CPUID, MSRs, FPU, LAPIC, boot registers) and its KVM_RUN loop,
//! which hands port I/O and MMIO exits to the `pci::Bus`es.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::cpuid;
use super::vm::Vm;
use crate::boot::{cpu as boot_cpu, BootEntry};
use crate::stop::{StopNotifier, StopReason};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: RAM is cacheable before the guest sets MTRRs.
const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU {id} failed")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {ioctl} failed")]
    Setup {
        id: u8,
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: building the MSR list failed")]
    MsrList { id: u8 },
}

/// Where vCPU threads wait while the VM is paused. The control loop pauses and resumes;
/// each vCPU thread checks [`Self::is_paused`] (one relaxed load) between KVM_RUN calls and
/// parks itself until resumed or stopped.
#[derive(Default)]
pub struct VcpuGate {
    paused: AtomicBool,
    parked: Mutex<usize>,
    changed: Condvar,
}

#[derive(Debug, thiserror::Error)]
#[error("{parked} of {want} vCPUs stopped within {ms} ms")]
pub struct PauseTimeout {
    parked: usize,
    want: usize,
    ms: u128,
}

impl VcpuGate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, usize> {
        // A count only ever incremented and decremented under the lock: still whole.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Asks the vCPUs to stop and waits until `count` of them are parked, calling `kick`
    /// (which forces them out of KVM_RUN) every few milliseconds: a kick that lands just
    /// before KVM_RUN is lost. On a timeout the vCPUs are let go again.
    pub fn pause(&self, count: usize, kick: &dyn Fn(), timeout: Duration) -> Result<(), PauseTimeout> {
        self.paused.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let mut parked = self.parked();
        while *parked < count {
            if start.elapsed() >= timeout {
                let err = PauseTimeout { parked: *parked, want: count, ms: timeout.as_millis() };
                drop(parked);
                self.resume();
                return Err(err);
            }
            kick();
            parked = self.changed.wait_timeout(parked, Duration::from_millis(2)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(())
    }

    /// Lets parked vCPUs run again (also used to release them for a stop).
    pub fn resume(&self) {
        let _parked = self.parked();
        self.paused.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// The vCPU side: parks until resumed or the VM stops. `on_park` runs once parked (it
    /// tells the guest's kvmclock it was stopped).
    fn park(&self, stop: &StopNotifier, on_park: impl FnOnce()) {
        let mut parked = self.parked();
        *parked += 1;
        self.changed.notify_all();
        on_park();
        while self.is_paused() && !stop.is_requested() {
            parked = self.changed.wait_timeout(parked, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        *parked -= 1;
    }
}

/// Address spaces a vCPU dispatches its exits to.
pub struct IoBuses {
    pub pio: Arc<pci::Bus>,
    pub mmio: Arc<pci::Bus>,
}

pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
}

/// The TSC is left alone: KVM synchronises the vCPUs' TSCs at creation, and writing it per
/// vCPU at different moments makes the guest mark the TSC unstable.
fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLED_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect()
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm.fd.create_vcpu(u64::from(id)).map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self { id, fd })
    }

    fn setup_err(&self, ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Setup { id, ioctl, source }
    }

    /// Architectural state every vCPU needs; the boot vCPU also gets `entry`'s registers.
    pub fn configure(&self, supported_cpuid: &CpuId, vcpus: u8, entry: Option<BootEntry>) -> Result<(), VcpuError> {
        let mut cpuid = supported_cpuid.clone();
        cpuid::apply_topology(cpuid.as_mut_slice(), self.id, vcpus);
        self.fd.set_cpuid2(&cpuid).map_err(self.setup_err("KVM_SET_CPUID2"))?;

        let entries = boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::MsrList { id: self.id })?;
        let written = self.fd.set_msrs(&msrs).map_err(self.setup_err("KVM_SET_MSRS"))?;
        if written != entries.len() {
            // KVM stops at the first MSR it refuses; report which one and go on: none of
            // these is needed to boot.
            log::warn!("vCPU {}: KVM refused MSR {:#x}", self.id, entries[written].index);
        }

        // x87 control word and MXCSR reset values (SDM vol. 1, 8.1.5 and 10.2.3).
        let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        self.fd.set_fpu(&fpu).map_err(self.setup_err("KVM_SET_FPU"))?;

        // LINT0 delivers the PIC's ExtINT, LINT1 NMIs: what firmware leaves for the OS.
        let mut lapic = self.fd.get_lapic().map_err(self.setup_err("KVM_GET_LAPIC"))?;
        set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(self.setup_err("KVM_SET_LAPIC"))?;

        if let Some(entry) = entry {
            let sregs = self.fd.get_sregs().map_err(self.setup_err("KVM_GET_SREGS"))?;
            self.fd.set_sregs(&boot_cpu::boot_sregs(sregs, entry)).map_err(self.setup_err("KVM_SET_SREGS"))?;
            self.fd.set_regs(&boot_cpu::boot_regs(entry)).map_err(self.setup_err("KVM_SET_REGS"))?;
        }
        Ok(())
    }

    /// Runs until the VM is asked to stop. Exits that end the VM are reported to `stop`;
    /// while `gate` says paused, the thread parks.
    pub fn run(mut self, buses: &IoBuses, stop: &StopNotifier, gate: &VcpuGate) {
        while !stop.is_requested() {
            if gate.is_paused() {
                let (id, fd) = (self.id, &self.fd);
                gate.park(stop, || {
                    // KVM_KVMCLOCK_CTRL: the guest's watchdogs do not take the pause for a
                    // soft lockup. EINVAL: the guest does not use kvmclock, nothing to tell.
                    if let Err(e) = fd.kvmclock_ctrl() {
                        log::debug!("vCPU {id}: KVM_KVMCLOCK_CTRL: {e}");
                    }
                });
                continue;
            }
            if let Some(reason) = self.run_once(buses) {
                stop.request(reason);
            }
        }
        match self.fd.get_regs() {
            Ok(r) => log::debug!("vCPU {} stopped at rip {:#x}", self.id, r.rip),
            Err(_) => log::debug!("vCPU {} stopped", self.id),
        }
    }

    fn run_once(&mut self, buses: &IoBuses) -> Option<StopReason> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !buses.pio.read(u64::from(port), data) {
                    ratelog::log_limited!(log::Level::Trace, "vCPU {id}: unclaimed port read {port:#x}");
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !buses.pio.write(u64::from(port), data) {
                    ratelog::log_limited!(log::Level::Trace, "vCPU {id}: unclaimed port write {port:#x} {data:x?}");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !buses.mmio.read(addr, data) {
                    ratelog::debug_limited!("vCPU {id}: unclaimed MMIO read {addr:#x} ({} bytes)", data.len());
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !buses.mmio.write(addr, data) {
                    ratelog::debug_limited!("vCPU {id}: unclaimed MMIO write {addr:#x} {data:x?}");
                }
                None
            }
            Ok(VcpuExit::Hlt) => {
                // The in-kernel LAPIC handles HLT; an exit means KVM gave up on this vCPU.
                Some(StopReason::Error(format!("vCPU {id}: unexpected HLT exit to userspace")))
            }
            Ok(VcpuExit::Shutdown) => {
                // Where the guest was tells a reboot by triple fault from a crash.
                let at = match (self.fd.get_regs(), self.fd.get_sregs()) {
                    (Ok(r), Ok(s)) => format!(
                        " at rip {:#x} rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
                        r.rip, r.rsp, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
                    ),
                    _ => String::new(),
                };
                ratelog::warn_limited!("vCPU {id}: triple fault (shutdown exit){at}, treating as a reset");
                Some(StopReason::Reset)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(StopReason::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(StopReason::Reset),
                KVM_SYSTEM_EVENT_CRASH => Some(StopReason::Error(format!("vCPU {id}: guest crashed"))),
                other => Some(StopReason::Error(format!("vCPU {id}: unknown KVM system event {other}"))),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(StopReason::Error(format!(
                "vCPU {id}: KVM_RUN failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => {
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or_default();
                Some(StopReason::Error(format!("vCPU {id}: KVM internal error (emulation failure?) at rip {rip:#x}")))
            }
            Ok(VcpuExit::Intr) => None,
            Ok(other) => {
                ratelog::warn_limited!("vCPU {id}: unexpected exit {other:?}, ignored");
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(StopReason::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }
}

/// The vCPU threads' seccomp filter: KVM_RUN and the register reads an exit report needs, and
/// what the device emulation behind an exit does on this thread: assigned devices' config
/// space and trapped BAR accesses (pread/pwrite on the VFIO device fd), their interrupts
/// (VFIO_DEVICE_SET_IRQS) and function-level reset, MSI routes and irqfds, BAR moves
/// (memory slots, ioeventfds), virtio activation (eventfds, epoll, duplicated fds, a tap's
/// offloads; the I/O thread itself is created by the spawner), console output and stop
/// requests (write). Not KVM_CREATE_VM or KVM_CREATE_VCPU, no file opening, no sockets.
pub fn seccomp_rules(r: &mut crate::seccomp::Rules) {
    use crate::seccomp::{kvm, net, vfio, ArgEq};
    r.allow(&[
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_dup,
        // Firmware's writes to its flash: the mapped vars file is written back (`VarsStore`).
        libc::SYS_msync,
    ]);
    r.allow_when(libc::SYS_fcntl, &[ArgEq::int(1, libc::F_DUPFD_CLOEXEC as u64)]);
    r.allow_ioctls(&[
        kvm::RUN,
        kvm::GET_REGS,
        kvm::GET_SREGS,
        // Telling the guest's kvmclock about a pause (vm.pause).
        kvm::KVMCLOCK_CTRL,
        kvm::SET_GSI_ROUTING,
        kvm::IRQFD,
        kvm::IRQ_LINE,
        kvm::SET_USER_MEMORY_REGION,
        kvm::IOEVENTFD,
        net::TUNSETOFFLOAD,
    ]);
    r.allow_ioctls(&vfio::DEVICE_RUNTIME);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_parks_and_releases_vcpu_threads() {
        let gate = VcpuGate::new();
        let stop = StopNotifier::new().unwrap();
        let spins = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (gate, stop, spins) = (gate.clone(), stop.clone(), spins.clone());
                std::thread::spawn(move || {
                    while !stop.is_requested() {
                        if gate.is_paused() {
                            gate.park(&stop, || {});
                            continue;
                        }
                        spins.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        gate.pause(2, &|| {}, Duration::from_secs(10)).unwrap();
        let frozen = spins.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(spins.load(Ordering::Relaxed), frozen, "a parked thread ran");
        gate.resume();
        while spins.load(Ordering::Relaxed) == frozen {
            std::thread::yield_now();
        }
        // Paused again, then stopped while paused: the threads end.
        gate.pause(2, &|| {}, Duration::from_secs(10)).unwrap();
        assert!(gate.pause(3, &|| {}, Duration::from_millis(10)).is_err(), "only two can park");
        assert!(!gate.is_paused(), "a failed pause lets the vCPUs go");
        stop.request(StopReason::PowerOff);
        gate.resume();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn lvt_mode_only_touches_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT_LINT0] = 0x30;
        regs[APIC_LVT_LINT0 + 2] = 0x01; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT_LINT0 + 2] as u8, 0x01);
    }
}
