//! SDM 27.3.1.1: checks on guest control registers, debug registers and MSRs.

use crate::vmx::bits::{beyond_width, fixed_ok, is_canonical, pat_valid};
use crate::vmx::caps::{cr, entry, VmxCaps};
use crate::vmx::checks::{Violation, EFER_VALID, G};
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

use super::Guest;

/// SDM 27.3.1.1: control registers, debug registers and MSRs.
pub(super) fn check_control_registers_debug_registers_and_msrs(
    vmcs: &Vmcs,
    caps: &VmxCaps,
    width: u8,
    g: &Guest,
) -> Result<(), Violation> {
    let &Guest { entryv, ia32e, unrestricted, cr0, cr4, .. } = g;

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
    Ok(())
}
