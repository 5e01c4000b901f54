//! Which reset an assigned device gets when the guest reboots and when viaduct releases it.
//!
//! `VFIO_DEVICE_RESET` does a function reset: the kernel tries the device's reset methods in
//! the order sysfs lists them (`/sys/bus/pci/devices/BDF/reset_method`: `flr`, `pm`, `bus`,
//! ...) and uses the first that works. vfio-pci offers it (VFIO_DEVICE_FLAGS_RESET) only when
//! that reset worked as it opened the device, so the method it names is the one in use.
//! A device without a function reset (no FLR, no PM reset, not alone on its bus) can still be
//! reset with its bus or slot: `VFIO_DEVICE_PCI_HOT_RESET`, which resets every function
//! behind the same bridge. That is only done when every one of them is this VM's: the
//! others would lose their state under their drivers. Otherwise the device gets no reset
//! and the guest finds it as the previous user left it.

use std::fmt;

/// A function the hot reset of a device would reset too (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotResetDep {
    /// Its IOMMU group.
    pub group: u32,
    /// `segment:bus:device.function`.
    pub bdf: String,
}

/// The reset a device gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetMethod {
    /// VFIO_DEVICE_RESET with the kernel's method (the first of sysfs' `reset_method`:
    /// `flr`, `pm`, `bus`, `device_specific`, `acpi`, `cxl_bus`); `device` when sysfs did
    /// not say.
    Function(String),
    /// VFIO_DEVICE_PCI_HOT_RESET of the device's bus or slot; every affected function is
    /// this VM's.
    HotReset,
    /// None is possible (or safe).
    None,
}

impl ResetMethod {
    /// The name `vm.info` and the log use: the kernel's method name, `hot-reset` or `none`.
    pub fn name(&self) -> &str {
        match self {
            ResetMethod::Function(m) => m,
            ResetMethod::HotReset => "hot-reset",
            ResetMethod::None => "none",
        }
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The method and, when it is not a function reset, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetChoice {
    pub method: ResetMethod,
    pub why: String,
}

/// What the host says about a device's resets.
pub struct ResetFacts<'a> {
    /// VFIO_DEVICE_FLAGS_RESET: vfio-pci's function reset worked as the device was opened.
    pub function_reset: bool,
    /// sysfs `reset_method`, in the kernel's order (empty when unreadable).
    pub kernel_methods: &'a [String],
    /// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the functions a bus or slot reset would reset
    /// (the device itself included), or why none is possible.
    pub hot_reset: Result<Vec<HotResetDep>, String>,
    /// The IOMMU groups this VM holds (VFIO_DEVICE_PCI_HOT_RESET needs each affected group's fd).
    pub held_groups: &'a [u32],
}

/// Picks the reset: the function reset when vfio-pci has one, else the hot reset when every
/// function it would reset is in a group this VM holds, else none.
pub fn choose(facts: &ResetFacts<'_>) -> ResetChoice {
    if facts.function_reset {
        let name = facts.kernel_methods.first().cloned().unwrap_or_else(|| "device".into());
        return ResetChoice { method: ResetMethod::Function(name), why: "the device's own reset".into() };
    }
    let deps = match &facts.hot_reset {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => return none("no function reset, and no bus or slot reset reaches it"),
        Err(e) => return none(&format!("no function reset, and no bus or slot reset: {e}")),
    };
    let foreign: Vec<&str> =
        deps.iter().filter(|d| !facts.held_groups.contains(&d.group)).map(|d| d.bdf.as_str()).collect();
    if foreign.is_empty() {
        let all: Vec<&str> = deps.iter().map(|d| d.bdf.as_str()).collect();
        return ResetChoice {
            method: ResetMethod::HotReset,
            why: format!("no function reset; the bus reset reaches only this VM's devices ({})", all.join(" ")),
        };
    }
    none(&format!("no function reset, and a bus reset would also reset {} (not this VM's)", foreign.join(" ")))
}

fn none(why: &str) -> ResetChoice {
    ResetChoice { method: ResetMethod::None, why: why.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(group: u32, bdf: &str) -> HotResetDep {
        HotResetDep { group, bdf: bdf.into() }
    }

    fn methods(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_function_reset_uses_the_kernels_first_method() {
        let m = methods(&["flr", "bus"]);
        let facts = ResetFacts {
            function_reset: true,
            kernel_methods: &m,
            hot_reset: Ok(vec![dep(5, "0000:02:00.0")]),
            held_groups: &[5],
        };
        assert_eq!(choose(&facts).method, ResetMethod::Function("flr".into()));
        let m = methods(&["pm"]);
        let facts = ResetFacts { kernel_methods: &m, ..facts };
        assert_eq!(choose(&facts).method.name(), "pm");
        let facts = ResetFacts { kernel_methods: &[], ..facts };
        assert_eq!(choose(&facts).method.name(), "device", "sysfs unreadable: still the function reset");
    }

    #[test]
    fn without_a_function_reset_the_bus_is_reset_only_when_all_of_it_is_ours() {
        let deps = vec![dep(7, "0000:05:00.0"), dep(8, "0000:05:00.1")];
        let facts = ResetFacts {
            function_reset: false,
            kernel_methods: &[],
            hot_reset: Ok(deps.clone()),
            held_groups: &[7, 8],
        };
        let c = choose(&facts);
        assert_eq!(c.method, ResetMethod::HotReset);
        assert!(c.why.contains("0000:05:00.1"), "{}", c.why);
        // The sibling function is not ours (another driver, another VM): no reset at all.
        let facts = ResetFacts { held_groups: &[7], ..facts };
        let c = choose(&facts);
        assert_eq!(c.method, ResetMethod::None);
        assert!(c.why.contains("0000:05:00.1") && !c.why.contains("0000:05:00.0"), "names the foreign one: {}", c.why);
    }

    #[test]
    fn without_any_reset_the_answer_is_none_with_the_kernels_reason() {
        let facts = ResetFacts {
            function_reset: false,
            kernel_methods: &[],
            hot_reset: Err("no bus or slot reset (ENODEV)".into()),
            held_groups: &[1],
        };
        let c = choose(&facts);
        assert_eq!((c.method.name(), c.why.contains("ENODEV")), ("none", true));
        let facts = ResetFacts { hot_reset: Ok(Vec::new()), ..facts };
        assert_eq!(choose(&facts).method, ResetMethod::None);
    }
}
