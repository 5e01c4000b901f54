//! The KVM system handle: open /dev/kvm and check what the VMM relies on.

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm};

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("opening /dev/kvm failed (is the kvm module loaded and are you allowed to use it?)")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("this KVM lacks the {0:?} capability, which viaduct needs")]
    MissingCap(Cap),
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// Capabilities without which the VMM cannot work: in-kernel interrupt controllers and PIT,
/// interrupt injection by eventfd, MSI routing for assigned devices.
const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Pit2,
    Cap::Irqfd,
    Cap::IrqRouting,
    Cap::Ioeventfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::ExtCpuid,
];

pub struct KvmSystem {
    pub kvm: Kvm,
}

impl KvmSystem {
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmError::ApiVersion(version));
        }
        if let Some(cap) = REQUIRED_CAPS.iter().find(|c| !kvm.check_extension(**c)) {
            return Err(KvmError::MissingCap(*cap));
        }
        Ok(Self { kvm })
    }

    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(KvmError::SupportedCpuid)
    }
}
