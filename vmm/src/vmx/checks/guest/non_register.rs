//! SDM 27.3.1.5: checks on guest non-register state.

use crate::vmx::bits::bad_page_addr;
use crate::vmx::caps::{pin, proc2, VmxCaps};
use crate::vmx::checks::{CheckClass, Violation, ENTRY_FAIL_NMI, ENTRY_FAIL_VMCS_LINK_PTR, G};
use crate::vmx::cpu::GuestMemory;
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

use super::{ar, Guest};

/// SDM 27.3.1.5: activity state, interruptibility state, pending debug exceptions and
/// VMCS link pointer.
pub(super) fn check_non_register_state(
    vmcs: &Vmcs,
    caps: &VmxCaps,
    width: u8,
    mem: &dyn GuestMemory,
    g: &Guest,
) -> Result<(), Violation> {
    check_activity_state(vmcs, caps)?;
    check_interruptibility_state(vmcs, g)?;
    check_pending_debug_exceptions(vmcs, g)?;
    check_vmcs_link_pointer(vmcs, caps, width, mem)
}

/// SDM 27.3.1.5, activity state.
fn check_activity_state(vmcs: &Vmcs, caps: &VmxCaps) -> Result<(), Violation> {
    let activity = vmcs.get(GUEST_ACTIVITY_STATE);
    let supported_states = (caps.misc >> 6) & 7;
    rule!(
        activity != 0 && (activity > 3 || supported_states & (1 << (activity - 1)) == 0),
        G,
        "27.3.1.5",
        "guest activity state not supported"
    );
    rule!(
        activity == 1 && ar::dpl(vmcs.get32(GUEST_SS_AR_BYTES)) != 0,
        G,
        "27.3.1.5",
        "guest activity state HLT with SS.DPL not 0"
    );
    Ok(())
}

/// SDM 27.3.1.5, interruptibility state.
fn check_interruptibility_state(vmcs: &Vmcs, g: &Guest) -> Result<(), Violation> {
    let &Guest { rflags, injecting, inj_type, .. } = g;

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
    Ok(())
}

/// SDM 27.3.1.5, pending debug exceptions.
fn check_pending_debug_exceptions(vmcs: &Vmcs, g: &Guest) -> Result<(), Violation> {
    let intr = vmcs.get(GUEST_INTERRUPTIBILITY_INFO);
    let sti = intr & 1 != 0;
    let movss = intr & 2 != 0;
    let activity = vmcs.get(GUEST_ACTIVITY_STATE);

    let pending = vmcs.get(GUEST_PENDING_DBG_EXCEPTIONS);
    rule!(pending & !0x0001_5000_u64 & !0xf != 0, G, "27.3.1.5", "guest pending debug exceptions reserved bits set");
    if sti || movss || activity == 1 {
        let tf = g.rflags & (1 << 8) != 0;
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
    Ok(())
}

/// SDM 27.3.1.5, VMCS link pointer: all-ones, or the address of a VMCS region whose first word
/// holds the processor's revision identifier and a shadow-VMCS indicator equal to the "VMCS
/// shadowing" control. Memory outside RAM reads as all ones (no device answers).
fn check_vmcs_link_pointer(vmcs: &Vmcs, caps: &VmxCaps, width: u8, mem: &dyn GuestMemory) -> Result<(), Violation> {
    const LINK: CheckClass = CheckClass::GuestState { qualification: ENTRY_FAIL_VMCS_LINK_PTR };
    let link = vmcs.get(VMCS_LINK_POINTER);
    if link == u64::MAX {
        return Ok(());
    }
    rule!(
        bad_page_addr(link, width),
        LINK,
        "27.3.1.5",
        "VMCS link pointer not 4-KByte aligned or beyond physical-address width"
    );
    let mut b = [0xffu8; 4];
    if mem.read_phys(link, &mut b).is_err() {
        b = [0xff; 4];
    }
    let head = u32::from_le_bytes(b);
    rule!(
        head & 0x7fff_ffff != caps.revision(),
        LINK,
        "27.3.1.5",
        "VMCS link pointer region's revision identifier not the processor's"
    );
    let shadowing = crate::vmx::checks::secondary(vmcs) & proc2::VMCS_SHADOWING != 0;
    rule!(
        (head >> 31 == 1) != shadowing,
        LINK,
        "27.3.1.5",
        "VMCS link pointer region's shadow-VMCS indicator differs from VMCS shadowing"
    );
    Ok(())
}
