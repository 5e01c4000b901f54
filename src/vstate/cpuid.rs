//! Per-vCPU CPUID: KVM's supported set with a coherent topology (one package, N cores, one
//! thread each) for Intel and AMD leaves. Pure function over the entries: unit tested.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Topology level types for leaves 0xb / 0x1f (Intel SDM vol. 2A, CPUID leaf 0BH).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` cores (the APIC ID shift of the core level).
fn core_id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The guest's physical address bits (CPUID 0x8000_0008 EAX[7:0]); 36 when KVM does not
/// report the leaf (the architectural default).
pub fn phys_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    entries
        .iter()
        .find(|e| e.function == LEAF_AMD_SIZE_IDS)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|&b| b > 0)
        .unwrap_or(36)
}

/// Patches `entries` (KVM's supported CPUID) for vCPU `apic_id` of `vcpus`.
pub fn apply_topology(entries: &mut [kvm_cpuid_entry2], apic_id: u8, vcpus: u8) {
    let n = u32::from(vcpus);
    let id = u32::from(apic_id);
    let bits = core_id_bits(n);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((n & 0xff) << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26] cores per package - 1; [25:14] threads sharing this cache - 1:
                // L1/L2 are per core, the last level is shared by the package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits;
                        e.ebx = n;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_EXT_FEATURES => {
                // CmpLegacy: "HTT in leaf 1 means cores, not threads" (AMD APM vol. 3, E.4.2).
                if n > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12] ApicIdCoreIdSize, [7:0] NC = cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | (n - 1);
            }
            LEAF_AMD_CACHE_TOPOLOGY => {
                // EAX[25:14] NumSharingCache - 1 (same rule as Intel leaf 4).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
            }
            LEAF_AMD_EXT_APIC_ID => {
                // EAX extended APIC ID; EBX[7:0] core (compute unit) ID, [15:8] threads per
                // core - 1; ECX[7:0] node ID, [10:8] nodes per package - 1.
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ebx: 0x0000_0800, eax: 0x63, ..Default::default() }
    }

    #[test]
    fn topology_for_two_vcpus() {
        let mut e = vec![
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
            entry(0x8000_0001, 0),
        ];
        apply_topology(&mut e, 1, 2);
        assert_eq!(e[0].ebx, (1 << 24) | (2 << 16) | 0x800);
        assert_ne!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_ne!(e[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (1, 2, 0x201, 1));
        assert_eq!((e[1].ebx, e[1].ecx), (1, 0x100));
        assert_eq!(e[3].ebx, 0);
        assert_eq!(e[4].ecx & 0xff, 1);
        assert_eq!((e[4].ecx >> 12) & 0xf, 1);
        assert_eq!(e[5].eax, 1);
        assert_ne!(e[6].ecx & AMD_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = vec![kvm_cpuid_entry2 { function: 1, edx: LEAF1_EDX_HTT, ..Default::default() }];
        apply_topology(&mut e, 0, 1);
        assert_eq!(e[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!((e[0].ebx >> 16) & 0xff, 1);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(254), 8);
    }
}
