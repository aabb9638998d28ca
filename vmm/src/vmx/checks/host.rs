//! SDM 27.2.2 - 27.2.4: checks on the host-state area.

use crate::vmx::bits::{beyond_width, fixed_ok, is_canonical, pat_valid};
use crate::vmx::caps::{cr, entry, exit, VmxCaps};
use crate::vmx::fields::*;
use crate::vmx::vmcs::Vmcs;

use super::{Violation, C, EFER_VALID, H};

/// SDM 27.2.2 - 27.2.4: host-state area.
pub fn check_host_state(vmcs: &Vmcs, caps: &VmxCaps, width: u8, host_lma: bool) -> Result<(), Violation> {
    check_host_control_registers_and_msrs(vmcs, caps, width)?;
    check_host_segment_and_descriptor_table_registers(vmcs)?;
    check_address_space_size(vmcs, host_lma)
}

/// The "host address-space size" VM-exit control (SDM 25.7.1).
fn host_addr_space_size(vmcs: &Vmcs) -> bool {
    vmcs.get32(VM_EXIT_CONTROLS) & exit::HOST_ADDR_SPACE_SIZE != 0
}

/// SDM 27.2.2: host control registers and MSRs.
fn check_host_control_registers_and_msrs(vmcs: &Vmcs, caps: &VmxCaps, width: u8) -> Result<(), Violation> {
    let exitv = vmcs.get32(VM_EXIT_CONTROLS);
    let host64 = host_addr_space_size(vmcs);
    let cr4 = vmcs.get(HOST_CR4);

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
    Ok(())
}

/// SDM 27.2.3: host segment and descriptor-table registers.
fn check_host_segment_and_descriptor_table_registers(vmcs: &Vmcs) -> Result<(), Violation> {
    let host64 = host_addr_space_size(vmcs);

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
    Ok(())
}

/// SDM 27.2.4: checks related to address-space size; `host_lma` is the processor's
/// IA32_EFER.LMA.
fn check_address_space_size(vmcs: &Vmcs, host_lma: bool) -> Result<(), Violation> {
    let host64 = host_addr_space_size(vmcs);
    let cr4 = vmcs.get(HOST_CR4);
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
