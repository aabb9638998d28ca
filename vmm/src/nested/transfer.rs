//! Moves state between the model's [`CpuState`] (VMCS layout, SDM 25.4) and a KVM vCPU's
//! sync-regs area. CR4.VMXE cannot be set on our hosts (README, "Host facts"), so it is stripped where
//! state enters KVM and restored from the VMCS where it comes back.

use kvm_bindings::{kvm_dtable, kvm_segment};

use crate::machine::Vcpu;
use crate::vmx::state::{CpuState, DescTable, Segment, AR_UNUSABLE};

pub const CR4_VMXE: u64 = 1 << 13;

/// VMX access rights (SDM 25.4.1, Table 25-2) to a KVM segment.
pub fn to_kvm(s: &Segment) -> kvm_segment {
    let ar = s.ar;
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: (ar & 0xf) as u8,
        s: ((ar >> 4) & 1) as u8,
        dpl: ((ar >> 5) & 3) as u8,
        present: ((ar >> 7) & 1) as u8,
        avl: ((ar >> 12) & 1) as u8,
        l: ((ar >> 13) & 1) as u8,
        db: ((ar >> 14) & 1) as u8,
        g: ((ar >> 15) & 1) as u8,
        unusable: u8::from(ar & AR_UNUSABLE != 0),
        padding: 0,
    }
}

pub fn from_kvm(k: &kvm_segment) -> Segment {
    let ar = u32::from(k.type_ & 0xf)
        | (u32::from(k.s & 1) << 4)
        | (u32::from(k.dpl & 3) << 5)
        | (u32::from(k.present & 1) << 7)
        | (u32::from(k.avl & 1) << 12)
        | (u32::from(k.l & 1) << 13)
        | (u32::from(k.db & 1) << 14)
        | (u32::from(k.g & 1) << 15)
        | if k.unusable != 0 { AR_UNUSABLE } else { 0 };
    Segment { selector: k.selector, base: k.base, limit: k.limit, ar }
}

fn dt(d: &DescTable) -> kvm_dtable {
    kvm_dtable { base: d.base, limit: d.limit as u16, padding: [0; 3] }
}

/// Loads segment, control and descriptor-table state plus RIP/RSP/RFLAGS into `vcpu`. SREGS
/// are marked for KVM to load only when they changed: loading them makes KVM reset its view of
/// the guest's paging, which costs more than the rest of a VM entry or exit together.
pub fn load(vcpu: &mut Vcpu, st: &CpuState) {
    let current = *vcpu.sregs();
    let mut s = current;
    s.cs = to_kvm(&st.cs);
    s.ss = to_kvm(&st.ss);
    s.ds = to_kvm(&st.ds);
    s.es = to_kvm(&st.es);
    s.fs = to_kvm(&st.fs);
    s.gs = to_kvm(&st.gs);
    s.tr = to_kvm(&st.tr);
    s.ldt = to_kvm(&st.ldtr);
    s.gdt = dt(&st.gdtr);
    s.idt = dt(&st.idtr);
    s.cr0 = st.cr0;
    s.cr3 = st.cr3;
    s.cr4 = st.cr4 & !CR4_VMXE;
    s.efer = st.efer;
    if s != current {
        *vcpu.sregs_mut() = s;
    }
    let r = vcpu.regs_mut();
    r.rip = st.rip;
    r.rsp = st.rsp;
    r.rflags = st.rflags | 2;
}

/// Reads the state a VM exit saves (SDM 28.3) from `vcpu` into `st`, which starts from the
/// VMCS's previous guest state (fields KVM does not expose stay as L1 wrote them).
pub fn save(vcpu: &Vcpu, st: &mut CpuState) {
    let s = vcpu.peek_sregs();
    let r = vcpu.peek_regs();
    st.cs = from_kvm(&s.cs);
    st.ss = from_kvm(&s.ss);
    st.ds = from_kvm(&s.ds);
    st.es = from_kvm(&s.es);
    st.fs = from_kvm(&s.fs);
    st.gs = from_kvm(&s.gs);
    st.tr = from_kvm(&s.tr);
    st.ldtr = from_kvm(&s.ldt);
    st.gdtr = DescTable { base: s.gdt.base, limit: u32::from(s.gdt.limit) };
    st.idtr = DescTable { base: s.idt.base, limit: u32::from(s.idt.limit) };
    st.cr0 = s.cr0;
    st.cr3 = s.cr3;
    st.cr4 = s.cr4 | (st.cr4 & CR4_VMXE);
    st.efer = s.efer;
    st.rip = r.rip;
    st.rsp = r.rsp;
    st.rflags = r.rflags;
}

/// IA32_SYSENTER_CS/ESP/EIP, which VM entry loads and VM exit saves (SDM 27.3.2.1,
/// 28.3.1) but KVM keeps outside the sync-regs area. L2's writes to them always reach nestbed
/// (`msr_filter`), so a VM exit saves them from the copy nestbed keeps, without an ioctl.
pub const SYSENTER_MSRS: [u32; 3] = [0x174, 0x175, 0x176];

/// IA32_PAT, loaded and saved with the "load/save IA32_PAT" controls (SDM 27.3.2.1, 28.3.1,
/// 28.5.1) and, like the SYSENTER MSRs, kept by nestbed for L2.
pub const IA32_PAT: u32 = 0x277;

pub fn load_msrs(vcpu: &Vcpu, sysenter: [u64; 3]) -> Result<(), crate::error::Error> {
    vcpu.set_msrs(&[(0x174, sysenter[0]), (0x175, sysenter[1]), (0x176, sysenter[2])])
}

/// Copies the general registers a VM entry or exit does not switch (all but RSP; RIP and
/// RFLAGS are not general registers).
pub fn copy_gprs(from: &Vcpu, to: &mut Vcpu) {
    let f = *from.peek_regs();
    let t = to.regs_mut();
    let (rsp, rip, rflags) = (t.rsp, t.rip, t.rflags);
    *t = f;
    t.rsp = rsp;
    t.rip = rip;
    t.rflags = rflags;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rights_round_trip() {
        for ar in [0xa09b, 0xc093, 0x8b, 0x1_0000, 0x82, 0xf3] {
            let s = Segment { selector: 0x10, base: 0x1234, limit: 0xffff, ar };
            assert_eq!(from_kvm(&to_kvm(&s)), s, "ar {ar:#x}");
        }
    }
}
