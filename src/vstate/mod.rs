//! KVM state: the system handle, the VM, vCPUs and guest memory.

pub mod cpuid;
pub mod kvm;
pub mod memory;
pub mod vcpu;
pub mod vm;
