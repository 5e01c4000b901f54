//! Why the VM stops, and how any thread (vCPU, device, signal handler loop) asks it to.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (ACPI S5 or KVM system event).
    PowerOff,
    /// The guest asked for a reset (ACPI reset register, i8042, triple fault).
    Reset,
    /// The host asked us to stop (SIGTERM/SIGINT/SIGHUP).
    Signal(i32),
    /// `vm.reboot`: boot the guest again, whatever `--on-reboot` says.
    Reboot,
    /// `vm.shutdown`: the guest stops, viaduct stays for `vm.boot` or `vmm.shutdown`.
    Shutdown,
    /// `vmm.shutdown`: the guest stops and viaduct ends with status 0.
    VmmShutdown,
    /// Something failed; the message is the one line the user sees.
    Error(String),
}

/// First reason wins, except that a stop signal replaces a reset or reboot: the signal is
/// consumed from the signalfd when it is read, so a guest reset that raced it would restart
/// the VM with nothing left to stop it. The eventfd wakes the VMM's control loop. Only an
/// assignment runs under its lock, so a poisoned lock still holds a whole reason (and a stop
/// must get through).
pub struct StopNotifier {
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl StopNotifier {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self { reason: Mutex::new(None), evt: EventFd::new(EFD_NONBLOCK)? }))
    }

    pub fn request(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let replace = matches!(
            (&*current, &reason),
            (None, _) | (Some(StopReason::Reset | StopReason::Reboot), StopReason::Signal(_))
        );
        if replace {
            log::debug!("stop requested: {reason:?}");
            *current = Some(reason);
        }
        // A failed write can only mean the counter is saturated: a wake-up is pending anyway.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_requested(&self) -> bool {
        self.reason().is_some()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A vm-superio `Trigger` that requests a fixed stop reason (i8042 reset line).
pub struct StopTrigger {
    pub notifier: Arc<StopNotifier>,
    pub reason: StopReason,
}

impl vm_superio::Trigger for StopTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.notifier.request(self.reason.clone());
        Ok(())
    }
}

/// The platform crate's power requests (ACPI PM1_CNT, reset control, an unsupported
/// firmware) end the VM like any other stop reason.
impl platform::PowerControl for StopNotifier {
    fn request(&self, request: platform::PowerRequest) {
        let reason = match request {
            platform::PowerRequest::PowerOff => StopReason::PowerOff,
            platform::PowerRequest::Reset => StopReason::Reset,
            platform::PowerRequest::Unsupported(msg) => StopReason::Error(msg),
        };
        StopNotifier::request(self, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let n = StopNotifier::new().unwrap();
        assert!(!n.is_requested());
        n.request(StopReason::PowerOff);
        n.request(StopReason::Reset);
        assert_eq!(n.reason(), Some(StopReason::PowerOff));
        assert_eq!(n.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn a_stop_signal_is_not_lost_to_a_racing_reset() {
        for first in [StopReason::Reset, StopReason::Reboot] {
            let n = StopNotifier::new().unwrap();
            n.request(first);
            n.request(StopReason::Signal(libc::SIGTERM));
            assert_eq!(n.reason(), Some(StopReason::Signal(libc::SIGTERM)));
        }
        let n = StopNotifier::new().unwrap();
        n.request(StopReason::Signal(libc::SIGTERM));
        n.request(StopReason::Reset);
        assert_eq!(n.reason(), Some(StopReason::Signal(libc::SIGTERM)));
    }
}
