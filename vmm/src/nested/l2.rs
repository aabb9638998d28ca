//! The L2 guest: a second KVM VM with one vCPU whose memslots map L2-physical addresses onto
//! the same host memory as L1-physical (identity, without EPT in this round). The memslot list
//! is where an EPT-following address space plugs in: one slot per contiguous run of an EPT
//! walk, read-only runs as KVM_MEM_READONLY, holes left unmapped (MMIO exits → EPT violations).

use kvm_ioctls::Kvm;

use super::msr_filter::MsrFilterState;
use crate::error::Error;
use crate::machine::{GuestRam, Vcpu, Vm};

pub struct L2 {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub msr_filter: MsrFilterState,
}

impl L2 {
    pub fn new(kvm: &Kvm, ram: &GuestRam, cpuid: &[crate::machine::vm::CpuidOverride]) -> Result<Self, Error> {
        let vm = Vm::new(kvm, ram.clone())?;
        let mut vcpu = vm.create_vcpu(kvm, 0, false, cpuid)?;
        vcpu.prime()?;
        Ok(L2 { vm, vcpu, msr_filter: MsrFilterState::default() })
    }
}
