//! SDM 27.3.1.3: checks on guest descriptor-table registers.

use crate::vmx::bits::is_canonical;
use crate::vmx::checks::{Violation, G};
use crate::vmx::fields::{GUEST_GDTR_BASE, GUEST_GDTR_LIMIT, GUEST_IDTR_BASE, GUEST_IDTR_LIMIT};
use crate::vmx::vmcs::Vmcs;

/// SDM 27.3.1.3: GDTR and IDTR.
pub(super) fn check_descriptor_table_registers(vmcs: &Vmcs) -> Result<(), Violation> {
    rule!(!is_canonical(vmcs.get(GUEST_GDTR_BASE), 48), G, "27.3.1.3", "guest GDTR base not canonical");
    rule!(!is_canonical(vmcs.get(GUEST_IDTR_BASE), 48), G, "27.3.1.3", "guest IDTR base not canonical");
    rule!(vmcs.get(GUEST_GDTR_LIMIT) >> 16 != 0, G, "27.3.1.3", "guest GDTR limit bits 31:16 set");
    rule!(vmcs.get(GUEST_IDTR_LIMIT) >> 16 != 0, G, "27.3.1.3", "guest IDTR limit bits 31:16 set");
    Ok(())
}
