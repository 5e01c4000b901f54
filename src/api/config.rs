//! The API's JSON config onto the command line's typed [`VmConfig`], and back for
//! `vm.info`. Devices become the same option lists `--device`, `--disk` and `--net` give, and
//! every value goes through the same checks (`config`, the device managers' parsers): one
//! validation path whichever way a VM is configured.

use std::path::PathBuf;

use super::request::{ApiError, Hotplug};
use super::types::{
    CpusConfig, DeviceConfigBody, DiskConfigBody, MemoryConfigBody, NetConfigBody, PayloadConfig, RngConfigBody,
    SerialConfigBody, SerialMode, VmConfigBody,
};
use crate::config::{
    check_boot_source, cpu_count, ConfigError, DeviceSpec, FirmwareSpec, KernelCache, MemoryConfig, OptionList,
    RebootAction, SerialConfig, VmConfig,
};
use crate::device_manager::vfio::parse_cli;
use crate::device_manager::virtio::{parse_disks, parse_nets, DiskSpec, NetSpec};

const DEFAULT_MEMORY: u64 = 512 << 20;
const DEFAULT_CMDLINE: &str = "console=ttyS0";

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

fn disk_spec(d: &DiskConfigBody) -> Result<DeviceSpec, ConfigError> {
    let mut pairs = vec![("path", d.path.clone()), ("readonly", on_off(d.readonly))];
    pairs.extend(d.id.clone().map(|id| ("id", id)));
    OptionList::from_pairs("disk", &pairs)
}

fn net_spec(n: &NetConfigBody) -> Result<DeviceSpec, ConfigError> {
    let mut pairs = vec![("tap", n.tap.clone())];
    pairs.extend(n.mac.clone().map(|m| ("mac", m)));
    pairs.extend(n.id.clone().map(|id| ("id", id)));
    OptionList::from_pairs("net", &pairs)
}

fn device_spec(d: &DeviceConfigBody) -> Result<DeviceSpec, ConfigError> {
    let mut pairs = vec![("path", d.path.clone())];
    pairs.extend(d.id.clone().map(|id| ("id", id)));
    pairs.extend(d.managed.map(|m| ("managed", on_off(m))));
    pairs.extend(d.rombar.map(|r| ("rombar", on_off(r))));
    pairs.extend(d.romfile.clone().map(|r| ("romfile", r)));
    OptionList::from_pairs("device", &pairs)
}

fn serial(s: &SerialConfigBody) -> Result<SerialConfig, ApiError> {
    match (s.mode, &s.file) {
        (SerialMode::Tty, None) => Ok(SerialConfig::Stdio),
        (SerialMode::Off | SerialMode::Null, None) => Ok(SerialConfig::Off),
        (SerialMode::File, Some(f)) if !f.is_empty() => Ok(SerialConfig::File(PathBuf::from(f))),
        (SerialMode::File, _) => Err(ApiError::bad_request("serial: mode File needs \"file\"")),
        (_, Some(_)) => Err(ApiError::bad_request("serial: \"file\" goes with mode File only")),
    }
}

/// `vm.create`'s body as a validated [`VmConfig`]; the device lists are parsed by their
/// managers here already, so a bad device is refused at create time, not at boot.
pub fn vm_config(body: &VmConfigBody) -> Result<VmConfig, ApiError> {
    let PayloadConfig { kernel, firmware, initramfs, cmdline } = &body.payload;
    for (field, value) in [("kernel", kernel), ("firmware", firmware), ("initramfs", initramfs)] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(ApiError::bad_request(format!("payload.{field} is empty")));
        }
    }
    let firmware = firmware.as_deref().map(FirmwareSpec::parse).transpose().map_err(bad)?;
    check_boot_source(kernel.is_some(), firmware.is_some(), initramfs.is_some(), cmdline.is_some()).map_err(bad)?;
    let vcpus = match &body.cpus {
        None => 1,
        Some(CpusConfig { boot_vcpus, max_vcpus }) => {
            if max_vcpus.is_some_and(|m| m != *boot_vcpus) {
                return Err(ApiError::bad_request("cpus: max_vcpus must equal boot_vcpus (no CPU hot-plug)"));
            }
            cpu_count(*boot_vcpus).map_err(bad)?
        }
    };
    let memory = match &body.memory {
        None => MemoryConfig::new(DEFAULT_MEMORY, false, false),
        Some(MemoryConfigBody { size, hugepages, shared }) => MemoryConfig::new(*size, *hugepages, *shared),
    }
    .map_err(bad)?;
    if let Some(RngConfigBody { src }) = &body.rng {
        if src != "/dev/urandom" {
            return Err(ApiError::bad_request(format!("rng: src '{src}': only /dev/urandom is supported")));
        }
    }
    let cfg = VmConfig {
        kernel: kernel.as_ref().map(PathBuf::from),
        firmware,
        initramfs: initramfs.as_ref().map(PathBuf::from),
        kernel_cache: KernelCache::Default,
        cmdline: cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into()),
        memory,
        vcpus,
        serial: body.serial.as_ref().map_or(Ok(SerialConfig::Stdio), serial)?,
        devices: body.devices.iter().map(device_spec).collect::<Result<_, _>>().map_err(bad)?,
        // fds cannot travel in a JSON body: API-created VMs open /dev/iommu themselves.
        iommufd: None,
        disks: body.disks.iter().map(disk_spec).collect::<Result<_, _>>().map_err(bad)?,
        nets: body.net.iter().map(net_spec).collect::<Result<_, _>>().map_err(bad)?,
        rng: body.rng.is_some(),
        pci_synthetic: Vec::new(),
        on_reboot: RebootAction::Restart,
    };
    parse_cli(&cfg.devices).map_err(bad)?;
    parse_disks(&cfg.disks).map_err(bad)?;
    parse_nets(&cfg.nets).map_err(bad)?;
    Ok(cfg)
}

fn toggle(spec: &DeviceSpec, key: &str) -> Option<bool> {
    spec.get(key).map(|v| v == "on")
}

/// The config as `vm.info` shows it, in `vm.create`'s shape.
pub fn vm_config_body(cfg: &VmConfig) -> VmConfigBody {
    let text = |p: &std::path::Path| p.display().to_string();
    VmConfigBody {
        payload: PayloadConfig {
            kernel: cfg.kernel.as_deref().map(text),
            firmware: cfg.firmware.as_ref().map(FirmwareSpec::to_spec),
            initramfs: cfg.initramfs.as_deref().map(text),
            // Without a kernel there is no command line to give (the disk's bootloader has it).
            cmdline: cfg.kernel.is_some().then(|| cfg.cmdline.clone()),
        },
        cpus: Some(CpusConfig { boot_vcpus: u64::from(cfg.vcpus), max_vcpus: Some(u64::from(cfg.vcpus)) }),
        memory: Some(MemoryConfigBody {
            size: cfg.memory.size,
            hugepages: cfg.memory.hugepages,
            shared: cfg.memory.shared,
        }),
        disks: cfg
            .disks
            .iter()
            .map(|d| DiskConfigBody {
                path: d.get("path").unwrap_or_default().to_string(),
                readonly: toggle(d, "readonly").unwrap_or(false),
                id: d.get("id").map(str::to_string),
            })
            .collect(),
        net: cfg
            .nets
            .iter()
            .map(|n| NetConfigBody {
                tap: n.get("tap").unwrap_or_default().to_string(),
                mac: n.get("mac").map(str::to_string),
                id: n.get("id").map(str::to_string),
            })
            .collect(),
        devices: cfg
            .devices
            .iter()
            .map(|d| DeviceConfigBody {
                path: d.get("path").unwrap_or_default().to_string(),
                id: d.get("id").map(str::to_string),
                managed: toggle(d, "managed"),
                rombar: toggle(d, "rombar"),
                romfile: d.get("romfile").map(str::to_string),
            })
            .collect(),
        serial: Some(match &cfg.serial {
            SerialConfig::Stdio => SerialConfigBody { mode: SerialMode::Tty, file: None },
            SerialConfig::Off => SerialConfigBody { mode: SerialMode::Off, file: None },
            SerialConfig::File(p) => SerialConfigBody { mode: SerialMode::File, file: Some(text(p)) },
        }),
        rng: cfg.rng.then(|| RngConfigBody { src: "/dev/urandom".into() }),
    }
}

/// `vm.add-device`'s body, checked as `--device` is.
pub fn add_device(body: &DeviceConfigBody) -> Result<vfio::spec::DeviceSpec, ApiError> {
    let spec = device_spec(body).map_err(bad)?;
    let mut parsed = parse_cli(std::slice::from_ref(&spec)).map_err(bad)?;
    parsed.pop().ok_or_else(|| ApiError::internal("the device spec parsed to nothing"))
}

/// `vm.add-disk`'s body, checked as `--disk` is.
pub fn add_disk(body: &DiskConfigBody) -> Result<Hotplug<DiskSpec>, ApiError> {
    let spec = disk_spec(body).map_err(bad)?;
    let mut parsed = parse_disks(std::slice::from_ref(&spec)).map_err(bad)?;
    let spec = parsed.pop().ok_or_else(|| ApiError::internal("the disk spec parsed to nothing"))?;
    Ok(Hotplug { spec, id_given: body.id.is_some() })
}

/// `vm.add-net`'s body, checked as `--net` is.
pub fn add_net(body: &NetConfigBody) -> Result<Hotplug<NetSpec>, ApiError> {
    let spec = net_spec(body).map_err(bad)?;
    let mut parsed = parse_nets(std::slice::from_ref(&spec)).map_err(bad)?;
    let spec = parsed.pop().ok_or_else(|| ApiError::internal("the net spec parsed to nothing"))?;
    Ok(Hotplug { spec, id_given: body.id.is_some() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> VmConfigBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_json_config_is_the_command_line_config() {
        let c = vm_config(&body(
            r#"{"payload": {"kernel": "/k", "initramfs": "/i"},
                "cpus": {"boot_vcpus": 2}, "memory": {"size": 268435456, "hugepages": true},
                "disks": [{"path": "/d", "readonly": true, "id": "d0"}],
                "net": [{"tap": "tap0"}],
                "devices": [{"path": "/sys/bus/pci/devices/0000:02:00.0", "managed": true}],
                "serial": {"mode": "Off"}, "rng": {}}"#,
        ))
        .unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory, MemoryConfig { size: 256 << 20, hugepages: true, shared: false });
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.serial, SerialConfig::Off);
        assert!(c.rng);
        assert_eq!(c.disks[0].get("readonly"), Some("on"));
        assert_eq!(c.devices[0].get("managed"), Some("on"));
        let back = vm_config_body(&c);
        assert_eq!(back.disks[0].id.as_deref(), Some("d0"));
        assert_eq!(back.devices[0].managed, Some(true));
        // What vm.info shows is a config vm.create takes again.
        assert_eq!(vm_config(&back).unwrap().memory, c.memory);
    }

    #[test]
    fn firmware_in_the_payload_is_the_firmware_option() {
        let c = vm_config(&body(r#"{"payload": {"firmware": "code=/c.fd,vars=/v.fd"}}"#)).unwrap();
        assert_eq!(
            c.firmware,
            Some(FirmwareSpec::Split { code: "/c.fd".into(), vars: "/v.fd".into(), vars_template: None })
        );
        assert_eq!(c.kernel, None);
        let back = vm_config_body(&c);
        assert_eq!((back.payload.kernel.as_deref(), back.payload.cmdline.as_deref()), (None, None));
        assert_eq!(vm_config(&back).unwrap().firmware, c.firmware);
        let c = vm_config(&body(r#"{"payload": {"firmware": "/bios.bin", "kernel": "/k", "cmdline": "x"}}"#)).unwrap();
        assert_eq!(
            (c.firmware, c.kernel, c.cmdline.as_str()),
            (Some(FirmwareSpec::Image("/bios.bin".into())), Some("/k".into()), "x")
        );
    }

    #[test]
    fn bad_values_get_the_command_line_messages() {
        for (json, want) in [
            (r#"{"payload": {"kernel": ""}}"#, "payload.kernel"),
            (r#"{"payload": {}}"#, "nothing to boot"),
            (r#"{"payload": {"firmware": ""}}"#, "payload.firmware is empty"),
            (r#"{"payload": {"firmware": "code=/c.fd"}}"#, "missing required key 'vars'"),
            (r#"{"payload": {"firmware": "/fw", "initramfs": "/i"}}"#, "--initramfs needs --kernel"),
            (r#"{"payload": {"firmware": "/fw", "cmdline": "quiet"}}"#, "--cmdline needs --kernel"),
            (r#"{"payload": {"kernel": "/k"}, "memory": {"size": 1}}"#, "--memory: size 1 is out of range"),
            (r#"{"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 0}}"#, "--cpus: boot=0"),
            (r#"{"payload": {"kernel": "/k"}, "cpus": {"boot_vcpus": 1, "max_vcpus": 2}}"#, "max_vcpus"),
            (r#"{"payload": {"kernel": "/k"}, "devices": [{"path": "/nope"}]}"#, "--device"),
            (r#"{"payload": {"kernel": "/k"}, "net": [{"tap": "a/b"}]}"#, "not a valid interface name"),
            (r#"{"payload": {"kernel": "/k"}, "net": [{"tap": "t", "mac": "zz"}]}"#, "zz"),
            (
                r#"{"payload": {"kernel": "/k"}, "disks": [{"path": "a", "id": "x"}, {"path": "b", "id": "x"}]}"#,
                "twice",
            ),
            (r#"{"payload": {"kernel": "/k"}, "serial": {"mode": "File"}}"#, "needs \"file\""),
            (r#"{"payload": {"kernel": "/k"}, "rng": {"src": "/dev/random"}}"#, "/dev/urandom"),
        ] {
            let e = vm_config(&body(json)).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn hotplug_bodies_are_checked_like_their_options() {
        let d = add_device(&DeviceConfigBody {
            path: "/sys/bus/pci/devices/0000:02:00.0".into(),
            id: None,
            managed: None,
            rombar: Some(false),
            romfile: None,
        })
        .unwrap();
        assert_eq!(d.bdf.to_string(), "0000:02:00.0");
        assert!(!d.rombar);
        assert!(add_device(&DeviceConfigBody {
            path: "0000:02:00.0".into(),
            id: Some("bad id!".into()),
            managed: None,
            rombar: None,
            romfile: None
        })
        .is_err());
        let disk = add_disk(&DiskConfigBody { path: "/d".into(), readonly: false, id: None }).unwrap();
        assert!(!disk.id_given);
        let net = add_net(&NetConfigBody { tap: "tap1".into(), mac: None, id: Some("n1".into()) }).unwrap();
        assert!(net.id_given);
        assert_eq!(net.spec.id, "n1");
        assert!(add_net(&NetConfigBody { tap: String::new(), mac: None, id: None }).is_err());
    }
}
