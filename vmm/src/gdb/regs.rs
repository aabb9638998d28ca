//! A vCPU's state as gdb's register file, and back: general and system registers through the
//! sync-regs area, x87/SSE with KVM_GET_FPU/KVM_SET_FPU and KERNEL_GS_BASE as an MSR, both
//! only while the guest is stopped.

use super::arch::Regs;
use crate::error::{host, Error};
use crate::machine::arch_rules::{self, SystemRegs};
use crate::machine::Vcpu;

const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

pub fn read(v: &mut Vcpu) -> Result<Regs, Error> {
    v.refresh()?;
    let r = *v.regs();
    let s = *v.sregs();
    let fpu = v.fd().get_fpu().map_err(host("KVM_GET_FPU"))?;
    let kgs = v.get_msrs(&[IA32_KERNEL_GS_BASE])?.first().copied().unwrap_or(0);
    let mut g = Regs {
        gpr: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ],
        rip: r.rip,
        eflags: r.rflags as u32,
        seg: [s.cs, s.ss, s.ds, s.es, s.fs, s.gs].map(|x| u32::from(x.selector)),
        fs_base: s.fs.base,
        gs_base: s.gs.base,
        k_gs_base: kgs,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        mxcsr: fpu.mxcsr,
        ..Default::default()
    };
    for (st, fpr) in g.st.iter_mut().zip(fpu.fpr.iter()) {
        st.copy_from_slice(&fpr[..10]);
    }
    // KVM keeps the abridged tag (one bit per register, set = valid); gdb shows the full
    // tag word (00 valid, 11 empty).
    let ftag = (0..8).fold(0u32, |t, i| if fpu.ftwx & (1 << i) != 0 { t } else { t | 0b11 << (2 * i) });
    g.fpu = [
        u32::from(fpu.fcw),
        u32::from(fpu.fsw),
        ftag,
        0,
        fpu.last_ip as u32,
        0,
        fpu.last_dp as u32,
        u32::from(fpu.last_opcode),
    ];
    for (x, b) in g.xmm.iter_mut().zip(fpu.xmm.iter()) {
        *x = u128::from_le_bytes(*b);
    }
    Ok(g)
}

/// Why a register write did not happen.
pub enum WriteError {
    /// The values break an architectural rule (or KVM refuses them): nothing was written.
    Refused(String),
    Host(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        WriteError::Host(e)
    }
}

/// Writes what changed, after checking the new values against the architecture
/// (`arch_rules`) and, for the system registers, against KVM itself: a state KVM would refuse
/// at the next KVM_RUN is refused now. Segment selectors change only the selector (no
/// descriptor load).
pub fn write(v: &mut Vcpu, g: &Regs) -> Result<(), WriteError> {
    let old = read(v)?;
    let s0 = *v.sregs();
    let sys = |cr0, cr3, cr4, cr8, efer| SystemRegs { cr0, cr3, cr4, cr8, efer, cs_l: s0.cs.l != 0 };
    let before = sys(old.cr0, old.cr3, old.cr4, old.cr8, old.efer);
    let after = sys(g.cr0, g.cr3, g.cr4, g.cr8, g.efer);
    let sys_changed = (old.seg, old.fs_base, old.gs_base, old.cr0, old.cr2, old.cr3, old.cr4, old.cr8, old.efer)
        != (g.seg, g.fs_base, g.gs_base, g.cr0, g.cr2, g.cr3, g.cr4, g.cr8, g.efer);
    if sys_changed {
        arch_rules::check_system(&before, &after).map_err(WriteError::Refused)?;
    }
    let ia32e = after.efer & (1 << 10) != 0;
    let rflags = (v.regs().rflags & !0xffff_ffff) | u64::from(g.eflags);
    if u64::from(g.eflags) != u64::from(old.eflags) {
        arch_rules::check_rflags(rflags, ia32e).map_err(WriteError::Refused)?;
    }
    if g.rip != old.rip {
        arch_rules::check_rip(g.rip, Some(ia32e && after.cs_l)).map_err(WriteError::Refused)?;
    }
    if sys_changed {
        let mut s = s0;
        for (seg, sel) in [&mut s.cs, &mut s.ss, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs].into_iter().zip(g.seg) {
            seg.selector = sel as u16;
        }
        s.fs.base = g.fs_base;
        s.gs.base = g.gs_base;
        (s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer) = (g.cr0, g.cr2, g.cr3, g.cr4, g.cr8, g.efer);
        v.try_set_sregs(&s).map_err(|e| WriteError::Refused(format!("KVM refuses the system registers: {e}")))?;
    }
    let r = v.regs_mut();
    [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15] =
        g.gpr;
    r.rip = g.rip;
    r.rflags = rflags;
    if (old.st, old.fpu, old.xmm, old.mxcsr) != (g.st, g.fpu, g.xmm, g.mxcsr) {
        let mut fpu = v.fd().get_fpu().map_err(host("KVM_GET_FPU"))?;
        for (fpr, st) in fpu.fpr.iter_mut().zip(g.st.iter()) {
            fpr[..10].copy_from_slice(st);
        }
        fpu.fcw = g.fpu[0] as u16;
        fpu.fsw = g.fpu[1] as u16;
        fpu.ftwx = (0..8).fold(0u8, |t, i| if (g.fpu[2] >> (2 * i)) & 0b11 == 0b11 { t } else { t | 1 << i });
        fpu.last_opcode = g.fpu[7] as u16;
        for (b, x) in fpu.xmm.iter_mut().zip(g.xmm.iter()) {
            *b = x.to_le_bytes();
        }
        fpu.mxcsr = g.mxcsr;
        v.fd().set_fpu(&fpu).map_err(host("KVM_SET_FPU"))?;
    }
    if old.k_gs_base != g.k_gs_base {
        v.set_msrs(&[(IA32_KERNEL_GS_BASE, g.k_gs_base)])?;
    }
    Ok(())
}
