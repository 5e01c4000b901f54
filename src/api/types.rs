//! The JSON bodies of the API, in cloud-hypervisor's shapes (its `vmm/src/api/openapi/
//! cloud-hypervisor.yaml`): the VM config of `vm.create`, the device bodies of `vm.add-*`,
//! and the answers. Unknown fields are refused (a typo is an error, never ignored).
//!
//! This file depends on serde only: the fuzz target compiles it as is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET vmm.ping`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub build_version: String,
    pub version: String,
    pub pid: i64,
    pub features: Vec<String>,
}

/// `PUT vm.create`: the whole VM. Field names follow cloud-hypervisor's `VmConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigBody {
    pub payload: PayloadConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfigBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfigBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfigBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfigBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfigBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfigBody>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// `--firmware`'s value: a SeaBIOS or OVMF image, or `code=PATH,vars=PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpusConfig {
    pub boot_vcpus: u64,
    /// Must equal `boot_vcpus` when given (no CPU hot-plug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfigBody {
    /// Bytes.
    pub size: u64,
    #[serde(default)]
    pub hugepages: bool,
    #[serde(default)]
    pub shared: bool,
}

/// `vm.add-disk`, and `disks` in `vm.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfigBody {
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `vm.add-net`, and `net` in `vm.create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfigBody {
    pub tap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `vm.add-device`, and `devices` in `vm.create`: a host PCI device to assign. `managed`,
/// `rombar` and `romfile` are viaduct's (as on `--device`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfigBody {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rombar: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub romfile: Option<String>,
}

/// `vm.remove-device`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceBody {
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SerialMode {
    /// viaduct's standard input and output (`--serial stdio`).
    Tty,
    File,
    Off,
    /// The same as `Off`.
    Null,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfigBody {
    pub mode: SerialMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfigBody {
    /// Only `/dev/urandom` is supported.
    #[serde(default = "default_rng_src")]
    pub src: String,
}

fn default_rng_src() -> String {
    "/dev/urandom".into()
}

/// cloud-hypervisor's `PciDeviceInfo`: what `vm.add-*` answers once hot-plug slots exist.
#[allow(dead_code)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    pub bdf: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Paused,
    Shutdown,
}

/// One device of the VM in `vm.info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: String,
    /// `vfio`, `virtio-blk`, `virtio-net`, `virtio-rng`, `pci-synthetic`.
    pub kind: String,
    /// Guest PCI address (segment:bus:device.function).
    pub bdf: String,
    /// The host device of an assigned function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_bdf: Option<String>,
    /// An assigned function's reset at guest reboot and at release: the kernel's method
    /// (`flr`, `pm`, `bus`, ...), `hot-reset` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_method: Option<String>,
}

/// `GET vm.info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub config: VmConfigBody,
    /// Guest RAM in bytes.
    pub memory_actual_size: u64,
    /// Empty unless the VM is running or paused.
    pub devices: Vec<DeviceInfo>,
}

/// `GET vm.counters`: per device id, counter name to value (cloud-hypervisor's shape).
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_hypervisor_style_config_parses() {
        let json = r#"{
            "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0"},
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 536870912},
            "disks": [{"path": "/d.img", "readonly": true}],
            "net": [{"tap": "tap0", "mac": "52:54:00:00:00:01", "id": "n0"}],
            "devices": [{"path": "/sys/bus/pci/devices/0000:02:00.0", "id": "nvme0"}],
            "serial": {"mode": "File", "file": "/tmp/con"},
            "rng": {"src": "/dev/urandom"}
        }"#;
        let c: VmConfigBody = serde_json::from_str(json).unwrap();
        assert_eq!(c.cpus.as_ref().unwrap().boot_vcpus, 2);
        assert_eq!(c.memory.as_ref().unwrap().size, 512 << 20);
        assert!(c.disks[0].readonly);
        assert_eq!(c.serial.as_ref().unwrap().mode, SerialMode::File);
        // And back: what vm.info shows parses as the same config.
        let again: VmConfigBody = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn typos_and_wrong_types_are_errors_that_name_the_field() {
        let e = serde_json::from_str::<VmConfigBody>(r#"{"payload": {"kernel": "/k"}, "memroy": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `memroy`"), "{e}");
        let e = serde_json::from_str::<DiskConfigBody>(r#"{"path": 3}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = serde_json::from_str::<DeviceConfigBody>(r#"{"id": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `path`"), "{e}");
        assert!(serde_json::from_str::<SerialConfigBody>(r#"{"mode": "Pty"}"#).is_err());
    }
}
