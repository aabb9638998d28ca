//! A vCPU's context as the VMX model sees it ([`VmxEnv`]): registers through sync regs, memory
//! operands through its segments and page tables over its guest-physical memory: L1's
//! ([`L1Env`]), or L2's as its memslots map it (for VMREAD/VMWRITE served from a shadow VMCS).

use kvm_bindings::kvm_regs;

use crate::machine::paging::{self, PhysMem, WalkError};
use crate::machine::{GuestRam, Vcpu};
use crate::vmx::cpu::{Fault, GuestMemory, MemFault, VmxEnv};
use crate::vmx::decode::{Gpr, Seg};

pub use crate::machine::vm::PHYS_ADDR_WIDTH;

/// KVM's interrupt-shadow bit for blocking by MOV SS (`kvm_vcpu_events.interrupt.shadow`).
pub const KVM_X86_SHADOW_INT_MOV_SS: u8 = 1;

pub struct RamView<'a>(pub &'a GuestRam);

impl GuestMemory for RamView<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.0.read(gpa, buf).map_err(|_| MemFault { gpa })
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        self.0.write(gpa, buf).map_err(|_| MemFault { gpa })
    }
}

pub struct VcpuEnv<'a, M: PhysMem + ?Sized> {
    pub vcpu: &'a mut Vcpu,
    pub ram: &'a M,
}

/// L1's vCPU over L1's RAM.
pub type L1Env<'a> = VcpuEnv<'a, GuestRam>;

/// All sixteen, in the SDM's register-number order (the order of `gpr`).
pub fn gprs(r: &kvm_regs) -> [u64; 16] {
    [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
}

pub fn gpr(r: &kvm_regs, i: Gpr) -> u64 {
    match i.0 {
        0 => r.rax,
        1 => r.rcx,
        2 => r.rdx,
        3 => r.rbx,
        4 => r.rsp,
        5 => r.rbp,
        6 => r.rsi,
        7 => r.rdi,
        8 => r.r8,
        9 => r.r9,
        10 => r.r10,
        11 => r.r11,
        12 => r.r12,
        13 => r.r13,
        14 => r.r14,
        _ => r.r15,
    }
}

pub fn set_gpr(r: &mut kvm_regs, i: Gpr, v: u64) {
    let slot = match i.0 {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    };
    *slot = v;
}

fn walk_fault(e: WalkError) -> Fault {
    match e {
        WalkError::PageFault { addr, error_code } => Fault::PageFault { address: addr, error_code },
        // Paging structures outside RAM: the access cannot complete; #GP(0) is what L1 sees.
        WalkError::Memory(_) => Fault::GeneralProtection(0),
    }
}

impl<M: PhysMem + ?Sized> GuestMemory for VcpuEnv<'_, M> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemFault> {
        self.ram.read_phys(gpa, buf).map_err(|_| MemFault { gpa })
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), MemFault> {
        self.ram.write_phys(gpa, buf).map_err(|_| MemFault { gpa })
    }
}

impl<M: PhysMem + ?Sized> VmxEnv for VcpuEnv<'_, M> {
    fn gpr(&self, r: Gpr) -> u64 {
        // The sync-regs area is read through a shared borrow of the vCPU.
        gpr(self.vcpu_regs(), r)
    }
    fn set_gpr(&mut self, r: Gpr, v: u64) {
        set_gpr(self.vcpu.regs_mut(), r, v);
    }
    fn segment_base(&self, s: Seg) -> u64 {
        let sr = self.vcpu_sregs();
        match s {
            Seg::Es => sr.es.base,
            Seg::Cs => sr.cs.base,
            Seg::Ss => sr.ss.base,
            Seg::Ds => sr.ds.base,
            Seg::Fs => sr.fs.base,
            Seg::Gs => sr.gs.base,
        }
    }
    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let m = self.vcpu.paging();
        paging::read_virt(self.ram, m, gva, buf).map_err(walk_fault)
    }
    fn write_virt(&mut self, gva: u64, buf: &[u8]) -> Result<(), Fault> {
        let m = self.vcpu.paging();
        paging::write_virt(self.ram, m, gva, buf).map_err(walk_fault)
    }
    fn cpl(&self) -> u8 {
        self.vcpu_sregs().cs.selector as u8 & 3
    }
    fn cr0(&self) -> u64 {
        self.vcpu_sregs().cr0
    }
    fn cr4(&self) -> u64 {
        self.vcpu_sregs().cr4
    }
    fn efer(&self) -> u64 {
        self.vcpu_sregs().efer
    }
    fn rflags(&self) -> u64 {
        self.vcpu_regs().rflags
    }
    fn long_mode_64(&self) -> bool {
        let s = self.vcpu_sregs();
        s.efer & (1 << 10) != 0 && s.cs.l != 0
    }
    fn physical_address_width(&self) -> u8 {
        PHYS_ADDR_WIDTH
    }
    fn blocked_by_mov_ss(&self) -> bool {
        self.vcpu.peek_events().interrupt.shadow & KVM_X86_SHADOW_INT_MOV_SS != 0
    }
}

impl<M: PhysMem + ?Sized> VcpuEnv<'_, M> {
    fn vcpu_regs(&self) -> &kvm_regs {
        self.vcpu.peek_regs()
    }
    fn vcpu_sregs(&self) -> &kvm_bindings::kvm_sregs {
        self.vcpu.peek_sregs()
    }
}
