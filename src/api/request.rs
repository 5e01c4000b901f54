//! What the API thread hands the control loop: typed, validated requests, each with a
//! one-shot reply channel. The control loop owns the VM; the API thread never touches it.

use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use crate::config::VmConfig;
use crate::device_manager::virtio::{DiskSpec, NetSpec};

/// One request for the control loop.
#[derive(Debug)]
pub enum ApiRequest {
    VmmPing,
    /// Stop the VM if one runs and end viaduct with status 0.
    VmmShutdown,
    /// Store the config of the VM to boot (no VM may exist yet).
    VmCreate(Box<VmConfig>),
    VmBoot,
    VmInfo,
    VmCounters,
    VmPause,
    VmResume,
    /// Reset the guest and boot it again.
    VmReboot,
    /// Stop the guest now; viaduct stays, and `vm.boot` starts it again.
    VmShutdown,
    /// Press the guest's ACPI power button.
    VmPowerButton,
    VmAddDevice(vfio::spec::DeviceSpec),
    VmRemoveDevice {
        id: String,
    },
    VmAddDisk(Hotplug<DiskSpec>),
    VmAddNet(Hotplug<NetSpec>),
}

/// A device to hot-add, validated as its command-line option would be.
#[derive(Debug)]
pub struct Hotplug<S> {
    pub spec: S,
    /// False when the body named no id: the spec holds a placeholder, the control loop
    /// picks a free one.
    pub id_given: bool,
}

impl ApiRequest {
    /// The endpoint's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::VmmPing => "vmm.ping",
            Self::VmmShutdown => "vmm.shutdown",
            Self::VmCreate(_) => "vm.create",
            Self::VmBoot => "vm.boot",
            Self::VmInfo => "vm.info",
            Self::VmCounters => "vm.counters",
            Self::VmPause => "vm.pause",
            Self::VmResume => "vm.resume",
            Self::VmReboot => "vm.reboot",
            Self::VmShutdown => "vm.shutdown",
            Self::VmPowerButton => "vm.power-button",
            Self::VmAddDevice(_) => "vm.add-device",
            Self::VmRemoveDevice { .. } => "vm.remove-device",
            Self::VmAddDisk(_) => "vm.add-disk",
            Self::VmAddNet(_) => "vm.add-net",
        }
    }
}

/// A refusal: the HTTP status and the one line the client sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 409: the request is fine but the VM is in the wrong state for it.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    /// 500: carrying it out failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
}

/// What the control loop answers: a JSON body (None: 204 No Content), or an error.
pub type ApiReply = Result<Option<serde_json::Value>, ApiError>;

/// A request on its way to the control loop, with the way back.
pub struct ApiCall {
    pub request: ApiRequest,
    reply: SyncSender<ApiReply>,
}

impl ApiCall {
    pub fn new(request: ApiRequest) -> (Self, Receiver<ApiReply>) {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        (Self { request, reply }, rx)
    }

    /// Answers the caller; a caller that gave up (client gone, timed out) is not an error.
    pub fn answer(self, reply: ApiReply) {
        let _ = self.reply.try_send(reply);
    }
}

/// How long the API thread waits for the control loop before answering 503. Booting can
/// take a while (devices opened and reset), hence the margin.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
