//! Sensitive instructions from patched sites that nestbed executes itself: every one L1 runs,
//! and those of L2 that L1 did not ask for (SDM 26.1.3: a MOV to CR0/CR4 that does not exit
//! leaves the bits L1 owns unchanged, a MOV from them reads L1's read shadow there; RDTSC adds
//! the TSC offset). CR4.VMXE is virtual: our hosts cannot set it, so L1's bit lives in the
//! VMX model and is shown wherever L1 reads CR4; L2 always reads it as 1.

use super::dispatch::{Event, Normalized, Work};
use super::{Flow, Runner};
use crate::error::Error;
use crate::exit::{ExitDetail, Level};
use crate::machine::vm::cpuid_lookup;
use crate::nested::env::{gpr, set_gpr};
use crate::nested::transfer::CR4_VMXE;
use crate::vmx::caps::proc;
use crate::vmx::decode::Gpr;
use crate::vmx::fields::{
    CPU_BASED_VM_EXEC_CONTROL, CR0_GUEST_HOST_MASK, CR0_READ_SHADOW, CR4_GUEST_HOST_MASK, CR4_READ_SHADOW, TSC_OFFSET,
};
use crate::vmx::sensitive::{Sensitive, SensitiveInsn};

const CR0_PE: u64 = 1 << 0;
const CR0_TS: u64 = 1 << 3;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_TSD: u64 = 1 << 2;
const CR4_PAE: u64 = 1 << 5;
const CR4_PCIDE: u64 = 1 << 17;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const IA32_TSC: u32 = 0x10;
const IA32_TSC_AUX: u32 = 0xc000_0103;

/// What L1 set for L2's control registers and TSC, for L2's instructions nestbed executes.
#[derive(Debug, Clone, Copy, Default)]
struct L1View {
    cr0_mask: u64,
    cr0_shadow: u64,
    cr4_mask: u64,
    cr4_shadow: u64,
    /// The TSC offset when "use TSC offsetting" is on.
    tsc_offset: u64,
}

/// Why an emulated instruction faults.
enum Fault {
    Gp,
}

impl Runner {
    /// A patched sensitive instruction of L1: always nestbed's to execute.
    pub(super) fn normalize_l1_sensitive(&mut self, insn: SensitiveInsn, rip: u64) -> Normalized {
        let q = self.sensitive_qualification(&insn);
        let mut exit = self.next_exit(Level::L1, insn.exit_reason() as u32, q, rip);
        exit.detail = ExitDetail::Vmx { mnemonic: insn.name().to_string(), operands: String::new(), vmcs: None };
        Normalized::Event(Event { exit, work: Work::Sensitive { insn, rip }, l2: None })
    }

    /// The exit qualification of `insn` for the active vCPU's registers.
    pub(super) fn sensitive_qualification(&mut self, insn: &SensitiveInsn) -> u64 {
        let r = *self.active().regs();
        let lmsw = match insn.op {
            Sensitive::Lmsw { gpr: Some(g) } => gpr(&r, g) as u16,
            _ => 0,
        };
        insn.qualification(lmsw, 0)
    }

    /// The value a MOV to CR or LMSW writes (for L1's CR masks in the reflect decision).
    pub(super) fn sensitive_value(&mut self, insn: &SensitiveInsn) -> u64 {
        let r = *self.active().regs();
        match insn.op {
            Sensitive::MovToCr { gpr: g, .. } | Sensitive::Lmsw { gpr: Some(g) } => gpr(&r, g),
            _ => 0,
        }
    }

    /// CR4.VMXE as `level` sees it, when nestbed keeps it virtual (MOV to CR4 patched): for gdb
    /// and scripts, ORed into the CR4 KVM holds. 0 otherwise.
    pub(crate) fn virtual_vmxe(&self, level: Level) -> u64 {
        let virtualized = self.patches.as_ref().is_some_and(|p| p.patches(crate::patch::Class::MovToCr4));
        if level == Level::L1 && virtualized && self.nested.vmx.vmxe {
            CR4_VMXE
        } else {
            0
        }
    }

    /// A CR4 value a debugger writes for `level`: with CR4 virtualized, L1's VMXE goes into the
    /// model; the value for KVM never has VMXE (our hosts refuse it).
    pub(crate) fn set_virtual_vmxe(&mut self, level: Level, cr4: u64) -> u64 {
        let virtualized = self.patches.as_ref().is_some_and(|p| p.patches(crate::patch::Class::MovToCr4));
        if level == Level::L1 && virtualized && (cr4 & CR4_VMXE != 0 || !self.nested.vmx.vmxon) {
            self.nested.vmx.vmxe = cr4 & CR4_VMXE != 0;
        }
        cr4 & !CR4_VMXE
    }

    /// L1's CR4 as L1 sees it: with the virtual VMXE.
    pub(crate) fn l1_cr4(&mut self) -> u64 {
        let vmxe = if self.nested.vmx.vmxe { CR4_VMXE } else { 0 };
        self.l1.sregs().cr4 | vmxe
    }

    /// Executes `insn` on the vCPU that trapped it and moves past it, or raises the fault the
    /// CPU would.
    pub(super) fn execute_sensitive(&mut self, insn: SensitiveInsn, rip: u64) -> Result<Flow, Error> {
        let view = match self.level {
            Level::L1 => None,
            Level::L2 => Some(self.l1_view()),
        };
        match self.emulate(insn, view) {
            Ok(()) => {
                self.active().regs_mut().rip = rip.wrapping_add(u64::from(insn.len));
            }
            Err(Fault::Gp) => self.active().raise_fault(13, Some(0)),
        }
        Ok(Flow::Continue)
    }

    fn l1_view(&self) -> L1View {
        let Some(v) = self.nested.vmx.current_vmcs() else { return L1View::default() };
        let offsetting = v.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::USE_TSC_OFFSETTING != 0;
        L1View {
            cr0_mask: v.get(CR0_GUEST_HOST_MASK),
            cr0_shadow: v.get(CR0_READ_SHADOW),
            cr4_mask: v.get(CR4_GUEST_HOST_MASK),
            cr4_shadow: v.get(CR4_READ_SHADOW),
            tsc_offset: if offsetting { v.get(TSC_OFFSET) } else { 0 },
        }
    }

    fn emulate(&mut self, insn: SensitiveInsn, l2: Option<L1View>) -> Result<(), Fault> {
        let s = *self.active().sregs();
        let cpl = s.ss.dpl;
        let privileged = !matches!(insn.op, Sensitive::Cpuid | Sensitive::Rdtsc | Sensitive::Rdtscp | Sensitive::Rdpmc);
        if privileged && cpl > 0 {
            return Err(Fault::Gp);
        }
        let l1 = l2.is_none();
        // L2 runs in VMX operation: its CR4.VMXE is 1 (IA32_VMX_CR4_FIXED0 at VM entry) and
        // virtual like L1's.
        let cr4_now = if l1 { self.l1_cr4() } else { s.cr4 | CR4_VMXE };
        match insn.op {
            Sensitive::MovFromCr { cr, gpr: g } => {
                let v = match (cr, l2) {
                    (0, Some(m)) => s.cr0 & !m.cr0_mask | m.cr0_shadow & m.cr0_mask,
                    (4, Some(m)) => cr4_now & !m.cr4_mask | m.cr4_shadow & m.cr4_mask,
                    (0, None) => s.cr0,
                    (4, None) => cr4_now,
                    (3, _) => s.cr3,
                    _ => self.active().cr8(),
                };
                set_gpr(self.active().regs_mut(), g, v);
            }
            Sensitive::MovToCr { cr, gpr: g } => {
                let v = gpr(self.active().regs(), g);
                match cr {
                    0 => {
                        let v = match l2 {
                            Some(m) => v & !m.cr0_mask | s.cr0 & m.cr0_mask,
                            None => v,
                        };
                        self.write_cr0(v)?;
                    }
                    4 => {
                        let v = match l2 {
                            Some(m) => v & !m.cr4_mask | cr4_now & m.cr4_mask,
                            None => v,
                        };
                        self.write_cr4(v, l1)?;
                    }
                    3 => {
                        // With CR4.PCIDE, bit 63 asks not to flush and is not stored (SDM 4.10.4.1).
                        let v = if s.cr4 & CR4_PCIDE != 0 { v & !(1 << 63) } else { v };
                        let lma = s.efer & EFER_LMA != 0;
                        if lma && v >> 52 != 0 {
                            return Err(Fault::Gp);
                        }
                        self.active().sregs_mut().cr3 = v;
                    }
                    _ => {
                        if v > 15 {
                            return Err(Fault::Gp);
                        }
                        self.active().set_cr8(v);
                    }
                }
            }
            // A CLTS of L2 that does not exit leaves a TS that L1 owns alone (SDM 26.3).
            Sensitive::Clts => {
                if l2.is_none_or(|m| m.cr0_mask & CR0_TS == 0) {
                    self.active().sregs_mut().cr0 &= !CR0_TS;
                }
            }
            Sensitive::Lmsw { gpr: Some(g) } => {
                // LMSW loads CR0 bits 3:0 and cannot clear PE (SDM Vol. 2, LMSW).
                let src = gpr(self.active().regs(), g) & 0xf;
                let v = s.cr0 & !0xe | src & 0xe | (s.cr0 | src) & CR0_PE;
                let v = match l2 {
                    Some(m) => v & !m.cr0_mask | s.cr0 & m.cr0_mask,
                    None => v,
                };
                self.write_cr0(v)?;
            }
            Sensitive::Lmsw { gpr: None } => return Err(Fault::Gp),
            Sensitive::Cpuid => {
                let r = *self.active().regs();
                let (leaf, subleaf) = (r.rax as u32, r.rcx as u32);
                let mut out = cpuid_lookup(&self.active().cpuid, leaf, subleaf);
                if leaf == 1 {
                    // CPUID.1:ECX.OSXSAVE reflects CR4.OSXSAVE.
                    out[2] = out[2] & !(1 << 27) | u32::from(cr4_now & CR4_OSXSAVE != 0) << 27;
                }
                let r = self.active().regs_mut();
                (r.rax, r.rbx, r.rcx, r.rdx) = (out[0].into(), out[1].into(), out[2].into(), out[3].into());
            }
            Sensitive::Rdtsc | Sensitive::Rdtscp => {
                if cr4_now & CR4_TSD != 0 && cpl > 0 {
                    return Err(Fault::Gp);
                }
                // L2's TSC is L1's plus the offset L1 set (SDM 26.3 "TSC offsetting").
                let tsc = self.l1.get_msrs(&[IA32_TSC]).ok().and_then(|v| v.first().copied()).unwrap_or(0);
                let tsc = tsc.wrapping_add(l2.map_or(0, |m| m.tsc_offset));
                let aux = if insn.op == Sensitive::Rdtscp {
                    self.active().get_msrs(&[IA32_TSC_AUX]).ok().and_then(|v| v.first().copied())
                } else {
                    None
                };
                let r = self.active().regs_mut();
                set_gpr(r, Gpr::RAX, tsc & 0xffff_ffff);
                set_gpr(r, Gpr::RDX, tsc >> 32);
                if let Some(aux) = aux {
                    set_gpr(r, Gpr::RCX, aux & 0xffff_ffff);
                }
            }
            // No performance counters are offered: RDPMC of any counter is #GP.
            Sensitive::Rdpmc => return Err(Fault::Gp),
            // Caches are coherent host memory: nothing to write back or drop.
            Sensitive::Invd | Sensitive::Wbinvd => {}
            // Reloading SREGS makes KVM drop its cached translations.
            Sensitive::Invlpg => {
                self.active().sregs_mut();
            }
            Sensitive::Xsetbv => {
                let r = *self.active().regs();
                if r.rcx as u32 != 0 || cr4_now & CR4_OSXSAVE == 0 {
                    return Err(Fault::Gp);
                }
                let xcr0 = (r.rdx << 32) | (r.rax & 0xffff_ffff);
                if self.active().set_xcr0(xcr0).is_err() {
                    return Err(Fault::Gp);
                }
            }
        }
        Ok(())
    }

    /// MOV to CR0 with the checks of SDM Vol. 2 (MOV—Move to/from Control Registers): reserved
    /// bits, NW without CD, PG without PE, leaving IA-32e mode from 64-bit code; EFER.LMA
    /// follows LME and PG (SDM 10.8.5). Paging outside IA-32e mode only where the host has it.
    fn write_cr0(&mut self, v: u64) -> Result<(), Fault> {
        let s = *self.active().sregs();
        if v >> 32 != 0 || v & CR0_NW != 0 && v & CR0_CD == 0 || v & CR0_PG != 0 && v & CR0_PE == 0 {
            return Err(Fault::Gp);
        }
        // In VMX operation (L1 after VMXON, and L2) CR0 keeps the bits IA32_VMX_CR0_FIXED0/1
        // fix (SDM 24.8).
        let caps = &self.nested.vmx.caps;
        let in_vmx = self.level == Level::L2 || self.nested.vmx.vmxon;
        if in_vmx && (v & caps.cr0_fixed0 != caps.cr0_fixed0 || v & !caps.cr0_fixed1 & 0xffff_ffff != 0) {
            return Err(Fault::Gp);
        }
        let paging_on = v & CR0_PG != 0;
        if !paging_on && s.efer & EFER_LMA != 0 && s.cs.l != 0 {
            return Err(Fault::Gp);
        }
        if paging_on && s.cr0 & CR0_PG == 0 && s.efer & EFER_LME != 0 && s.cr4 & CR4_PAE == 0 {
            return Err(Fault::Gp);
        }
        // A host limit, not the SDM: paging outside IA-32e mode on a host that cannot run it is
        // refused as that host refuses an unpatched MOV to CR0.
        if paging_on && s.cr0 & CR0_PG == 0 && s.efer & EFER_LME == 0 && !self.host_legacy_paging {
            return Err(Fault::Gp);
        }
        let sr = self.active().sregs_mut();
        sr.cr0 = v;
        if sr.efer & EFER_LME != 0 {
            sr.efer = if paging_on { sr.efer | EFER_LMA } else { sr.efer & !EFER_LMA };
        }
        Ok(())
    }

    /// MOV to CR4: bits the CPU lacks (CR4_FIXED1 is what nestbed's CPU has), clearing PAE in
    /// IA-32e mode, PCIDE outside it or with CR3[11:0] set, and clearing VMXE in VMX operation
    /// are #GP, as is L2's clearing it. L1's VMXE is kept in the model, never in KVM.
    fn write_cr4(&mut self, v: u64, l1: bool) -> Result<(), Fault> {
        let s = *self.active().sregs();
        let lma = s.efer & EFER_LMA != 0;
        // The bits this CPU's CPUID offers (KVM refuses the others); in VMX operation also
        // IA32_VMX_CR4_FIXED0/1 (SDM 24.8).
        // L2 runs in VMX operation, where VMXE is 1 whatever L2's own CPUID says.
        let supported = crate::machine::vm::cr4_supported(&self.active().cpuid) | if l1 { 0 } else { CR4_VMXE };
        let caps = &self.nested.vmx.caps;
        let in_vmx = !l1 || self.nested.vmx.vmxon;
        let fixed_bad = in_vmx && (v & caps.cr4_fixed0 != caps.cr4_fixed0 || v & !caps.cr4_fixed1 != 0);
        if v & !supported != 0
            || fixed_bad
            || lma && v & CR4_PAE == 0
            || v & CR4_PCIDE != 0 && s.cr4 & CR4_PCIDE == 0 && (!lma || s.cr3 & 0xfff != 0)
        {
            return Err(Fault::Gp);
        }
        if l1 {
            let vmxe = v & CR4_VMXE != 0;
            if !vmxe && self.nested.vmx.vmxon {
                return Err(Fault::Gp);
            }
            self.nested.vmx.vmxe = vmxe;
        } else if v & CR4_VMXE == 0 {
            // A bit fixed in VMX operation, non-root included (SDM 24.8).
            return Err(Fault::Gp);
        }
        self.active().sregs_mut().cr4 = v & !CR4_VMXE;
        Ok(())
    }
}
