//! The control loop's side of the API: VM state (created, running, paused, shut down) and
//! the answer to every request. The loop itself is in `vmm` (it also waits for vCPUs,
//! devices and signals); it calls [`Control::serve_idle`] while no VM runs and
//! [`Control::serve_running`] while one does. Pause, reboot, shutdown and the power button
//! are carried out here, on the control loop's thread.

use std::time::Duration;

use crate::api::types::{DeviceInfo, VmCounters, VmInfo, VmState, VmmPingResponse};
use crate::api::{ApiCall, ApiError, ApiReply, ApiRequest, ApiServer};
use crate::config::VmConfig;
use crate::device_manager::DeviceManager;
use crate::stop::{StopNotifier, StopReason};
use crate::vstate::vcpu::VcpuGate;
use crate::vstate::vm::Vm;
use kvm_bindings::kvm_clock_data;

/// How long a pause waits for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an idle control loop does next.
pub enum IdleOutcome {
    /// Boot the configured VM (a `vm.boot` waits for the answer, see [`Control::boot_done`]).
    Boot,
    /// End viaduct with status 0 (`vmm.shutdown`).
    Exit,
}

/// A running VM as the control loop sees it.
pub struct RunningVm<'a> {
    pub vm: &'a Vm,
    pub devices: &'a DeviceManager,
    pub gate: &'a VcpuGate,
    /// Forces every vCPU thread out of KVM_RUN.
    pub kick: &'a dyn Fn(),
    pub vcpus: usize,
    pub stop: &'a StopNotifier,
}

/// The API's view of the VM, kept across boots.
pub struct Control {
    api: Option<ApiServer>,
    config: Option<VmConfig>,
    /// The guest ran and was shut down (`vm.shutdown`); `vm.boot` starts it again.
    shut_down: bool,
    /// A `vm.boot` waiting for the VM to run (or fail to).
    boot_call: Option<ApiCall>,
    /// The guest clock at `vm.pause`, put back at `vm.resume`; Some while paused.
    paused_clock: Option<kvm_clock_data>,
}

fn not_running() -> ApiError {
    ApiError::conflict("the VM is not running")
}

fn ping() -> ApiReply {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let ping = VmmPingResponse {
        build_version: version.clone(),
        version,
        pid: i64::from(std::process::id()),
        features: Vec::new(),
    };
    to_json(ping)
}

fn to_json(value: impl serde::Serialize) -> ApiReply {
    serde_json::to_value(value).map(Some).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
}

/// Hot-plug requests are parsed and validated; carrying them out needs hot-plug slots.
fn hotplug(request: &ApiRequest) -> ApiReply {
    let what = match request {
        ApiRequest::VmAddDevice(d) => format!("{} (id {})", d.bdf, d.id),
        ApiRequest::VmRemoveDevice { id } => format!("id {id}"),
        ApiRequest::VmAddDisk(d) => format!(
            "{}{}",
            d.spec.config.path.display(),
            if d.id_given { format!(" (id {})", d.spec.id) } else { String::new() }
        ),
        ApiRequest::VmAddNet(n) => format!(
            "tap {}{}",
            n.spec.config.tap,
            if n.id_given { format!(" (id {})", n.spec.id) } else { String::new() }
        ),
        _ => String::new(),
    };
    Err(ApiError::new(
        501,
        format!(
            "{} {what}: hot-plug needs PCIe hot-plug slots (root ports with a hot-plug controller), which this \
             viaduct does not have yet; give devices on the command line or in vm.create",
            request.name()
        ),
    ))
}

impl Control {
    pub fn new(api: Option<ApiServer>, config: Option<VmConfig>) -> Self {
        Self { api, config, shut_down: false, boot_call: None, paused_clock: None }
    }

    pub fn api(&self) -> Option<&ApiServer> {
        self.api.as_ref()
    }

    pub fn config(&self) -> Option<&VmConfig> {
        self.config.as_ref()
    }

    fn info(&self, state: VmState, devices: Vec<DeviceInfo>) -> ApiReply {
        let Some(cfg) = &self.config else {
            return Err(ApiError::conflict("no VM has been created: PUT vm.create first"));
        };
        let info = VmInfo {
            state,
            config: crate::api::config::vm_config_body(cfg),
            memory_actual_size: cfg.memory.size,
            devices,
        };
        to_json(info)
    }

    /// Answers one request while no VM runs. `preflight` checks a new config the way the
    /// command line's is checked before anything is opened.
    pub fn serve_idle(
        &mut self,
        call: ApiCall,
        preflight: &dyn Fn(&VmConfig) -> anyhow::Result<()>,
    ) -> Option<IdleOutcome> {
        let reply = match &call.request {
            ApiRequest::VmmPing => ping(),
            ApiRequest::VmmShutdown => {
                log::info!("vmm.shutdown: exiting");
                call.answer(Ok(None));
                return Some(IdleOutcome::Exit);
            }
            ApiRequest::VmCreate(cfg) => match preflight(cfg) {
                Ok(()) => {
                    log::info!("vm.create: VM configured");
                    self.config = Some((**cfg).clone());
                    self.shut_down = false;
                    Ok(None)
                }
                Err(e) => Err(ApiError::bad_request(format!("{e:#}"))),
            },
            ApiRequest::VmBoot if self.config.is_none() => {
                Err(ApiError::conflict("no VM has been created: PUT vm.create first"))
            }
            ApiRequest::VmBoot => {
                self.boot_call = Some(call);
                return Some(IdleOutcome::Boot);
            }
            ApiRequest::VmInfo => {
                let state = if self.shut_down { VmState::Shutdown } else { VmState::Created };
                self.info(state, Vec::new())
            }
            ApiRequest::VmAddDevice(_)
            | ApiRequest::VmRemoveDevice { .. }
            | ApiRequest::VmAddDisk(_)
            | ApiRequest::VmAddNet(_)
            | ApiRequest::VmCounters
            | ApiRequest::VmPause
            | ApiRequest::VmResume
            | ApiRequest::VmReboot
            | ApiRequest::VmShutdown
            | ApiRequest::VmPowerButton => Err(not_running()),
        };
        call.answer(reply);
        None
    }

    /// A `vm.boot` waits for its answer.
    pub fn boot_pending(&self) -> bool {
        self.boot_call.is_some()
    }

    /// The VM runs (`Ok`) or could not be started (`Err`): a waiting `vm.boot` learns which.
    pub fn boot_done(&mut self, result: Result<(), String>) {
        if let Some(call) = self.boot_call.take() {
            call.answer(result.map(|()| None).map_err(ApiError::internal));
        }
    }

    /// The VM ended: whether it can be booted again from here.
    pub fn vm_ended(&mut self, reason: &StopReason) {
        self.paused_clock = None;
        self.shut_down = matches!(reason, StopReason::Shutdown);
    }

    /// Answers one request while a VM runs.
    pub fn serve_running(&mut self, call: ApiCall, vm: &RunningVm) {
        let reply = match &call.request {
            ApiRequest::VmmPing => ping(),
            ApiRequest::VmmShutdown => {
                log::info!("vmm.shutdown: stopping the VM and exiting");
                vm.stop.request(StopReason::VmmShutdown);
                Ok(None)
            }
            ApiRequest::VmCreate(_) => Err(ApiError::conflict("a VM is running: vm.shutdown it first")),
            ApiRequest::VmBoot => Err(ApiError::conflict("the VM is already running")),
            ApiRequest::VmInfo => {
                let state = if self.paused_clock.is_some() { VmState::Paused } else { VmState::Running };
                let devices = vm
                    .devices
                    .device_reports()
                    .into_iter()
                    .map(|d| DeviceInfo {
                        id: d.id,
                        kind: d.kind.to_string(),
                        bdf: d.bdf,
                        host_bdf: d.host_bdf,
                        reset_method: d.reset_method,
                    })
                    .collect();
                self.info(state, devices)
            }
            ApiRequest::VmCounters => {
                // Read on request only; unreadable means no host interrupt counts.
                let proc_interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
                let counters: VmCounters = vm
                    .devices
                    .device_counters(&proc_interrupts)
                    .into_iter()
                    .map(|(id, c)| (id, c.into_iter().collect()))
                    .collect();
                to_json(counters)
            }
            ApiRequest::VmPause => self.pause(vm),
            ApiRequest::VmResume => self.resume(vm),
            ApiRequest::VmReboot => {
                log::info!("vm.reboot: restarting the guest");
                vm.stop.request(StopReason::Reboot);
                Ok(None)
            }
            ApiRequest::VmShutdown => {
                log::info!("vm.shutdown: stopping the guest");
                vm.stop.request(StopReason::Shutdown);
                Ok(None)
            }
            ApiRequest::VmPowerButton => {
                log::info!("vm.power-button: pressing the guest's power button");
                vm.devices
                    .press_power_button()
                    .map(|()| None)
                    .map_err(|e| ApiError::internal(format!("raising the power button interrupt: {e}")))
            }
            ApiRequest::VmAddDevice(_)
            | ApiRequest::VmRemoveDevice { .. }
            | ApiRequest::VmAddDisk(_)
            | ApiRequest::VmAddNet(_) => hotplug(&call.request),
        };
        call.answer(reply);
    }

    /// Stops the vCPUs, then saves the guest clock (KVM_GET_CLOCK), so that `resume` can
    /// put it back and the guest sees no time pass (what cloud-hypervisor does).
    fn pause(&mut self, vm: &RunningVm) -> ApiReply {
        if self.paused_clock.is_some() {
            return Err(ApiError::conflict("the VM is already paused"));
        }
        vm.gate.pause(vm.vcpus, vm.kick, PAUSE_TIMEOUT).map_err(|e| ApiError::internal(format!("pausing: {e}")))?;
        match vm.vm.fd.get_clock() {
            Ok(clock) => {
                self.paused_clock = Some(clock);
                log::info!("vm.pause: {} vCPU(s) stopped at guest clock {} ns", vm.vcpus, clock.clock);
                Ok(None)
            }
            Err(e) => {
                vm.gate.resume();
                Err(ApiError::internal(format!("pausing: KVM_GET_CLOCK failed: {e}")))
            }
        }
    }

    fn resume(&mut self, vm: &RunningVm) -> ApiReply {
        let Some(mut clock) = self.paused_clock.take() else {
            return Err(ApiError::conflict("the VM is not paused"));
        };
        // No flags: KVM_CLOCK_REALTIME would make KVM add the time spent paused.
        clock.flags = 0;
        if let Err(e) = vm.vm.fd.set_clock(&clock) {
            log::warn!("vm.resume: KVM_SET_CLOCK failed ({e}): the guest clock jumps by the pause");
        }
        vm.gate.resume();
        log::info!("vm.resume: vCPUs running again");
        Ok(None)
    }

    /// Lets paused vCPUs go so they can see a stop request.
    pub fn release_vcpus(&mut self, gate: &VcpuGate) {
        self.paused_clock = None;
        gate.resume();
    }
}
