//! The L2 guest: a second KVM VM with one vCPU whose memslots map L2-physical addresses onto
//! the same host memory as L1-physical: one to one without EPT, following L1's EPT with it
//! ([`AddressSpace`]).

use iced_x86::Register;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::Kvm;

use super::access::InsnContext;
use super::msr_filter::MsrFilterState;
use super::space::{AddressSpace, L2Memory};
use super::transfer::{IA32_PAT, SYSENTER_MSRS};
use crate::error::Error;
use crate::machine::insn::register_value;
use crate::machine::paging::{self, Access, PagingMode};
use crate::machine::{GuestRam, Vcpu, Vm};
use crate::vmx::msr_list::MsrEntry;

pub struct L2 {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub msr_filter: MsrFilterState,
    pub space: AddressSpace,
    /// IA32_SYSENTER_CS/ESP/EIP as the vCPU holds them (last loaded or saved), so that a VM
    /// entry with the same values needs no KVM_SET_MSRS.
    pub sysenter: Option<[u64; 3]>,
    /// IA32_PAT as the vCPU holds it (last loaded, saved or written by L2), likewise.
    pub pat: Option<u64>,
    /// Where the host leaves RIP at port-I/O exits (probed once, when L2 is created).
    pub io_rip: crate::machine::probe::IoRip,
}

impl L2 {
    pub fn new(kvm: &Kvm, ram: &GuestRam, cpuid: &[crate::machine::vm::CpuidOverride]) -> Result<Self, Error> {
        let vm = Vm::new(kvm, ram.clone())?;
        let mut vcpu = vm.create_vcpu(kvm, 0, false, cpuid)?;
        vcpu.prime()?;
        let io_rip = crate::machine::probe::probe_io_rip(kvm)?;
        Ok(L2 {
            vm,
            vcpu,
            msr_filter: MsrFilterState::default(),
            space: AddressSpace::new(ram.size()),
            sysenter: None,
            pat: None,
            io_rip,
        })
    }

    /// L2-physical memory as L2's memslots currently map it.
    pub fn memory(&self) -> L2Memory<'_> {
        L2Memory { ram: &self.vm.ram, space: &self.space }
    }

    /// MSRs the vCPU took (from an MSR area, or L2's WRMSR nestbed performed): the copies of
    /// IA32_SYSENTER_CS/ESP/EIP and IA32_PAT follow.
    pub fn msrs_loaded(&mut self, loaded: &[MsrEntry]) {
        for e in loaded {
            if e.index == IA32_PAT {
                self.pat = Some(e.data);
            } else if let Some(i) = SYSENTER_MSRS.iter().position(|&m| m == e.index) {
                let mut s = self.sysenter.unwrap_or_default();
                s[i] = if i == 0 { e.data & 0xffff_ffff } else { e.data };
                self.sysenter = Some(s);
            }
        }
    }
}

impl L2 {
    /// L2's vCPU and memory as of its last exit, for finding the instruction of an access.
    pub fn view(&self) -> L2View<'_> {
        let sregs = *self.vcpu.peek_sregs();
        let paging = PagingMode { cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer };
        L2View { mem: self.memory(), regs: *self.vcpu.peek_regs(), sregs, paging }
    }
}

impl L2View<'_> {
    /// The linear address at which delivering `vector` through L2's IDT starts
    /// ([`crate::machine::idt::idt_target`]).
    pub fn idt_target(&self, vector: u8) -> Option<u64> {
        crate::machine::idt::idt_target(|addr, buf| self.read_linear(addr, buf), &self.sregs, vector)
    }
}

pub struct L2View<'a> {
    pub mem: L2Memory<'a>,
    regs: kvm_regs,
    sregs: kvm_sregs,
    pub paging: PagingMode,
}

impl InsnContext for L2View<'_> {
    fn read_linear(&self, addr: u64, buf: &mut [u8]) -> bool {
        paging::read_virt(&self.mem, self.paging, addr, buf).is_ok()
    }
    fn linear_to_phys(&self, addr: u64) -> Option<u64> {
        paging::translate(&self.mem, self.paging, addr, Access::default()).ok()
    }
    fn gpr(&self, r: Register) -> u64 {
        register_value(r.full_register(), &self.regs, &self.sregs).unwrap_or(0)
    }
    fn segment_base(&self, r: Register) -> u64 {
        register_value(r, &self.regs, &self.sregs).unwrap_or(0)
    }
    fn bitness(&self) -> u32 {
        super::trap::bitness(&self.sregs)
    }
}
