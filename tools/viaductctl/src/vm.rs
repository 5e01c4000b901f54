//! `viaductctl vm`: talks to a running viaduct over its API socket (`--api-socket`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::api_client::{request, Method};
use crate::output::emit;
use crate::table::render;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// viaduct's API socket (its --api-socket).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// One JSON document on stdout: the API's answer (`{}` for requests that answer none).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    action: VmAction,
}

#[derive(Subcommand, Debug)]
enum VmAction {
    /// Is viaduct answering? Prints its version and pid.
    Ping,
    /// The VM's state, config and devices with their guest PCI addresses.
    Info,
    /// Per-device counters: trapped accesses, interrupts, virtio requests and bytes.
    Counters,
    /// Stop the vCPUs (the guest's clock stops with them).
    Pause,
    /// Continue a paused VM.
    Resume,
    /// Reset the guest and boot it again.
    Reboot,
    /// Stop the guest now (viaduct stays; `boot` starts it again).
    Shutdown,
    /// Press the guest's ACPI power button (a clean shutdown by the guest).
    PowerButton,
    /// Give a VM config (JSON, cloud-hypervisor's `vm.create` shape) to a viaduct started
    /// with only --api-socket.
    Create {
        /// The config file; `-` reads standard input.
        config: PathBuf,
    },
    /// Boot the created VM.
    Boot,
    /// Stop the VM if one runs and end viaduct (status 0).
    ShutdownVmm,
    /// Hot-add a host PCI device.
    AddDevice {
        /// /sys/bus/pci/devices/BDF or a BDF.
        path: String,
        #[arg(long)]
        id: Option<String>,
        /// Bind it to vfio-pci on add and give it back on removal.
        #[arg(long)]
        managed: bool,
    },
    /// Hot-remove a device by id.
    RemoveDevice { id: String },
    /// Hot-add a virtio disk.
    AddDisk {
        path: String,
        #[arg(long)]
        readonly: bool,
        #[arg(long)]
        id: Option<String>,
    },
    /// Hot-add a virtio NIC on a tap.
    AddNet {
        tap: String,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        id: Option<String>,
    },
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn info_text(v: &Value) -> String {
    let mut out = format!("state: {}\n", s(v, "/state"));
    if v.pointer("/config/payload/firmware").is_some() {
        out.push_str(&format!("firmware: {}\n", s(v, "/config/payload/firmware")));
    }
    out.push_str(&format!("kernel: {}\n", s(v, "/config/payload/kernel")));
    if v.pointer("/config/payload/initramfs").is_some() {
        out.push_str(&format!("initramfs: {}\n", s(v, "/config/payload/initramfs")));
    }
    out.push_str(&format!("cmdline: {}\n", s(v, "/config/payload/cmdline")));
    out.push_str(&format!("vcpus: {}\n", s(v, "/config/cpus/boot_vcpus")));
    let mem = v.pointer("/memory_actual_size").and_then(Value::as_u64).unwrap_or(0);
    out.push_str(&format!("memory: {}\n", human_bytes(mem)));
    let devices = v.pointer("/devices").and_then(Value::as_array).cloned().unwrap_or_default();
    if !devices.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|d| vec![s(d, "/id"), s(d, "/kind"), s(d, "/bdf"), s(d, "/host_bdf"), s(d, "/reset_method")])
            .collect();
        out.push_str(&render(&["ID", "KIND", "GUEST BDF", "HOST BDF", "RESET"], &rows));
    }
    out
}

fn counters_text(v: &Value) -> String {
    let mut rows = Vec::new();
    if let Some(devices) = v.as_object() {
        for (id, counters) in devices {
            for (name, value) in counters.as_object().into_iter().flatten() {
                rows.push(vec![id.clone(), name.clone(), value.to_string()]);
            }
        }
    }
    render(&["DEVICE", "COUNTER", "VALUE"], &rows)
}

pub fn run(a: &VmArgs) -> anyhow::Result<()> {
    let (method, endpoint, body): (Method, &str, Option<Value>) = match &a.action {
        VmAction::Ping => (Method::Get, "vmm.ping", None),
        VmAction::Info => (Method::Get, "vm.info", None),
        VmAction::Counters => (Method::Get, "vm.counters", None),
        VmAction::Pause => (Method::Put, "vm.pause", None),
        VmAction::Resume => (Method::Put, "vm.resume", None),
        VmAction::Reboot => (Method::Put, "vm.reboot", None),
        VmAction::Shutdown => (Method::Put, "vm.shutdown", None),
        VmAction::PowerButton => (Method::Put, "vm.power-button", None),
        VmAction::Create { config } => {
            let text = if config.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading the config from standard input")?
            } else {
                std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?
            };
            let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config.display()))?;
            (Method::Put, "vm.create", Some(v))
        }
        VmAction::Boot => (Method::Put, "vm.boot", None),
        VmAction::ShutdownVmm => (Method::Put, "vmm.shutdown", None),
        VmAction::AddDevice { path, id, managed } => {
            let path = if path.starts_with('/') { path.clone() } else { format!("/sys/bus/pci/devices/{path}") };
            let mut body = json!({ "path": path });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            if *managed {
                body["managed"] = json!(true);
            }
            (Method::Put, "vm.add-device", Some(body))
        }
        VmAction::RemoveDevice { id } => (Method::Put, "vm.remove-device", Some(json!({ "id": id }))),
        VmAction::AddDisk { path, readonly, id } => {
            let mut body = json!({ "path": path, "readonly": readonly });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            (Method::Put, "vm.add-disk", Some(body))
        }
        VmAction::AddNet { tap, mac, id } => {
            let mut body = json!({ "tap": tap });
            if let Some(mac) = mac {
                body["mac"] = json!(mac);
            }
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            (Method::Put, "vm.add-net", Some(body))
        }
    };
    let body = body.map(|b| b.to_string());
    let answer = request(&a.api_socket, method, endpoint, body.as_deref())?.into_result(endpoint)?;
    let doc = if answer.is_null() { json!({}) } else { answer.clone() };
    emit(a.json, &doc, || match &a.action {
        VmAction::Ping => format!("viaduct {} (pid {})\n", s(&answer, "/version"), s(&answer, "/pid")),
        VmAction::Info => info_text(&answer),
        VmAction::Counters => counters_text(&answer),
        VmAction::AddDevice { .. } | VmAction::AddDisk { .. } | VmAction::AddNet { .. } => {
            format!("{} is guest {}\n", s(&answer, "/id"), s(&answer, "/bdf"))
        }
        _ => format!("{endpoint}: done\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms() {
        let info = json!({
            "state": "Running",
            "config": {"payload": {"kernel": "/k", "cmdline": "console=ttyS0"}, "cpus": {"boot_vcpus": 2}},
            "memory_actual_size": 268435456u64,
            "devices": [{"id": "nvme0", "kind": "vfio", "bdf": "0000:00:04.0", "host_bdf": "0000:02:00.0", "reset_method": "flr"}]
        });
        let t = info_text(&info);
        assert!(t.starts_with("state: Running\nkernel: /k\n"), "{t}");
        assert!(t.contains("memory: 256 MiB") && t.contains("nvme0  vfio  0000:00:04.0  0000:02:00.0  flr"), "{t}");
        let c = counters_text(&json!({"disk0": {"read_bytes": 512, "requests": 3}}));
        assert_eq!(c, "DEVICE  COUNTER     VALUE\ndisk0   read_bytes  512\ndisk0   requests    3\n");
    }
}
