//! SDM 27.2.1 "Checks on VMX Controls".

use crate::vmx::bits::{bad_page_addr, beyond_width};
use crate::vmx::caps::{cr, entry, ept_cap, exit, pin, proc, proc2, Control, VmxCaps};
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

use super::{secondary, Violation, C};

/// SDM 27.2.1: VM-execution, VM-exit and VM-entry control fields.
pub fn check_controls(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    check_execution_controls(vmcs, caps, width)?;
    check_exit_controls(vmcs, caps, width)?;
    check_entry_controls(vmcs, caps, width)
}

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

fn msr_list_bad(addr: u64, count: u64, width: u8) -> bool {
    count != 0 && (addr & 0xf != 0 || beyond_width(addr.wrapping_add(count * 16 - 1), width))
}

/// SDM 27.2.1.1: VM-execution control fields.
fn check_execution_controls(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let pinv = vmcs.get32(PIN_BASED_VM_EXEC_CONTROL);
    let primary = vmcs.get32(CPU_BASED_VM_EXEC_CONTROL);
    let sec = secondary(vmcs);

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
    Ok(())
}

/// SDM 27.2.1.2: VM-exit control fields.
fn check_exit_controls(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let pinv = vmcs.get32(PIN_BASED_VM_EXEC_CONTROL);
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);

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
    Ok(())
}

/// SDM 27.2.1.3: VM-entry control fields.
fn check_entry_controls(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let entryv = vmcs.get32(VM_ENTRY_CONTROLS);

    rule!(
        !caps.cap(Control::Entry).permits(entryv),
        C,
        "27.2.1.3",
        "VM-entry controls violate IA32_VMX_TRUE_ENTRY_CTLS"
    );
    check_event_injection(vmcs, caps)?;
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

/// SDM 27.2.1.3: the VM-entry interruption-information field, when valid (bit 31).
fn check_event_injection(vmcs: &Vmcs, caps: &VmxCaps) -> Result<(), Violation> {
    let info = vmcs.get32(VM_ENTRY_INTR_INFO_FIELD);
    if info & (1 << 31) == 0 {
        return Ok(());
    }
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
    Ok(())
}
