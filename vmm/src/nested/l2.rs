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
    /// The linear address at which delivering `vector` through L2's IDT starts: a 64-bit gate's
    /// offset (SDM 6.14.1), a 32-bit gate's segment base plus offset (6.11), or the real-mode
    /// IVT's segment:offset (20.1.4). `None` when the entry lies outside the IDT, is not
    /// present, or cannot be read.
    pub fn idt_target(&self, vector: u8) -> Option<u64> {
        let (idt, v) = (self.sregs.idt, u64::from(vector));
        let read = |addr: u64, buf: &mut [u8]| self.read_linear(addr, buf).then_some(());
        let le = |b: &[u8]| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x));
        if self.sregs.cr0 & 1 == 0 {
            let mut b = [0u8; 4];
            read(idt.base + v * 4, &mut b)?;
            return Some(le(&b[2..4]) * 16 + le(&b[0..2]));
        }
        let size = if self.sregs.efer & (1 << 10) != 0 { 16 } else { 8 };
        if u64::from(idt.limit) < v * size + size - 1 {
            return None;
        }
        let mut g = [0u8; 16];
        read(idt.base + v * size, &mut g[..size as usize])?;
        if g[5] & 0x80 == 0 {
            return None;
        }
        let offset = le(&g[0..2]) | le(&g[6..8]) << 16;
        if size == 16 {
            return Some(offset | le(&g[8..12]) << 32);
        }
        let selector = le(&g[2..4]);
        let mut d = [0u8; 8];
        read(self.sregs.gdt.base + (selector & !7), &mut d)?;
        let base = le(&d[2..5]) | le(&d[7..8]) << 24;
        Some(base.wrapping_add(offset) & 0xffff_ffff)
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
