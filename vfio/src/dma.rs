//! Guest RAM DMA-mapped in the background while the guest boots.
//!
//! Mapping pins every page of guest RAM and programs the IOMMU: seconds for a few hundred
//! MiB on a nested or emulated IOMMU, most of a passthrough guest's start-up. A device cannot
//! DMA before its Bus Master Enable bit is set (PCI Local Bus 3.0, 6.2.2; it is off after the
//! reset at start), and the guest sets it long after its kernel started. So the VMM starts the
//! vCPUs at once and holds back the guest's first Bus Master enable until the mapping is
//! complete (`VfioPciDevice::gate_bus_master`): the device returns the wait as data
//! ([`pci::ConfigWait`]) and the writing vCPU waits with no lock held. The wait ends early,
//! with Bus Master left off, when the VM stops ([`DmaMapping::cancel`]).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::container::{Container, ContainerError, RamRange};

#[derive(Debug)]
enum State {
    Mapping,
    Mapped,
    Failed(String),
    /// The VM is stopping: nobody waits for the mapping any more (it may still finish).
    Cancelled,
}

/// The progress of one container's guest RAM mapping.
#[derive(Debug)]
pub struct DmaMapping {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("starting the DMA-mapping thread failed")]
    SpawnThread(#[source] std::io::Error),
    #[error("DMA-mapping guest RAM failed: {0}")]
    Map(String),
    #[error("the VM stopped before guest RAM was DMA-mapped")]
    Cancelled,
}

impl DmaMapping {
    /// A mapping not started yet: devices can be wired to it (their Bus Master enable will
    /// wait) before [`Self::spawn`] starts the work. The VMM starts it right before the vCPUs
    /// run, so pinning guest RAM does not compete with the VMM's own set-up (loading the
    /// kernel, creating vCPUs: both take the mm lock that pinning holds).
    pub fn pending() -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::Mapping), done: Condvar::new() })
    }

    /// Maps `ranges` into `container` on a new thread, finishing `self`; the thread gives
    /// the container back. `prologue` runs first on that thread (the VMM installs the
    /// thread's seccomp filter there). On a spawn failure `self` is marked failed (nobody
    /// waits forever).
    ///
    /// # Safety
    /// As [`Container::map_ram`]: every range is live guest RAM that stays mapped until the
    /// container is dropped, which the caller does only after joining the returned thread.
    pub unsafe fn spawn(
        self: &Arc<Self>,
        mut container: Container,
        ranges: Vec<RamRange>,
        prologue: Box<dyn FnOnce() + Send>,
    ) -> Result<JoinHandle<Container>, DmaError> {
        let m = self.clone();
        std::thread::Builder::new()
            .name("dma-map".into())
            .spawn(move || {
                prologue();
                // SAFETY: the caller's contract, passed on.
                let r = unsafe { container.map_ram(&ranges) };
                m.finish(r);
                container
            })
            .map_err(|e| {
                self.fail("the DMA-mapping thread did not start");
                DmaError::SpawnThread(e)
            })
    }

    fn fail(&self, why: &str) {
        let mut s = self.lock();
        *s = State::Failed(why.to_string());
        self.done.notify_all();
    }

    // Only plain assignments of `State` happen under the lock: one poisoned by a panic
    // elsewhere still holds a whole state.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An already complete mapping (the caller mapped synchronously).
    pub fn mapped() -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::Mapped), done: Condvar::new() })
    }

    pub(crate) fn finish(&self, r: Result<(), ContainerError>) {
        let mut s = self.lock();
        if matches!(*s, State::Cancelled) {
            return;
        }
        *s = match r {
            Ok(()) => State::Mapped,
            Err(e) => {
                log::error!("{e}: assigned devices will not be allowed to do DMA");
                State::Failed(e.to_string())
            }
        };
        self.done.notify_all();
    }

    /// Blocks until the mapping is complete, or cancelled.
    pub fn wait(&self) -> Result<(), DmaError> {
        let started = Instant::now();
        let mut s = self.lock();
        let waited = matches!(*s, State::Mapping);
        while matches!(*s, State::Mapping) {
            s = self.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if waited {
            log::info!("guest enabled bus mastering: waited {} ms for the DMA mapping", started.elapsed().as_millis());
        }
        self.outcome(&s)
    }

    fn outcome(&self, s: &State) -> Result<(), DmaError> {
        match s {
            State::Failed(e) => Err(DmaError::Map(e.clone())),
            State::Cancelled => Err(DmaError::Cancelled),
            State::Mapping | State::Mapped => Ok(()),
        }
    }

    /// The result once the mapping is complete; `None` while it runs.
    pub fn result(&self) -> Option<Result<(), DmaError>> {
        let s = self.lock();
        (!matches!(*s, State::Mapping)).then(|| self.outcome(&s))
    }

    /// Whether the mapping is complete (successfully or not).
    pub fn is_done(&self) -> bool {
        !matches!(*self.lock(), State::Mapping)
    }

    /// The VM is stopping: every waiter returns at once (Bus Master stays off). A mapping
    /// already complete stays so.
    pub fn cancel(&self) {
        let mut s = self.lock();
        if matches!(*s, State::Mapping) {
            *s = State::Cancelled;
        }
        self.done.notify_all();
    }
}

/// A Bus Master enable waits here (see the module docs).
impl pci::AccessGate for DmaMapping {
    fn wait(&self) -> bool {
        self.wait().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_blocks_until_finished_and_reports_failure() {
        let m = Arc::new(DmaMapping { state: Mutex::new(State::Mapping), done: Condvar::new() });
        assert!(!m.is_done());
        let m2 = m.clone();
        let t = std::thread::spawn(move || m2.wait().is_ok());
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!t.is_finished(), "waits while mapping");
        m.finish(Ok(()));
        assert!(t.join().unwrap());
        assert!(m.is_done());

        let f = Arc::new(DmaMapping { state: Mutex::new(State::Mapping), done: Condvar::new() });
        f.finish(Err(ContainerError::NoInterruptRemapping { module: "vfio_iommu_type1" }));
        assert!(matches!(f.wait(), Err(DmaError::Map(_))));
        assert!(DmaMapping::mapped().wait().is_ok());
    }

    #[test]
    fn cancel_releases_waiters_of_a_mapping_that_never_ends() {
        let m = DmaMapping::pending();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || <DmaMapping as pci::AccessGate>::wait(&m))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.cancel();
        assert!(waiters.into_iter().all(|w| !w.join().unwrap()), "released, gate closed");
        m.finish(Ok(()));
        assert!(matches!(m.result(), Some(Err(DmaError::Cancelled))), "a late finish changes nothing");
        let done = DmaMapping::mapped();
        done.cancel();
        assert!(done.wait().is_ok(), "a complete mapping stays complete");
    }
}
