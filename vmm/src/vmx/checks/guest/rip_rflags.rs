//! SDM 27.3.1.4: checks on guest RIP and RFLAGS.

use crate::vmx::bits::is_canonical;
use crate::vmx::caps::cr;
use crate::vmx::checks::{Violation, G};
use crate::vmx::fields::{GUEST_CS_AR_BYTES, GUEST_RIP};
use crate::vmx::vmcs::Vmcs;

use super::{ar, Guest};

/// SDM 27.3.1.4: RIP and RFLAGS.
pub(super) fn check_rip_and_rflags(vmcs: &Vmcs, g: &Guest) -> Result<(), Violation> {
    let &Guest { ia32e, cr0, rflags, injecting, inj_type, .. } = g;

    let rip = vmcs.get(GUEST_RIP);
    let cs_l = vmcs.get32(GUEST_CS_AR_BYTES) & ar::L != 0;
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
    rule!(
        injecting && inj_type == 0 && rflags & (1 << 9) == 0,
        G,
        "27.3.1.4",
        "guest RFLAGS.IF clear while injecting an external interrupt"
    );
    Ok(())
}
