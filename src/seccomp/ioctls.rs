//! ioctl request numbers the filters allow, by device. kvm-ioctls, vfio-ioctls and
//! iommufd-ioctls keep theirs private, so they are computed here the same way (`_IOC`,
//! include/uapi/asm-generic/ioctl.h) from the structures in kvm-bindings.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_create_device, kvm_device_attr, kvm_enable_cap, kvm_fpu, kvm_ioeventfd,
    kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msr_list,
    kvm_msrs, kvm_pit_config, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

const fn io(ty: u32, nr: u32) -> u64 {
    ioctl_expr(_IOC_NONE, ty, nr, 0) as u64
}
const fn ior<T>(ty: u32, nr: u32) -> u64 {
    ioctl_expr(_IOC_READ, ty, nr, size_of::<T>() as u32) as u64
}
const fn iow<T>(ty: u32, nr: u32) -> u64 {
    ioctl_expr(_IOC_WRITE, ty, nr, size_of::<T>() as u32) as u64
}
const fn iowr<T>(ty: u32, nr: u32) -> u64 {
    ioctl_expr(_IOC_READ | _IOC_WRITE, ty, nr, size_of::<T>() as u32) as u64
}

/// KVM (Documentation/virt/kvm/api.rst).
pub mod kvm {
    use super::*;
    const KVMIO: u32 = 0xae;

    // /dev/kvm
    pub const GET_API_VERSION: u64 = io(KVMIO, 0x00);
    pub const CREATE_VM: u64 = io(KVMIO, 0x01);
    pub const GET_MSR_INDEX_LIST: u64 = iowr::<kvm_msr_list>(KVMIO, 0x02);
    pub const CHECK_EXTENSION: u64 = io(KVMIO, 0x03);
    pub const GET_VCPU_MMAP_SIZE: u64 = io(KVMIO, 0x04);
    pub const GET_SUPPORTED_CPUID: u64 = iowr::<kvm_cpuid2>(KVMIO, 0x05);
    pub const GET_MSR_FEATURE_INDEX_LIST: u64 = iowr::<kvm_msr_list>(KVMIO, 0x0a);

    // VM fd
    pub const CREATE_VCPU: u64 = io(KVMIO, 0x41);
    pub const SET_USER_MEMORY_REGION: u64 = iow::<kvm_userspace_memory_region>(KVMIO, 0x46);
    pub const SET_TSS_ADDR: u64 = io(KVMIO, 0x47);
    pub const SET_IDENTITY_MAP_ADDR: u64 = iow::<u64>(KVMIO, 0x48);
    pub const CREATE_IRQCHIP: u64 = io(KVMIO, 0x60);
    pub const IRQ_LINE: u64 = iow::<kvm_irq_level>(KVMIO, 0x61);
    pub const GET_IRQCHIP: u64 = iowr::<kvm_irqchip>(KVMIO, 0x62);
    pub const SET_IRQCHIP: u64 = ior::<kvm_irqchip>(KVMIO, 0x63);
    pub const SET_GSI_ROUTING: u64 = iow::<kvm_irq_routing>(KVMIO, 0x6a);
    pub const IRQFD: u64 = iow::<kvm_irqfd>(KVMIO, 0x76);
    pub const CREATE_PIT2: u64 = iow::<kvm_pit_config>(KVMIO, 0x77);
    pub const IOEVENTFD: u64 = iow::<kvm_ioeventfd>(KVMIO, 0x79);
    pub const SET_CLOCK: u64 = iow::<kvm_clock_data>(KVMIO, 0x7b);
    pub const GET_CLOCK: u64 = ior::<kvm_clock_data>(KVMIO, 0x7c);
    pub const GET_PIT2: u64 = ior::<kvm_pit_state2>(KVMIO, 0x9f);
    pub const SET_PIT2: u64 = iow::<kvm_pit_state2>(KVMIO, 0xa0);
    pub const ENABLE_CAP: u64 = iow::<kvm_enable_cap>(KVMIO, 0xa3);
    pub const SIGNAL_MSI: u64 = iow::<kvm_msi>(KVMIO, 0xa5);
    pub const CREATE_DEVICE: u64 = iowr::<kvm_create_device>(KVMIO, 0xe0);
    pub const SET_DEVICE_ATTR: u64 = iow::<kvm_device_attr>(KVMIO, 0xe1);
    pub const GET_DEVICE_ATTR: u64 = iow::<kvm_device_attr>(KVMIO, 0xe2);
    pub const HAS_DEVICE_ATTR: u64 = iow::<kvm_device_attr>(KVMIO, 0xe3);

    // vCPU fd
    pub const RUN: u64 = io(KVMIO, 0x80);
    pub const GET_REGS: u64 = ior::<kvm_regs>(KVMIO, 0x81);
    pub const SET_REGS: u64 = iow::<kvm_regs>(KVMIO, 0x82);
    pub const GET_SREGS: u64 = ior::<kvm_sregs>(KVMIO, 0x83);
    pub const SET_SREGS: u64 = iow::<kvm_sregs>(KVMIO, 0x84);
    pub const GET_MSRS: u64 = iowr::<kvm_msrs>(KVMIO, 0x88);
    pub const SET_MSRS: u64 = iow::<kvm_msrs>(KVMIO, 0x89);
    pub const GET_FPU: u64 = ior::<kvm_fpu>(KVMIO, 0x8c);
    pub const SET_FPU: u64 = iow::<kvm_fpu>(KVMIO, 0x8d);
    pub const GET_LAPIC: u64 = ior::<kvm_lapic_state>(KVMIO, 0x8e);
    pub const SET_LAPIC: u64 = iow::<kvm_lapic_state>(KVMIO, 0x8f);
    pub const SET_CPUID2: u64 = iow::<kvm_cpuid2>(KVMIO, 0x90);
    pub const GET_CPUID2: u64 = iowr::<kvm_cpuid2>(KVMIO, 0x91);
    pub const GET_MP_STATE: u64 = ior::<kvm_mp_state>(KVMIO, 0x98);
    pub const SET_MP_STATE: u64 = iow::<kvm_mp_state>(KVMIO, 0x99);
    pub const GET_VCPU_EVENTS: u64 = ior::<kvm_vcpu_events>(KVMIO, 0x9f);
    pub const SET_VCPU_EVENTS: u64 = iow::<kvm_vcpu_events>(KVMIO, 0xa0);
    pub const GET_XSAVE: u64 = ior::<kvm_xsave>(KVMIO, 0xa4);
    pub const SET_XSAVE: u64 = iow::<kvm_xsave>(KVMIO, 0xa5);
    pub const GET_XCRS: u64 = ior::<kvm_xcrs>(KVMIO, 0xa6);
    pub const SET_XCRS: u64 = iow::<kvm_xcrs>(KVMIO, 0xa7);
    pub const KVMCLOCK_CTRL: u64 = io(KVMIO, 0xad);
    pub const GET_TSC_KHZ: u64 = io(KVMIO, 0xa3);
    pub const SET_TSC_KHZ: u64 = io(KVMIO, 0xa2);
}

/// VFIO (include/uapi/linux/vfio.h): every request is `_IO(';', 100 + n)`.
pub mod vfio {
    use super::io;
    const VFIO_TYPE: u32 = b';' as u32;
    const fn vfio(n: u32) -> u64 {
        io(VFIO_TYPE, 100 + n)
    }

    // Container
    pub const GET_API_VERSION: u64 = vfio(0);
    pub const CHECK_EXTENSION: u64 = vfio(1);
    pub const SET_IOMMU: u64 = vfio(2);
    pub const IOMMU_GET_INFO: u64 = vfio(12);
    pub const IOMMU_MAP_DMA: u64 = vfio(13);
    pub const IOMMU_UNMAP_DMA: u64 = vfio(14);
    // Group
    pub const GROUP_GET_STATUS: u64 = vfio(3);
    pub const GROUP_SET_CONTAINER: u64 = vfio(4);
    pub const GROUP_UNSET_CONTAINER: u64 = vfio(5);
    pub const GROUP_GET_DEVICE_FD: u64 = vfio(6);
    // Device
    pub const DEVICE_GET_INFO: u64 = vfio(7);
    pub const DEVICE_GET_REGION_INFO: u64 = vfio(8);
    pub const DEVICE_GET_IRQ_INFO: u64 = vfio(9);
    pub const DEVICE_SET_IRQS: u64 = vfio(10);
    pub const DEVICE_RESET: u64 = vfio(11);
    pub const DEVICE_GET_PCI_HOT_RESET_INFO: u64 = vfio(12);
    pub const DEVICE_PCI_HOT_RESET: u64 = vfio(13);
    pub const DEVICE_FEATURE: u64 = vfio(17);
    pub const DEVICE_BIND_IOMMUFD: u64 = vfio(18);
    pub const DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio(19);
    pub const DEVICE_DETACH_IOMMUFD_PT: u64 = vfio(20);

    /// The requests of an assigned device's fd that guest accesses lead to (interrupt
    /// set-up, function-level reset).
    pub const DEVICE_RUNTIME: [u64; 2] = [DEVICE_SET_IRQS, DEVICE_RESET];
}

/// iommufd (include/uapi/linux/iommufd.h): `_IO(';', 0x80 + n)`.
pub mod iommufd {
    use super::io;
    const IOMMUFD_TYPE: u32 = b';' as u32;

    pub const DESTROY: u64 = io(IOMMUFD_TYPE, 0x80);
    pub const IOAS_ALLOC: u64 = io(IOMMUFD_TYPE, 0x81);
    pub const IOAS_ALLOW_IOVAS: u64 = io(IOMMUFD_TYPE, 0x82);
    pub const IOAS_IOVA_RANGES: u64 = io(IOMMUFD_TYPE, 0x84);
    pub const IOAS_MAP: u64 = io(IOMMUFD_TYPE, 0x85);
    pub const IOAS_UNMAP: u64 = io(IOMMUFD_TYPE, 0x86);
    pub const OPTION: u64 = io(IOMMUFD_TYPE, 0x87);
    pub const GET_HW_INFO: u64 = io(IOMMUFD_TYPE, 0x8a);
    pub const IOAS_MAP_FILE: u64 = io(IOMMUFD_TYPE, 0x8f);
}

/// tap devices (include/uapi/linux/if_tun.h) and the interface flags of sockets.
pub mod net {
    pub const TUNSETIFF: u64 = libc::TUNSETIFF;
    pub const TUNGETIFF: u64 = libc::TUNGETIFF;
    pub const TUNGETFEATURES: u64 = libc::TUNGETFEATURES;
    pub const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
    pub const TUNSETVNETHDRSZ: u64 = libc::TUNSETVNETHDRSZ;
    pub const TUNGETVNETHDRSZ: u64 = libc::TUNGETVNETHDRSZ;
    pub const SIOCGIFFLAGS: u64 = libc::SIOCGIFFLAGS;
    pub const SIOCSIFFLAGS: u64 = libc::SIOCSIFFLAGS;
}

/// Terminals and files.
pub mod tty {
    pub const TCGETS: u64 = libc::TCGETS;
    pub const TCSETS: u64 = libc::TCSETS;
    pub const TCSETSW: u64 = libc::TCSETSW;
    pub const TCSETSF: u64 = libc::TCSETSF;
    pub const TIOCGWINSZ: u64 = libc::TIOCGWINSZ;
    pub const FIONBIO: u64 = libc::FIONBIO;
    pub const FIOCLEX: u64 = libc::FIOCLEX;
}

/// Block devices given as disks.
pub mod block {
    use super::ior;
    pub const BLKGETSIZE64: u64 = ior::<u64>(0x12, 114);
    pub const BLKSSZGET: u64 = super::io(0x12, 104);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // Values from the kernel's headers, as strace prints them.
        assert_eq!(kvm::RUN, 0xae80);
        assert_eq!(kvm::CREATE_VM, 0xae01);
        assert_eq!(kvm::SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(kvm::SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(kvm::IRQFD, 0x4020_ae76);
        assert_eq!(kvm::IOEVENTFD, 0x4040_ae79);
        assert_eq!(kvm::GET_REGS, 0x8090_ae81);
        assert_eq!(kvm::GET_SREGS, 0x8138_ae83);
        assert_eq!(kvm::SET_CPUID2, 0x4008_ae90);
        assert_eq!(kvm::GET_SUPPORTED_CPUID, 0xc008_ae05);
        assert_eq!(kvm::CREATE_DEVICE, 0xc00c_aee0);
        assert_eq!(kvm::SET_DEVICE_ATTR, 0x4018_aee1);
        assert_eq!(vfio::DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(vfio::IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(iommufd::IOAS_MAP, 0x3b85);
        assert_eq!(iommufd::IOAS_ALLOC, 0x3b81);
        assert_eq!(iommufd::IOAS_UNMAP, 0x3b86);
        assert_eq!(iommufd::DESTROY, 0x3b80);
        assert_eq!(vfio::DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(vfio::DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
        assert_eq!(net::TUNSETIFF, 0x4004_54ca);
        assert_eq!(block::BLKGETSIZE64, 0x8008_1272);
    }
}
