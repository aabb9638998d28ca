//! Moving processor state between the VMCS and a neutral `CpuState`: loading guest state on
//! VM entry (SDM 27.3.2), saving guest state on VM exit (SDM 28.3), loading host state on
//! VM exit (SDM 28.5) and recording exit information (SDM 28.2).
//!
//! `CR4.VMXE` is passed through as the VMCS says; the glue strips it before giving the
//! state to KVM (our hosts cannot set it).

use super::caps::{cr, entry, exit};
use super::fields::*;
use super::vmcs::Vmcs;

/// A segment register in VMX form: access rights as in SDM 25.4.1, Table 25-2 (type 3:0,
/// S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    pub ar: u32,
}

pub const AR_UNUSABLE: u32 = 1 << 16;

impl Segment {
    pub fn usable(&self) -> bool {
        self.ar & AR_UNUSABLE == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescTable {
    pub base: u64,
    pub limit: u32,
}

/// Processor state that VM entries and exits move.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuState {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr7: u64,
    pub efer: u64,
    /// `None`: IA32_PAT is not loaded (keep the processor's value).
    pub pat: Option<u64>,
    /// `None`: IA32_DEBUGCTL is not loaded (keep the processor's value).
    pub debugctl: Option<u64>,
    pub sysenter_cs: u32,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescTable,
    pub idtr: DescTable,
    /// GUEST_ACTIVITY_STATE (0 active, 1 HLT, ...).
    pub activity_state: u32,
    /// GUEST_INTERRUPTIBILITY_INFO.
    pub interruptibility: u32,
    pub pending_dbg_exceptions: u64,
}

/// The eight segment registers with their (selector, base, limit, AR) field encodings.
const SEGMENTS: [(u32, u32, u32, u32); 8] = [
    (GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES),
    (GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES),
    (GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES),
    (GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES),
    (GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES),
    (GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES),
    (GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES),
    (GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES),
];

impl CpuState {
    fn segments_mut(&mut self) -> [&mut Segment; 8] {
        [
            &mut self.es,
            &mut self.cs,
            &mut self.ss,
            &mut self.ds,
            &mut self.fs,
            &mut self.gs,
            &mut self.ldtr,
            &mut self.tr,
        ]
    }

    fn segments(&self) -> [&Segment; 8] {
        [&self.es, &self.cs, &self.ss, &self.ds, &self.fs, &self.gs, &self.ldtr, &self.tr]
    }
}

/// Guest state loaded by VM entry (SDM 27.3.2). Without "load IA32_EFER", EFER.LMA is the
/// "IA-32e mode guest" control, EFER.LME too when CR0.PG = 1, and the other EFER bits are 0;
/// use [`load_guest_state_with_efer`] to keep L1's other bits as hardware does.
pub fn load_guest_state(vmcs: &Vmcs) -> CpuState {
    load_guest_state_with_efer(vmcs, 0)
}

/// [`load_guest_state`] keeping the bits of `current_efer` (L1's IA32_EFER) that VM entry
/// does not load (SDM 27.3.2.1).
pub fn load_guest_state_with_efer(vmcs: &Vmcs, current_efer: u64) -> CpuState {
    let entryv = vmcs.get32(VM_ENTRY_CONTROLS);
    let ia32e = entryv & entry::IA32E_MODE_GUEST != 0;
    let mut st = CpuState {
        rip: vmcs.get(GUEST_RIP),
        rsp: vmcs.get(GUEST_RSP),
        rflags: vmcs.get(GUEST_RFLAGS),
        cr0: vmcs.get(GUEST_CR0),
        cr3: vmcs.get(GUEST_CR3),
        cr4: vmcs.get(GUEST_CR4),
        sysenter_cs: vmcs.get32(GUEST_SYSENTER_CS),
        sysenter_esp: vmcs.get(GUEST_SYSENTER_ESP),
        sysenter_eip: vmcs.get(GUEST_SYSENTER_EIP),
        gdtr: DescTable { base: vmcs.get(GUEST_GDTR_BASE), limit: vmcs.get32(GUEST_GDTR_LIMIT) },
        idtr: DescTable { base: vmcs.get(GUEST_IDTR_BASE), limit: vmcs.get32(GUEST_IDTR_LIMIT) },
        activity_state: vmcs.get32(GUEST_ACTIVITY_STATE),
        interruptibility: vmcs.get32(GUEST_INTERRUPTIBILITY_INFO),
        pending_dbg_exceptions: vmcs.get(GUEST_PENDING_DBG_EXCEPTIONS),
        ..CpuState::default()
    };
    for (seg, (sel, base, limit, ar)) in st.segments_mut().into_iter().zip(SEGMENTS) {
        *seg = Segment {
            selector: vmcs.get(sel) as u16,
            base: vmcs.get(base),
            limit: vmcs.get32(limit),
            ar: vmcs.get32(ar),
        };
    }
    // Without "load debug controls" DR7 is not loaded: `dr7` then carries the field
    // value and the glue keeps L1's DR7 (and DEBUGCTL stays `None`).
    st.dr7 = vmcs.get(GUEST_DR7);
    if entryv & entry::LOAD_DEBUG_CONTROLS != 0 {
        st.debugctl = Some(vmcs.get(GUEST_IA32_DEBUGCTL));
    }
    if entryv & entry::LOAD_IA32_PAT != 0 {
        st.pat = Some(vmcs.get(GUEST_IA32_PAT));
    }
    st.efer = if entryv & entry::LOAD_IA32_EFER != 0 {
        vmcs.get(GUEST_IA32_EFER)
    } else {
        let mut e = current_efer & !cr::EFER_LMA;
        if ia32e {
            e |= cr::EFER_LMA;
        }
        if st.cr0 & cr::CR0_PG != 0 {
            e = (e & !cr::EFER_LME) | if ia32e { cr::EFER_LME } else { 0 };
        }
        e
    };
    st
}

/// Saves guest state on VM exit (SDM 28.3), honouring "save debug controls", "save
/// IA32_PAT" and "save IA32_EFER", and stores EFER.LMA into the "IA-32e mode guest" entry
/// control (SDM 28.2, advertised by IA32_VMX_MISC bit 5).
pub fn save_guest_state(vmcs: &mut Vmcs, st: &CpuState) {
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);
    vmcs.set(GUEST_CR0, st.cr0);
    vmcs.set(GUEST_CR3, st.cr3);
    vmcs.set(GUEST_CR4, st.cr4);
    vmcs.set(GUEST_RIP, st.rip);
    vmcs.set(GUEST_RSP, st.rsp);
    vmcs.set(GUEST_RFLAGS, st.rflags);
    for (seg, (sel, base, limit, ar)) in st.segments().into_iter().zip(SEGMENTS) {
        vmcs.set(sel, u64::from(seg.selector));
        vmcs.set(base, seg.base);
        vmcs.set(limit, u64::from(seg.limit));
        vmcs.set(ar, u64::from(seg.ar));
    }
    vmcs.set(GUEST_GDTR_BASE, st.gdtr.base);
    vmcs.set(GUEST_GDTR_LIMIT, u64::from(st.gdtr.limit));
    vmcs.set(GUEST_IDTR_BASE, st.idtr.base);
    vmcs.set(GUEST_IDTR_LIMIT, u64::from(st.idtr.limit));
    vmcs.set(GUEST_SYSENTER_CS, u64::from(st.sysenter_cs));
    vmcs.set(GUEST_SYSENTER_ESP, st.sysenter_esp);
    vmcs.set(GUEST_SYSENTER_EIP, st.sysenter_eip);
    vmcs.set(GUEST_ACTIVITY_STATE, u64::from(st.activity_state));
    vmcs.set(GUEST_INTERRUPTIBILITY_INFO, u64::from(st.interruptibility));
    vmcs.set(GUEST_PENDING_DBG_EXCEPTIONS, st.pending_dbg_exceptions);
    if exitv & exit::SAVE_DEBUG_CONTROLS != 0 {
        vmcs.set(GUEST_DR7, st.dr7);
        if let Some(d) = st.debugctl {
            vmcs.set(GUEST_IA32_DEBUGCTL, d);
        }
    }
    if exitv & exit::SAVE_IA32_PAT != 0 {
        if let Some(p) = st.pat {
            vmcs.set(GUEST_IA32_PAT, p);
        }
    }
    if exitv & exit::SAVE_IA32_EFER != 0 {
        vmcs.set(GUEST_IA32_EFER, st.efer);
    }
    let mut entryv = vmcs.get32(VM_ENTRY_CONTROLS) & !entry::IA32E_MODE_GUEST;
    if st.efer & cr::EFER_LMA != 0 {
        entryv |= entry::IA32E_MODE_GUEST;
    }
    vmcs.set(VM_ENTRY_CONTROLS, u64::from(entryv));
}

/// Host state loaded by VM exit (SDM 28.5). `current_efer` is L1's IA32_EFER at the exit,
/// used when "load IA32_EFER" is 0 (then only LMA and LME change). `pat` is `None` unless
/// "load IA32_PAT"; DEBUGCTL is cleared (28.5.1).
pub fn load_host_state(vmcs: &Vmcs, current_efer: u64) -> CpuState {
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);
    let host64 = exitv & exit::HOST_ADDR_SPACE_SIZE != 0;
    // 28.5.1: CR4.PAE set with a 64-bit host, CR4.PCIDE cleared with a 32-bit one.
    let mut cr4 = vmcs.get(HOST_CR4);
    if host64 {
        cr4 |= cr::CR4_PAE;
    } else {
        cr4 &= !cr::CR4_PCIDE;
    }
    let efer = if exitv & exit::LOAD_IA32_EFER != 0 {
        vmcs.get(HOST_IA32_EFER)
    } else if host64 {
        current_efer | cr::EFER_LMA | cr::EFER_LME
    } else {
        current_efer & !(cr::EFER_LMA | cr::EFER_LME)
    };
    // 28.5.2: flat segments, type and flags fixed by the SDM.
    const S: u32 = 1 << 4;
    const P: u32 = 1 << 7;
    const DB: u32 = 1 << 14;
    const G: u32 = 1 << 15;
    let cs_ar = 11 | S | P | G | if host64 { 1 << 13 } else { DB };
    let data = |sel: u32, base: u64| {
        let selector = vmcs.get(sel) as u16;
        Segment {
            selector,
            base,
            limit: 0xffff_ffff,
            ar: 3 | S | P | DB | G | if selector == 0 { AR_UNUSABLE } else { 0 },
        }
    };
    CpuState {
        rip: vmcs.get(HOST_RIP),
        rsp: vmcs.get(HOST_RSP),
        rflags: 0x2,
        cr0: vmcs.get(HOST_CR0),
        cr3: vmcs.get(HOST_CR3),
        cr4,
        dr7: 0x400,
        efer,
        pat: (exitv & exit::LOAD_IA32_PAT != 0).then(|| vmcs.get(HOST_IA32_PAT)),
        debugctl: Some(0),
        sysenter_cs: vmcs.get32(HOST_IA32_SYSENTER_CS),
        sysenter_esp: vmcs.get(HOST_IA32_SYSENTER_ESP),
        sysenter_eip: vmcs.get(HOST_IA32_SYSENTER_EIP),
        cs: Segment { selector: vmcs.get(HOST_CS_SELECTOR) as u16, base: 0, limit: 0xffff_ffff, ar: cs_ar },
        ss: data(HOST_SS_SELECTOR, 0),
        ds: data(HOST_DS_SELECTOR, 0),
        es: data(HOST_ES_SELECTOR, 0),
        fs: data(HOST_FS_SELECTOR, vmcs.get(HOST_FS_BASE)),
        gs: data(HOST_GS_SELECTOR, vmcs.get(HOST_GS_BASE)),
        tr: Segment {
            selector: vmcs.get(HOST_TR_SELECTOR) as u16,
            base: vmcs.get(HOST_TR_BASE),
            limit: 0x67,
            ar: 11 | P,
        },
        ldtr: Segment { selector: 0, base: 0, limit: 0, ar: AR_UNUSABLE },
        gdtr: DescTable { base: vmcs.get(HOST_GDTR_BASE), limit: 0xffff },
        idtr: DescTable { base: vmcs.get(HOST_IDTR_BASE), limit: 0xffff },
        activity_state: 0,
        interruptibility: 0,
        pending_dbg_exceptions: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::checks::testing::test_vmcs_64bit;
    use super::*;

    #[test]
    fn guest_load_save_round_trip() {
        let v = test_vmcs_64bit();
        let st = load_guest_state(&v);
        assert_eq!(st.rip, 0x1000);
        assert_eq!(st.cs, Segment { selector: 8, base: 0, limit: 0xffff_ffff, ar: 0xa09b });
        assert!(!st.fs.usable());
        assert_eq!(st.tr.base, 0x3000);
        assert_eq!(st.efer, 0x500);
        assert_eq!(st.pat, None);
        assert_eq!(st.gdtr, DescTable { base: 0x4000, limit: 0x27 });
        let mut w = v.clone();
        save_guest_state(&mut w, &st);
        assert_eq!(w, v);

        let mut st2 = st.clone();
        st2.rip = 0x2000;
        st2.efer = 0xd00;
        st2.pat = Some(0x6);
        save_guest_state(&mut w, &st2);
        assert_eq!(w.get(GUEST_RIP), 0x2000);
        assert_eq!(w.get(GUEST_IA32_EFER), 0xd00);
        assert_eq!(w.get(GUEST_IA32_PAT), v.get(GUEST_IA32_PAT), "save IA32_PAT is off");
        // EFER.LMA is stored into the IA-32e mode guest control.
        st2.efer = 0;
        save_guest_state(&mut w, &st2);
        assert_eq!(w.get32(VM_ENTRY_CONTROLS) & entry::IA32E_MODE_GUEST, 0);
    }

    #[test]
    fn guest_efer_without_load_control() {
        let mut v = test_vmcs_64bit();
        let e = v.get32(VM_ENTRY_CONTROLS) & !entry::LOAD_IA32_EFER;
        v.set(VM_ENTRY_CONTROLS, u64::from(e));
        assert_eq!(load_guest_state_with_efer(&v, 0x801).efer, 0xd01);
        assert_eq!(load_guest_state(&v).efer, 0x500);
        v.set(VM_ENTRY_CONTROLS, u64::from(e & !entry::IA32E_MODE_GUEST));
        assert_eq!(load_guest_state_with_efer(&v, 0xd01).efer, 0x801);
        v.set(VM_ENTRY_CONTROLS, u64::from(e | entry::LOAD_IA32_PAT));
        assert_eq!(load_guest_state(&v).pat, Some(v.get(GUEST_IA32_PAT)));
    }

    #[test]
    fn host_state() {
        let mut v = test_vmcs_64bit();
        let h = load_host_state(&v, 0);
        assert_eq!((h.rip, h.rsp, h.rflags, h.dr7), (0xffff_ffff_8000_1000, 0xffff_8000_0001_0000, 2, 0x400));
        assert_eq!(h.cs.ar, 0xa09b);
        assert_eq!(h.ss, Segment { selector: 0x10, base: 0, limit: 0xffff_ffff, ar: 0xc093 });
        assert!(!h.fs.usable());
        assert_eq!(h.gs.base, 0xffff_8000_0000_6000);
        assert_eq!(h.tr, Segment { selector: 0x18, base: 0xffff_8000_0000_3000, limit: 0x67, ar: 0x8b });
        assert!(!h.ldtr.usable());
        assert_eq!(h.gdtr, DescTable { base: 0xffff_8000_0000_4000, limit: 0xffff });
        assert_eq!(h.efer, 0xd01);
        assert_eq!(h.pat, None);
        assert_eq!(h.cr4, 0x2020);
        // Without load IA32_EFER only LMA/LME follow the host address-space size.
        let x = v.get32(VM_EXIT_CONTROLS) & !exit::LOAD_IA32_EFER;
        v.set(VM_EXIT_CONTROLS, u64::from(x | exit::LOAD_IA32_PAT));
        let h = load_host_state(&v, 0x801);
        assert_eq!(h.efer, 0xd01);
        assert_eq!(h.pat, Some(v.get(HOST_IA32_PAT)));
        v.set(VM_EXIT_CONTROLS, u64::from(x & !exit::HOST_ADDR_SPACE_SIZE));
        let h = load_host_state(&v, 0xd01);
        assert_eq!(h.efer, 0x801);
        assert_eq!(h.cs.ar, 0xc09b);
    }
}
