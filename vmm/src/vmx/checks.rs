//! VM-entry checks (SDM 27.2 "Checks on VMX Controls and Host-State Area", 27.3.1 "Checks
//! on the Guest State Area") as named rules, evaluated in SDM order; the first violated
//! rule is reported.
//!
//! Not checked (nestbed cannot see the needed state or does not advertise the feature):
//! MSR-load/store list contents (27.4), guest PDPTEs read from memory when EPT is off,
//! and the revision identifier of a VMCS link pointer (the link pointer must be all-ones
//! because VMCS shadowing is not advertised; hardware would also accept a pointer to a
//! VMCS region, see [`check_vm_entry`]).

use std::fmt;

use super::bits::{bad_page_addr, beyond_width, fixed_ok, is_canonical, pat_valid};
use super::caps::{cr, entry, ept_cap, exit, pin, proc, proc2, Control, VmxCaps};
use super::fields::*;
use super::vmcs::Vmcs;

/// How a failed check surfaces (SDM 27.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckClass {
    /// VMfailValid(7): VM entry with invalid control field(s).
    Control,
    /// VMfailValid(8): VM entry with invalid host-state field(s).
    HostState,
    /// VM exit with basic reason ENTRY_FAIL_GUEST_STATE (33) | bit 31 and this exit
    /// qualification (SDM 27.8).
    GuestState { qualification: u64 },
}

/// A violated VM-entry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    /// SDM section, e.g. "27.2.2".
    pub sdm: &'static str,
    pub class: CheckClass,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SDM {})", self.rule, self.sdm)
    }
}

/// Exit qualifications of ENTRY_FAIL_GUEST_STATE (SDM 27.8).
pub const ENTRY_FAIL_DEFAULT: u64 = 0;
pub const ENTRY_FAIL_PDPTE: u64 = 2;
pub const ENTRY_FAIL_NMI: u64 = 3;
pub const ENTRY_FAIL_VMCS_LINK_PTR: u64 = 4;

const C: CheckClass = CheckClass::Control;
const H: CheckClass = CheckClass::HostState;
const G: CheckClass = CheckClass::GuestState { qualification: ENTRY_FAIL_DEFAULT };

macro_rules! rule {
    ($bad:expr, $class:expr, $sdm:literal, $rule:literal) => {
        if $bad {
            return Err(Violation { rule: $rule, sdm: $sdm, class: $class });
        }
    };
}

/// IA32_EFER bits defined on Intel 64: SCE, LME, LMA, NXE.
const EFER_VALID: u64 = cr::EFER_SCE | cr::EFER_LME | cr::EFER_LMA | cr::EFER_NXE;

/// The EPTP checks of SDM 27.2.1.1 (also INVEPT single-context, SDM 31 INVEPT).
fn check_eptp(eptp: u64, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let cap = caps.ept_vpid_cap;
    let mt_ok = match eptp & 7 {
        0 => cap & ept_cap::MEMTYPE_UC != 0,
        6 => cap & ept_cap::MEMTYPE_WB != 0,
        _ => false,
    };
    rule!(!mt_ok, C, "27.2.1.1", "EPTP memory type not supported");
    let walk_ok = match (eptp >> 3) & 7 {
        3 => cap & ept_cap::PAGE_WALK_4 != 0,
        4 => cap & ept_cap::PAGE_WALK_5 != 0,
        _ => false,
    };
    rule!(!walk_ok, C, "27.2.1.1", "EPTP page-walk length not supported");
    rule!(
        eptp & (1 << 6) != 0 && cap & ept_cap::AD_FLAGS == 0,
        C,
        "27.2.1.1",
        "EPTP accessed/dirty enable set without support"
    );
    rule!(eptp & 0xf80 != 0, C, "27.2.1.1", "EPTP reserved bits 11:7 set");
    rule!(beyond_width(eptp, width), C, "27.2.1.1", "EPTP address beyond physical-address width");
    Ok(())
}

/// True when `eptp` passes the EPTP checks (SDM 27.2.1.1).
pub fn eptp_valid(eptp: u64, caps: &VmxCaps, phys_width: u8) -> bool {
    check_eptp(eptp, caps, phys_width).is_ok()
}

/// All checks of SDM 27.2 and 27.3.1, for a processor in IA-32e mode (L1 is 64-bit).
pub fn check_vm_entry(vmcs: &Vmcs, caps: &VmxCaps, phys_width: u8) -> Result<(), Violation> {
    check_vm_entry_from(vmcs, caps, phys_width, true)
}

/// [`check_vm_entry`] for a processor whose IA32_EFER.LMA is `host_lma` (SDM 27.2.4).
pub fn check_vm_entry_from(vmcs: &Vmcs, caps: &VmxCaps, phys_width: u8, host_lma: bool) -> Result<(), Violation> {
    check_controls(vmcs, caps, phys_width)?;
    check_host_state(vmcs, caps, phys_width, host_lma)?;
    check_guest_state(vmcs, caps, phys_width)
}

/// Secondary controls as VM entry sees them: 0 unless activated (SDM 25.6.2).
fn secondary(vmcs: &Vmcs) -> u32 {
    if vmcs.get32(CPU_BASED_VM_EXEC_CONTROL) & proc::ACTIVATE_SECONDARY_CONTROLS != 0 {
        vmcs.get32(SECONDARY_VM_EXEC_CONTROL)
    } else {
        0
    }
}

fn msr_list_bad(addr: u64, count: u64, width: u8) -> bool {
    count != 0 && (addr & 0xf != 0 || beyond_width(addr.wrapping_add(count * 16 - 1), width))
}

/// SDM 27.2.1: VM-execution, VM-exit and VM-entry control fields.
pub fn check_controls(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let pinv = vmcs.get32(PIN_BASED_VM_EXEC_CONTROL);
    let primary = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
    let sec = secondary(vmcs);
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);
    let entryv = vmcs.get32(VM_ENTRY_CONTROLS);

    // 27.2.1.1 VM-execution control fields.
    rule!(
        !caps.cap(Control::Pin).permits(pinv),
        C,
        "27.2.1.1",
        "pin-based controls violate IA32_VMX_TRUE_PINBASED_CTLS"
    );
    rule!(
        !caps.cap(Control::Primary).permits(primary),
        C,
        "27.2.1.1",
        "primary processor-based controls violate IA32_VMX_TRUE_PROCBASED_CTLS"
    );
    rule!(
        primary & proc::ACTIVATE_SECONDARY_CONTROLS != 0 && !caps.cap(Control::Secondary).permits(sec),
        C,
        "27.2.1.1",
        "secondary processor-based controls violate IA32_VMX_PROCBASED_CTLS2"
    );
    rule!(
        vmcs.get(CR3_TARGET_COUNT) > u64::from(caps.cr3_target_count()),
        C,
        "27.2.1.1",
        "CR3-target count greater than supported"
    );
    if primary & proc::USE_IO_BITMAPS != 0 {
        rule!(
            bad_page_addr(vmcs.get(IO_BITMAP_A), width),
            C,
            "27.2.1.1",
            "I/O bitmap A address not 4-KByte aligned or beyond physical-address width"
        );
        rule!(
            bad_page_addr(vmcs.get(IO_BITMAP_B), width),
            C,
            "27.2.1.1",
            "I/O bitmap B address not 4-KByte aligned or beyond physical-address width"
        );
    }
    if primary & proc::USE_MSR_BITMAPS != 0 {
        rule!(
            bad_page_addr(vmcs.get(MSR_BITMAP), width),
            C,
            "27.2.1.1",
            "MSR bitmap address not 4-KByte aligned or beyond physical-address width"
        );
    }
    if primary & proc::USE_TPR_SHADOW != 0 {
        rule!(
            bad_page_addr(vmcs.get(VIRTUAL_APIC_PAGE_ADDR), width),
            C,
            "27.2.1.1",
            "virtual-APIC address not 4-KByte aligned or beyond physical-address width"
        );
    }
    rule!(
        pinv & pin::NMI_EXITING == 0 && pinv & pin::VIRTUAL_NMIS != 0,
        C,
        "27.2.1.1",
        "virtual NMIs set while NMI exiting is clear"
    );
    rule!(
        pinv & pin::VIRTUAL_NMIS == 0 && primary & proc::NMI_WINDOW_EXITING != 0,
        C,
        "27.2.1.1",
        "NMI-window exiting set while virtual NMIs is clear"
    );
    if sec & proc2::VIRTUALIZE_APIC_ACCESSES != 0 {
        rule!(
            bad_page_addr(vmcs.get(APIC_ACCESS_ADDR), width),
            C,
            "27.2.1.1",
            "APIC-access address not 4-KByte aligned or beyond physical-address width"
        );
    }
    rule!(
        sec & proc2::ENABLE_VPID != 0 && vmcs.get(VIRTUAL_PROCESSOR_ID) == 0,
        C,
        "27.2.1.1",
        "VPID is 0 while enable VPID is set"
    );
    if sec & proc2::ENABLE_EPT != 0 {
        check_eptp(vmcs.get(EPT_POINTER), caps, width)?;
    }
    rule!(
        sec & proc2::UNRESTRICTED_GUEST != 0 && sec & proc2::ENABLE_EPT == 0,
        C,
        "27.2.1.1",
        "unrestricted guest set while enable EPT is clear"
    );
    if sec & proc2::VMCS_SHADOWING != 0 {
        rule!(
            bad_page_addr(vmcs.get(VMREAD_BITMAP), width),
            C,
            "27.2.1.1",
            "VMREAD-bitmap address not 4-KByte aligned or beyond physical-address width"
        );
        rule!(
            bad_page_addr(vmcs.get(VMWRITE_BITMAP), width),
            C,
            "27.2.1.1",
            "VMWRITE-bitmap address not 4-KByte aligned or beyond physical-address width"
        );
    }

    // 27.2.1.2 VM-exit control fields.
    rule!(!caps.cap(Control::Exit).permits(exitv), C, "27.2.1.2", "VM-exit controls violate IA32_VMX_TRUE_EXIT_CTLS");
    rule!(
        pinv & pin::ACTIVATE_PREEMPTION_TIMER == 0 && exitv & exit::SAVE_PREEMPTION_TIMER != 0,
        C,
        "27.2.1.2",
        "save VMX-preemption timer set while activate VMX-preemption timer is clear"
    );
    rule!(
        msr_list_bad(vmcs.get(VM_EXIT_MSR_STORE_ADDR), vmcs.get(VM_EXIT_MSR_STORE_COUNT), width),
        C,
        "27.2.1.2",
        "VM-exit MSR-store address not 16-byte aligned or list beyond physical-address width"
    );
    rule!(
        msr_list_bad(vmcs.get(VM_EXIT_MSR_LOAD_ADDR), vmcs.get(VM_EXIT_MSR_LOAD_COUNT), width),
        C,
        "27.2.1.2",
        "VM-exit MSR-load address not 16-byte aligned or list beyond physical-address width"
    );

    // 27.2.1.3 VM-entry control fields.
    rule!(
        !caps.cap(Control::Entry).permits(entryv),
        C,
        "27.2.1.3",
        "VM-entry controls violate IA32_VMX_TRUE_ENTRY_CTLS"
    );
    let info = vmcs.get32(VM_ENTRY_INTR_INFO_FIELD);
    if info & (1 << 31) != 0 {
        let ty = (info >> 8) & 7;
        let vector = info & 0xff;
        let mtf = caps.cap(Control::Primary).allowed1 & proc::MONITOR_TRAP_FLAG != 0;
        rule!(ty == 1 || (ty == 7 && !mtf), C, "27.2.1.3", "VM-entry interruption type reserved");
        rule!(ty == 2 && vector != 2, C, "27.2.1.3", "VM-entry NMI injection with vector other than 2");
        rule!(ty == 3 && vector > 31, C, "27.2.1.3", "VM-entry hardware exception with vector above 31");
        rule!(ty == 7 && vector != 0, C, "27.2.1.3", "VM-entry other-event injection with vector other than 0");
        let unrestricted = secondary(vmcs) & proc2::UNRESTRICTED_GUEST != 0;
        let pe = vmcs.get(GUEST_CR0) & cr::CR0_PE != 0;
        let has_code = ty == 3 && matches!(vector, 8 | 10..=14 | 17 | 21) && (!unrestricted || pe);
        let deliver = info & (1 << 11) != 0;
        rule!(deliver && !has_code, C, "27.2.1.3", "VM-entry deliver-error-code set for event without error code");
        rule!(
            !deliver && has_code && caps.basic & (1 << 56) == 0,
            C,
            "27.2.1.3",
            "VM-entry deliver-error-code clear for exception with error code"
        );
        rule!(info & 0x7fff_f000 != 0, C, "27.2.1.3", "VM-entry interruption-information reserved bits 30:12 set");
        rule!(
            deliver && vmcs.get(VM_ENTRY_EXCEPTION_ERROR_CODE) & 0xffff_8000 != 0,
            C,
            "27.2.1.3",
            "VM-entry exception error code bits 31:15 set"
        );
        let len = vmcs.get(VM_ENTRY_INSTRUCTION_LEN);
        let zero_len_ok = caps.misc & (1 << 30) != 0;
        rule!(
            matches!(ty, 4..=6) && (len > 15 || (len == 0 && !zero_len_ok)),
            C,
            "27.2.1.3",
            "VM-entry instruction length out of range for software event"
        );
    }
    rule!(
        msr_list_bad(vmcs.get(VM_ENTRY_MSR_LOAD_ADDR), vmcs.get(VM_ENTRY_MSR_LOAD_COUNT), width),
        C,
        "27.2.1.3",
        "VM-entry MSR-load address not 16-byte aligned or list beyond physical-address width"
    );
    rule!(
        entryv & (entry::ENTRY_TO_SMM | entry::DEACTIVATE_DUAL_MONITOR) != 0,
        C,
        "27.2.1.3",
        "entry to SMM or deactivate dual-monitor treatment set outside SMM"
    );
    Ok(())
}

/// SDM 27.2.2 - 27.2.4: host-state area.
pub fn check_host_state(vmcs: &Vmcs, caps: &VmxCaps, width: u8, host_lma: bool) -> Result<(), Violation> {
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);
    let host64 = exitv & exit::HOST_ADDR_SPACE_SIZE != 0;
    let cr4 = vmcs.get(HOST_CR4);

    // 27.2.2 Host control registers and MSRs.
    rule!(
        !fixed_ok(vmcs.get(HOST_CR0), caps.cr0_fixed0, caps.cr0_fixed1),
        H,
        "27.2.2",
        "host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"
    );
    rule!(
        !fixed_ok(cr4, caps.cr4_fixed0, caps.cr4_fixed1),
        H,
        "27.2.2",
        "host CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"
    );
    rule!(beyond_width(vmcs.get(HOST_CR3), width), H, "27.2.2", "host CR3 beyond physical-address width");
    rule!(!is_canonical(vmcs.get(HOST_IA32_SYSENTER_ESP), 48), H, "27.2.2", "host IA32_SYSENTER_ESP not canonical");
    rule!(!is_canonical(vmcs.get(HOST_IA32_SYSENTER_EIP), 48), H, "27.2.2", "host IA32_SYSENTER_EIP not canonical");
    rule!(
        exitv & exit::LOAD_IA32_PAT != 0 && !pat_valid(vmcs.get(HOST_IA32_PAT)),
        H,
        "27.2.2",
        "host IA32_PAT has an invalid memory type"
    );
    if exitv & exit::LOAD_IA32_EFER != 0 {
        let efer = vmcs.get(HOST_IA32_EFER);
        rule!(efer & !EFER_VALID != 0, H, "27.2.2", "host IA32_EFER reserved bits set");
        rule!(
            (efer & cr::EFER_LMA != 0) != host64,
            H,
            "27.2.2",
            "host IA32_EFER.LMA differs from host address-space size"
        );
        rule!(
            (efer & cr::EFER_LME != 0) != host64,
            H,
            "27.2.2",
            "host IA32_EFER.LME differs from host address-space size"
        );
    }

    // 27.2.3 Host segment and descriptor-table registers.
    for (enc, rule) in [
        (HOST_ES_SELECTOR, "host ES selector RPL or TI not 0"),
        (HOST_CS_SELECTOR, "host CS selector RPL or TI not 0"),
        (HOST_SS_SELECTOR, "host SS selector RPL or TI not 0"),
        (HOST_DS_SELECTOR, "host DS selector RPL or TI not 0"),
        (HOST_FS_SELECTOR, "host FS selector RPL or TI not 0"),
        (HOST_GS_SELECTOR, "host GS selector RPL or TI not 0"),
        (HOST_TR_SELECTOR, "host TR selector RPL or TI not 0"),
    ] {
        if vmcs.get(enc) & 7 != 0 {
            return Err(Violation { rule, sdm: "27.2.3", class: H });
        }
    }
    rule!(vmcs.get(HOST_CS_SELECTOR) == 0, H, "27.2.3", "host CS selector is 0");
    rule!(vmcs.get(HOST_TR_SELECTOR) == 0, H, "27.2.3", "host TR selector is 0");
    rule!(
        !host64 && vmcs.get(HOST_SS_SELECTOR) == 0,
        H,
        "27.2.3",
        "host SS selector is 0 while host address-space size is 0"
    );
    rule!(!is_canonical(vmcs.get(HOST_FS_BASE), 48), H, "27.2.3", "host FS base not canonical");
    rule!(!is_canonical(vmcs.get(HOST_GS_BASE), 48), H, "27.2.3", "host GS base not canonical");
    rule!(!is_canonical(vmcs.get(HOST_GDTR_BASE), 48), H, "27.2.3", "host GDTR base not canonical");
    rule!(!is_canonical(vmcs.get(HOST_IDTR_BASE), 48), H, "27.2.3", "host IDTR base not canonical");
    rule!(!is_canonical(vmcs.get(HOST_TR_BASE), 48), H, "27.2.3", "host TR base not canonical");

    // 27.2.4 Checks related to address-space size.
    let entryv = vmcs.get32(VM_ENTRY_CONTROLS);
    if host_lma {
        rule!(!host64, H, "27.2.4", "host address-space size is 0 in IA-32e mode");
    } else {
        rule!(entryv & entry::IA32E_MODE_GUEST != 0, C, "27.2.4", "IA-32e mode guest set outside IA-32e mode");
        rule!(host64, C, "27.2.4", "host address-space size set outside IA-32e mode");
    }
    if host64 {
        rule!(cr4 & cr::CR4_PAE == 0, H, "27.2.4", "host CR4.PAE clear while host address-space size is 1");
        rule!(!is_canonical(vmcs.get(HOST_RIP), 48), H, "27.2.4", "host RIP not canonical");
    } else {
        rule!(
            entryv & entry::IA32E_MODE_GUEST != 0,
            H,
            "27.2.4",
            "IA-32e mode guest set while host address-space size is 0"
        );
        rule!(cr4 & cr::CR4_PCIDE != 0, H, "27.2.4", "host CR4.PCIDE set while host address-space size is 0");
        rule!(vmcs.get(HOST_RIP) >> 32 != 0, H, "27.2.4", "host RIP bits 63:32 set while host address-space size is 0");
    }
    Ok(())
}

/// Access-rights bits (SDM 25.4.1, Table 25-2).
mod ar {
    pub const TYPE: u32 = 0xf;
    pub const S: u32 = 1 << 4;
    pub const P: u32 = 1 << 7;
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    pub const UNUSABLE: u32 = 1 << 16;
    pub const RESERVED: u32 = 0xfffe_0f00;

    pub fn dpl(ar: u32) -> u32 {
        (ar >> 5) & 3
    }
}

/// G must be 0 if any of limit bits 11:0 is 0, and 1 if any of bits 31:20 is 1.
fn granularity_ok(limit: u32, a: u32) -> bool {
    let g = a & ar::G != 0;
    !((limit & 0xfff != 0xfff && g) || (limit >> 20 != 0 && !g))
}

struct Seg {
    sel: u64,
    base: u64,
    limit: u32,
    ar: u32,
}

impl Seg {
    fn read(v: &Vmcs, sel: u32, base: u32, limit: u32, ar: u32) -> Seg {
        Seg { sel: v.get(sel), base: v.get(base), limit: v.get32(limit), ar: v.get32(ar) }
    }
    fn usable(&self) -> bool {
        self.ar & ar::UNUSABLE == 0
    }
    fn ty(&self) -> u32 {
        self.ar & ar::TYPE
    }
}

/// SDM 27.3.1: guest-state area.
pub fn check_guest_state(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let entryv = vmcs.get32(VM_ENTRY_CONTROLS);
    let sec = secondary(vmcs);
    let ia32e = entryv & entry::IA32E_MODE_GUEST != 0;
    let unrestricted = sec & proc2::UNRESTRICTED_GUEST != 0;
    let cr0 = vmcs.get(GUEST_CR0);
    let cr4 = vmcs.get(GUEST_CR4);
    let rflags = vmcs.get(GUEST_RFLAGS);
    // RFLAGS.VM in IA-32e mode or with CR0.PE = 0 fails in 27.3.1.4 instead.
    let v86 = rflags & (1 << 17) != 0 && !ia32e && cr0 & cr::CR0_PE != 0;

    // 27.3.1.1 Control registers, debug registers and MSRs.
    let mut fixed0 = caps.cr0_fixed0;
    if unrestricted {
        fixed0 &= !(cr::CR0_PE | cr::CR0_PG);
    }
    rule!(!fixed_ok(cr0, fixed0, caps.cr0_fixed1), G, "27.3.1.1", "guest CR0 violates IA32_VMX_CR0_FIXED0/FIXED1");
    rule!(cr0 & cr::CR0_PG != 0 && cr0 & cr::CR0_PE == 0, G, "27.3.1.1", "guest CR0.PG set while CR0.PE clear");
    rule!(
        !fixed_ok(cr4, caps.cr4_fixed0, caps.cr4_fixed1),
        G,
        "27.3.1.1",
        "guest CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"
    );
    if entryv & entry::LOAD_DEBUG_CONTROLS != 0 {
        rule!(
            vmcs.get(GUEST_IA32_DEBUGCTL) & 0xffff_ffff_ffff_003c != 0,
            G,
            "27.3.1.1",
            "guest IA32_DEBUGCTL reserved bits set"
        );
    }
    if ia32e {
        rule!(cr0 & cr::CR0_PG == 0, G, "27.3.1.1", "IA-32e mode guest with CR0.PG clear");
        rule!(cr4 & cr::CR4_PAE == 0, G, "27.3.1.1", "IA-32e mode guest with CR4.PAE clear");
    } else {
        rule!(cr4 & cr::CR4_PCIDE != 0, G, "27.3.1.1", "guest CR4.PCIDE set outside IA-32e mode");
    }
    rule!(beyond_width(vmcs.get(GUEST_CR3), width), G, "27.3.1.1", "guest CR3 beyond physical-address width");
    rule!(
        entryv & entry::LOAD_DEBUG_CONTROLS != 0 && vmcs.get(GUEST_DR7) >> 32 != 0,
        G,
        "27.3.1.1",
        "guest DR7 bits 63:32 set"
    );
    rule!(!is_canonical(vmcs.get(GUEST_SYSENTER_ESP), 48), G, "27.3.1.1", "guest IA32_SYSENTER_ESP not canonical");
    rule!(!is_canonical(vmcs.get(GUEST_SYSENTER_EIP), 48), G, "27.3.1.1", "guest IA32_SYSENTER_EIP not canonical");
    rule!(
        entryv & entry::LOAD_IA32_PAT != 0 && !pat_valid(vmcs.get(GUEST_IA32_PAT)),
        G,
        "27.3.1.1",
        "guest IA32_PAT has an invalid memory type"
    );
    if entryv & entry::LOAD_IA32_EFER != 0 {
        let efer = vmcs.get(GUEST_IA32_EFER);
        rule!(efer & !EFER_VALID != 0, G, "27.3.1.1", "guest IA32_EFER reserved bits set");
        rule!((efer & cr::EFER_LMA != 0) != ia32e, G, "27.3.1.1", "guest IA32_EFER.LMA differs from IA-32e mode guest");
        rule!(
            cr0 & cr::CR0_PG != 0 && (efer & cr::EFER_LME != 0) != ia32e,
            G,
            "27.3.1.1",
            "guest IA32_EFER.LME differs from LMA while CR0.PG set"
        );
    }

    // 27.3.1.2 Segment registers.
    let cs = Seg::read(vmcs, GUEST_CS_SELECTOR, GUEST_CS_BASE, GUEST_CS_LIMIT, GUEST_CS_AR_BYTES);
    let ss = Seg::read(vmcs, GUEST_SS_SELECTOR, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES);
    let ds = Seg::read(vmcs, GUEST_DS_SELECTOR, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES);
    let es = Seg::read(vmcs, GUEST_ES_SELECTOR, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES);
    let fs = Seg::read(vmcs, GUEST_FS_SELECTOR, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR_BYTES);
    let gs = Seg::read(vmcs, GUEST_GS_SELECTOR, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR_BYTES);
    let tr = Seg::read(vmcs, GUEST_TR_SELECTOR, GUEST_TR_BASE, GUEST_TR_LIMIT, GUEST_TR_AR_BYTES);
    let ldtr = Seg::read(vmcs, GUEST_LDTR_SELECTOR, GUEST_LDTR_BASE, GUEST_LDTR_LIMIT, GUEST_LDTR_AR_BYTES);

    rule!(tr.sel & 4 != 0, G, "27.3.1.2", "guest TR selector TI flag set");
    rule!(ldtr.usable() && ldtr.sel & 4 != 0, G, "27.3.1.2", "guest LDTR selector TI flag set");
    rule!(
        !v86 && !unrestricted && ss.sel & 3 != cs.sel & 3,
        G,
        "27.3.1.2",
        "guest SS selector RPL differs from CS selector RPL"
    );

    if v86 {
        for (s, base_rule, limit_rule, ar_rule) in [
            (
                &cs,
                "guest CS base not selector*16 in virtual-8086 mode",
                "guest CS limit not 0xffff in virtual-8086 mode",
                "guest CS access rights not 0xf3 in virtual-8086 mode",
            ),
            (
                &ss,
                "guest SS base not selector*16 in virtual-8086 mode",
                "guest SS limit not 0xffff in virtual-8086 mode",
                "guest SS access rights not 0xf3 in virtual-8086 mode",
            ),
            (
                &ds,
                "guest DS base not selector*16 in virtual-8086 mode",
                "guest DS limit not 0xffff in virtual-8086 mode",
                "guest DS access rights not 0xf3 in virtual-8086 mode",
            ),
            (
                &es,
                "guest ES base not selector*16 in virtual-8086 mode",
                "guest ES limit not 0xffff in virtual-8086 mode",
                "guest ES access rights not 0xf3 in virtual-8086 mode",
            ),
            (
                &fs,
                "guest FS base not selector*16 in virtual-8086 mode",
                "guest FS limit not 0xffff in virtual-8086 mode",
                "guest FS access rights not 0xf3 in virtual-8086 mode",
            ),
            (
                &gs,
                "guest GS base not selector*16 in virtual-8086 mode",
                "guest GS limit not 0xffff in virtual-8086 mode",
                "guest GS access rights not 0xf3 in virtual-8086 mode",
            ),
        ] {
            let fail = |rule| Err(Violation { rule, sdm: "27.3.1.2", class: G });
            if s.base != s.sel << 4 {
                return fail(base_rule);
            }
            if s.limit != 0xffff {
                return fail(limit_rule);
            }
            if s.ar != 0xf3 {
                return fail(ar_rule);
            }
        }
    }

    // Base-address checks.
    rule!(!is_canonical(tr.base, 48), G, "27.3.1.2", "guest TR base not canonical");
    rule!(!is_canonical(fs.base, 48), G, "27.3.1.2", "guest FS base not canonical");
    rule!(!is_canonical(gs.base, 48), G, "27.3.1.2", "guest GS base not canonical");
    rule!(ldtr.usable() && !is_canonical(ldtr.base, 48), G, "27.3.1.2", "guest LDTR base not canonical");
    rule!(cs.base >> 32 != 0, G, "27.3.1.2", "guest CS base bits 63:32 set");
    rule!(ss.usable() && ss.base >> 32 != 0, G, "27.3.1.2", "guest SS base bits 63:32 set");
    rule!(ds.usable() && ds.base >> 32 != 0, G, "27.3.1.2", "guest DS base bits 63:32 set");
    rule!(es.usable() && es.base >> 32 != 0, G, "27.3.1.2", "guest ES base bits 63:32 set");

    if !v86 {
        // CS.
        let cs_ty = cs.ty();
        rule!(
            !(matches!(cs_ty, 9 | 11 | 13 | 15) || (cs_ty == 3 && unrestricted)),
            G,
            "27.3.1.2",
            "guest CS type not an accessed code segment"
        );
        rule!(cs.ar & ar::S == 0, G, "27.3.1.2", "guest CS S flag clear");
        rule!(cs_ty == 3 && ar::dpl(cs.ar) != 0, G, "27.3.1.2", "guest CS DPL not 0 for type 3");
        rule!(
            matches!(cs_ty, 9 | 11) && ar::dpl(cs.ar) != ar::dpl(ss.ar),
            G,
            "27.3.1.2",
            "guest CS DPL differs from SS DPL for non-conforming code"
        );
        rule!(
            matches!(cs_ty, 13 | 15) && ar::dpl(cs.ar) > ar::dpl(ss.ar),
            G,
            "27.3.1.2",
            "guest CS DPL greater than SS DPL for conforming code"
        );
        rule!(cs.ar & ar::P == 0, G, "27.3.1.2", "guest CS not present");
        rule!(cs.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest CS access-rights reserved bits set");
        rule!(
            ia32e && cs.ar & ar::L != 0 && cs.ar & ar::DB != 0,
            G,
            "27.3.1.2",
            "guest CS.L and CS.D both set in IA-32e mode"
        );
        rule!(!granularity_ok(cs.limit, cs.ar), G, "27.3.1.2", "guest CS granularity inconsistent with limit");

        // SS.
        if ss.usable() {
            rule!(!matches!(ss.ty(), 3 | 7), G, "27.3.1.2", "guest SS type not read/write accessed data");
            rule!(ss.ar & ar::S == 0, G, "27.3.1.2", "guest SS S flag clear");
            rule!(ss.ar & ar::P == 0, G, "27.3.1.2", "guest SS not present");
            rule!(ss.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest SS access-rights reserved bits set");
            rule!(!granularity_ok(ss.limit, ss.ar), G, "27.3.1.2", "guest SS granularity inconsistent with limit");
        }
        rule!(
            !unrestricted && ar::dpl(ss.ar) != (ss.sel & 3) as u32,
            G,
            "27.3.1.2",
            "guest SS DPL differs from SS selector RPL"
        );
        rule!(
            (cs_ty == 3 || cr0 & cr::CR0_PE == 0) && ar::dpl(ss.ar) != 0,
            G,
            "27.3.1.2",
            "guest SS DPL not 0 with CS type 3 or CR0.PE clear"
        );

        // DS, ES, FS, GS.
        for (s, rules) in [
            (
                &ds,
                [
                    "guest DS type not accessed or unreadable code",
                    "guest DS S flag clear",
                    "guest DS DPL less than RPL",
                    "guest DS not present",
                    "guest DS access-rights reserved bits set",
                    "guest DS granularity inconsistent with limit",
                ],
            ),
            (
                &es,
                [
                    "guest ES type not accessed or unreadable code",
                    "guest ES S flag clear",
                    "guest ES DPL less than RPL",
                    "guest ES not present",
                    "guest ES access-rights reserved bits set",
                    "guest ES granularity inconsistent with limit",
                ],
            ),
            (
                &fs,
                [
                    "guest FS type not accessed or unreadable code",
                    "guest FS S flag clear",
                    "guest FS DPL less than RPL",
                    "guest FS not present",
                    "guest FS access-rights reserved bits set",
                    "guest FS granularity inconsistent with limit",
                ],
            ),
            (
                &gs,
                [
                    "guest GS type not accessed or unreadable code",
                    "guest GS S flag clear",
                    "guest GS DPL less than RPL",
                    "guest GS not present",
                    "guest GS access-rights reserved bits set",
                    "guest GS granularity inconsistent with limit",
                ],
            ),
        ] {
            if !s.usable() {
                continue;
            }
            let ty = s.ty();
            let bad = [
                ty & 1 == 0 || (ty & 8 != 0 && ty & 2 == 0),
                s.ar & ar::S == 0,
                !unrestricted && ty <= 11 && ar::dpl(s.ar) < (s.sel & 3) as u32,
                s.ar & ar::P == 0,
                s.ar & ar::RESERVED != 0,
                !granularity_ok(s.limit, s.ar),
            ];
            if let Some(i) = bad.iter().position(|b| *b) {
                return Err(Violation { rule: rules[i], sdm: "27.3.1.2", class: G });
            }
        }
    }

    // TR.
    rule!(!tr.usable(), G, "27.3.1.2", "guest TR unusable");
    rule!(!(tr.ty() == 11 || (tr.ty() == 3 && !ia32e)), G, "27.3.1.2", "guest TR type not a busy TSS");
    rule!(tr.ar & ar::S != 0, G, "27.3.1.2", "guest TR S flag set");
    rule!(tr.ar & ar::P == 0, G, "27.3.1.2", "guest TR not present");
    rule!(tr.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest TR access-rights reserved bits set");
    rule!(!granularity_ok(tr.limit, tr.ar), G, "27.3.1.2", "guest TR granularity inconsistent with limit");
    // LDTR.
    if ldtr.usable() {
        rule!(ldtr.ty() != 2, G, "27.3.1.2", "guest LDTR type not LDT");
        rule!(ldtr.ar & ar::S != 0, G, "27.3.1.2", "guest LDTR S flag set");
        rule!(ldtr.ar & ar::P == 0, G, "27.3.1.2", "guest LDTR not present");
        rule!(ldtr.ar & ar::RESERVED != 0, G, "27.3.1.2", "guest LDTR access-rights reserved bits set");
        rule!(!granularity_ok(ldtr.limit, ldtr.ar), G, "27.3.1.2", "guest LDTR granularity inconsistent with limit");
    }

    // 27.3.1.3 Descriptor-table registers.
    rule!(!is_canonical(vmcs.get(GUEST_GDTR_BASE), 48), G, "27.3.1.3", "guest GDTR base not canonical");
    rule!(!is_canonical(vmcs.get(GUEST_IDTR_BASE), 48), G, "27.3.1.3", "guest IDTR base not canonical");
    rule!(vmcs.get(GUEST_GDTR_LIMIT) >> 16 != 0, G, "27.3.1.3", "guest GDTR limit bits 31:16 set");
    rule!(vmcs.get(GUEST_IDTR_LIMIT) >> 16 != 0, G, "27.3.1.3", "guest IDTR limit bits 31:16 set");

    // 27.3.1.4 RIP and RFLAGS.
    let rip = vmcs.get(GUEST_RIP);
    let cs_l = cs.ar & ar::L != 0;
    if ia32e && cs_l {
        rule!(!is_canonical(rip, 48), G, "27.3.1.4", "guest RIP not canonical in 64-bit mode");
    } else {
        rule!(rip >> 32 != 0, G, "27.3.1.4", "guest RIP bits 63:32 set outside 64-bit mode");
    }
    rule!(rflags & 0xffff_ffff_ffc0_8028 != 0, G, "27.3.1.4", "guest RFLAGS reserved bits set");
    rule!(rflags & 2 == 0, G, "27.3.1.4", "guest RFLAGS bit 1 clear");
    rule!(
        (ia32e || cr0 & cr::CR0_PE == 0) && rflags & (1 << 17) != 0,
        G,
        "27.3.1.4",
        "guest RFLAGS.VM set in IA-32e mode or real mode"
    );
    let intr_info = vmcs.get32(VM_ENTRY_INTR_INFO_FIELD);
    let injecting = intr_info & (1 << 31) != 0;
    let inj_type = (intr_info >> 8) & 7;
    rule!(
        injecting && inj_type == 0 && rflags & (1 << 9) == 0,
        G,
        "27.3.1.4",
        "guest RFLAGS.IF clear while injecting an external interrupt"
    );

    // 27.3.1.5 Non-register state.
    let activity = vmcs.get(GUEST_ACTIVITY_STATE);
    let supported_states = (caps.misc >> 6) & 7;
    rule!(
        activity != 0 && (activity > 3 || supported_states & (1 << (activity - 1)) == 0),
        G,
        "27.3.1.5",
        "guest activity state not supported"
    );
    rule!(activity == 1 && ar::dpl(ss.ar) != 0, G, "27.3.1.5", "guest activity state HLT with SS.DPL not 0");
    let intr = vmcs.get(GUEST_INTERRUPTIBILITY_INFO);
    let sti = intr & 1 != 0;
    let movss = intr & 2 != 0;
    rule!(intr & 0xffff_ffe0 != 0, G, "27.3.1.5", "guest interruptibility-state reserved bits set");
    rule!(sti && movss, G, "27.3.1.5", "guest blocking by STI and by MOV SS both set");
    rule!(sti && rflags & (1 << 9) == 0, G, "27.3.1.5", "guest blocking by STI set while RFLAGS.IF clear");
    rule!(
        injecting && inj_type == 0 && (sti || movss),
        G,
        "27.3.1.5",
        "guest blocking by STI or MOV SS while injecting an external interrupt"
    );
    rule!(injecting && inj_type == 2 && movss, G, "27.3.1.5", "guest blocking by MOV SS while injecting an NMI");
    rule!(intr & 4 != 0, G, "27.3.1.5", "guest blocking by SMI set outside SMM");
    rule!(
        injecting && inj_type == 2 && sti,
        CheckClass::GuestState { qualification: ENTRY_FAIL_NMI },
        "27.3.1.5",
        "guest blocking by STI while injecting an NMI"
    );
    rule!(
        injecting && inj_type == 2 && vmcs.get32(PIN_BASED_VM_EXEC_CONTROL) & pin::VIRTUAL_NMIS != 0 && intr & 8 != 0,
        G,
        "27.3.1.5",
        "guest blocking by NMI while injecting an NMI with virtual NMIs"
    );
    let pending = vmcs.get(GUEST_PENDING_DBG_EXCEPTIONS);
    rule!(pending & !0x0001_5000_u64 & !0xf != 0, G, "27.3.1.5", "guest pending debug exceptions reserved bits set");
    if sti || movss || activity == 1 {
        let tf = rflags & (1 << 8) != 0;
        let btf = vmcs.get(GUEST_IA32_DEBUGCTL) & 2 != 0;
        let bs = pending & (1 << 14) != 0;
        let single_step = tf && !btf;
        rule!(
            single_step && !bs,
            G,
            "27.3.1.5",
            "guest pending debug BS clear while single-stepping with interrupts blocked"
        );
        rule!(!single_step && bs, G, "27.3.1.5", "guest pending debug BS set while not single-stepping");
    }
    rule!(
        vmcs.get(VMCS_LINK_POINTER) != u64::MAX,
        CheckClass::GuestState { qualification: ENTRY_FAIL_VMCS_LINK_PTR },
        "27.3.1.5",
        "VMCS link pointer not FFFFFFFF_FFFFFFFFH without VMCS shadowing"
    );

    // 27.3.1.6 Guest PDPTEs, checked from the VMCS when PAE paging is used with EPT.
    let pae_paging = cr0 & cr::CR0_PG != 0 && cr4 & cr::CR4_PAE != 0 && !ia32e;
    if pae_paging && sec & proc2::ENABLE_EPT != 0 {
        let reserved = 0x1e6 | if width < 64 { u64::MAX << width } else { 0 };
        for enc in [GUEST_PDPTR0, GUEST_PDPTR1, GUEST_PDPTR2, GUEST_PDPTR3] {
            let e = vmcs.get(enc);
            rule!(
                e & 1 != 0 && e & reserved != 0,
                CheckClass::GuestState { qualification: ENTRY_FAIL_PDPTE },
                "27.3.1.6",
                "guest PDPTE reserved bits set"
            );
        }
    }
    Ok(())
}

/// Known-good VMCS values for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::super::caps::{entry, exit, proc, proc2, VmxCaps};
    use super::super::fields::*;
    use super::super::vmcs::Vmcs;

    /// A VMCS that passes every check: 64-bit host, 64-bit guest, EPT + VPID, MSR bitmap.
    pub fn test_vmcs_64bit() -> Vmcs {
        let caps = VmxCaps::default();
        let mut v = Vmcs::new(caps.revision());
        let s = |v: &mut Vmcs, e, x| v.set(e, x);
        s(&mut v, PIN_BASED_VM_EXEC_CONTROL, u64::from(caps.true_pin.allowed0));
        s(
            &mut v,
            CPU_BASED_VM_EXEC_CONTROL,
            u64::from(
                caps.true_primary.allowed0
                    | proc::HLT_EXITING
                    | proc::USE_MSR_BITMAPS
                    | proc::ACTIVATE_SECONDARY_CONTROLS,
            ),
        );
        s(&mut v, SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::ENABLE_EPT | proc2::ENABLE_VPID));
        s(
            &mut v,
            VM_EXIT_CONTROLS,
            u64::from(
                caps.true_exit.allowed0 | exit::HOST_ADDR_SPACE_SIZE | exit::SAVE_IA32_EFER | exit::LOAD_IA32_EFER,
            ),
        );
        s(
            &mut v,
            VM_ENTRY_CONTROLS,
            u64::from(caps.true_entry.allowed0 | entry::IA32E_MODE_GUEST | entry::LOAD_IA32_EFER),
        );
        s(&mut v, MSR_BITMAP, 0x6000);
        s(&mut v, EPT_POINTER, 0x7000 | 6 | 3 << 3);
        s(&mut v, VIRTUAL_PROCESSOR_ID, 1);
        // Host.
        s(&mut v, HOST_CR0, 0x8005_0033);
        s(&mut v, HOST_CR3, 0x8000);
        s(&mut v, HOST_CR4, 0x2020);
        s(&mut v, HOST_CS_SELECTOR, 0x08);
        for e in [HOST_SS_SELECTOR, HOST_DS_SELECTOR, HOST_ES_SELECTOR] {
            s(&mut v, e, 0x10);
        }
        s(&mut v, HOST_TR_SELECTOR, 0x18);
        s(&mut v, HOST_TR_BASE, 0xffff_8000_0000_3000);
        s(&mut v, HOST_GDTR_BASE, 0xffff_8000_0000_4000);
        s(&mut v, HOST_IDTR_BASE, 0xffff_8000_0000_5000);
        s(&mut v, HOST_GS_BASE, 0xffff_8000_0000_6000);
        s(&mut v, HOST_RSP, 0xffff_8000_0001_0000);
        s(&mut v, HOST_RIP, 0xffff_ffff_8000_1000);
        s(&mut v, HOST_IA32_EFER, 0xd01);
        s(&mut v, HOST_IA32_PAT, 0x0007_0406_0007_0406);
        // Guest.
        s(&mut v, GUEST_CR0, 0x8000_0031);
        s(&mut v, GUEST_CR3, 0x9000);
        s(&mut v, GUEST_CR4, 0x2020);
        s(&mut v, GUEST_DR7, 0x400);
        s(&mut v, GUEST_RSP, 0x8000);
        s(&mut v, GUEST_RIP, 0x1000);
        s(&mut v, GUEST_RFLAGS, 0x2);
        s(&mut v, GUEST_CS_SELECTOR, 0x08);
        s(&mut v, GUEST_CS_LIMIT, 0xffff_ffff);
        s(&mut v, GUEST_CS_AR_BYTES, 0xa09b);
        for (sel, lim, ar) in [
            (GUEST_SS_SELECTOR, GUEST_SS_LIMIT, GUEST_SS_AR_BYTES),
            (GUEST_DS_SELECTOR, GUEST_DS_LIMIT, GUEST_DS_AR_BYTES),
            (GUEST_ES_SELECTOR, GUEST_ES_LIMIT, GUEST_ES_AR_BYTES),
        ] {
            s(&mut v, sel, 0x10);
            s(&mut v, lim, 0xffff_ffff);
            s(&mut v, ar, 0xc093);
        }
        for ar in [GUEST_FS_AR_BYTES, GUEST_GS_AR_BYTES, GUEST_LDTR_AR_BYTES] {
            s(&mut v, ar, 0x1_0000);
        }
        s(&mut v, GUEST_TR_SELECTOR, 0x18);
        s(&mut v, GUEST_TR_BASE, 0x3000);
        s(&mut v, GUEST_TR_LIMIT, 0x67);
        s(&mut v, GUEST_TR_AR_BYTES, 0x8b);
        s(&mut v, GUEST_GDTR_BASE, 0x4000);
        s(&mut v, GUEST_GDTR_LIMIT, 0x27);
        s(&mut v, GUEST_IDTR_BASE, 0x5000);
        s(&mut v, GUEST_IDTR_LIMIT, 0xfff);
        s(&mut v, GUEST_IA32_EFER, 0x500);
        s(&mut v, GUEST_IA32_PAT, 0x0007_0406_0007_0406);
        s(&mut v, VMCS_LINK_POINTER, u64::MAX);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testing::test_vmcs_64bit;
    use super::*;

    fn check(v: &Vmcs) -> Result<(), Violation> {
        check_vm_entry(v, &VmxCaps::default(), 36)
    }

    fn expect(changes: &[(u32, u64)], rule: &str, class: CheckClass) {
        let mut v = test_vmcs_64bit();
        for &(e, x) in changes {
            v.set(e, x);
        }
        let got = check(&v).expect_err(rule);
        assert_eq!(got.rule, rule);
        assert_eq!(got.class, class, "{rule}");
    }

    #[test]
    fn good_vmcs_passes() {
        assert_eq!(check(&test_vmcs_64bit()), Ok(()));
    }

    #[test]
    fn control_rules() {
        let v = test_vmcs_64bit();
        let primary = v.get(CPU_BASED_VM_EXEC_CONTROL);
        let sec = v.get(SECONDARY_VM_EXEC_CONTROL);
        let entryv = v.get(VM_ENTRY_CONTROLS);
        let pinv = v.get(PIN_BASED_VM_EXEC_CONTROL);
        let cases: &[(&[(u32, u64)], &str)] = &[
            (&[(PIN_BASED_VM_EXEC_CONTROL, 0)], "pin-based controls violate IA32_VMX_TRUE_PINBASED_CTLS"),
            (&[(PIN_BASED_VM_EXEC_CONTROL, pinv | 1)], "pin-based controls violate IA32_VMX_TRUE_PINBASED_CTLS"),
            (
                &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 3)],
                "primary processor-based controls violate IA32_VMX_TRUE_PROCBASED_CTLS",
            ),
            (
                &[(SECONDARY_VM_EXEC_CONTROL, sec | 1 << 14)],
                "secondary processor-based controls violate IA32_VMX_PROCBASED_CTLS2",
            ),
            (&[(CR3_TARGET_COUNT, 5)], "CR3-target count greater than supported"),
            (
                &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 25), (IO_BITMAP_A, 0x1001)],
                "I/O bitmap A address not 4-KByte aligned or beyond physical-address width",
            ),
            (
                &[(CPU_BASED_VM_EXEC_CONTROL, primary | 1 << 25), (IO_BITMAP_B, 1 << 40)],
                "I/O bitmap B address not 4-KByte aligned or beyond physical-address width",
            ),
            (&[(MSR_BITMAP, 0x6008)], "MSR bitmap address not 4-KByte aligned or beyond physical-address width"),
            (&[(VIRTUAL_PROCESSOR_ID, 0)], "VPID is 0 while enable VPID is set"),
            (&[(EPT_POINTER, 0x7000 | 3 << 3)], "EPTP memory type not supported"),
            (&[(EPT_POINTER, 0x7000 | 6 | 2 << 3)], "EPTP page-walk length not supported"),
            (&[(EPT_POINTER, 0x7000 | 6 | 3 << 3 | 1 << 6)], "EPTP accessed/dirty enable set without support"),
            (&[(EPT_POINTER, 0x7000 | 6 | 3 << 3 | 1 << 8)], "EPTP reserved bits 11:7 set"),
            (&[(EPT_POINTER, 1 << 36 | 6 | 3 << 3)], "EPTP address beyond physical-address width"),
            (&[(VM_EXIT_CONTROLS, 0)], "VM-exit controls violate IA32_VMX_TRUE_EXIT_CTLS"),
            (
                &[(VM_EXIT_MSR_STORE_COUNT, 1), (VM_EXIT_MSR_STORE_ADDR, 0x1008)],
                "VM-exit MSR-store address not 16-byte aligned or list beyond physical-address width",
            ),
            (
                &[(VM_EXIT_MSR_LOAD_COUNT, 1), (VM_EXIT_MSR_LOAD_ADDR, 0x1004)],
                "VM-exit MSR-load address not 16-byte aligned or list beyond physical-address width",
            ),
            (&[(VM_ENTRY_CONTROLS, entryv | 1 << 13)], "VM-entry controls violate IA32_VMX_TRUE_ENTRY_CTLS"),
            (
                &[(VM_ENTRY_MSR_LOAD_COUNT, 2), (VM_ENTRY_MSR_LOAD_ADDR, (1 << 36) - 16)],
                "VM-entry MSR-load address not 16-byte aligned or list beyond physical-address width",
            ),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0100)], "VM-entry interruption type reserved"),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0203)], "VM-entry NMI injection with vector other than 2"),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0320)], "VM-entry hardware exception with vector above 31"),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0701)], "VM-entry other-event injection with vector other than 0"),
            (
                &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b06)],
                "VM-entry deliver-error-code set for event without error code",
            ),
            (
                &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_030d)],
                "VM-entry deliver-error-code clear for exception with error code",
            ),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_1020)], "VM-entry interruption-information reserved bits 30:12 set"),
            (
                &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b0d), (VM_ENTRY_EXCEPTION_ERROR_CODE, 0x1_0000)],
                "VM-entry exception error code bits 31:15 set",
            ),
            (
                &[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0603), (VM_ENTRY_INSTRUCTION_LEN, 0)],
                "VM-entry instruction length out of range for software event",
            ),
        ];
        for (changes, rule) in cases {
            expect(changes, rule, CheckClass::Control);
        }
        // Secondary controls are ignored unless activated.
        let mut v = test_vmcs_64bit();
        v.set(SECONDARY_VM_EXEC_CONTROL, 0xffff_ffff);
        v.set(CPU_BASED_VM_EXEC_CONTROL, primary & !u64::from(proc::ACTIVATE_SECONDARY_CONTROLS));
        assert_eq!(check(&v), Ok(()));
        // A valid injected #GP with error code passes.
        let mut v = test_vmcs_64bit();
        v.set(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0b0d);
        assert_eq!(check(&v), Ok(()));
        assert!(eptp_valid(0x7000 | 6 | 3 << 3, &VmxCaps::default(), 36));
    }

    #[test]
    fn host_rules() {
        let v = test_vmcs_64bit();
        let exitv = v.get(VM_EXIT_CONTROLS);
        let cases: &[(&[(u32, u64)], &str)] = &[
            (&[(HOST_CR0, 0x8005_0013)], "host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
            (&[(HOST_CR0, 0x1_8005_0033)], "host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
            (&[(HOST_CR4, 0x20)], "host CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
            (&[(HOST_CR3, 1 << 40)], "host CR3 beyond physical-address width"),
            (&[(HOST_IA32_SYSENTER_ESP, 1 << 47)], "host IA32_SYSENTER_ESP not canonical"),
            (&[(HOST_IA32_SYSENTER_EIP, 1 << 50)], "host IA32_SYSENTER_EIP not canonical"),
            (&[(VM_EXIT_CONTROLS, exitv | 1 << 19), (HOST_IA32_PAT, 2)], "host IA32_PAT has an invalid memory type"),
            (&[(HOST_IA32_EFER, 0xd01 | 1 << 20)], "host IA32_EFER reserved bits set"),
            (&[(HOST_IA32_EFER, 0x901)], "host IA32_EFER.LMA differs from host address-space size"),
            (&[(HOST_IA32_EFER, 0xc01)], "host IA32_EFER.LME differs from host address-space size"),
            (&[(HOST_ES_SELECTOR, 0x13)], "host ES selector RPL or TI not 0"),
            (&[(HOST_CS_SELECTOR, 0x0c)], "host CS selector RPL or TI not 0"),
            (&[(HOST_TR_SELECTOR, 0x1b)], "host TR selector RPL or TI not 0"),
            (&[(HOST_CS_SELECTOR, 0)], "host CS selector is 0"),
            (&[(HOST_TR_SELECTOR, 0)], "host TR selector is 0"),
            (&[(HOST_FS_BASE, 1 << 47)], "host FS base not canonical"),
            (&[(HOST_GS_BASE, 1 << 47)], "host GS base not canonical"),
            (&[(HOST_GDTR_BASE, 1 << 47)], "host GDTR base not canonical"),
            (&[(HOST_IDTR_BASE, 1 << 47)], "host IDTR base not canonical"),
            (&[(HOST_TR_BASE, 1 << 47)], "host TR base not canonical"),
            (&[(HOST_CR4, 0x2000)], "host CR4.PAE clear while host address-space size is 1"),
            (&[(HOST_RIP, 0x0000_8000_0000_0000)], "host RIP not canonical"),
            (
                &[(VM_EXIT_CONTROLS, exitv & !(1 << 9)), (HOST_IA32_EFER, 0x1)],
                "host address-space size is 0 in IA-32e mode",
            ),
        ];
        for (changes, rule) in cases {
            expect(changes, rule, CheckClass::HostState);
        }
        // SS may be 0 with a 64-bit host.
        let mut v = test_vmcs_64bit();
        v.set(HOST_SS_SELECTOR, 0);
        assert_eq!(check(&v), Ok(()));
        // 32-bit host (processor outside IA-32e mode).
        let mut v = test_vmcs_64bit();
        v.set(VM_EXIT_CONTROLS, exitv & !(1 << 9));
        v.set(HOST_IA32_EFER, 1);
        let caps = VmxCaps::default();
        let e = check_vm_entry_from(&v, &caps, 36, false).unwrap_err();
        assert_eq!((e.rule, e.class), ("IA-32e mode guest set outside IA-32e mode", CheckClass::Control));
        let entryv = v.get(VM_ENTRY_CONTROLS) & !(1 << 9);
        v.set(VM_ENTRY_CONTROLS, entryv);
        v.set(HOST_SS_SELECTOR, 0);
        assert_eq!(
            check_vm_entry_from(&v, &caps, 36, false).unwrap_err().rule,
            "host SS selector is 0 while host address-space size is 0"
        );
        v.set(HOST_SS_SELECTOR, 0x10);
        v.set(HOST_CR4, 0x2000 | 1 << 17);
        assert_eq!(
            check_vm_entry_from(&v, &caps, 36, false).unwrap_err().rule,
            "host CR4.PCIDE set while host address-space size is 0"
        );
        v.set(HOST_CR4, 0x2000);
        assert_eq!(
            check_vm_entry_from(&v, &caps, 36, false).unwrap_err().rule,
            "host RIP bits 63:32 set while host address-space size is 0"
        );
    }

    #[test]
    fn guest_rules() {
        let g = CheckClass::GuestState { qualification: 0 };
        let entryv = test_vmcs_64bit().get(VM_ENTRY_CONTROLS);
        let cases: &[(&[(u32, u64)], &str)] = &[
            (&[(GUEST_CR0, 0x8000_0011)], "guest CR0 violates IA32_VMX_CR0_FIXED0/FIXED1"),
            (&[(GUEST_CR4, 0x20)], "guest CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
            (&[(GUEST_CR4, 0x2020 | 1 << 22)], "guest CR4 violates IA32_VMX_CR4_FIXED0/FIXED1"),
            (
                &[(VM_ENTRY_CONTROLS, entryv | 4), (GUEST_IA32_DEBUGCTL, 1 << 3)],
                "guest IA32_DEBUGCTL reserved bits set",
            ),
            (&[(GUEST_CR4, 0x2000)], "IA-32e mode guest with CR4.PAE clear"),
            (&[(GUEST_CR3, 1 << 36)], "guest CR3 beyond physical-address width"),
            (&[(VM_ENTRY_CONTROLS, entryv | 4), (GUEST_DR7, 1 << 32)], "guest DR7 bits 63:32 set"),
            (&[(GUEST_SYSENTER_ESP, 1 << 47)], "guest IA32_SYSENTER_ESP not canonical"),
            (&[(GUEST_SYSENTER_EIP, 1 << 47)], "guest IA32_SYSENTER_EIP not canonical"),
            (
                &[(VM_ENTRY_CONTROLS, entryv | 1 << 14), (GUEST_IA32_PAT, 3)],
                "guest IA32_PAT has an invalid memory type",
            ),
            (&[(GUEST_IA32_EFER, 0x500 | 1 << 9)], "guest IA32_EFER reserved bits set"),
            (&[(GUEST_IA32_EFER, 0x100)], "guest IA32_EFER.LMA differs from IA-32e mode guest"),
            (&[(GUEST_IA32_EFER, 0x400)], "guest IA32_EFER.LME differs from LMA while CR0.PG set"),
            (&[(GUEST_TR_SELECTOR, 0x1c)], "guest TR selector TI flag set"),
            (&[(GUEST_LDTR_AR_BYTES, 0x82), (GUEST_LDTR_SELECTOR, 0x24)], "guest LDTR selector TI flag set"),
            (
                &[(GUEST_SS_SELECTOR, 0x13), (GUEST_SS_AR_BYTES, 0xc0f3)],
                "guest SS selector RPL differs from CS selector RPL",
            ),
            (&[(GUEST_TR_BASE, 1 << 47)], "guest TR base not canonical"),
            (&[(GUEST_FS_BASE, 1 << 47)], "guest FS base not canonical"),
            (&[(GUEST_GS_BASE, 1 << 47)], "guest GS base not canonical"),
            (&[(GUEST_LDTR_AR_BYTES, 0x82), (GUEST_LDTR_BASE, 1 << 47)], "guest LDTR base not canonical"),
            (&[(GUEST_CS_BASE, 1 << 32)], "guest CS base bits 63:32 set"),
            (&[(GUEST_SS_BASE, 1 << 32)], "guest SS base bits 63:32 set"),
            (&[(GUEST_DS_BASE, 1 << 32)], "guest DS base bits 63:32 set"),
            (&[(GUEST_ES_BASE, 1 << 32)], "guest ES base bits 63:32 set"),
            (&[(GUEST_CS_AR_BYTES, 0xa093)], "guest CS type not an accessed code segment"),
            (&[(GUEST_CS_AR_BYTES, 0xa09a)], "guest CS type not an accessed code segment"),
            (&[(GUEST_CS_AR_BYTES, 0xa08b)], "guest CS S flag clear"),
            (&[(GUEST_CS_AR_BYTES, 0xa0bb)], "guest CS DPL differs from SS DPL for non-conforming code"),
            (&[(GUEST_CS_AR_BYTES, 0xa0ff)], "guest CS DPL greater than SS DPL for conforming code"),
            (&[(GUEST_CS_AR_BYTES, 0xa01b)], "guest CS not present"),
            (&[(GUEST_CS_AR_BYTES, 0xa19b)], "guest CS access-rights reserved bits set"),
            (&[(GUEST_CS_AR_BYTES, 0xe09b)], "guest CS.L and CS.D both set in IA-32e mode"),
            (&[(GUEST_CS_AR_BYTES, 0x209b)], "guest CS granularity inconsistent with limit"),
            (&[(GUEST_SS_AR_BYTES, 0xc09b)], "guest SS type not read/write accessed data"),
            (&[(GUEST_SS_AR_BYTES, 0xc083)], "guest SS S flag clear"),
            (&[(GUEST_SS_AR_BYTES, 0xc013)], "guest SS not present"),
            (&[(GUEST_SS_AR_BYTES, 0xc293)], "guest SS access-rights reserved bits set"),
            (&[(GUEST_SS_LIMIT, 0xfff0)], "guest SS granularity inconsistent with limit"),
            (&[(GUEST_DS_AR_BYTES, 0xc092)], "guest DS type not accessed or unreadable code"),
            (&[(GUEST_DS_AR_BYTES, 0xc099)], "guest DS type not accessed or unreadable code"),
            (&[(GUEST_ES_AR_BYTES, 0xc083)], "guest ES S flag clear"),
            (
                &[(GUEST_FS_AR_BYTES, 0xc093), (GUEST_FS_SELECTOR, 3), (GUEST_FS_LIMIT, 0xffff_ffff)],
                "guest FS DPL less than RPL",
            ),
            (&[(GUEST_GS_AR_BYTES, 0xc013), (GUEST_GS_LIMIT, 0xffff_ffff)], "guest GS not present"),
            (
                &[(GUEST_GS_AR_BYTES, 0xc093 | 1 << 20), (GUEST_GS_LIMIT, 0xffff_ffff)],
                "guest GS access-rights reserved bits set",
            ),
            (&[(GUEST_DS_LIMIT, 0x1_0000)], "guest DS granularity inconsistent with limit"),
            (&[(GUEST_TR_AR_BYTES, 0x1_008b)], "guest TR unusable"),
            (&[(GUEST_TR_AR_BYTES, 0x83)], "guest TR type not a busy TSS"),
            (&[(GUEST_TR_AR_BYTES, 0x89)], "guest TR type not a busy TSS"),
            (&[(GUEST_TR_AR_BYTES, 0x9b)], "guest TR S flag set"),
            (&[(GUEST_TR_AR_BYTES, 0x0b)], "guest TR not present"),
            (&[(GUEST_TR_AR_BYTES, 0x2_008b)], "guest TR access-rights reserved bits set"),
            (&[(GUEST_TR_LIMIT, 0x10_0000)], "guest TR granularity inconsistent with limit"),
            (&[(GUEST_LDTR_AR_BYTES, 0x83)], "guest LDTR type not LDT"),
            (&[(GUEST_LDTR_AR_BYTES, 0x92)], "guest LDTR S flag set"),
            (&[(GUEST_LDTR_AR_BYTES, 0x02)], "guest LDTR not present"),
            (&[(GUEST_LDTR_AR_BYTES, 0x8082)], "guest LDTR granularity inconsistent with limit"),
            (&[(GUEST_GDTR_BASE, 1 << 47)], "guest GDTR base not canonical"),
            (&[(GUEST_IDTR_BASE, 1 << 47)], "guest IDTR base not canonical"),
            (&[(GUEST_GDTR_LIMIT, 0x1_0000)], "guest GDTR limit bits 31:16 set"),
            (&[(GUEST_IDTR_LIMIT, 0x1_0000)], "guest IDTR limit bits 31:16 set"),
            (&[(GUEST_RIP, 1 << 47)], "guest RIP not canonical in 64-bit mode"),
            (&[(GUEST_CS_AR_BYTES, 0xc09b), (GUEST_RIP, 1 << 32)], "guest RIP bits 63:32 set outside 64-bit mode"),
            (&[(GUEST_RFLAGS, 0x2 | 1 << 15)], "guest RFLAGS reserved bits set"),
            (&[(GUEST_RFLAGS, 0x2 | 1 << 22)], "guest RFLAGS reserved bits set"),
            (&[(GUEST_RFLAGS, 0)], "guest RFLAGS bit 1 clear"),
            (&[(GUEST_RFLAGS, 0x2 | 1 << 17)], "guest RFLAGS.VM set in IA-32e mode or real mode"),
            (&[(VM_ENTRY_INTR_INFO_FIELD, 0x8000_0020)], "guest RFLAGS.IF clear while injecting an external interrupt"),
            (&[(GUEST_ACTIVITY_STATE, 1)], "guest activity state not supported"),
            (&[(GUEST_INTERRUPTIBILITY_INFO, 1 << 5)], "guest interruptibility-state reserved bits set"),
            (
                &[(GUEST_INTERRUPTIBILITY_INFO, 3), (GUEST_RFLAGS, 0x202)],
                "guest blocking by STI and by MOV SS both set",
            ),
            (&[(GUEST_INTERRUPTIBILITY_INFO, 1)], "guest blocking by STI set while RFLAGS.IF clear"),
            (
                &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_RFLAGS, 0x202), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0020)],
                "guest blocking by STI or MOV SS while injecting an external interrupt",
            ),
            (
                &[(GUEST_INTERRUPTIBILITY_INFO, 2), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0202)],
                "guest blocking by MOV SS while injecting an NMI",
            ),
            (&[(GUEST_INTERRUPTIBILITY_INFO, 4)], "guest blocking by SMI set outside SMM"),
            (&[(GUEST_PENDING_DBG_EXCEPTIONS, 1 << 4)], "guest pending debug exceptions reserved bits set"),
            (
                &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_RFLAGS, 0x102)],
                "guest pending debug BS clear while single-stepping with interrupts blocked",
            ),
            (
                &[(GUEST_INTERRUPTIBILITY_INFO, 2), (GUEST_PENDING_DBG_EXCEPTIONS, 1 << 14)],
                "guest pending debug BS set while not single-stepping",
            ),
        ];
        for (changes, rule) in cases {
            expect(changes, rule, g);
        }
        expect(
            &[(VMCS_LINK_POINTER, 0x1000)],
            "VMCS link pointer not FFFFFFFF_FFFFFFFFH without VMCS shadowing",
            CheckClass::GuestState { qualification: ENTRY_FAIL_VMCS_LINK_PTR },
        );
        expect(
            &[(GUEST_INTERRUPTIBILITY_INFO, 1), (GUEST_RFLAGS, 0x202), (VM_ENTRY_INTR_INFO_FIELD, 0x8000_0202)],
            "guest blocking by STI while injecting an NMI",
            CheckClass::GuestState { qualification: ENTRY_FAIL_NMI },
        );
    }

    /// A 32-bit protected-mode guest with PAE paging and a 16-bit real-mode-like v8086
    /// guest exercise the non-IA-32e paths.
    #[test]
    fn non_ia32e_guests() {
        let mut v = test_vmcs_64bit();
        let entryv = v.get(VM_ENTRY_CONTROLS) & !u64::from(entry::IA32E_MODE_GUEST | entry::LOAD_IA32_EFER);
        v.set(VM_ENTRY_CONTROLS, entryv);
        v.set(GUEST_CS_AR_BYTES, 0xc09b);
        assert_eq!(check(&v), Ok(()));
        v.set(GUEST_CR4, 0x2020 | 1 << 17);
        assert_eq!(check(&v).unwrap_err().rule, "guest CR4.PCIDE set outside IA-32e mode");
        v.set(GUEST_CR4, 0x2020);
        v.set(GUEST_TR_AR_BYTES, 0x83);
        assert_eq!(check(&v), Ok(()));
        v.set(GUEST_PDPTR2, 1 | 1 << 5);
        let e = check(&v).unwrap_err();
        assert_eq!(
            (e.rule, e.class),
            ("guest PDPTE reserved bits set", CheckClass::GuestState { qualification: ENTRY_FAIL_PDPTE })
        );
        v.set(GUEST_PDPTR2, 0x1000 | 1);
        assert_eq!(check(&v), Ok(()));
        // Virtual-8086 segments.
        v.set(GUEST_RFLAGS, 0x2 | 1 << 17);
        v.set(GUEST_CS_BASE, 0x10 << 4);
        assert_eq!(check(&v).unwrap_err().rule, "guest CS base not selector*16 in virtual-8086 mode");
        v.set(GUEST_CS_BASE, 0x80);
        assert_eq!(check(&v).unwrap_err().rule, "guest CS limit not 0xffff in virtual-8086 mode");
        // PG without PE.
        let mut v = test_vmcs_64bit();
        v.set(VM_ENTRY_CONTROLS, entryv);
        v.set(GUEST_CS_AR_BYTES, 0xc09b);
        v.set(GUEST_CR0, 0x8000_0030);
        assert_eq!(check(&v).unwrap_err().rule, "guest CR0 violates IA32_VMX_CR0_FIXED0/FIXED1");
        // Unrestricted guest needs EPT (and is not advertised anyway).
        let mut caps = VmxCaps::default();
        caps.secondary.allowed1 |= proc2::UNRESTRICTED_GUEST;
        let mut v = test_vmcs_64bit();
        v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::UNRESTRICTED_GUEST | proc2::ENABLE_VPID));
        assert_eq!(check_vm_entry(&v, &caps, 36).unwrap_err().rule, "unrestricted guest set while enable EPT is clear");
        // With unrestricted guest, CR0.PE/PG may be 0 but PG still requires PE.
        v.set(SECONDARY_VM_EXEC_CONTROL, u64::from(proc2::UNRESTRICTED_GUEST | proc2::ENABLE_VPID | proc2::ENABLE_EPT));
        v.set(VM_ENTRY_CONTROLS, entryv);
        v.set(GUEST_CS_AR_BYTES, 0xc09b);
        v.set(GUEST_CR0, 0x8000_0030);
        assert_eq!(check_vm_entry(&v, &caps, 36).unwrap_err().rule, "guest CR0.PG set while CR0.PE clear");
    }
}
