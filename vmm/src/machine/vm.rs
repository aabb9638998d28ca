//! A KVM VM: guest RAM as memslots, the MSR filter that routes the VMX capability MSRs to
//! userspace, emulation-failure exits with instruction bytes, and vCPU creation.

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, CpuId, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd};

use super::memory::GuestRam;
use super::vcpu::Vcpu;
use crate::error::{host, Error};

const KVM_CAP_X86_USER_SPACE_MSR: u32 = 188;
const KVM_CAP_EXIT_ON_EMULATION_FAILURE: u32 = 204;
const KVM_MSR_EXIT_REASON_INVAL: u64 = 1;
const KVM_MSR_EXIT_REASON_UNKNOWN: u64 = 2;
const KVM_MSR_EXIT_REASON_FILTER: u64 = 4;
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// "GenuineIntel" in CPUID.0's EBX, EDX, ECX.
const INTEL_VENDOR: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];

/// MSR ranges whose reads and writes exit to userspace: IA32_FEATURE_CONTROL and the VMX
/// capability MSRs (the virtual VMX), IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC MSRs
/// (the local APIC nestbed models).
pub const FILTERED_MSRS: &[(u32, u32)] = &[(0x1b, 1), (0x3a, 1), (0x480, 18), (0x6e0, 1), (0x800, 256)];

/// MSRs whose writes exit to userspace: IA32_DEBUGCTL, whose value nestbed keeps (a VM exit
/// clears it, `nested::debug_regs`).
pub const FILTERED_WRITES: &[(u32, u32)] = &[(0x1d9, 1)];

pub struct Vm {
    pub fd: VmFd,
    pub ram: GuestRam,
    next_slot: u32,
}

impl Vm {
    /// A VM whose guest-physical 0.. maps `ram` one to one.
    pub fn new(kvm: &Kvm, ram: GuestRam) -> Result<Self, Error> {
        let fd = kvm.create_vm().map_err(host("KVM_CREATE_VM"))?;
        let mut vm = Vm { fd, ram, next_slot: 0 };
        vm.map(0, vm.ram.size(), vm.ram.host_base(), false)?;
        vm.enable(KVM_CAP_EXIT_ON_EMULATION_FAILURE, 1).map_err(host("enabling KVM_CAP_EXIT_ON_EMULATION_FAILURE"))?;
        vm.enable(
            KVM_CAP_X86_USER_SPACE_MSR,
            KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER,
        )
        .map_err(host("enabling KVM_CAP_X86_USER_SPACE_MSR"))?;
        let deny = [0u8; 32];
        let both = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
        let ranges: Vec<MsrFilterRange> = FILTERED_MSRS
            .iter()
            .map(|&r| (both, r))
            .chain(FILTERED_WRITES.iter().map(|&r| (MsrFilterRangeFlags::WRITE, r)))
            .map(|(flags, (base, n))| MsrFilterRange { flags, base, msr_count: n, bitmap: &deny })
            .collect();
        vm.fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges).map_err(host("KVM_X86_SET_MSR_FILTER"))?;
        Ok(vm)
    }

    fn enable(&self, cap: u32, arg: u64) -> Result<(), kvm_ioctls::Error> {
        let mut c = kvm_enable_cap { cap, ..Default::default() };
        c.args[0] = arg;
        self.fd.enable_cap(&c)
    }

    /// Maps `size` bytes of host memory at `host_addr` to guest-physical `gpa` in a new memslot.
    pub fn map(&mut self, gpa: u64, size: u64, host_addr: u64, readonly: bool) -> Result<u32, Error> {
        let slot = self.next_slot;
        self.set_slot(slot, gpa, size, host_addr, readonly)?;
        self.next_slot += 1;
        Ok(slot)
    }

    /// Creates memslot `slot` (deleted or never used before): guest-physical `gpa..gpa+size`
    /// onto `size` bytes of guest RAM at host address `host_addr`. The caller keeps the range
    /// inside the RAM mapping.
    pub fn set_slot(&self, slot: u32, gpa: u64, size: u64, host_addr: u64, readonly: bool) -> Result<(), Error> {
        let base = self.ram.host_base();
        let inside = host_addr >= base && host_addr.checked_add(size).is_some_and(|end| end <= base + self.ram.size());
        if !inside {
            return Err(Error::HostIo(format!(
                "memslot {slot}: host range {host_addr:#x}+{size:#x} outside guest RAM"
            )));
        }
        let region = kvm_userspace_memory_region {
            slot,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: `host_addr..host_addr+size` lies inside the GuestRam mapping (checked above),
        // which outlives the VM (the Vm holds a clone of it).
        unsafe { self.fd.set_user_memory_region(region) }.map_err(host("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Deletes memslot `slot` (KVM: the same ioctl with size 0).
    pub fn remove_slot(&self, slot: u32) -> Result<(), Error> {
        let region = kvm_userspace_memory_region { slot, ..Default::default() };
        // SAFETY: deleting a slot maps no memory.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(host("KVM_SET_USER_MEMORY_REGION (delete)"))
    }

    /// Creates vCPU `id` with the host's supported CPUID, plus CPUID.1:ECX.VMX when `vmx`.
    pub fn create_vcpu(&self, kvm: &Kvm, id: u64, vmx: bool, overrides: &[CpuidOverride]) -> Result<Vcpu, Error> {
        let fd = self.fd.create_vcpu(id).map_err(host("KVM_CREATE_VCPU"))?;
        let mut cpuid =
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(host("KVM_GET_SUPPORTED_CPUID"))?;
        adjust_cpuid(&mut cpuid, vmx, overrides);
        fd.set_cpuid2(&cpuid).map_err(host("KVM_SET_CPUID2"))?;
        let mut vcpu = Vcpu::new(fd);
        vcpu.cpuid = cpuid.as_slice().to_vec();
        Ok(vcpu)
    }
}

/// CPUID as a CPU with `table` answers leaf `leaf`, subleaf `subleaf` (EAX, EBX, ECX, EDX): the
/// entry for the leaf (and subleaf where it matters); a basic leaf above the highest one
/// answers as the highest basic leaf (SDM Vol. 2, CPUID), anything else with zeros.
pub fn cpuid_lookup(table: &[kvm_bindings::kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> [u32; 4] {
    let find = |leaf: u32| {
        table.iter().find(|e| {
            e.function == leaf && (e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
        })
    };
    let max_basic = find(0).map_or(0, |e| e.eax);
    let entry = find(leaf).or_else(|| (leaf < 0x4000_0000 && leaf > max_basic).then(|| find(max_basic)).flatten());
    entry.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
}

/// The CR4 bits a CPU with CPUID `table` can set (SDM 2.5 and the CPUID feature flags each
/// bit depends on), VMXE included only when CPUID.1:ECX.VMX says so.
pub fn cr4_supported(table: &[kvm_bindings::kvm_cpuid_entry2]) -> u64 {
    let [_, _, ecx1, edx1] = cpuid_lookup(table, 1, 0);
    let [_, ebx7, ecx7, _] = cpuid_lookup(table, 7, 0);
    let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
    let bits: [(bool, u32); 19] = [
        (has(edx1, 1), 0),   // VME
        (has(edx1, 1), 1),   // PVI
        (has(edx1, 4), 2),   // TSD
        (has(edx1, 2), 3),   // DE
        (has(edx1, 3), 4),   // PSE
        (has(edx1, 6), 5),   // PAE
        (has(edx1, 7), 6),   // MCE
        (has(edx1, 13), 7),  // PGE
        (true, 8),           // PCE
        (has(edx1, 24), 9),  // OSFXSR
        (has(edx1, 25), 10), // OSXMMEXCPT
        (has(ecx7, 2), 11),  // UMIP
        (has(ecx7, 16), 12), // LA57
        (has(ecx1, 5), 13),  // VMXE
        (has(ebx7, 0), 16),  // FSGSBASE
        (has(ecx1, 17), 17), // PCIDE
        (has(ecx1, 26), 18), // OSXSAVE
        (has(ebx7, 7), 20),  // SMEP
        (has(ebx7, 20), 21), // SMAP
    ];
    bits.iter().filter(|(on, _)| *on).fold(0, |m, (_, b)| m | 1 << b)
}

/// A CPUID answer replaced by a script before the vCPU runs (KVM refuses changes later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidOverride {
    pub leaf: u32,
    pub subleaf: u32,
    pub regs: [u32; 4],
}

/// The physical-address width of nestbed's CPU (CPUID.80000008H:EAX[7:0]): the width its VMX
/// checks (SDM 27.2) and L2's address space use, whatever the host's.
pub const PHYS_ADDR_WIDTH: u8 = 46;

fn adjust_cpuid(cpuid: &mut CpuId, vmx: bool, overrides: &[CpuidOverride]) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x8000_0008 {
            e.eax = e.eax & !0xff | u32::from(PHYS_ADDR_WIDTH);
        }
        if e.function == 0 {
            // The virtual CPU offers Intel's VMX, so it says it is an Intel CPU: software decides
            // between Intel's and AMD's ways (VMCALL or VMMCALL, PMU, ...) by the vendor.
            [e.ebx, e.edx, e.ecx] = INTEL_VENDOR;
        }
        if e.function == 1 {
            if vmx {
                e.ecx |= CPUID_1_ECX_VMX;
            } else {
                e.ecx &= !CPUID_1_ECX_VMX;
            }
        }
        for o in overrides.iter().filter(|o| o.leaf == e.function && o.subleaf == e.index) {
            [e.eax, e.ebx, e.ecx, e.edx] = o.regs;
        }
    }
    for o in overrides {
        if !cpuid.as_slice().iter().any(|e| e.function == o.leaf && e.index == o.subleaf) {
            let [eax, ebx, ecx, edx] = o.regs;
            let entry = kvm_bindings::kvm_cpuid_entry2 {
                function: o.leaf,
                index: o.subleaf,
                flags: if o.subleaf != 0 { kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX } else { 0 },
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            };
            if cpuid.push(entry).is_err() {
                tracing::warn!(leaf = o.leaf, "CPUID table full: override of leaf {:#x} dropped", o.leaf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

    fn entry(function: u32, index: u32, flags: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, flags, eax, ebx: function, ..Default::default() }
    }

    #[test]
    fn cr4_bits_follow_the_feature_flags() {
        let t = [
            entry(0, 0, 0, 7),
            kvm_cpuid_entry2 { function: 1, edx: 1 << 6 | 1 << 3, ecx: 1 << 5, ..Default::default() },
        ];
        assert_eq!(cr4_supported(&t), 1 << 5 | 1 << 4 | 1 << 8 | 1 << 13);
        assert_eq!(cr4_supported(&[]), 1 << 8, "PCE needs no flag");
    }

    #[test]
    fn cpuid_answers_from_the_table() {
        let t = [
            entry(0, 0, 0, 0xd),
            entry(1, 0, 0, 0x306a9),
            entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 1),
            entry(7, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 2),
            entry(0xd, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 3),
            entry(0x8000_0000, 0, 0, 0x8000_0008),
        ];
        assert_eq!(cpuid_lookup(&t, 1, 5)[0], 0x306a9, "subleaf ignored where it does not matter");
        assert_eq!(cpuid_lookup(&t, 7, 1)[0], 2);
        assert_eq!(cpuid_lookup(&t, 7, 9), [0; 4], "a subleaf the table lacks");
        assert_eq!(cpuid_lookup(&t, 0x20, 0), [3, 0xd, 0, 0], "above the highest basic leaf: that leaf");
        assert_eq!(cpuid_lookup(&t, 0x8000_0001, 0), [0; 4]);
        assert_eq!(cpuid_lookup(&[], 0, 0), [0; 4]);
    }
}
